"""Mining: for every training query with a positive, store the teacher's scores once.

The stored candidates (see src/data/candidates.py) are what every mining method reads, at mining time for the
statistics and at training time for the sampler, so one mining run serves a sweep over methods.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pa_retriever.data.beir import RetrievalData
from pa_retriever.data.candidates import CandidateArrays, read_manifest, write_candidates
from pa_retriever.encode.search import sort_rows
from pa_retriever.mining.methods import sample_outside
from pa_retriever.mining.teachers import Teacher
from pa_retriever.utils.checks import check_number
from pa_retriever.utils.distributed import barrier
from pa_retriever.utils.io import atomic_path, claim_unfinished, release_claim, stable_hash

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
    # Queries mined per part: the unit of resuming and of sharing work (parts of a cross-encoder teacher are slow).
    # Not in the cache key: the parts add up to the same file whatever their size.
    query_chunk: int = 4096

    def __post_init__(self) -> None:
        check_number("candidates.depth", self.depth, 1, integer=True, why="the teacher's top-K stored per query")
        check_number("candidates.tail", self.tail, 0, integer=True, why="scored random passages per query")
        check_number("candidates.shard_size", self.shard_size, 1, integer=True, why="passages per embedding shard")
        check_number("candidates.seed", self.seed, integer=True)
        check_number("candidates.query_chunk", self.query_chunk, 1, integer=True, why="queries mined per part")

    def key(self) -> dict:
        """What the stored candidates depend on."""
        return {k: v for k, v in asdict(self).items() if k != "query_chunk"}


def data_fingerprint(data: RetrievalData) -> str:
    """The content of a split: corpus texts, the split's query texts and qrels."""
    return stable_hash([data.passages_fingerprint, data.corpus_ids, data.query_ids, data.queries,
                        sorted((q, sorted(j.items())) for q, j in data.qrels.items())])


def candidates_folder(cache_dir: Path, dataset: str, data: RetrievalData, teacher: Teacher,
                      settings: CandidateSettings) -> Path:
    key = stable_hash([data_fingerprint(data), teacher.fingerprint(), settings.key(), CANDIDATES_FORMAT])
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


def score_candidates(data: RetrievalData, teacher: Teacher, settings: CandidateSettings,
                     part: slice = slice(None)) -> CandidateArrays:
    """The teacher's view of the trainable queries in `part` (all by default): positives, top-K others, and a scored
    tail sample. The teacher must be prepared with the trainable queries."""
    rows, pos_idx = trainable_queries(data)
    query_rows = np.arange(len(rows))[part]
    query_ids, pos_idx = [data.query_ids[rows[r]] for r in query_rows], pos_idx[query_rows]
    search_depth = settings.depth + pos_idx.shape[1] + 1  # room for positives and a self-match to drop
    _, top_idx = teacher.top(search_depth, query_rows)  # which passages; their scores come from pair_scores below
    skip_own = settings.ignore_identical_ids
    self_idx = np.array([data.passage_index.get(q, -2) if skip_own else -2 for q in query_ids])[:, None]
    is_positive = (top_idx[:, :, None] == pos_idx[:, None, :]).any(-1)
    keep = (top_idx >= 0) & ~is_positive & (top_idx != self_idx)
    neg_idx = _first_kept(keep, top_idx, settings.depth)

    n = len(data.passages)
    tail_idx = np.full((len(query_rows), settings.tail), -1, dtype=np.int64)
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
        teacher.pair_scores(query_rows, np.concatenate([pos_idx, neg_idx, tail_idx], 1)), widths, 1)
    neg_idx, neg_scores = _best_first(neg_idx, neg_scores)
    tail_idx, tail_scores = _best_first(tail_idx, tail_scores)
    return CandidateArrays(query_ids, pos_idx, pos_scores, neg_idx, neg_scores, tail_idx, tail_scores, n)


