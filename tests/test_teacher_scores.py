"""Teacher scores used beyond filtering: a cross-encoder teacher, distillation losses, positive-aware masking of
in-batch negatives, and filters that combine."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import ROOT, run_script, tiny_overrides
from pa_retriever.mining.methods import MiningMethod, keep_mask
from pa_retriever.training.loss import InBatchFilter, contrastive_loss, distillation_losses
from pa_retriever.utils.checks import SettingError

NAN = float("nan")


# --- distillation, by hand ------------------------------------------------------------------------------------

def one_query(student_cosines: list[float], teacher_scores: list[float]):
    """A query at (1, 0) and passages at the given cosines to it (unit vectors in 2-d)."""
    queries = torch.tensor([[1.0, 0.0]])
    passages = torch.tensor([[c, math.sqrt(1 - c * c)] for c in student_cosines])
    return queries, passages, torch.tensor([teacher_scores])


def test_kl_and_margin_mse_equal_their_hand_computed_values():
    queries, passages, teacher = one_query([0.5, 0.25, 0.0], [2.0, 1.0, NAN])  # the last slot has no score
    terms = distillation_losses(queries, passages, teacher, temperature=0.5, teacher_temperature=2.0)
    z, y = [1.0, 0.5], [1.0, 0.5]  # student 0.5/0.5, 0.25/0.5; teacher 2/2, 1/2: the same logits
    assert terms["kl"].item() == pytest.approx(0.0, abs=1e-7)
    assert terms["margin_mse"].item() == pytest.approx(((z[0] - z[1]) - (y[0] - y[1])) ** 2, abs=1e-7)

    queries, passages, teacher = one_query([0.5, 0.25, 0.0], [3.0, 1.0, 0.0])
    terms = distillation_losses(queries, passages, teacher, temperature=0.5, teacher_temperature=1.0)
    z, y = np.array([1.0, 0.5, 0.0]), np.array([3.0, 1.0, 0.0])
    p = np.exp(y) / np.exp(y).sum()
    log_q = z - np.log(np.exp(z).sum())
    assert terms["kl"].item() == pytest.approx(float((p * (np.log(p) - log_q)).sum()), rel=1e-6)
    margins = (z[0] - z[1:]) - (y[0] - y[1:])
    assert terms["margin_mse"].item() == pytest.approx(float((margins ** 2).mean()), rel=1e-6)


def test_a_query_without_a_scored_positive_and_negative_adds_nothing():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    passages = torch.nn.functional.normalize(torch.randn(4, 2), dim=-1)
    teacher = torch.tensor([[1.0, NAN], [NAN, NAN]])  # nothing to distil from either
    terms = distillation_losses(queries, passages, teacher, 0.05, 0.05)
    (terms["kl"] + terms["margin_mse"]).backward()
    assert terms["kl"].item() == 0 and terms["margin_mse"].item() == 0 and torch.isfinite(queries.grad).all()


# --- positive-aware masking of in-batch negatives, by hand ----------------------------------------------------

def test_an_in_batch_negative_too_close_to_the_positive_leaves_the_softmax():
    # Queries e1 and e2 with a positive and one negative each; a passage's first two coordinates are its cosines to
    # them. Query 0: positive 0.8, in-batch 0.78 (query 1's positive, within 0.05 of 0.8: masked) and 0.1.
    # Query 1: positive 0.6, in-batch 0.1 and 0.3 (far below: nothing masked).
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cosines = [(0.8, 0.1), (0.2, 0.3), (0.78, 0.6), (0.1, 0.2)]
    p = torch.tensor([[a, b, math.sqrt(1 - a * a - b * b)] for a, b in cosines])
    idx = torch.tensor([[10, 11], [12, 13]])
    t = 0.1
    plain, _ = contrastive_loss(q, p, idx, idx[:, :1], temperature=t)
    masked, stats = contrastive_loss(q, p, idx, idx[:, :1], temperature=t,
                                     in_batch_filter=InBatchFilter("marginpos", margin=0.05))
    row0, row1 = (torch.tensor([c[i] for c in cosines]) / t for i in (0, 1))
    query0 = -(row0[0] - torch.logsumexp(row0[[0, 1, 3]], 0))  # column 2 gone
    query1 = -(row1[2] - torch.logsumexp(row1, 0))
    assert masked.item() == pytest.approx(((query0 + query1) / 2).item(), rel=1e-6)
    assert masked.item() < plain.item() and stats["in_batch_masked"].item() == 0.5  # one column, for one query

    # The same rule by the teacher's embeddings, which see column 3 as close to query 0 as its positive.
    guide_q, guide_p = torch.eye(2), torch.tensor([[1.0, 0.0], [0.3, 0.3], [0.0, 1.0], [1.0, 0.0]])
    by_teacher, stats = contrastive_loss(q, p, idx, idx[:, :1], temperature=t, guide=(guide_q, guide_p),
                                         in_batch_filter=InBatchFilter("percpos", perc=0.95, scorer="teacher"))
    query0 = -(row0[0] - torch.logsumexp(row0[[0, 1, 2]], 0))  # column 3 gone (1.0 >= 0.95 x 1.0)
    assert by_teacher.item() == pytest.approx(((query0 + query1) / 2).item(), rel=1e-6)
    assert stats["in_batch_masked"].item() == 0.5


# --- the new terms under DDP --------------------------------------------------------------------------------

BATCH, GROUP, DIM = 4, 3, 8


def make_batch():
    g = torch.Generator().manual_seed(0)
    queries, passages = torch.randn(BATCH, DIM, generator=g), torch.randn(BATCH * GROUP, DIM, generator=g)
    passage_idx = torch.arange(BATCH * GROUP).reshape(BATCH, GROUP) + 100
    teacher = torch.randn(BATCH, GROUP, generator=g)
    teacher[1, 2] = NAN  # a slot without a stored score
    guide = torch.randn(BATCH, DIM, generator=g), torch.randn(BATCH * GROUP, DIM, generator=g)
    return queries, passages, passage_idx, teacher, guide


def combined_loss_and_grads(rows: slice, in_batch_filter: InBatchFilter):
    queries, passages, passage_idx, teacher, guide = make_batch()
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.Tanh(), torch.nn.Linear(DIM, DIM))
    groups = slice(rows.start * GROUP, rows.stop * GROUP)
    q = torch.nn.functional.normalize(net(queries[rows]), dim=-1)
    p = torch.nn.functional.normalize(net(passages[groups]), dim=-1)
    infonce, _ = contrastive_loss(q, p, passage_idx[rows], passage_idx[rows, :1], 0.1, True, in_batch_filter,
                                  (guide[0][rows], guide[1][groups]))
    terms = distillation_losses(q, p, teacher[rows], 0.1, 0.5)
    loss = infonce + 0.5 * terms["kl"] + 0.25 * terms["margin_mse"]
    loss.backward()
    return loss.detach(), [param.grad.clone() for param in net.parameters()]


def ddp_worker(rank, world, init_file, in_batch_filter, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    share = BATCH // world
    loss, grads = combined_loss_and_grads(slice(rank * share, (rank + 1) * share), in_batch_filter)
    for grad in grads:  # what DDP does with the gradients
        dist.all_reduce(grad)
        grad /= world
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss)
    results[rank] = (torch.stack(losses).mean(), grads)
    dist.destroy_process_group()


@pytest.mark.parametrize("in_batch_filter", [InBatchFilter("percpos", perc=0.5),
                                             InBatchFilter("marginpos", margin=0.5, scorer="teacher")])
def test_two_processes_with_distillation_and_masking_equal_one_process(in_batch_filter, tmp_path):
    expected_loss, expected_grads = combined_loss_and_grads(slice(0, BATCH), in_batch_filter)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(ddp_worker, args=(2, str(tmp_path / "rendezvous"), in_batch_filter, results), nprocs=2,
                           start_method="spawn")
        for rank in range(2):
            loss, grads = results[rank]
            torch.testing.assert_close(loss, expected_loss)
            for got, want in zip(grads, expected_grads):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# --- filters that combine ----------------------------------------------------------------------------------

def test_a_rank_window_a_score_window_and_a_margin_combine():
    scores = np.array([[0.95, 0.9, 0.7, 0.6, 0.5, 0.3, 0.1]], dtype=np.float32)
    ranks = np.arange(7)[None, :]
    pos = np.array([0.8])
    method = MiningMethod("window", 2, filter="marginpos", margin=0.15, min_rank=1, max_rank=6, min_score=0.4,
                          max_score=0.9)
    # rank 0 out of the window, 0.9 at the ceiling, 0.7 within the margin (>= 0.65), 0.3 under the floor, rank 6 out
    assert np.flatnonzero(keep_mask(scores, ranks, pos, method)).tolist() == [3, 4]
    assert np.flatnonzero(keep_mask(scores, ranks, pos, MiningMethod("w", 2, min_rank=2, max_rank=4))).tolist() == [
        2, 3]
    for bad in ({"min_rank": 3, "max_rank": 3}, {"min_score": 0.5, "max_score": 0.5}, {"min_rank": -1}):
        with pytest.raises(SettingError):
            MiningMethod("bad", 2, **bad)


# --- the cross-encoder teacher ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_cross_encoder(tiny_bert_dir, tmp_path_factory) -> Path:
    """A random one-label BERT classifier saved as sentence-transformers saves a CrossEncoder."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    raw = tmp_path_factory.mktemp("tiny_ce_raw")
    config = BertConfig.from_pretrained(tiny_bert_dir, num_labels=1)
    torch.manual_seed(7)
    BertForSequenceClassification(config).save_pretrained(raw)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(raw)
    out = tmp_path_factory.mktemp("tiny_ce")
    CrossEncoder(str(raw), max_length=64).save_pretrained(str(out))
    return out


