"""sentence-transformers as users run it: mine_hard_negatives, then its trainer with
MultipleNegativesRankingLoss. The baseline of the benchmarks and of the ablation report; and the device
name every benchmark records."""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from pa_retriever.data.beir import RetrievalData
from pa_retriever.training.module import linear_warmup_decay


def device_name() -> str:
    """The GPU's name, else the CPU's model and the threads torch uses."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").is_file() else "CPU"
    return f"{cpu}, {torch.get_num_threads()} threads"


# Our mining methods in sentence-transformers' terms (one missing here has no equivalent there: random, ensembles).
ST_METHODS: dict[str, dict] = {
    "none": {},  # pairs only: in-batch negatives
    "naive_topk": {"sampling_strategy": "top"},
    "topk_shifted": {"range_min": 10, "sampling_strategy": "top"},
    "topk_abs": {"max_score": 0.7, "sampling_strategy": "top"},
    "topk_marginpos": {"absolute_margin": 0.05, "sampling_strategy": "top"},
    "topk_percpos": {"relative_margin": 0.05, "sampling_strategy": "top"},
    "sampled_topk": {"relative_margin": 0.05},  # sampled from the first SAMPLE_K survivors: see SAMPLED
    "top1_sampled_topk": {"relative_margin": 0.05},
}
# The sampled methods draw among the first SAMPLE_K candidates that pass PercPos, keeping the best SAMPLED[m] of
# them. ST's own sampling_strategy="random" cannot say that: its range_max windows the raw ranking before the
# filter (range_max=10 searches only 10 + positives deep). So ST mines the SAMPLE_K survivors ("top") and the
# draw is made here, uniformly (ST has no softmax sampling), with Python's random as ST's own sampling uses.
SAMPLE_K = 10
SAMPLED = {"sampled_topk": 0, "top1_sampled_topk": 1}


def pairs(data: RetrievalData):
    """One (query, positive) row per judged pair, as sentence-transformers' datasets hold them."""
    from datasets import Dataset
    text = dict(zip(data.query_ids, data.queries))
    rows = [(text[q], data.passages[data.passage_index[p]]) for q in data.query_ids for p in data.positives(q)]
    return Dataset.from_dict({"anchor": [q for q, _ in rows], "positive": [p for _, p in rows]})


def st_mine(dataset, model, corpus: list[str], method: str, num_negatives: int = 4, cache: Path | None = None,
            bf16: bool = False):
    """(dataset with negative columns, seconds); rows without enough negatives are dropped, as ST does. bf16:
    encode under bf16 autocast, as our teachers do where the hardware has it (encode.precision=auto)."""
    from sentence_transformers.util import mine_hard_negatives
    options = ST_METHODS.get(method)
    if options is None:
        raise ValueError(f"{method} has no sentence-transformers equivalent")
    if not options:
        return dataset, 0.0
    started = time.perf_counter()
    sampled = method in SAMPLED
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        mined = mine_hard_negatives(dataset, model, corpus=corpus, num_negatives=SAMPLE_K if sampled else num_negatives,
                                    output_format="labeled-list" if sampled else "n-tuple", batch_size=64,
                                    verbose=False, cache_folder=str(cache) if cache else None,
                                    **({"sampling_strategy": "top"} if sampled else {}), **options)
    if sampled:
        mined = sample_survivors(mined, num_negatives, SAMPLED[method])
    return mined, time.perf_counter() - started


def sample_survivors(mined, num_negatives: int, keep_best: int):
    """n-tuples from a labeled-list mining (each row's positive, then its survivors best first): the best
    `keep_best` survivors and a uniform sample of the rest; rows with fewer survivors than `num_negatives` are
    dropped, as ST's n-tuple output drops them."""
    from datasets import Dataset
    rows = {"anchor": [], "positive": [], **{f"negative_{i}": [] for i in range(1, num_negatives + 1)}}
    for anchor, (positive, *survivors) in zip(mined["anchor"], mined["positive"]):
        if len(survivors) < num_negatives:
            continue
        chosen = survivors[:keep_best] + random.sample(survivors[keep_best:], num_negatives - keep_best)
        for column, text in zip(rows, [anchor, positive, *chosen]):
            rows[column].append(text)
    return Dataset.from_dict(rows)


def st_train(model, dataset, out_dir: Path, epochs: float = 3, batch_size: int = 32, lr: float = 2e-5,
             warmup_ratio: float = 0.1, bf16: bool = False, seed: int = 42, max_steps: int = -1,
             callbacks: tuple = (), workers: int = 0, weight_decay: float = 0.0,
             batch_sampler: str = "batch_sampler", warmup: str = "st", compile: bool = False) -> float:
    """Train with MultipleNegativesRankingLoss (scale 20 = temperature 0.05); returns seconds. The defaults are
    sentence-transformers' own (no weight decay, batches that may repeat a text: `no_duplicates` avoids that, and
    HF's warm-up, whose first step is at learning rate 0); warmup="ours" warms up as our scheduler does; `compile`:
    the model through torch.compile (the HF trainer's `torch_compile`)."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    class Trainer(SentenceTransformerTrainer):
        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if warmup == "ours" and self.lr_scheduler is None:
                self.lr_scheduler = linear_warmup_decay(optimizer or self.optimizer, num_training_steps,
                                                        warmup_steps=self.args.get_warmup_steps(num_training_steps))
                self._created_lr_scheduler = True
            return super().create_scheduler(num_training_steps, optimizer)

    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir), num_train_epochs=epochs, max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_ratio=warmup_ratio, weight_decay=weight_decay, batch_sampler=batch_sampler, bf16=bf16,
        use_cpu=not torch.cuda.is_available(), seed=seed, dataloader_num_workers=workers, logging_steps=10_000,
        save_strategy="no", report_to="none", disable_tqdm=True, torch_compile=compile)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model),
                      callbacks=list(callbacks))
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started
