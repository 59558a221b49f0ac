"""Mining: for every training query with a positive, store the teacher's scores once.

The stored candidates (see src/data/candidates.py) are what every mining method reads, at mining time for the
statistics and at training time for the sampler, so one mining run serves a sweep over methods.
"""

from __future__ import annotations

import datetime
import logging
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pa_retriever.data.beir import RetrievalData
from pa_retriever.data.candidates import CandidateArrays, read_manifest, write_candidates
from pa_retriever.encode.search import sort_rows
from pa_retriever.mining.methods import sample_outside
from pa_retriever.mining.teachers import Teacher
from pa_retriever.utils.checks import check_number
from pa_retriever.utils.distributed import barrier
from pa_retriever.utils.io import release_claim, stable_hash, try_claim

log = logging.getLogger(__name__)

# Part of the cache key: bump when the stored candidates change meaning (2: one scoring path; 3: queries of one
# text merged).
CANDIDATES_FORMAT = 3


@dataclass(frozen=True)
class CandidateSettings:
    depth: int = 100  # candidates kept per query: the teacher's top-K, positives excluded
    tail: int = 32  # random passages from below the top-K, with their scores: the fill source
    shard_size: int = 50_000  # passages per embedding shard: the unit of resuming and of sharing work
    seed: int = 0  # for the tail samples
    # Never offer a query the passage with its own id: in a corpus that holds its queries (ArguAna, Quora) that
    # passage is the query itself. As BEIR's evaluation does; turn off where the two id spaces only overlap.
    ignore_identical_ids: bool = True

    def __post_init__(self) -> None:
        check_number("candidates.depth", self.depth, 1, integer=True, why="the teacher's top-K stored per query")
        check_number("candidates.tail", self.tail, 0, integer=True, why="scored random passages per query")
        check_number("candidates.shard_size", self.shard_size, 1, integer=True, why="passages per embedding shard")
        check_number("candidates.seed", self.seed, integer=True)


def data_fingerprint(data: RetrievalData) -> str:
    """The content of a split: corpus texts, the split's query texts and qrels."""
    return stable_hash([data.passages_fingerprint, data.corpus_ids, data.query_ids, data.queries,
                        sorted((q, sorted(j.items())) for q, j in data.qrels.items())])


def candidates_folder(cache_dir: Path, dataset: str, data: RetrievalData, teacher: Teacher,
                      settings: CandidateSettings) -> Path:
    key = stable_hash([data_fingerprint(data), teacher.fingerprint(), asdict(settings), CANDIDATES_FORMAT])
    return Path(cache_dir) / "candidates" / f"{dataset}-{data.report.split}" / f"{teacher.name}-{key}"


def trainable_queries(data: RetrievalData) -> tuple[list[int], np.ndarray]:
    """Rows of the queries with at least one positive in the corpus, and their positives' corpus rows.

    Queries of one text are one query to a bi-encoder: the first of them stands for all, with all their positives
    (as sentence-transformers merges them), so a positive of one is never mined or trained as the other's negative.
    """
    first_row: dict[str, int] = {}  # text -> the row that stands for it
    positives: dict[int, list[int]] = {}  # row -> corpus rows of its positives, in judgement order
    for i, (qid, text) in enumerate(zip(data.query_ids, data.queries)):
        found = [data.passage_index[p] for p in data.positives(qid)]
        if found:
            own = positives.setdefault(first_row.setdefault(text, i), [])
            own += [p for p in found if p not in own]
    rows = list(positives)  # in query order: a row is added when its text is first seen
    pos_idx = np.full((len(rows), max(map(len, positives.values()), default=1)), -1, dtype=np.int64)
    for r, i in enumerate(rows):
        pos_idx[r, : len(positives[i])] = positives[i]
    return rows, pos_idx


