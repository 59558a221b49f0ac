"""Every fold of a k-fold cross-validation in one job (`cv=kfold data.fold=all`): each fold trains on the others
and is scored on its own, in its own run dir (fold<i>/); the job returns the mean over folds under each metric's
name, so that a hyperparameter search compares recipes by mean fold score, and writes the spread beside it in
cv_summary.json.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pa_retriever.tasks.runtime import end_wandb_run
from pa_retriever.utils.checks import SettingError
from pa_retriever.utils.io import write_json_atomic

log = logging.getLogger(__name__)

ALL_FOLDS = "all"


def runs_every_fold(cfg: DictConfig) -> bool:
    return cfg.data.get("fold") == ALL_FOLDS


def fold_configs(cfg: DictConfig) -> list[DictConfig]:
    """One config per fold, each writing to <run dir>/fold<i>."""
    if "folds" not in cfg.data:
        raise SettingError("data.fold=all names every fold of a cross-validation: add cv=kfold")
    if cfg.data.folds < 2:
        raise SettingError(f"data.folds={cfg.data.folds}: k-fold needs k >= 2")
    if cfg.get("ckpt_path"):  # one checkpoint resumed by every fold would train each on another's scored queries
        raise SettingError("ckpt_path with data.fold=all: resume one fold as its own job (data.fold=<i>)")
    strategy = cfg.trainer.get("strategy", "auto")
    processes = str(strategy) != "auto" or str(cfg.trainer.get("devices", 1)) != "1" \
        or cfg.trainer.get("num_nodes", 1) != 1
    if processes:
        raise SettingError("data.fold=all trains the folds one after another in one process, on one device: run "
                           "the folds as jobs instead (-m cv=kfold data.fold=0,1,2,3,4)")
    configs = []
    for fold in range(cfg.data.folds):
        # overrides merged into a new config, as a command line's are: interpolations kept, so the splits and
        # run-dir paths follow the fold
        overrides = {"data": {"fold": fold}, "paths": {"output_dir": str(Path(cfg.paths.output_dir) / f"fold{fold}")}}
        if (cfg.get("logger") or {}).get("wandb"):  # one W&B run per fold, named so
            overrides["logger"] = {"wandb": {"name": f"{cfg.logger.wandb.name}-fold{fold}"}}
        configs.append(OmegaConf.merge(cfg, overrides))
    return configs


def mean_over_folds(scores: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, standard deviation) over folds of each metric every fold reports."""
    names = [name for name in scores[0] if all(name in s for s in scores)]
    return ({name: statistics.fmean(s[name] for s in scores) for name in names},
            {name: statistics.stdev(s[name] for s in scores) for name in names})


def cross_validate(cfg: DictConfig, train: Callable[[DictConfig], dict[str, float]]) -> dict[str, float]:
    """Train and score every fold; the mean of each metric every fold reports ({} if a fold reports none)."""
    scores = []
    for fold, fold_cfg in enumerate(fold_configs(cfg)):
        log.info("Fold %d of %d: run dir %s", fold, cfg.data.folds, fold_cfg.paths.output_dir)
        scores.append(train(fold_cfg))
        end_wandb_run()
    if not all(scores):
        log.warning("A fold reported no metrics (test_after_training=false?): no mean over folds")
        return {}
    mean, std = mean_over_folds(scores)
    write_json_atomic(Path(cfg.paths.output_dir) / "cv_summary.json", {
        "split": cfg.data.labelled, "folds": cfg.data.folds, "seed": cfg.seed, "mean": mean, "std": std,
        "by_fold": scores})
    log.info("Mean over %d folds: %s", cfg.data.folds, ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    return mean
