"""IR metrics as BEIR and MTEB compute them: pytrec_eval (trec_eval), averaged over the evaluated queries."""

from __future__ import annotations

import pytrec_eval

# Our metric name -> trec_eval measure. MRR@10 is trec_eval's reciprocal rank over each query's top 10.
MEASURES = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "mrr@10": "recip_rank", "map@100": "map_cut_100"}

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def truncate_run(run: Run, depth: int) -> Run:
    """Each query's top `depth` passages, ordered as trec_eval orders them (score desc, then id desc)."""
    return {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:depth])
            for q, docs in run.items()}


def per_query_metrics(qrels: Qrels, run: Run) -> dict[str, dict[str, float]]:
    """{query: {metric: value}} for every query that has both judgements and retrieved passages."""
    main = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map_cut.100"}).evaluate(run)
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(truncate_run(run, 10))
    return {q: {name: (mrr if name == "mrr@10" else main)[q][measure] for name, measure in MEASURES.items()}
            for q in main}


def mean_metrics(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    if not per_query:
        raise ValueError("no query was evaluated: do the run's query ids match the qrels?")
    return {name: sum(m[name] for m in per_query.values()) / len(per_query) for name in MEASURES}
