"""The training losses: InfoNCE over hard and in-batch negatives, and distillation from the stored teacher scores.

    InfoNCE     L = -log( exp(s(q, d+)/t) / sum_{d in {d+} U D-} exp(s(q, d)/t) )

Layout: each sample contributes a group of G passages, its positive first, then its negatives. Gathered over
W processes, the passage matrix is [W * B * G, d], ordered by rank, then sample, then slot: query i of rank r
has its positive at column (r * B + i) * G. Columns the query must not be pushed away from are masked: empty
negative slots, and any passage labelled positive for the query (another sample's positive or negative that
is really one of its positives, e.g. the same query with its other positive in the batch). With an
InBatchFilter, passages of other samples' groups that score too close to the query's positive (the paper's
MarginPos or PercPos rule, by the student's own detached cosine or by the teacher's cached embeddings) are
masked too: likely unlabelled positives, which no mining filter saw.

Distillation reads each query's own group: the student's logits z_g = s(q, d_g)/t and the teacher's
y_g = score_g / t_teacher over the positive and the negatives with a stored score (empty slots and random
negatives have none):

    KL          sum_g p_g (log p_g - log softmax(z)_g),   p = softmax(y)
    MarginMSE   mean_{g >= 1} ((z_0 - z_g) - (y_0 - y_g))^2

Both are per query, then a mean over the process's queries (one without a scored positive and negative adds 0),
so DDP's gradient averaging makes them the global batch's mean. With a cosine teacher, t_teacher = t puts both
on one scale; a cross-encoder's scores need their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pa_retriever.mining.methods import positive_bound
from pa_retriever.utils.checks import SettingError, check_choice, check_number
from pa_retriever.utils.distributed import rank_and_world as _world


@dataclass(frozen=True)
class LossSettings:
    """The weight of each term (module.loss) and the teacher's temperature."""

    infonce: float = 1.0
    kl: float = 0.0
    margin_mse: float = 0.0
    teacher_temperature: float = 0.05

    def __post_init__(self) -> None:
        for term in ("infonce", "kl", "margin_mse"):
            check_number(f"module.loss.{term}", getattr(self, term), 0, why="a weight of the loss")
        if not self.infonce + self.kl + self.margin_mse > 0:
            raise SettingError("module.loss: every weight is 0, so nothing trains; give one term a weight above 0")
        check_number("module.loss.teacher_temperature", self.teacher_temperature, 0, low_open=True,
                     why="teacher logits are stored scores divided by it")

    @property
    def distills(self) -> bool:
        """Whether a term reads the stored teacher scores."""
        return self.kl > 0 or self.margin_mse > 0


@dataclass(frozen=True)
class InBatchFilter:
    """Positive-aware masking of in-batch negatives (module.in_batch_filter): a passage of another sample's group
    scoring at or above the bound set at the query's positive leaves the softmax."""

    filter: str  # marginpos | percpos
    margin: float | None = None
    perc: float | None = None
    scorer: str = "student"  # student: its own scores, detached | teacher: the dense teacher's cached embeddings

    def __post_init__(self) -> None:
        check_choice("module.in_batch_filter.filter", self.filter, ("marginpos", "percpos"))
        check_choice("module.in_batch_filter.scorer", self.scorer, ("student", "teacher"))
        if self.filter == "marginpos":
            check_number("module.in_batch_filter.margin", self.margin, 0, why="masked from positive - margin up")
        else:
            check_number("module.in_batch_filter.perc", self.perc, 0, 1.05, low_open=True,
                         why="masked from perc x positive up")

    def too_close(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, N] scores of B queries: which columns reach the bound of their query's positive (column labels[i])."""
        positive = scores.gather(1, labels[:, None])
        return scores >= positive_bound(positive, self.filter, self.margin, self.perc)


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
                     positive_idx: torch.Tensor, temperature: float = 0.05, in_batch_negatives: bool = True,
                     in_batch_filter: InBatchFilter | None = None,
                     guide: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """(InfoNCE loss, {accuracy, in-batch negatives masked per query}) for B queries [B, d] and their passage
    groups [B * G, d].

    passage_idx [B, G]: corpus rows of each group (positive first; -1 = empty slot).
    positive_idx [B, P]: every labelled positive of each query (-1 padded).
    guide: the teacher's embeddings of the same queries and passages, for in_batch_filter's teacher scorer.
    """
    batch, group = passage_idx.shape
    rank, world = _world()
    gathering = in_batch_negatives and world > 1
    if gathering:
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
    column = torch.arange(all_idx.shape[0], device=queries.device)
    own_group = (column[None, :] >= labels[:, None]) & (column[None, :] < labels[:, None] + group)
    if not in_batch_negatives:
        allowed &= own_group
    masked = torch.zeros((), device=queries.device)
    if in_batch_negatives and in_batch_filter is not None:
        with torch.no_grad():
            if in_batch_filter.scorer == "teacher":
                guide_queries, guide_passages = (g.float() for g in guide)
                scores = guide_queries @ (gather(guide_passages) if gathering else guide_passages).T
            else:
                scores = logits.detach() * temperature  # the student's cosine
            too_close = in_batch_filter.too_close(scores, labels) & allowed & ~own_group
        allowed &= ~too_close
        masked = too_close.sum(1).float().mean()
    allowed[torch.arange(batch), labels] = True
    logits = logits.masked_fill(~allowed, float("-inf"))
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(dim=1) == labels).float().mean()
    return loss, {"accuracy": accuracy, "in_batch_masked": masked}


def distillation_losses(queries: torch.Tensor, passages: torch.Tensor, teacher_scores: torch.Tensor,
                        temperature: float, teacher_temperature: float) -> dict[str, torch.Tensor]:
    """{kl, margin_mse} over each query's own group (formulas above). teacher_scores [B, G]: the stored score of
    every slot, nan where there is none; a query without a scored positive and negative adds 0."""
    batch, group = teacher_scores.shape
    with torch.autocast(queries.device.type, enabled=False):
        student = torch.einsum("bd,bgd->bg", queries.float(), passages.float().view(batch, group, -1)) / temperature
    scored = torch.isfinite(teacher_scores)
    teacher = torch.where(scored, teacher_scores.float(), 0.0) / teacher_temperature
    useful = (scored.sum(1) >= 2) & scored[:, 0]  # the positive and at least one negative

    # Rows that add nothing keep every slot, so no softmax is over nothing (its NaN would reach the gradients).
    inside = scored | ~useful[:, None]
    log_student = student.masked_fill(~inside, float("-inf")).log_softmax(1)
    log_teacher = teacher.masked_fill(~inside, float("-inf")).log_softmax(1)
    terms = torch.where(inside, log_teacher.exp() * (log_teacher - log_student), 0.0)
    kl = (terms.sum(1) * useful).sum() / batch

    margins = (student[:, :1] - student[:, 1:]) - (teacher[:, :1] - teacher[:, 1:])
    pairs = scored[:, 1:] & useful[:, None]
    per_query = (margins.square() * pairs).sum(1) / pairs.sum(1).clamp(min=1)
    margin_mse = per_query.sum() / batch
    return {"kl": kl, "margin_mse": margin_mse}
