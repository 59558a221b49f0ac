"""The LightningModule: a bi-encoder (one shared tower by default, or a query and a passage tower; pooling and
prompts from the model config) trained with InfoNCE over hard and in-batch negatives, and by weight with
distillation from the stored teacher scores (training/loss.py), validated by nDCG@10."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from pa_retriever.data.beir import RetrievalData
from pa_retriever.encode.encoder import resolve_dtype
from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.towers import LoraSettings, Towers
from pa_retriever.training.grad_cache import CachedEncoding
from pa_retriever.training.lightning_compat import batches_completed, keep_ddp_from_syncing
from pa_retriever.training.loss import InBatchFilter, LossSettings, contrastive_loss, distillation_losses
from pa_retriever.training.validation import ValidationSearch
from pa_retriever.utils.checks import check_number
from pa_retriever.utils.distributed import average_gradients


def linear_warmup_decay(optimizer: torch.optim.Optimizer, num_training_steps: int, warmup_ratio: float = 0.1,
                        warmup_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak rate, then linear decay to zero (warmup_steps overrides warmup_ratio)."""
    warmup = warmup_steps if warmup_steps is not None else math.ceil(warmup_ratio * num_training_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BiEncoderModule(L.LightningModule):
    def __init__(self, spec: EncoderSpec, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, temperature: float = 0.05,
                 in_batch_negatives: bool = True, gradient_checkpointing: bool = False, weight_decay: float = 0.01,
                 val_k: int = 100, search_backend: str = "auto", shared_weights: bool = True,
                 config_overrides: dict[str, Any] | None = None, seed: int = 0, lora: dict[str, Any] | None = None,
                 weights_dtype: str = "fp32", grad_cache_chunk: int | None = None,
                 loss: dict[str, float] | None = None, in_batch_filter: dict[str, Any] | None = None,
                 compile: bool = False, val_data: RetrievalData | None = None):
        super().__init__()
        check_number("module.temperature", temperature, 0, low_open=True, why="InfoNCE divides scores by it")
        check_number("module.weight_decay", weight_decay, 0)
        check_number("module.val_k", val_k, 1, integer=True)
        check_number("module.optimizer.lr", getattr(optimizer, "keywords", {}).get("lr", 1e-3), 0, low_open=True)
        warmup = getattr(scheduler, "keywords", {})
        check_number("module.scheduler.warmup_ratio", warmup.get("warmup_ratio", 0.1), 0, 1, why="of the steps")
        if warmup.get("warmup_steps") is not None:
            check_number("module.scheduler.warmup_steps", warmup["warmup_steps"], 0, integer=True)
        if grad_cache_chunk is not None:
            check_number("module.grad_cache_chunk", grad_cache_chunk, 1, integer=True, why="texts per forward pass")
        adapters = LoraSettings.from_config(lora)
        self.loss_settings = LossSettings(**(loss or {}))
        self.in_batch_filter = InBatchFilter(**in_batch_filter) if in_batch_filter else None
        # plain values only, so a checkpoint loads with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["spec", "optimizer", "scheduler", "val_data"])
        self.hparams["spec"] = spec.as_dict()
        self.towers = Towers.for_training(spec, shared_weights, config_overrides, gradient_checkpointing, adapters,
                                          weights_dtype, compile)
        self.strict_loading = adapters is None  # with adapters a checkpoint holds them alone: the base is reloaded
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_data = val_data  # the split validation scores: its queries, corpus and judgements
        self._val_parts: list = []
        self._cached: CachedEncoding | None = None

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self.hparams.grad_cache_chunk and self.trainer.world_size > 1:
            # GradCache encodes again in backward, chunk by chunk, outside DDP's forward: DDP's reducer, which
            # expects one backward per forward, stays out, and `backward` averages the gradients itself
            keep_ddp_from_syncing(self.trainer)

    def _encode(self, kind: str, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.towers.tower(kind)(**tokens)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.hparams.grad_cache_chunk:  # GradCache: embeddings now, their gradient through the towers in backward
            self._cached = CachedEncoding(self._encode, self.hparams.grad_cache_chunk)
            queries = self._cached.embed("query", batch["queries"])
            passages = self._cached.embed("passage", batch["passages"])
        else:
            queries, passages = self._encode("query", batch["queries"]), self._encode("passage", batch["passages"])
        in_batch = batch.get("in_batch_negatives", self.hparams.in_batch_negatives)  # a blend's dataset may say
        guide = (batch["guide_queries"], batch["guide_passages"]) if "guide_queries" in batch else None
        infonce, stats = contrastive_loss(queries, passages, batch["passage_idx"], batch["positive_idx"],
                                          self.hparams.temperature, in_batch, self.in_batch_filter, guide)
        terms = {"infonce": infonce}
        if self.loss_settings.distills:
            terms |= distillation_losses(queries, passages, batch["teacher_scores"], self.hparams.temperature,
                                         self.loss_settings.teacher_temperature)
        weights = vars(self.loss_settings)
        loss = sum(weights[name] * value for name, value in terms.items() if weights[name] > 0)
        size = batch["passage_idx"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if len(terms) > 1:
            for name, value in terms.items():
                self.log(f"train/{name}", value, batch_size=size)
        self.log("train/accuracy", stats["accuracy"], batch_size=size)
        if self.in_batch_filter is not None:  # per query: how many in-batch negatives were too close to its positive
            self.log("train/in_batch_masked", stats["in_batch_masked"], batch_size=size)
        # Embedding spread across the batch: a collapse towards one vector shows here first.
        self.log("train/embedding_std", passages.detach().std(dim=0).mean(), batch_size=size)
        self.log("train/hard_negatives", (batch["passage_idx"][:, 1:] >= 0).float().sum(1).mean(), batch_size=size)
        return loss

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if self._cached is None:
            return super().backward(loss, *args, **kwargs)
        self._cached.backward(loss)
        self._cached = None
        if self.trainer.world_size > 1:
            average_gradients(self.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With adapters, only what trains is saved: the frozen base (7B for Mistral) is reloaded from its folder."""
        if not self.strict_loading:
            trained = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}

    # Validation: encode the dev queries and the whole corpus, then nDCG@10 as evaluate.py computes it.
    def on_validation_epoch_start(self) -> None:
        self._val_search = ValidationSearch()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        embeddings = self.towers.tower(batch["kind"])(**batch["tokens"])
        self._val_search.add(batch["kind"], batch["rows"].cpu().numpy(), embeddings.float().cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        scored = self._val_search.score(self.val_data, self.hparams.val_k, self.hparams.search_backend)
        if scored is None:
            return
        result, n_queries, n_passages = scored
        if n_queries < len(self.val_data.queries) or n_passages < len(self.val_data.passages):
            rank_zero_warn(f"validation encoded {n_queries} of {len(self.val_data.queries)} queries and {n_passages} "
                           f"of {len(self.val_data.passages)} passages: val/ metrics score that part")
        # Every process computed the same numbers from the same gathered results: no sync needed.
        for name, value in result.metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == "ndcg@10")

    def configure_optimizers(self) -> dict:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:  # as BERT and HF Trainer do: no weight decay on biases and norms
                (no_decay if param.ndim < 2 else decay).append(param)
        optimizer = self.optimizer_factory(params=[{"params": decay, "weight_decay": self.hparams.weight_decay},
                                                   {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer, num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # Dropout draws from torch's generator seeded anew before every batch by (seed, process, batches completed): a
    # resumed run, on every process, draws the masks an unbroken one drew, with no random state to save or restore
    # (a checkpoint holds only rank 0's, and a crash inside a step would have saved the states after its forward).
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        seed = step_seed(self.hparams.seed, self.global_rank, batches_completed(self.trainer))
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed, which seeds every backend: 100x slower
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # this process's GPU


def step_seed(seed: int, rank: int, batches: int) -> int:
    """A well-mixed 64-bit seed for one batch of one process (nearby integers would seed correlated streams)."""
    return int(np.random.SeedSequence([seed, rank, batches]).generate_state(1, np.uint64)[0])


def training_precision(setting: str, accelerator: str = "auto") -> str:
    """Lightning precision: `auto` is bf16-mixed where the trainer's hardware computes bf16 natively, else 32-true."""
    if setting != "auto":
        return setting
    device = torch.device("cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")
    return "bf16-mixed" if resolve_dtype("auto", device) == torch.bfloat16 else "32-true"
