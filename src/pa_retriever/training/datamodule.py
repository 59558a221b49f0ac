"""The LightningDataModule: the positive-aware sampler over precomputed teacher scores.

It is handed the training parts (one per dataset of a blend: the loaded split, its candidate source, its mining
method, the student's spec with its prompt), the validation split and the batching settings. prepare_data (one
process per node) mines what the cache lacks; setup (every process) loads the candidates, tokenises once and
builds the training and validation sets. The mining method is applied when items are drawn, so a sweep over
methods reuses one mining run; every batch comes from one dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from pa_retriever.data.beir import RetrievalData
from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.tokenizer import PromptTokenizer, TokenStore, default_tokenize_threads, tokenize_all
from pa_retriever.mining.methods import MiningMethod
from pa_retriever.mining.source import CandidateSource
from pa_retriever.training.lightning_compat import resume_position
from pa_retriever.training.sampling import (BlendBatchSampler, BlendDataset, ContrastiveDataset, EncodeCollator,
                                            EncodeDataset, TrainingCollator, encode_batches)
from pa_retriever.utils.checks import SettingError, check_choice, check_number

log = logging.getLogger(__name__)


@dataclass
class TrainingPart:
    """One dataset of what a run trains on."""

    name: str
    train: RetrievalData
    source: CandidateSource
    method: MiningMethod
    spec: EncoderSpec  # the student's, with this dataset's prompt
    weight: float | None = None  # its share of the batches (None: in proportion to its size)
    in_batch_negatives: bool | None = None  # None: the module's setting


class RetrievalDataModule(L.LightningDataModule):
    def __init__(self, parts: list[TrainingPart], val: RetrievalData | None = None, batch_size: int = 32,
                 num_workers: int = 2, seed: int = 0, val_batch_size: int = 64, progress: bool = True,
                 blend: str = "proportional", distill: bool = False, teacher_embeddings: bool = False):
        """`distill`: the loss reads the stored scores (one teacher's, checked here); `teacher_embeddings`: each
        item carries the dense teacher's embeddings of its query and passages (in-batch masking by the teacher)."""
        super().__init__()
        check_number("datamodule.batch_size", batch_size, 1, integer=True, why="queries per step and process")
        check_number("datamodule.num_workers", num_workers, 0, integer=True)
        check_number("datamodule.val_batch_size", val_batch_size, 1, integer=True, why="a token budget, as encode's")
        check_choice("data.blend", blend, BlendBatchSampler.MODES)
        for part in parts:
            # a teacher the method or the loss cannot read is refused here, before any mining
            part.source.check(part.method, distill, teacher_embeddings)
            if part.weight is not None:
                check_number(f"data.datasets[{part.name}].weight", part.weight, 0, low_open=True)
        if len({p.weight is None for p in parts}) > 1:
            raise SettingError("data.datasets: give every dataset a weight, or none (shares by size)")
        self.parts, self.val, self.spec = parts, val, parts[0].spec
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_batch_size, self.progress, self.blend = val_batch_size, progress, blend
        self.teacher_embeddings = teacher_embeddings
        self.train_set: BlendDataset | None = None
        self.start = 0, 0  # (epoch, batches of it already trained): load_state_dict moves it on resume

    def prepare_data(self) -> None:
        """Mine once, before any process loads (Lightning runs this on one process per node)."""
        for part in self.parts:
            part.source.mine(part.train)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.tokenizers = [PromptTokenizer.load(part.spec) for part in self.parts]
        self.train_set = BlendDataset([self._training_set(part, tokenizer)
                                       for part, tokenizer in zip(self.parts, self.tokenizers)])
        for part, dataset in zip(self.parts, self.train_set.parts):
            log.info("Training on %d (query, positive) pairs of %s; negatives: %s", len(dataset), part.name,
                     part.method)
        if self.val is not None:
            self.val_tokenizer = PromptTokenizer.load(self.spec)
            self.val_tokens = {"query": self._tokenize(self.val_tokenizer, self.val.queries, "query"),
                               "passage": self._tokenize(self.val_tokenizer, self.val.passages, "passage")}

    def _training_set(self, part: TrainingPart, tokenizer: PromptTokenizer) -> ContrastiveDataset:
        candidates = list(part.source.load(part.train).values())
        train, c = part.train, candidates[0]
        rows, cols = np.nonzero(c.pos_idx >= 0)
        pairs = np.stack([rows, c.pos_idx[rows, cols]], axis=1)  # one item per (query, positive)
        # Tokenise every passage a method may draw: all of them for random negatives, else the stored ones.
        if part.method.select == "random":
            needed = np.arange(len(train.passages))
        else:
            needed = np.unique(np.concatenate([np.concatenate([t.pos_idx.ravel(), t.neg_idx.ravel(),
                                                               t.tail_idx.ravel()]) for t in candidates]))
            needed = needed[needed >= 0]
        slot = np.full(len(train.passages), -1, dtype=np.int64)
        slot[needed] = np.arange(len(needed))
        query_text = dict(zip(train.query_ids, train.queries))
        queries = self._tokenize(tokenizer, [query_text[q] for q in c.query_ids], "query")
        passages = self._tokenize(tokenizer, [train.passages[i] for i in needed], "passage")
        empty = tokenizer([""], "passage")[0]
        guide = part.source.embeddings(train) if self.teacher_embeddings else None
        return ContrastiveDataset(pairs, candidates, part.method, self.seed, queries, passages, slot, empty, guide)

    def _tokenize(self, tokenizer: PromptTokenizer, texts: list[str], kind: str) -> TokenStore:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return tokenize_all(tokenizer, texts, kind, default_tokenize_threads(device), self.progress)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    # Where a resumed run starts: Lightning restores this before it first builds the train loader (its own
    # counters come later, and its workers may draw before it sets the epoch), and then runs only the batches
    # the epoch had left. A plain sampler would start that epoch over, training its first batches twice and
    # its last ones never.
    def state_dict(self) -> dict:
        epoch, batches_done = resume_position(self.trainer)
        return {"epoch": epoch, "batches_done": batches_done, **self._layout()}

    def _layout(self) -> dict:
        """What a mid-epoch batch count is counted in: the batches and the plan of datasets they are drawn by."""
        return {"batch_size": self.batch_size, "world_size": self._rank_world()[1],
                "dataset_sizes": [len(d) for d in self.train_set.parts], "blend": self.blend,
                "weights": None if self.parts[0].weight is None else [float(part.weight) for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        layout = self._layout()
        saved = {k: state.get(k, v) for k, v in layout.items()}
        if state["batches_done"] and saved != layout:
            raise ValueError(f"the checkpoint stopped mid-epoch with {saved}; resume it with the same, not {layout}")
        self.start = state["epoch"], state["batches_done"]
        if state["batches_done"] % self.trainer.accumulate_grad_batches:
            log.warning("the checkpoint stopped inside a gradient-accumulation window: the gradients of its %d "
                        "batches were not saved, so they are lost", state["batches_done"] %
                        self.trainer.accumulate_grad_batches)

    # Both loaders have their own generator: a new iterator draws its worker seed from it, not from the global
    # stream that dropout draws from, so a resumed run (which makes iterators an unbroken one made before the
    # checkpoint) keeps the unbroken run's masks.
    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        weights = None if self.parts[0].weight is None else [part.weight for part in self.parts]
        sampler = BlendBatchSampler([len(d) for d in self.train_set.parts], self.batch_size, self.seed, weights,
                                    self.blend, rank, world)
        sampler.resume(*self.start)
        return DataLoader(self.train_set, batch_sampler=sampler,
                          collate_fn=TrainingCollator(self.tokenizers, [p.in_batch_negatives for p in self.parts]),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader | list:
        if self.val is None:
            return []
        rank, world = self._rank_world()
        budget = {kind: self.val_batch_size * self.spec.max_length(kind) for kind in ("query", "passage")}
        return DataLoader(EncodeDataset(self.val_tokens), batch_sampler=encode_batches(self.val_tokens, budget,
                                                                                        rank, world),
                          collate_fn=EncodeCollator(self.val_tokenizer), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(self.seed))
