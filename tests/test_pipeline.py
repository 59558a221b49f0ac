"""mine.py, train.py and evaluate.py end to end on the demo data with tiny models (fast_dev_run and friends)."""

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import compose_cfg, crash_and_resume, run_script, tiny_overrides

from pa_retriever.data import DataSource
from pa_retriever.data.candidates import load_candidates, read_manifest
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.mining.source import NoTeacher
from pa_retriever.tasks.mine import mine
from pa_retriever.tasks.train import train

METRICS = ["ndcg@10", "recall@100", "mrr@10", "map@100"]


@pytest.fixture
def tiny(tiny_bert_dir, tmp_path):
    return tiny_overrides(tiny_bert_dir, tmp_path)


def test_mine_stores_every_trainable_query_and_naive_topk_equals_brute_force(tiny_bert_dir, tmp_path):
    tiny = tiny_overrides(tiny_bert_dir, tmp_path, groups=("teacher",))
    cfg = compose_cfg("mine", tiny + ["candidates.depth=20", "candidates.tail=8", "candidates.shard_size=64"], tmp_path / "run")
    report = mine(cfg)
    assert {r["method"] for r in report["methods"]["minilm"]} >= {"naive_topk", "topk_percpos", "random"}
    assert (tmp_path / "run" / "scores_minilm.png").is_file() and (tmp_path / "run" / "mining_stats.json").is_file()

    folder = next((tmp_path / "cache" / "candidates").glob("demo-train/minilm-*"))
    manifest = read_manifest(folder)
    assert manifest["counts"] == {"queries_in_split": 60, "queries_mined": 60, "queries_without_positive": 0,
                                  "queries_merged_by_text": 0, "passages": 300}
    assert manifest["miner"]["depth"] == 20 and manifest["teacher_pooling"] == "mean"
    table = pq.read_table(folder / "candidates.parquet").to_pydict()
    assert list(table) == ["query_id", "pos_ids", "pos_scores", "neg_ids", "neg_scores", "tail_ids", "tail_scores"]

    # Brute force over the very embeddings the miner cached: every score, sort, drop positives, first 20.
    data = DataSource.from_config(cfg.data).load("train")
    mined, free = load_candidates(folder, data.passage_index), NoTeacher().load(data)["no teacher"]
    assert free.query_ids == mined.query_ids and np.array_equal(free.pos_idx, mined.pos_idx)  # baselines: same pairs
    emb_root = tmp_path / "cache" / "embeddings"
    passages = np.concatenate([np.load(p) for p in sorted(emb_root.glob("*/passage-*/shard-*.npy"))]).astype(np.float32)
    queries = np.load(next(emb_root.glob("*/query-*/shard-00000.npy"))).astype(np.float32)
    scores = queries @ passages.T
    for q, qid in enumerate(table["query_id"]):
        positives = set(data.positives(qid))
        assert set(table["pos_ids"][q]) == positives
        order = sorted(range(len(passages)), key=lambda j: (-scores[q, j], j))
        expected = [data.corpus_ids[j] for j in order if data.corpus_ids[j] not in positives][:20]
        assert table["neg_ids"][q] == expected
        np.testing.assert_allclose(table["neg_scores"][q], [scores[q, data.passage_index[p]] for p in expected],
                                   atol=1e-5)
        tail_scores = table["tail_scores"][q]
        assert len(table["tail_ids"][q]) == 8 and tail_scores == sorted(tail_scores, reverse=True)
        assert max(tail_scores) <= min(table["neg_scores"][q]) + 1e-6
        assert not positives & set(table["tail_ids"][q])


def test_mine_counts_the_false_negatives_each_method_would_train_on(tiny_bert_dir, tmp_path):
    """The demo lists 9 false negatives of train queries and has one train query with two positives (held out)."""
    cfg = compose_cfg("mine", tiny_overrides(tiny_bert_dir, tmp_path, groups=("teacher",)) + ["candidates.depth=20"],
                      tmp_path / "run")
    probe = mine(cfg)["false_negatives"]["minilm"]
    picks = {source: {p["method"]: p for p in rows} for source, rows in probe.items()}
    assert picks["listed false negatives"]["naive_topk"]["queries"] == 9
    assert picks["held-out positives"]["naive_topk"]["queries"] == 1
    assert len(picks["held-out positives"]) == 8  # every method of the statistics
    for source in ("listed", "held-out"):
        assert (tmp_path / "run" / f"false_negatives_minilm_{source}.png").is_file()
    assert len(list((tmp_path / "cache" / "candidates").glob("demo-train/minilm-*"))) == 1  # no second mining


