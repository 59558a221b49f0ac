"""What each mining method does to the stored candidates: a table and paper-style plots (cf. Figure 4).

For every method: the share of stored candidates its filter removes, negatives per query, how many queries
needed the tail fill or stayed short, and the distributions of positive scores, negative scores and
positive-minus-negative margins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.mining.methods import MiningMethod, Negatives, select_negatives
from pa_retriever.utils.plots import pyplot, save_figure


@dataclass
class MethodStats:
    name: str
    queries: int
    removed_share: float  # of the stored candidates
    negatives_per_query: float
    queries_filled: int  # took at least one negative from the tail sample
    queries_short: int  # still fewer than num_negatives (trained with fewer hard negatives, never dropped)
    positive_scores: np.ndarray  # each query's anchor (its lowest positive score), under each teacher it used
    negative_scores: np.ndarray  # every chosen negative with a teacher score
    margins: np.ndarray  # anchor minus negative, per chosen negative, both from the teacher that scored it
    positive_teacher: np.ndarray  # index into `teachers` of each positive score ...
    negative_teacher: np.ndarray  # ... and of each negative score and margin
    teachers: tuple[str, ...] = ("",)

    def per_teacher(self) -> list[MethodStats]:
        """One view per teacher of an ensemble: their scales differ (cosine, BM25), so scores are never pooled."""
        if len(self.teachers) == 1:
            return [self]
        views = []
        for t, name in enumerate(self.teachers):
            pos, neg = self.positive_teacher == t, self.negative_teacher == t
            views.append(replace(self, name=f"{self.name} [{name}]", positive_scores=self.positive_scores[pos],
                                 negative_scores=self.negative_scores[neg], margins=self.margins[neg],
                                 positive_teacher=np.zeros(pos.sum(), np.int64),
                                 negative_teacher=np.zeros(neg.sum(), np.int64), teachers=(name,)))
        return views

    def row(self) -> dict[str, str]:
        """A table row; an ensemble's score columns give each teacher's value, separated by ' / '."""
        views = self.per_teacher()
        each = lambda f: " / ".join(f(v) for v in views)  # noqa: E731
        mean = lambda key: each(lambda v: f"{getattr(v, key).mean():.3f}" if getattr(v, key).size else "-")  # noqa: E731
        return {"method": self.name, "removed": f"{100 * self.removed_share:.1f}%",
                "neg/query": f"{self.negatives_per_query:.2f}", "filled q": str(self.queries_filled),
                "short q": str(self.queries_short), "pos mean": mean("positive_scores"),
                "neg mean": mean("negative_scores"), "margin mean": mean("margins"),
                "margin p5": each(lambda v: f"{np.percentile(v.margins, 5):.3f}" if v.margins.size else "-")}


def method_stats(candidates: list[CandidateArrays], method: MiningMethod, seed: int = 0,
                 names: list[str] | None = None) -> MethodStats:
    """What `method` makes of the candidates; `names` label an ensemble's teachers."""
    rows = np.arange(len(candidates[0]))
    negatives: Negatives = select_negatives(candidates, rows, method, np.random.default_rng(seed))
    chosen = negatives.idx >= 0
    scored = chosen & np.isfinite(negatives.scores)
    # each negative's margin is taken against the positive of the teacher that scored it: scales differ
    anchors = np.stack([t.pos_min for t in candidates])[negatives.source, rows[:, None]]
    if method.ensemble is None or len(candidates) == 1:
        used, labels = [np.ones(len(rows), bool)], ("",)
    else:  # a query's positive counts under each teacher that had slots to fill for it (cross_sample: one)
        used = [(negatives.source == t).any(1) for t in range(len(candidates))]
        labels = tuple(names or (f"teacher {t}" for t in range(len(candidates))))
    return MethodStats(
        name=method.name, queries=len(rows),
        removed_share=float(negatives.removed.sum() / max(1, negatives.candidates.sum())),
        negatives_per_query=float(chosen.sum(1).mean()) if len(rows) else 0.0,
        queries_filled=int((negatives.filled > 0).sum()),
        queries_short=int((chosen.sum(1) < method.num_negatives).sum()),
        positive_scores=np.concatenate([t.pos_min[u] for t, u in zip(candidates, used)]),
        negative_scores=negatives.scores[scored], margins=(anchors - negatives.scores)[scored],
        positive_teacher=np.concatenate([np.full(u.sum(), t) for t, u in enumerate(used)]),
        negative_teacher=negatives.source[scored], teachers=labels)


