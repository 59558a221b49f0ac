"""Tables and charts of a mining ablation: our train.py runs and bench/st_ablation.py's, side by side.

    python -m bench.ablation_report --ours logs/ablation_cpu/ours --st logs/ablation_cpu/st --out docs/results/cpu \
        --title "SciFact train -> dev, reduced CPU setting" --zero-shot docs/bench/eval_scifact_dev_cpu.json
    python -m bench.ablation_report --out docs/results/cpu      # rebuild from the stored records alone

Each run is first stored as one small JSON record in <out>/runs/ (a rerun of the same side, teacher, method and
seed replaces its record); the report is then built from every record there. So results of earlier sessions add
up instead of vanishing with their logs/ folders. All records must share one setting (splits, epochs, max length,
batch size, learning rate): mixing settings in one folder is an error that names the files. A teacher-free method
(`none`, `random`) needs one run per seed, not one per teacher: where a teacher lacks it, another teacher's run
stands in, and runs of it under several teachers must agree (the report lists any that do not).

Writes <out>/report.md, <out>/ndcg_by_method.png (ours and ST per method and teacher),
<out>/gain_over_naive.png (each method minus naive top-k at the same seed, per teacher: the paper's claim that
positive-aware mining gains more with stronger teachers) and <out>/ndcg_vs_removed.png (nDCG@10 against the
share of candidates each filter removes).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

from pa_retriever.mining.methods import MiningMethod
from pa_retriever.utils.io import write_json_atomic
from pa_retriever.utils.plots import pyplot, save_figure

ORDER = ["none", "naive_topk", "topk_shifted", "topk_abs", "topk_marginpos", "topk_percpos", "sampled_topk",
         "top1_sampled_topk", "random"]
SIDES = {"ours": "ours", "sentence-transformers": "st"}
BASELINE = "naive_topk"
# Methods that read no teacher score (MiningMethod.uses_teacher): one run per (side, seed) stands for every
# teacher. bench/scifact_ablation.sh trains them under the first teacher only; the report lends that run to the
# others (and checks they agree).
TEACHER_FREE = {name for name, method in MiningMethod.configured(ROOT / "conf" / "mining").items()
                if not method.uses_teacher}


# --- records: one normalised JSON per run -------------------------------------------------------------------

def our_record(run_dir: Path) -> dict:
    """A train.py run dir (summary.json, mining_stats.json, .hydra/config.yaml) as a record."""
    run = json.loads((run_dir / "summary.json").read_text())
    if not run.get("metrics"):
        raise SystemExit(f"{run_dir / 'summary.json'}: no metrics (was data.split judged?)")
    stats = json.loads((run_dir / "mining_stats.json").read_text())
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    overrides = cfg.module.config_overrides or {}
    setting = {"train_split": cfg.data.train_split, "eval_split": cfg.data.split, "epochs": float(cfg.trainer.max_epochs),
               "max_length": cfg.model.passage_max_length, "batch_size": cfg.datamodule.batch_size,
               "lr": float(cfg.module.optimizer.lr), "weight_decay": float(cfg.module.weight_decay),
               "warmup": "ours", "warmup_ratio": float(cfg.module.scheduler.warmup_ratio),
               "attention_dropout": overrides.get("attention_probs_dropout_prob")}
    return {"side": "ours", "teacher": run["teacher"], "method": run["method"], "seed": run["seed"],
            "metrics": run["metrics"], "kept": stats["mining/queries"] - stats["mining/queries_short"],
            "total": stats["mining/queries"], "removed_share": stats["mining/removed_share"],
            "train_seconds": run["train_seconds"],
            "mining_seconds_cold": (run.get("mining_seconds") or {}).get(run["teacher"]),
            "setting": setting, "source": str(run_dir)}


def st_record(path: Path) -> dict:
    """A bench/st_ablation.py JSON as a record (kept/total: rows mine_hard_negatives returned / pairs)."""
    run = json.loads(path.read_text())
    if "setting" not in run:
        raise SystemExit(f"{path}: no 'setting' (written by an older bench/st_ablation.py); run it again")
    return {"side": "sentence-transformers", "teacher": run["teacher"], "method": run["method"], "seed": run["seed"],
            "metrics": run["metrics"], "kept": run["rows_kept"], "total": run["pairs"],
            "train_seconds": run["train_seconds"], "mining_seconds_cold": run["mining_seconds_cold"],
            "setting": run["setting"], "st_recipe": run["st_recipe"], "source": str(path)}


def record_name(r: dict) -> str:
    return f"{SIDES[r['side']]}-{r['teacher']}-{r['method']}-seed{r['seed']}.json"


def merge_records(new: list[dict], folder: Path) -> list[dict]:
    """The stored records with `new` ones added (replacing reruns); stored only if all share one setting."""
    merged = {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    merged.update({record_name(r): r for r in new})
    check_one_setting(merged, folder)
    for r in new:
        write_json_atomic(folder / record_name(r), r)
    return list(merged.values())


def check_one_setting(records: dict[str, dict], folder: Path) -> None:
    """Every run shares one setting, and every sentence-transformers run one `st_recipe` (the options ours lacks)."""
    st = {name: r for name, r in records.items() if r["side"] == "sentence-transformers"}
    for field, group in (("setting", records), ("st_recipe", st)):
        found = defaultdict(list)
        for name, r in group.items():
            found[json.dumps(r.get(field), sort_keys=True)].append(r.get("source", name))
        if len(found) > 1:
            detail = "\n".join(f"  {s}: {', '.join(files[:4])}{' ...' if len(files) > 4 else ''}"
                               for s, files in found.items())
            raise SystemExit(f"{folder}: runs of {len(found)} different {field}s; keep one per folder (nothing "
                             f"was stored):\n{detail}")


# --- statistics and tables ----------------------------------------------------------------------------------

def spread(values: list[float]) -> float:
    """The sample standard deviation over seeds (n - 1: three seeds are a sample); 0 for one seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_std(values: list[float], sign: str = "") -> str:
    if not values:
        return "-"
    mean = f"{np.mean(values):{sign}.4f}"
    return f"{mean} ± {spread(values):.4f} ({len(values)})" if len(values) > 1 else mean


