"""k-fold cross-validation named in the split: folds partition the queries, keep a shared text together, and flow
through training (train on the others, score the fold, no validation on it)."""

import json

import pytest

from pa_retriever.data.beir import LoadReport, RetrievalData, load_split
from pa_retriever.data.folds import Fold
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
