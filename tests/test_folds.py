"""k-fold cross-validation named in the split: folds partition the queries, keep a shared text together, and flow
through training (train on the others, score the fold, no validation on it)."""

import importlib.util
import json
import statistics

import pytest
from hydra.core.hydra_config import HydraConfig

from pa_retriever.data.beir import LoadReport, RetrievalData, load_split
from pa_retriever.data.folds import Fold
from pa_retriever.tasks.cross_validate import fold_configs
from pa_retriever.tasks.train import train
from pa_retriever.utils.checks import SettingError
from tests.helpers import ROOT, compose_cfg, tiny_overrides


def test_folds_partition_the_queries_and_keep_a_shared_text_in_one_fold():
    texts = [f"query {i}" for i in range(23)] + ["query 3", "query 3"]  # q23 and q24 share q3's text
    data = RetrievalData(["p"], ["passage"], [f"q{i}" for i in range(25)], texts,
                         {f"q{i}": {"p": 1} for i in range(25)}, LoadReport("all"))
    folds = [Fold(i, 5, False).select(data).query_ids for i in range(5)]
    assert sorted(q for fold in folds for q in fold) == sorted(data.query_ids)  # each query in exactly one fold
    assert sorted(len({texts[int(q[1:])] for q in fold}) for fold in folds) == [4, 4, 5, 5, 5]  # 23 texts dealt
    shared = next(fold for fold in folds if "q3" in fold)
    assert {"q23", "q24"} <= set(shared)
    for i, fold in enumerate(folds):
        rest = Fold(i, 5, True).select(data)
        assert set(rest.query_ids) == set(data.query_ids) - set(fold) and set(rest.qrels) == set(rest.query_ids)
    assert folds == [Fold(i, 5, False).select(data).query_ids for i in range(5)]  # no seed: the same every time


@pytest.mark.parametrize("split, message", [("train:fold5of5", "a fold from 0 to k - 1"),
                                            ("train:fold0of1", "k >= 2"), ("train:folds", "fold<i>of<k>")])
def test_a_bad_fold_name_says_what_a_fold_is(split, message):
    with pytest.raises(SettingError, match=message):
        load_split(ROOT / "data" / "demo", split)


def test_a_cross_validation_run_trains_on_the_other_folds_and_scores_its_own(tiny_bert_dir, tmp_path):
    whole = load_split(ROOT / "data" / "demo", "train+dev")
    held_out = load_split(ROOT / "data" / "demo", "train+dev:fold1of3")
    cfg = compose_cfg("train", tiny_overrides(tiny_bert_dir, tmp_path) + ["cv=kfold", "data.folds=3", "data.fold=1",
                                                                          "debug=fdr"], tmp_path / "run")
    assert cfg.data.val_split is None and cfg.data.split == "train+dev:fold1of3"
    train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    trained = {q for q in whole.query_ids if q not in set(held_out.query_ids)}
    assert summary["split"] == "train+dev:fold1of3" and summary["metrics"] is not None
    assert summary["train_pairs"] == sum(len(whole.positives(q)) for q in trained)


def test_every_fold_in_one_job_returns_the_mean_over_folds(tiny_bert_dir, tmp_path):
    """data.fold=all: what a search optimises is the mean of the exported models' scores on their own folds; each
    fold is a run of its own, in W&B too."""
    logger = "logger=many" if importlib.util.find_spec("wandb") else "logger=csv"
    cfg = compose_cfg("train", tiny_overrides(tiny_bert_dir, tmp_path) + ["cv=kfold", "data.folds=2", "data.fold=all",
                                                                          "debug=limit", logger], tmp_path / "run")
    mean = train(cfg)
    if logger == "logger=many":
        assert [len(list((tmp_path / "run" / f"fold{i}" / "wandb").glob("offline-run-*"))) for i in range(2)] == [1, 1]
    summaries = [json.loads((tmp_path / "run" / f"fold{i}" / "summary.json").read_text()) for i in range(2)]
    assert [s["split"] for s in summaries] == ["train+dev:fold0of2", "train+dev:fold1of2"]
    scores = [s["metrics"]["ndcg@10"] for s in summaries]
    assert mean["ndcg@10"] == pytest.approx(statistics.fmean(scores))
    report = json.loads((tmp_path / "run" / "cv_summary.json").read_text())
    assert report["mean"] == mean and report["std"]["ndcg@10"] == pytest.approx(statistics.stdev(scores))


