"""Embeddings on disk as fp16 shards: resumable, shareable across processes, readable in bounded memory.

A folder holds `shard-00000.npy`, `shard-00001.npy`, ... for consecutive slices of one list of texts. Each
shard is written atomically, so a run killed mid-way (even kill -9) resumes at the first missing shard and,
since each shard is encoded on its own, ends with exactly the files of an uninterrupted run. Several
processes split the missing shards between them: torchrun ranks by shard number, and jobs sharing the folder
by claim files (shard-00000.claim), so that no shard is encoded twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pa_retriever.encode.encoder import TextEncoder
from pa_retriever.encode.search import non_finite_rows
from pa_retriever.utils.io import atomic_path, claim_unfinished, release_claim

log = logging.getLogger(__name__)


class ShardedEmbeddings:
    def __init__(self, folder: Path, n_texts: int, shard_size: int):
        self.folder, self.n_texts, self.shard_size = Path(folder), n_texts, shard_size
        self.n_shards = max(1, -(-n_texts // shard_size))
        self._mapped: list[np.ndarray] | None = None  # the complete shards, mapped once

    def __getstate__(self) -> dict:  # a DataLoader worker maps the files itself, never receives a copy of them
        return {**self.__dict__, "_mapped": None}

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.npy"

    def missing(self) -> list[int]:
        return [i for i in range(self.n_shards) if not self.path(i).is_file()]

    def claim_path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.claim"

    def build(self, encoder: TextEncoder, texts: list[str], kind: str, batch_size: int | str | None = None,
              rank: int = 0, world_size: int = 1, progress: bool = True, poll_seconds: float = 2.0) -> None:
        """Encode and write this process's share of the missing shards (shard i belongs to rank i % world). A
        shard another job has claimed is left to it and waited for; one whose job died is taken over."""
        if len(texts) != self.n_texts:
            raise ValueError(f"{self.folder}: expected {self.n_texts} texts, got {len(texts)}")
        mine = [i for i in range(self.n_shards) if i % world_size == rank]
        if len(self.missing()) < self.n_shards:
            log.info("%s: %d of %d shards already encoded", self.folder, self.n_shards - len(self.missing()),
                     self.n_shards)
        bar = tqdm(total=len(mine), desc=f"{kind} shards", disable=not progress or len(mine) < 2)
        bar.update(len(mine) - len([i for i in mine if not self.path(i).is_file()]))
        encoded_here = 0
        while todo := [i for i in mine if not self.path(i).is_file()]:
            encoded = self._encode_claimed(encoder, texts, kind, todo, batch_size, progress, bar)
            encoded_here += encoded
            if not encoded and any(not self.path(i).is_file() for i in todo):
                time.sleep(poll_seconds)  # every missing shard is another job's: wait for it
        bar.close()
        log.info("%s: this process encoded %d of %d %s shards", self.folder, encoded_here, self.n_shards, kind)

    def _encode_claimed(self, encoder: TextEncoder, texts: list[str], kind: str, todo: list[int],
                        batch_size: int | str | None, progress: bool, bar: tqdm) -> int:
        """Encode those of `todo` this process can claim (claimed as the encoder reaches them); how many."""
        encoding: deque[int] = deque()

        def ranges() -> Iterator[tuple[int, int]]:
            for shard in todo:
                if claim_unfinished(self.claim_path(shard), self.path(shard).is_file):
                    encoding.append(shard)
                    yield shard * self.shard_size, min(self.n_texts, (shard + 1) * self.shard_size)

        done = 0
        try:
            for embeddings in self._encode(encoder, texts, kind, ranges(), batch_size, progress):
                shard = encoding.popleft()
                start = shard * self.shard_size
                with np.errstate(over="ignore"):  # overflow is caught below, with the rows named
                    stored = embeddings.astype(np.float16, copy=False)
                if bad := non_finite_rows(stored):
                    raise ValueError(f"{self.folder}: {kind} rows {[start + i for i in bad[:5]]} ({len(bad)} in "
                                     "all) encode to NaN or overflow fp16 storage; check the model's precision and "
                                     "pooling")
                with atomic_path(self.path(shard)) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, stored)
                release_claim(self.claim_path(shard))
                done += 1
                bar.update()
        finally:
            for shard in encoding:  # claimed but not written: free for another job
                release_claim(self.claim_path(shard))
        return done

    @staticmethod
    def _encode(encoder: TextEncoder, texts: list[str], kind: str, ranges: Iterator[tuple[int, int]],
                batch_size: int | str | None,
                progress: bool) -> Iterator[np.ndarray]:
        """Each range's embeddings: one stream through an encoder that has one, else range by range."""
        if hasattr(encoder, "encode_ranges"):  # fp16 from the device: an overflow there is inf, refused as here
            yield from encoder.encode_ranges(texts, kind, ranges, batch_size, progress=progress, dtype=torch.float16)
        else:
            for start, stop in ranges:
                yield encoder.encode(texts[start:stop], kind, batch_size, progress=progress)

    def shards(self) -> list[np.ndarray]:
        """All shards, memory-mapped (fp16)."""
        if self._mapped is not None:
            return self._mapped
        if missing := self.missing():
            raise FileNotFoundError(f"{self.folder}: shards {missing[:5]} are not encoded yet")
        shards = [self._read(i) for i in range(self.n_shards)]
        for i, shard in enumerate(shards):  # a shard of another layout would put every later row in the wrong place
            expected = min(self.shard_size, self.n_texts - i * self.shard_size)
            if len(shard) != expected:
                raise ValueError(f"{self.path(i)}: {len(shard)} rows where this layout ({self.n_texts} texts, "
                                 f"{self.shard_size} per shard) expects {expected}; delete {self.folder} to re-encode")
        self._mapped = shards
        return shards

    def _read(self, shard: int) -> np.ndarray:
        try:
            return np.load(self.path(shard), mmap_mode="r")
        except (ValueError, OSError) as e:  # written atomically here: only something outside cuts a shard short
            raise ValueError(f"{self.path(shard)}: unreadable ({e}); delete it to encode it again") from None

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """float32 embeddings of the given global rows (any order, -1 gives zeros)."""
        shards = self.shards()
        out = np.zeros((len(indices), shards[0].shape[1]), dtype=np.float32)
        for shard, rows in enumerate(shards):
            start = shard * self.shard_size
            hit = (indices >= start) & (indices < start + len(rows))
            out[hit] = rows[indices[hit] - start]
        return out

    def load(self) -> np.ndarray:
        """Everything in memory as float32 (for sets that fit, such as queries)."""
        return np.concatenate([np.asarray(s, dtype=np.float32) for s in self.shards()])


@dataclass
class TeacherEmbeddings:
    """A dense teacher's cached embeddings of a training split, to score in-batch pairs with."""

    queries: np.ndarray  # [trainable queries, d] float32, in the candidates' row order
    passages: ShardedEmbeddings  # by corpus row
