"""Evaluate an encoder on a retrieval split: encode, search exactly, score with pytrec_eval."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pa_retriever.data.beir import RetrievalData
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.encode.search import TopK, exact_search, non_finite_rows
from pa_retriever.encode.towers import Towers
from pa_retriever.eval.metrics import MEASURES, Run, mean_metrics, per_query_metrics

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: Run


def build_run(data: RetrievalData, scores: np.ndarray, indices: np.ndarray,
              ignore_identical_ids: bool = True) -> Run:
    """Search results as {query: {passage: score}}. Like BEIR, a passage with the query's own id is skipped
    (ArguAna and Quora put queries in the corpus)."""
    run: Run = {}
    for qid, row_scores, row_indices in zip(data.query_ids, scores, indices):
        docs = run[qid] = {}
        for score, index in zip(row_scores.tolist(), row_indices.tolist()):
            pid = data.corpus_ids[index] if index >= 0 else None
            if pid is not None and not (ignore_identical_ids and pid == qid):
                docs[pid] = score
    return run


def score_model(towers: Towers, data: RetrievalData, settings: EncodeSettings = EncodeSettings(), k: int = 100,
                ignore_identical_ids: bool = True, block_rows: int = 65_536) -> EvalResult:
    """Encode the split's queries, then stream its passages through the search `block_rows` at a time (the corpus'
    embeddings are never held whole), and score: what evaluate.py reports, and train.py after training."""
    queries = towers.encode(data.queries, "query", settings.batch_size, progress=settings.progress)
    _refuse_non_finite(queries, data.query_ids, "query")
    top = TopK(queries, search_depth(k, ignore_identical_ids), settings.search_backend)
    n = len(data.passages)
    blocks = [(start, min(n, start + block_rows)) for start in range(0, n, block_rows)]
    for (start, stop), embeddings in zip(blocks, towers.encode_ranges(data.passages, "passage", blocks,
                                                                      settings.batch_size, progress=settings.progress)):
        _refuse_non_finite(embeddings, data.corpus_ids[start:stop], "passage")
        top.add(embeddings, np.arange(start, stop))
    return evaluate_search(data, *top.result(), k, ignore_identical_ids)


def evaluate_embeddings(data: RetrievalData, queries: np.ndarray, passages: np.ndarray, k: int = 100,
                        backend: str = "auto", ignore_identical_ids: bool = True) -> EvalResult:
    for kind, matrix, ids in (("query", queries, data.query_ids), ("passage", passages, data.corpus_ids)):
        _refuse_non_finite(matrix, ids, kind)
    return evaluate_search(data, *exact_search(queries, passages, search_depth(k, ignore_identical_ids), backend), k,
                           ignore_identical_ids)


def evaluate_search(data: RetrievalData, scores: np.ndarray, indices: np.ndarray, k: int = 100,
                    ignore_identical_ids: bool = True) -> EvalResult:
    """Score a search's results (rows of `data`'s queries, indices into its corpus, best first)."""
    run = build_run(data, scores, indices, ignore_identical_ids)
    run = {q: dict(list(docs.items())[:k]) for q, docs in run.items()}
    per_query = per_query_metrics(data.qrels, run)
    return EvalResult(mean_metrics(per_query), per_query, run)


def search_depth(k: int, ignore_identical_ids: bool = True) -> int:
    """How deep to search for `k` results: one more where a self-match may be skipped."""
    return k + 1 if ignore_identical_ids else k


def _refuse_non_finite(matrix: np.ndarray, ids: list[str], kind: str) -> None:
    if bad := non_finite_rows(matrix):
        raise ValueError(f"{len(bad)} {kind} embeddings are NaN or infinite (ids {[ids[i] for i in bad[:5]]}"
                         f"{' ...' if len(bad) > 5 else ''}): check the model's precision and pooling")


def format_table(metrics: dict[str, float], title: str = "") -> str:
    """A small aligned table of the metrics, for the console."""
    rows = [f"{name:<12}{metrics[name]:.4f}" for name in MEASURES if name in metrics]
    width = max(len(r) for r in rows + [title])
    return "\n".join(([title, "-" * width] if title else []) + rows)


def write_results(result: EvalResult, out_dir: Path, per_query: bool = True, run_depth: int = 0) -> None:
    """metrics.json (exactly the four metrics), per_query.tsv, and optionally a TREC run file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps({n: result.metrics[n] for n in MEASURES}, indent=2) + "\n")
    if per_query:
        with open(out_dir / "per_query.tsv", "w") as f:
            f.write("query_id\t" + "\t".join(MEASURES) + "\n")
            for qid, values in result.per_query.items():
                f.write(qid + "\t" + "\t".join(f"{values[n]:.6f}" for n in MEASURES) + "\n")
    if run_depth:
        with open(out_dir / "run.trec", "w") as f:
            for qid, docs in result.run.items():
                ranked = sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:run_depth]
                for rank, (pid, score) in enumerate(ranked, start=1):
                    f.write(f"{qid} Q0 {pid} {rank} {score:.6f} retriever\n")
