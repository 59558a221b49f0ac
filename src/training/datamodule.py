"""The LightningDataModule: the positive-aware sampler over precomputed teacher scores.

prepare_data (one process per node) mines the candidates if they are not in the cache yet; setup (every
process) loads them, tokenises once, and builds the training and validation sets. The mining method is
applied when items are drawn, so a sweep over methods reuses one mining run.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from src.data import load_data
from src.data.beir import RetrievalData
from src.data.candidates import CandidateArrays
from src.encode.spec import EncoderSpec
from src.encode.tokenizer import PromptTokenizer, TokenStore, default_tokenize_threads, tokenize_all
from src.mining.methods import MiningMethod
from src.training.data import (ContrastiveDataset, EncodeCollator, EncodeDataset, EpochSampler, TrainingCollator,
                               encode_batches)

log = logging.getLogger(__name__)
# The train loader resumes mid-epoch through the datamodule's state_dict (below); Lightning, which only knows
# loaders that keep their own state, would still warn that it cannot.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")

# train split -> {teacher name: candidates}, mining what is missing (src.mining.mined_candidates).
CandidatesFn = Callable[[RetrievalData], dict[str, CandidateArrays]]


class RetrievalDataModule(L.LightningDataModule):
    def __init__(self, data_cfg: Any, model_cfg: Any, method: MiningMethod, candidates_fn: CandidatesFn,
                 batch_size: int = 32, num_workers: int = 2, seed: int = 0, val_batch_size: int = 64,
                 progress: bool = True):
        super().__init__()
        self.data_cfg, self.method, self.candidates_fn = data_cfg, method, candidates_fn
        self.spec = EncoderSpec.from_config(model_cfg)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_batch_size, self.progress = val_batch_size, progress
        self.train_set: ContrastiveDataset | None = None
        self.val_data: RetrievalData | None = None
        self.start = 0, 0  # (epoch, batches of it already trained): load_state_dict moves it on resume

    def prepare_data(self) -> None:
        """Mine once, before any process loads (Lightning runs this on one process per node)."""
        self.candidates_fn(load_data(self.data_cfg, self.data_cfg.train_split))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.tokenizer = PromptTokenizer.load(self.spec)
        train = load_data(self.data_cfg, self.data_cfg.train_split)
        self.candidates = self.candidates_fn(train)
        teachers = list(self.candidates.values())
        if differing := [name for name, t in self.candidates.items() if t.query_ids != teachers[0].query_ids]:
            raise ValueError(f"teachers {differing} were mined on other queries than {next(iter(self.candidates))}; "
                             "mine them again")
        if len(teachers) > 1 and self.method.ensemble is None:
            raise ValueError(f"teacher has {len(teachers)} members: choose an ensemble method "
                             "(mining=cross_sample, intra_sample or intra_sample_dedup)")
        if len(teachers) == 1 and self.method.ensemble is not None:  # it would train as the plain method
            raise ValueError(f"mining={self.method.name} combines teachers, and {next(iter(self.candidates))} is one: "
                             "choose a teacher with members (teacher=small_ensemble, paper_ensemble)")
        self.train_set = self._training_set(train, teachers)
        log.info("Training on %d (query, positive) pairs of %d queries; negatives: %s", len(self.train_set),
                 len(teachers[0]), self.method)
        if self.data_cfg.get("val_split"):
            self.val_data = load_data(self.data_cfg, self.data_cfg.val_split)
            self.val_tokens = {"query": self._tokenize(self.val_data.queries, "query"),
                               "passage": self._tokenize(self.val_data.passages, "passage")}

    def _training_set(self, train: RetrievalData, teachers: list[CandidateArrays]) -> ContrastiveDataset:
        c = teachers[0]
        rows, cols = np.nonzero(c.pos_idx >= 0)
        pairs = np.stack([rows, c.pos_idx[rows, cols]], axis=1)  # one item per (query, positive)
        # Tokenise every passage a method may draw: all of them for random negatives, else the stored ones.
        if self.method.select == "random":
            needed = np.arange(len(train.passages))
        else:
            needed = np.unique(np.concatenate([np.concatenate([t.pos_idx.ravel(), t.neg_idx.ravel(),
                                                               t.tail_idx.ravel()]) for t in teachers]))
            needed = needed[needed >= 0]
        slot = np.full(len(train.passages), -1, dtype=np.int64)
        slot[needed] = np.arange(len(needed))
        query_text = dict(zip(train.query_ids, train.queries))
        queries = self._tokenize([query_text[q] for q in c.query_ids], "query")
        passages = self._tokenize([train.passages[i] for i in needed], "passage")
        empty = self.tokenizer([""], "passage")[0]
        return ContrastiveDataset(pairs, teachers, self.method, self.seed, queries, passages, slot, empty)

    def _tokenize(self, texts: list[str], kind: str) -> TokenStore:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return tokenize_all(self.tokenizer, texts, kind, default_tokenize_threads(device), self.progress)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    # Where a resumed run starts: Lightning restores this before it first builds the train loader (its own
    # counters come later, and its workers may draw before it sets the epoch), and then runs only the batches
    # the epoch had left. A plain sampler would start that epoch over, training its first batches twice and
    # its last ones never. An epoch Lightning started but did not process was cut short.
    def state_dict(self) -> dict[str, int]:
        fit = self.trainer.fit_loop
        epoch, done = fit.epoch_progress.current, fit.epoch_loop.batch_progress.current.processed
        cut_short = epoch.started == epoch.processed + 1 and done < self.trainer.num_training_batches
        start, batches_done = (epoch.processed, done) if cut_short else (epoch.started, 0)  # else the next afresh
        return {"epoch": start, "batches_done": batches_done, **self._layout()}

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
        if self.val_data is None:
            return []
        rank, world = self._rank_world()
        budget = {kind: self.val_batch_size * self.spec.max_length(kind) for kind in ("query", "passage")}
        return DataLoader(EncodeDataset(self.val_tokens), batch_sampler=encode_batches(self.val_tokens, budget,
                                                                                        rank, world),
                          collate_fn=EncodeCollator(self.tokenizer), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(self.seed))