def test_cross_encoder_scores_equal_cross_encoder_predict(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    from pa_retriever.data.beir import LoadReport, RetrievalData
    from pa_retriever.encode.encoder import EncodeSettings
    from pa_retriever.mining.cross_encoder import CrossEncoderTeacher

    passages = ["Magma rises because it is less dense than the rock around it.", "Tides follow the moon.",
                "Bread rises as yeast makes carbon dioxide " * 20, "short"]
    queries = ["why does magma rise", "what moves the tides of the sea"]
    data = RetrievalData([f"p{i}" for i in range(4)], passages, ["q0", "q1"], queries, {}, LoadReport("t"))
    teacher = CrossEncoderTeacher("ce", str(tiny_cross_encoder), first_stage=None,
                                  settings=EncodeSettings(device="cpu", precision="fp32", progress=False),
                                  max_length=64, batch_size=3)
    teacher.first_stage = type("NoSearch", (), {"prepare": lambda *a, **k: None})()
    teacher.prepare(data, queries)
    idx = np.array([[0, 2, -1, 3], [1, 0, 2, 3]])
    ours = teacher.pair_scores(np.array([0, 1]), idx)
    pairs = [(queries[r], passages[p]) for r in range(2) for p in idx[r] if p >= 0]
    theirs = CrossEncoder(str(tiny_cross_encoder), max_length=64).predict(pairs, batch_size=2)
    assert teacher.activation == "sigmoid" and np.isnan(ours[0, 2])
    np.testing.assert_allclose(ours[idx >= 0], theirs, rtol=1e-5, atol=1e-6)


def candidates_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("candidates/*/cross_encoder-*/candidates.parquet"))


