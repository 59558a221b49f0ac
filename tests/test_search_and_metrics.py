"""Exact search (faiss and torch agree with brute force) and metrics (equal to a numpy + pytrec_eval reference)."""

import numpy as np
import pytest
import pytrec_eval

from pa_retriever.data.beir import LoadReport, RetrievalData
from pa_retriever.encode.search import exact_search
from pa_retriever.eval.metrics import per_query_metrics
from pa_retriever.eval.retrieval import evaluate_embeddings


def random_unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("block", [2**26, 1000])  # 1000: many small blocks, as for a corpus that does not fit
def test_search_matches_brute_force(backend, block):
    rng = np.random.default_rng(0)
    queries, corpus = random_unit(rng, 70), random_unit(rng, 900)
    full = queries @ corpus.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :25]
    shards = [corpus[:300], corpus[300:301], corpus[301:]]
    scores, indices = exact_search(queries, shards, 25, backend=backend, max_block_scores=block)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), atol=1e-5)


def test_backends_agree_and_ties_are_ordered_by_index():
    rng = np.random.default_rng(1)
    corpus = np.repeat(random_unit(rng, 50), 2, axis=0)  # every passage twice: exact ties
    queries = random_unit(rng, 10)
    by_faiss = exact_search(queries, corpus, 20, backend="faiss")
    by_torch = exact_search(queries, corpus, 20, backend="torch")
    np.testing.assert_array_equal(by_faiss[1], by_torch[1])
    assert (by_faiss[1][:, 0::2] + 1 == by_faiss[1][:, 1::2]).all()  # the lower index first within a tie


def test_k_beyond_corpus_pads_with_minus_one():
    rng = np.random.default_rng(2)
    scores, indices = exact_search(random_unit(rng, 3), random_unit(rng, 4), 6, backend="torch")
    assert (indices[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()


def reference_metrics(qrels, run):
    """Independent reference: trec_eval measures from pytrec_eval, MRR@10 by hand from the ranking."""
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map_cut.100"})
    main = evaluator.evaluate(run)
    out = {}
    for q in main:
        ranked = sorted(run[q], key=lambda d: (-run[q][d], d))
        first = next((r for r, d in enumerate(ranked[:10], 1) if qrels[q].get(d, 0) > 0), None)
        out[q] = {"ndcg@10": main[q]["ndcg_cut_10"], "recall@100": main[q]["recall_100"],
                  "map@100": main[q]["map_cut_100"], "mrr@10": 1 / first if first else 0.0}
    return out


def test_evaluation_equals_brute_force_reference():
    rng = np.random.default_rng(3)
    n_q, n_p = 40, 500
    queries, passages = random_unit(rng, n_q), random_unit(rng, n_p)
    corpus_ids = [f"p{i}" for i in range(n_p)]
    query_ids = [f"q{i}" for i in range(n_q)]
    qrels = {q: {corpus_ids[j]: int(rng.integers(1, 3)) for j in rng.choice(n_p, size=rng.integers(1, 4))}
             for q in query_ids}
    qrels["q0"]["p1"] = 0  # a judged non-relevant passage
    data = RetrievalData(corpus_ids, [""] * n_p, query_ids, [""] * n_q, qrels, LoadReport("test"))
    result = evaluate_embeddings(data, queries, passages, k=100, backend="torch")

    full = queries @ passages.T
    top = np.argsort(-full, axis=1)[:, :100]
    run = {q: {corpus_ids[j]: float(full[i, j]) for j in top[i]} for i, q in enumerate(query_ids)}
    expected = reference_metrics(qrels, run)
    for q in query_ids:
        for name in ("ndcg@10", "recall@100", "mrr@10", "map@100"):
            assert result.per_query[q][name] == pytest.approx(expected[q][name], abs=1e-6), (q, name)
    for name in ("ndcg@10", "recall@100", "mrr@10", "map@100"):
        assert result.metrics[name] == pytest.approx(np.mean([expected[q][name] for q in query_ids]), abs=1e-9)
    assert 0 < result.metrics["ndcg@10"] < 1


def test_self_matches_are_skipped_like_beir():
    passages = np.eye(3, dtype=np.float32)
    data = RetrievalData(["q1", "d2", "d3"], [""] * 3, ["q1"], [""], {"q1": {"d2": 1}}, LoadReport("test"))
    result = evaluate_embeddings(data, np.array([[1.0, 0.5, 0]], np.float32), passages, k=2)
    assert list(result.run["q1"]) == ["d2", "d3"] and result.metrics["mrr@10"] == 1.0


def test_per_query_metrics_known_values():
    qrels = {"q": {"a": 1, "b": 1}}
    run = {"q": {"x": 3.0, "a": 2.0, "y": 1.0}}
    m = per_query_metrics(qrels, run)["q"]
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@100"] == pytest.approx(0.5)
    ideal = 1 + 1 / np.log2(3)
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(3)) / ideal)


def test_validation_scores_only_what_it_encoded_and_says_so():
    """limit_val_batches / fast_dev_run encode part of dev: rows left at zero would tie with every passage."""
    from types import SimpleNamespace

    from pa_retriever.training.module import BiEncoderModule
    from pa_retriever.training.validation import ValidationSearch
    data = RetrievalData(["p0", "p1", "p2"], [""] * 3, ["q0", "q1"], [""] * 2,
                         {"q0": {"p1": 1}, "q1": {"p2": 1}}, LoadReport("test"))
    logged = {}
    search = ValidationSearch()
    search.add("query", np.array([0]), np.array([[1.0, 0.0]], np.float32))
    search.add("passage", np.array([0, 1]), np.array([[0.0, 1.0], [1.0, 0.0]], np.float32))
    fake = SimpleNamespace(val_data=data, hparams=SimpleNamespace(val_k=10, search_backend="torch"),
                           log=lambda name, value, **_: logged.__setitem__(name, value), _val_search=search)
    with pytest.warns(UserWarning, match="encoded 1 of 2 queries and 2 of 3 passages"):
        BiEncoderModule.on_validation_epoch_end(fake)
    assert logged["val/mrr@10"] == 1.0 and logged["val/recall@100"] == 1.0  # q0 alone, among p0 and p1


@pytest.mark.parametrize("kind, bad_id", [("query", "q1"), ("passage", "d1")])
def test_evaluation_refuses_nan_embeddings_by_id(kind, bad_id):
    """faiss never returns a NaN passage and gives a NaN query nothing: scored anyway, both would pass as 0."""
    data = RetrievalData(["d0", "d1", "d2"], ["a", "b", "c"], ["q0", "q1"], ["x", "y"],
                         {"q0": {"d0": 1}, "q1": {"d1": 1}}, LoadReport("t"))
    queries, passages = random_unit(np.random.default_rng(4), 2), random_unit(np.random.default_rng(5), 3)
    (queries if kind == "query" else passages)[1, 3] = np.nan
    with pytest.raises(ValueError, match=rf"1 {kind} embeddings are NaN or infinite \(ids \['{bad_id}'\]\)"):
        evaluate_embeddings(data, queries, passages, k=2)
