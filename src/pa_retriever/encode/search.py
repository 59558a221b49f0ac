"""Exact inner-product top-k search, with faiss or torch, in bounded memory.

The corpus may come as several shards (arrays or memory maps) or be streamed block by block (`TopK`): each block
is searched in pieces so that no score matrix larger than `max_block_scores` floats exists at once, and a running
top-k is merged block by block. Results are ordered by score, then by corpus index, so both backends agree
wherever scores differ.
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


class TopK:
    """The best `k` corpus rows of every query among the blocks added so far: a corpus streamed through it block by
    block (shards from disk, embeddings straight from the encoder) is never held whole. No score matrix larger than
    `max_block_scores` floats exists at once."""

    def __init__(self, queries: np.ndarray, k: int, backend: str = "auto", max_block_scores: int = 2**26):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k, self.max_block_scores = k, max_block_scores
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.indices = np.full((len(queries), k), -1, dtype=np.int64)
        backend = choose_backend(backend)
        self.searcher = _FaissSearcher(queries) if backend == "faiss" else _TorchSearcher(queries)

    def add(self, block: np.ndarray, rows: np.ndarray) -> None:
        """Embeddings of the corpus rows `rows` (any float dtype: converted a piece at a time)."""
        nq = len(self.scores)
        corpus_rows = max(1, min(len(block), self.max_block_scores // max(1, min(nq, 1024))))
        for c_start in range(0, len(block), corpus_rows):
            n_rows = min(corpus_rows, len(block) - c_start)
            piece = self.searcher.prepare(block[c_start:c_start + n_rows])
            query_rows = max(1, self.max_block_scores // n_rows)
            ids = np.asarray(rows[c_start:c_start + n_rows], dtype=np.int64)
            for q_start in range(0, nq, query_rows):
                queries = slice(q_start, min(nq, q_start + query_rows))
                scores, idx = self.searcher.topk(queries, piece, min(self.k, n_rows))
                found = np.where(idx < 0, -1, ids[np.maximum(idx, 0)])  # faiss: -1 for a NaN row
                self.merge(queries, scores.astype(np.float32), found)

    def merge(self, queries: slice, scores: np.ndarray, indices: np.ndarray) -> None:
        """Fold in candidates found elsewhere (another block, another process) for the queries `queries`."""
        self.scores[queries], self.indices[queries] = sort_rows(
            np.concatenate([self.scores[queries], scores], axis=1),
            np.concatenate([self.indices[queries], indices], axis=1), self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.scores, self.indices


def exact_search(queries: np.ndarray, corpus: np.ndarray | Sequence[np.ndarray], k: int, backend: str = "auto",
                 max_block_scores: int = 2**26) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` corpus rows by inner product for every query: (scores float32, indices int64), best first.

    `corpus` is one array or a sequence of shards (row indices run on across shards). Rows beyond the corpus
    size come back as index -1 with score -inf.
    """
    top = TopK(queries, k, backend, max_block_scores)
    offset = 0
    for shard in [corpus] if isinstance(corpus, np.ndarray) else corpus:
        top.add(shard, np.arange(offset, offset + len(shard)))
        offset += len(shard)
    return top.result()
