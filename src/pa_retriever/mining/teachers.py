"""Teachers score (query, passage) pairs. Each offers two primitives the miner builds on:

    top(k, rows)              the k best passages of the given queries: (scores, corpus rows), best first
    pair_scores(rows, idx)    the scores of given passages for given queries (positives, top-K, tail samples)

`rows` index the queries the teacher was prepared with; the miner asks for them a part at a time.

A dense teacher encodes with any model config (its embeddings cached as resumable fp16 shards, encoded by
every process of a distributed run); BM25 uses bm25s; a cross-encoder rescores another teacher's top-K
(mining/cross_encoder.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pa_retriever.data.beir import RetrievalData
from pa_retriever.encode.embedding_cache import ShardedEmbeddings
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.encode.search import exact_search
from pa_retriever.encode.spec import EncoderSpec, resolve_model_path, weights_stamp
from pa_retriever.encode.towers import Towers
from pa_retriever.mining.cross_encoder import CrossEncoderTeacher
from pa_retriever.utils.checks import check_number
from pa_retriever.utils.distributed import barrier
from pa_retriever.utils.io import stable_hash, texts_fingerprint

log = logging.getLogger(__name__)


class Teacher(Protocol):
    name: str

    def fingerprint(self) -> dict[str, Any]: ...
    def prepare(self, data: RetrievalData, queries: list[str], rank: int = 0, world: int = 1) -> None: ...
    def top(self, k: int, query_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def pair_scores(self, query_rows: np.ndarray, passage_idx: np.ndarray) -> np.ndarray: ...


class DenseTeacher:
    """A bi-encoder teacher: cosine (inner product of normalised embeddings), exactly as evaluate.py scores."""

    def __init__(self, name: str, spec: EncoderSpec, settings: EncodeSettings, cache_dir: Path, shard_size: int):
        self.name, self.spec, self.settings = name, spec, settings
        self.cache_dir, self.shard_size = Path(cache_dir), shard_size
        self.encoder: Towers | None = None

    def fingerprint(self) -> dict[str, Any]:
        stamp = weights_stamp(self.spec.name_or_path)  # a local folder's weights: retrained in place, mined again
        # `auto` resolved: machines sharing a cache that differ in bf16 support must not mix their shards
        return {"kind": "dense", **self.spec.as_dict(), "precision": self.settings.precision_name(),
                **({"weights": stamp} if stamp else {})}

    def describe(self) -> dict[str, Any]:
        """For the manifest: the spec plus where the weights came from."""
        info = {**self.fingerprint(), "model_path": resolve_model_path(self.spec.name_or_path)}
        if self.encoder is not None:
            info["commit"] = getattr(self.encoder.query.model.config, "_commit_hash", None)
        return info

    def _embeddings(self, n_texts: int, texts_key: str, kind: str) -> ShardedEmbeddings:
        folder = (self.cache_dir / "embeddings" / f"{self.name}-{stable_hash(self.fingerprint())}"
                  / f"{kind}-{texts_key}-shards{self.shard_size}")  # row i is in shard i // size
        return ShardedEmbeddings(folder, n_texts, self.shard_size)

    def prepare(self, data: RetrievalData, queries: list[str], rank: int = 0, world: int = 1) -> None:
        """Encode the corpus and the queries into the cache; `world` processes share the shards."""
        self.passages = self._embeddings(len(data.passages), data.passages_fingerprint, "passage")
        self.queries = self._embeddings(len(queries), texts_fingerprint(queries), "query")
        for store, texts, kind in ((self.passages, data.passages, "passage"), (self.queries, queries, "query")):
            if store.missing():
                if self.encoder is None:
                    self.encoder = Towers.load(self.spec, self.settings)
                store.build(self.encoder, texts, kind, self.settings.batch_size, rank, world, self.settings.progress)
        if world > 1:
            barrier()  # every shard exists before anyone searches
        self.query_embeddings = self.queries.load()

    def top(self, k: int, query_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(self.query_embeddings[query_rows], self.passages.shards(), k, self.settings.search_backend)

    def pair_scores(self, query_rows: np.ndarray, passage_idx: np.ndarray, budget: int = 256 << 20) -> np.ndarray:
        out = np.empty(passage_idx.shape, dtype=np.float32)
        row_bytes = 4 * max(1, passage_idx.shape[1]) * self.query_embeddings.shape[1]
        chunk = max(1, budget // row_bytes)  # bounded memory: `budget` bytes of passage vectors at a time
        for start in range(0, len(query_rows), chunk):
            idx = passage_idx[start:start + chunk]
            vectors = self.passages.rows(idx.reshape(-1)).reshape(*idx.shape, -1)
            scores = np.einsum("qd,qkd->qk", self.query_embeddings[query_rows[start:start + chunk]], vectors)
            out[start:start + chunk] = np.where(idx >= 0, scores, np.nan)
        return out


class BM25Teacher:
    """Lexical scores from bm25s (Lucene's BM25 variant), with optional stemming and stopwords."""

    def __init__(self, name: str, k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en",
                 stemmer: str | None = "english"):
        check_number(f"teacher {name}: k1", k1, 0, why="BM25's term-frequency saturation")
        check_number(f"teacher {name}: b", b, 0, 1, why="BM25's length normalisation")
        self.name, self.k1, self.b, self.stopwords, self.stemmer_name = name, k1, b, stopwords, stemmer

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "bm25", "k1": self.k1, "b": self.b, "stopwords": self.stopwords, "stemmer": self.stemmer_name}

    def describe(self) -> dict[str, Any]:
        return self.fingerprint()

    def _tokenize(self, texts: list[str], ids: bool):
        import bm25s
        return bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stemmer, return_ids=ids,
                              show_progress=False)

    def prepare(self, data: RetrievalData, queries: list[str], rank: int = 0, world: int = 1) -> None:
        import bm25s
        self.stemmer = None
        if self.stemmer_name:
            import Stemmer
            self.stemmer = Stemmer.Stemmer(self.stemmer_name).stemWords
        self.retriever = bm25s.BM25(k1=self.k1, b=self.b)
        self.retriever.index(self._tokenize(data.passages, ids=True), show_progress=False)
        self.query_tokens = self._tokenize(queries, ids=False)
        self.n_passages = len(data.passages)
        # bm25s keeps a column of passage scores per token; rows per passage make a pair's score a few lookups,
        # where get_scores would score the whole corpus for every query.
        import scipy.sparse
        index = self.retriever.scores
        self.by_passage = scipy.sparse.csc_matrix((index["data"], index["indices"], index["indptr"]),
                                                  shape=(index["num_docs"], len(index["indptr"]) - 1)).tocsr()

    def top(self, k: int, query_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k_found = min(k, self.n_passages)
        queries = [self.query_tokens[r] for r in query_rows]
        indices, scores = self.retriever.retrieve(queries, k=k_found, show_progress=False, n_threads=0)
        pad = k - k_found
        return (np.pad(scores.astype(np.float32), ((0, 0), (0, pad)), constant_values=-np.inf),
                np.pad(indices.astype(np.int64), ((0, 0), (0, pad)), constant_values=-1))

    def pair_scores(self, query_rows: np.ndarray, passage_idx: np.ndarray) -> np.ndarray:
        """As bm25s' get_scores: the sum over the query's known tokens, a repeated token counted each time."""
        out = np.full(passage_idx.shape, np.nan, dtype=np.float32)
        unscored = self.retriever.nonoccurrence_array  # BM25L and BM25+ score absent tokens too; Lucene's does not
        for i, row in enumerate(query_rows):
            valid = passage_idx[i] >= 0
            tokens, counts = np.unique(np.asarray(self.retriever.get_tokens_ids(self.query_tokens[row]), np.int64),
                                       return_counts=True)
            scores = self.by_passage[passage_idx[i, valid]][:, tokens] @ counts.astype(np.float32)
            out[i, valid] = scores + (unscored[tokens] @ counts if unscored is not None else 0)
        return out


def build_teachers(teacher_cfg: Any, settings: EncodeSettings, cache_dir: Path, shard_size: int) -> list[Teacher]:
    """One teacher, or each member of an ensemble config (`members: {name: teacher config}`)."""
    members = teacher_cfg.get("members")
    named = members.items() if members else [(teacher_cfg.name, teacher_cfg)]
    return [_teacher(name, cfg, settings, cache_dir, shard_size) for name, cfg in named]


def _teacher(name: str, cfg: Any, settings: EncodeSettings, cache_dir: Path, shard_size: int) -> Teacher:
    if cfg.kind == "bm25":
        return BM25Teacher(name, cfg.k1, cfg.b, cfg.stopwords, cfg.stemmer)
    if cfg.kind == "dense":
        return DenseTeacher(name, EncoderSpec.from_config(cfg), settings, cache_dir, shard_size)
    if cfg.kind == "cross_encoder":
        first = _teacher(cfg.first_stage.name, cfg.first_stage, settings, cache_dir, shard_size)
        return CrossEncoderTeacher(name, cfg.name_or_path, first, settings, cfg.max_length, cfg.batch_size,
                                   cfg.activation)
    raise ValueError(f"teacher {name}: kind must be 'dense', 'bm25' or 'cross_encoder', got {cfg.kind!r}")
