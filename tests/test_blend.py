"""Blends of datasets: batches of one dataset each, shares by weight, exact resume, pair data, many test sets, and
mined negatives exported exactly as the sampler trains with them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, compose_cfg, crash_and_resume, run_script, tiny_overrides
from pa_retriever.training.sampling import BlendBatchSampler, EpochSampler


def test_one_dataset_batches_as_the_plain_sampler_does():
    """A single dataset is a blend of one: the batches of a DataLoader over its EpochSampler, resumes included."""
    for world in (1, 2):
        for rank in range(world):
            plain = EpochSampler(61, seed=5, rank=rank, world_size=world)
            plain.set_epoch(3)
            items = list(plain)
            expected = [[(0, i, e) for i, e in items[start:start + 16]] for start in range(0, len(items), 16)]
            blend = BlendBatchSampler([61], 16, seed=5, rank=rank, world_size=world)
            blend.set_epoch(3)
            assert list(blend) == expected and len(blend) == len(expected)
            blend.resume(3, batches_done=2)
            assert list(blend) == expected[2:]


def test_every_batch_is_one_dataset_and_the_shares_follow_the_weights():
    sampler = BlendBatchSampler([300, 100, 40], 8, seed=1, weights=[1, 2, 1])
    shares = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        for batch in sampler:
            parts = {part for part, _, _ in batch}
            assert len(parts) == 1 and len(batch) <= 8
            shares[parts.pop()] += 1
    total = sum(shares.values())
    assert [round(shares[i] / total, 2) for i in range(3)] == [0.25, 0.5, 0.25]
    by_size = BlendBatchSampler([300, 100, 40], 8, seed=1)  # no weights: every item once an epoch
    assert by_size.counts == [38, 13, 5] and sorted(i for b in by_size for p, i, _ in b if p == 2) == list(range(40))


def test_round_robin_takes_the_datasets_in_turn():
    sampler = BlendBatchSampler([30, 100], 10, seed=0, mode="round_robin")
    assert [batch[0][0] for batch in sampler] == [0, 1, 0, 1, 0, 1]


def test_every_process_draws_the_same_dataset_at_a_step():
    """The gathered loss needs every process in the same dataset (and with the same in-batch setting)."""
    plans = []
    for rank in range(2):
        sampler = BlendBatchSampler([50, 23], 4, seed=9, weights=[1, 1], rank=rank, world_size=2)
        sampler.set_epoch(2)
        plans.append([(batch[0][0], len(batch)) for batch in sampler])
    assert plans[0] == plans[1]


def blend_step_losses(rank: int, world: int, init_file: str, results) -> None:
    """The loss at every step of an epoch of a two-dataset blend (the second without in-batch negatives), as this
    process computes it; with two processes, their mean (each holds half of every global batch)."""
    import torch
    import torch.distributed as dist

    from pa_retriever.training.loss import contrastive_loss

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    queries, passages = torch.randn(2, 16, 8, generator=g), torch.randn(200, 8, generator=g)
    sampler = BlendBatchSampler([16, 8], 4 // world, seed=3, weights=[1, 1], rank=rank, world_size=world)
    sampler.set_epoch(1)
    losses = []
    for batch in sampler:
        part = batch[0][0]
        # Positive first, then two negatives: the next items' ids, which are other queries' positives in-batch.
        passage_idx = torch.tensor([[part * 100 + (i + k) % 16 for k in range(3)] for _, i, _ in batch])
        loss, _ = contrastive_loss(torch.nn.functional.normalize(queries[part, [i for _, i, _ in batch]], dim=-1),
                                   torch.nn.functional.normalize(passages[passage_idx.reshape(-1)], dim=-1),
                                   passage_idx, passage_idx[:, :1], in_batch_negatives=part == 0)
        if world > 1:
            gathered = [torch.zeros(()) for _ in range(world)]
            dist.all_gather(gathered, loss)
            loss = torch.stack(gathered).mean()
        losses.append((part, loss.item()))
    results[rank] = losses
    if world > 1:
        dist.destroy_process_group()


def test_a_blend_loss_on_two_processes_equals_one_process(tmp_path):
    """Both processes draw the same dataset at a step and together hold the one-process batch, so the gathered
    loss equals the single-process loss at every step, with and without in-batch negatives."""
    import torch.multiprocessing as mp

    expected = {}
    blend_step_losses(0, 1, "", expected)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(blend_step_losses, args=(2, str(tmp_path / "rendezvous"), results), nprocs=2,
                           start_method="spawn")
        for rank in range(2):
            assert [part for part, _ in results[rank]] == [part for part, _ in expected[0]] and \
                {part for part, _ in expected[0]} == {0, 1}
            np.testing.assert_allclose([loss for _, loss in results[rank]], [loss for _, loss in expected[0]],
                                       rtol=1e-6)


def test_a_blend_resumed_mid_epoch_matches_an_unbroken_run(tiny_bert_dir, tmp_path):
    common = tiny_overrides(tiny_bert_dir, tmp_path) + [
        "data=blend_demo", "trainer.max_epochs=2", "+trainer.limit_train_batches=4", "validate_before_training=false",
        "test_after_training=false", "trainer.accelerator=cpu", "trainer.precision=32-true", "mining=sampled_topk",
        "data.datasets=[{path: ${paths.data_dir}/demo, weight: 1}, {path: ${paths.data_dir}/demo2, weight: 2, "
        "in_batch_negatives: false}]"]
    straight, again = crash_and_resume(common, tmp_path, inside_step=True)
    for name, value in straight.items():
        np.testing.assert_allclose(again[name].numpy(), value.numpy(), atol=1e-6, err_msg=name)


def test_a_blend_trains_under_ddp_on_two_processes(tiny_bert_dir, tmp_path):
    """One dataset without in-batch negatives: every process skips the gather at the same steps, or they would
    wait on each other for ever."""
    run_script("train.py", [*tiny_overrides(tiny_bert_dir, tmp_path), "data=blend_demo", "trainer=ddp",
                            "trainer.accelerator=cpu", "trainer.devices=2", "debug=limit", "test_after_training=false",
                            "validate_before_training=false", f"hydra.run.dir={tmp_path / 'run'}",
                            "data.datasets=[{path: ${paths.data_dir}/demo}, {path: ${paths.data_dir}/demo2, "
                            "in_batch_negatives: false}]"], timeout=900)
    stats = json.loads((tmp_path / "run" / "mining_stats.json").read_text())
    assert set(stats) == {"demo", "demo2"} and (tmp_path / "run" / "model" / "modules.json").is_file()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


PAIRS = [{"query": "why does magma rise", "positive": "Magma is less dense than the rock around it.",
          "negatives": ["Bread rises as yeast makes gas.", "Tides follow the moon."]},
         {"anchor": "how do tides work", "pos": ["Tides follow the moon.", "The sun pulls the seas too."],
          "neg": "Magma is less dense than the rock around it."},
         {"query": "what makes bread rise", "positive": "Bread rises as yeast makes gas."}]


@pytest.mark.parametrize("row, message", [
    ({"positive": "x"}, "pairs.jsonl:2: missing field 'query' (or anchor)"),
    ({"query": "q", "positive": []}, "pairs.jsonl:2: field 'positive' is empty"),
    ({"query": "q", "positive": "x", "negatives": ["x"]}, "pairs.jsonl:2: a negative is also a positive"),
    ({"query": ["a", "b"], "positive": "x"}, "pairs.jsonl:2: field 'query' must be one string"),
    ('{"query": "q", "positive": ', "pairs.jsonl:2: malformed JSON"),
])
def test_pair_data_fails_with_its_file_and_line(tmp_path, row, message):
    from pa_retriever.data.source import DataSource
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIRS[0], row])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataSource(path).load("train")


def test_a_saved_dataset_loads_and_fails_by_row(tmp_path):
    from datasets import Dataset

    from pa_retriever.data.source import DataSource
    Dataset.from_list([{"query": p.get("query") or p.get("anchor"), "positive": p.get("positive") or p["pos"][0]}
                       for p in PAIRS]).save_to_disk(str(tmp_path / "good"))
    data = DataSource(tmp_path / "good").load("train")
    assert data.queries[1] == "how do tides work" and len(data.passages) == 3
    Dataset.from_list([{"query": "q", "positive": "x"}, {"query": "", "positive": "y"}]).save_to_disk(
        str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="bad: row 1: field 'query' must hold non-empty strings"):
        DataSource(tmp_path / "bad").load("train")


def test_given_negatives_are_exported_without_a_score(tmp_path):
    """The data's own negatives are stored at 0 to keep their order: exported, they carry no teacher score."""
    from pa_retriever.data.source import DataSource
    from pa_retriever.mining.export import chosen_negatives
    from pa_retriever.mining.methods import MiningMethod
    from pa_retriever.mining.source import GivenNegatives
    data = DataSource(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)).load("train")
    rows = chosen_negatives(data, GivenNegatives().load(data), MiningMethod(name="naive_topk", num_negatives=2), 0)
    assert rows[0]["neg"] == PAIRS[0]["negatives"] and rows[0]["neg_scores"] == [None, None]


