"""The text side of an encoder: prefix, truncate, append EOS, pad. Light enough for dataloader workers."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from src.encode.spec import EncoderSpec, resolve_model_path

KINDS = ("query", "passage")


class PromptTokenizer:
    """Turns queries and passages into token ids exactly as the model config prescribes.

    Padding is always on the right: absolute position embeddings (BERT) stay in place, and last-token
    pooling reads the last attended position, so a causal model sees exactly its unpadded input.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, spec: EncoderSpec):
        self.tokenizer, self.spec = tokenizer, spec
        if spec.append_eos and tokenizer.eos_token_id is None:
            raise ValueError(f"{spec.name_or_path}: append_eos is set but the tokenizer has no EOS token")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.prefix_ids = {kind: self._prefix_ids(spec.prefix(kind)) for kind in KINDS}

    @classmethod
    def load(cls, spec: EncoderSpec) -> PromptTokenizer:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec.name_or_path), revision=spec.revision,
                                                  trust_remote_code=spec.trust_remote_code)
        return cls(tokenizer, spec)

    def _prefix_ids(self, prefix: str) -> list[int]:
        """The prefix's token ids with leading special tokens (BOS, CLS) but not trailing ones (SEP, EOS)."""
        if not prefix:
            return []
        ids = self.tokenizer(prefix)["input_ids"]
        specials = set(self.tokenizer.all_special_ids)
        while ids and ids[-1] in specials:
            ids = ids[:-1]
        return ids

    def prefix_length(self, seq: list[int], kind: str) -> int:
        """How many leading positions of `seq` are the prefix's (and leading special) tokens: `mask_prefix`
        keeps them out of pooling. Counted per input, where the prefix's tokens agree with those of the prefix
        alone: alone, a final space is a token of its own ('▁' in Llama/Mistral tokenizers) that usually merges
        into the text's first word ('▁why'), so a fixed count would hide that word from the pooling."""
        prefix = self.prefix_ids[kind]
        return next((i for i, (a, b) in enumerate(zip(seq, prefix)) if a != b), min(len(seq), len(prefix)))

    def __call__(self, texts: list[str], kind: str) -> list[list[int]]:
        """Token ids (unpadded) of `texts` encoded as `kind` ('query' or 'passage')."""
        prefix, max_length = self.spec.prefix(kind), self.spec.max_length(kind)
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

    def pad(self, ids: list[list[int]], kind: str) -> dict[str, torch.Tensor]:
        """Right-padded tensors; `pool_mask` also hides the prefix when the spec asks for it."""
        width = max(len(seq) for seq in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.spec.mask_prefix and self.prefix_ids[kind]:
            pool_mask = attention_mask.clone()
            for row, seq in enumerate(ids):
                pool_mask[row, : self.prefix_length(seq, kind)] = 0
            batch["pool_mask"] = pool_mask
        return batch
