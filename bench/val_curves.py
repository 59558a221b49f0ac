"""Validation nDCG@10 per epoch of train.py runs, as one chart and a table (to choose epochs and method on dev).

    python -m bench.val_curves logs/selection_cpu/epochs5/* logs/selection_cpu/epochs8_naive \
        --out docs/results/cpu/val_curves.png

Each run dir needs csv/metrics.csv (logger=csv, the default) and .hydra/config.yaml; a run still going is
drawn as far as it got. The curves are also written beside the chart as JSON (the PNG's name, .json), so the
figures survive the run folders.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from omegaconf import OmegaConf

from pa_retriever.utils.plots import pyplot, save_figure


def curve(run_dir: Path) -> tuple[str, int, list[float]]:
    """(label, max epochs, nDCG@10 on dev after each finished epoch)."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/ndcg@10")]
    return (f"{cfg.mining.name}, teacher {cfg.teacher.name}, seed {cfg.seed}", cfg.trainer.max_epochs,
            [float(r["val/ndcg@10"]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    print("| run | max epochs | nDCG@10 on dev after each epoch |\n|---|---|---|")
    record = []
    for run_dir in (r for r in args.runs if r.is_dir()):  # a shell glob also matches multirun.yaml
        label, max_epochs, scores = curve(run_dir)
        if scores:
            record.append({"run": label, "max_epochs": max_epochs, "val_ndcg@10": scores})
            ax.plot(range(1, len(scores) + 1), scores, marker="o", label=f"{label}, {max_epochs} epochs")
            print(f"| {label} | {max_epochs} | " + ", ".join(f"{s:.4f}" for s in scores) + " |")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nDCG@10 on dev")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n![validation nDCG@10 per epoch]({args.out.name})")


if __name__ == "__main__":
    main()
