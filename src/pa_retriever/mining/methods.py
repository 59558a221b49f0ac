"""Hard-negative mining methods of NV-Retriever (arXiv 2407.15831): pure functions of stored teacher scores.

The same code serves `mine.py` (statistics) and the training sampler (negatives drawn per epoch).
A method is a filter, a selection and a fill policy. For a candidate with teacher score n at rank r (0-based
among the query's non-positive candidates, best first), with p the query's lowest positive score:

    filter       keeps the candidate when
    none         always                                  (Naive Top-K)
    shifted      r >= shift                              (Top-K shifted by N)
    abs          n < threshold                           (TopK-Abs)
    marginpos    n < p - margin                          (TopK-MarginPos)
    percpos      n < p * perc                            (TopK-PercPos)

A candidate exactly at the bound is removed: at the bound it is as close to the positive as the method allows
no negative to be. Bounds are computed in float64 from the stored float32 scores. PercPos keeps its meaning,
"a fraction below the positive", for a negative p too (the bound is p - |p| * (1 - perc), which is p * perc
for p >= 0); the paper's teachers score positives above zero.

Any filter combines with a window on the rank, min_rank <= r < max_rank, and on the score,
min_score <= n < max_score (sentence-transformers' range and score options): a candidate is kept when it passes
all of them.

    select       takes `num_negatives` of the kept candidates
    top          the best ones
    sampled      sampled without replacement among the first `sample_k` kept, with probability
                 softmax(score / temperature) (Gumbel top-k)
    top1_sampled the best one, the rest sampled as above among the other kept within the first `sample_k`
    random       uniform over the corpus, positives excluded (no teacher involved)

Fill policy: when fewer candidates pass than asked, the best-scored passages of the stored tail sample (random
passages ranked below the top-K, with their scores) that pass the same filter make up the difference; they score
below every stored candidate, so they are the hardest negatives known to satisfy the filter. Slots still empty
are -1: the loss ignores them (the query keeps its positive and in-batch negatives) and they are counted. No
query is ever dropped.

Ensembles over several teachers (aligned by query): `cross_sample` applies the method with one teacher drawn
per query (training draws it once per run, as the paper mines once; only the negatives rotate by epoch);
`intra_sample` takes each teacher's best kept negatives (num_negatives split evenly, the first teachers taking
any remainder; duplicates allowed); `intra_sample_dedup` does the same but skips passages an earlier teacher
already gave.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.utils.checks import SettingError, check_choice, check_number

FILTERS = {"none": None, "shifted": "shift", "abs": "threshold", "marginpos": "margin", "percpos": "perc"}
SELECTIONS = ("top", "sampled", "top1_sampled", "random")
ENSEMBLE_METHODS = ("cross_sample", "intra_sample", "intra_sample_dedup")
MAX_NEGATIVES = 256  # per query: with a batch of 32 that is 8,224 passages a step, beyond any recipe in use
PERC_MAX = 1.05


@dataclass(frozen=True)
class MiningMethod:
    name: str
    num_negatives: int = 4
    filter: str = "none"
    shift: int | None = None
    threshold: float | None = None
    margin: float | None = None
    perc: float | None = None
    select: str = "top"
    sample_k: int = 10
    temperature: float = 1.0
    ensemble: str | None = None
    min_rank: int | None = None  # the window every filter is combined with (None: open)
    max_rank: int | None = None
    min_score: float | None = None
    max_score: float | None = None

    def __post_init__(self) -> None:
        check_choice("mining.filter", self.filter, tuple(FILTERS))
        param = FILTERS[self.filter]
        if param and getattr(self, param) is None:
            raise SettingError(f"mining.filter={self.filter} needs mining.{param}")
        check_choice("mining.select", self.select, SELECTIONS)
        check_choice("mining.ensemble", self.ensemble, (None, *ENSEMBLE_METHODS))
        check_number("mining.num_negatives", self.num_negatives, 0, MAX_NEGATIVES, integer=True,
                     why="hard negatives per query; 0 only for mining=none, in-batch negatives alone")
        if self.num_negatives == 0 and (self.name, self.filter, self.select, self.ensemble) != ("none", "none", "top",
                                                                                                  None):
            raise SettingError(f"mining.num_negatives=0 trains on in-batch negatives alone, which is mining=none, not "
                               f"{self.name}: give {self.name} 1 to {MAX_NEGATIVES} negatives")
        # Each filter's bound as the paper sweeps it; outside it a filter removes nothing (naive top-k under another
        # name) or everything (in-batch negatives alone).
        if self.filter == "shifted":
            check_number("mining.shift", self.shift, 0, integer=True, why="candidates skipped from the top")
        if self.filter == "abs":
            check_number("mining.threshold", self.threshold, why="a teacher score")
        if self.filter == "marginpos":
            check_number("mining.margin", self.margin, 0, why="a candidate is kept below positive - margin")
        if self.filter == "percpos":
            check_number("mining.perc", self.perc, 0, PERC_MAX, low_open=True,
                         why="a candidate is kept below perc x positive; the paper sweeps 0.05-1.05")
        if self.min_rank is not None:
            check_number("mining.min_rank", self.min_rank, 0, integer=True, why="candidates skipped from the top")
        if self.max_rank is not None:
            check_number("mining.max_rank", self.max_rank, (self.min_rank or 0) + 1, integer=True,
                         why="candidates ranked below it are removed; above min_rank")
        for bound in ("min_score", "max_score"):
            if getattr(self, bound) is not None:
                check_number(f"mining.{bound}", getattr(self, bound), why="a teacher score")
        if None not in (self.min_score, self.max_score) and self.min_score >= self.max_score:
            raise SettingError(f"mining.min_score={self.min_score} must lie below mining.max_score={self.max_score}, "
                               "or every candidate is removed")
        if self.select in ("sampled", "top1_sampled"):
            check_number("mining.sample_k", self.sample_k, max(1, self.num_negatives), integer=True,
                         why=f"{self.select} draws mining.num_negatives={self.num_negatives} among the first sample_k "
                             "kept")
            check_number("mining.temperature", self.temperature, 0, low_open=True,
                         why="of the softmax over teacher scores that sampling draws by")

    @property
    def uses_teacher(self) -> bool:
        """Whether negatives come from teacher scores: in-batch-only and random negatives need no teacher."""
        return self.num_negatives > 0 and self.select != "random"

    @classmethod
    def from_config(cls, cfg: Any) -> MiningMethod:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(cfg).items() if k in names})

    @classmethod
    def configured(cls, conf_dir: Path) -> dict[str, MiningMethod]:
        """Every method a mining config folder (conf/mining) defines, by file name."""
        return {p.stem: cls.from_config(OmegaConf.load(p)) for p in sorted(Path(conf_dir).glob("*.yaml"))}


@dataclass
class Negatives:
    """The negatives chosen for a set of queries."""

    idx: np.ndarray  # [queries, num_negatives] corpus rows, -1 = empty slot
    scores: np.ndarray  # [queries, num_negatives] teacher scores (nan for random or empty)
    removed: np.ndarray  # [queries] stored candidates the filter removed
    candidates: np.ndarray  # [queries] stored candidates
    filled: np.ndarray  # [queries] negatives taken from the tail sample
    source: np.ndarray  # [queries, num_negatives] which teacher of an ensemble each slot is from (0: the only one)


def keep_mask(scores: np.ndarray, ranks: np.ndarray, pos_min: np.ndarray, method: MiningMethod) -> np.ndarray:
    """Which candidates may be negatives under the method's filter and windows (`scores` -inf marks a
    missing one)."""
    keep = np.isfinite(scores)
    scores64 = scores.astype(np.float64)
    p = pos_min.astype(np.float64)[:, None]
    if method.min_rank is not None:
        keep = keep & (ranks >= method.min_rank)
    if method.max_rank is not None:
        keep = keep & (ranks < method.max_rank)
    if method.min_score is not None:
        keep = keep & (scores64 >= method.min_score)
    if method.max_score is not None:
        keep = keep & (scores64 < method.max_score)
    if method.filter == "shifted":
        return keep & (ranks >= method.shift)
    if method.filter == "abs":
        return keep & (scores64 < method.threshold)
    if method.filter in ("marginpos", "percpos"):
        return keep & (scores64 < positive_bound(p, method.filter, method.margin, method.perc))
    return keep


def positive_bound(p, filter: str, margin: float | None = None, perc: float | None = None):
    """The score from which a candidate is too close to a positive scored `p` (numpy arrays or torch tensors alike):
    p - margin for MarginPos, p - |p| * (1 - perc) for PercPos. The sampler filters stored candidates with it and
    the loss in-batch negatives."""
    return p - margin if filter == "marginpos" else p - abs(p) * (1 - perc)


def _kept_in_rank_order(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of kept candidates, best first, and whether each returned slot is really kept."""
    order = np.argsort(~keep, axis=1, kind="stable")
    return order, np.take_along_axis(keep, order, 1)


