"""BEIR loading: well-formed data loads; every kind of bad input fails naming its file and line."""

import json
import zipfile
from pathlib import Path

import pytest

from pa_retriever.data import DataSource
from pa_retriever.data.beir import DataFormatError, load_split

CORPUS = [{"_id": "d1", "title": "Alpha", "text": "first passage"},
          {"_id": "d2", "title": "", "text": "second passage"},
          {"_id": "d3", "text": "third, no title field"}]
QUERIES = [{"_id": "q1", "text": "query one"}, {"_id": "q2", "text": "query two"}]


def write_beir(root: Path, corpus=CORPUS, queries=QUERIES, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\n",
               split="test") -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
        (root / name).write_text(text)
    (root / "qrels" / f"{split}.tsv").write_text(qrels)
    return root


def test_loads_and_joins_title_as_beir_does(tmp_path):
    data = load_split(write_beir(tmp_path), "test")
    assert data.corpus_ids == ["d1", "d2", "d3"]
    assert data.passages == ["Alpha first passage", "second passage", "third, no title field"]
    assert data.query_ids == ["q1", "q2"] and data.queries == ["query one", "query two"]
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}
    assert not data.report.problems


def test_crlf_and_headerless_qrels(tmp_path):
    data = load_split(write_beir(tmp_path, qrels="q1\td1\t1\r\nq2\td2\t1\r\n"), "test")
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}


def test_splits_joined_with_plus_are_read_as_one(tmp_path):
    root = write_beir(tmp_path)
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td2\t1\nq1\td1\t1\n")
    data = load_split(root, "test+dev")
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2, "d2": 1}}
    assert data.report.judgements == 4 and data.report.repeated_judgements == 1


@pytest.mark.parametrize("corpus, line, message", [
    ('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n', 2, "malformed JSON"),
    ('{"_id": "d1", "text": "ok"}\n{"title": "t", "text": "no id"}\n', 2, "missing field '_id'"),
    ('{"_id": "d1", "title": "no text"}\n', 1, "missing field 'text'"),
    ('{"_id": "d1", "text": "a"}\n\n{"_id": "d1", "text": "b"}\n', 3, "duplicate _id 'd1' (first on line 1)"),
    ('{"_id": "d1", "text": 42}\n', 1, "field 'text' must be a string"),
    ('["not", "an", "object"]\n', 1, "expected a JSON object"),
])
def test_bad_corpus_lines(tmp_path, corpus, line, message):
    write_beir(tmp_path, corpus=corpus)
    with pytest.raises(DataFormatError) as err:
        load_split(tmp_path, "test")
    assert str(err.value).startswith(f"{tmp_path / 'corpus.jsonl'}:{line}: ")
    assert message in str(err.value)


def test_bad_query_line(tmp_path):
    write_beir(tmp_path, queries='{"_id": "q1", "text": "fine"}\n{"_id": "q2"}\n')
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:2: missing field 'text'"):
        load_split(tmp_path, "test")


@pytest.mark.parametrize("qrels, line, message", [
    ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, "expected 3 tab-separated columns (query-id, corpus-id, score), found 2"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\textra\n", 2, "found 4"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\thigh\n", 3, "score 'high' is not an integer"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t0.5\n", 2, "score '0.5' is not an integer"),
    ("q1\td1\t2.0\nq2\td2\t1\n", 1, "score '2.0' is not an integer"),  # a first row, not a header
])
def test_bad_qrels_rows(tmp_path, qrels, line, message):
    write_beir(tmp_path, qrels=qrels)
    with pytest.raises(DataFormatError) as err:
        load_split(tmp_path, "test")
    assert str(err.value).startswith(f"{tmp_path / 'qrels' / 'test.tsv'}:{line}: ")
    assert message in str(err.value)


def test_unknown_ids_are_reported_or_strict_errors(tmp_path, caplog):
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tghost\t1\nq9\td2\t1\nq2\td3\t1\nq2\td3\t2\n"
    write_beir(tmp_path, qrels=qrels)
    data = load_split(tmp_path, "test")
    assert data.report.unknown_query_ids == ["q9"]
    assert data.report.unknown_passage_ids == ["ghost"]
    assert data.report.repeated_judgements == 1 and data.qrels["q2"] == {"d3": 2}
    assert data.query_ids == ["q1", "q2"]  # q9 has no text: reported, not evaluated
    assert data.qrels["q1"] == {"d1": 1, "ghost": 1}  # kept: a judged passage missing from the corpus is a miss
    assert data.positives("q1") == ["d1"]
    logged = caplog.text
    assert "1 judged query ids are not in queries.jsonl" in logged and "1 judged passage ids" in logged
    with pytest.raises(DataFormatError, match=r"test\.tsv: 1 judged query ids .* \(data\.strict=true\)"):
        load_split(tmp_path, "test", strict=True)


def test_queries_of_one_text_are_reported(tmp_path, caplog):
    queries = QUERIES + [{"_id": "q3", "text": "query one"}]
    write_beir(tmp_path, queries=queries, qrels="q1\td1\t1\nq2\td3\t2\nq3\td2\t1\n")
    data = load_split(tmp_path, "test")
    assert data.query_ids == ["q1", "q2", "q3"]  # evaluation scores each judged query, as BEIR does
    assert data.report.shared_text == [["q1", "q3"]]
    assert "2 judged queries share their text with another (e.g. [['q1', 'q3']])" in caplog.text


def test_missing_split_names_available_ones(tmp_path):
    write_beir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"qrels/dev\.tsv not found .* splits here: \['test'\]"):
        load_split(tmp_path, "dev")


def test_download_unpacks_a_beir_zip_atomically(tmp_path):
    source = write_beir(tmp_path / "src" / "mini")
    archive = tmp_path / "mini.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in source.rglob("*"):
            z.write(f, Path("mini") / f.relative_to(source))
    folder = DataSource(tmp_path / "cache" / "mini", archive.as_uri()).root()
    assert load_split(folder, "test").corpus_ids == ["d1", "d2", "d3"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["mini"]  # no temporary leftovers


def test_bundled_demo_set_is_well_formed():
    root = Path(__file__).resolve().parents[1] / "data" / "demo"
    sizes = {split: len(load_split(root, split).query_ids) for split in ("train", "dev", "test")}
    assert sizes == {"train": 60, "dev": 30, "test": 30}
    data = load_split(root, "test")
    assert len(data.corpus_ids) == 300 and not data.report.problems
