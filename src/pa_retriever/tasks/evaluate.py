"""The evaluation job: a model (a config or a trained folder) on one split, scored as train.py scores it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pa_retriever.data.source import DataSource
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.towers import Towers
from pa_retriever.eval.retrieval import format_table, score_model, write_results
from pa_retriever.tasks.runtime import finish_loggers, instantiate_loggers, log_config, task_wrapper


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """nDCG@10, Recall@100, MRR@10 and MAP@100 of the model on data.split, written to the run dir."""
    loggers = instantiate_loggers(cfg.get("logger"))
    log_config(loggers, cfg)
    data = DataSource.from_config(cfg.data)
    split = data.load(cfg.data.split)
    settings = EncodeSettings.from_config(cfg.encode)
    towers = Towers.load(EncoderSpec.from_config(cfg.model), settings)
    result = score_model(towers, split, settings, k=cfg.k, ignore_identical_ids=cfg.ignore_identical_ids)
    out_dir = Path(cfg.paths.output_dir)
    write_results(result, out_dir, per_query=cfg.per_query, run_depth=cfg.run_depth)
    for logger in loggers:
        logger.log_metrics({f"{cfg.data.split}/{name}": value for name, value in result.metrics.items()})
    finish_loggers(loggers)
    print(format_table(result.metrics, f"{cfg.model.name} on {data.name}/{cfg.data.split} ({len(result.per_query)} "
                                       "queries)"))
    print(f"Results written to {out_dir}")
    return result.metrics
