"""A markdown table of finished training runs, grouped by label: mean ± standard deviation over seeds (and how
many) of the metrics each run holds, with each group's difference from the first, paired by seed where both
groups ran the same seeds (the seed fixes the batch order, so paired differences are the sharper test).

A run is a run dir (its summary.json, or cv_summary.json for every fold in one job, cv=kfold data.fold=all) or a
record of bench/st_ablation.py (a .json file). Runs scored on folds (split `...:fold<i>of<k>`, one job per fold)
count per seed by their mean over the k folds, which must all be there; the table then adds the spread of
nDCG@10 over folds (the mean over the group's seeds of each seed's standard deviation over its folds), and a
second table of nDCG@10 fold by fold: folds differ far more than recipes do, so compare groups within a fold.

    python -m bench.runs_table "SciFact alone=logs/scifact_alone/*" "SciFact + demo=logs/blend/*"
    python -m bench.runs_table "ours=logs/cv/ours/*" "ST=logs/cv/st/*/*.json"      # cross-validated, by fold
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np

from pa_retriever.data.folds import Fold
from pa_retriever.tasks.cross_validate import mean_over_folds

METRICS = ("ndcg@10", "recall@100")


def _read(path: Path) -> list[dict]:
    """The runs one match of a pattern holds: a run dir's summaries, or a sentence-transformers record."""
    if path.is_file():
        if path.suffix != ".json":  # a multirun dir's multirun.yaml
            return []
        record = json.loads(path.read_text())
        return [{"seed": record["seed"], "metrics": record["metrics"], "split": record["setting"]["eval_split"]}]
    found = [json.loads((path / "summary.json").read_text())] if (path / "summary.json").is_file() else []
    if (path / "cv_summary.json").is_file():
        folds = json.loads((path / "cv_summary.json").read_text())
        found.append({"seed": folds["seed"], "metrics": folds["mean"], "fold_sd": folds["std"].get("ndcg@10")})
    return found


def _per_seed(found: list[dict], pattern: str) -> list[dict]:
    """Runs of one fold each, as one run per seed: the mean over its folds, every fold present once."""
    by_seed: dict[int, dict[int, dict]] = {}
    folds = None
    for run in found:
        fold = Fold.parse(run["split"])[1]
        if folds is not None and fold.folds != folds:
            raise SystemExit(f"{pattern}: runs of {folds} and of {fold.folds} folds mixed")
        folds = fold.folds
        seen = by_seed.setdefault(run["seed"], {})
        if fold.fold in seen:
            raise SystemExit(f"{pattern}: fold {fold.fold} of seed {run['seed']} found twice")
        seen[fold.fold] = run
    collapsed = []
    for seed, runs_of_seed in sorted(by_seed.items()):
        if missing := sorted(set(range(folds)) - set(runs_of_seed)):
            raise SystemExit(f"{pattern}: seed {seed} lacks fold(s) {missing} of {folds}: a mean over the others "
                             "would not compare")
        scores = [runs_of_seed[i]["metrics"] for i in range(folds)]
        mean, std = mean_over_folds(scores)
        collapsed.append({"seed": seed, "metrics": mean, "fold_sd": std["ndcg@10"],
                          "by_fold": [s["ndcg@10"] for s in scores]})
    return collapsed


def runs(pattern: str) -> list[dict]:
    """The finished runs under `pattern` (run dirs or records), one per seed, by seed."""
    found = [run for path in sorted(glob.glob(pattern)) for run in _read(Path(path)) if run.get("metrics")]
    on_folds = [run for run in found if Fold.parse(run.get("split") or "")[1] is not None]
    if on_folds and len(on_folds) != len(found):
        raise SystemExit(f"{pattern}: runs scored on folds mixed with runs that are not")
    return _per_seed(found, pattern) if on_folds else sorted(found, key=lambda s: s["seed"])


def cell(values: list[float]) -> str:
    spread = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
    return f"{np.mean(values):.4f}{spread} ({len(values)})"


def difference(found: list[dict], first: list[dict]) -> str:
    """nDCG@10 minus the first group's: paired by seed when both ran the same seeds."""
    mine, theirs = ({s["seed"]: s["metrics"]["ndcg@10"] for s in group} for group in (found, first))
    if set(mine) != set(theirs):
        return f"{np.mean(list(mine.values())) - np.mean(list(theirs.values())):+.4f}"
    paired = [mine[seed] - theirs[seed] for seed in sorted(mine)]
    return f"{np.mean(paired):+.4f}" + (f" ± {np.std(paired, ddof=1):.4f} paired" if len(paired) > 1 else "")


def table(groups: dict[str, list[dict]]) -> str:
    folds = any("fold_sd" in s for found in groups.values() for s in found)
    extra = ["nDCG@10 sd over folds"] if folds else []
    columns = [*METRICS, *extra, "nDCG@10 − first", "seeds"]
    lines = [f"| runs | {' | '.join(columns)} |", "|---|" + "---|" * len(columns)]
    first = next(iter(groups.values()))
    for label, found in groups.items():
        cells = [cell([s["metrics"][m] for s in found]) for m in METRICS]
        if folds:
            spread = [s["fold_sd"] for s in found if s.get("fold_sd") is not None]
            cells.append(f"{np.mean(spread):.4f}" if spread else "–")
        seeds = ",".join(str(s["seed"]) for s in found)
        lines.append(f"| {label} | {' | '.join(cells)} | {difference(found, first)} | {seeds} |")
    return "\n".join(lines)


def fold_table(groups: dict[str, list[dict]]) -> str:
    """nDCG@10 fold by fold (mean over seeds) of the groups run one job per fold, each minus the first's."""
    by_fold = {label: np.mean([s["by_fold"] for s in found], axis=0) for label, found in groups.items()
               if all("by_fold" in s for s in found)}
    if not by_fold:
        return ""
    first = next(iter(by_fold.values()))
    labels = list(by_fold)
    lines = ["| fold | " + " | ".join(labels) + " | " + " | ".join(f"{label} − {labels[0]}" for label in labels[1:])
             + " |", "|---|" + "---|" * (2 * len(labels) - 1)]
    for fold in range(len(first)):
        cells = [f"{by_fold[label][fold]:.4f}" for label in labels]
        cells += [f"{by_fold[label][fold] - first[fold]:+.4f}" for label in labels[1:]]
        lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="+", help="LABEL=GLOB of run dirs or records")
    args = parser.parse_args()
    groups = {}
    for group in args.groups:
        label, _, pattern = group.partition("=")
        if not (found := runs(pattern)):
            raise SystemExit(f"{label}: no finished run under {pattern}")
        groups[label] = found
    print(table(groups))
    if folds := fold_table(groups):
        print(f"\nnDCG@10 by fold, mean over seeds:\n\n{folds}")


if __name__ == "__main__":
    main()
