"""The mining job: store the teacher's scores for every training query, then show what each method makes of them
(a table, the paper's score-distribution plots, and how often each would train on a known false negative)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.data.source import DataSource
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.mining.methods import MiningMethod
from pa_retriever.mining.probe import false_negative_report, plot_false_negative_picks
from pa_retriever.mining.source import candidate_source
from pa_retriever.mining.stats import (
    candidate_diagnostics,
    format_table,
    method_stats,
    plot_margins,
    plot_score_distributions,
)
from pa_retriever.tasks.runtime import finish_loggers, instantiate_loggers, log_config, task_wrapper
from pa_retriever.utils.distributed import init_from_env
from pa_retriever.utils.io import write_json_atomic
from pa_retriever.utils.plots import log_figures


@task_wrapper
def mine(cfg: DictConfig) -> dict:
    """Mine (torchrun processes share the encoding), then the statistics on the main process ({} elsewhere)."""
    rank, world = init_from_env()
    data = DataSource.from_config(cfg.data)
    split = data.load(cfg.data.train_split)
    configured = MiningMethod.configured(Path(cfg.paths.root_dir) / "conf" / "mining")
    names = list(cfg.stats_methods) + list(cfg.ensemble_methods)
    if unknown := [name for name in names if name not in configured]:
        raise ValueError(f"stats_methods/ensemble_methods name {unknown}, which conf/mining does not define")
    source = candidate_source(None, cfg.teacher, cfg.candidates, EncodeSettings.from_config(cfg.encode),
                              Path(cfg.paths.cache_dir), data.name)
    source.mine(split, rank, world)
    if rank != 0:
        return {}
    candidates = source.load(split)
    loggers = instantiate_loggers(cfg.get("logger"))
    log_config(loggers, cfg)
    out_dir = Path(cfg.paths.output_dir)
    report = {"diagnostics": {name: candidate_diagnostics(c) for name, c in candidates.items()}, "methods": {},
              "false_negatives": {}}
    figures: dict[str, Path] = {}
    listed = data.false_negatives()
    groups = [(name, [c]) for name, c in candidates.items()]
    if len(candidates) > 1:  # an ensemble: each member alone, then the ensemble methods over all of them
        groups.append((cfg.teacher.name, list(candidates.values())))
    for label, members in groups:
        ensemble = len(members) > 1
        methods = [configured[n] for n in names if (configured[n].ensemble is not None) == ensemble]
        rows = _teacher_report(cfg, label, members, list(candidates), methods, data, listed, split.passage_index,
                               out_dir, report, figures)
        for logger in loggers:
            logger.log_metrics({f"mining/{label}/{r['method']}/removed_pct": float(r["removed"][:-1]) for r in rows})
    for name, diag in report["diagnostics"].items():
        print(f"{name}: {100 * diag['share_with_candidate_above_positive']:.1f}% of queries have a candidate "
              f"scoring at or above their positive (mean {diag['mean_candidates_above_positive']:.1f} such "
              "candidates): false-negative suspects that positive-aware filters remove")
    write_json_atomic(out_dir / "mining_stats.json", report)
    log_figures(loggers, figures)
    finish_loggers(loggers)
    print(f"Statistics and plots written to {out_dir}")
    return report


def _teacher_report(cfg: DictConfig, label: str, members: list[CandidateArrays], names: list[str],
                    methods: list[MiningMethod], data: DataSource, listed: dict[str, set[str]],
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
    title = f"{label} on {data.name}/{cfg.data.train_split}"
    figures[f"mining/{label}/scores"] = plot_score_distributions(stats, out_dir / f"scores_{label}.png", title)
    figures[f"mining/{label}/margins"] = plot_margins(stats, out_dir / f"margins_{label}.png", title)
    return rows
