"""The sentence-transformers folder format, read and written in one place.

Read: pooling, normalisation, prompts and max length from a folder's module files, resolved as
sentence-transformers resolves them (`read_settings`, which EncoderSpec.resolved uses to fill unset fields).
Written: a trained tower as such a folder (`write_tower`); encoder_spec.json adds what sentence-transformers has
no field for (separate query/passage max lengths, EOS appending, prefix masking, an untied passage tower).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pa_retriever.encode.spec import EncoderSpec

log = logging.getLogger(__name__)

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


ST_MODULES = ("Transformer", "Pooling", "Normalize")  # what this project reproduces of such a folder


def normalizes(modules: list[dict], similarity: str | None, path: Path) -> bool:
    """Whether to normalise, so that ranking by dot product ranks as sentence-transformers' similarity does: a
    Normalize module, or cosine, its default when the folder names none; plain dot product keeps raw vectors."""
    if any(m["type"].endswith("Normalize") for m in modules) or similarity in (None, "cosine"):
        return True
    if similarity == "dot":
        return False
    raise ValueError(f"{path / 'config_sentence_transformers.json'}: similarity_fn_name {similarity!r} is not "
                     "reproduced here (cosine or dot)")


def read_settings(path: Path | None) -> dict[str, Any]:
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


def trained_lengths(path: Path | None) -> dict[str, int]:
    """The query and passage lengths a folder this project exported was trained at ({} for any other folder)."""
    spec = _json(path / "encoder_spec.json") if path is not None else {}
    return {kind: spec[f"{kind}_max_length"] for kind in ("query", "passage") if spec.get(f"{kind}_max_length")}


POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")



def check_exportable(spec: EncoderSpec) -> None:
    """Refuse a student whose pooling lives in its own code before training it, not after."""
    if spec.pooling not in POOLING_KEYS:
        raise ValueError(f"{spec.name_or_path}: pooling {spec.pooling!r} lives in the model's own code and cannot be "
                         f"exported as a sentence-transformers folder; train a student pooled by {list(POOLING_KEYS)}")


def write_tower(folder: Path, model: Any, tokenizer: Any, spec: EncoderSpec, passage_tower: str | None = None) -> None:
    """Weights, tokenizer and sentence-transformers module files of one tower (a transformers model and its
    tokenizer) in `folder`; `passage_tower` names the subfolder holding an untied passage tower, if any."""
    check_exportable(spec)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    # As this project pads (on the right; with EOS where a decoder's tokenizer has no pad token), so that
    # sentence-transformers can pad too, and positions stay where they were trained
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _save_tokenizer(folder, tokenizer, spec)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    _write(folder / "modules.json", modules)
    _write(folder / "sentence_bert_config.json", {"max_seq_length": spec.passage_max_length, "do_lower_case": False})
    pooling = {"word_embedding_dimension": model.config.hidden_size, "include_prompt": not spec.mask_prefix}
    pooling.update({key: name == spec.pooling for name, key in POOLING_KEYS.items()})
    pooling.update({"pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
                    "pooling_mode_weightedmean_tokens": False})
    _write(folder / "1_Pooling" / "config.json", pooling)
    prompts = {name: prefix for name, prefix in (("query", spec.query_prefix), ("document", spec.passage_prefix))
               if prefix}
    _write(folder / "config_sentence_transformers.json",
           {"prompts": prompts, "default_prompt_name": None,
            "similarity_fn_name": "cosine" if spec.normalize else "dot"})
    extra = {"query_max_length": spec.query_max_length, "passage_max_length": spec.passage_max_length,
             "append_eos": spec.append_eos, "mask_prefix": spec.mask_prefix, "bidirectional": spec.bidirectional}
    if spec.bidirectional:
        _ship_bidirectional_code(folder, type(model).__name__)
    if passage_tower:
        extra["passage_tower"] = passage_tower
    _write(folder / "encoder_spec.json", extra)


def _save_tokenizer(folder: Path, tokenizer: Any, spec: EncoderSpec) -> None:
    """Save `tokenizer` so that it loads back tokenising the prompts as it does now. transformers' model-specific
    classes (LlamaTokenizer) rebuild their pipeline on load and would drop the rule that keeps a masked prompt's
    trailing space out of its token count (tokenizer.py): then the folder names the class that loads tokenizer.json
    as saved, for sentence-transformers and for this project alike."""
    from transformers import AutoTokenizer
    tokenizer.save_pretrained(folder)
    probes = [prefix + "why " for prefix in (spec.query_prefix, spec.passage_prefix)]

    def loads_back() -> bool:
        saved = AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
        return saved(probes)["input_ids"] == tokenizer(probes)["input_ids"]

    if not loads_back():
        config = _json(folder / "tokenizer_config.json")
        _write(folder / "tokenizer_config.json", {**config, "tokenizer_class": "PreTrainedTokenizerFast"})
        if not loads_back():  # a warning, not an error: the weights are saved, and training is over
            log.warning("%s: the saved tokenizer does not tokenise as the trained one did", folder)


def _ship_bidirectional_code(folder: Path, model_class: str) -> None:
    """The code that makes the saved decoder attend both ways, beside its weights and named in config.json, so that
    sentence-transformers loads it bidirectional (with trust_remote_code=True; without, it would attend causally)."""
    from pa_retriever.encode import bidirectional
    shutil.copy(bidirectional.__file__, folder / "bidirectional.py")
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=[model_class], auto_map={"AutoModel": f"bidirectional.{model_class}"})
    _write(folder / "config.json", config)
