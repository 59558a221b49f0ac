"""Composing the real Hydra configs in tests, shrunk to tiny models and temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(model_dir: Path, tmp_path: Path, groups: tuple[str, ...] = ("model", "teacher")) -> list[str]:
    """A tiny model as student and/or teacher, short inputs, every artifact under tmp_path."""
    out = [f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'logs'}",
           "encode.progress=false", "encode.precision=fp32", "logger=csv"]
    for group in groups:
        out += [f"{group}.name_or_path={model_dir}", f"{group}.query_max_length=32", f"{group}.passage_max_length=64"]
    return out


# Two runs that must reach the same weights: fp32, dropout off (it would draw per chunk or per shard), SGD (Adam
# would blow the rounding noise of gradients that are zero in exact arithmetic up to full-size steps).
EXACT_SGD = ["trainer.precision=32-true", "data.val_split=null", "test_after_training=false", "mining=naive_topk",
             "module.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
             "module.optimizer._target_=torch.optim.SGD", "module.optimizer.lr=0.5"]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The composed config as the entry point would see it, with the run dir at `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]  # an entry point's cfg has no hydra node (HydraConfig holds it)
    return cfg


def run_script(script: str, args: list[str], timeout: int = 600, env: dict | None = None,
               fails: bool = False) -> str:
    """Run an entry point as a user would; fail with its output if it fails (or, with `fails`, if it does not).
    Returns stdout, and with `fails` stdout and stderr together."""
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    output = f"{script} {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert (result.returncode != 0) == fails, output
    return result.stdout + result.stderr if fails else result.stdout


class StopAfterEpoch:
    """A callback that ends fitting after the given epoch, as an interruption would (checkpoints written)."""

    def __new__(cls, epoch: int = 0):
        import lightning as L

        class _Stop(L.Callback):
            def on_train_epoch_end(self, trainer, module):
                if trainer.current_epoch >= epoch:
                    trainer.should_stop = True

        return _Stop()


class CrashAtBatch:
    """A callback that raises in the given batch of the given epoch, as a crash would (last.ckpt saved): before
    the step, or inside it, after the forward (`inside_step`, as an out-of-memory error in backward would)."""

    def __new__(cls, epoch: int = 1, batch: int = 1, inside_step: bool = False):
        import lightning as L

        class _Crash(L.Callback):
            def on_train_batch_start(self, trainer, module, batch_data, batch_idx):
                self.here = (trainer.current_epoch, batch_idx) == (epoch, batch)
                if self.here and not inside_step:
                    raise RuntimeError("simulated crash")

            def on_before_backward(self, trainer, module, loss):
                if self.here:
                    raise RuntimeError("simulated crash")

        return _Crash()


class WorseAtEpoch:
    """A callback that makes one epoch validate worse than any other (val/ndcg@10 = -1), as a real run may."""

    def __new__(cls, epoch: int = 1):
        import lightning as L
        import torch

        class _Worse(L.Callback):
            def on_validation_end(self, trainer, module):  # before ModelCheckpoint, which Lightning runs last
                if trainer.state.fn == "fit" and trainer.current_epoch == epoch:
                    trainer.callback_metrics["val/ndcg@10"] = torch.tensor(-1.0)

        return _Worse()


def crash_and_resume(overrides: list[str], tmp_path: Path, inside_step: bool = False) -> tuple[dict, dict]:
    """An unbroken run, then one that crashes in batch 1 of epoch 1 (before its step, or inside it after the
    forward) and is resumed from the checkpoint the crash left: the final weights of both (the resumed run
    checkpoints on in the crashed run's folder)."""
    import pytest
    import torch

    from pa_retriever.tasks.train import train
    train(compose_cfg("train", overrides, tmp_path / "straight"))
    crashing = overrides + ["+callbacks.crash._target_=helpers.CrashAtBatch", "+callbacks.crash.epoch=1",
                            "+callbacks.crash.batch=1", f"+callbacks.crash.inside_step={inside_step}"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_cfg("train", crashing, tmp_path / "first"))
    train(compose_cfg("train", overrides + [f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"],
                      tmp_path / "resumed"))
    last = lambda run: torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)  # noqa: E731
    return last("straight")["state_dict"], last("first")["state_dict"]
