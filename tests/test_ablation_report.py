"""bench/ablation_report.py: runs become stored records, records add up across calls, settings never mix;
teacher-free runs are trained once per seed and shared."""

import json
import sys

import pytest

from bench import ablation_report
from bench.st_ablation import seeds_to_run

SETTING = {"train_split": "train", "eval_split": "dev", "epochs": 1.0, "max_length": 128, "batch_size": 32, "lr": 2e-5,
           "weight_decay": 0.01, "warmup": "ours", "warmup_ratio": 0.1, "attention_dropout": 0.0}


def our_run(folder, method, seed, ndcg, epochs=1, short=0, teacher="minilm"):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "method": method, "teacher": teacher, "seed": seed, "train_seconds": 100.0, "mining_seconds": {teacher: 90.0},
        "metrics": {"ndcg@10": ndcg, "recall@100": 0.9}}))
    (folder / "mining_stats.json").write_text(json.dumps({"mining/queries": 601, "mining/queries_short": short,
                                                          "mining/removed_share": 0.17 if "pos" in method else 0.0}))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(
        f"data: {{train_split: train, split: dev}}\ntrainer: {{max_epochs: {epochs}}}\n"
        "model: {passage_max_length: 128}\ndatamodule: {batch_size: 32}\n"
        "module: {optimizer: {lr: 2e-5}, weight_decay: 0.01, scheduler: {warmup_ratio: 0.1},\n"
        "         config_overrides: {attention_probs_dropout_prob: 0.0}}\n")


def st_run(folder, method, seed, ndcg, rows=685, batch_sampler="batch_sampler", **setting):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"minilm-{method}-seed{seed}.json").write_text(json.dumps({
        "side": "sentence-transformers", "method": method, "teacher": "minilm", "seed": seed, "rows_kept": rows,
        "pairs": 685, "metrics": {"ndcg@10": ndcg, "recall@100": 0.95}, "mining_seconds_cold": 200.0,
        "train_seconds": 110.0, "setting": {**SETTING, **setting}, "st_recipe": {"batch_sampler": batch_sampler}}))


def report(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["ablation_report.py", *map(str, args)])
    ablation_report.main()


def test_report_accumulates_records_and_pairs_methods_by_seed(tmp_path, monkeypatch):
    out = tmp_path / "report"
    our_run(tmp_path / "sweep1" / "0", "naive_topk", 1, 0.70)
    our_run(tmp_path / "sweep1" / "1", "topk_percpos", 1, 0.71, short=3)
    st_run(tmp_path / "st", "naive_topk", 1, 0.68)
    st_run(tmp_path / "st", "topk_percpos", 1, 0.66, rows=575)
    report(monkeypatch, "--ours", tmp_path / "sweep1", "--st", tmp_path / "st", "--out", out)
    # A later session adds seed 2 from a new sweep; seed 1 is kept from the stored records.
    our_run(tmp_path / "sweep2" / "0", "naive_topk", 2, 0.72)
    our_run(tmp_path / "sweep2" / "1", "topk_percpos", 2, 0.71)
    report(monkeypatch, "--ours", tmp_path / "sweep2", "--out", out)
    text = (out / "report.md").read_text()
    assert len(list((out / "runs").glob("*.json"))) == 6
    assert "| naive_topk | 0.7100 ± 0.0141 (2) | 0.6800 | +0.0300 |" in text
    assert "| 598/601 | 575/685 |" in text  # queries with all negatives (seed 1's stats), ST rows kept
    assert "| topk_percpos | +0.0000 ± 0.0141 (2) |" in text  # paired: +0.01 at seed 1, -0.01 at seed 2
    for chart in ("ndcg_by_method", "gain_over_naive", "ndcg_vs_removed"):
        assert (out / f"{chart}.png").stat().st_size > 0
    # The records alone rebuild the same report.
    report(monkeypatch, "--out", out)
    assert (out / "report.md").read_text().split("\n", 3)[3] == text.split("\n", 3)[3]


def test_records_of_different_settings_do_not_mix(tmp_path, monkeypatch):
    our_run(tmp_path / "one_epoch" / "0", "naive_topk", 1, 0.70)
    our_run(tmp_path / "five_epochs" / "0", "naive_topk", 2, 0.79, epochs=5)
    with pytest.raises(SystemExit, match="2 different settings"):
        report(monkeypatch, "--ours", tmp_path / "one_epoch", tmp_path / "five_epochs", "--out", tmp_path / "out")
    assert not list((tmp_path / "out" / "runs").glob("*.json"))  # nothing stored: later rebuilds still work


def test_the_two_sides_share_the_recipe_and_st_runs_one_batch_sampler(tmp_path, monkeypatch):
    our_run(tmp_path / "ours" / "0", "naive_topk", 1, 0.70)
    st_run(tmp_path / "st_wd0", "naive_topk", 1, 0.69, weight_decay=0.0)  # ST's own default, not ours
    with pytest.raises(SystemExit, match="2 different settings"):
        report(monkeypatch, "--ours", tmp_path / "ours", "--st", tmp_path / "st_wd0", "--out", tmp_path / "a")
    st_run(tmp_path / "st", "naive_topk", 1, 0.69)
    st_run(tmp_path / "st", "topk_percpos", 1, 0.68, batch_sampler="no_duplicates")
    with pytest.raises(SystemExit, match="2 different st_recipes"):
        report(monkeypatch, "--ours", tmp_path / "ours", "--st", tmp_path / "st", "--out", tmp_path / "b")


