"""Hard-negative mining: teachers score candidates once (miner), pure methods choose from them (methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from src.data import dataset_dir
from src.data.beir import RetrievalData
from src.data.candidates import CandidateArrays, load_candidates
from src.mining.miner import MinerSettings, ensure_candidates, trainable_queries
from src.mining.teachers import build_teachers


def mined_candidates(cfg: Any, data: RetrievalData, rank: int = 0, world: int = 1) -> dict[str, CandidateArrays]:
    """{teacher name: candidates} for the configured teacher(s) on `data`, mining whatever is missing
    (shared by `world` processes when run under torchrun)."""
    settings = MinerSettings(**cfg.miner)
    teachers = build_teachers(cfg.teacher, cfg.encode, Path(cfg.paths.cache_dir), settings.shard_size)
    dataset = dataset_dir(cfg.data).name
    folders = {t.name: ensure_candidates(data, t, settings, Path(cfg.paths.cache_dir), dataset, rank, world)
               for t in teachers}
    return {name: load_candidates(folder, data.passage_index) for name, folder in folders.items()}


def teacher_free_candidates(data: RetrievalData) -> dict[str, CandidateArrays]:
    """The labelled positives alone, without a teacher: all that in-batch-only or random negatives read, so a
    baseline never pays for mining (same queries and positives, in the same order, as mined candidates)."""
    rows, pos_idx = trainable_queries(data)
    no_idx, no_scores = np.full((len(rows), 0), -1, dtype=np.int64), np.full((len(rows), 0), -np.inf, np.float32)
    return {"no teacher": CandidateArrays([data.query_ids[i] for i in rows], pos_idx,
                                          np.full(pos_idx.shape, np.nan, np.float32), no_idx, no_scores, no_idx,
                                          no_scores, len(data.passages))}