def test_pair_data_trains_with_its_own_negatives_or_mined_ones(tiny_bert_dir, tmp_path):
    """Without a corpus the positives and given negatives are the corpus; teacher=given trains with the file's
    negatives (STS, classification data), any teacher mines among them."""
    from pa_retriever.tasks.train import train
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS * 6)  # repeated rows: queries of one text train as one
    blend = ("data.datasets=[{path: ${paths.data_dir}/demo}, "
             f"{{path: {pairs}, teacher: given, mining: naive_topk, in_batch_negatives: false}}]")
    train(compose_cfg("train", tiny_overrides(tiny_bert_dir, tmp_path) + ["debug=fdr", blend], tmp_path / "given"))
    stats = json.loads((tmp_path / "given" / "mining_stats.json").read_text())
    assert stats["pairs"]["mining/pairs/queries"] == 3 and stats["pairs"]["table"]["neg/query"] == "1.00"
    mined = f"data.datasets=[{{path: {pairs}}}]"
    train(compose_cfg("train", tiny_overrides(tiny_bert_dir, tmp_path) + ["debug=fdr", mined, "data.val_split=null"],
                      tmp_path / "mined"))
    assert (tmp_path / "mined" / "model" / "modules.json").is_file()


def test_exported_negatives_are_those_the_sampler_trains_with_at_epoch_0(tiny_bert_dir, tmp_path):
    from pa_retriever.tasks.mine import mine
    from pa_retriever.tasks.train import build
    common = tiny_overrides(tiny_bert_dir, tmp_path) + ["mining=sampled_topk", "seed=3"]
    mine(compose_cfg("mine", common[:5] + [o for o in common[5:] if o.startswith("teacher")] + [
        "mining=sampled_topk", "seed=3", "export=[jsonl,ntuple,triplet]"], tmp_path / "mined"))
    exported = [json.loads(line) for line in (tmp_path / "mined" / "negatives.jsonl").read_text().splitlines()]
    datamodule = build(compose_cfg("train", common, tmp_path / "run")).datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset, train = datamodule.train_set.parts[0], datamodule.parts[0].train
    assert len(exported) == 60
    for index, (row, _) in enumerate(dataset.pairs):
        item = dataset[(index, 0)]
        assert exported[row]["neg"] == [train.passages[p] for p in item.passage_idx[1:] if p >= 0]
        assert train.passages[item.passage_idx[0]] in exported[row]["pos"]
    from datasets import load_from_disk
    ntuple = load_from_disk(str(tmp_path / "mined" / "negatives_ntuple"))
    assert ntuple.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3", "negative_4"]
    # every (query, positive) pair whose query has a negative (the tiny random teacher leaves some with none), its
    # negatives those of the JSONL row (a short row repeats its own)
    expected = [(row["query"], pos, [row["neg"][i % len(row["neg"])] for i in range(4)])
                for row in exported if row["neg"] for pos in row["pos"]]
    assert [(r["anchor"], r["positive"], [r[f"negative_{i}"] for i in range(1, 5)]) for r in ntuple] == expected
    assert expected
    triplet = load_from_disk(str(tmp_path / "mined" / "negatives_triplet"))
    assert [(r["anchor"], r["positive"], r["negative"]) for r in triplet] == [
        (row["query"], pos, neg) for row in exported for pos in row["pos"] for neg in row["neg"]]


