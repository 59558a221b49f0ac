"""Where a training split's candidates come from: teachers' scores mined once into the cache, or no teacher.

A source is checked against the mining method before any work (`check`), mines what the cache lacks on the
processes of one node or all (`mine`), and loads the arrays every mining method reads (`load`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pa_retriever.data.beir import RetrievalData
from pa_retriever.data.candidates import CandidateArrays, load_candidates
from pa_retriever.encode.embedding_cache import TeacherEmbeddings
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.mining.methods import ENSEMBLE_METHODS, MiningMethod
from pa_retriever.mining.miner import CandidateSettings, data_fingerprint, ensure_candidates, trainable_queries
from pa_retriever.mining.teachers import DenseTeacher, Teacher, build_teachers
from pa_retriever.utils.checks import SettingError, check_number


class CandidateSource(Protocol):
    name: str

    def check(self, method: MiningMethod, distill: bool = False, embeddings: bool = False) -> None: ...
    def mine(self, data: RetrievalData, rank: int = 0, world: int = 1) -> None: ...
    def load(self, data: RetrievalData) -> dict[str, CandidateArrays]: ...
    def embeddings(self, data: RetrievalData) -> TeacherEmbeddings: ...


class MinedCandidates:
    """A teacher's (or an ensemble's members') stored scores, mined into the cache when missing."""

    def __init__(self, name: str, teachers: list[Teacher], settings: CandidateSettings, cache_dir: Path,
                 dataset: str):
        self.name, self.teachers, self.settings = name, teachers, settings
        self.cache_dir, self.dataset = Path(cache_dir), dataset
        self._loaded: dict[str, dict[str, CandidateArrays]] = {}

    def check(self, method: MiningMethod, distill: bool = False, embeddings: bool = False) -> None:
        """An ensemble method needs an ensemble teacher and a plain method a single one, distillation one teacher's
        scores, the teacher's embeddings a dense teacher: refused before mining."""
        if distill and len(self.teachers) > 1:
            raise SettingError(f"module.loss distils one teacher's scores, and teacher={self.name} has "
                               f"{len(self.teachers)} members on their own scales: choose a single teacher")
        if embeddings and (len(self.teachers) > 1 or not isinstance(self.teachers[0], DenseTeacher)):
            raise SettingError(f"teacher={self.name} has no embeddings to score in-batch pairs with: the teacher "
                               "scorer needs one dense teacher; use module.in_batch_filter.scorer=student")
        if method.ensemble is not None and len(self.teachers) == 1:
            raise ValueError(f"mining={method.name} combines teachers, and teacher={self.name} is one: choose a "
                             "teacher with members (teacher=small_ensemble, paper_ensemble)")
        if method.ensemble is None and len(self.teachers) > 1:
            raise ValueError(f"teacher={self.name} has {len(self.teachers)} members, and mining={method.name} reads "
                             f"one: choose an ensemble method ({', '.join(f'mining={m}' for m in ENSEMBLE_METHODS)})")
        stored = self.settings.depth + self.settings.tail
        check_number("mining.num_negatives", method.num_negatives, 0, stored, integer=True,
                     why=f"no more than the candidates.depth={self.settings.depth} + candidates.tail="
                         f"{self.settings.tail} passages stored per query")
        if method.filter == "shifted":
            check_number("mining.shift", method.shift, 0, self.settings.depth, high_open=True, integer=True,
                         why=f"below candidates.depth={self.settings.depth}, or every stored candidate is skipped")
        if method.select in ("sampled", "top1_sampled"):
            check_number("mining.sample_k", method.sample_k, method.num_negatives, self.settings.depth, integer=True,
                         why=f"drawn among the first sample_k of candidates.depth={self.settings.depth}")

    def mine(self, data: RetrievalData, rank: int = 0, world: int = 1) -> None:
        for teacher in self.teachers:
            ensure_candidates(data, teacher, self.settings, self.cache_dir, self.dataset, rank, world)

    def load(self, data: RetrievalData) -> dict[str, CandidateArrays]:
        """{teacher: candidates} of `data`, mined first when missing; read once per split."""
        key = data_fingerprint(data)
        if key not in self._loaded:
            folders = {t.name: ensure_candidates(data, t, self.settings, self.cache_dir, self.dataset)
                       for t in self.teachers}
            loaded = {name: load_candidates(folder, data.passage_index) for name, folder in folders.items()}
            first = next(iter(loaded.values()))
            if differing := [name for name, c in loaded.items() if c.query_ids != first.query_ids]:
                raise ValueError(f"teachers {differing} were mined on other queries than {next(iter(loaded))}; "
                                 "mine them again")
            self._loaded[key] = loaded
        return self._loaded[key]

    def embeddings(self, data: RetrievalData) -> TeacherEmbeddings:
        """The dense teacher's cached embeddings of `data` (encoded where the cache lacks them)."""
        teacher = self.teachers[0]  # one dense teacher: check(embeddings=True) refused any other
        rows, _ = trainable_queries(data)
        teacher.prepare(data, [data.queries[i] for i in rows])
        return TeacherEmbeddings(teacher.query_embeddings, teacher.passages)


