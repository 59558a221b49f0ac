"""Read BEIR-format retrieval data (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), validating every line.

Bad input raises `DataFormatError` naming the file and line. Problems that do not make the data unreadable
(judgements pointing at unknown ids, repeated judgements) are counted in a `LoadReport` and logged, or raised
with `strict=True`: nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from pa_retriever.data.folds import Fold
from pa_retriever.utils.io import texts_fingerprint

log = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A malformed line in a data file; the message starts with `path:line:`."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


@dataclass
class LoadReport:
    """What loading found beyond the well-formed data: counted, never silently dropped."""

    split: str
    judgements: int = 0
    unknown_query_ids: list[str] = field(default_factory=list)
    unknown_passage_ids: list[str] = field(default_factory=list)
    repeated_judgements: int = 0
    queries_without_positive: int = 0
    shared_text: list[list[str]] = field(default_factory=list)  # judged query ids of one text, by group

    @property
    def problems(self) -> list[str]:
        out = []
        if self.unknown_query_ids:
            out.append(f"{len(self.unknown_query_ids)} judged query ids are not in queries.jsonl "
                       f"(e.g. {self.unknown_query_ids[:3]}); those queries cannot be evaluated")
        if self.unknown_passage_ids:
            out.append(f"{len(self.unknown_passage_ids)} judged passage ids are not in corpus.jsonl "
                       f"(e.g. {self.unknown_passage_ids[:3]}); they stay in the qrels, so they count as missed")
        if self.repeated_judgements:
            out.append(f"{self.repeated_judgements} repeated (query, passage) judgements; the highest score is kept")
        if self.queries_without_positive:
            out.append(f"{self.queries_without_positive} queries have no judgement with score > 0")
        if self.shared_text:
            out.append(f"{sum(map(len, self.shared_text))} judged queries share their text with another (e.g. "
                       f"{self.shared_text[:3]}); training takes each group as one query with all their positives")
        return out


@dataclass
class RetrievalData:
    """One split of a retrieval dataset: the whole corpus, the split's judged queries and their qrels."""

    corpus_ids: list[str]
    passages: list[str]  # text as the encoder sees it (title joined to text)
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]
    report: LoadReport
    given_negatives: dict[str, list[str]] | None = None  # pair data: each query's negatives as its file gives them

    def __post_init__(self) -> None:
        self.passage_index = {pid: i for i, pid in enumerate(self.corpus_ids)}

    @cached_property
    def passages_fingerprint(self) -> str:
        """A content hash of the passage texts (cache keys), computed once: a second per GB of text."""
        return texts_fingerprint(self.passages)

    def with_queries(self, rows: Iterable[int]) -> RetrievalData:
        """The split restricted to the queries at `rows`, with their judgements; the corpus whole."""
        rows = list(rows)
        query_ids = [self.query_ids[i] for i in rows]
        return replace(self, query_ids=query_ids, queries=[self.queries[i] for i in rows],
                       qrels={q: self.qrels[q] for q in query_ids if q in self.qrels})

    def positives(self, query_id: str) -> list[str]:
        """Passages judged relevant (score > 0) that exist in the corpus."""
        return [pid for pid, s in self.qrels.get(query_id, {}).items() if s > 0 and pid in self.passage_index]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, a byte-order mark allowed; bytes that are not UTF-8 are an error that
    names the line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(path, lineno, f"not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1} "
                                                    "(save the file as UTF-8)") from None


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, lineno, f"malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataFormatError(path, lineno, f"expected a JSON object, got {type(record).__name__}")
        yield lineno, record


def _field(record: dict, name: str, path: Path, lineno: int, required: bool = True) -> str:
    if name not in record or record[name] is None:
        if required:
            raise DataFormatError(path, lineno, f"missing field '{name}'")
        return ""
    value = record[name]
    if name == "_id" and isinstance(value, int):
        return str(value)  # some exports write numeric ids; BEIR treats ids as strings
    if not isinstance(value, str):
        raise DataFormatError(path, lineno, f"field '{name}' must be a string, got {type(value).__name__}")
    if name == "_id" and not value.strip():
        raise DataFormatError(path, lineno, "empty _id")
    return value


def read_jsonl_texts(path: Path, fields: tuple[str, ...]) -> tuple[list[str], list[tuple[str, ...]]]:
    """Ids and the requested text fields of a BEIR jsonl file; `text` is required, other fields optional."""
    ids: list[str] = []
    values: list[tuple[str, ...]] = []
    first_seen: dict[str, int] = {}
    for lineno, record in _jsonl_records(path):
        rid = _field(record, "_id", path, lineno)
        if rid in first_seen:
            raise DataFormatError(path, lineno, f"duplicate _id '{rid}' (first on line {first_seen[rid]})")
        first_seen[rid] = lineno
        ids.append(rid)
        values.append(tuple(_field(record, f, path, lineno, required=f == "text") for f in fields))
    return ids, values


def join_passage(title: str, text: str) -> str:
    """The BEIR/MTEB convention: title, a space, text, stripped (so an empty title leaves the text alone)."""
    return (title + " " + text).strip()


def read_corpus(path: Path, use_title: bool = True) -> tuple[list[str], list[str]]:
    ids, fields = read_jsonl_texts(path, ("title", "text"))
    return ids, [join_passage(title, text) if use_title else text for title, text in fields]


Qrels = dict[str, dict[str, int]]


