"""A bi-encoder's two towers, for queries and for passages: one shared model (tied, the default) or two.

The one place that knows the difference: loading for inference (an exported untied model keeps its passage
tower in a subfolder), building for training, and saving as a sentence-transformers folder.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from pa_retriever.encode.encoder import DTYPES, EncodeSettings, TextEncoder, load_model
from pa_retriever.encode.spec import EncoderSpec, resolve_model_path
from pa_retriever.encode.st_folder import check_exportable, write_tower
from pa_retriever.encode.tokenizer import PromptTokenizer
from pa_retriever.utils.checks import SettingError, check_choice, check_known_keys, check_number

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

    def prompted(self, spec: EncoderSpec) -> Towers:
        """The same models, with the prompts of `spec` (a dataset's own instruction)."""
        def retold(tower: TextEncoder | None) -> TextEncoder | None:
            if tower is None:
                return None
            prompts = replace(tower.spec, query_prefix=spec.query_prefix, passage_prefix=spec.passage_prefix)
            return TextEncoder(tower.model, PromptTokenizer(tower.tokenizer.tokenizer, prompts), tower.compute_dtype,
                               tower.tokenize_threads, tower.batch_size)

        return Towers(retold(self.query), retold(self.passage))

    @classmethod
    def load(cls, spec: EncoderSpec, settings: EncodeSettings = EncodeSettings()) -> Towers:
        """For inference, on the settings' device and precision."""
        def load(tower: EncoderSpec) -> TextEncoder:
            return TextEncoder.load(tower, settings.torch_device, settings.precision, settings.tokenize_threads)

        if not spec.passage_tower:
            return cls(load(spec))
        passage = replace(spec, name_or_path=str(Path(spec.name_or_path) / spec.passage_tower), passage_tower=None)
        return cls(load(spec), load(passage))

    @classmethod
    def for_training(cls, spec: EncoderSpec, shared_weights: bool = True,
                     config_overrides: dict[str, Any] | None = None, gradient_checkpointing: bool = False,
                     lora: LoraSettings | None = None, weights_dtype: str = "fp32", compile: bool = False) -> Towers:
        """Models in training mode, their weights in `weights_dtype` (fp32 master weights by default; bf16 halves a
        large model's memory); with `lora` only low-rank adapters train. An untied pair starts from an exported
        pair's own towers, else from two copies of one model. `compile`: each tower through torch.compile, once for
        every sequence length (dynamic shapes); its weights and their names stay as they are."""
        if spec.passage_tower and shared_weights:
            raise ValueError(f"{spec.name_or_path} has its own passage tower ({spec.passage_tower}/): train it with "
                             "module.shared_weights=false, or one tower would be lost")
        check_choice("module.weights_dtype", weights_dtype, ("fp32", "bf16"))
        path = resolve_model_path(spec.name_or_path)
        tokenizer = PromptTokenizer.load(spec)
        def load(folder: str) -> torch.nn.Module:
            return _trainable_model(spec, folder, DTYPES[weights_dtype], config_overrides, gradient_checkpointing, lora)

        model = load(path)
        if shared_weights:
            towers = cls(TextEncoder(model, tokenizer))
        else:
            passage = load(str(Path(path) / spec.passage_tower)) if spec.passage_tower else copy.deepcopy(model)
            towers = cls(TextEncoder(model, tokenizer), TextEncoder(passage, tokenizer))
        if compile:
            for tower in (towers.query, towers.passage):
                if tower is not None:
                    tower.compile(dynamic=True)
        return towers

    def save(self, folder: Path) -> Path:
        """A sentence-transformers folder (the query tower); an untied passage tower goes to its subfolder. LoRA
        adapters are merged into the weights first, in fp32 and saved so (in place: the towers hold the merged fp32
        models afterwards): merged into bf16 weights, a small update rounds away (a bf16 step is 1/128 of a weight)."""
        check_exportable(self.spec)
        folder = Path(folder)
        for tower in (self.query, self.passage):
            if tower is not None and isinstance(tower.model, PeftModel):
                tower.model = tower.model.float().merge_and_unload()
        write_tower(folder, self.query.model, self.query.tokenizer.tokenizer, self.spec,
                    passage_tower=None if self.passage is None else PASSAGE_TOWER)
        if self.passage is not None:
            write_tower(folder / PASSAGE_TOWER, self.passage.model, self.passage.tokenizer.tokenizer,
                        replace(self.passage.spec, passage_tower=None))
        return folder


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters (peft) on the named linear layers: only they train (NV-Retriever: rank 16, alpha 32)."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        check_number("module.lora.r", self.r, 1, integer=True, why="the adapters' rank")
        check_number("module.lora.alpha", self.alpha, 0, low_open=True, why="the adapters' scale is alpha / r")
        check_number("module.lora.dropout", self.dropout, 0, 1, high_open=True)
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise SettingError(f"module.lora.target_modules={list(self.target_modules)!r} must name the linear layers "
                               "to adapt, e.g. [q_proj, k_proj, v_proj, o_proj]")

    @classmethod
    def from_config(cls, cfg: Any) -> LoraSettings | None:
        if not cfg:
            return None
        values = dict(cfg)
        check_known_keys("module.lora", values, [f.name for f in fields(cls)])
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)


def _trainable_model(spec: EncoderSpec, path: str, dtype: torch.dtype, config_overrides: dict[str, Any] | None,
                     gradient_checkpointing: bool, lora: LoraSettings | None) -> torch.nn.Module:
    model = load_model(spec, path, dtype, **(config_overrides or {}))
    model.train()  # from_pretrained returns eval mode, and Lightning keeps submodule modes: dropout would be off
    if spec.pooling != "model" and getattr(model, "pooler", None) is not None:
        model.pooler.requires_grad_(False)  # BERT's pooler head is unused by our pooling; DDP would wait on it
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is None:
        return model
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    if missing := [m for m in lora.target_modules if m not in present]:
        raise SettingError(f"module.lora.target_modules names {missing}, which {path} does not have (its linear "
                           f"layers: {sorted(present)})")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none")
    return get_peft_model(model, config)  # freezes everything but the adapters, which stay in fp32
