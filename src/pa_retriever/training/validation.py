"""Validation in bounded memory: each process keeps the passages it encoded (fp16, its share only) and searches
them against every process's queries; only the queries and each process's top-k cross processes, never the corpus.
The scores are those of evaluate.py on the same embeddings."""

from __future__ import annotations

import numpy as np

from pa_retriever.data.beir import RetrievalData
from pa_retriever.encode.search import TopK, sort_rows
from pa_retriever.eval.retrieval import EvalResult, evaluate_search, search_depth
from pa_retriever.utils.distributed import all_gather_object


class ValidationSearch:
    """What one validation pass encoded on this process, scored when the pass ends."""

    def __init__(self):
        self.parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"query": [], "passage": []}

    def add(self, kind: str, rows: np.ndarray, embeddings: np.ndarray) -> None:
        self.parts[kind].append((rows, embeddings.astype(np.float16 if kind == "passage" else np.float32)))

    def score(self, data: RetrievalData, k: int, backend: str = "auto") -> tuple[EvalResult, int, int] | None:
        """The metrics over the queries encoded on any process, searching the passages encoded on any (with
        limit_val_batches, fast_dev_run: a part of each), and how many of each were encoded; None if no query was."""
        query_parts = [part for parts in all_gather_object(self.parts["query"]) for part in parts]
        passage_rows = np.concatenate([rows for rows, _ in self.parts["passage"]] or [np.zeros(0, np.int64)])
        # a row two processes encoded counts twice: only in tiny sets
        n_passages = sum(all_gather_object(len(np.unique(passage_rows))))
        if not query_parts:
            return None
        rows = np.concatenate([r for r, _ in query_parts])
        rows, first = np.unique(rows, return_index=True)  # in row order, each once
        queries = np.concatenate([e for _, e in query_parts])[first]
        depth = search_depth(k)  # as evaluate.py searches
        top = TopK(queries, depth, backend)
        if self.parts["passage"]:
            top.add(np.concatenate([e for _, e in self.parts["passage"]]), passage_rows)
        self.parts = {"query": [], "passage": []}
        found = all_gather_object(top.result())
        scores, indices = (np.concatenate(arrays, axis=1) for arrays in zip(*found))
        scores, indices = sort_rows(*_drop_repeats(scores, indices), depth)
        part = data if len(rows) == len(data.queries) else data.with_queries(rows)
        return evaluate_search(part, scores, indices, k), len(rows), n_passages


def _drop_repeats(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A passage found on two processes (encoded by both) once: repeats marked missing (index -1)."""
    scores, indices = sort_rows(scores, indices, scores.shape[1])
    repeat = np.zeros(indices.shape, bool)
    repeat[:, 1:] = (indices[:, 1:] == indices[:, :-1]) & (indices[:, 1:] >= 0)
    return np.where(repeat, -np.inf, scores), np.where(repeat, -1, indices)

