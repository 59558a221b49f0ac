"""Mined negatives for other trainers: exactly those this project's sampler trains with at epoch 0.

    jsonl    one line per query: {"query", "pos", "neg", "pos_scores", "neg_scores"} (FlagEmbedding's and NeMo's
             shape); every query, whatever its number of negatives
    ntuple   a sentence-transformers dataset (saved to disk): anchor, positive, negative_1..negative_n per
             (query, positive); a query short of n negatives repeats its own
    triplet  a sentence-transformers dataset: anchor, positive, negative per (query, positive, negative)
A query left with no negative at all (rare: the stored tail fills short queries) has no row in the two
sentence-transformers shapes, which cannot express it; the count is returned and printed, never hidden.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pa_retriever.data.beir import RetrievalData
from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.mining.methods import MiningMethod, negatives_for
from pa_retriever.mining.source import GivenNegatives
from pa_retriever.utils.io import atomic_path

EXPORT_FORMATS = ("jsonl", "ntuple", "triplet")


def chosen_negatives(data: RetrievalData, candidates: dict[str, CandidateArrays], method: MiningMethod,
                     seed: int) -> list[dict]:
    """Every mined query with its positives and the negatives it trains with at epoch 0, texts and scores."""
    members = list(candidates.values())
    first, text = members[0], dict(zip(data.query_ids, data.queries))
    scored = GivenNegatives.name not in candidates  # the data's own negatives carry no score (0 orders them)
    rows = []
    for row, qid in enumerate(first.query_ids):
        positives = first.pos_idx[row][first.pos_idx[row] >= 0]
        negatives, scores = negatives_for(members, row, method, seed, epoch=0)
        rows.append({"query": text[qid],
                     "pos": [data.passages[p] for p in positives],
                     "neg": [data.passages[n] for n in negatives[negatives >= 0]],
                     "pos_scores": [_score(first.pos_scores[row], first.pos_idx[row], p) for p in positives],
                     "neg_scores": [float(s) if scored and np.isfinite(s) else None for s in scores[negatives >= 0]]})
    return rows


def _score(scores: np.ndarray, idx: np.ndarray, passage: int) -> float | None:
    found = scores[idx == passage]
    return float(found[0]) if len(found) and np.isfinite(found[0]) else None


def export_negatives(data: RetrievalData, candidates: dict[str, CandidateArrays], method: MiningMethod, seed: int,
                     out_dir: Path, formats: list[str]) -> dict[str, Path]:
    """Write the asked formats into `out_dir`; their paths by format."""
    rows = chosen_negatives(data, candidates, method, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    if "jsonl" in formats:
        path = out_dir / "negatives.jsonl"
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        written["jsonl"] = path
    without = sum(not row["neg"] for row in rows)
    for fmt in ("ntuple", "triplet"):
        if fmt in formats:
            written[fmt] = _save_st(rows, fmt, method.num_negatives, out_dir / f"negatives_{fmt}")
    if without and {"ntuple", "triplet"} & set(formats):
        print(f"{without} of {len(rows)} queries have no negative: the sentence-transformers shapes cannot hold them "
              "(negatives.jsonl does)")
    return written


def _save_st(rows: list[dict], fmt: str, n: int, path: Path) -> Path:
    from datasets import Dataset
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    for row in rows:
        if not row["neg"]:
            continue
        for positive in row["pos"]:
            if fmt == "triplet":
                for negative in row["neg"]:
                    columns["anchor"].append(row["query"])
                    columns["positive"].append(positive)
                    columns.setdefault("negative", []).append(negative)
            else:
                columns["anchor"].append(row["query"])
                columns["positive"].append(positive)
                for i in range(n):  # short rows repeat their own negatives
                    columns.setdefault(f"negative_{i + 1}", []).append(row["neg"][i % len(row["neg"])])
    Dataset.from_dict(columns).save_to_disk(str(path))
    return path
