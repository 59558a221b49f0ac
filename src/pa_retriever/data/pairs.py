"""Training pairs without a corpus: (query, positive[, negatives]) rows from a JSONL file or a Hugging Face dataset
saved to disk. The positives and given negatives of all rows form the corpus that mining searches, and the
negatives a row gives are kept for training without a teacher (classification, clustering and STS data).

Field names follow the common shapes: `query` or `anchor`; `positive` or `pos` (a text or a list of texts);
`negatives`, `negative` or `neg` (optional, a text or a list). Bad rows fail with the file and line (row, for a
saved dataset).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pa_retriever.data.beir import DataFormatError, LoadReport, RetrievalData, _jsonl_records

QUERY_KEYS, POSITIVE_KEYS, NEGATIVE_KEYS = ("query", "anchor"), ("positive", "pos"), ("negatives", "negative", "neg")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file())


def _rows(path: Path) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
    """(line, where, record) of every row; `where` names the row in messages."""
    if path.is_file():
        for lineno, record in _jsonl_records(path):
            yield lineno, "", record
        return
    from datasets import load_from_disk
    for i, record in enumerate(load_from_disk(str(path))):
        yield None, f"row {i}: ", dict(record)


def _texts(record: dict, keys: tuple[str, ...], path: Path, line: int | None, where: str,
           required: bool) -> list[str]:
    key = next((k for k in keys if record.get(k) is not None), None)
    if key is None:
        if required:
            raise DataFormatError(path, line, f"{where}missing field '{keys[0]}' (or {', '.join(keys[1:])})")
        return []
    value = record[key]
    values = value if isinstance(value, list) else [value]
    if not values and required:
        raise DataFormatError(path, line, f"{where}field '{key}' is empty")
    for text in values:
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(path, line, f"{where}field '{key}' must hold non-empty strings, got {text!r}")
    return values


def load_pairs(path: Path) -> RetrievalData:
    """Every row as a query judged relevant to its positives; passage ids are p0, p1, ... in order of first
    appearance of their text, query ids q<row>."""
    passage_ids: dict[str, str] = {}
    query_ids, queries, qrels, negatives = [], [], {}, {}

    def passage(text: str) -> str:
        return passage_ids.setdefault(text, f"p{len(passage_ids)}")

    for n, (line, where, record) in enumerate(_rows(path)):
        query = _texts(record, QUERY_KEYS, path, line, where, required=True)
        if len(query) != 1:
            raise DataFormatError(path, line, f"{where}field 'query' must be one string, got {len(query)}")
        positives = _texts(record, POSITIVE_KEYS, path, line, where, required=True)
        given = _texts(record, NEGATIVE_KEYS, path, line, where, required=False)
        if clash := set(positives) & set(given):
            raise DataFormatError(path, line, f"{where}a negative is also a positive: {sorted(clash)[0][:60]!r}")
        qid = f"q{n}"
        query_ids.append(qid)
        queries.append(query[0])
        qrels[qid] = {passage(t): 1 for t in positives}
        negatives[qid] = [passage(t) for t in given]
    if not query_ids:
        raise DataFormatError(path, None, "no rows")
    report = LoadReport(split="train", judgements=sum(map(len, qrels.values())))
    return RetrievalData(list(passage_ids.values()), list(passage_ids), query_ids, queries, qrels, report,
                         negatives if any(negatives.values()) else None)
