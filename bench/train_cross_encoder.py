"""Train a cross-encoder on a BEIR train split from all-MiniLM-L6-v2 with sentence-transformers' CrossEncoderTrainer,
as the cross-encoder teacher of docs/results.md: binary cross-entropy over each judged pair, `--hard` passages drawn
from MiniLM's top `--hard-range` other passages and `--random` passages drawn from the whole corpus. Hard negatives
alone teach it nothing from MiniLM's weights (the loss stays at a constant guess's); with random ones beside them it
learns. Its last line is JSON: seconds, and nDCG@10 on dev of MiniLM's top-100 as MiniLM orders it and as the
cross-encoder reorders it: a teacher worth its cost reorders better.

    python -m bench.train_cross_encoder --data /data/scifact --out logs/scifact/cross_encoder
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.st_common import device_name, pairs
from pa_retriever.data.source import DataSource
from pa_retriever.encode.search import exact_search
from pa_retriever.encode.spec import resolve_model_path
from pa_retriever.eval.metrics import mean_metrics, per_query_metrics

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def train(args: argparse.Namespace, data: DataSource) -> tuple[object, float]:
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from sentence_transformers.util import mine_hard_negatives
    from datasets import concatenate_datasets

    train_split = data.load("train")
    retriever = SentenceTransformer(resolve_model_path(args.model), device="cpu" if args.cpu else None)
    hard = mine_hard_negatives(pairs(train_split), retriever, corpus=train_split.passages, num_negatives=args.hard,
                               range_max=args.hard_range, sampling_strategy="random", output_format="labeled-pair",
                               batch_size=64, verbose=False)
    labelled = concatenate_datasets([hard, random_negatives(hard, train_split.passages, args.random, args.seed)])
    model = CrossEncoder(resolve_model_path(args.model), num_labels=1, max_length=args.max_length)
    arguments = CrossEncoderTrainingArguments(
        output_dir=str(args.out / "trainer"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, warmup_ratio=0.1, seed=args.seed, bf16=args.bf16, save_strategy="no",
        report_to="none", disable_tqdm=False, logging_steps=50, use_cpu=args.cpu or not torch.cuda.is_available())
    negatives = args.hard + args.random  # per positive: a positive weighs as much as its negatives
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(negatives)))
    started = time.perf_counter()
    CrossEncoderTrainer(model=model, args=arguments, train_dataset=labelled, loss=loss).train()
    seconds = time.perf_counter() - started
    model.save_pretrained(str(args.out / "model"))
    return model, seconds


def random_negatives(labelled, corpus: list[str], per_positive: int, seed: int):
    """`per_positive` passages drawn at random from `corpus` beside each positive row of `labelled`, labelled 0 (a
    draw that is one of the query's positives is drawn again)."""
    from datasets import Dataset
    query, passage, label = labelled.column_names
    judged = [(row[query], row[passage]) for row in labelled if row[label] == 1]
    positives: dict[str, set[str]] = {}
    for text, positive in judged:
        positives.setdefault(text, set()).add(positive)
    rng = random.Random(seed)
    rows = []
    for text, _ in judged:
        for _ in range(per_positive):
            while (drawn := corpus[rng.randrange(len(corpus))]) in positives[text]:
                pass
            rows.append((text, drawn))
    return Dataset.from_dict({query: [q for q, _ in rows], passage: [p for _, p in rows], label: [0] * len(rows)})


def rerank_dev(model, retriever_path: str, data: DataSource, depth: int = 100) -> dict[str, dict[str, float]]:
    """nDCG@10 and the other metrics on dev: MiniLM's top `depth` as it ranks them, and as the cross-encoder does."""
    from sentence_transformers import SentenceTransformer

    dev = data.load("dev")
    retriever = SentenceTransformer(retriever_path)
    queries = retriever.encode(dev.queries, normalize_embeddings=True, batch_size=64)
    passages = retriever.encode(dev.passages, normalize_embeddings=True, batch_size=64)
    scores, idx = exact_search(queries, passages, depth)
    reranked = model.predict([(dev.queries[q], dev.passages[p]) for q in range(len(dev.queries)) for p in idx[q]],
                             batch_size=64, show_progress_bar=True).reshape(idx.shape)
    runs = {"retriever": scores, "cross_encoder": reranked}
    return {name: mean_metrics(per_query_metrics(dev.qrels, {
        qid: {dev.corpus_ids[p]: float(s) for p, s in zip(idx[q], run[q])} for q, qid in enumerate(dev.query_ids)}))
        for name, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a BEIR folder with train and dev judgements")
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--out", type=Path, default=Path("logs/scifact/cross_encoder"))
    parser.add_argument("--hard", type=int, default=2,
                        help="negatives from MiniLM's top passages, per query as mine_hard_negatives draws them")
    parser.add_argument("--hard-range", type=int, default=30, help="...drawn from its top this many")
    parser.add_argument("--random", type=int, default=2, help="negatives per positive drawn from the whole corpus")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (where the hardware computes it)")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    data = DataSource(args.data.resolve())
    model, seconds = train(args, data)
    dev = rerank_dev(model, resolve_model_path(args.model), data)
    record = {"command": " ".join(["python -m bench.train_cross_encoder", *sys.argv[1:]]), "device": device_name(),
              "date": time.strftime("%Y-%m-%d"), "train_seconds": round(seconds, 1),
              "model": str(args.out / "model"), "dev_ndcg@10": {k: round(v["ndcg@10"], 4) for k, v in dev.items()},
              "dev": dev}
    (args.out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
