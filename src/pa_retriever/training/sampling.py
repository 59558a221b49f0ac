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
from pa_retriever.encode.embedding_cache import TeacherEmbeddings
from pa_retriever.encode.encoder import length_sorted_batches
from pa_retriever.encode.tokenizer import PromptTokenizer, TokenStore
from pa_retriever.mining.methods import MiningMethod, negatives_for


class EpochSampler(Sampler):
    """Yields (index, epoch) pairs: a seeded shuffle per epoch, this rank's share of it.

    Like DistributedSampler, every rank gets the same number of items (the shuffled list wraps around), so
    every step has equal batches on all ranks, as the gathered loss requires.
    """

    def __init__(self, size: int, seed: int | tuple[int, ...] = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        self.size, self.shuffle, self.rank, self.world_size = size, shuffle, rank, world_size
        self.seed = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
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
        order = (np.random.default_rng([*self.seed, self.epoch]).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        order = np.resize(order, len(self) * self.world_size)  # wrap around to a multiple of the world size
        for index in order[self.rank::self.world_size][self._skip.pop(self.epoch, 0):]:
            yield int(index), self.epoch


class BlendBatchSampler(Sampler):
    """Batches of (part, index, epoch) keys, every batch from one dataset of a blend.

    Each dataset's items come in its own seeded order (an EpochSampler's, so one dataset alone batches exactly as
    a plain DataLoader over that sampler would). `proportional` gives each dataset the share of an epoch's steps
    its weight asks (by default its size: every item once per epoch, the datasets' batches interleaved in a
    seeded order), cycling a dataset's items when its share exceeds them; `round_robin` takes the datasets in
    turn until the smallest runs out. The plan depends on (seed, epoch) alone, so every process draws the same
    dataset at a step and a resumed run continues the plan where it stopped.
    """

    MODES = ("proportional", "round_robin")

    def __init__(self, sizes: list[int], batch_size: int, seed: int = 0, weights: list[float] | None = None,
                 mode: str = "proportional", rank: int = 0, world_size: int = 1):
        self.parts = [EpochSampler(size, seed if i == 0 else (seed, i), rank=rank, world_size=world_size)
                      for i, size in enumerate(sizes)]
        self.batch_size, self.seed, self.weights, self.mode = batch_size, seed, weights, mode
        self.epoch, self._skip = 0, {}
        natural = [-(-len(part) // batch_size) for part in self.parts]
        if mode == "round_robin":
            self.counts = [min(natural)] * len(natural)
        elif weights is None:
            self.counts = natural
        else:  # the epoch's steps apportioned by weight, largest remainders first
            steps, total = sum(natural), sum(weights)
            shares = [steps * w / total for w in weights]
            self.counts = [int(share) for share in shares]
            for i in sorted(range(len(shares)), key=lambda i: int(shares[i]) - shares[i])[:steps - sum(self.counts)]:
                self.counts[i] += 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for part in self.parts:
            part.set_epoch(epoch)

    @property
    def sampler(self) -> BlendBatchSampler:
        """Lightning sets each epoch on a loader's `batch_sampler.sampler`: here, this sampler itself."""
        return self

    def resume(self, epoch: int, batches_done: int = 0) -> None:
        """Start at `epoch`, after its first `batches_done` batches (a checkpoint saved mid-epoch)."""
        self.set_epoch(epoch)
        self._skip = {epoch: batches_done}

    def __len__(self) -> int:
        return sum(self.counts)

    def plan(self, epoch: int) -> list[int]:
        """The dataset of every step of an epoch."""
        if self.mode == "round_robin":
            return [i for _ in range(self.counts[0]) for i in range(len(self.parts))]
        steps = np.repeat(np.arange(len(self.parts)), self.counts)
        if len(self.parts) > 1:
            steps = np.random.default_rng([self.seed, epoch, len(self.parts)]).permutation(steps)
        return steps.tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch = self.epoch
        orders = [list(part) for part in self.parts]  # this process's items of each dataset, this epoch
        cursors = [0] * len(self.parts)
        skip = self._skip.pop(epoch, 0)
        for step, part in enumerate(self.plan(epoch)):
            order, start = orders[part], cursors[part]
            if start >= len(order):  # its share asks for more than its items: round again
                start = 0
            batch = order[start:start + self.batch_size]
            cursors[part] = start + len(batch)
            if step >= skip:
                yield [(part, index, item_epoch) for index, item_epoch in batch]


@dataclass
class TrainingItem:
    query: list[int]
    passages: list[list[int]]  # the positive, then the negatives
    passage_idx: list[int]  # their corpus rows (-1: an empty negative slot)
    positive_idx: np.ndarray  # every labelled positive of the query (never usable as a negative)
    teacher_scores: np.ndarray  # the stored score of each passage (nan: none), what distillation reads
    part: int = 0  # the dataset of a blend it comes from
    guide: tuple[np.ndarray, np.ndarray] | None = None  # the teacher's embeddings of the query and the passages


class ContrastiveDataset(Dataset):
    """One item per (query, positive) pair; negatives chosen per epoch by the mining method."""

    def __init__(self, pairs: np.ndarray, candidates: list[CandidateArrays], method: MiningMethod, seed: int,
                 query_tokens: TokenStore, passage_tokens: TokenStore, passage_slot: np.ndarray,
                 empty_passage: list[int], guide: TeacherEmbeddings | None = None):
        self.pairs, self.candidates, self.method, self.seed = pairs, candidates, method, seed
        self.query_tokens, self.passage_tokens, self.passage_slot = query_tokens, passage_tokens, passage_slot
        self.empty_passage, self.guide = empty_passage, guide

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> TrainingItem:
        index, epoch = key
        row, positive = (int(x) for x in self.pairs[index])
        negatives, scores = negatives_for(self.candidates, row, self.method, self.seed, epoch)
        passage_idx = [positive, *negatives.tolist()]
        passages = [self.passage_tokens[self.passage_slot[p]] if p >= 0 else self.empty_passage
                    for p in passage_idx]
        first = self.candidates[0]
        positive_score = first.pos_scores[row][first.pos_idx[row] == positive][0]
        guide = None
        if self.guide is not None:
            guide = (self.guide.queries[row], self.guide.passages.rows(np.asarray(passage_idx)))
        return TrainingItem(self.query_tokens[row], passages, passage_idx, first.pos_idx[row],
                            np.concatenate([[positive_score], scores]).astype(np.float32), guide=guide)


class BlendDataset(Dataset):
    """The datasets of a blend, addressed by (part, index, epoch)."""

    def __init__(self, parts: list[ContrastiveDataset]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __getitem__(self, key: tuple[int, int, int]) -> TrainingItem:
        part, index, epoch = key
        item = self.parts[part][(index, epoch)]
        item.part = part
        return item


class TrainingCollator:
    """Pads queries and passages separately (dynamic padding, with the tokenizer of the batch's dataset, whose
    prompt the pool mask hides) and keeps the ids the loss masks with, and whether in-batch negatives apply."""

    def __init__(self, tokenizers: list[PromptTokenizer], in_batch_negatives: list[bool | None] | None = None):
        self.tokenizers = tokenizers
        self.in_batch_negatives = in_batch_negatives or [None] * len(tokenizers)

    def __call__(self, items: list[TrainingItem]) -> dict:
        part = items[0].part
        tokenizer = self.tokenizers[part]
        width = max(len(it.positive_idx) for it in items)
        positive_idx = torch.full((len(items), width), -1, dtype=torch.long)
        for i, it in enumerate(items):
            positive_idx[i, : len(it.positive_idx)] = torch.as_tensor(it.positive_idx)
        batch = {"queries": tokenizer.pad([it.query for it in items], "query"),
                 "passages": tokenizer.pad([p for it in items for p in it.passages], "passage"),
                 "passage_idx": torch.tensor([it.passage_idx for it in items], dtype=torch.long),
                 "positive_idx": positive_idx,
                 "teacher_scores": torch.from_numpy(np.stack([it.teacher_scores for it in items]))}
        if items[0].guide is not None:
            batch["guide_queries"] = torch.from_numpy(np.stack([it.guide[0] for it in items]))
            batch["guide_passages"] = torch.from_numpy(np.concatenate([it.guide[1] for it in items]))
        if self.in_batch_negatives[part] is not None:  # else the module's own setting
            batch["in_batch_negatives"] = self.in_batch_negatives[part]
        return batch


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
