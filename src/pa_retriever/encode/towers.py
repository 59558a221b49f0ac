"""A bi-encoder's two towers, for queries and for passages: one shared model (tied, the default) or two.

The one place that knows the difference: loading for inference (an exported untied model keeps its passage
tower in a subfolder), building for training, and saving as a sentence-transformers folder.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel

from pa_retriever.encode.encoder import EncodeSettings, TextEncoder
from pa_retriever.encode.spec import EncoderSpec, resolve_model_path
from pa_retriever.encode.st_folder import check_exportable, write_tower
from pa_retriever.encode.tokenizer import PromptTokenizer

PASSAGE_TOWER = "passage_encoder"  # the subfolder of an exported untied model that holds its passage tower


class Towers(torch.nn.Module):
    def __init__(self, query: TextEncoder, passage: TextEncoder | None = None):
        super().__init__()
        self.query, self.passage = query, passage  # passage None: the query tower encodes passages too

    @property
    def spec(self) -> EncoderSpec:
        return self.query.spec

    def tower(self, kind: str) -> TextEncoder:
        return self.passage if kind == "passage" and self.passage is not None else self.query

    def encode(self, texts: list[str], kind: str, *args, **kwargs) -> np.ndarray:
        return self.tower(kind).encode(texts, kind, *args, **kwargs)

    def encode_ranges(self, texts: Sequence[str], kind: str, *args, **kwargs) -> Iterator[np.ndarray]:
        return self.tower(kind).encode_ranges(texts, kind, *args, **kwargs)

    @classmethod
    def load(cls, spec: EncoderSpec, settings: EncodeSettings = EncodeSettings()) -> Towers:
        """For inference, on the settings' device and precision."""
        load = lambda s: TextEncoder.load(s, settings.torch_device, settings.precision,  # noqa: E731
                                          settings.tokenize_threads)
        if not spec.passage_tower:
            return cls(load(spec))
        passage = replace(spec, name_or_path=str(Path(spec.name_or_path) / spec.passage_tower), passage_tower=None)
        return cls(load(spec), load(passage))

    @classmethod
    def for_training(cls, spec: EncoderSpec, shared_weights: bool = True,
                     config_overrides: dict[str, Any] | None = None, gradient_checkpointing: bool = False) -> Towers:
        """fp32 weights in training mode; an untied pair starts from an exported pair's own towers, else from two
        copies of one model."""
        if spec.passage_tower and shared_weights:
            raise ValueError(f"{spec.name_or_path} has its own passage tower ({spec.passage_tower}/): train it with "
                             "module.shared_weights=false, or one tower would be lost")
        path = resolve_model_path(spec.name_or_path)
        tokenizer = PromptTokenizer.load(spec)
        model = _trainable_model(spec, path, config_overrides, gradient_checkpointing, spec.revision)
        if shared_weights:
            return cls(TextEncoder(model, tokenizer))
        passage = (_trainable_model(spec, str(Path(path) / spec.passage_tower), config_overrides,
                                    gradient_checkpointing) if spec.passage_tower else copy.deepcopy(model))
        return cls(TextEncoder(model, tokenizer), TextEncoder(passage, tokenizer))

    def save(self, folder: Path) -> Path:
        """A sentence-transformers folder (the query tower); an untied passage tower goes to its subfolder."""
        check_exportable(self.spec)
        folder = Path(folder)
        write_tower(folder, self.query.model, self.query.tokenizer.tokenizer, self.spec,
                    passage_tower=None if self.passage is None else PASSAGE_TOWER)
        if self.passage is not None:
            write_tower(folder / PASSAGE_TOWER, self.passage.model, self.passage.tokenizer.tokenizer,
                        replace(self.passage.spec, passage_tower=None))
        return folder


def _trainable_model(spec: EncoderSpec, path: str, config_overrides: dict[str, Any] | None,
                     gradient_checkpointing: bool, revision: str | None = None) -> torch.nn.Module:
    model = AutoModel.from_pretrained(path, revision=revision, trust_remote_code=spec.trust_remote_code,
                                      dtype=torch.float32, **(config_overrides or {}))
    model.train()  # from_pretrained returns eval mode, and Lightning keeps submodule modes: dropout would be off
    if spec.pooling != "model" and getattr(model, "pooler", None) is not None:
        model.pooler.requires_grad_(False)  # BERT's pooler head is unused by our pooling; DDP would wait on it
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
