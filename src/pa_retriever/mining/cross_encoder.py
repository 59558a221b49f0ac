"""A cross-encoder teacher: a sequence-classification model that reads query and passage together.

Its first stage (any other teacher) only says which passages are a query's top-K; the cross-encoder then scores
every stored pair itself (positives, top-K and tail), so the mining methods, the ensembles and the false-negative
probe read its scores as any teacher's. A score is what sentence-transformers' `CrossEncoder.predict` gives: the
one logit through the folder's activation (sigmoid unless the folder says otherwise).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from pa_retriever.data.beir import RetrievalData
from pa_retriever.encode.encoder import EncodeSettings, resolve_dtype
from pa_retriever.encode.spec import resolve_model_path, weights_stamp
from pa_retriever.utils.checks import SettingError, check_choice, check_number

log = logging.getLogger(__name__)

# The activations a folder may name (as sentence-transformers stores them); nothing else is imported from one.
ACTIVATIONS = {"torch.nn.modules.activation.Sigmoid": "sigmoid", "torch.nn.modules.linear.Identity": "none",
               "torch.nn.modules.activation.Identity": "none"}


def folder_activation(path: str) -> str:
    """`CrossEncoder.predict`'s activation for a model folder: what its config files name, else sigmoid."""
    folder = Path(path)
    named = None
    for file, keys in (("config_sentence_transformers.json", ("activation_fn",)),
                       ("config.json", ("sentence_transformers", "activation_fn")),
                       ("config.json", ("sbert_ce_default_activation_function",))):
        try:
            value = json.loads((folder / file).read_text())
            for key in keys:
                value = value[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if value:
            named = value
            break
    if named is None:
        return "sigmoid"
    if named not in ACTIVATIONS:
        raise SettingError(f"{folder}: activation {named!r} is not one this teacher applies (sigmoid or identity); "
                           "set teacher.activation to sigmoid or none")
    return ACTIVATIONS[named]


def check_classifier(setting: str, path: str) -> None:
    """Refuse, from its config alone and before any model loads or anything is mined, a folder that is not a
    one-label sequence classifier."""
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SettingError(f"{setting}: {path} has no model config a cross-encoder can load ({e})") from None
    classifiers = [a for a in config.architectures or [] if a.endswith("ForSequenceClassification")]
    if not classifiers:
        raise SettingError(f"{setting}: {path} is a {', '.join(config.architectures or ['model'])}, not a sequence "
                           "classifier (a cross-encoder folder, e.g. a sentence-transformers CrossEncoder's)")
    if config.num_labels != 1:
        raise SettingError(f"{setting}: {path} has {config.num_labels} labels; a cross-encoder teacher gives one "
                           "relevance score per pair (num_labels=1)")


class CrossEncoderTeacher:
    """Scores (query, passage) pairs with a one-label sequence classifier, in batches sorted by length."""

    def __init__(self, name: str, name_or_path: str, first_stage: Any, settings: EncodeSettings,
                 max_length: int = 512, batch_size: int = 64, activation: str = "auto"):
        check_number(f"teacher {name}: max_length", max_length, 8, integer=True, why="tokens per (query, passage)")
        check_number(f"teacher {name}: batch_size", batch_size, 1, integer=True, why="pairs per forward pass")
        check_choice(f"teacher {name}: activation", activation, ("auto", "sigmoid", "none"))
        self.name, self.name_or_path, self.first_stage, self.settings = name, name_or_path, first_stage, settings
        self.max_length, self.batch_size = max_length, batch_size
        self.path = resolve_model_path(name_or_path)
        if Path(self.path).is_dir():  # a hub id is read when it loads
            check_classifier(f"teacher {name}", self.path)
        self.activation = folder_activation(self.path) if activation == "auto" else activation
        self.model = None

    def fingerprint(self) -> dict[str, Any]:
        stamp = weights_stamp(self.name_or_path)
        return {"kind": "cross_encoder", "name_or_path": self.name_or_path, "max_length": self.max_length,
                "activation": self.activation, "precision": self.settings.precision_name(),
                "first_stage": self.first_stage.fingerprint(), **({"weights": stamp} if stamp else {})}

    def describe(self) -> dict[str, Any]:
        return {**self.fingerprint(), "model_path": self.path}

    def prepare(self, data: RetrievalData, queries: list[str], rank: int = 0, world: int = 1) -> None:
        self.first_stage.prepare(data, queries, rank, world)
        self.queries, self.passages = queries, data.passages
        if self.model is None:
            self._load()

    def _load(self) -> None:
        self.device = self.settings.torch_device
        self.dtype = resolve_dtype(self.settings.precision, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        # fp32 weights under autocast, as the bi-encoders: norms and softmax stay in fp32
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path).to(self.device).eval()
        log.info("Cross-encoder %s on %s, computing in %s", self.path, self.device, self.dtype)

    def top(self, k: int, query_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.first_stage.top(k, query_rows)

    def pair_scores(self, query_rows: np.ndarray, passage_idx: np.ndarray) -> np.ndarray:
        """Scores of the given passages for the given queries (nan where passage_idx is -1)."""
        out = np.full(passage_idx.shape, np.nan, dtype=np.float32)
        rows, cols = np.nonzero(passage_idx >= 0)
        if not len(rows):
            return out
        encoded = self.tokenizer([self.queries[r] for r in query_rows[rows]],
                                 [self.passages[p] for p in passage_idx[rows, cols]], truncation=True,
                                 max_length=self.max_length)
        scores = self.score_tokens(encoded["input_ids"], encoded.get("token_type_ids"))
        out[rows, cols] = scores
        return out

    @torch.inference_mode()
    def score_tokens(self, input_ids: list[list[int]], token_type_ids: list[list[int]] | None) -> np.ndarray:
        """One score per tokenised pair, longest first in batches of `batch_size` (padding only what a batch
        needs), returned in the given order."""
        order = np.argsort([-len(ids) for ids in input_ids], kind="stable")
        scores = np.empty(len(input_ids), dtype=np.float32)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc=f"{self.name} pairs", unit="batch", leave=False,
                          disable=not self.settings.progress or len(starts) < 20):
            batch = order[start:start + self.batch_size]
            features = {"input_ids": [input_ids[i] for i in batch]}
            if token_type_ids is not None:
                features["token_type_ids"] = [token_type_ids[i] for i in batch]
            inputs = self.tokenizer.pad(features, return_tensors="pt").to(self.device)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                logits = self.model(**inputs).logits[:, 0].float()
            if self.activation == "sigmoid":
                logits = torch.sigmoid(logits)
            scores[batch] = logits.cpu().numpy()
        return scores
