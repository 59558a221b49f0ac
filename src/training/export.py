"""Export a trained encoder as a sentence-transformers folder, which evaluate.py reads back exactly.

sentence-transformers' own files carry the pooling, normalisation, prompts and max length; encoder_spec.json
adds what they have no field for (separate query/passage max lengths, EOS appending, prefix masking).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from src.encode.encoder import TextEncoder
from src.encode.spec import EncoderSpec

POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


PASSAGE_TOWER = "passage_encoder"


def check_exportable(spec: EncoderSpec) -> None:
    """Refuse a student whose pooling lives in its own code before training it, not after."""
    if spec.pooling not in POOLING_KEYS:
        raise ValueError(f"{spec.name_or_path}: pooling {spec.pooling!r} lives in the model's own code and cannot be "
                         f"exported as a sentence-transformers folder; train a student pooled by {list(POOLING_KEYS)}")


def export_model(encoder: TextEncoder, folder: Path, passage_encoder: TextEncoder | None = None) -> Path:
    """Write weights, tokenizer and sentence-transformers module files to `folder`. An untied passage tower
    goes to `folder/passage_encoder` (itself a sentence-transformers folder); `folder` is the query tower."""
    spec = encoder.spec
    check_exportable(spec)
    folder = Path(folder)
    encoder.model.save_pretrained(folder, safe_serialization=True)
    encoder.tokenizer.tokenizer.save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    _write(folder / "modules.json", modules)
    _write(folder / "sentence_bert_config.json", {"max_seq_length": spec.passage_max_length, "do_lower_case": False})
    pooling = {"word_embedding_dimension": encoder.model.config.hidden_size, "include_prompt": not spec.mask_prefix}
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
             "append_eos": spec.append_eos, "mask_prefix": spec.mask_prefix}
    if passage_encoder is not None:
        export_model(passage_encoder, folder / PASSAGE_TOWER)
        extra["passage_tower"] = PASSAGE_TOWER
    _write(folder / "encoder_spec.json", extra)
    return folder
