"""Exact inner-product top-k search, with faiss or torch, in bounded memory.

The corpus may come as several shards (arrays or memory maps): each is searched in blocks of queries so that
no score matrix larger than `max_block_scores` floats exists at once, and a running top-k is merged shard by
shard. Results are ordered by score, then by corpus index, so both backends agree wherever scores differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every fallback it tries

BACKENDS = ("auto", "faiss", "torch")


def non_finite_rows(embeddings: np.ndarray, chunk: int = 65_536) -> list[int]:
    """Rows holding a NaN or infinity: a search never returns such a passage (faiss gives -1) and gives such a
    query nothing, so callers refuse them by name instead. Checked in chunks: no full-size mask."""
    return [start + i for start in range(0, len(embeddings), chunk)
            for i in np.flatnonzero(~np.isfinite(embeddings[start:start + chunk]).all(1)).tolist()]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(backend: str = "auto") -> str:
    """`auto`: faiss when it can use the GPU or there is no GPU; torch on a GPU that faiss cannot see."""
    if backend not in BACKENDS:
        raise ValueError(f"search backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if not faiss_available():
        return "torch"
    import faiss
    faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return "torch" if torch.cuda.is_available() and faiss_gpus == 0 else "faiss"


def sort_rows(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of each row by (score desc, index asc); missing entries (index -1) go last."""
    key_scores = np.where(indices < 0, -np.inf, scores)
    order = np.lexsort((indices, -key_scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


class _FaissSearcher:
    """Brute-force inner product with faiss: on its GPUs when it has them."""

    def __init__(self, queries: np.ndarray):
        import faiss
        self.faiss, self.queries = faiss, queries
        on_gpu = hasattr(faiss, "knn_gpu") and faiss.get_num_gpus() > 0
        self.resources = faiss.StandardGpuResources() if on_gpu else None

    def prepare(self, block: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(block, dtype=np.float32)

    def topk(self, rows: slice, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        metric = self.faiss.METRIC_INNER_PRODUCT
        if self.resources is not None:
            return self.faiss.knn_gpu(self.resources, self.queries[rows], block, k, metric=metric)
        return self.faiss.knn(self.queries[rows], block, k, metric=metric)


class _TorchSearcher:
    """Chunked matmul + top-k, on the GPU when there is one (for GPUs that faiss cannot use)."""

    def __init__(self, queries: np.ndarray):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.queries = torch.from_numpy(queries).to(self.device)

    def prepare(self, block: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(block)).to(self.device, torch.float32)

    def topk(self, rows: slice, block: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, indices = (self.queries[rows] @ block.T).topk(k, dim=1)
        return scores.cpu().numpy(), indices.cpu().numpy()


def exact_search(queries: np.ndarray, corpus: np.ndarray | Sequence[np.ndarray], k: int, backend: str = "auto",
                 max_block_scores: int = 2**26) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` corpus rows by inner product for every query: (scores float32, indices int64), best first.

    `corpus` is one array or a sequence of shards (row indices run on across shards). Rows beyond the corpus
    size come back as index -1 with score -inf.
    """
    backend = choose_backend(backend)
    shards = [corpus] if isinstance(corpus, np.ndarray) else list(corpus)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = len(queries)
    best_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    best_indices = np.full((nq, k), -1, dtype=np.int64)
    searcher = _FaissSearcher(queries) if backend == "faiss" else _TorchSearcher(queries)
    offset = 0
    for shard in shards:
        # Within a shard, bound the score matrix by splitting both corpus rows and queries.
        corpus_rows = max(1, min(len(shard), max_block_scores // max(1, min(nq, 1024))))
        for c_start in range(0, len(shard), corpus_rows):
            n_rows = min(corpus_rows, len(shard) - c_start)
            block = searcher.prepare(shard[c_start:c_start + n_rows])
            query_rows = max(1, max_block_scores // n_rows)
            for q_start in range(0, nq, query_rows):
                rows = slice(q_start, min(nq, q_start + query_rows))
                scores, idx = searcher.topk(rows, block, min(k, n_rows))
                merged_scores = np.concatenate([best_scores[rows], scores.astype(np.float32)], axis=1)
                found = np.where(idx < 0, -1, idx.astype(np.int64) + offset + c_start)  # faiss: -1 for a NaN row
                merged_idx = np.concatenate([best_indices[rows], found], axis=1)
                best_scores[rows], best_indices[rows] = sort_rows(merged_scores, merged_idx, k)
        offset += len(shard)
    return best_scores, best_indices
