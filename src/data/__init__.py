"""Retrieval data on disk: BEIR folders and the mined-candidates store. Knows nothing of models or training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.data.beir import DataFormatError, RetrievalData, load_split, qrels_files
from src.data.download import fetch_beir_zip

__all__ = ["DataFormatError", "RetrievalData", "dataset_dir", "load_data", "qrels_files"]


def dataset_dir(data_cfg: Any) -> Path:
    """The dataset's local folder (absolute), downloaded first when it is missing and the config has a url."""
    path = Path(str(data_cfg.path)).expanduser().resolve()
    if not (path / "corpus.jsonl").is_file() and data_cfg.get("url"):
        fetch_beir_zip(data_cfg.url, path)
    return path


def load_data(data_cfg: Any, split: str) -> RetrievalData:
    """One split of the configured dataset."""
    return load_split(dataset_dir(data_cfg), split, strict=data_cfg.strict, use_title=data_cfg.use_title)