def test_evaluate_scores_many_test_sets_with_their_average(tiny_bert_dir, tmp_path):
    out = tmp_path / "eval"
    stdout = run_script("evaluate.py", ["model=e5", f"model.name_or_path={tiny_bert_dir}", "encode.progress=false",
                                        f"'data.datasets=[{{path: {ROOT / 'data/demo'}}},{{path: {ROOT / 'data/demo2'}}}]'"
                                        .strip("'"), "data.split=test", f"hydra.run.dir={out}"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"demo", "demo2", "average"} and "average" in stdout
    assert metrics["average"]["ndcg@10"] == pytest.approx((metrics["demo"]["ndcg@10"] + metrics["demo2"]["ndcg@10"]) / 2)
    assert (out / "demo2" / "per_query.tsv").is_file() and (out / "ndcg_by_dataset.png").is_file()


def test_evaluate_refuses_a_set_it_cannot_score_before_encoding_any(tiny_bert_dir, tmp_path):
    out = tmp_path / "eval"
    output = run_script("evaluate.py", ["model=e5", f"model.name_or_path={tiny_bert_dir}",
                                        f"data.datasets=[{{path: {ROOT / 'data/demo'}}},"
                                        f"{{path: {ROOT / 'data/demo2'}, split: nosuch}}]",
                                        "data.split=test", f"hydra.run.dir={out}"], fails=True)
    assert "demo2: split 'nosuch' cannot be scored" in output and "qrels/nosuch.tsv" in output
    assert not (out / "demo").exists()  # the first set was not encoded and scored first
