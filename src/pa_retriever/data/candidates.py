"""The mined-candidates store: per (dataset, split, teacher), a parquet file of teacher scores and a manifest.

candidates.parquet has one row per training query with at least one positive:
    query_id, pos_ids, pos_scores          the judged positives and their teacher scores
    neg_ids, neg_scores                    the teacher's top-K other passages, best first
    tail_ids, tail_scores                  a random sample of passages ranked below the top-K, best first:
                                           the fill source when a filter leaves too few candidates
The manifest is written last, so a folder without one is incomplete and is mined again. The file is written and
read in row groups of ROW_GROUP queries: passage ids exist as Python strings for one group at a time (at MS MARCO's
500k queries x 133 passages, all at once they would take gigabytes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pa_retriever.data.beir import DataFormatError
from pa_retriever.utils.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

CANDIDATES_FILE, MANIFEST_FILE = "candidates.parquet", "manifest.json"
LIST_COLUMNS = ("pos", "neg", "tail")
ROW_GROUP = 16_384
SCHEMA = pa.schema([("query_id", pa.string())] + [
    field for name in LIST_COLUMNS
    for field in ((f"{name}_ids", pa.list_(pa.string())), (f"{name}_scores", pa.list_(pa.float32())))])


@dataclass
class CandidateArrays:
    """The store in memory: padded arrays of corpus row indices (-1 = none) and teacher scores, one row per
    query. This is what the mining methods read."""

    query_ids: list[str]
    pos_idx: np.ndarray  # [queries, P] int64
    pos_scores: np.ndarray  # [queries, P] float32 (nan where pos_idx is -1)
    neg_idx: np.ndarray  # [queries, K] best first
    neg_scores: np.ndarray  # [queries, K] (-inf where neg_idx is -1)
    tail_idx: np.ndarray  # [queries, T] best first
    tail_scores: np.ndarray
    n_passages: int
    manifest: dict = field(default_factory=dict)  # how they were mined (teacher, settings, counts, seconds)

    def __len__(self) -> int:
        return len(self.query_ids)

    @cached_property
    def pos_min(self) -> np.ndarray:
        """The anchor of the positive-aware filters: with several positives, the lowest-scored one (nan where no
        positive has a score: teacher-free candidates)."""
        return np.fmin.reduce(self.pos_scores, axis=1)  # nanmin, without its all-nan warning


def _list_array(idx: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """A padded [rows, width] array as an Arrow list column, keeping the entries where idx >= 0."""
    valid = idx >= 0
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[valid]))


def write_candidates(folder: Path, candidates: CandidateArrays, corpus_ids: list[str], manifest: dict) -> None:
    """Write candidates.parquet a row group at a time, then the manifest: each atomically, the manifest last."""
    ids = np.asarray(corpus_ids, dtype=object)
    with atomic_path(folder / CANDIDATES_FILE) as tmp:
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            for start in range(0, max(1, len(candidates)), ROW_GROUP):  # an empty store is one empty group
                rows = slice(start, start + ROW_GROUP)
                columns = {"query_id": pa.array(candidates.query_ids[rows], pa.string())}
                for name in LIST_COLUMNS:
                    idx = getattr(candidates, f"{name}_idx")[rows]
                    columns[f"{name}_ids"] = _list_array(idx, ids[np.maximum(idx, 0)])
                    columns[f"{name}_scores"] = _list_array(idx, getattr(candidates, f"{name}_scores")[rows]
                                                            .astype(np.float32))
                writer.write_table(pa.table(columns, schema=SCHEMA))
    write_json_atomic(folder / MANIFEST_FILE, {**manifest, "rows": len(candidates)})


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a complete candidates folder, else None."""
    manifest, table = folder / MANIFEST_FILE, folder / CANDIDATES_FILE
    if not (manifest.is_file() and table.is_file()):
        return None
    try:  # a file cut short (a full disk, a copy that broke off) reads as incomplete: it is mined again
        found = json.loads(manifest.read_text())
        rows = pq.ParquetFile(table).metadata.num_rows
    except (ValueError, OSError, pa.ArrowException) as e:
        log.warning("%s: unreadable (%s); mining it again", folder, e)
        return None
    return found if rows == found.get("rows") else None


def _padded(table: pa.Table, column: str, fill, convert=None) -> np.ndarray:
    lists = table.column(column).combine_chunks()
    lengths = np.diff(lists.offsets.to_numpy())
    values = lists.values.to_numpy(zero_copy_only=False)
    if convert is not None:
        values = convert(values)
    out = np.full((len(lengths), max(int(lengths.max(initial=0)), 1)), fill, dtype=np.asarray(values).dtype
                  if convert is not None else np.float32)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(values)) - np.repeat(lists.offsets.to_numpy()[:-1], lengths)
    out[rows, cols] = values
    return out


def load_candidates(folder: Path, passage_index: dict[str, int]) -> CandidateArrays:
    """Read a candidates folder into arrays, row group by row group, mapping passage ids to corpus rows."""
    path = folder / CANDIDATES_FILE
    file = pq.ParquetFile(path)

    def to_rows(ids: np.ndarray) -> np.ndarray:
        try:
            return np.fromiter((passage_index[i] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as e:
            raise DataFormatError(path, None, f"passage id {e} is not in the corpus: the corpus changed "
                                              f"since mining; delete {folder} to mine again") from None

    query_ids: list[str] = []
    groups: dict[str, list[np.ndarray]] = {}
    for group in range(file.num_row_groups):
        table = file.read_row_group(group)
        for name in LIST_COLUMNS:
            idx = _padded(table, f"{name}_ids", -1, to_rows)
            scores = _padded(table, f"{name}_scores", np.nan if name == "pos" else -np.inf)
            # a stored score is a number: a NaN would pass or fail every filter by accident
            if (bad := (idx >= 0) & ~np.isfinite(scores)).any():
                query = table.column("query_id")[int(np.nonzero(bad.any(1))[0][0])]
                raise DataFormatError(path, None, f"{int(bad.sum())} {name} scores are NaN or infinite (query "
                                                  f"{query} first): delete {folder} to mine again")
            groups.setdefault(f"{name}_idx", []).append(idx)
            groups.setdefault(f"{name}_scores", []).append(scores)
        query_ids += table.column("query_id").to_pylist()
    arrays = {key: _stack(parts, -1 if key.endswith("_idx") else np.nan if key == "pos_scores" else -np.inf)
              for key, parts in groups.items()}
    return CandidateArrays(query_ids=query_ids, n_passages=len(passage_index), manifest=read_manifest(folder) or {},
                           **arrays)


def _stack(parts: list[np.ndarray], fill) -> np.ndarray:
    """Row groups padded to their own widths, stacked at the widest."""
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=fill) for p in parts])