def _gumbel_top(scores: np.ndarray, valid: np.ndarray, n: int, temperature: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n draws without replacement with probability softmax(scores / temperature) among the valid slots."""
    keys = np.where(valid, scores / temperature + rng.gumbel(size=scores.shape), -np.inf)
    order = np.argsort(-keys, axis=1, kind="stable")[:, :n]
    return order, np.take_along_axis(valid, order, 1)


def _choose(keep: np.ndarray, scores: np.ndarray, n: int, method: MiningMethod,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the candidate list) of the chosen negatives, and which slots are filled."""
    if keep.shape[1] < n:  # fewer stored candidates than negatives asked for: pad with empty slots
        pad = ((0, 0), (0, n - keep.shape[1]))
        keep, scores = np.pad(keep, pad, constant_values=False), np.pad(scores, pad, constant_values=-np.inf)
    order, kept = _kept_in_rank_order(keep)
    if method.select == "top" or n == 0:
        return order[:, :n], kept[:, :n]
    first = 1 if method.select == "top1_sampled" else 0
    pool, pool_valid = order[:, first:method.sample_k], kept[:, first:method.sample_k]
    pool_scores = np.take_along_axis(scores, pool, 1)
    picked, picked_valid = _gumbel_top(pool_scores, pool_valid, n - first, method.temperature, rng)
    chosen = np.concatenate([order[:, :first], np.take_along_axis(pool, picked, 1)], axis=1)
    return chosen, np.concatenate([kept[:, :first], picked_valid], axis=1)


def _gather(values: np.ndarray, positions: np.ndarray, valid: np.ndarray, fill) -> np.ndarray:
    return np.where(valid, np.take_along_axis(values, positions, 1), fill)


def _not_in(idx: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    if exclude is None:
        return np.ones(idx.shape, dtype=bool)
    return ~(idx[:, :, None] == exclude[:, None, :]).any(-1)


def _fill_from_tail(idx: np.ndarray, scores: np.ndarray, c: CandidateArrays, rows: np.ndarray,
                    method: MiningMethod, pos_min: np.ndarray,
                    exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Complete short rows with the best tail passages that pass the filter; tail ranks lie beyond the top-K."""
    tail_scores = c.tail_scores[rows]
    ranks = np.broadcast_to(c.neg_idx.shape[1] + np.arange(tail_scores.shape[1]), tail_scores.shape)
    keep = keep_mask(tail_scores, ranks, pos_min, method) & (c.tail_idx[rows] >= 0) & _not_in(c.tail_idx[rows], exclude)
    order, kept = _kept_in_rank_order(keep)
    tail_idx = _gather(c.tail_idx[rows], order, kept, -1)
    tail_sc = _gather(tail_scores, order, kept, np.nan)
    # Chosen negatives first, then tail passages, empty slots last; keep the first num_negatives.
    all_idx = np.concatenate([idx, tail_idx], axis=1)
    all_scores = np.concatenate([scores, tail_sc], axis=1)
    order = np.argsort(all_idx < 0, axis=1, kind="stable")[:, : idx.shape[1]]
    filled = (order >= idx.shape[1]) & (np.take_along_axis(all_idx, order, 1) >= 0)
    return (np.take_along_axis(all_idx, order, 1), np.take_along_axis(all_scores, order, 1),
            filled.sum(axis=1))


def sample_outside(n_passages: int, excluded: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `size` distinct passages outside `excluded` (-1 entries ignored), uniformly."""
    excluded = np.unique(excluded[excluded >= 0])
    want = min(size, n_passages - len(excluded))
    if want <= 0:
        return np.empty(0, dtype=np.int64)
    draw = rng.choice(n_passages, size=min(n_passages, want + len(excluded)), replace=False)
    return draw[~np.isin(draw, excluded)][:want]


def _random_negatives(c: CandidateArrays, rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct passages per query, none of them its positive; -1 pads where the corpus has too few."""
    idx = np.full((len(rows), n), -1, dtype=np.int64)
    for r, positives in enumerate(c.pos_idx[rows]):
        draw = sample_outside(c.n_passages, positives, n, rng)
        idx[r, : len(draw)] = draw
    return idx


def select_single(c: CandidateArrays, rows: np.ndarray, method: MiningMethod, rng: np.random.Generator,
                  n: int | None = None, exclude: np.ndarray | None = None) -> Negatives:
    """Negatives from one teacher's candidates for the queries at `rows` (optionally never `exclude`)."""
    n = method.num_negatives if n is None else n
    present = c.neg_idx[rows] >= 0
    if method.select == "random":
        idx = _random_negatives(c, rows, n, rng)
        zeros, nan = np.zeros(len(rows), dtype=np.int64), np.full(idx.shape, np.nan, np.float32)
        return Negatives(idx, nan, zeros, present.sum(1), zeros, np.zeros(idx.shape, np.int64))
    scores, pos_min = c.neg_scores[rows], c.pos_min[rows]
    ranks = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    passes = keep_mask(scores, ranks, pos_min, method)
    keep = passes & _not_in(c.neg_idx[rows], exclude)
    positions, valid = _choose(keep, scores, n, method, rng)
    positions = np.minimum(positions, scores.shape[1] - 1)  # padded slots are invalid anyway
    idx = _gather(c.neg_idx[rows], positions, valid, -1)
    chosen_scores = _gather(scores, positions, valid, np.nan).astype(np.float32)
    idx, chosen_scores, filled = _fill_from_tail(idx, chosen_scores, c, rows, method, pos_min, exclude)
    return Negatives(idx, chosen_scores, (present & ~passes).sum(1), present.sum(1), filled,
                     np.zeros(idx.shape, np.int64))


def _stack(parts: list[Negatives]) -> Negatives:
    cat = lambda name, axis: np.concatenate([getattr(p, name) for p in parts], axis=axis)  # noqa: E731
    total = lambda name: sum(getattr(p, name) for p in parts)  # noqa: E731
    return Negatives(cat("idx", 1), cat("scores", 1), total("removed"), total("candidates"), total("filled"),
                     cat("source", 1))


def select_negatives(candidates: list[CandidateArrays], rows: np.ndarray, method: MiningMethod,
                     rng: np.random.Generator, teacher_rng: np.random.Generator | None = None) -> Negatives:
    """Negatives for the queries at `rows`, from one teacher's candidates or an ensemble's. `teacher_rng` draws
    cross_sample's teacher per query (default: `rng`)."""
    rows = np.asarray(rows, dtype=np.int64)
    if method.ensemble is None or len(candidates) == 1:
        return select_single(candidates[0], rows, method, rng)
    if method.ensemble == "cross_sample":
        choice = (teacher_rng or rng).integers(len(candidates), size=len(rows))
        out = select_single(candidates[0], rows, method, rng)  # shapes; rows of the other teachers overwritten
        for t in range(1, len(candidates)):
            mine = choice == t
            if mine.any():
                part = select_single(candidates[t], rows[mine], method, rng)
                part.source[:] = t
                for name in ("idx", "scores", "removed", "candidates", "filled", "source"):
                    getattr(out, name)[mine] = getattr(part, name)
        return out
    # num_negatives split as evenly as it goes, the first teachers taking the remainder: exactly as many as asked
    share, extra = divmod(method.num_negatives, len(candidates))
    parts: list[Negatives] = []
    for t, teacher_candidates in enumerate(candidates[:method.num_negatives]):
        taken = _stack(parts).idx if parts and method.ensemble == "intra_sample_dedup" else None
        parts.append(select_single(teacher_candidates, rows, method, rng, share + (t < extra), exclude=taken))
        parts[-1].source[:] = t
    return _stack(parts)


def negatives_for(candidates: list[CandidateArrays], row: int, method: MiningMethod, seed: int,
                  epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The negatives query `row` trains with in `epoch` and their teacher scores (nan: none stored), drawn by a
    generator seeded by (seed, epoch, row), so that any worker, process or resumed run, and mine.py's export,
    draw exactly these (cross_sample's teacher is drawn by (seed, row), once per run, as the paper mines once)."""
    rng = np.random.default_rng([seed, epoch, row])
    teacher_rng = np.random.default_rng([seed, row])
    chosen = select_negatives(candidates, np.array([row]), method, rng, teacher_rng)
    return chosen.idx[0], chosen.scores[0]
