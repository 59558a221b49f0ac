"""DDP and FSDP that keep a Hydra job in its own run dir, also inside a multirun.

Lightning's DDP re-launches the script for ranks 1..N-1 with the original command line. Inside a Hydra
multirun that command line is the whole sweep (`-m mining=a,b,c`), so every child would start a sweep of its
own, scattering output dirs. Here the children get the current job's overrides and its run dir instead.
"""

from __future__ import annotations

import os
import sys

import hydra
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from pa_retriever.training.lightning_compat import SubprocessScriptLauncher, child_command


def job_command(local_rank: int) -> tuple[list[str], str]:
    """The command that re-runs the current Hydra job (not the sweep) as rank `local_rank`, and its cwd."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    hydra_cfg = HydraConfig.get()
    command = [sys.executable, to_absolute_path(sys.argv[0]), f"--config-name={hydra_cfg.job.config_name}"]
    command += list(hydra_cfg.overrides.task)
    command += [f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"', f"hydra.job.name=ddp_rank_{local_rank}",
                "hydra.output_subdir=null"]
    return command, get_original_cwd()


# What the launcher sets in the parent's environment; left in place, the next job of a multirun would take its
# processes as launched by someone else and wait forever for ranks that never start.
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_env_before_launch: dict[str, str | None] | None = None


class _JobScriptLauncher(SubprocessScriptLauncher):
    def _call_children_scripts(self) -> None:
        global _env_before_launch
        _env_before_launch = {key: os.environ.get(key) for key in _LAUNCH_ENV}
        with child_command(job_command):
            super()._call_children_scripts()


def end_job() -> None:
    """After a job: leave the process group and, in the process that launched ranks, the launch environment,
    so that the next job of a multirun starts its own."""
    global _env_before_launch
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if _env_before_launch is not None:
        for key, value in _env_before_launch.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _env_before_launch = None


class _HydraJobLaunch:
    """Mixed into a multi-process strategy: children re-run this Hydra job, in this job's run dir."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is SubprocessScriptLauncher:
            self._launcher = _JobScriptLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


class HydraDDPStrategy(_HydraJobLaunch, DDPStrategy):
    """`ddp` for Hydra jobs."""


class HydraFSDPStrategy(_HydraJobLaunch, FSDPStrategy):
    """`fsdp` for Hydra jobs: parameters, gradients and optimizer states sharded over the processes."""


def layer_types(names: list[str]) -> set[type]:
    """Module classes by dotted name: FSDP wraps (and checkpoints) each instance as a unit."""
    return {hydra.utils.get_class(name) for name in names}
