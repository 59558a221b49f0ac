"""The LightningDataModule: the positive-aware sampler over precomputed teacher scores.

It is handed the loaded splits, the candidate source and the student's encoder spec. prepare_data (one process
per node) mines what the cache lacks; setup (every process) loads the candidates, tokenises once and builds the
training and validation sets. The mining method is applied when items are drawn, so a sweep over methods
reuses one mining run.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from pa_retriever.data.beir import RetrievalData
from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.tokenizer import PromptTokenizer, TokenStore, default_tokenize_threads, tokenize_all
from pa_retriever.mining.methods import MiningMethod
from pa_retriever.mining.source import CandidateSource
from pa_retriever.training.lightning_compat import resume_position
from pa_retriever.training.sampling import (
    ContrastiveDataset,
    EncodeCollator,
    EncodeDataset,
    EpochSampler,
    TrainingCollator,
    encode_batches,
)
from pa_retriever.utils.checks import check_number

log = logging.getLogger(__name__)


class RetrievalDataModule(L.LightningDataModule):
    def __init__(self, train: RetrievalData, source: CandidateSource, spec: EncoderSpec, method: MiningMethod,
                 val: RetrievalData | None = None, batch_size: int = 32, num_workers: int = 2, seed: int = 0,
                 val_batch_size: int = 64, progress: bool = True):
        super().__init__()
        check_number("datamodule.batch_size", batch_size, 1, integer=True, why="queries per step and process")
        check_number("datamodule.num_workers", num_workers, 0, integer=True)
        check_number("datamodule.val_batch_size", val_batch_size, 1, integer=True, why="a token budget, as encode's")
        source.check(method)  # a teacher the method cannot read is refused here, before any mining
        self.train, self.val, self.source, self.spec, self.method = train, val, source, spec, method
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_batch_size, self.progress = val_batch_size, progress
        self.train_set: ContrastiveDataset | None = None
        self.start = 0, 0  # (epoch, batches of it already trained): load_state_dict moves it on resume

    def prepare_data(self) -> None:
        """Mine once, before any process loads (Lightning runs this on one process per node)."""
        self.source.mine(self.train)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.tokenizer = PromptTokenizer.load(self.spec)
        candidates = list(self.source.load(self.train).values())
        self.train_set = self._training_set(candidates)
        log.info("Training on %d (query, positive) pairs of %d queries; negatives: %s", len(self.train_set),
                 len(candidates[0]), self.method)
        if self.val is not None:
            self.val_tokens = {"query": self._tokenize(self.val.queries, "query"),
                               "passage": self._tokenize(self.val.passages, "passage")}

    def _training_set(self, candidates: list[CandidateArrays]) -> ContrastiveDataset:
        c = candidates[0]
        rows, cols = np.nonzero(c.pos_idx >= 0)
        pairs = np.stack([rows, c.pos_idx[rows, cols]], axis=1)  # one item per (query, positive)
        # Tokenise every passage a method may draw: all of them for random negatives, else the stored ones.
        if self.method.select == "random":
            needed = np.arange(len(self.train.passages))
        else:
            needed = np.unique(np.concatenate([np.concatenate([t.pos_idx.ravel(), t.neg_idx.ravel(),
                                                               t.tail_idx.ravel()]) for t in candidates]))
            needed = needed[needed >= 0]
        slot = np.full(len(self.train.passages), -1, dtype=np.int64)
        slot[needed] = np.arange(len(needed))
        query_text = dict(zip(self.train.query_ids, self.train.queries))
        queries = self._tokenize([query_text[q] for q in c.query_ids], "query")
        passages = self._tokenize([self.train.passages[i] for i in needed], "passage")
        empty = self.tokenizer([""], "passage")[0]
        return ContrastiveDataset(pairs, candidates, self.method, self.seed, queries, passages, slot, empty)

    def _tokenize(self, texts: list[str], kind: str) -> TokenStore:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return tokenize_all(self.tokenizer, texts, kind, default_tokenize_threads(device), self.progress)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    # Where a resumed run starts: Lightning restores this before it first builds the train loader (its own
    # counters come later, and its workers may draw before it sets the epoch), and then runs only the batches
    # the epoch had left. A plain sampler would start that epoch over, training its first batches twice and
    # its last ones never.
    def state_dict(self) -> dict[str, int]:
        epoch, batches_done = resume_position(self.trainer)
        return {"epoch": epoch, "batches_done": batches_done, **self._layout()}

    def _layout(self) -> dict[str, int]:
        """What a mid-epoch batch count is counted in."""
        return {"batch_size": self.batch_size, "world_size": self._rank_world()[1]}

    def load_state_dict(self, state: dict[str, int]) -> None:
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
        sampler = EpochSampler(len(self.train_set), self.seed, shuffle=True, rank=rank, world_size=world)
        epoch, batches_done = self.start
        sampler.resume(epoch, batches_done * self.batch_size)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=TrainingCollator(self.tokenizer), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader | list:
        if self.val is None:
            return []
        rank, world = self._rank_world()
        budget = {kind: self.val_batch_size * self.spec.max_length(kind) for kind in ("query", "passage")}
        return DataLoader(EncodeDataset(self.val_tokens), batch_sampler=encode_batches(self.val_tokens, budget,
                                                                                        rank, world),
                          collate_fn=EncodeCollator(self.tokenizer), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(self.seed))
