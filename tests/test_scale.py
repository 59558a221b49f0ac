"""What keeps memory bounded at scale gives the numbers the whole-corpus way gives: evaluation streaming the corpus
through the search, validation searching each process's share, BM25 scoring pairs without scoring the corpus."""

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from pa_retriever.data.beir import LoadReport, RetrievalData, load_split
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.towers import Towers
from pa_retriever.eval.retrieval import evaluate_embeddings, score_model
from pa_retriever.training.validation import ValidationSearch
from tests.helpers import ROOT


def random_data(seed: int = 0, n_queries: int = 23, n_passages: int = 157, dim: int = 8):
    rng = np.random.default_rng(seed)
    queries, passages = rng.standard_normal((n_queries, dim), np.float32), rng.standard_normal((n_passages, dim))
    passages = passages.astype(np.float16).astype(np.float32)  # validation keeps passages as fp16
    qrels = {f"q{i}": {f"p{j}": 1 for j in rng.choice(n_passages, 2, replace=False)} for i in range(n_queries)}
    data = RetrievalData([f"p{j}" for j in range(n_passages)], [""] * n_passages, [f"q{i}" for i in range(n_queries)],
                         [""] * n_queries, qrels, LoadReport("random"))
    return data, queries, passages


def test_evaluation_streams_the_corpus_to_the_scores_of_the_whole(tiny_bert_dir):
    data = load_split(ROOT / "data" / "demo", "test")
    settings = EncodeSettings(precision="fp32", progress=False)
    towers = Towers.load(EncoderSpec(name_or_path=str(tiny_bert_dir), pooling="mean", query_max_length=64,
                                     passage_max_length=64), settings)
    whole = evaluate_embeddings(data, towers.encode(data.queries, "query", progress=False),
                                towers.encode(data.passages, "passage", progress=False), k=10)
    streamed = score_model(towers, data, settings, k=10, block_rows=7)  # many blocks, the last one short
    assert streamed.metrics == pytest.approx(whole.metrics, abs=1e-6)
    assert [list(docs) for docs in streamed.run.values()] == [list(docs) for docs in whole.run.values()]


def _validate(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    data, queries, passages = random_data()
    search = ValidationSearch()
    query_rows = np.arange(len(queries))[rank::world]
    passage_rows = np.append(np.arange(len(passages))[rank::world], 0)  # row 0 encoded by both, as tiny sets do
    search.add("query", query_rows, queries[query_rows])
    search.add("passage", passage_rows, passages[passage_rows])
    result, n_queries, _ = search.score(data, k=10, backend="torch")
    results[rank] = (result.metrics, {q: list(docs) for q, docs in result.run.items()}, n_queries)
    dist.destroy_process_group()


def test_validation_on_two_processes_scores_as_evaluate_does(tmp_path):
    """Each process searches only the passages it encoded; the merged top-k is the whole corpus' top-k."""
    data, queries, passages = random_data()
    expected = evaluate_embeddings(data, queries, passages, k=10, backend="torch")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_validate, args=(2, str(tmp_path / "rendezvous"), results), nprocs=2, start_method="spawn")
        for rank in range(2):
            metrics, run, n_queries = results[rank]
            assert n_queries == len(queries) and metrics == pytest.approx(expected.metrics, abs=1e-6)
            assert run == {q: list(docs) for q, docs in expected.run.items()}  # no passage twice


def test_bm25_pair_scores_equal_bm25s_scores_of_the_whole_corpus():
    from pa_retriever.mining.teachers import BM25Teacher
    data = load_split(ROOT / "data" / "demo", "train")
    queries = data.queries + ["the and of", "volcano volcano eruption"]  # no known token; a repeated one
    teacher = BM25Teacher("bm25")
    teacher.prepare(data, queries)
    rng = np.random.default_rng(0)
    rows = np.arange(len(queries))
    idx = rng.integers(0, len(data.passages), (len(queries), 6))
    idx[0, 2:] = -1  # padding slots stay NaN
    got = teacher.pair_scores(rows, idx)
    for row in rows:
        whole = (teacher.retriever.get_scores(teacher.query_tokens[row]) if teacher.query_tokens[row]
                 else np.zeros(len(data.passages)))
        valid = idx[row] >= 0
        np.testing.assert_allclose(got[row, valid], whole[idx[row, valid]], rtol=1e-5, atol=1e-6)
        assert np.isnan(got[row, ~valid]).all()


def test_the_candidates_store_round_trips_in_row_groups(tmp_path, monkeypatch):
    """Written and read a group at a time (groups of their own widths), the arrays come back as they were."""
    import pyarrow.parquet as pq

    from pa_retriever.data import candidates as store
    monkeypatch.setattr(store, "ROW_GROUP", 3)
    rng = np.random.default_rng(0)
    n, ids = 8, [f"p{i}" for i in range(50)]
    neg = rng.integers(0, 50, (n, 5))
    neg[:3, 2:] = -1  # the first group is narrower than the others
    pos = np.where(np.arange(n)[:, None] < 7, rng.integers(0, 50, (n, 2)), -1)
    pos[:, 1] = -1
    original = store.CandidateArrays(
        [f"q{i}" for i in range(n)], pos, np.where(pos >= 0, 0.9, np.nan).astype(np.float32), neg,
        np.where(neg >= 0, rng.random((n, 5)), -np.inf).astype(np.float32), np.full((n, 2), -1),
        np.full((n, 2), -np.inf, np.float32), 50)
    store.write_candidates(tmp_path, original, ids, {"teacher": "made up"})
    assert pq.ParquetFile(tmp_path / store.CANDIDATES_FILE).num_row_groups == 3
    loaded = store.load_candidates(tmp_path, {p: i for i, p in enumerate(ids)})
    assert loaded.query_ids == original.query_ids and loaded.manifest["rows"] == n
    for name in ("pos", "neg", "tail"):
        idx = getattr(original, f"{name}_idx")
        width = int((idx >= 0).sum(1).max(initial=0)) or 1  # stored lists: padding beyond the longest is dropped
        np.testing.assert_array_equal(getattr(loaded, f"{name}_idx"), idx[:, :width])
        np.testing.assert_array_equal(getattr(loaded, f"{name}_scores"), getattr(original, f"{name}_scores")[:, :width])
