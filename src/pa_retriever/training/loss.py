"""InfoNCE over hard negatives and in-batch negatives, with passages gathered across processes.

    L = -log( exp(s(q, d+)/t) / sum_{d in {d+} U D-} exp(s(q, d)/t) )

Layout: each sample contributes a group of G passages, its positive first, then its negatives. Gathered over
W processes, the passage matrix is [W * B * G, d], ordered by rank, then sample, then slot: query i of rank r
has its positive at column (r * B + i) * G. Columns the query must not be pushed away from are masked: empty
negative slots, and any passage labelled positive for the query (another sample's positive or negative that
is really one of its positives, e.g. the same query with its other positive in the batch).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pa_retriever.utils.distributed import rank_and_world as _world


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each process the summed gradient of its own slice (any backend)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = _world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.world = rank, world
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every process's loss depends on every slice
        return grad.chunk(ctx.world)[ctx.rank]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all processes along dim 0; gradients flow back to each owner."""
    return _GatherWithGrad.apply(x) if _world()[1] > 1 else x


def gather(x: torch.Tensor) -> torch.Tensor:
    if _world()[1] == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def contrastive_loss(queries: torch.Tensor, passages: torch.Tensor, passage_idx: torch.Tensor,
                     positive_idx: torch.Tensor, temperature: float = 0.05,
                     in_batch_negatives: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(InfoNCE loss, accuracy) for B queries [B, d] and their passage groups [B * G, d].

    passage_idx [B, G]: corpus rows of each group (positive first; -1 = empty slot).
    positive_idx [B, P]: every labelled positive of each query (-1 padded).
    """
    batch, group = passage_idx.shape
    rank, world = _world()
    if in_batch_negatives and world > 1:
        passages, all_idx, offset = gather_with_grad(passages), gather(passage_idx.reshape(-1)), rank * batch * group
    else:
        all_idx, offset = passage_idx.reshape(-1), 0
    labels = offset + torch.arange(batch, device=queries.device) * group
    # In float32 even under autocast: bf16 rounds logits near 20 (cosine 1 at t=0.05) to steps of 0.125, which
    # blurs exactly the near-ties between positive and hard negative that the mining is about.
    with torch.autocast(queries.device.type, enabled=False):
        logits = queries.float() @ passages.float().T / temperature

    is_positive = ((all_idx[None, :, None] == positive_idx[:, None, :]) & (positive_idx[:, None, :] >= 0)).any(-1)
    allowed = (all_idx[None, :] >= 0) & ~is_positive
    if not in_batch_negatives:  # only the query's own group
        column = torch.arange(all_idx.shape[0], device=queries.device)
        allowed &= (column[None, :] >= labels[:, None]) & (column[None, :] < labels[:, None] + group)
    allowed[torch.arange(batch), labels] = True
    logits = logits.masked_fill(~allowed, float("-inf"))
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(dim=1) == labels).float().mean()
    return loss, accuracy
