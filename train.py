"""Train a bi-encoder with positive-aware hard-negative mining; export it; evaluate it.

    python train.py                                     # quickstart on the bundled demo data
    python train.py mining=topk_percpos model=e5 teacher=e5_mistral data=fiqa trainer=gpu
    python train.py -m mining=naive_topk,topk_shifted,topk_abs,topk_marginpos,topk_percpos
"""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import functools  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import hydra  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Timer  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from src.data import dataset_dir, load_data, qrels_files  # noqa: E402
from src.encode.encoder import encode_precision, load_encoder  # noqa: E402
from src.encode.spec import EncoderSpec  # noqa: E402
from src.eval.retrieval import evaluate_encoder, format_table, write_results  # noqa: E402
from src.mining import mined_candidates, teacher_free_candidates  # noqa: E402
from src.mining.methods import MiningMethod  # noqa: E402
from src.training.ddp import end_job  # noqa: E402
from src.training.export import check_exportable, export_model  # noqa: E402
from src.training.module import training_precision  # noqa: E402
from src.utils.io import write_json_atomic  # noqa: E402
from src.utils.runtime import finish_loggers, instantiate_group, instantiate_loggers, log_config, task_wrapper  # noqa: E402

log = logging.getLogger(__name__)


def model_card(cfg: DictConfig, method: MiningMethod, metrics: dict | None, precision: str | None) -> str:
    teacher = f"`{cfg.teacher.name}`" if method.uses_teacher else "none (the method reads no teacher score)"
    lines = [f"# {cfg.model.name} fine-tuned with positive-aware hard negatives", "",
             f"- base model: `{cfg.model.name_or_path}`", f"- teacher: {teacher}",
             f"- mining: `{OmegaConf.to_container(cfg.mining)}`", f"- data: `{cfg.data.path}` ({cfg.data.train_split})"]
    if metrics:
        lines.append(f"- {cfg.data.split} (encoded in {precision}): "
                     + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    # sentence-transformers has one max length and never appends an EOS: say where it encodes otherwise
    query, passage = cfg.model.query_max_length, cfg.model.passage_max_length
    differs = [f"queries cut at {query} tokens (sentence-transformers cuts every text at {passage})"
               if query != passage else None,
               "an EOS appended to every text (sentence-transformers appends none)"
               if cfg.model.get("append_eos") else None]
    if differs := [d for d in differs if d]:
        lines += ["", "Loaded in sentence-transformers, this model does not encode as it was trained, with "
                  + " and ".join(differs) + ". This project's `load_encoder` reads `encoder_spec.json` and does."]
    return "\n".join(lines) + "\n"


def checkpoint_where_resumed(cfg: DictConfig) -> None:
    """A resumed run checkpoints on in its checkpoint's folder: Lightning restores the best score so far only for
    the same folder, and elsewhere would take the first epoch after the resume as the best, whatever it scored."""
    with open_dict(cfg):
        for callback in (cfg.get("callbacks") or {}).values():
            if str(callback.get("_target_", "")).endswith(".ModelCheckpoint"):
                callback.dirpath = str(Path(cfg.ckpt_path).resolve().parent)


@task_wrapper
def train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    if not cfg.data.get("val_split"):
        with open_dict(cfg):  # no validation: no loop to run, nothing to monitor, the last epoch is kept
            cfg.trainer.limit_val_batches = 0
            if "model_checkpoint" in (cfg.get("callbacks") or {}):
                cfg.callbacks.model_checkpoint.monitor = None
                cfg.callbacks.model_checkpoint.filename = "epoch{epoch:02d}"
    check_exportable(EncoderSpec.from_config(cfg.model))
    method = MiningMethod.from_config(cfg.mining)
    # A method that reads no teacher score (in-batch-only, random negatives) trains without mining.
    candidates_fn = functools.partial(mined_candidates, cfg) if method.uses_teacher else teacher_free_candidates
    # The method is passed after instantiation: instantiate would turn the dataclass into a (slow) DictConfig.
    datamodule = hydra.utils.instantiate(cfg.datamodule, data_cfg=cfg.data, model_cfg=cfg.model, _partial_=True)(
        method=method, candidates_fn=candidates_fn)
    # _convert_="all": plain dicts in the checkpoint, which then loads with torch.load(weights_only=True)
    module = hydra.utils.instantiate(cfg.module, model_cfg=OmegaConf.to_container(cfg.model, resolve=True),
                                     _convert_="all")
    if cfg.ckpt_path and Path(cfg.ckpt_path).is_file():
        checkpoint_where_resumed(cfg)
    loggers = instantiate_loggers(cfg.get("logger"))
    precision = training_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks"), "callback"),
                                                 logger=loggers or False, precision=precision)
    log_config(trainer.loggers, cfg)
    if cfg.validate_before_training and cfg.data.get("val_split") and not cfg.trainer.get("fast_dev_run"):
        trainer.validate(module, datamodule=datamodule)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    fit_seconds = time.perf_counter() - started
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if not trainer.is_global_zero:
        return {}

    out_dir = Path(cfg.paths.output_dir)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
        log.info("Best checkpoint: %s", best)
    model_dir = export_model(module.encoder.cpu(), out_dir / "model",
                             module.passage_encoder.cpu() if module.passage_encoder is not None else None)
    metrics = test_precision = None
    unjudged = [str(p) for p in qrels_files(dataset_dir(cfg.data), cfg.data.split) if not p.is_file()]
    if cfg.test_after_training and unjudged:
        log.warning("No %s: the trained model is not evaluated (evaluate.py model=folder scores it later)",
                    ", ".join(unjudged))
    elif cfg.test_after_training:
        # Evaluate the exported folder as evaluate.py model=folder does, but at this run's encode.precision (auto:
        # bf16 where native, for speed); evaluate.py defaults to fp32, as published scores are, and can differ in
        # the last digits. summary.json records which.
        test_precision = encode_precision(cfg.encode)
        folder_cfg = OmegaConf.merge(OmegaConf.load(Path(cfg.paths.root_dir) / "conf/model/folder.yaml"),
                                     {"name_or_path": str(model_dir)})
        test = load_data(cfg.data, cfg.data.split)
        result = evaluate_encoder(load_encoder(folder_cfg, cfg.encode), test, batch_size=cfg.encode.batch_size,
                                  backend=cfg.encode.search_backend, progress=cfg.encode.progress)
        write_results(result, out_dir)
        metrics = result.metrics
        for logger in trainer.loggers:
            logger.log_metrics({f"test/{k}": v for k, v in metrics.items()})
        print(format_table(metrics, f"{cfg.model.name} fine-tuned, on {Path(cfg.data.path).name}/{cfg.data.split}, "
                                    f"encoded in {test_precision}"))
    (model_dir / "README.md").write_text(model_card(cfg, method, metrics, test_precision))
    write_json_atomic(out_dir / "summary.json", {
        "method": cfg.mining.name, "teacher": cfg.teacher.name, "seed": cfg.seed, "model": cfg.model.name,
        "data": str(cfg.data.path), "split": cfg.data.split, "fit_seconds": round(fit_seconds, 1),
        "train_seconds": round(timer.time_elapsed("train"), 1) if timer else None,
        "mining_seconds": {name: c.manifest["seconds"] for name, c in datamodule.candidates.items()
                           if "seconds" in c.manifest},
        "train_pairs": len(datamodule.train_set), "metrics": metrics,
        "metrics_precision": test_precision})
    finish_loggers(trainer.loggers)
    print(f"Model: {model_dir}\nRun dir (metrics.json, plots, checkpoints, logs): {out_dir}")
    return metrics or {}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    finally:
        end_job()  # the next job of a multirun starts its own DDP processes
    return metrics.get("ndcg@10")


if __name__ == "__main__":
    main()
