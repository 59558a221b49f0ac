"""Where a retrieval dataset lives and how to read it: a BEIR folder (fetched from a url when it is missing), or
training pairs in a JSONL file or a saved Hugging Face dataset (data/pairs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pa_retriever.data.beir import RetrievalData, load_split, qrels_files, read_false_negatives
from pa_retriever.data.download import fetch_beir_zip
from pa_retriever.data.pairs import is_saved_dataset, load_pairs


@dataclass(frozen=True)
class DataSource:
    path: Path
    url: str | None = None  # a BEIR zip fetched into `path` when the folder is missing
    use_title: bool = True  # passage text = title + " " + text, the BEIR/MTEB convention
    strict: bool = False  # judgements that point at unknown ids are an error, not a warning

    @classmethod
    def from_config(cls, cfg: Any) -> DataSource:
        """From a data config (conf/data); a missing path is an error that says how to give one."""
        path = cfg.get("path") if hasattr(cfg, "get") else None
        if path in (None, "", "???"):
            raise ValueError("data.path is not set: give the dataset's folder, e.g. data=local data.path=/data/scifact")
        return cls(Path(str(path)).expanduser().resolve(), cfg.get("url"), bool(cfg.get("use_title", True)),
                   bool(cfg.get("strict", False)))

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name

    def root(self) -> Path:
        """The local folder, downloaded first when it is missing and there is a url."""
        if not (self.path / "corpus.jsonl").is_file() and self.url:
            fetch_beir_zip(self.url, self.path)
        return self.path

    @property
    def pairs(self) -> bool:
        """Training pairs (a JSONL file, a saved dataset) rather than a BEIR folder."""
        return self.path.suffix == ".jsonl" or is_saved_dataset(self.path)

    def load(self, split: str) -> RetrievalData:
        """One split (splits join with '+': `train+dev`); pair data holds its training split alone."""
        if self.pairs:
            if split != "train":
                self.check_scorable(split)
            return load_pairs(self.path)
        return load_split(self.root(), split, strict=self.strict, use_title=self.use_title)

    def check_scorable(self, split: str) -> None:
        """Raise, naming what is missing, unless `split` has judgements to score."""
        if self.pairs:
            raise FileNotFoundError(f"{self.path} holds training pairs alone, no split '{split}' (a dev or test "
                                    "split needs a BEIR folder; data.val_split=null trains without one)")
        if missing := self.missing_judgements(split):
            raise FileNotFoundError(f"{self.name}: split '{split}' cannot be scored: no {', '.join(map(str, missing))}")

    def missing_judgements(self, split: str) -> list[Path]:
        """The judgement files of `split` that are missing (empty when the split can be scored)."""
        if self.pairs:
            return [self.path]
        return [p for p in qrels_files(self.root(), split) if not p.is_file()]

    def false_negatives(self) -> dict[str, set[str]]:
        """Known unlabelled positives the dataset lists in false_negatives.tsv ({} when it lists none)."""
        return {} if self.pairs else read_false_negatives(self.root())
