"""A markdown table of finished training runs, grouped by label: mean ± standard deviation over seeds (and how
many) of the metrics each run's summary.json holds, with each group's difference from the first.

    python -m bench.runs_table "SciFact alone=logs/scifact_alone/*" "SciFact + demo=logs/blend/*"
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
    return sorted((s for s in found if s.get("metrics")), key=lambda s: s["seed"])


def cell(values: list[float]) -> str:
    spread = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
    return f"{np.mean(values):.4f}{spread} ({len(values)})"


def table(groups: dict[str, list[dict]]) -> str:
    lines = [f"| runs | {' | '.join(METRICS)} | nDCG@10 − first | seeds |", "|---|" + "---|" * (len(METRICS) + 2)]
    first = None
    for label, found in groups.items():
        ndcg = [s["metrics"]["ndcg@10"] for s in found]
        first = first if first is not None else np.mean(ndcg)
        cells = [cell([s["metrics"][m] for s in found]) for m in METRICS]
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
