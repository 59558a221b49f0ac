"""Every use of Lightning's internals, in one place, for the pinned range (lightning>=2.6,<2.7).

tests/test_lightning_compat.py fails loudly when a Lightning release moves what these rely on:
- the fit loop's progress counters (where a mid-epoch resume starts, and how many batches a process has run);
- the private `_hydra_subprocess_cmd` that Lightning's DDP launcher builds child commands with;
- the warning Lightning gives on resuming mid-epoch with a loader that keeps no state (ours restarts exactly);
- the DDP wrapper the strategy holds, whose reducer GradCache keeps out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from unittest import mock

import lightning as L
import lightning.pytorch.strategies.launchers.subprocess_script as subprocess_script
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"
# The train loader resumes mid-epoch through the datamodule's state_dict; Lightning, which only knows loaders that
# keep their own state, would still warn that it cannot.
warnings.filterwarnings("ignore", message=RESUME_WARNING)


def batches_completed(trainer: L.Trainer) -> int:
    """Training batches this process has completed over the whole fit (not `.ready`: a resume may skip one)."""
    return trainer.fit_loop.epoch_loop.batch_progress.total.completed


def resume_position(trainer: L.Trainer) -> tuple[int, int]:
    """(epoch, batches of it done) where a run resumed from a checkpoint saved now must start: inside the epoch
    when it was cut short (Lightning started it but did not finish it), else at the start of the next one."""
    fit = trainer.fit_loop
    epoch, done = fit.epoch_progress.current, fit.epoch_loop.batch_progress.current.processed
    cut_short = epoch.started == epoch.processed + 1 and done < trainer.num_training_batches
    return (epoch.processed, done) if cut_short else (epoch.started, 0)


def keep_ddp_from_syncing(trainer: L.Trainer) -> None:
    """Leave DDP's gradient reducer out of the coming steps (the flag `no_sync()` sets, kept set: Lightning's own
    `no_sync` for gradient accumulation restores what it found)."""
    trainer.strategy.model.require_backward_grad_sync = False


@contextmanager
def child_command(job_command: Callable[[int], tuple[Sequence[str], str]]):
    """Lightning's DDP launcher builds each child's Hydra command in a module-level function: swap in ours."""
    with mock.patch.object(subprocess_script, "_hydra_subprocess_cmd", job_command):
        yield


SubprocessScriptLauncher = _SubprocessScriptLauncher