def test_cross_encoder_mining_killed_mid_way_resumes_to_the_identical_file(tiny_bert_dir, tiny_cross_encoder,
                                                                          tmp_path):
    """kill -9 once a few parts of 3 queries are scored, run again: the file of an unbroken run, byte for byte."""
    args = [*tiny_overrides(tiny_bert_dir, tmp_path, groups=()), "teacher=cross_encoder",
            f"teacher.name_or_path={tiny_cross_encoder}", f"teacher.first_stage.name_or_path={tiny_bert_dir}",
            "teacher.max_length=64", "teacher.batch_size=16", "candidates.query_chunk=3", "candidates.depth=40",
            "false_negative_probe=false"]
    run_script("mine.py", args + [f"paths.cache_dir={tmp_path / 'clean'}", f"hydra.run.dir={tmp_path / 'a'}"])
    cache = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "mine.py"), *args, f"paths.cache_dir={cache}",
                             f"hydra.run.dir={tmp_path / 'b'}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(list(cache.glob("candidates/*/*/parts/part-*.npz"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(cache.glob("candidates/*/*/parts/part-*.npz")))
    assert 3 <= done < 20 and not candidates_files(cache), "kill -9 should land while the pairs are being scored"
    run_script("mine.py", args + [f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'c'}"])
    assert candidates_files(cache)[0].read_bytes() == candidates_files(tmp_path / "clean")[0].read_bytes()
    assert not list(cache.rglob("*.tmp")) and not list(cache.glob("candidates/*/*/parts"))
    manifest = json.loads((candidates_files(cache)[0].parent / "manifest.json").read_text())
    assert manifest["teacher_kind"] == "cross_encoder" and manifest["teacher_first_stage"]["kind"] == "dense"


# --- through train.py ----------------------------------------------------------------------------------------

def test_training_distils_and_masks_by_the_teacher(tiny_bert_dir, tmp_path):
    run = tmp_path / "run"
    run_script("train.py", [*tiny_overrides(tiny_bert_dir, tmp_path), "debug=limit", f"hydra.run.dir={run}",
                            "test_after_training=false", "validate_before_training=false", "module.loss.kl=1",
                            "module.loss.margin_mse=0.5", "module.loss.infonce=0.5",
                            "module.in_batch_filter={filter: percpos, perc: 0.5, scorer: teacher}"])
    import csv
    rows = [r for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r.get("train/kl")]
    assert rows and all(float(r["train/kl"]) >= 0 and r["train/margin_mse"] and r["train/in_batch_masked"]
                        for r in rows)
    first = rows[0]
    expected = 0.5 * float(first["train/infonce"]) + float(first["train/kl"]) + 0.5 * float(first["train/margin_mse"])
    assert float(first["train/loss"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["mining=none", "module.loss.kl=1"], "reads none"),
    (["teacher=bm25", "module.in_batch_filter={filter: marginpos, margin: 0.1, scorer: teacher}"],
     "no embeddings to score in-batch pairs with"),
    (["teacher=small_ensemble", "mining=cross_sample", "module.loss.margin_mse=1"], "choose a single teacher"),
    (["module.loss.infonce=0"], "every weight is 0"),
])
def test_what_the_loss_cannot_read_is_refused(tiny_bert_dir, tmp_path, overrides, message):
    """Refused before any teacher mines: its cache stays empty."""
    out = run_script("train.py", [*tiny_overrides(tiny_bert_dir, tmp_path, groups=("model",)), "debug=limit", *overrides,
                                  f"hydra.run.dir={tmp_path / 'run'}"], fails=True)
    assert message in out and not (tmp_path / "cache").exists()
