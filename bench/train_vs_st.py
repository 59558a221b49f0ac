"""Training throughput: ours against sentence-transformers' trainer with MultipleNegativesRankingLoss.

    python -m bench.train_vs_st                      # SciFact train, MiniLM, batch 32, 1 query + 5 passages, 256
    python -m bench.train_vs_st --steps 60 --batch-size 32 --precision bf16
    python -m bench.train_vs_st --compile           # both sides through torch.compile (ours: module.compile)

Same model, batch size, negatives (our naive top-4, given to both), max length, precision, attention dropout
(`--attention-dropout`) and compilation. Each side runs
`--steps` optimizer steps; samples/s is measured from the end of step `--warmup` to the end of the last step,
the device synchronised at those two steps only (a wait at every step would hide the overlap of the host's
work with the device's).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import lightning as L
import torch

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
STEP_TIMES: dict[int, float] = {}


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(L.Callback):
    """Records the wall time at the end of the given optimizer steps (ours)."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.global_step in self.steps:
            STEP_TIMES[trainer.global_step] = _now()


def rate(times: dict[int, float], warmup: int, steps: int, batch_size: int) -> float:
    return (steps - warmup) * batch_size / (times[steps] - times[warmup])


def ours(args, cache: Path, out: Path) -> float:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from pa_retriever.tasks.train import train
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "data=local", f"data.path={args.data}", "data.val_split=null", "mining=naive_topk", f"model.name_or_path={args.model}",
            f"teacher.name_or_path={args.model}", f"model.query_max_length={args.max_length}",
            f"model.passage_max_length={args.max_length}", f"datamodule.batch_size={args.batch_size}",
            f"datamodule.num_workers={args.workers}", f"+trainer.max_steps={args.steps}", "trainer.max_epochs=-1",
            f"trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}",
            "validate_before_training=false", "test_after_training=false", "logger=csv",
            # as the sentence-transformers side runs: no checkpoints, no per-step logging
            "~callbacks.model_checkpoint", "~callbacks.last_checkpoint", "+trainer.enable_checkpointing=false",
            "trainer.log_every_n_steps=50",
            "+callbacks.step_timer._target_=bench.train_vs_st.StepTimer",
            f"+callbacks.step_timer.steps=[{args.warmup},{args.steps}]", f"paths.cache_dir={cache}",
            "encode.progress=false", f"module.compile={args.compile}",
            f"module.config_overrides={{attention_probs_dropout_prob: {args.attention_dropout}}}"]
            + (["+trainer.profiler=simple"] if args.profile else []))
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    train(cfg)
    # Hydra instantiates StepTimer from the module `bench.train_vs_st`, which is not this `__main__`.
    from bench.train_vs_st import STEP_TIMES as recorded
    return rate(recorded, args.warmup, args.steps, args.batch_size)


def st_dataset(args, cache: Path):
    """(anchor, positive, negative_1..4) rows from our stored naive top-4 candidates, for sentence-transformers."""
    from datasets import Dataset
    from hydra import compose, initialize_config_dir

    from pa_retriever.data.beir import load_split
    from pa_retriever.encode.encoder import EncodeSettings
    from pa_retriever.mining.source import candidate_source
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("mine", overrides=[f"teacher.name_or_path={args.model}", "encode.progress=false"])
    data = load_split(args.data, "train")
    source = candidate_source(None, cfg.teacher, cfg.candidates, EncodeSettings.from_config(cfg.encode), cache,
                              args.data.name)
    c = source.load(data)["minilm"]
    text = dict(zip(data.query_ids, data.queries))
    rows: dict[str, list] = {k: [] for k in ["anchor", "positive"] + [f"negative_{i}" for i in range(1, 5)]}
    for q, qid in enumerate(c.query_ids):
        for p in c.pos_idx[q][c.pos_idx[q] >= 0]:
            rows["anchor"].append(text[qid])
            rows["positive"].append(data.passages[p])
            for i in range(4):
                rows[f"negative_{i + 1}"].append(data.passages[c.neg_idx[q, i]])
    return Dataset.from_dict(rows)


def sentence_transformers(args, dataset, out: Path) -> float:
    from sentence_transformers import SentenceTransformer
    from transformers import TrainerCallback

    from bench.st_common import st_train
    from pa_retriever.encode.spec import resolve_model_path
    times: dict[int, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args_, state, *a, **k):
            if state.global_step in (args.warmup, args.steps):
                times[state.global_step] = _now()

    model = SentenceTransformer(resolve_model_path(args.model),
                                config_kwargs={"attention_probs_dropout_prob": args.attention_dropout})
    model.max_seq_length = args.max_length
    st_train(model, dataset, out, batch_size=args.batch_size, bf16=args.precision == "bf16", max_steps=args.steps,
             callbacks=(Timer(),), workers=args.workers, compile=args.compile)
    return rate(times, args.warmup, args.steps, args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("SCIFACT_DIR"), required="SCIFACT_DIR" not in os.environ,
                        help="the BEIR SciFact folder (default: $SCIFACT_DIR)")
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32",
                        choices=["bf16", "fp32"])
    parser.add_argument("--attention-dropout", type=float, default=0.1, help="both sides (MiniLM's own: 0.1)")
    parser.add_argument("--compile", action="store_true", help="both sides through torch.compile")
    parser.add_argument("--profile", action="store_true", help="ours: print Lightning's time per hook")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"SKIP: no BEIR data at {args.data}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        dataset = st_dataset(args, cache)  # mines once; ours then finds the same candidates in the cache
        st = sentence_transformers(args, dataset, Path(tmp) / "st")
        us = ours(args, cache, Path(tmp) / "ours")
    from bench.st_common import device_name
    result = {"device": device_name(), "precision": args.precision, "batch_size": args.batch_size,
              "passages_per_query": 5, "max_length": args.max_length, "steps": args.steps,
              "attention_dropout": args.attention_dropout, "compile": args.compile,
              "ours_samples_per_s": round(us, 1), "st_samples_per_s": round(st, 1), "speedup": round(us / st, 2)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
