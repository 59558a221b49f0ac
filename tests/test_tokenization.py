"""Token ids as flat arrays, padded without a loop, tokenised ahead by worker processes: same ids, same vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pa_retriever.encode.encoder import TextEncoder
from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.tokenizer import PromptTokenizer, TokenStore, tokenize_ahead, tokenize_all

TEXTS = ["volcano", "why does magma form under the crust", "", "lava " * 300, "a b c d e f", "Rome"] * 7


def test_token_store_takes_and_concatenates_rows():
    lists = [[1, 2, 3], [], [4], [5, 6]]
    store = TokenStore.from_lists(lists)
    assert [store[i] for i in range(len(store))] == lists and store.lengths().tolist() == [3, 0, 1, 2]
    taken = store.take([3, 0, 1, 3])
    assert [taken[i] for i in range(4)] == [[5, 6], [1, 2, 3], [], [5, 6]]
    joined = TokenStore.concat([store, taken])
    assert [joined[i] for i in range(8)] == lists + [[5, 6], [1, 2, 3], [], [5, 6]]


def _pad_row_by_row(tokenizer: PromptTokenizer, ids: list[list[int]], kind: str) -> dict[str, torch.Tensor]:
    """The padding written out row by row: right padding, the prefix hidden where the input agrees with it (which,
    with its trailing space ignored, is all of it)."""
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_id)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    pool = torch.zeros((len(ids), width), dtype=torch.long)
    prefix = tokenizer.prefix_ids[kind]
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, :len(seq)] = 1
        hidden = next((i for i, (a, b) in enumerate(zip(seq, prefix)) if a != b), min(len(seq), len(prefix)))
        pool[row, hidden:len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "pool_mask": pool}


@pytest.mark.parametrize("mask_prefix", [False, True])
def test_vectorised_padding_equals_padding_row_by_row(tiny_mistral_dir, mask_prefix):
    spec = EncoderSpec.from_config({"name_or_path": str(tiny_mistral_dir), "query_prefix": "Instruct: find\nQuery: ",
                                    "append_eos": True, "mask_prefix": mask_prefix, "query_max_length": 24})
    tokenizer = PromptTokenizer.load(spec)
    texts = ["(lava) flows", "why", "magma " * 40, "Instruct"]  # '(' does not merge with the prefix's space
    ids = tokenizer(texts, "query")
    ours, reference = tokenizer.pad(ids, "query"), _pad_row_by_row(tokenizer, ids, "query")
    assert torch.equal(ours["input_ids"], reference["input_ids"])
    assert torch.equal(ours["attention_mask"], reference["attention_mask"])
    if mask_prefix:
        assert torch.equal(ours["pool_mask"], reference["pool_mask"]) and (ours["pool_mask"] != ours["attention_mask"]).any()
    else:
        assert "pool_mask" not in ours
    assert torch.equal(tokenizer.pad(TokenStore.from_lists(ids), "query")["input_ids"], ours["input_ids"])


def test_tokenising_ahead_in_threads_gives_the_ids_of_one_call(minilm_path):
    tokenizer = PromptTokenizer.load(EncoderSpec.from_config({"name_or_path": str(minilm_path)}))
    spans = [(start, min(len(TEXTS), start + 5), "tag") for start in range(0, len(TEXTS), 5)]
    for threads in (1, 3):
        chunks = list(tokenize_ahead(tokenizer, TEXTS, "passage", iter(spans), threads))
        assert [span for span, _ in chunks] == spans  # in order, with their extra fields
        joined = TokenStore.concat([tokens for _, tokens in chunks])
        assert [joined[i] for i in range(len(TEXTS))] == tokenizer(TEXTS, "passage"), threads
    together = tokenize_all(tokenizer, TEXTS, "passage", threads=2, chunk=4, progress=False)
    assert np.array_equal(together.flat, joined.flat) and np.array_equal(together.offsets, joined.offsets)
    assert len(tokenize_all(tokenizer, [], "passage", progress=False)) == 0


def test_ranges_are_encoded_in_one_stream_as_each_would_be_alone(tiny_bert_dir):
    spec = EncoderSpec.from_config({"name_or_path": str(tiny_bert_dir), "passage_max_length": 64})
    for threads in (1, 2):
        encoder = TextEncoder.load(spec, tokenize_threads=threads)
        alone = [encoder.encode(TEXTS[a:b], "passage", batch_size=2, progress=False) for a, b in ((0, 17), (30, 42))]
        streamed = list(encoder.encode_ranges(TEXTS, "passage", iter([(0, 17), (30, 30), (30, 42)]), batch_size=2,
                                              progress=False, window=8))
        assert [len(e) for e in streamed] == [17, 0, 12]
        np.testing.assert_allclose(streamed[0], alone[0], atol=1e-6)
        np.testing.assert_allclose(streamed[2], alone[1], atol=1e-6)
        one_by_one = np.concatenate([encoder.encode([t], "passage", progress=False) for t in TEXTS[:17]])
        np.testing.assert_allclose(alone[0], one_by_one, atol=1e-5)
