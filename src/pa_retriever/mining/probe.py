"""How often each mining method would train on a false negative, measured where the truth is known.

Unlabelled positives are what positive-aware mining is for, and a dataset cannot count them. Two stand-ins can:

- held-out positives: for every query with several positives, one of them (seeded) is treated as unlabelled. It
  leaves the positives and joins the teacher's candidates at its own score, exactly where mining without its
  judgement would have stored it; a method that then picks it as a negative has picked a false negative. This
  needs no extra labels and no extra mining, only queries with 2+ positives.
- listed false negatives: (query, passage) pairs a dataset lists as unlabelled positives (the demo's
  false_negatives.tsv), looked up in the ordinary candidates.

A method that leaves these out while keeping most other candidates earns its filter on the data; if the data has
few unlabelled positives to begin with, the filter mostly removes real hard negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.mining.methods import MiningMethod, select_negatives
from pa_retriever.utils.plots import pyplot, save_figure

Known = dict[int, set[int]]  # candidate row -> corpus rows of the query's known false negatives


def hold_out_positives(candidates: list[CandidateArrays], seed: int = 0) -> tuple[list[CandidateArrays], Known]:
    """Each teacher's candidates as if one positive of every multi-positive query were unlabelled (the same
    passage for every teacher), and which passage that is per row. The top-K stays K long."""
    rng = np.random.default_rng(seed)
    first = candidates[0]
    held_column = {int(r): int(rng.choice(np.flatnonzero(first.pos_idx[r] >= 0)))
                   for r in np.flatnonzero((first.pos_idx >= 0).sum(1) > 1)}
    held_out = []
    for c in candidates:
        pos_idx, pos_scores = c.pos_idx.copy(), c.pos_scores.copy()
        neg_idx, neg_scores = c.neg_idx.copy(), c.neg_scores.copy()
        for r, j in held_column.items():
            passage, score = pos_idx[r, j], pos_scores[r, j]
            pos_idx[r, j], pos_scores[r, j] = -1, np.nan
            at = np.searchsorted(-neg_scores[r], -score, side="right")  # after candidates scoring as high
            neg_idx[r] = np.insert(neg_idx[r], at, passage)[:-1]
            neg_scores[r] = np.insert(neg_scores[r], at, score)[:-1]
        held_out.append(replace(c, pos_idx=pos_idx, pos_scores=pos_scores, neg_idx=neg_idx, neg_scores=neg_scores))
    return held_out, {r: {int(first.pos_idx[r, j])} for r, j in held_column.items()}


def listed_false_negatives(c: CandidateArrays, pairs: dict[str, set[str]], passage_index: dict[str, int]) -> Known:
    """The rows of the queries `pairs` names, with their listed passages (unknown ids ignored)."""
    rows = {qid: r for r, qid in enumerate(c.query_ids)}
    known = {rows[qid]: {passage_index[p] for p in pids if p in passage_index} for qid, pids in pairs.items()
             if qid in rows}
    return {r: found for r, found in known.items() if found}


@dataclass
class FalseNegativePicks:
    method: str
    queries: int  # queries with a known false negative
    stored: int  # ... whose false negative is among the stored candidates or tail
    picked: int  # ... for which the method chose it as a negative

    def cell(self) -> str:
        return f"{self.picked}/{self.queries} ({100 * self.picked / max(1, self.queries):.0f}%)"


def false_negative_picks(candidates: list[CandidateArrays], known: Known, method: MiningMethod,
                         seed: int = 0) -> FalseNegativePicks:
    """How many of the queries in `known` get one of their known false negatives as a training negative."""
    rows = np.array(sorted(known), dtype=np.int64)
    chosen = select_negatives(candidates, rows, method, np.random.default_rng(seed)).idx
    stored = np.concatenate([a[rows] for t in candidates for a in (t.neg_idx, t.tail_idx)], axis=1)

    def hits(idx: np.ndarray) -> int:
        return sum(bool(known[r] & set(row.tolist())) for r, row in zip(rows.tolist(), idx))

    return FalseNegativePicks(method.name, len(rows), hits(stored), hits(chosen))


def false_negative_report(candidates: list[CandidateArrays], methods: list[MiningMethod],
                          listed: dict[str, set[str]], passage_index: dict[str, int],
                          seed: int = 0) -> dict[str, list[FalseNegativePicks]]:
    """{source: each method's picks} for the sources of known false negatives the data has."""
    held_out, held = hold_out_positives(candidates, seed)
    sources = {"held-out positives": (held_out, held),
               "listed false negatives": (candidates, listed_false_negatives(candidates[0], listed, passage_index))}
    return {name: [false_negative_picks(arrays, known, m, seed) for m in methods]
            for name, (arrays, known) in sources.items() if known and methods}


def plot_false_negative_picks(picks: list[FalseNegativePicks], path: Path, title: str = "") -> Path:
    """The share of known false negatives each method would train on as a negative, as bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * len(picks) + 2, 3.4))
    shares = [100 * p.picked / max(1, p.queries) for p in picks]
    ax.bar(range(len(picks)), shares, color="tab:red")
    for x, p in enumerate(picks):
        ax.text(x, shares[x], f"{p.picked}/{p.queries}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(picks)), [p.method for p in picks], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("known false negatives\npicked as negatives (%)")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
