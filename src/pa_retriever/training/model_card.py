"""The README.md an exported model carries: what it was trained from, how it was mined, what it scored."""

from __future__ import annotations

from typing import Any

from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.mining.methods import MiningMethod


def model_card(name: str, spec: EncoderSpec, base_model: str, teacher: str, method: MiningMethod, trained_on: str,
               scored: tuple[str, dict[str, float], str] | None = None,
               mining_settings: dict[str, Any] | None = None) -> str:
    """`scored`: (split, metrics, precision) of the exported model, when it was evaluated."""
    teacher_line = f"`{teacher}`" if method.uses_teacher else "none (the method reads no teacher score)"
    lines = [f"# {name} fine-tuned with positive-aware hard negatives", "",
             f"- base model: `{base_model}`", f"- teacher: {teacher_line}",
             f"- mining: `{mining_settings if mining_settings is not None else method}`",
             f"- trained on: {trained_on}",
             f"- trained at: queries {spec.query_max_length} tokens, passages {spec.passage_max_length} tokens "
             "(encoded longer, it scores lower than it was measured here)"]
    if scored:
        split, metrics, precision = scored
        lines.append(f"- {split} (encoded in {precision}): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    # sentence-transformers has one max length and never appends an EOS: say where it encodes otherwise
    query, passage = spec.query_max_length, spec.passage_max_length
    differs = [f"queries cut at {query} tokens (sentence-transformers cuts every text at {passage})"
               if query != passage else None,
               "an EOS appended to every text (sentence-transformers appends none)" if spec.append_eos else None]
    if differs := [d for d in differs if d]:
        fix = (f" There, `model.max_seq_length = {query}` around `encode_query` cuts queries as trained."
               if query != passage and not spec.append_eos else "")
        lines += ["", "Loaded in sentence-transformers, this model does not encode as it was trained, with "
                  + " and ".join(differs) + ". This project's `Towers.load` reads `encoder_spec.json` and does." + fix]
    return "\n".join(lines) + "\n"
