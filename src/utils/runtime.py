"""What every entry point does around its task: loggers, figures for them, and a clean finish."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def instantiate_group(group_cfg: DictConfig | None, what: str = "object") -> list[Any]:
    """Every entry with a `_target_` of a config group holding several objects (`logger`, `callbacks`)."""
    built = []
    for name, cfg in (group_cfg or {}).items():
        if isinstance(cfg, DictConfig) and "_target_" in cfg:
            log.info("Instantiating %s %s <%s>", what, name, cfg._target_)
            built.append(hydra.utils.instantiate(cfg))
    return built


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Lightning loggers from the `logger` group; none when it is null."""
    return instantiate_group(logger_cfg, "logger")


def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(params)


def log_figures(loggers: list[Logger], figures: dict[str, Path]) -> None:
    """Send PNG figures to loggers that take images (W&B); the files stay in the run dir for the others."""
    for logger in loggers:
        if hasattr(logger, "log_image"):
            for key, path in figures.items():
                logger.log_image(key=key, images=[str(path)])


def finish_loggers(loggers: list[Logger], status: str = "success") -> None:
    for logger in loggers:
        logger.finalize(status)
        logger.save()


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Log a failing task's exception with its run dir before re-raising, and always close W&B."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception:
            log.exception("%s failed; its run dir: %s", task.__name__, cfg.paths.get("output_dir"))
            raise
        finally:
            if "wandb" in sys.modules:  # imported only when logger=wandb
                sys.modules["wandb"].finish()  # else the jobs of a multirun all log into one W&B run

    return wrapped
