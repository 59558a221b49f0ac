"""What the DataModule serves: the per-epoch positive-aware sampler over token ids tokenised once, and the collators.

Negatives are drawn when an item is fetched, by the mining method over the stored teacher scores, with a
generator seeded by (seed, epoch, query): they rotate every epoch, yet any worker, rank or resumed run draws
exactly the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pa_retriever.data.candidates import CandidateArrays
from pa_retriever.encode.encoder import length_sorted_batches
from pa_retriever.encode.tokenizer import PromptTokenizer, TokenStore
from pa_retriever.mining.methods import MiningMethod, select_negatives


class EpochSampler(Sampler):
    """Yields (index, epoch) pairs: a seeded shuffle per epoch, this rank's share of it.

    Like DistributedSampler, every rank gets the same number of items (the shuffled list wraps around), so
    every step has equal batches on all ranks, as the gathered loss requires.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.shuffle, self.rank, self.world_size = size, seed, shuffle, rank, world_size
        self.epoch = 0
        self._skip: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def resume(self, epoch: int, items_done: int = 0) -> None:
        """Start at `epoch`, after its first `items_done` items of this rank (a checkpoint saved mid-epoch)."""
        self.epoch, self._skip = epoch, {epoch: items_done}

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        order = np.resize(order, len(self) * self.world_size)  # wrap around to a multiple of the world size
        for index in order[self.rank::self.world_size][self._skip.pop(self.epoch, 0):]:
            yield int(index), self.epoch


@dataclass
class TrainingItem:
    query: list[int]
    passages: list[list[int]]  # the positive, then the negatives
    passage_idx: list[int]  # their corpus rows (-1: an empty negative slot)
    positive_idx: np.ndarray  # every labelled positive of the query (never usable as a negative)


class ContrastiveDataset(Dataset):
    """One item per (query, positive) pair; negatives chosen per epoch by the mining method."""

    def __init__(self, pairs: np.ndarray, candidates: list[CandidateArrays], method: MiningMethod, seed: int,
                 query_tokens: TokenStore, passage_tokens: TokenStore, passage_slot: np.ndarray,
                 empty_passage: list[int]):
        self.pairs, self.candidates, self.method, self.seed = pairs, candidates, method, seed
        self.query_tokens, self.passage_tokens, self.passage_slot = query_tokens, passage_tokens, passage_slot
        self.empty_passage = empty_passage

    def __len__(self) -> int:
        return len(self.pairs)

    def negatives(self, row: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, row])
        teacher_rng = np.random.default_rng([self.seed, row])  # cross_sample: one teacher per query all run
        return select_negatives(self.candidates, np.array([row]), self.method, rng, teacher_rng).idx[0]

    def __getitem__(self, key: tuple[int, int]) -> TrainingItem:
        index, epoch = key
        row, positive = (int(x) for x in self.pairs[index])
        passage_idx = [positive, *self.negatives(row, epoch).tolist()]
        passages = [self.passage_tokens[self.passage_slot[p]] if p >= 0 else self.empty_passage
                    for p in passage_idx]
        return TrainingItem(self.query_tokens[row], passages, passage_idx, self.candidates[0].pos_idx[row])


class TrainingCollator:
    """Pads queries and passages separately (dynamic padding) and keeps the ids the loss masks with."""

    def __init__(self, tokenizer: PromptTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[TrainingItem]) -> dict:
        width = max(len(it.positive_idx) for it in items)
        positive_idx = torch.full((len(items), width), -1, dtype=torch.long)
        for i, it in enumerate(items):
            positive_idx[i, : len(it.positive_idx)] = torch.as_tensor(it.positive_idx)
        return {"queries": self.tokenizer.pad([it.query for it in items], "query"),
                "passages": self.tokenizer.pad([p for it in items for p in it.passages], "passage"),
                "passage_idx": torch.tensor([it.passage_idx for it in items], dtype=torch.long),
                "positive_idx": positive_idx}


class EncodeDataset(Dataset):
    """Validation items: ("query" | "passage", row) keys, served from token stores."""

    def __init__(self, stores: dict[str, TokenStore]):
        self.stores = stores

    def __len__(self) -> int:
        return sum(len(s) for s in self.stores.values())

    def __getitem__(self, key: tuple[str, int]) -> tuple[str, int, list[int]]:
        kind, row = key
        return kind, row, self.stores[kind][row]


def encode_batches(stores: dict[str, TokenStore], max_tokens: dict[str, int], rank: int = 0,
                   world_size: int = 1) -> list[list[tuple[str, int]]]:
    """Length-sorted batches of one kind each, under a padded-token budget; this rank's share of them."""
    batches = [[(kind, row) for row in rows] for kind, store in stores.items()
               for rows in length_sorted_batches(store.lengths(), max_tokens[kind])]
    # Every process needs a batch: one with none would leave the others waiting in the gather of the results.
    while len(batches) < world_size and any(len(b) > 1 for b in batches):
        largest = batches.pop(max(range(len(batches)), key=lambda i: len(batches[i])))
        batches += [largest[: len(largest) // 2], largest[len(largest) // 2:]]
    if batches:  # fewer rows than processes: a row encoded twice writes the same embedding twice
        batches += [batches[-1][:1]] * (world_size - len(batches))
    return batches[rank::world_size]


class EncodeCollator:
    def __init__(self, tokenizer: PromptTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[str, int, list[int]]]) -> dict:
        kind = items[0][0]
        return {"kind": kind, "rows": torch.tensor([row for _, row, _ in items]),
                "tokens": self.tokenizer.pad([ids for _, _, ids in items], kind)}