def _first_kept(keep: np.ndarray, idx: np.ndarray, width: int) -> np.ndarray:
    """The first `width` entries of each row of `idx` where `keep` is set, in order; -1 pads."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    return np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(idx, order, 1), -1)


def score_candidates(data: RetrievalData, teacher: Teacher, settings: CandidateSettings) -> CandidateArrays:
    """The teacher's view of every trainable query: positives, top-K others, and a scored tail sample.
    The teacher must be prepared with the trainable queries."""
    rows, pos_idx = trainable_queries(data)
    query_ids = [data.query_ids[i] for i in rows]
    search_depth = settings.depth + pos_idx.shape[1] + 1  # room for positives and a self-match to drop
    _, top_idx = teacher.top(search_depth)  # which passages; their scores come from pair_scores below
    skip_own = settings.ignore_identical_ids
    self_idx = np.array([data.passage_index.get(q, -2) if skip_own else -2 for q in query_ids])[:, None]
    is_positive = (top_idx[:, :, None] == pos_idx[:, None, :]).any(-1)
    keep = (top_idx >= 0) & ~is_positive & (top_idx != self_idx)
    neg_idx = _first_kept(keep, top_idx, settings.depth)

    n = len(data.passages)
    tail_idx = np.full((len(rows), settings.tail), -1, dtype=np.int64)
    for r, qid in enumerate(query_ids):  # seeded by query id: independent of order and sharding
        rng = np.random.default_rng([settings.seed, zlib.crc32(qid.encode())])
        excluded = np.concatenate([top_idx[r], pos_idx[r], self_idx[r]])
        sample = sample_outside(n, excluded, settings.tail, rng)
        tail_idx[r, : len(sample)] = sample

    # The search only says which passages: every stored score comes from one pair_scores call. A search sums in
    # another order, so its score for a copy of a positive can fall below the positive's own and slip under a
    # bound set at it (margin 0, perc 1.0).
    widths = np.cumsum([pos_idx.shape[1], settings.depth])
    pos_scores, neg_scores, tail_scores = np.split(
        teacher.pair_scores(np.arange(len(rows)), np.concatenate([pos_idx, neg_idx, tail_idx], 1)), widths, 1)
    neg_idx, neg_scores = _best_first(neg_idx, neg_scores)
    tail_idx, tail_scores = _best_first(tail_idx, tail_scores)
    return CandidateArrays(query_ids, pos_idx, pos_scores, neg_idx, neg_scores, tail_idx, tail_scores, n)


def _best_first(idx: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by (score desc, index asc), empty slots (-1, score -inf) last."""
    scores, idx = sort_rows(scores, idx, idx.shape[1])
    return idx, np.where(idx >= 0, scores, -np.inf).astype(np.float32)


def ensure_candidates(data: RetrievalData, teacher: Teacher, settings: CandidateSettings, cache_dir: Path,
                      dataset: str, rank: int = 0, world: int = 1, poll_seconds: float = 2.0) -> Path:
    """The candidates folder for (data, teacher, settings), mined first if it is not complete.

    With `world` > 1 processes (torchrun), each encodes its share of the embedding shards; process 0 searches
    and writes the file; all return once it exists. Jobs sharing the cache split the encoding (claims on shards),
    and one of them searches and writes while the others wait for its file.
    """
    folder = candidates_folder(cache_dir, dataset, data, teacher, settings)
    if read_manifest(folder) is not None:
        log.info("Candidates for %s found in %s", teacher.name, folder)
        return folder
    started = time.time()
    rows, _ = trainable_queries(data)
    teacher.prepare(data, [data.queries[i] for i in rows], rank, world)  # every process: encoding is shared
    claim = folder / "mining.claim"
    while rank == 0 and read_manifest(folder) is None:
        if not try_claim(claim):  # another job is writing this very file: wait for it
            time.sleep(poll_seconds)
            continue
        try:
            _write_mined(folder, data, teacher, settings, dataset, started)
        finally:
            release_claim(claim)
    if world > 1:
        barrier()
    return folder


def _write_mined(folder: Path, data: RetrievalData, teacher: Teacher, settings: CandidateSettings, dataset: str,
                 started: float) -> None:
    candidates = score_candidates(data, teacher, settings)
    manifest = {
        "teacher": teacher.name, **{f"teacher_{k}": v for k, v in teacher.describe().items()},
        "miner": asdict(settings), "data_path": str(dataset), "split": data.report.split,
        "counts": {"queries_in_split": len(data.query_ids), "queries_mined": len(candidates),
                   "queries_without_positive": data.report.queries_without_positive,
                   "queries_merged_by_text": (len(data.query_ids) - data.report.queries_without_positive
                                              - len(candidates)),
                   "passages": len(data.passages)},
        "seconds": round(time.time() - started, 1),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_candidates(folder, candidates, data.corpus_ids, manifest)
    log.info("Mined %d queries with %s in %.1fs into %s", len(candidates), teacher.name, time.time() - started, folder)