class NoTeacher:
    """The labelled positives alone: all that in-batch-only or random negatives read, so such a baseline never pays
    for mining (same queries and positives, in the same order, as mined candidates)."""

    name = "none"

    def check(self, method: MiningMethod, distill: bool = False, embeddings: bool = False) -> None:
        if method.uses_teacher:
            raise ValueError(f"mining={method.name} reads teacher scores: choose a teacher")
        if distill:
            raise SettingError(f"module.loss distils teacher scores, and mining={method.name} reads none: choose a "
                               "method that mines with a teacher, or module.loss.kl=0 module.loss.margin_mse=0")
        if embeddings:
            raise SettingError(f"mining={method.name} reads no teacher, so there are no teacher embeddings to score "
                               "in-batch pairs with; use module.in_batch_filter.scorer=student")

    def mine(self, data: RetrievalData, rank: int = 0, world: int = 1) -> None:
        pass

    def embeddings(self, data: RetrievalData) -> TeacherEmbeddings:
        raise NotImplementedError  # refused by check

    def load(self, data: RetrievalData) -> dict[str, CandidateArrays]:
        rows, pos_idx = trainable_queries(data)
        no_idx, no_scores = np.full((len(rows), 0), -1, np.int64), np.full((len(rows), 0), -np.inf, np.float32)
        return {"no teacher": CandidateArrays([data.query_ids[i] for i in rows], pos_idx,
                                              np.full(pos_idx.shape, np.nan, np.float32), no_idx, no_scores, no_idx,
                                              no_scores, len(data.passages))}


class GivenNegatives:
    """The negatives pair data gives each query, in its order, with no teacher: classification, clustering and STS
    data come with theirs. Unscored (stored as 0), they serve the methods that read no score: naive top-k takes
    them in order, random ignores them."""

    name = "given"

    def check(self, method: MiningMethod, distill: bool = False, embeddings: bool = False) -> None:
        if distill or embeddings:
            raise SettingError("teacher=given has no teacher scores to distil nor embeddings to score in-batch pairs "
                               "with: mine this dataset with a teacher, or leave module.loss and "
                               "module.in_batch_filter.scorer at their defaults")
        if method.filter != "none" or method.select not in ("top", "random") or method.ensemble is not None:
            raise SettingError(f"teacher=given: the data's own negatives carry no teacher score, which "
                               f"mining={method.name} needs; use mining=naive_topk (them, in order) or a teacher")

    def mine(self, data: RetrievalData, rank: int = 0, world: int = 1) -> None:
        if not data.given_negatives:
            raise SettingError("teacher=given: the data gives no negatives (pair rows without 'negatives')")

    def embeddings(self, data: RetrievalData) -> TeacherEmbeddings:
        raise NotImplementedError  # refused by check

    def load(self, data: RetrievalData) -> dict[str, CandidateArrays]:
        self.mine(data)
        rows, pos_idx = trainable_queries(data)
        by_text: dict[str, list[int]] = {}  # queries of one text train as one: all their negatives
        for qid, text in zip(data.query_ids, data.queries):
            by_text.setdefault(text, []).extend(data.passage_index[p] for p in data.given_negatives.get(qid, []))
        lists = [[p for p in dict.fromkeys(by_text[data.queries[r]]) if p not in set(pos_idx[i])]
                 for i, r in enumerate(rows)]
        neg_idx = np.full((len(rows), max(map(len, lists), default=0)), -1, np.int64)
        for i, found in enumerate(lists):
            neg_idx[i, :len(found)] = found
        no_idx, no_scores = np.full((len(rows), 0), -1, np.int64), np.full((len(rows), 0), -np.inf, np.float32)
        return {self.name: CandidateArrays([data.query_ids[i] for i in rows], pos_idx,
                                         np.full(pos_idx.shape, np.nan, np.float32), neg_idx,
                                         np.where(neg_idx >= 0, 0.0, -np.inf).astype(np.float32), no_idx, no_scores,
                                         len(data.passages))}


def candidate_source(method: MiningMethod | None, teacher_cfg: Any, candidates_cfg: Any, settings: EncodeSettings,
                     cache_dir: Path, dataset: str) -> CandidateSource:
    """The teacher's stored candidates, the data's own negatives (teacher=given), or none for a method that reads no
    teacher score (None: always mine)."""
    if method is not None and not method.uses_teacher:
        return NoTeacher()
    if teacher_cfg == "given":
        return GivenNegatives()
    stored = CandidateSettings(**candidates_cfg)
    return MinedCandidates(teacher_cfg.name, build_teachers(teacher_cfg, settings, cache_dir, stored.shard_size),
                           stored, cache_dir, dataset)
