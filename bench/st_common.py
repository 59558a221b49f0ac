"""sentence-transformers as users run it: mine_hard_negatives, then its trainer with
MultipleNegativesRankingLoss. The baseline of the benchmarks and of the ablation report; and the device
name every benchmark records."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from src.data.beir import RetrievalData

def device_name() -> str:
    """The GPU's name, else the CPU's model and the threads torch uses."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").is_file() else "CPU"
    return f"{cpu}, {torch.get_num_threads()} threads"


# Our mining methods in sentence-transformers' terms (None: not expressible there).
ST_METHODS: dict[str, dict | None] = {
    "none": {},  # pairs only: in-batch negatives
    "naive_topk": {"sampling_strategy": "top"},
    "topk_shifted": {"range_min": 10, "sampling_strategy": "top"},
    "topk_abs": {"max_score": 0.7, "sampling_strategy": "top"},
    "topk_marginpos": {"absolute_margin": 0.05, "sampling_strategy": "top"},
    "topk_percpos": {"relative_margin": 0.05, "sampling_strategy": "top"},
    # ST samples uniformly (not by softmax) within the window: the closest it offers to Sampled Top-k.
    "sampled_topk": {"relative_margin": 0.05, "range_max": 10, "sampling_strategy": "random"},
    "top1_sampled_topk": None,
}


def pairs(data: RetrievalData):
    """One (query, positive) row per judged pair, as sentence-transformers' datasets hold them."""
    from datasets import Dataset
    text = dict(zip(data.query_ids, data.queries))
    rows = [(text[q], data.passages[data.passage_index[p]]) for q in data.query_ids for p in data.positives(q)]
    return Dataset.from_dict({"anchor": [q for q, _ in rows], "positive": [p for _, p in rows]})


def st_mine(dataset, model, corpus: list[str], method: str, num_negatives: int = 4, cache: Path | None = None):
    """(dataset with negative columns, seconds); rows without enough negatives are dropped, as ST does."""
    from sentence_transformers.util import mine_hard_negatives
    options = ST_METHODS[method]
    if options is None:
        raise ValueError(f"{method} has no sentence-transformers equivalent")
    if not options:
        return dataset, 0.0
    started = time.perf_counter()
    mined = mine_hard_negatives(dataset, model, corpus=corpus, num_negatives=num_negatives, output_format="n-tuple",
                                batch_size=64, verbose=False, cache_folder=str(cache) if cache else None, **options)
    return mined, time.perf_counter() - started


def st_train(model, dataset, out_dir: Path, epochs: float = 3, batch_size: int = 32, lr: float = 2e-5,
             warmup_ratio: float = 0.1, bf16: bool = False, seed: int = 42, max_steps: int = -1,
             callbacks: tuple = (), workers: int = 0, weight_decay: float = 0.0,
             batch_sampler: str = "batch_sampler") -> float:
    """Train with MultipleNegativesRankingLoss (scale 20 = temperature 0.05); returns seconds. The defaults are
    sentence-transformers' own (no weight decay, batches that may repeat a text: `no_duplicates` avoids that)."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir), num_train_epochs=epochs, max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_ratio=warmup_ratio, weight_decay=weight_decay, batch_sampler=batch_sampler, bf16=bf16,
        use_cpu=not torch.cuda.is_available(), seed=seed, dataloader_num_workers=workers, logging_steps=10_000,
        save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model), callbacks=list(callbacks))
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started
