"""The text side of an encoder: prefix, truncate, append EOS, pad. Light enough for dataloader workers.

Token ids travel as a `TokenStore` (two flat arrays), so that padding a batch is a few array operations, and
large text lists are tokenised ahead of the model (`tokenize_ahead`): on a GPU the tokenizer, not the model, is
what bounds encoding speed.
"""

from __future__ import annotations

import copy
import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tokenizers import Regex, normalizers
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pa_retriever.encode.spec import EncoderSpec, resolve_model_path

KINDS = ("query", "passage")


class TokenStore:
    """Token ids of many texts in two flat arrays: compact, cheap to pickle between processes, shared
    copy-on-write by dataloader workers, and padded without a Python loop over rows."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets  # text i is flat[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]]) -> TokenStore:
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)

    @classmethod
    def concat(cls, stores: Sequence[TokenStore]) -> TokenStore:
        if len(stores) == 1:
            return stores[0]
        shifts = np.cumsum([0] + [s.offsets[-1] for s in stores[:-1]])
        offsets = np.concatenate([[0]] + [s.offsets[1:] + shift for s, shift in zip(stores, shifts)])
        return cls(np.concatenate([s.flat for s in stores]), offsets.astype(np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.flat[self.offsets[i]:self.offsets[i + 1]].tolist()

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: Sequence[int] | np.ndarray) -> TokenStore:
        """The texts at `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths()[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        source = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return TokenStore(self.flat[source], offsets)


class PromptTokenizer:
    """Turns queries and passages into token ids exactly as the model config prescribes.

    Padding is always on the right: absolute position embeddings (BERT) stay in place, and last-token
    pooling reads the last attended position, so a causal model sees exactly its unpadded input.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, spec: EncoderSpec):
        self.tokenizer, self.spec = tokenizer, spec
        if spec.append_eos and tokenizer.eos_token_id is None:
            raise ValueError(f"{spec.name_or_path}: append_eos is set but the tokenizer has no EOS token")
        if spec.mask_prefix:
            tokenizer = self.tokenizer = without_trailing_spaces(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.prefix_ids = {kind: self._prefix_ids(spec.prefix(kind)) for kind in KINDS}

    @classmethod
    def load(cls, spec: EncoderSpec) -> PromptTokenizer:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec.name_or_path), revision=spec.revision,
                                                  trust_remote_code=spec.trust_remote_code)
        return cls(tokenizer, spec)

    def _prefix_ids(self, prefix: str) -> list[int]:
        """The prefix's token ids with a leading special token (BOS, CLS) but not a trailing one (SEP, EOS): the
        tokens that sentence-transformers' Pooling(include_prompt=False) leaves out of the pool."""
        if not prefix:
            return []
        ids = self.tokenizer(prefix)["input_ids"]
        return ids[:-1] if ids and ids[-1] in self.tokenizer.all_special_ids else ids

    def __call__(self, texts: list[str], kind: str) -> list[list[int]]:
        """Token ids (unpadded) of `texts` encoded as `kind` ('query' or 'passage')."""
        prefix, max_length = self.spec.prefix(kind), self.spec.max_length(kind)
        if not texts:
            return []  # transformers' fast tokenizers fail on an empty batch
        if prefix:
            texts = [prefix + t for t in texts]
        if not self.spec.append_eos:
            return self.tokenizer(texts, truncation=True, max_length=max_length,
                                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        # As the e5-mistral reference does: truncate one short, then end every input with EOS.
        ids = self.tokenizer(texts, truncation=True, max_length=max_length - 1,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [seq if seq and seq[-1] == eos else seq + [eos] for seq in ids]

    def tokenize(self, texts: list[str], kind: str) -> TokenStore:
        return TokenStore.from_lists(self(texts, kind))

    def pad(self, ids: Sequence[Sequence[int]] | TokenStore, kind: str) -> dict[str, torch.Tensor]:
        """Right-padded tensors; `pool_mask` also hides the prefix when the spec asks for it: its first
        len(prefix_ids[kind]) positions, as sentence-transformers counts them, so that an export encodes alike."""
        store = ids if isinstance(ids, TokenStore) else TokenStore.from_lists(ids)
        lengths = store.lengths()
        width = int(lengths.max(initial=0))
        columns = np.arange(width)
        attended = columns[None, :] < lengths[:, None]
        input_ids = np.full(attended.shape, self.pad_id, dtype=np.int64)
        input_ids[attended] = store.flat  # row-major order of the mask is the order of the flat ids
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attended.astype(np.int64))}
        prefix_length = len(self.prefix_ids[kind])
        if self.spec.mask_prefix and prefix_length:
            batch["pool_mask"] = torch.from_numpy((attended & (columns[None, :] >= prefix_length)).astype(np.int64))
        return batch


TRAILING_SPACES = normalizers.Replace(Regex(r" +\z"), "")


def without_trailing_spaces(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy of `tokenizer` that ignores an input's trailing spaces, where they are tokens of their own.

    Alone, a prompt's final space is a token ('▁' in Llama/Mistral tokenizers, 'Ġ' in byte-level BPE) that in
    context merges into the text's first word ('▁why'). Counting the prompt's tokens as sentence-transformers does
    would then hide that word from the pool; without the lone space, the prompt alone is exactly the tokens it
    keeps before the text. The change travels with the tokenizer's saved tokenizer.json (see st_folder.py)."""
    probe = tokenizer("x", add_special_tokens=False)["input_ids"]
    if tokenizer("x ", add_special_tokens=False)["input_ids"] == probe:
        return tokenizer  # whitespace is no token (WordPiece), or the change is made already
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{tokenizer.name_or_path}: model.mask_prefix needs a fast tokenizer (tokenizer.json), "
                         "to keep a prompt's trailing space out of its token count")
    tokenizer = copy.deepcopy(tokenizer)
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence([TRAILING_SPACES] + ([backend.normalizer] if backend.normalizer else []))
    return tokenizer


def default_tokenize_threads(device: torch.device) -> int:
    """Threads that tokenise ahead of the model. The Rust tokenizer releases the GIL and spreads each chunk over
    every core itself; a second thread turns one chunk's ids into arrays (under the GIL) while the next chunk is
    tokenised. On a CPU one thread: the model needs the cores."""
    return 2 if device.type == "cuda" else 1


def tokenize_ahead(tokenizer: PromptTokenizer, texts: Sequence[str], kind: str, spans: Iterable[tuple],
                   threads: int = 1) -> Iterator[tuple[tuple, TokenStore]]:
    """(span, token ids of texts[span[0]:span[1]]) for each span, in order, tokenised ahead of the consumer by
    `threads` threads, each one span ahead. `spans` is read lazily, so it may claim its work as it goes; extra
    fields of a span ride along. Threads suffice: the Rust tokenizer releases the GIL and spreads each chunk over
    the cores itself (on the lent H200, 14 forked worker processes mined no faster: 20 s for 100k passages, 24 s
    with threads)."""
    pending: deque = deque()
    with ThreadPoolExecutor(max(1, threads)) as executor:
        try:
            for span in spans:
                pending.append((span, executor.submit(tokenizer.tokenize, list(texts[span[0]:span[1]]), kind)))
                if len(pending) > max(1, threads):
                    span_done, future = pending.popleft()
                    yield span_done, future.result()
            while pending:
                span_done, future = pending.popleft()
                yield span_done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def tokenize_all(tokenizer: PromptTokenizer, texts: Sequence[str], kind: str, threads: int = 1,
                 progress: bool = True, chunk: int = 8192) -> TokenStore:
    """Token ids of every text, tokenised by `threads` threads."""
    spans = [(start, min(len(texts), start + chunk)) for start in range(0, len(texts), chunk)]
    stores = [tokens for _, tokens in tqdm(tokenize_ahead(tokenizer, texts, kind, spans, threads), total=len(spans),
                                           desc=f"tokenize {kind}s", disable=not progress or len(spans) < 2,
                                           leave=False)]
    return TokenStore.concat(stores) if stores else TokenStore.from_lists([])