def test_train_fast_dev_run_exports_and_evaluates(tiny, tmp_path):
    cfg = compose_cfg("train", tiny + ["debug=fdr", "module.config_overrides={attention_probs_dropout_prob: 0.0}",
                                       "data.split=dev+test"], tmp_path / "run")  # a joined split is scored too
    metrics = train(cfg)
    run = tmp_path / "run"
    assert sorted(json.loads((run / "metrics.json").read_text())) == sorted(METRICS)
    assert set(metrics) == set(METRICS) | {f"val/{name}" for name in METRICS}  # the export's, then validation's
    assert (run / "model" / "modules.json").is_file() and (run / "mining_scores.png").is_file()
    assert json.loads((run / "model" / "config.json").read_text())["attention_probs_dropout_prob"] == 0.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_seconds"] > 0 and summary["mining_seconds"]["minilm"] > 0
    assert summary["train_pairs"] == 61 and summary["metrics"] == {k: metrics[k] for k in METRICS}  # 60 queries, one with two positives
    assert summary["metrics_precision"] == EncodeSettings.from_config(cfg.encode).precision_name()  # said, resolved


def test_a_student_that_cannot_be_exported_is_refused_before_training(tiny_nv_embed_dir, tmp_path):
    cfg = compose_cfg("train", tiny_overrides(tiny_nv_embed_dir, tmp_path, groups=()) + [
        "model=nv_embed", f"model.name_or_path={tiny_nv_embed_dir}"], tmp_path / "run")
    with pytest.raises(ValueError, match="cannot be exported"):
        train(cfg)
    assert not (tmp_path / "cache").exists()  # refused before mining, let alone training


def test_an_ensemble_method_needs_an_ensemble_teacher(tiny, tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="mining=cross_sample combines teachers, and teacher=minilm is one"):
        train(compose_cfg("train", tiny + ["debug=fdr", "mining=cross_sample"], tmp_path / "run"))
    with pytest.raises(ValueError, match="teacher=small_ensemble has 2 members, and mining=topk_percpos reads one"):
        train(compose_cfg("train", tiny_overrides(tiny_bert_dir, tmp_path, groups=("model",)) + [
            "debug=fdr", "teacher=small_ensemble"], tmp_path / "run"))
    assert not (tmp_path / "cache").exists()  # refused before any teacher mined


@pytest.mark.parametrize("method", ["none", "random"])
def test_a_method_that_reads_no_teacher_score_trains_without_mining(tiny, tmp_path, method):
    train(compose_cfg("train", tiny + ["debug=fdr", f"mining={method}"], tmp_path / "run"))
    run = tmp_path / "run"
    assert not (tmp_path / "cache" / "candidates").exists()  # the teacher never ran
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mining_seconds"] == {} and summary["train_pairs"] == 61
    assert (run / "mining_stats.json").is_file() and not (run / "mining_scores.png").exists()
    assert "- teacher: none" in (run / "model" / "README.md").read_text()


def test_evaluate_cli_writes_exactly_the_four_metrics(tiny_bert_dir, tmp_path):
    out = tmp_path / "eval_run"
    stdout = run_script("evaluate.py", ["model=e5", f"model.name_or_path={tiny_bert_dir}", "data.split=dev",
                                        f"hydra.run.dir={out}", "encode.progress=false", "run_depth=10"])
    assert "ndcg@10" in stdout and str(out) in stdout
    assert list(json.loads((out / "metrics.json").read_text())) == METRICS
    assert len((out / "per_query.tsv").read_text().splitlines()) == 31
    assert len((out / "run.trec").read_text().splitlines()) == 300


