"""What a change to the miner does to training: two candidates folders of the same data, compared method by method.

    python -m bench.compare_candidates ~/.cache/pa-retriever/candidates/scifact-train/minilm-{OLD,NEW} \
        --data /data/scifact --split train --out docs/results/cpu/candidates_OLD_vs_NEW.json

Prints (and with --out writes as JSON) how many queries store other candidates or another order, the largest
score difference, and for every teacher-reading method in conf/mining how many queries get other negatives
(both sides drawn with the same seed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from pa_retriever.data.beir import load_split
from pa_retriever.data.candidates import CandidateArrays, load_candidates
from pa_retriever.mining.methods import MiningMethod, select_negatives
from pa_retriever.utils.io import write_json_atomic


def _largest_difference(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[both] - b[both]).max(initial=0.0))


def compare(old: CandidateArrays, new: CandidateArrays, methods: list[MiningMethod], seed: int = 0) -> dict:
    if old.query_ids != new.query_ids or not np.array_equal(old.pos_idx, new.pos_idx):
        raise SystemExit("the folders hold other queries or positives: not the same data")
    rows = np.arange(len(old))
    changed = {}
    for method in methods:
        if method.uses_teacher:
            a, b = (select_negatives([c], rows, method, np.random.default_rng(seed)).idx for c in (old, new))
            changed[method.name] = int((a != b).any(1).sum())
    return {"queries": len(old),
            "queries_with_other_candidates_or_order": int((old.neg_idx != new.neg_idx).any(1).sum()),
            "largest_candidate_score_difference": _largest_difference(old.neg_scores, new.neg_scores),
            "largest_positive_score_difference": _largest_difference(old.pos_scores, new.pos_scores),
            "queries_with_other_negatives": changed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the BEIR folder both were mined from")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = load_split(args.data, args.split)
    methods = list(MiningMethod.configured(ROOT / "conf" / "mining").values())
    result = {"old": str(args.old), "new": str(args.new),
              **compare(*(load_candidates(f, data.passage_index) for f in (args.old, args.new)), methods, args.seed)}
    print(json.dumps(result, indent=2))
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
