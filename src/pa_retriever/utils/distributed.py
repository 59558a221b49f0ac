"""torch.distributed outside what Lightning does for us: rank, world size, barrier, gather (mining), and the
gradient average GradCache makes in place of DDP's reducer."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_from_env() -> tuple[int, int]:
    """Join the process group that torchrun describes in the environment; (0, 1) when run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # Mining waits at barriers while one rank works alone (encoding a last shard, searching the corpus):
        # hours with a 7B teacher on a large corpus, far past the default 10-minute collective timeout.
        dist.init_process_group(backend, timeout=timedelta(hours=12))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_object(value: object) -> list:
    """Every process's `value`, in rank order; [value] when run alone."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered
    return [value]


def average_gradients(parameters) -> None:
    """Average the trainable parameters' gradients over the processes, as DDP's reducer would (a parameter without
    a gradient takes part with zeros, so every process makes the same collectives)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = []
    for p in parameters:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    for handle in [dist.all_reduce(g, async_op=True) for g in grads]:
        handle.wait()
    for g in grads:
        g.div_(dist.get_world_size())
