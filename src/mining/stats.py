"""What each mining method does to the stored candidates: a table and paper-style plots (cf. Figure 4).

For every method: the share of stored candidates its filter removes, negatives per query, how many queries
needed the tail fill or stayed short, and the distributions of positive scores, negative scores and
positive-minus-negative margins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data.candidates import CandidateArrays
from src.mining.methods import MiningMethod, Negatives, select_negatives
from src.utils.plots import pyplot, save_figure


@dataclass
class MethodStats:
    name: str
    queries: int
    removed_share: float  # of the stored candidates
    negatives_per_query: float
    queries_filled: int  # took at least one negative from the tail sample
    queries_short: int  # still fewer than num_negatives (trained with fewer hard negatives, never dropped)
    positive_scores: np.ndarray  # each query's anchor (its lowest positive score), under each teacher used
    negative_scores: np.ndarray  # every chosen negative with a teacher score
    margins: np.ndarray  # anchor minus negative, per chosen negative, both from the teacher that scored it

    def row(self) -> dict[str, str]:
        mean = lambda a: f"{a.mean():.3f}" if a.size else "-"  # noqa: E731
        return {"method": self.name, "removed": f"{100 * self.removed_share:.1f}%",
                "neg/query": f"{self.negatives_per_query:.2f}", "filled q": str(self.queries_filled),
                "short q": str(self.queries_short), "pos mean": mean(self.positive_scores),
                "neg mean": mean(self.negative_scores), "margin mean": mean(self.margins),
                "margin p5": f"{np.percentile(self.margins, 5):.3f}" if self.margins.size else "-"}


def method_stats(teachers: list[CandidateArrays], method: MiningMethod, seed: int = 0) -> MethodStats:
    rows = np.arange(len(teachers[0]))
    negatives: Negatives = select_negatives(teachers, rows, method, np.random.default_rng(seed))
    used = teachers if method.ensemble is not None else teachers[:1]
    chosen = negatives.idx >= 0
    scored = chosen & np.isfinite(negatives.scores)
    return MethodStats(
        name=method.name, queries=len(rows),
        removed_share=float(negatives.removed.sum() / max(1, negatives.candidates.sum())),
        negatives_per_query=float(chosen.sum(1).mean()) if len(rows) else 0.0,
        queries_filled=int((negatives.filled > 0).sum()),
        queries_short=int((chosen.sum(1) < method.num_negatives).sum()),
        positive_scores=np.concatenate([t.pos_min for t in used]), negative_scores=negatives.scores[scored],
        margins=(negatives.anchors - negatives.scores)[scored])


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


def plot_score_distributions(stats: list[MethodStats], path: Path, title: str = "") -> Path:
    """One panel per method: histograms of positive and chosen-negative teacher scores (as the paper's Fig. 4)."""
    plt = pyplot()

    cols = min(3, len(stats))
    rows = -(-len(stats) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharex=True)
    everything = np.concatenate([s.positive_scores for s in stats] + [s.negative_scores for s in stats])
    everything = everything[np.isfinite(everything)]
    bins = np.linspace(everything.min(), everything.max(), 41) if everything.size else 40
    for ax, s in zip(axes.flat, stats):
        ax.hist(s.positive_scores[np.isfinite(s.positive_scores)], bins=bins, alpha=0.6, density=True,
                label="positive", color="tab:green")
        if s.negative_scores.size:
            ax.hist(s.negative_scores, bins=bins, alpha=0.6, density=True, label="negatives", color="tab:red")
        note = f"removed {100 * s.removed_share:.1f}%" if s.negative_scores.size else "no teacher scores"
        ax.set_title(f"{s.name}  ({note})", fontsize=9)
    for ax in axes.flat[len(stats):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.supxlabel("teacher score")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_margins(stats: list[MethodStats], path: Path, title: str = "") -> Path:
    """Positive-minus-negative margins per method, as box plots (negative margin: the negative outscores the
    positive, a false-negative suspect)."""
    plt = pyplot()

    shown = [s for s in stats if s.margins.size]
    fig, ax = plt.subplots(figsize=(1.1 * len(shown) + 2, 3.5))
    ax.boxplot([s.margins for s in shown], showfliers=False)
    ax.set_xticks(range(1, len(shown) + 1), [s.name for s in shown], rotation=30, ha="right", fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("positive - negative score")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
