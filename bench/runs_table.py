"""A markdown table of finished training runs, grouped by label: mean ± standard deviation over seeds (and how
many) of the metrics each run's summary.json holds, with each group's difference from the first. A run of every
fold in one job (cv=kfold data.fold=all) counts by its mean over folds (cv_summary.json), and the table adds the
spread of nDCG@10 over folds (the mean over the group's runs of each run's standard deviation over its folds).

    python -m bench.runs_table "SciFact alone=logs/scifact_alone/*" "SciFact + demo=logs/blend/*"
    python -m bench.runs_table "percpos=logs/train/multiruns/<time>/*"     # cross-validated runs, seeds 1-3
"""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np

METRICS = ("ndcg@10", "recall@100")


def runs(pattern: str) -> list[dict]:
    """The summaries of the finished runs under `pattern` (run dirs), by seed."""
    found = [json.load(open(path)) for path in sorted(glob.glob(f"{pattern}/summary.json"))]
    for path in sorted(glob.glob(f"{pattern}/cv_summary.json")):
        folds = json.load(open(path))
        found.append({"seed": folds["seed"], "metrics": folds["mean"], "fold_sd": folds["std"].get("ndcg@10")})
    return sorted((s for s in found if s.get("metrics")), key=lambda s: s["seed"])


def cell(values: list[float]) -> str:
    spread = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
    return f"{np.mean(values):.4f}{spread} ({len(values)})"


def table(groups: dict[str, list[dict]]) -> str:
    folds = any("fold_sd" in s for found in groups.values() for s in found)
    extra = ["nDCG@10 sd over folds"] if folds else []
    columns = [*METRICS, *extra, "nDCG@10 − first", "seeds"]
    lines = [f"| runs | {' | '.join(columns)} |", "|---|" + "---|" * len(columns)]
    first = None
    for label, found in groups.items():
        ndcg = [s["metrics"]["ndcg@10"] for s in found]
        first = first if first is not None else np.mean(ndcg)
        cells = [cell([s["metrics"][m] for s in found]) for m in METRICS]
        if folds:
            spread = [s["fold_sd"] for s in found if s.get("fold_sd") is not None]
            cells.append(f"{np.mean(spread):.4f}" if spread else "–")
        seeds = ",".join(str(s["seed"]) for s in found)
        lines.append(f"| {label} | {' | '.join(cells)} | {np.mean(ndcg) - first:+.4f} | {seeds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="+", help="LABEL=GLOB of run dirs")
    args = parser.parse_args()
    groups = {}
    for group in args.groups:
        label, _, pattern = group.partition("=")
        if not (found := runs(pattern)):
            raise SystemExit(f"{label}: no finished run under {pattern}")
        groups[label] = found
    print(table(groups))


if __name__ == "__main__":
    main()
