"""The sentence-transformers side of the ablation (docs/results.md): mine with mine_hard_negatives, train with
MultipleNegativesRankingLoss, score the saved model with our evaluate code (the same metrics as ours).

    python -m bench.st_ablation --out logs/st_ablation/gpu                               # the full setting
    python -m bench.st_ablation --teachers minilm,round2=logs/scifact/round1/model --seeds 1,2,3
    python -m bench.st_ablation --out logs/st_ablation/cpu --max-length 128 --epochs 1 --attention-dropout 0 \
        --seeds 1          # the reduced CPU setting of experiment=scifact/ablation_cpu

Our recipe on both sides: weight decay 0.01, our warm-up (--warmup st: HF's), bf16 where our trainer and teachers
use it (the teacher mines under bf16 autocast, as ours does). What stays ST's own: its mining (depth, dropping
rows left short), its batches (no masking of a query's other positives), its trainer.

One JSON per run in --out: method, teacher, seed, metrics, rows kept, mining and training seconds, setting.
`none` mines nothing, so it runs once per seed, under the first teacher (the report lends it to the rest). A
sampling method mines once per seed, with Python's random (which ST samples from) seeded by it: each seed trains
on its own draw, as ours does. Methods without a sentence-transformers equivalent (random, the ensembles) are
skipped; BM25 is not a sentence-transformers teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch

from bench.st_common import SAMPLED, ST_METHODS, pairs, st_mine, st_train
from pa_retriever.data.beir import load_split
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.encode.spec import EncoderSpec, resolve_model_path
from pa_retriever.encode.towers import Towers
from pa_retriever.eval.retrieval import score_model
from pa_retriever.training.module import training_precision

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
METHODS = "none,naive_topk,topk_shifted,topk_abs,topk_marginpos,topk_percpos,sampled_topk,top1_sampled_topk"


def seeds_to_run(out: Path, teacher: str, method: str, seeds: list[str]) -> list[str]:
    """The seeds with no record in `out` yet (so a killed run resumes). A method that mines nothing needs one run
    per seed, not one per teacher: a record under any teacher counts (the report lends it to the others)."""
    owner = teacher if ST_METHODS[method] else "*"
    return [seed for seed in seeds if not any(out.glob(f"{owner}-{method}-seed{seed}.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("SCIFACT_DIR"), required="SCIFACT_DIR" not in os.environ,
                        help="the BEIR SciFact folder (default: $SCIFACT_DIR)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--eval-split", default="dev")
    parser.add_argument("--base", default=MINILM)
    parser.add_argument("--teachers", default="minilm", help="name[=model path], comma-separated; minilm = --base")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-precision", default="auto", help="as our encode.precision (auto: bf16 where native)")
    parser.add_argument("--attention-dropout", type=float, help="the student's, as module.config_overrides")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="ours (module.weight_decay); ST's own is 0")
    parser.add_argument("--batch-sampler", default="batch_sampler", choices=["batch_sampler", "no_duplicates"],
                        help="ST's default may put a query's positive among another row's passages, unmasked")
    parser.add_argument("--warmup", default="ours", choices=["ours", "st"],
                        help="ours: our scheduler's warm-up; st: HF's, whose first step is at learning rate 0")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help="keep each teacher's embeddings here (<cache>/<teacher name>) "
                                                   "across calls, e.g. one per fold; a name must mean one model")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"SKIP: no BEIR data at {args.data}")
        return
    from sentence_transformers import SentenceTransformer

    args.out.mkdir(parents=True, exist_ok=True)
    train, evaluation = load_split(args.data, args.train_split), load_split(args.data, args.eval_split)
    dataset = pairs(train)
    config_kwargs = {} if args.attention_dropout is None else {"attention_probs_dropout_prob": args.attention_dropout}
    bf16 = training_precision("auto") == "bf16-mixed"  # as our trainer decides, and our teachers mine
    settings = EncodeSettings(precision=args.eval_precision, progress=False)
    setting = {"train_split": args.train_split, "eval_split": args.eval_split, "epochs": float(args.epochs),
               "max_length": args.max_length, "batch_size": args.batch_size, "lr": args.lr,
               "weight_decay": args.weight_decay, "warmup": args.warmup, "warmup_ratio": 0.1,
               "attention_dropout": args.attention_dropout}  # as bench/ablation_report.py reads our runs
    for teacher_spec in args.teachers.split(","):
        name, _, path = teacher_spec.partition("=")
        teacher = SentenceTransformer(resolve_model_path(path or args.base))  # its own max length, as ours
        with tempfile.TemporaryDirectory() as scratch:
            cache = (args.cache or Path(scratch)) / name
            warm = cache.is_dir() and any(cache.iterdir())  # an earlier call encoded: no cold figure here
            cold = None
            for method in args.methods.split(","):
                if ST_METHODS.get(method, None) is None:
                    print(f"skip {method}: no sentence-transformers equivalent")
                    continue
                seeds = seeds_to_run(args.out, name, method, args.seeds.split(","))
                if not seeds:
                    continue
                sampling = method in SAMPLED
                for seed in seeds:
                    if sampling or seed == seeds[0]:
                        random.seed(int(seed))
                        mined, mining_seconds = st_mine(dataset, teacher, train.passages, method, cache=cache,
                                                         bf16=bf16)
                        if cold is None and mining_seconds and not warm:  # the first mining encodes
                            cold = mining_seconds
                    target = args.out / f"{name}-{method}-seed{seed}.json"
                    torch.manual_seed(int(seed))
                    student = SentenceTransformer(resolve_model_path(args.base), config_kwargs=config_kwargs)
                    student.max_seq_length = args.max_length
                    with tempfile.TemporaryDirectory() as tmp:
                        seconds = st_train(student, mined, Path(tmp) / "trainer", args.epochs, args.batch_size,
                                           args.lr, bf16=bf16, seed=int(seed), weight_decay=args.weight_decay,
                                           batch_sampler=args.batch_sampler, warmup=args.warmup)
                        student.save(str(Path(tmp) / "model"))
                        encoder = Towers.load(EncoderSpec.from_folder(Path(tmp) / "model"), settings)
                        if encoder.spec.passage_max_length != args.max_length:  # a misread folder once was
                            raise RuntimeError(f"the saved model reads as {encoder.spec}, not {args.max_length} tokens")
                        metrics = score_model(encoder, evaluation, settings).metrics
                    run = {"side": "sentence-transformers", "method": method, "teacher": name, "seed": int(seed),
                           "metrics": metrics, "rows_kept": len(mined), "pairs": len(dataset),
                           "mining_seconds_cold": cold, "train_seconds": seconds, "setting": setting,
                           "st_recipe": {"batch_sampler": args.batch_sampler}}
                    target.write_text(json.dumps(run, indent=2) + "\n")
                    print(json.dumps({k: run[k] for k in ("method", "teacher", "seed", "rows_kept")}),
                          f"ndcg@10 {metrics['ndcg@10']:.4f}")


if __name__ == "__main__":
    main()
