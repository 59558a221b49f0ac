"""How often each mining method would train on a false negative, measured where the truth is known.

Unlabelled positives are what positive-aware mining is for, and a dataset cannot count them. Two stand-ins can:

- held-out positives: every query with several positives loses one of them (seeded) from its judgements, and
  the teacher mines again. The held-out passage is now exactly an unlabelled positive; a method that picks it as
  a negative has picked a false negative. This needs no extra labels, only queries with 2+ positives.
- listed false negatives: (query, passage) pairs a dataset lists as unlabelled positives (the demo's
  false_negatives.tsv), looked up in the ordinary candidates.

A method that removes these while keeping most other candidates is worth its filter on the data; if the data
has few unlabelled positives to begin with (few queries with candidates above their positive), it is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.data.beir import RetrievalData
from src.data.candidates import CandidateArrays
from src.mining.methods import MiningMethod, select_negatives
from src.utils.plots import pyplot, save_figure


def hold_out_positives(data: RetrievalData, seed: int = 0) -> tuple[RetrievalData, dict[str, str]]:
    """A copy of `data` in which every query with several positives has lost one, and {query: held-out passage}."""
    rng = np.random.default_rng(seed)
    qrels, held_out = {}, {}
    for qid in data.query_ids:
        judged = dict(data.qrels[qid])
        positives = data.positives(qid)
        if len(positives) > 1:
            held_out[qid] = positives[rng.integers(len(positives))]
            del judged[held_out[qid]]
        qrels[qid] = judged
    return RetrievalData(data.corpus_ids, data.passages, data.query_ids, data.queries, qrels, data.report), held_out


@dataclass
class FalseNegativePicks:
    method: str
    queries: int  # queries with a known false negative
    in_candidates: int  # ... whose false negative the teacher ranked among the stored candidates
    picked: int  # ... for which the method chose it as a negative

    def cell(self) -> str:
        return f"{self.picked}/{self.queries} ({100 * self.picked / max(1, self.queries):.0f}%)"


def known_false_negatives(candidates: CandidateArrays, pairs: dict[str, str | set[str]],
                          passage_index: dict[str, int]) -> dict[int, set[int]]:
    """{candidate row: corpus rows of the query's known false negatives}, for the queries `pairs` names."""
    rows = {qid: r for r, qid in enumerate(candidates.query_ids)}
    known: dict[int, set[int]] = {}
    for qid, pids in pairs.items():
        pids = {pids} if isinstance(pids, str) else pids
        found = {passage_index[p] for p in pids if p in passage_index}
        if qid in rows and found:
            known[rows[qid]] = found
    return known


def false_negative_picks(teachers: list[CandidateArrays], known: dict[int, set[int]], method: MiningMethod,
                         seed: int = 0) -> FalseNegativePicks:
    """How many of the queries in `known` get one of their known false negatives as a training negative."""
    rows = np.array(sorted(known), dtype=np.int64)
    if not len(rows):
        return FalseNegativePicks(method.name, 0, 0, 0)
    chosen = select_negatives(teachers, rows, method, np.random.default_rng(seed)).idx
    stored = np.concatenate([t.neg_idx[rows] for t in teachers], axis=1)
    hit = lambda idx: np.array([bool(known[r] & set(row.tolist())) for r, row in zip(rows, idx)])  # noqa: E731
    return FalseNegativePicks(method.name, len(rows), int(hit(stored).sum()), int(hit(chosen).sum()))


def picks_by_source(sources: dict[str, tuple[list[CandidateArrays], dict]], methods: list[MiningMethod],
                    passage_index: dict[str, int], seed: int = 0) -> dict[str, list[FalseNegativePicks]]:
    """Each method's picks for every source of known false negatives ({name: (candidates, {query: passages})})
    that has any."""
    out = {}
    for name, (teachers, pairs) in sources.items():
        known = known_false_negatives(teachers[0], pairs, passage_index) if teachers and pairs else {}
        if known:
            out[name] = [false_negative_picks(teachers, known, m, seed) for m in methods]
    return out


def plot_false_negative_picks(held_out: list[FalseNegativePicks], path, title: str = ""):
    """The share of held-out positives each method would train on as a negative, as bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * len(held_out) + 2, 3.4))
    shares = [100 * p.picked / max(1, p.queries) for p in held_out]
    ax.bar(range(len(held_out)), shares, color="tab:red")
    for x, p in enumerate(held_out):
        ax.text(x, shares[x], f"{p.picked}/{p.queries}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(held_out)), [p.method for p in held_out], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("held-out positives picked\nas negatives (%)")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
