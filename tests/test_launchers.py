"""Launching on existing engines: SLURM through submitit (its local executor here), searches through Optuna."""

import csv
import json
import pickle

import pytest
from helpers import ROOT, compose_cfg, run_script, tiny_overrides
from omegaconf import OmegaConf

from pa_retriever.tasks.train import optimized_value


def test_the_slurm_launcher_composes_with_train(tmp_path):
    """Compose only: one task per trainer device, the partition left to the cluster unless named."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp",
                                          "trainer.devices=4"], return_hydra_config=True)
        default = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and default.hydra.launcher.partition is None
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4 and default.hydra.launcher.tasks_per_node == 1
    assert launcher.timeout_min > 0 and launcher.setup == []


def test_a_sweep_runs_through_submitit(tiny_bert_dir, tmp_path):
    """The SLURM path on this machine: two jobs pickled, run as submitit jobs, their results read back."""
    sweep = tmp_path / "sweep"
    run_script("train.py", ["-m", "hydra/launcher=submitit_local", "mining=naive_topk,topk_percpos", "debug=fdr",
                            f"hydra.sweep.dir={sweep}", *tiny_overrides(tiny_bert_dir, tmp_path)])
    for job in ("0", "1"):
        assert (sweep / job / "model" / "modules.json").is_file()
        assert "ndcg@10" in json.loads((sweep / job / "metrics.json").read_text())
    results = sorted((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2
    for path in results:
        outcome, job_return = pickle.loads(path.read_bytes())
        assert outcome == "success" and 0 <= job_return.return_value <= 1  # train.py's ndcg@10


def test_an_optuna_search_runs_its_trials(tiny_bert_dir, tmp_path):
    """Two trials of hparams_search=scifact_optuna on the tiny model and data/demo, under debug=limit (debug=fdr
    logs val/ndcg@10 too, but from one validation batch: the queries alone, a score of 0 whatever the trial)."""
    sweep = tmp_path / "sweep"
    run_script("train.py", ["-m", "hparams_search=scifact_optuna", "hydra.sweeper.n_trials=2", "debug=limit",
                            "validate_before_training=false", f"hydra.sweep.dir={sweep}",
                            *tiny_overrides(tiny_bert_dir, tmp_path)])
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert 0 < results.best_value <= 1
    assert set(results.best_params) == {"module.optimizer.lr", "module.temperature", "datamodule.batch_size",
                                        "mining.perc"}
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1"]
    validated = [float(row["val/ndcg@10"]) for trial in trials
                 for row in csv.DictReader((trial / "csv" / "metrics.csv").open()) if row["val/ndcg@10"]]
    assert results.best_value == pytest.approx(max(validated))  # the objective is validation's, not the test's


def test_a_missing_optimized_metric_is_named_with_what_there_is(tmp_path):
    compose_cfg("train", ["hparams_search=scifact_optuna", "hydra.mode=MULTIRUN"], tmp_path)
    assert optimized_value({"val/ndcg@10": 0.5, "ndcg@10": 0.4}, "val/ndcg@10") == 0.5
    assert optimized_value({}, None) is None
    with pytest.raises(KeyError, match=r"optimized_metric=val/ndcg@10 .*: ndcg@10, recall@100"):
        optimized_value({"ndcg@10": 0.4, "recall@100": 0.9}, "val/ndcg@10")
    compose_cfg("train", [], tmp_path)  # a run, or Hydra's basic sweeper: nobody reads the value
    assert optimized_value({}, "ndcg@10") is None