def read_qrels(path: Path, qrels: Qrels | None = None) -> tuple[Qrels, int, int]:
    """Qrels as {query: {passage: score}}, the number of judgement rows and of repeated pairs.

    Tab-separated `query-id corpus-id score`; a first row whose score column reads `score` is the header, and any
    other score that is not an integer is an error.
    Rows are added to `qrels` when given (several splits read into one).
    """
    qrels = {} if qrels is None else qrels
    rows = repeated = 0
    for lineno, raw in _lines(path):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise DataFormatError(path, lineno, f"expected 3 tab-separated columns "
                                                f"(query-id, corpus-id, score), found {len(cols)}")
        qid, pid, score_text = (c.strip() for c in cols)
        if lineno == 1 and score_text.lower() == "score":
            continue  # the header row (query-id, corpus-id, score)
        try:
            score = int(score_text)
        except ValueError:
            raise DataFormatError(path, lineno, f"score '{score_text}' is not an integer") from None
        if not qid or not pid:
            raise DataFormatError(path, lineno, "empty query-id or corpus-id")
        rows += 1
        judged = qrels.setdefault(qid, {})
        if pid in judged:
            repeated += 1
            score = max(score, judged[pid])
        judged[pid] = score
    return qrels, rows, repeated


def qrels_files(root: Path, split: str) -> list[Path]:
    """The judgement files of `split`, which may join several with '+' (and name a fold of them: data/folds.py)."""
    return [Path(root) / "qrels" / f"{name}.tsv" for name in Fold.parse(split)[0].split("+")]


def load_split(path: str | Path, split: str, strict: bool = False, use_title: bool = True) -> RetrievalData:
    """Load the corpus and the judged queries of `split` from a BEIR folder, reporting what does not fit.

    `split` may join several with '+' (`train+dev`: e.g. the final model trained on every labelled query), and
    name a fold of them for cross-validation (`train+dev:fold2of5`, `train+dev:without-fold2of5`)."""
    root = Path(path)
    fold = Fold.parse(split)[1]
    qrels_paths = qrels_files(root, split)
    for required in (root / "corpus.jsonl", root / "queries.jsonl", *qrels_paths):
        if not required.is_file():
            raise FileNotFoundError(f"{required} not found (a BEIR folder holds corpus.jsonl, queries.jsonl, "
                                    f"qrels/<split>.tsv; splits here: {available_splits(root)})")
    corpus_ids, passages = read_corpus(root / "corpus.jsonl", use_title)
    if not corpus_ids:
        raise DataFormatError(root / "corpus.jsonl", None, "no passages")
    all_query_ids, query_fields = read_jsonl_texts(root / "queries.jsonl", ("text",))
    qrels: Qrels = {}
    rows = repeated = 0
    for qrels_path in qrels_paths:
        _, added, again = read_qrels(qrels_path, qrels)
        rows, repeated = rows + added, repeated + again

    qrels_where = " + ".join(str(p) for p in qrels_paths)
    report = LoadReport(split=split, judgements=rows, repeated_judgements=repeated)
    query_text = {qid: f[0] for qid, f in zip(all_query_ids, query_fields)}
    corpus_set = set(corpus_ids)
    report.unknown_query_ids = [qid for qid in qrels if qid not in query_text]
    report.unknown_passage_ids = sorted({pid for judged in qrels.values() for pid in judged if pid not in corpus_set})
    query_ids = [qid for qid in qrels if qid in query_text]
    report.queries_without_positive = sum(
        1 for qid in query_ids if not any(s > 0 and pid in corpus_set for pid, s in qrels[qid].items()))
    by_text: dict[str, list[str]] = {}
    for qid in query_ids:
        by_text.setdefault(query_text[qid], []).append(qid)
    report.shared_text = [group for group in by_text.values() if len(group) > 1]

    if report.queries_without_positive == len(query_ids):
        raise DataFormatError(qrels_where, None, f"no query of split '{split}' has a judgement with score > 0 for a "
                                                 "passage in corpus.jsonl: nothing to train on or score")
    if strict and (report.unknown_query_ids or report.unknown_passage_ids):
        raise DataFormatError(qrels_where, None, "; ".join(report.problems) + " (data.strict=true)")
    for problem in report.problems:
        log.warning("%s: %s", qrels_where, problem)
    log.info("Loaded %s: %d passages, %d queries, %d judgements", root, len(corpus_ids), len(query_ids), rows)
    data = RetrievalData(corpus_ids, passages, query_ids, [query_text[q] for q in query_ids],
                         {q: qrels[q] for q in query_ids}, report)
    return fold.select(data) if fold else data


FALSE_NEGATIVES_FILE = "false_negatives.tsv"


def read_false_negatives(root: Path) -> dict[str, set[str]]:
    """Known unlabelled positives a dataset may list in false_negatives.tsv (`query-id corpus-id`, a header row
    allowed) as {query: passages}; {} when there is no such file. They are never read as judgements."""
    path = Path(root) / FALSE_NEGATIVES_FILE
    if not path.is_file():
        return {}
    pairs: dict[str, set[str]] = {}
    for lineno, raw in _lines(path):
        cols = [c.strip() for c in raw.rstrip("\r\n").split("\t")]
        if cols == [""] or (lineno == 1 and cols == ["query-id", "corpus-id"]):
            continue
        if len(cols) != 2 or not all(cols):
            raise DataFormatError(path, lineno, f"expected 2 tab-separated columns (query-id, corpus-id), "
                                                f"found {len(cols)}")
        pairs.setdefault(cols[0], set()).add(cols[1])
    return pairs


def available_splits(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
