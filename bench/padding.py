"""How much of a training batch is padding, by max length: the most that grouping batches by length (or packing
sequences) could save. Passages and queries of a BEIR split, tokenized as the model does, cut at each length,
dealt into batches at random (as the sampler deals them) and sorted by length (the best grouping can do).

    python -m bench.padding --data /data/scifact --lengths 128,256,512
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from pa_retriever.data.source import DataSource
from pa_retriever.encode.spec import resolve_model_path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def padding_share(lengths: np.ndarray, batch_size: int, order: np.ndarray) -> float:
    """Padded positions over all positions when batches of `lengths[order]` pad to their longest."""
    batches = lengths[order[: len(order) // batch_size * batch_size]].reshape(-1, batch_size)
    return float(1 - batches.sum() / (batches.max(axis=1).sum() * batch_size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--lengths", default="128,256,512")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    data = DataSource(args.data.resolve()).load(args.split)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    rng = np.random.default_rng(0)
    rows = []
    for kind, texts in (("passage", data.passages), ("query", data.queries)):
        full = np.array([len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]])
        for cap in map(int, args.lengths.split(",")):
            lengths = np.minimum(full, cap)
            dealt = padding_share(lengths, args.batch_size, rng.permutation(len(lengths)))
            rows.append({"kind": kind, "max_length": cap, "texts": len(texts),
                         "cut": round(float((full > cap).mean()), 3), "mean_tokens": round(float(lengths.mean()), 1),
                         "padding_random": round(dealt, 3),
                         "padding_sorted": round(padding_share(lengths, args.batch_size, np.argsort(lengths)), 3)})
    print("| kind | max length | cut there | mean tokens | padding, random batches | padding, sorted |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['max_length']} | {r['cut']:.1%} | {r['mean_tokens']} | {r['padding_random']:.1%} "
              f"| {r['padding_sorted']:.1%} |")
    print(json.dumps({"data": str(args.data), "split": args.split, "batch_size": args.batch_size,
                      "date": time.strftime("%Y-%m-%d"), "rows": rows}))


if __name__ == "__main__":
    main()
