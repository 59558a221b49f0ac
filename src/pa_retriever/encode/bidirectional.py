"""Bidirectional attention for decoder-only models (Mistral, Llama, Qwen2), as NV-Retriever and LLM2Vec use them:
every token attends to every token of its text, not only to those before it.

Built on transformers' own mask machinery: the padding mask is turned into a bidirectional one by
`create_bidirectional_mask` (in the form the attention implementation wants: a boolean 4D mask for SDPA, an
additive one for eager), which the model then takes as given; and every attention layer's `is_causal` is off,
which is what the flash-attention path and an unmasked SDPA call read.

Self-contained (torch and transformers only): an exported model folder ships this file and names its classes in
config.json's auto_map, so that sentence-transformers, loading with trust_remote_code=True, encodes exactly as
this project does.
"""

from __future__ import annotations

import torch
from transformers import LlamaModel, MistralModel, Qwen2Model
from transformers.masking_utils import create_bidirectional_mask


class _Bidirectional:
    """Mixed into a decoder model class before it: the same weights, attention in both directions."""

    def _attend_both_ways(self) -> None:
        for module in self.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if not self.config._attn_implementation.startswith("flash"):  # flash reads the 2D mask and is_causal
            attention_mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds,
                                                       attention_mask=attention_mask,
                                                       allow_is_bidirectional_skip=False)
        return super().forward(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


class BidirectionalMistralModel(_Bidirectional, MistralModel):
    def __init__(self, config):
        super().__init__(config)
        self._attend_both_ways()


class BidirectionalLlamaModel(_Bidirectional, LlamaModel):
    def __init__(self, config):
        super().__init__(config)
        self._attend_both_ways()


class BidirectionalQwen2Model(_Bidirectional, Qwen2Model):
    def __init__(self, config):
        super().__init__(config)
        self._attend_both_ways()


BIDIRECTIONAL_MODELS = {"mistral": BidirectionalMistralModel, "llama": BidirectionalLlamaModel,
                        "qwen2": BidirectionalQwen2Model}