def test_trained_model_loads_in_sentence_transformers_and_evaluate(tiny_bert_dir, tmp_path, caplog):
    """The exported folder encodes identically in sentence-transformers and in our encoder (prompts included)."""
    from sentence_transformers import SentenceTransformer

    from pa_retriever.encode.spec import EncoderSpec
    from pa_retriever.encode.towers import Towers
    cfg = compose_cfg("train", tiny_overrides(tiny_bert_dir, tmp_path) + ["debug=fdr", "model=e5",
                                                                          f"model.name_or_path={tiny_bert_dir}"],
                      tmp_path / "run")
    train(cfg)
    folder = tmp_path / "run" / "model"
    ours = Towers.load(EncoderSpec.from_folder(folder), EncodeSettings.from_config(cfg.encode))
    assert ours.spec.query_prefix == "query: " and ours.spec.passage_prefix == "passage: "
    assert ours.spec.query_max_length == 32 and ours.spec.passage_max_length == 64
    st = SentenceTransformer(str(folder), device="cpu")
    texts = ["a short one", "a somewhat longer text about volcanoes and the plates under them " * 3]
    np.testing.assert_allclose(ours.encode(texts, "passage", progress=False),
                               st.encode(texts, prompt_name="document"), atol=1e-5)
    np.testing.assert_allclose(ours.encode(texts[:1], "query", progress=False),
                               st.encode(texts[:1], prompt_name="query"), atol=1e-5)
    # a query longer than 32 tokens is where the two part: the model card says so
    card = (folder / "README.md").read_text()
    assert "queries cut at 32 tokens (sentence-transformers cuts every text at 64)" in card
    assert "trained at: queries 32 tokens, passages 64 tokens" in card
    # encoded longer than it was trained, it scores lower: evaluate.py says so
    from pa_retriever.tasks.evaluate import evaluate
    with caplog.at_level(logging.WARNING, logger="pa_retriever.tasks.evaluate"):
        evaluate(compose_cfg("evaluate", ["model=folder", f"model.name_or_path={folder}", "model.passage_max_length=128",
                                          "encode.progress=false", "data.split=dev", "logger=csv"], tmp_path / "eval"))
    assert "trained with passages cut at 64 tokens and is asked to encode them at 128" in caplog.text
    assert "queries cut" not in caplog.text  # queries at their trained 32


