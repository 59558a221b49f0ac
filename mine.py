"""Mine: store the teacher's scores for every training query, then compare the mining methods on them.

    python mine.py teacher=minilm data.path=../shared/data/scifact
"""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.data import dataset_dir, load_data  # noqa: E402
from src.data.beir import read_false_negatives  # noqa: E402
from src.mining import mined_candidates  # noqa: E402
from src.mining.methods import MiningMethod  # noqa: E402
from src.mining.probe import false_negative_report, plot_false_negative_picks  # noqa: E402
from src.mining.stats import candidate_diagnostics, format_table, method_stats, plot_margins, \
    plot_score_distributions  # noqa: E402
from src.utils.distributed import init_from_env  # noqa: E402
from src.utils.io import write_json_atomic  # noqa: E402
from src.utils.runtime import finish_loggers, instantiate_loggers, log_config, log_figures, task_wrapper  # noqa: E402


def method_configs(cfg: DictConfig, ensemble: bool) -> list[MiningMethod]:
    names = list(cfg.stats_methods) + (list(cfg.ensemble_methods) if ensemble else [])
    conf_dir = Path(cfg.paths.root_dir) / "conf" / "mining"
    configured = MiningMethod.configured(conf_dir)
    if unknown := [name for name in names if name not in configured]:
        raise ValueError(f"stats_methods/ensemble_methods name {unknown}, which {conf_dir} does not define")
    return [configured[name] for name in names]


@task_wrapper
def mine(cfg: DictConfig) -> dict:
    rank, world = init_from_env()
    data = load_data(cfg.data, cfg.data.train_split)
    candidates = mined_candidates(cfg, data, rank, world)
    if rank != 0:
        return {}
    loggers = instantiate_loggers(cfg.get("logger"))
    log_config(loggers, cfg)
    out_dir = Path(cfg.paths.output_dir)
    report = {"diagnostics": {name: candidate_diagnostics(c) for name, c in candidates.items()}, "methods": {},
              "false_negatives": {}}
    listed = read_false_negatives(dataset_dir(cfg.data))
    figures = {}
    for label, members in [(name, [c]) for name, c in candidates.items()] + (
            [(cfg.teacher.name, list(candidates.values()))] if len(candidates) > 1 else []):
        methods = method_configs(cfg, ensemble=len(members) > 1)
        methods = [m for m in methods if (m.ensemble is not None) == (len(members) > 1)]
        stats = [method_stats(members, m, seed=cfg.miner.seed, names=list(candidates)) for m in methods]
        rows = [s.row() for s in stats]
        print(f"\nTeacher {label}: {len(members[0])} queries, {members[0].neg_idx.shape[1]} candidates each")
        if cfg.get("false_negative_probe", True):
            probe = false_negative_report(members, methods, listed, data.passage_index, cfg.miner.seed)
            report["false_negatives"][label] = {source: [vars(p) for p in picks] for source, picks in probe.items()}
            for source, picks in probe.items():
                print(f"{source}: {picks[0].queries} queries, {picks[0].stored} of them with theirs stored")
                for row, p in zip(rows, picks):
                    row[f"{source} picked"] = p.cell()
                figures[f"mining/{label}/false_negatives/{source}"] = plot_false_negative_picks(
                    picks, out_dir / f"false_negatives_{label}_{source.split()[0]}.png", f"{label}: {source}")
        report["methods"][label] = rows
        print(format_table(rows))
        title = f"{label} on {Path(cfg.data.path).name}/{cfg.data.train_split}"
        figures[f"mining/{label}/scores"] = plot_score_distributions(stats, out_dir / f"scores_{label}.png", title)
        figures[f"mining/{label}/margins"] = plot_margins(stats, out_dir / f"margins_{label}.png", title)
        for logger in loggers:
            logger.log_metrics({f"mining/{label}/{r['method']}/removed_pct": float(r["removed"][:-1])
                                for r in rows})
    for name, diag in report["diagnostics"].items():
        print(f"{name}: {100 * diag['share_with_candidate_above_positive']:.1f}% of queries have a candidate "
              f"scoring at or above their positive (mean {diag['mean_candidates_above_positive']:.1f} such "
              "candidates): false-negative suspects that positive-aware filters remove")
    write_json_atomic(out_dir / "mining_stats.json", report)
    log_figures(loggers, figures)
    finish_loggers(loggers)
    print(f"Statistics and plots written to {out_dir}")
    return report


@hydra.main(version_base="1.3", config_path="conf", config_name="mine")
def main(cfg: DictConfig) -> None:
    mine(cfg)


if __name__ == "__main__":
    main()