def test_paired_gains_are_reported_for_each_side_against_its_own_naive_run(tmp_path, monkeypatch):
    our_run(tmp_path / "ours" / "0", "naive_topk", 1, 0.70)
    our_run(tmp_path / "ours" / "1", "topk_percpos", 1, 0.71)
    st_run(tmp_path / "st", "naive_topk", 1, 0.69)
    st_run(tmp_path / "st", "topk_percpos", 1, 0.67)
    report(monkeypatch, "--ours", tmp_path / "ours", "--st", tmp_path / "st", "--out", tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    ours = text.split("at the same seed (ours)")[1].split("## ")[0]
    st = text.split("at the same seed (sentence-transformers)")[1].split("## ")[0]
    assert "| topk_percpos | +0.0100 |" in ours and "| topk_percpos | -0.0200 |" in st


def test_a_teacher_free_run_serves_every_teacher_of_its_side_and_copies_must_agree(tmp_path, monkeypatch):
    out = tmp_path / "report"
    our_run(tmp_path / "sweep" / "0", "none", 1, 0.67)  # trained under minilm only, as bench/scifact_ablation.sh does
    our_run(tmp_path / "sweep" / "1", "naive_topk", 1, 0.70)
    our_run(tmp_path / "sweep" / "2", "naive_topk", 1, 0.69, teacher="bm25")
    st_run(tmp_path / "st", "none", 1, 0.66)
    report(monkeypatch, "--ours", tmp_path / "sweep", "--st", tmp_path / "st", "--out", out)
    text = (out / "report.md").read_text()
    bm25 = text.split("## Teacher: bm25")[1].split("## ")[0]
    assert "| none | 0.6700 | - | - |" in bm25  # ours lent; ST has no BM25 teacher, so nothing is lent there
    assert "`none` (ours) reads no teacher score: its runs here are those under teacher minilm." in bm25
    assert "| 601/601 | 685/685 | - | - |" in text  # no mining seconds for a method that mines nothing
    assert "| none | -0.0300 | -0.0200 |" in text  # each teacher's gain is against its own naive top-k
    assert len(list((out / "runs").glob("*.json"))) == 4  # lent rows are not stored as runs
    assert "should agree" not in text
    # A run of the same computation under another teacher that scores differently is flagged, not averaged away.
    our_run(tmp_path / "again" / "0", "none", 1, 0.68, teacher="bm25")
    report(monkeypatch, "--ours", tmp_path / "again", "--out", out)
    text = (out / "report.md").read_text()
    assert "should agree and do not" in text and "- ours none seed 1: bm25 0.6800, minilm 0.6700" in text


def test_sentence_transformers_side_trains_a_teacher_free_method_once_per_seed(tmp_path):
    st_run(tmp_path, "none", 1, 0.66)
    st_run(tmp_path, "naive_topk", 1, 0.69)
    assert seeds_to_run(tmp_path, "round2", "none", ["1", "2"]) == ["2"]  # minilm's seed-1 run serves round2
    assert seeds_to_run(tmp_path, "round2", "naive_topk", ["1", "2"]) == ["1", "2"]  # mined: one run per teacher
    assert seeds_to_run(tmp_path, "minilm", "naive_topk", ["1", "2"]) == ["2"]


def test_sentence_transformers_samples_among_the_first_survivors_and_drops_short_rows():
    import random

    from datasets import Dataset

    from bench.st_common import sample_survivors
    mined = Dataset.from_dict({"anchor": ["q1", "q2"], "positive": [["p1", *[f"n{i}" for i in range(10)]],
                                                                      ["p2", "m0", "m1", "m2"]]})
    random.seed(0)
    tuples = sample_survivors(mined, 4, keep_best=1)
    assert tuples.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3", "negative_4"]
    assert tuples["anchor"] == ["q1"]  # q2 has 3 survivors for 4 negatives: dropped, as ST drops short rows
    row = tuples[0]
    negatives = [row[f"negative_{i}"] for i in range(1, 5)]
    assert row["positive"] == "p1" and negatives[0] == "n0"  # the best survivor is kept
    assert len(set(negatives)) == 4 and set(negatives[1:]) <= {f"n{i}" for i in range(1, 10)}
    random.seed(0)
    assert sample_survivors(mined, 4, keep_best=1)[0] == row  # seeded: one draw per seed
    drawn = set()
    for seed in range(30):
        random.seed(seed)
        drawn |= {sample_survivors(mined, 4, keep_best=0)[0][f"negative_{i}"] for i in range(1, 5)}
    assert drawn == {f"n{i}" for i in range(10)}  # uniform over all ten survivors, not just the best four