def seconds(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if r.get(key)]
    return f"{np.mean(values):.0f}" if values else "-"


def mining(runs: list[dict], method: str) -> str:
    """The teacher's cold mining seconds; none for a method that reads no teacher score."""
    return "-" if method in TEACHER_FREE else seconds(runs, "mining_seconds_cold")


def ndcg(runs: list[dict]) -> list[float]:
    return [r["metrics"]["ndcg@10"] for r in runs]


def grouped(records: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """(teacher, method, side) -> runs, ordered by seed."""
    by = defaultdict(list)
    for r in sorted(records, key=lambda r: r["seed"]):
        by[(r["teacher"], r["method"], r["side"])].append(r)
    return by


def share_teacher_free(by: dict) -> list[str]:
    """Lend each teacher-free run to the teachers of its side that have no run of their own at that seed (ST has
    no BM25 teacher, so it gets none). Returns one line per seed whose own runs under several teachers disagree:
    they are the same computation, so they should agree in every digit."""
    teachers_of = defaultdict(set)
    for teacher, _, side in by:
        teachers_of[side].add(teacher)
    disagreements = []
    for side, teachers in teachers_of.items():
        for method in TEACHER_FREE:
            at_seed = defaultdict(dict)  # seed -> teacher -> run
            for teacher in teachers:
                for r in by.get((teacher, method, side), []):
                    at_seed[r["seed"]][teacher] = r
            for seed, runs in sorted(at_seed.items()):
                scores = {t: r["metrics"]["ndcg@10"] for t, r in sorted(runs.items())}
                if max(scores.values()) - min(scores.values()) > 1e-9:
                    disagreements.append(f"{side} {method} seed {seed}: " +
                                         ", ".join(f"{t} {v:.4f}" for t, v in scores.items()))
                lender = runs[min(runs)]
                for teacher in teachers - runs.keys():
                    by[(teacher, method, side)].append({**lender, "teacher": teacher, "shared_from": lender["teacher"]})
                    by[(teacher, method, side)].sort(key=lambda r: r["seed"])
    return disagreements


def shared_note(by: dict, teacher: str) -> str:
    """Which rows of this teacher's table are another teacher's runs, lent by share_teacher_free."""
    lent = sorted({(m, side, r["shared_from"]) for (t, m, side), runs in by.items() if t == teacher
                   for r in runs if "shared_from" in r})
    return "".join(f"`{m}` ({side}) reads no teacher score: its runs here are those under teacher {source}. "
                   for m, side, source in lent)


def ordered(methods: set[str]) -> list[str]:
    """The paper's order first, then any other method (ensembles) by name."""
    return [m for m in ORDER if m in methods] + sorted(methods - set(ORDER))


def methods_of(by: dict, teacher: str) -> list[str]:
    return ordered({m for (t, m, _) in by if t == teacher})


def side_by_side(by: dict, teacher: str) -> str:
    lines = ["| method | ours nDCG@10 | ST nDCG@10 | ours − ST | ours R@100 | ST R@100 | ours queries with all "
             "negatives | ST rows kept | ours mining s | ST mining s | ours train s | ST train s |", "|---" * 12 + "|"]
    for m in methods_of(by, teacher):
        ours, st = by.get((teacher, m, "ours"), []), by.get((teacher, m, "sentence-transformers"), [])
        recall = lambda rs: [r["metrics"]["recall@100"] for r in rs]  # noqa: E731
        gap = f"{np.mean(ndcg(ours)) - np.mean(ndcg(st)):+.4f}" if ours and st else "-"
        kept = lambda rs: f"{rs[0]['kept']}/{rs[0]['total']}" if rs else "-"  # noqa: E731
        lines.append(f"| {m} | {mean_std(ndcg(ours))} | {mean_std(ndcg(st))} | {gap} | {mean_std(recall(ours))} | "
                     f"{mean_std(recall(st))} | {kept(ours)} | {kept(st)} | {mining(ours, m)} | "
                     f"{mining(st, m)} | {seconds(ours, 'train_seconds')} | "
                     f"{seconds(st, 'train_seconds')} |")
    return "\n".join(lines)


def paired_gains(by: dict, teacher: str, side: str = "ours") -> dict[str, list[float]]:
    """method -> nDCG@10 minus naive top-k's at the same seed (the seed fixes the batch order for both)."""
    base = {r["seed"]: r["metrics"]["ndcg@10"] for r in by.get((teacher, BASELINE, side), [])}
    gains = {}
    for m in methods_of(by, teacher):
        runs = [r for r in by.get((teacher, m, side), []) if r["seed"] in base]
        if m != BASELINE and runs:
            gains[m] = [r["metrics"]["ndcg@10"] - base[r["seed"]] for r in runs]
    return gains


def gains_table(by: dict, teachers: list[str], side: str = "ours") -> str:
    gains = {t: paired_gains(by, t, side) for t in teachers}
    methods = ordered({m for g in gains.values() for m in g})
    lines = ["| method | " + " | ".join(f"teacher {t}" for t in teachers) + " |", "|---" * (len(teachers) + 1) + "|"]
    for m in methods:
        cells = [mean_std(g[m], "+") if m in g else "-" for g in gains.values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- charts -------------------------------------------------------------------------------------------------

def bar_chart(by: dict, teachers: list[str], path: Path, title: str, zero_shot: float | None) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(teachers), figsize=(6 * len(teachers), 3.8), squeeze=False)
    for ax, teacher in zip(axes[0], teachers):
        methods = methods_of(by, teacher)
        x = np.arange(len(methods))
        for shift, side, color in ((-0.2, "ours", "tab:blue"), (0.2, "sentence-transformers", "tab:orange")):
            runs = [ndcg(by.get((teacher, m, side), [])) for m in methods]
            means = [np.mean(v) if v else np.nan for v in runs]
            ax.bar(x + shift, means, 0.4, yerr=[spread(v) for v in runs], label=side, color=color)
        if zero_shot is not None:
            ax.axhline(zero_shot, color="gray", linestyle="--", linewidth=1, label="base model, no training")
        values = [v for m in methods for side in SIDES for v in ndcg(by.get((teacher, m, side), []))]
        if values:  # every run and the reference line in view
            low, high = min(values + [zero_shot or 1.0]), max(values + [zero_shot or 0.0])
            ax.set_ylim(low - 0.01, high + 0.01)
        ax.set_xticks(x, methods, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"teacher: {teacher}", fontsize=10)
        ax.set_ylabel("nDCG@10 (mean ± std over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def gain_chart(by: dict, teachers: list[str], path: Path, title: str) -> None:
    plt = pyplot()
    gains = {t: paired_gains(by, t) for t in teachers}
    methods = ordered({m for g in gains.values() for m in g})
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods)), 3.8))
    width = 0.8 / max(1, len(teachers))
    for i, teacher in enumerate(teachers):
        g = gains[teacher]
        x = np.arange(len(methods)) + (i - (len(teachers) - 1) / 2) * width
        ax.bar(x, [np.mean(g[m]) if m in g else np.nan for m in methods], width,
               yerr=[spread(g.get(m, [])) for m in methods], label=f"teacher {teacher}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(methods)), methods, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"nDCG@10 minus {BASELINE}\n(same seed; mean ± std)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{title}: ours, each method against naive top-k", fontsize=9)
    save_figure(fig, path)


def removed_chart(by: dict, teachers: list[str], path: Path, title: str) -> None:
    """nDCG@10 against the share of the teacher's top candidates a method removes (ours, one point per method):
    whether filtering pays on this data."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for teacher in teachers:
        points = []
        for m in methods_of(by, teacher):
            runs = by.get((teacher, m, "ours"), [])
            if m not in TEACHER_FREE and runs and runs[0].get("removed_share") is not None:
                points.append((100 * runs[0]["removed_share"], np.mean(ndcg(runs)), spread(ndcg(runs)), m))
        if points:
            x, y, err, names = zip(*points)
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=f"teacher {teacher}")
            for xi, yi, name in zip(x, y, names):
                ax.annotate(name, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("teacher's top candidates the method removes (%)")
    ax.set_ylabel("nDCG@10 (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, nargs="*", default=[], help="multirun dirs (or run dirs) of train.py")
    parser.add_argument("--st", type=Path, nargs="*", default=[], help="--out dirs of bench/st_ablation.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--zero-shot", type=Path, help="the base model's metrics (evaluate.py's metrics.json, or "
                        "bench/eval_vs_st.py's JSON): a reference line in the chart")
    args = parser.parse_args()
    new = [our_record(s.parent) for sweep in args.ours for s in sorted(sweep.glob("**/summary.json"))]
    new += [st_record(p) for folder in args.st for p in sorted(folder.glob("*.json"))]
    records = merge_records(new, args.out / "runs")
    if not records:
        raise SystemExit(f"no runs in {args.out / 'runs'}: pass --ours and/or --st")
    by = grouped(records)
    disagreements = share_teacher_free(by)
    teachers = sorted({r["teacher"] for r in records}, key=lambda t: (t != "minilm", t))
    title = args.title or "Mining ablation"
    setting = ", ".join(f"{k} {v}" for k, v in records[0]["setting"].items())
    parts = [f"# {title}", "", f"Setting: {setting}. {len(records)} runs ({len(new)} added now), mean ± sample "
             "standard deviation over seeds (number of seeds).", ""]
    for teacher in teachers:
        parts += [f"## Teacher: {teacher}", "", side_by_side(by, teacher), ""]
        note = shared_note(by, teacher)
        parts += [note.strip(), ""] if note else []
    for side in (s for s in SIDES if any(r["side"] == s for r in records)):
        parts += [f"## Each method minus {BASELINE} at the same seed ({side})", "", gains_table(by, teachers, side), ""]
    if disagreements:
        parts += ["**Teacher-free runs that should agree and do not** (one seed, several teachers; a run is not "
                  "deterministic here):", "", *[f"- {line}" for line in disagreements], ""]
    zero_shot = None
    if args.zero_shot:
        metrics = json.loads(args.zero_shot.read_text())
        zero_shot = metrics.get("ours", metrics)["ndcg@10"]
        parts += [f"Base model without training: nDCG@10 {zero_shot:.4f} ({args.zero_shot}).", ""]
    bar_chart(by, teachers, args.out / "ndcg_by_method.png", title, zero_shot)
    gain_chart(by, teachers, args.out / "gain_over_naive.png", title)
    removed_chart(by, teachers, args.out / "ndcg_vs_removed.png", title)
    parts += ["![nDCG@10 by method](ndcg_by_method.png)", "", "![gain over naive top-k](gain_over_naive.png)", "",
              "![nDCG@10 against the share of candidates removed](ndcg_vs_removed.png)", ""]
    (args.out / "report.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
