"""The training job: mine the teacher's candidates (once, cached), train the bi-encoder, export it, score it.

The score reported after training is `score_model` on the exported folder, exactly what evaluate.py runs (at
this run's encode.precision, which it names).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from pa_retriever.data.beir import RetrievalData
from pa_retriever.data.source import DataSource
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.st_folder import check_exportable
from pa_retriever.encode.towers import Towers
from pa_retriever.eval.retrieval import format_table, score_model, write_results
from pa_retriever.mining.source import candidate_source
from pa_retriever.tasks.cross_validate import cross_validate, runs_every_fold
from pa_retriever.tasks.datasets import datasets
from pa_retriever.tasks.runtime import finish_loggers, instantiate_group, instantiate_loggers, log_config, task_wrapper
from pa_retriever.training.datamodule import RetrievalDataModule, TrainingPart
from pa_retriever.training.loss import InBatchFilter, LossSettings
from pa_retriever.training.ddp import end_job
from pa_retriever.training.model_card import model_card
from pa_retriever.training.module import BiEncoderModule, training_precision
from pa_retriever.utils.io import write_json_atomic

log = logging.getLogger(__name__)


@task_wrapper
def train(cfg: DictConfig) -> dict[str, float]:
    """Train as `cfg` says; on the main process, the exported model's metrics on data.split and the validation
    metrics by their `val/` names ({} elsewhere). With cv=kfold data.fold=all, every fold and the mean over folds."""
    return cross_validate(cfg, _train_job) if runs_every_fold(cfg) else _train_job(cfg)


def _train_job(cfg: DictConfig) -> dict[str, float]:
    try:
        return _train(cfg)
    finally:
        end_job()  # the next job of a multirun starts its own DDP processes


@dataclass
class TrainingRun:
    """What a training run is built from, each piece handed to what needs it."""

    data: DataSource | None  # what is validated and scored (data.path); None for a blend without one
    spec: EncoderSpec
    settings: EncodeSettings
    parts: list[TrainingPart]
    val: RetrievalData | None
    datamodule: RetrievalDataModule


def build(cfg: DictConfig) -> TrainingRun:
    """The run's objects from its config; what cannot work (an unexportable student, a teacher a method cannot
    read, a bad setting) is refused here, before any model loads or any mining starts."""
    entries = datasets(cfg, "train_split")
    spec = EncoderSpec.from_config(cfg.model)
    check_exportable(spec)
    settings = EncodeSettings.from_config(cfg.encode)
    cache = Path(cfg.paths.cache_dir)
    parts = [TrainingPart(d.name, d.source.load(d.split),
                          candidate_source(d.method, d.teacher_cfg, cfg.candidates, settings, cache, d.name), d.method,
                          EncoderSpec.from_config(d.model_cfg), d.weight, d.in_batch_negatives) for d in entries]
    data = DataSource.from_config(cfg.data) if not OmegaConf.is_missing(cfg.data, "path") else None
    val = data.load(cfg.data.val_split) if data is not None and cfg.data.get("val_split") else None
    # The objects go in after instantiation: instantiate would copy them into configs.
    # What the loss reads from the data: the stored scores, the teacher's embeddings.
    loss = LossSettings(**(cfg.module.get("loss") or {}))
    in_batch_filter = cfg.module.get("in_batch_filter")
    datamodule = hydra.utils.instantiate(cfg.datamodule, _partial_=True)(
        parts=parts, val=val, blend=cfg.data.get("blend", "proportional"), distill=loss.distills,
        teacher_embeddings=bool(in_batch_filter) and InBatchFilter(**in_batch_filter).scorer == "teacher")
    return TrainingRun(data, spec, settings, parts, val, datamodule)


def _train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    run = build(cfg)
    module: BiEncoderModule = hydra.utils.instantiate(cfg.module, _partial_=True, _convert_="all")(
        spec=run.spec, val_data=run.val)
    trainer = _trainer(cfg, validating=run.val is not None,
                       callback_arguments={"mining_stats": {"parts": run.parts, "seed": cfg.seed}})
    log_config(trainer.loggers, cfg)
    if cfg.validate_before_training and run.val is not None and not cfg.trainer.get("fast_dev_run"):
        trainer.validate(module, datamodule=run.datamodule)
    started = time.perf_counter()
    trainer.fit(module, datamodule=run.datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    fit_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return {}

    out_dir = Path(cfg.paths.output_dir)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:  # weights only: a checkpoint never runs code, whoever wrote it
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"],
                               strict=module.strict_loading)
        log.info("Best checkpoint: %s", best)
    model_dir = module.towers.cpu().save(out_dir / "model")
    scored = _score_export(cfg, run, model_dir, out_dir, trainer.loggers)
    trained_on = ", ".join(f"{part.name} ({part.train.report.split})" for part in run.parts)
    (model_dir / "README.md").write_text(model_card(
        cfg.model.name, run.spec, cfg.model.name_or_path, cfg.teacher.name, run.parts[0].method, trained_on, scored,
        OmegaConf.to_container(cfg.mining)))
    candidates = {part.name: part.source.load(part.train) for part in run.parts}
    single = len(run.parts) == 1  # one dataset keeps the summary's shape: seconds by teacher
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    write_json_atomic(out_dir / "summary.json", {
        "method": cfg.mining.name, "teacher": cfg.teacher.name, "seed": cfg.seed, "model": cfg.model.name,
        "data": str(cfg.data.path) if single else [part.name for part in run.parts],
        "split": cfg.data.split, "fit_seconds": round(fit_seconds, 1),
        "train_seconds": round(timer.time_elapsed("train"), 1) if timer else None,
        "mining_seconds": {(teacher if single else f"{name}/{teacher}"): c.manifest["seconds"]
                           for name, by_teacher in candidates.items() for teacher, c in by_teacher.items()
                           if "seconds" in c.manifest},
        "train_pairs": sum(int((next(iter(c.values())).pos_idx >= 0).sum()) for c in candidates.values()),
        "metrics": scored[1] if scored else None, "metrics_precision": scored[2] if scored else None})
    finish_loggers(trainer.loggers)
    print(f"Model: {model_dir}\nRun dir (metrics.json, plots, checkpoints, logs): {out_dir}")
    return {**(scored[1] if scored else {}), **_validation_metrics(trainer)}


def _validation_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last validation's `val/` metrics, the monitored one as the kept checkpoint scored it: that checkpoint
    is the exported model, and its score the best, where the last epoch's may be lower."""
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
    kept = trainer.checkpoint_callback
    if kept is not None and kept.monitor in metrics and kept.best_model_score is not None:
        metrics[kept.monitor] = float(kept.best_model_score)
    return metrics