def test_resumed_run_matches_an_uninterrupted_one(tiny, tmp_path):
    """Two epochs straight vs one epoch, then resume from its checkpoint: same weights at the end."""
    common = tiny + ["trainer.max_epochs=2", "+trainer.limit_train_batches=3", "validate_before_training=false",
                     "test_after_training=false", "trainer.accelerator=cpu", "trainer.precision=32-true",
                     "mining=sampled_topk"]
    train(compose_cfg("train", common, tmp_path / "straight"))
    interrupted = common + ["+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=0"]
    train(compose_cfg("train", interrupted, tmp_path / "first"))
    resumed = compose_cfg("train", common + [f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"],
                          tmp_path / "resumed")
    train(resumed)
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    again = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in straight.items():
        torch.testing.assert_close(again[name], value, msg=name)
    losses = [_last_loss(tmp_path / run) for run in ("straight", "resumed")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


@pytest.mark.parametrize("inside_step,workers", [(False, 0), (True, 0), (False, 2)])
def test_run_resumed_mid_epoch_matches_an_uninterrupted_one(tiny, tmp_path, inside_step, workers):
    """A crash inside an epoch (between steps, or inside one after its forward drew dropout masks), then resume
    from the checkpoint it left: the epoch's remaining batches, not its first ones again, with the same masks,
    so the weights end where an unbroken run's do; also with loader workers and validation every epoch."""
    common = tiny + ["trainer.max_epochs=2", "+trainer.limit_train_batches=3", "validate_before_training=false",
                     "test_after_training=false", "trainer.accelerator=cpu", "trainer.precision=32-true",
                     "mining=sampled_topk", f"datamodule.num_workers={workers}"]
    if workers:  # a third epoch: a draw made by the resumed run's first validation would show in its masks
        common += ["data.val_split=dev", "+trainer.limit_val_batches=2", "trainer.max_epochs=3"]
    straight, again = crash_and_resume(common, tmp_path, inside_step)
    for name, value in straight.items():
        torch.testing.assert_close(again[name], value, msg=name)


def test_resumed_run_keeps_the_best_epoch_from_before_the_interruption(tiny, tmp_path):
    """Epoch 0 validates best; the run stops after it and resumes in a new run dir: epoch 1 must not become the
    best (and exported) model only because the best score so far was forgotten."""
    from safetensors.torch import load_file
    common = tiny + ["trainer.max_epochs=2", "+trainer.limit_train_batches=2", "validate_before_training=false",
                     "test_after_training=false", "trainer.accelerator=cpu", "trainer.precision=32-true",
                     "+callbacks.worse._target_=helpers.WorseAtEpoch", "+callbacks.worse.epoch=1"]
    train(compose_cfg("train", common, tmp_path / "straight"))
    stopped = common + ["+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=0"]
    train(compose_cfg("train", stopped, tmp_path / "first"))
    train(compose_cfg("train", common + [f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"],
                            tmp_path / "resumed"))
    assert [p.name[:7] for p in (tmp_path / "first" / "checkpoints").glob("epoch*")] == ["epoch00"]
    exported = [load_file(tmp_path / run / "model" / "model.safetensors") for run in ("straight", "resumed")]
    for name, value in exported[0].items():
        torch.testing.assert_close(exported[1][name], value, msg=name)


def _last_loss(run):
    import csv
    rows = [r for r in csv.DictReader(open(run / "csv" / "metrics.csv")) if r.get("train/loss")]
    return float(rows[-1]["train/loss"])


def test_untied_towers_export_and_evaluate_as_trained(tiny_bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from pa_retriever.encode.spec import EncoderSpec
    from pa_retriever.encode.towers import Towers
    cfg = compose_cfg("train", tiny_overrides(tiny_bert_dir, tmp_path) + [
        "debug=limit", "module.shared_weights=false", "module.optimizer.lr=1e-3", "validate_before_training=false"],
        tmp_path / "run")
    metrics = train(cfg)
    folder = tmp_path / "run" / "model"
    encoder = Towers.load(EncoderSpec.from_folder(folder), EncodeSettings.from_config(cfg.encode))
    assert encoder.passage is not None and set(METRICS) <= set(metrics)
    texts = ["volcanoes and plates", "a passage about how bread rises in the oven"]
    as_query, as_passage = encoder.encode(texts, "query", progress=False), encoder.encode(texts, "passage", progress=False)
    assert np.abs(as_query - as_passage).max() > 1e-3  # the towers were trained apart
    np.testing.assert_allclose(as_passage, SentenceTransformer(str(folder / "passage_encoder")).encode(texts),
                               atol=1e-5)
    np.testing.assert_allclose(as_query, SentenceTransformer(str(folder)).encode(texts), atol=1e-5)
    # Trained on from that folder, each tower starts from its own weights; sharing one would lose the other.
    from safetensors.torch import load_file

    again = Towers.for_training(EncoderSpec.from_folder(folder), shared_weights=False)
    for tower, saved in ((again.query, folder), (again.passage, folder / "passage_encoder")):
        weights = tower.model.state_dict()
        for name, value in load_file(saved / "model.safetensors").items():
            torch.testing.assert_close(weights[name], value, msg=name)
    with pytest.raises(ValueError, match="has its own passage tower"):
        Towers.for_training(EncoderSpec.from_folder(folder), shared_weights=True)


def test_a_teacher_retrained_in_place_is_mined_again(tiny_bert_dir, tmp_path):
    """A round-one model overwritten by a new round one must not be served the old model's cached candidates."""
    import shutil

    from transformers import AutoModel
    folder = tmp_path / "round1"
    shutil.copytree(tiny_bert_dir, folder)
    overrides = tiny_overrides(folder, tmp_path, groups=("teacher",)) + ["candidates.depth=10", "candidates.tail=4"]
    mine(compose_cfg("mine", overrides, tmp_path / "run1"))
    model = AutoModel.from_pretrained(folder)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    model.save_pretrained(folder)  # retrained, same place
    mine(compose_cfg("mine", overrides, tmp_path / "run2"))
    assert len(list((tmp_path / "cache" / "candidates").glob("demo-train/minilm-*"))) == 2
    assert len(list((tmp_path / "cache" / "embeddings").glob("*"))) == 2