def candidate_diagnostics(c: CandidateArrays) -> dict[str, float]:
    """How much the teacher disagrees with the labels: candidates that score at or above the positive are
    false-negative suspects (many of them: positive-aware mining matters; few: naive top-k is safe)."""
    above = (c.neg_scores >= c.pos_min[:, None]).sum(1)
    return {"queries": len(c), "share_with_candidate_above_positive": float((above > 0).mean()),
            "mean_candidates_above_positive": float(above.mean()),
            "median_candidates_above_positive": float(np.median(above))}


def format_table(rows: list[dict[str, str]]) -> str:
    """A plain aligned text table."""
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    line = lambda r: "  ".join(str(r[k]).rjust(widths[k]) if i else str(r[k]).ljust(widths[k])  # noqa: E731
                               for i, k in enumerate(keys))
    return "\n".join([line({k: k for k in keys}), line({k: "-" * widths[k] for k in keys})] + [line(r) for r in rows])


def _by_teacher(stats: list[MethodStats]) -> dict[str, list[MethodStats]]:
    """Each teacher's views, in order: plots share an axis within a teacher's scale, never across."""
    groups: dict[str, list[MethodStats]] = {}
    for view in (v for s in stats for v in s.per_teacher()):
        groups.setdefault(view.teachers[0], []).append(view)
    return groups


def plot_score_distributions(stats: list[MethodStats], path: Path, title: str = "") -> Path:
    """One panel per method (and teacher of an ensemble): histograms of the positive (each query's lowest) and the
    chosen negatives' teacher scores, as the paper's Fig. 4. Panels of one teacher share their bins."""
    plt = pyplot()

    groups = _by_teacher(stats)
    panels = [v for views in groups.values() for v in views]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharex=len(groups) == 1)
    bins = {}
    for name, views in groups.items():
        everything = np.concatenate([s.positive_scores for s in views] + [s.negative_scores for s in views])
        everything = everything[np.isfinite(everything)]
        bins[name] = np.linspace(everything.min(), everything.max(), 41) if everything.size else 40
    for ax, s in zip(axes.flat, panels):
        ax.hist(s.positive_scores[np.isfinite(s.positive_scores)], bins=bins[s.teachers[0]], alpha=0.6,
                density=True, label="positive (lowest)", color="tab:green")
        if s.negative_scores.size:
            ax.hist(s.negative_scores, bins=bins[s.teachers[0]], alpha=0.6, density=True, label="negatives",
                    color="tab:red")
        note = f"removed {100 * s.removed_share:.1f}%" if s.negative_scores.size else "no teacher scores"
        ax.set_title(f"{s.name}  ({note})", fontsize=9)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.supxlabel("teacher score")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_margins(stats: list[MethodStats], path: Path, title: str = "") -> Path:
    """Positive-minus-negative margins per method, as box plots, one panel per teacher scale (negative margin:
    the negative outscores the positive, a false-negative suspect)."""
    plt = pyplot()

    groups = {name: [v for v in views if v.margins.size] for name, views in _by_teacher(stats).items()}
    groups = {name: views for name, views in groups.items() if views} or {"": []}
    widths = [max(1, len(views)) for views in groups.values()]
    fig, axes = plt.subplots(1, len(groups), figsize=(1.1 * sum(widths) + 2 * len(groups), 3.5), squeeze=False,
                             width_ratios=widths)
    for ax, views in zip(axes.flat, groups.values()):
        ax.boxplot([s.margins for s in views], showfliers=False)
        ax.set_xticks(range(1, len(views) + 1), [s.name for s in views], rotation=30, ha="right", fontsize=8)
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    axes.flat[0].set_ylabel("positive - negative score")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