def test_the_cross_validated_search_scores_each_trial_on_every_fold(tmp_path):
    compose_cfg("train", ["hparams_search=scifact_optuna_cv", "hydra.mode=MULTIRUN"], tmp_path)
    sweeper = HydraConfig.get().sweeper
    cfg = compose_cfg("train", ["hparams_search=scifact_optuna_cv"], tmp_path)
    assert cfg.data.fold == "all" and cfg.data.val_split is None and cfg.optimized_metric == "ndcg@10"
    assert sweeper.study_name == "scifact_optuna_cv" and "mining.perc" in sweeper.params
    for refused, message in ((["trainer=ddp"], "run the folds as jobs instead"),
                             (["trainer.devices=2"], "run the folds as jobs instead"),
                             (["ckpt_path=last.ckpt"], "resume one fold as its own job"),
                             (["data.folds=1"], "k >= 2")):
        with pytest.raises(SettingError, match=message):
            fold_configs(compose_cfg("train", ["cv=kfold", "data.fold=all", *refused], tmp_path))
    with pytest.raises(SettingError, match="add cv=kfold"):
        fold_configs(compose_cfg("train", ["+data.fold=all"], tmp_path))


def test_the_runs_table_counts_a_cross_validated_run_by_its_mean_and_shows_the_fold_spread(tmp_path):
    from bench.runs_table import runs, table
    for seed, scores in ((1, [0.5, 0.7]), (2, [0.6, 0.6])):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        metrics = {"ndcg@10": statistics.fmean(scores), "recall@100": 0.9}
        (run / "cv_summary.json").write_text(json.dumps({
            "seed": seed, "mean": metrics, "std": {"ndcg@10": statistics.stdev(scores), "recall@100": 0.0}}))
    found = runs(f"{tmp_path}/*")
    assert [s["seed"] for s in found] == [1, 2]
    row = table({"cv": found}).splitlines()[-1]
    assert row.startswith("| cv | 0.6000 ± 0.0000 (2) | 0.9000 ± 0.0000 (2) | 0.0707 |")  # sd over folds: 0.1414, 0


def test_the_runs_table_pairs_per_fold_runs_of_both_sides_by_seed_and_refuses_a_missing_fold(tmp_path):
    from bench.runs_table import fold_table, runs, table
    scores = {"ours": {1: [0.6, 0.8], 2: [0.5, 0.7]}, "st": {1: [0.5, 0.8], 2: [0.5, 0.6]}}
    for seed, folds in scores["ours"].items():  # our runs: one run dir per fold (data.fold=<i>)
        for fold, ndcg in enumerate(folds):
            run = tmp_path / "ours" / f"fold{fold}-seed{seed}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({
                "seed": seed, "split": f"train+dev:fold{fold}of2", "metrics": {"ndcg@10": ndcg, "recall@100": 0.9}}))
    (tmp_path / "ours" / "multirun.yaml").write_text("hydra: {}\n")
    for seed, folds in scores["st"].items():  # bench/st_ablation.py's records, one folder per fold
        for fold, ndcg in enumerate(folds):
            (tmp_path / "st" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
            (tmp_path / "st" / f"fold{fold}" / f"minilm-naive_topk-seed{seed}.json").write_text(json.dumps({
                "seed": seed, "setting": {"eval_split": f"train+dev:fold{fold}of2"},
                "metrics": {"ndcg@10": ndcg, "recall@100": 0.8}}))
    ours, st = runs(f"{tmp_path}/ours/*"), runs(f"{tmp_path}/st/*/*.json")
    assert [(s["seed"], s["metrics"]["ndcg@10"]) for s in ours] == [(1, pytest.approx(0.7)), (2, pytest.approx(0.6))]
    assert ours[0]["fold_sd"] == pytest.approx(statistics.stdev([0.6, 0.8]))
    rows = table({"ours": ours, "ST": st}).splitlines()
    assert rows[-1].startswith("| ST | 0.6000 ± 0.0707 (2) | 0.8000 ± 0.0000 (2) |")
    assert "| -0.0500 ± 0.0000 paired | 1,2 |" in rows[-1]  # seed 1: 0.65 - 0.7, seed 2: 0.55 - 0.6
    assert fold_table({"ours": ours, "ST": st}).splitlines()[2:] == [  # fold by fold, mean over seeds
        "| 0 | 0.5500 | 0.5000 | -0.0500 |", "| 1 | 0.7500 | 0.7000 | -0.0500 |"]
    (tmp_path / "st" / "fold1" / "minilm-naive_topk-seed2.json").unlink()
    with pytest.raises(SystemExit, match=r"seed 2 lacks fold\(s\) \[1\] of 2"):
        runs(f"{tmp_path}/st/*/*.json")
