"""Hostile but realistic input through the real entry points: each case must fail with a non-zero exit status and
a message that names the file and line or the setting, and leave nothing half-written in the cache; what is
merely unusual (a byte-order mark, a second job on the same cache) must work."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import ROOT, run_script, tiny_overrides

DEMO = ROOT / "data" / "demo"


@pytest.fixture
def data(tmp_path) -> Path:
    """A copy of the demo set to spoil."""
    return Path(shutil.copytree(DEMO, tmp_path / "data"))


def args(model: Path, tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(model, tmp_path), "data=local", f"data.path={data}", "debug=fdr",
            f"hydra.run.dir={tmp_path / 'run'}", *extra]


def assert_cache_clean(cache: Path, mined: bool = False) -> None:
    """Nothing half-written: no temporary files, no candidates folder without its manifest, and, for a run refused
    before mining, no embeddings at all."""
    assert not list(cache.rglob("*.tmp")) and not list(cache.rglob("*.claim"))
    for folder in cache.glob("candidates/*/*"):
        assert (folder / "manifest.json").is_file(), folder
    if not mined:
        assert not list(cache.rglob("*.npy"))


@pytest.mark.parametrize("setting, message", [
    ("mining.perc=1.5", "mining.perc=1.5 is out of range"),
    ("mining.perc=-1", "mining.perc=-1 is out of range"),
    ("mining.num_negatives=0", "mining.num_negatives=0 trains on in-batch negatives alone"),
    ("mining.num_negatives=100000", "mining.num_negatives=100000 is out of range"),
    ("mining.num_negatives=200", "no more than the candidates.depth=100 + candidates.tail=32"),
    ("module.temperature=0", "module.temperature=0 is out of range"),
    ("datamodule.batch_size=0", "datamodule.batch_size=0 is out of range"),
    ("model.query_max_length=1", "model.query_max_length=1 is out of range"),
    ("candidates.depth=0", "candidates.depth=0 is out of range"),
    ("encode.batch_size=-3", "encode.batch_size=-3 is out of range"),
])
def test_a_bad_setting_is_refused_before_any_model_or_mining(tiny_bert_dir, tmp_path, data, setting, message):
    out = run_script("train.py", args(tiny_bert_dir, tmp_path, data, setting), fails=True)
    assert message in out
    assert_cache_clean(tmp_path / "cache")


# What the other features add, refused in process (each through a subprocess would cost the suite minutes):
# (entry point, overrides, message)
FEATURE_SETTINGS = [
    ("train", ["module.loss.kl=-1"], "module.loss.kl=-1 is out of range"),
    ("train", ["module.loss.margin_mse=nan"], "module.loss.margin_mse=nan is out of range"),
    ("train", ["module.loss.teacher_temperature=0"], "module.loss.teacher_temperature=0 is out of range"),
    ("train", ["module.lora={r: 0}"], "module.lora.r=0 is out of range"),
    ("train", ["module.lora={rank: 4}"], "module.lora: unknown setting(s) ['rank']"),
    ("train", ["model.pooling=max"], "model.pooling='max' is not one of"),
    ("train", ["data.datasets=[{path: ${paths.data_dir}/demo, weight: -1}]"], "data.datasets[demo].weight=-1 is out"),
    ("train", ["data.datasets=[{path: ${paths.data_dir}/demo, weight: nan}]"], "data.datasets[demo].weight=nan is "),
    ("train", ["module.in_batch_filter={filter: percpos, perc: 2}"], "module.in_batch_filter.perc=2 is out of range"),
    ("train", ["candidates.query_chunk=0"], "candidates.query_chunk=0 is out of range"),
    ("train", ["cv=kfold", "data.fold=7"], "fold 7 of 5; k-fold needs k >= 2 (data.folds) and a fold from 0 to k - 1"),
    ("train", ["module.scheduler.warmup_ratio=-1"], "module.scheduler.warmup_ratio=-1 is out of range"),
    ("train", ["+module.scheduler.warmup_steps=-2"], "module.scheduler.warmup_steps=-2 is out of range"),
    ("train", ["teacher=cross_encoder", "teacher.name_or_path={model}"], "is a BertModel, not a sequence classifier"),
    ("mine", ["mining.num_negatives=200", "export=[jsonl]"], "mining.num_negatives=200 is out of range"),
    ("evaluate", ["k=0"], "k=0 is out of range"),
    ("evaluate", ["run_depth=-3"], "run_depth=-3 is out of range"),
]


@pytest.mark.parametrize("task, settings, message", FEATURE_SETTINGS)
def test_a_feature_setting_is_refused_before_any_model_or_mining(tiny_bert_dir, tmp_path, task, settings, message):
    from helpers import compose_cfg

    from pa_retriever.tasks import evaluate, mine, train
    from pa_retriever.utils.checks import SettingError
    groups = {"train": ("model",) if "teacher=cross_encoder" in settings else ("model", "teacher"),
              "mine": ("teacher",), "evaluate": ("model",)}[task]
    overrides = tiny_overrides(tiny_bert_dir, tmp_path, groups) + [s.replace("{model}", str(tiny_bert_dir)) for s in settings]
    run = {"train": train.train, "mine": mine.mine, "evaluate": evaluate.evaluate}[task]
    with pytest.raises(SettingError) as refused:
        run(compose_cfg(task, overrides, tmp_path / "run"))
    assert message in str(refused.value)
    assert not (tmp_path / "cache").exists()  # nothing encoded or mined


def write(path: Path, text: str | bytes) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


@pytest.mark.parametrize("spoil, message", [
    (lambda d: write(d / "qrels" / "train.tsv", "q-volcano-1\tvolcano-02\trelevant\nq-volcano-2\tvolcano-03\t1\n"),
     "qrels/train.tsv:1: score 'relevant' is not an integer"),
    (lambda d: write(d / "corpus.jsonl", ""), "corpus.jsonl: no passages"),
    (lambda d: write(d / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq-volcano-1\tvolcano-02\t0\n"),
     "no query of split 'train' has a judgement with score > 0"),
    (lambda d: write(d / "corpus.jsonl", (d / "corpus.jsonl").read_bytes().replace(b"Earth's", b"Earth\xe9s", 1)),
     "corpus.jsonl:1: not UTF-8: byte 0xe9"),
    (lambda d: write(d / "corpus.jsonl", (d / "corpus.jsonl").read_bytes()[:-150]), "corpus.jsonl:300: malformed JSON"),
    (lambda d: write(d / "queries.jsonl", (d / "queries.jsonl").read_text().replace('"q-volcano-1"', '"  "', 1)),
     "queries.jsonl:1: empty _id"),
    (lambda d: write(d / "corpus.jsonl", (d / "corpus.jsonl").read_text().replace('"volcano-01"', '" "', 1)),
     "corpus.jsonl:1: empty _id"),
    (lambda d: write(d / "queries.jsonl", (d / "queries.jsonl").read_bytes()[:-40]), "queries.jsonl:120: malformed JSON"),
    (lambda d: write(d / "qrels" / "train.tsv", (d / "qrels" / "train.tsv").read_bytes().rstrip(b"\n")[:-6]),
     "qrels/train.tsv:62: expected 3 tab-separated columns"),
])
def test_bad_input_fails_with_its_file_and_line(tiny_bert_dir, tmp_path, data, spoil, message):
    spoil(data)
    out = run_script("train.py", args(tiny_bert_dir, tmp_path, data), fails=True)
    assert message in out
    assert_cache_clean(tmp_path / "cache")


def test_a_byte_order_mark_is_read_not_refused(tiny_bert_dir, tmp_path, data):
    """Files written on Windows often start with one."""
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv"):
        write(data / name, b"\xef\xbb\xbf" + (data / name).read_bytes())
    run_script("mine.py", [*tiny_overrides(tiny_bert_dir, tmp_path, groups=("teacher",)), "data=local",
                           f"data.path={data}", "candidates.depth=10", f"hydra.run.dir={tmp_path / 'run'}"])


def test_a_missing_model_folder_is_named_not_looked_up_on_the_hub(tmp_path, data):
    out = run_script("evaluate.py", ["data=local", f"data.path={data}", "model.name_or_path=/no/such/model",
                                     f"hydra.run.dir={tmp_path / 'run'}"], fails=True)
    assert "model path not found: /no/such/model" in out and "Repo id" not in out


def test_a_missing_data_path_says_how_to_give_one(tmp_path):
    out = run_script("train.py", ["data=local", f"hydra.run.dir={tmp_path / 'run'}"], fails=True)
    assert "data.path is not set: give the dataset's folder" in out and "MissingMandatoryValue" not in out


class _Payload:
    """Unpickling this writes a file: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_checkpoint_that_runs_code_is_refused(tiny_bert_dir, tmp_path, data):
    """Resuming from someone else's run folder: its last.ckpt loads as weights, and names as the best checkpoint a
    sibling file that would run code when unpickled. Nothing is unpickled beyond weights, so nothing runs."""
    common = [*tiny_overrides(tiny_bert_dir, tmp_path), "data=local", f"data.path={data}", "trainer.max_epochs=1",
              "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "validate_before_training=false",
              "test_after_training=false"]
    run_script("train.py", common + [f"hydra.run.dir={tmp_path / 'theirs'}"])
    planted = tmp_path / "planted"
    planted.mkdir()
    marker, evil = tmp_path / "marker.txt", planted / "best.ckpt"
    torch.save({"state_dict": _Payload(marker)}, evil)
    checkpoint = torch.load(tmp_path / "theirs" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, state in checkpoint["callbacks"].items():
        if key.startswith("ModelCheckpoint") and "val/ndcg@10" in key:  # the best so far, which no epoch can beat
            best = torch.tensor(2.0)
            state.update(dirpath=str(planted), best_model_path=str(evil), best_model_score=best,
                         best_k_models={str(evil): best}, kth_best_model_path=str(evil), kth_value=best)
    torch.save(checkpoint, planted / "last.ckpt")
    out = run_script("train.py", common + ["trainer.max_epochs=2", f"ckpt_path={planted / 'last.ckpt'}",
                                           f"hydra.run.dir={tmp_path / 'mine'}"], fails=True)
    assert not marker.exists() and "Weights only load failed" in out
    out = run_script("train.py", common + [f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'again'}"], fails=True)
    assert not marker.exists() and "Weights only load failed" in out


def test_damaged_cache_files_are_refused_or_mined_again(tiny_bert_dir, tmp_path, data):
    """NaN scores in a candidates file are refused by name; a candidates file cut short is mined again; a cut
    embedding shard is refused by name (shards are written atomically: only something outside cuts one)."""
    mine = [*tiny_overrides(tiny_bert_dir, tmp_path, groups=("teacher",)), "data=local", f"data.path={data}",
            "candidates.depth=10", "candidates.shard_size=100", f"hydra.run.dir={tmp_path / 'run'}"]
    run_script("mine.py", mine)
    (table,) = (tmp_path / "cache").glob("candidates/*/*/candidates.parquet")
    good = table.read_bytes()
    rows = pq.read_table(table).to_pydict()
    rows["neg_scores"][3][0] = float("nan")
    pq.write_table(pa.Table.from_pydict(rows, schema=pq.read_schema(table)), table)
    assert f"{table}: 1 neg scores are NaN or infinite" in run_script("train.py", args(
        tiny_bert_dir, tmp_path, data, "candidates.depth=10", "candidates.shard_size=100"), fails=True)
    write(table, good[: len(good) // 2])
    run_script("mine.py", mine)  # read as incomplete: mined again, whole
    assert pq.read_table(table).num_rows == len(rows["query_id"])
    assert_cache_clean(tmp_path / "cache", mined=True)
    shard = next((tmp_path / "cache").glob("embeddings/*/passage-*/shard-00001.npy"))
    write(shard, shard.read_bytes()[:-100])
    for manifest in (tmp_path / "cache").glob("candidates/*/*/manifest.json"):
        manifest.unlink()  # so the shards are read again
    assert f"{shard}: unreadable" in run_script("mine.py", mine, fails=True)


GATED_MINE = """
import runpy, sys, time
from pathlib import Path
import pa_retriever.tasks.mine, hydra  # the slow imports, before the common start
gate, name = Path(sys.argv[1]), sys.argv[2]
(gate.parent / f"ready-{name}").touch()
while not gate.exists():
    time.sleep(0.01)
sys.argv = ["mine.py", *sys.argv[3:]]
runpy.run_path("mine.py", run_name="__main__")
"""


def test_two_jobs_on_one_cache_split_the_encoding(tiny_bert_dir, tmp_path, data):
    """Started together, two mine.py runs encode each shard once between them and write one candidates file."""
    common = [*tiny_overrides(tiny_bert_dir, tmp_path, groups=("teacher",)), "data=local", f"data.path={data}",
              "candidates.depth=10", "candidates.shard_size=10"]
    gate = tmp_path / "gate"
    jobs = [subprocess.Popen([sys.executable, "-c", GATED_MINE, str(gate), name, *common,
                              f"hydra.run.dir={tmp_path / name}"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name in ("a", "b")]
    # Imports take seconds and vary under load: without a common start, one job may find the other's finished
    # candidates and encode nothing, which tests nothing.
    deadline = time.monotonic() + 300
    try:
        while not all((tmp_path / f"ready-{name}").exists() for name in ("a", "b")):
            assert time.monotonic() < deadline and all(job.poll() is None for job in jobs), "a job died before the gate"
            time.sleep(0.05)
    finally:
        gate.touch()  # never leave a job waiting
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    encoded = [int(n) for out in outputs for n in re.findall(r"this process encoded (\d+) of 30 passage shards", out)]
    assert len(encoded) == 2 and sum(encoded) == 30, encoded  # 300 passages in shards of 10, each encoded once
    assert len(list((tmp_path / "cache").glob("candidates/*/*/candidates.parquet"))) == 1
    assert_cache_clean(tmp_path / "cache", mined=True)
    reports = [json.loads((tmp_path / name / "mining_stats.json").read_text())["methods"] for name in ("a", "b")]
    assert reports[0] == reports[1]


def test_no_code_loads_a_checkpoint_unsafely():
    """Loading anything from disk is weights-only by construction."""
    sources = [*(ROOT / "src").rglob("*.py"), *ROOT.glob("*.py"), *(ROOT / "bench").glob("*.py")]
    unsafe = "weights_only=" + "False"  # spelled apart, so that grep finds it nowhere in the repository
    assert not [p for p in sources if unsafe in p.read_text()]
