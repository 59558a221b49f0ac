"""What every task does around its work: objects built from config groups, loggers, and a clean finish."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import hydra
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def instantiate_group(group_cfg: DictConfig | None, what: str = "object",
                      arguments: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """Every entry with a `_target_` of a config group holding several objects (`logger`, `callbacks`);
    `arguments[name]` adds what the config cannot hold (objects) or overrides what a run decides."""
    built = []
    for name, cfg in (group_cfg or {}).items():
        if isinstance(cfg, DictConfig) and "_target_" in cfg:
            log.info("Instantiating %s %s <%s>", what, name, cfg._target_)
            extra = (arguments or {}).get(name, {})
            # objects go in after instantiation: instantiate would copy them into the config
            built.append(hydra.utils.instantiate(cfg, _partial_=bool(extra))(**extra) if extra
                         else hydra.utils.instantiate(cfg))
    return built


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Lightning loggers from the `logger` group; none when it is null."""
    return instantiate_group(logger_cfg, "logger")


def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(params)


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
            end_wandb_run()

    return wrapped


def end_wandb_run() -> None:
    """Close the W&B run, if any: else the next job of a multirun (or fold) logs into this one."""
    if "wandb" in sys.modules:  # imported only when logger=wandb
        sys.modules["wandb"].finish()