def _best_first(idx: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by (score desc, index asc), empty slots (-1, score -inf) last."""
    scores, idx = sort_rows(scores, idx, idx.shape[1])
    return idx, np.where(idx >= 0, scores, -np.inf).astype(np.float32)


class MinedParts:
    """The candidates of consecutive ranges of the trainable queries, `query_chunk` each, written atomically as they
    are mined: a run killed mid-way (kill -9 too) resumes at the first missing part and ends with the file of an
    unbroken run. torchrun processes take parts by number (each searches and scores its share), jobs sharing the
    cache split them by claim files."""

    def __init__(self, folder: Path, n_queries: int, query_chunk: int):
        self.candidates = Path(folder)
        self.folder, self.n_queries, self.query_chunk = self.candidates / "parts", n_queries, query_chunk
        self.n_parts = max(1, -(-n_queries // query_chunk))

    def path(self, part: int) -> Path:
        return self.folder / f"part-{part:05d}.npz"

    def mine(self, data: RetrievalData, teacher: Teacher, settings: CandidateSettings, rank: int = 0, world: int = 1,
             poll_seconds: float = 2.0) -> None:
        """Mine this process's missing parts (part i belongs to rank i % world); wait for those another job holds."""
        mine = [i for i in range(self.n_parts) if i % world == rank]
        bar = tqdm(total=len(mine), desc=f"mine with {teacher.name}", unit="part", disable=len(mine) < 2)
        bar.update(sum(self.path(i).is_file() for i in mine))
        while not self.joined() and (todo := [i for i in mine if not self.path(i).is_file()]):
            mined = 0
            for part in todo:
                claim = self.folder / f"part-{part:05d}.claim"
                if not claim_unfinished(claim, lambda part=part: self.path(part).is_file() or self.joined()):
                    continue
                try:
                    start = part * self.query_chunk
                    c = score_candidates(data, teacher, settings, slice(start, start + self.query_chunk))
                    with atomic_path(self.path(part)) as tmp:
                        with open(tmp, "wb") as f:
                            np.savez(f, pos_scores=c.pos_scores, neg_idx=c.neg_idx, neg_scores=c.neg_scores,
                                     tail_idx=c.tail_idx, tail_scores=c.tail_scores)
                finally:
                    release_claim(claim)
                mined += 1
                bar.update()
            if not mined:
                time.sleep(poll_seconds)  # every missing part is another job's: wait for it
        bar.close()

    def joined(self) -> bool:
        """Whether a job has written the candidates file (and removed the parts): nothing is left to mine."""
        return read_manifest(self.candidates) is not None

    def assemble(self, data: RetrievalData) -> CandidateArrays:
        rows, pos_idx = trainable_queries(data)
        parts = []
        for i in range(self.n_parts):
            with np.load(self.path(i)) as part:
                parts.append({name: part[name] for name in part.files})
        joined = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return CandidateArrays([data.query_ids[r] for r in rows], pos_idx, n_passages=len(data.passages), **joined)


def ensure_candidates(data: RetrievalData, teacher: Teacher, settings: CandidateSettings, cache_dir: Path,
                      dataset: str, rank: int = 0, world: int = 1, poll_seconds: float = 2.0) -> Path:
    """The candidates folder for (data, teacher, settings), mined first if it is not complete.

    With `world` > 1 processes (torchrun), each encodes its share of the embedding shards, then searches and scores
    its share of the queries; process 0 joins the parts into the file; all return once it exists. Jobs sharing the
    cache split the same work by claims, and one of them writes the file while the others wait for it.
    """
    folder = candidates_folder(cache_dir, dataset, data, teacher, settings)
    if read_manifest(folder) is not None:
        log.info("Candidates for %s found in %s", teacher.name, folder)
        return folder
    started = time.time()
    rows, _ = trainable_queries(data)
    teacher.prepare(data, [data.queries[i] for i in rows], rank, world)  # every process: encoding is shared
    parts = MinedParts(folder, len(rows), settings.query_chunk)
    parts.mine(data, teacher, settings, rank, world, poll_seconds)
    if world > 1:
        barrier()  # every part exists
    claim = folder / "mining.claim"
    while rank == 0 and not parts.joined():
        if not claim_unfinished(claim, parts.joined):
            time.sleep(poll_seconds)  # another job is writing this very file: wait for it
            continue
        try:
            parts.mine(data, teacher, settings, poll_seconds=poll_seconds)  # any part another job left unfinished
            _write_mined(folder, data, parts.assemble(data), teacher, settings, dataset, started)
            shutil.rmtree(parts.folder, ignore_errors=True)
        finally:
            release_claim(claim)
    if world > 1:
        barrier()
    return folder


def _write_mined(folder: Path, data: RetrievalData, candidates: CandidateArrays, teacher: Teacher,
                 settings: CandidateSettings, dataset: str, started: float) -> None:
    manifest = {
        "teacher": teacher.name, **{f"teacher_{k}": v for k, v in teacher.describe().items()},
        "miner": settings.key(), "data_path": str(dataset), "split": data.report.split,
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
