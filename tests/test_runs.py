"""Whole runs as users start them: sweeps, DDP inside a sweep, distributed and interrupted mining, W&B offline."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, run_script, tiny_overrides


def candidates_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("candidates/*/*/candidates.parquet"))


def test_multirun_over_methods_reuses_one_mining_run(tiny_bert_dir, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", ["-m", "mining=naive_topk,topk_percpos,sampled_topk", "debug=fdr",
                            f"hydra.sweep.dir={sweep}", *tiny_overrides(tiny_bert_dir, tmp_path)])
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2"]
    for job in jobs:
        assert (sweep / job / "model" / "modules.json").is_file() and (sweep / job / "metrics.json").is_file()
    assert len(candidates_files(tmp_path / "cache")) == 1


def test_ddp_jobs_inside_a_multirun_keep_their_run_dirs(tiny_bert_dir, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", ["-m", "mining=naive_topk,topk_percpos", "trainer=ddp", "trainer.accelerator=cpu",
                            "trainer.devices=2", "debug=limit", "test_after_training=false",
                            "validate_before_training=false", f"hydra.sweep.dir={sweep}",
                            *tiny_overrides(tiny_bert_dir, tmp_path)], timeout=900)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert (sweep / job / "model" / "modules.json").is_file()
        assert (sweep / job / "ddp_rank_1.log").is_file()  # rank 1 ran this job, in this job's dir
    assert not (tmp_path / "logs").exists()  # no stray run dirs from re-launched children


def test_ddp_run_resumed_matches_an_unbroken_one_on_every_process(tiny_bert_dir, tmp_path):
    """Two processes, dropout on: stopped after epoch 0 and resumed, the weights end where an unbroken run's do
    (each process must draw its own dropout masks again, not rank 0's)."""
    import torch
    common = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2",
              "+trainer.limit_train_batches=2", "trainer.precision=32-true", "data.val_split=null",
              "validate_before_training=false", "test_after_training=false", "mining=naive_topk",
              "datamodule.batch_size=8", *tiny_overrides(tiny_bert_dir, tmp_path)]
    run_script("train.py", common + [f"hydra.run.dir={tmp_path / 'straight'}"], timeout=900)
    run_script("train.py", common + [f"hydra.run.dir={tmp_path / 'first'}", "+callbacks.stop._target_=helpers.StopAfterEpoch",
                                     "+callbacks.stop.epoch=0"], timeout=900, env={"PYTHONPATH": str(ROOT / "tests")})
    run_script("train.py", common + [f"hydra.run.dir={tmp_path / 'resumed'}",
                                     f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"], timeout=900)
    straight, again = (torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                       for run in ("straight", "first"))
    for name, value in straight.items():
        torch.testing.assert_close(again[name], value, msg=name)


def test_two_process_mining_equals_one_process(tiny_bert_dir, tmp_path):
    args = ["candidates.shard_size=40", "candidates.depth=30", *tiny_overrides(tiny_bert_dir, tmp_path, groups=("teacher",))]
    run_script("mine.py", args + [f"hydra.run.dir={tmp_path / 'single'}"])
    single = candidates_files(tmp_path / "cache")[0].read_bytes()
    # Parts of 7 queries: each process searches and scores every other part (the part size is not in the key).
    distributed = [f"paths.cache_dir={tmp_path / 'cache2'}", f"hydra.run.dir={tmp_path / 'dist'}",
                   "candidates.query_chunk=7"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                             str(ROOT / "mine.py"), *args, *distributed], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    shards = sorted((tmp_path / "cache2").glob("embeddings/*/passage-*/shard-*.npy"))
    assert len(shards) == 8  # 300 passages / 40, split between the two processes
    assert candidates_files(tmp_path / "cache2")[0].read_bytes() == single


def test_mining_killed_mid_way_resumes_to_the_identical_file(minilm_path, tmp_path):
    """kill -9 after a few embedding shards, run again: the same candidates, byte for byte."""
    args = ["candidates.shard_size=20", "encode.progress=false", "encode.precision=fp32", "logger=csv"]
    run_script("mine.py", args + [f"paths.cache_dir={tmp_path / 'clean'}", f"hydra.run.dir={tmp_path / 'a'}"])
    cache = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "mine.py"), *args, f"paths.cache_dir={cache}",
                             f"hydra.run.dir={tmp_path / 'b'}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(list(cache.glob("embeddings/*/passage-*/shard-*.npy"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(cache.glob("embeddings/*/passage-*/shard-*.npy")))
    assert 3 <= done < 15, "kill -9 should land while the corpus is being encoded"
    assert not candidates_files(cache)
    run_script("mine.py", args + [f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'c'}"])
    assert candidates_files(cache)[0].read_bytes() == candidates_files(tmp_path / "clean")[0].read_bytes()
    assert not list(cache.rglob("*.tmp"))


def test_wandb_logger_works_offline_without_an_account(tiny_bert_dir, tmp_path):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    run_script("train.py", ["logger=wandb", "debug=limit", f"hydra.run.dir={run}",
                            *[o for o in tiny_overrides(tiny_bert_dir, tmp_path) if o != "logger=csv"]],
               env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))  # syncable later with `wandb sync`
    assert {p.stem.split("_")[0] for p in (runs[0] / "files" / "media" / "images" / "mining").glob("*.png")} == {
        "scores", "margins"}  # the mining plots
    records = next(runs[0].glob("*.wandb")).read_bytes()  # protobuf records: metric keys are plain strings
    for key in ("train/loss", "val/ndcg@10", "mining/removed_share", "lr-AdamW/pg1", "spec"):
        assert key.encode() in records, key