def optimized_value(metrics: dict[str, float], name: str | None) -> float | None:
    """`name`'s value among what `train` returned, for a sweeper to optimise (None on DDP processes other than rank
    zero: the sweeper reads rank zero's). Missing, it is an error where a sweeper reads it (Optuna's), and nothing
    where none does: a run told not to score its model (test_after_training=false) ends well."""
    if name is None or rank_zero_only.rank != 0 or name in metrics or not _sweeper_reads_return_value():
        return metrics.get(name) if name else None
    raise KeyError(f"optimized_metric={name} is not among this run's metrics: "
                   f"{', '.join(sorted(metrics)) or 'none (nothing was validated or scored)'}")


def _sweeper_reads_return_value() -> bool:
    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and not hydra_cfg.sweeper._target_.endswith(".BasicSweeper")


def _score_export(cfg: DictConfig, run: TrainingRun, model_dir: Path, out_dir: Path,
                  loggers: list) -> tuple[str, dict[str, float], str] | None:
    """(split, metrics, precision) of the exported folder on data.split, scored as evaluate.py scores it but at
    this run's encode.precision (auto: bf16 where native, for speed); None when the split has no judgements."""
    if not cfg.test_after_training:
        return None
    if run.data is None:
        log.warning("No data.path: a blend without one is not evaluated (evaluate.py scores its datasets later)")
        return None
    if unjudged := run.data.missing_judgements(cfg.data.split):
        log.warning("No %s: the trained model is not evaluated (evaluate.py model=folder scores it later)",
                    ", ".join(map(str, unjudged)))
        return None
    precision = run.settings.precision_name()
    result = score_model(Towers.load(EncoderSpec.from_folder(model_dir), run.settings), run.data.load(cfg.data.split),
                         run.settings)
    write_results(result, out_dir)
    for logger in loggers:
        logger.log_metrics({f"test/{k}": v for k, v in result.metrics.items()})
    print(format_table(result.metrics, f"{cfg.model.name} fine-tuned, on {run.data.name}/{cfg.data.split}, "
                                       f"encoded in {precision}"))
    return cfg.data.split, result.metrics, precision


def _trainer(cfg: DictConfig, validating: bool, callback_arguments: dict[str, dict]) -> L.Trainer:
    """The Trainer with its callbacks and loggers. Without a validation split nothing is validated or monitored
    and the last epoch is kept; a resumed run checkpoints on in its checkpoint's folder, where Lightning restores
    the best score so far (elsewhere the first epoch after the resume would become the best, whatever it scored)."""
    arguments = {name: dict(args) for name, args in callback_arguments.items()}
    for name, callback in (cfg.get("callbacks") or {}).items():
        if callback and str(callback.get("_target_", "")).endswith(".ModelCheckpoint"):
            if cfg.ckpt_path and Path(cfg.ckpt_path).is_file():
                arguments.setdefault(name, {})["dirpath"] = str(Path(cfg.ckpt_path).resolve().parent)
            if not validating and callback.get("monitor"):
                arguments.setdefault(name, {}).update(monitor=None, filename="epoch{epoch:02d}")
    callbacks = instantiate_group(cfg.get("callbacks"), "callback", arguments)
    loggers = instantiate_loggers(cfg.get("logger"))
    precision = training_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision,
                                   **({} if validating else {"limit_val_batches": 0}))
