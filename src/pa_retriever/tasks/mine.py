"""The mining job: store the teacher's scores for every training query, then show what each method makes of them
(a table, the paper's score-distribution plots, and how often each would train on a known false negative)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.data.beir import RetrievalData
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.mining.export import EXPORT_FORMATS, export_negatives
from pa_retriever.mining.methods import MiningMethod
from pa_retriever.mining.probe import false_negative_report, plot_false_negative_picks
from pa_retriever.mining.source import candidate_source
from pa_retriever.mining.stats import (candidate_diagnostics, format_table, method_stats, plot_margins,
                                       plot_score_distributions)
from pa_retriever.tasks.datasets import Dataset, datasets
from pa_retriever.tasks.runtime import finish_loggers, instantiate_loggers, log_config, task_wrapper
from pa_retriever.utils.checks import check_choice
from pa_retriever.utils.distributed import init_from_env
from pa_retriever.utils.io import write_json_atomic
from pa_retriever.utils.plots import log_figures


@task_wrapper
def mine(cfg: DictConfig) -> dict:
    """Mine every dataset (torchrun processes share the encoding), then, on the main process, the statistics and
    the exports of each ({} elsewhere); several datasets write theirs in a folder each."""
    rank, world = init_from_env()
    configured = MiningMethod.configured(Path(cfg.paths.root_dir) / "conf" / "mining")
    names = list(cfg.stats_methods) + list(cfg.ensemble_methods)
    if unknown := [name for name in names if name not in configured]:
        raise ValueError(f"stats_methods/ensemble_methods name {unknown}, which conf/mining does not define")
    for fmt in cfg.export:
        check_choice("export", fmt, EXPORT_FORMATS)
    settings, jobs = EncodeSettings.from_config(cfg.encode), datasets(cfg, "train_split")
    mined = []
    for dataset in jobs:
        split = dataset.source.load(dataset.split)
        source = candidate_source(None, dataset.teacher_cfg, cfg.candidates, settings, Path(cfg.paths.cache_dir),
                                  dataset.name)
        if cfg.export:  # the method's negatives are exported: refused as train.py refuses them, before mining
            source.check(dataset.method)
        source.mine(split, rank, world)
        mined.append((dataset, split, source))
    if rank != 0:
        return {}
    loggers = instantiate_loggers(cfg.get("logger"))
    log_config(loggers, cfg)
    reports, figures = {}, {}
    for dataset, split, source in mined:
        out_dir = Path(cfg.paths.output_dir) / ("" if len(jobs) == 1 else dataset.name)
        candidates = source.load(split)
        reports[dataset.name] = _dataset_report(cfg, dataset, split, candidates, configured, names, out_dir, loggers,
                                                figures)
        if cfg.export:
            exported = export_negatives(split, candidates, dataset.method, cfg.seed, out_dir, cfg.export)
            print(f"{dataset.name}: the negatives mining={dataset.method.name} trains with at epoch 0 -> "
                  + ", ".join(f"{fmt} {path}" for fmt, path in exported.items()))
    log_figures(loggers, figures)
    finish_loggers(loggers)
    print(f"Statistics and plots written to {cfg.paths.output_dir}")
    return reports[jobs[0].name] if len(jobs) == 1 else reports


def _dataset_report(cfg: DictConfig, dataset: Dataset, split: RetrievalData, candidates: dict[str, CandidateArrays],
                    configured: dict[str, MiningMethod], names: list[str], out_dir: Path, loggers: list,
                    figures: dict[str, Path]) -> dict:
    """Each teacher's (and an ensemble's) tables, false-negative probe and plots, in `out_dir`."""
    report = {"diagnostics": {name: candidate_diagnostics(c) for name, c in candidates.items()}, "methods": {},
              "false_negatives": {}}
    listed = dataset.source.false_negatives()
    teacher = dataset.teacher_cfg if isinstance(dataset.teacher_cfg, str) else dataset.teacher_cfg.name
    groups = [(name, [c]) for name, c in candidates.items()]
    if len(candidates) > 1:  # an ensemble: each member alone, then the ensemble methods over all of them
        groups.append((teacher, list(candidates.values())))
    for label, members in groups:
        ensemble = len(members) > 1
        methods = [configured[n] for n in names if (configured[n].ensemble is not None) == ensemble]
        rows = _teacher_report(cfg, label, members, list(candidates), methods, dataset, listed, split.passage_index,
                               out_dir, report, figures)
        for logger in loggers:
            logger.log_metrics({f"mining/{label}/{r['method']}/removed_pct": float(r["removed"][:-1]) for r in rows})
    for name, diag in report["diagnostics"].items():
        print(f"{name}: {100 * diag['share_with_candidate_above_positive']:.1f}% of queries have a candidate "
              f"scoring at or above their positive (mean {diag['mean_candidates_above_positive']:.1f} such "
              "candidates): false-negative suspects that positive-aware filters remove")
    write_json_atomic(out_dir / "mining_stats.json", report)
    return report


def _teacher_report(cfg: DictConfig, label: str, members: list[CandidateArrays], names: list[str],
                    methods: list[MiningMethod], dataset: Dataset, listed: dict[str, set[str]],
                    passage_index: dict[str, int], out_dir: Path, report: dict, figures: dict[str, Path]) -> list[dict]:
    """One teacher's (or ensemble's) table, false-negative probe and plots, added to `report` and `figures`."""
    seed = cfg.candidates.seed
    stats = [method_stats(members, m, seed=seed, names=names) for m in methods]
    rows = [s.row() for s in stats]
    print(f"\nTeacher {label}: {len(members[0])} queries, {members[0].neg_idx.shape[1]} candidates each")
    if cfg.get("false_negative_probe", True):
        probe = false_negative_report(members, methods, listed, passage_index, seed)
        report["false_negatives"][label] = {source: [vars(p) for p in picks] for source, picks in probe.items()}
        for source, picks in probe.items():
            print(f"{source}: {picks[0].queries} queries, {picks[0].stored} of them with theirs stored")
            for row, p in zip(rows, picks):
                row[f"{source} picked"] = p.cell()
            figures[f"mining/{label}/false_negatives/{source}"] = plot_false_negative_picks(
                picks, out_dir / f"false_negatives_{label}_{source.split()[0]}.png", f"{label}: {source}")
    report["methods"][label] = rows
    print(format_table(rows))
    title = f"{label} on {dataset.name}/{dataset.split}"
    figures[f"mining/{label}/scores"] = plot_score_distributions(stats, out_dir / f"scores_{label}.png", title)
    figures[f"mining/{label}/margins"] = plot_margins(stats, out_dir / f"margins_{label}.png", title)
    return rows
