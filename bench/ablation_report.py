"""Tables and a bar chart from an ablation: our multirun(s) and bench/st_ablation.py's runs, side by side.

    python bench/ablation_report.py --ours logs/train/multiruns/<time> --st logs/st_ablation/cpu \
        --out docs/results/cpu --title "SciFact train -> dev, reduced CPU setting" \
        --zero-shot docs/bench/eval_scifact_dev_cpu.json

Writes <out>/report.md (mean and spread over seeds of nDCG@10 and Recall@100 per method and teacher, queries
kept, mining and training time) and <out>/ndcg_by_method.png.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.utils.plots import pyplot, save_figure  # noqa: E402

ORDER = ["none", "naive_topk", "topk_shifted", "topk_abs", "topk_marginpos", "topk_percpos", "sampled_topk",
         "top1_sampled_topk", "random"]


def our_runs(sweeps: list[Path]) -> list[dict]:
    runs = []
    for sweep in sweeps:
        for summary in sorted(sweep.glob("*/summary.json")):
            run = json.loads(summary.read_text())
            stats = json.loads((summary.parent / "mining_stats.json").read_text())
            run.update(side="ours", queries=stats["mining/queries"], queries_short=stats["mining/queries_short"],
                       mining_seconds_cold=(run.get("mining_seconds") or {}).get(run["teacher"]))
            runs.append(run)
    return runs


def st_runs(folder: Path | None) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder else []


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.4f} ± {np.std(values):.4f} ({len(values)})" if len(values) > 1 else f"{values[0]:.4f}"


def seconds(runs: list[dict], key: str) -> str:
    """Mean over the runs that recorded it (mining: the one cold run, shared by all of them)."""
    values = [r[key] for r in runs if r.get(key)]
    return f"{np.mean(values):.0f}" if values else "-"


def table(runs: list[dict], teacher: str) -> tuple[str, dict]:
    by = defaultdict(list)
    for run in runs:
        if run["teacher"] == teacher:
            by[(run["method"], run["side"])].append(run)
    methods = [m for m in ORDER if any((m, side) in by for side in ("ours", "sentence-transformers"))]
    lines = ["| method | ours nDCG@10 | ST nDCG@10 | ours R@100 | ST R@100 | ours queries with all negatives | "
             "ST rows kept | ours mining s | ST mining s | ours train s | ST train s |", "|---" * 11 + "|"]
    means = {}
    for m in methods:
        ours, st = by.get((m, "ours"), []), by.get((m, "sentence-transformers"), [])
        metric = lambda rs, k: [r["metrics"][k] for r in rs]  # noqa: E731
        means[m] = (np.mean(metric(ours, "ndcg@10")) if ours else np.nan, np.std(metric(ours, "ndcg@10")) if ours else 0,
                    np.mean(metric(st, "ndcg@10")) if st else np.nan, np.std(metric(st, "ndcg@10")) if st else 0)
        kept_ours = f"{ours[0]['queries'] - ours[0]['queries_short']}/{ours[0]['queries']}" if ours else "-"
        kept_st = f"{st[0]['rows_kept']}/{st[0]['pairs']}" if st else "-"
        lines.append(f"| {m} | {mean_std(metric(ours, 'ndcg@10'))} | {mean_std(metric(st, 'ndcg@10'))} | "
                     f"{mean_std(metric(ours, 'recall@100'))} | {mean_std(metric(st, 'recall@100'))} | {kept_ours} | "
                     f"{kept_st} | {seconds(ours, 'mining_seconds_cold')} | {seconds(st, 'mining_seconds_cold')} | "
                     f"{seconds(ours, 'train_seconds')} | {seconds(st, 'train_seconds')} |")
    return "\n".join(lines), means


def bar_chart(all_means: dict[str, dict], path: Path, title: str, zero_shot: float | None) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(all_means), figsize=(6 * len(all_means), 3.8), squeeze=False)
    for ax, (teacher, means) in zip(axes[0], all_means.items()):
        methods = list(means)
        x = np.arange(len(methods))
        ours = np.array([means[m] for m in methods])
        ax.bar(x - 0.2, ours[:, 0], 0.4, yerr=ours[:, 1], label="ours", color="tab:blue")
        ax.bar(x + 0.2, ours[:, 2], 0.4, yerr=ours[:, 3], label="sentence-transformers", color="tab:orange")
        if zero_shot is not None:
            ax.axhline(zero_shot, color="gray", linestyle="--", linewidth=1, label="base model, no training")
        ax.set_xticks(x, methods, rotation=35, ha="right", fontsize=8)
        finite = ours[:, [0, 2]][np.isfinite(ours[:, [0, 2]])]
        if finite.size:
            ax.set_ylim(finite.min() - 0.03, finite.max() + 0.02)
        ax.set_title(f"teacher: {teacher}", fontsize=10)
        ax.set_ylabel("nDCG@10 (mean over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, nargs="+", required=True, help="multirun dirs of train.py")
    parser.add_argument("--st", type=Path, help="the --out dir of bench/st_ablation.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--zero-shot", type=Path, help="the base model's metrics (evaluate.py's metrics.json, or "
                        "bench/eval_vs_st.py's JSON): a reference line in the chart")
    args = parser.parse_args()
    runs = our_runs(args.ours) + st_runs(args.st)
    teachers = sorted({r["teacher"] for r in runs}, key=lambda t: (t != "minilm", t))
    args.out.mkdir(parents=True, exist_ok=True)
    parts, all_means = [f"# {args.title}" if args.title else "# Ablation", ""], {}
    for teacher in teachers:
        text, all_means[teacher] = table(runs, teacher)
        parts += [f"## Teacher: {teacher}", "", text, ""]
    zero_shot = None
    if args.zero_shot:
        metrics = json.loads(args.zero_shot.read_text())
        zero_shot = metrics.get("ours", metrics)["ndcg@10"]
        parts += [f"Base model without training: nDCG@10 {zero_shot:.4f} ({args.zero_shot}).", ""]
    bar_chart(all_means, args.out / "ndcg_by_method.png", args.title, zero_shot)
    parts += ["![nDCG@10 by method](ndcg_by_method.png)", ""]
    (args.out / "report.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
