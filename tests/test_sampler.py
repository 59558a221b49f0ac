"""The per-epoch sampler: ranks partition each epoch, negatives depend only on (seed, epoch, query)."""

import numpy as np
import pytest
from helpers import compose_cfg, tiny_overrides
from torch.utils.data import DataLoader

from pa_retriever.training.sampling import EpochSampler


def test_ranks_partition_an_epoch_and_epochs_reshuffle():
    per_rank = [list(EpochSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(items) == 4 for items in per_rank)  # 10 wraps to 12: equal batches on every rank
    indices = [i for items in per_rank for i, _ in items]
    assert set(indices) == set(range(10)) and len(indices) == 12
    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert first == list(EpochSampler(10, seed=3))
    sampler.set_epoch(1)
    second = list(sampler)
    assert [e for _, e in second] == [1] * 10 and [i for i, _ in second] != [i for i, _ in first]


@pytest.fixture
def datamodule(tiny_bert_dir, tmp_path):
    from pa_retriever.tasks.train import build
    cfg = compose_cfg("train", tiny_overrides(tiny_bert_dir, tmp_path) + ["mining=sampled_topk"], tmp_path / "run")
    dm = build(cfg).datamodule
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_negatives_are_the_same_in_workers_and_rotate_by_epoch(datamodule):
    dataset = datamodule.train_set.parts[0]
    keys = [(i, 0) for i in range(len(dataset))]
    in_process = [dataset[k].passage_idx for k in keys]
    loader = DataLoader(dataset, batch_size=None, sampler=keys, num_workers=2)
    assert [item.passage_idx for item in loader] == in_process
    next_epoch = [dataset[(i, 1)].passage_idx for i in range(len(dataset))]
    assert next_epoch != in_process  # sampled top-k draws again each epoch
    assert [p[0] for p in next_epoch] == [p[0] for p in in_process]  # same positives


def test_every_pair_is_trained_and_no_negative_is_a_positive(datamodule):
    from pa_retriever.mining.stats import method_stats
    dataset = datamodule.train_set.parts[0]
    assert len(dataset) == 61  # every (query, positive) pair of the demo train split
    short_queries = set()
    for i in range(len(dataset)):
        item = dataset[(i, 0)]
        positives = set(item.positive_idx[item.positive_idx >= 0].tolist())
        assert item.passage_idx[0] in positives and len(item.passage_idx) == 5
        negatives = [p for p in item.passage_idx[1:] if p >= 0]
        assert not positives & set(negatives) and len(set(negatives)) == len(negatives)
        if len(negatives) < 4:
            short_queries.add(int(dataset.pairs[i][0]))
    # A query short of negatives still trains (empty slots are masked), and the shortfall is counted.
    part = datamodule.parts[0]
    stats = method_stats(list(part.source.load(part.train).values()), part.method)
    assert stats.queries_short == len(short_queries)


def test_batches_carry_what_the_loss_needs(datamodule):
    datamodule.trainer = None
    batch = next(iter(datamodule.train_dataloader()))
    size = batch["passage_idx"].shape[0]
    assert batch["passage_idx"].shape == (size, 5)
    assert batch["passages"]["input_ids"].shape[0] == size * 5
    assert batch["queries"]["input_ids"].shape[0] == size
    assert np.all(batch["passages"]["attention_mask"].sum(1).numpy() <= 64)


def test_sampler_resumed_mid_epoch_continues_that_epoch_then_runs_whole_ones():
    straight = EpochSampler(20, seed=3, rank=1, world_size=2)
    straight.set_epoch(1)
    epoch1 = list(straight)
    resumed = EpochSampler(20, seed=3, rank=1, world_size=2)
    resumed.resume(1, items_done=4)
    assert list(resumed) == epoch1[4:] and len(resumed) == len(epoch1)  # Lightning counts whole epochs
    straight.set_epoch(2), resumed.set_epoch(2)
    assert list(resumed) == list(straight)


def test_mid_epoch_checkpoint_refuses_another_batch_size_world_size_or_blend():
    from types import SimpleNamespace

    from pa_retriever.encode.spec import EncoderSpec
    from pa_retriever.mining.methods import MiningMethod
    from pa_retriever.mining.source import NoTeacher
    from pa_retriever.training.datamodule import RetrievalDataModule
    from pa_retriever.training.datamodule import TrainingPart
    part = TrainingPart("unused", None, NoTeacher(), MiningMethod("none", num_negatives=0), EncoderSpec("unused"))
    module = RetrievalDataModule([part], batch_size=16)
    module.trainer = SimpleNamespace(global_rank=0, world_size=1, accumulate_grad_batches=1)
    module.train_set = SimpleNamespace(parts=[range(40)])
    module.load_state_dict({"epoch": 2, "batches_done": 5, "batch_size": 16, "world_size": 1})  # an older checkpoint
    assert module.start == (2, 5)
    assert module._layout() == {"batch_size": 16, "world_size": 1, "dataset_sizes": [40], "blend": "proportional",
                                "weights": None}
    with pytest.raises(ValueError, match="stopped mid-epoch with .*'batch_size': 32"):
        module.load_state_dict({"epoch": 2, "batches_done": 5, "batch_size": 32, "world_size": 1})
    with pytest.raises(ValueError, match="stopped mid-epoch with .*'dataset_sizes': \\[40, 20\\]"):
        module.load_state_dict({"epoch": 2, "batches_done": 5, "batch_size": 16, "world_size": 1,
                                "dataset_sizes": [40, 20]})
    module.load_state_dict({"epoch": 3, "batches_done": 0, "batch_size": 32, "world_size": 4})  # epoch boundary
    assert module.start == (3, 0)


def test_every_process_gets_a_validation_batch_and_every_row_is_encoded():
    """A process without a validation batch leaves the others waiting in the gather of the results."""
    from pa_retriever.encode.tokenizer import TokenStore
    from pa_retriever.training.sampling import encode_batches
    stores = {"query": TokenStore.from_lists([[1, 2]] * 3), "passage": TokenStore.from_lists([[1, 2, 3]] * 5)}
    budget = {"query": 100, "passage": 100}  # one batch of each kind
    for world in (1, 2, 8, 9, 11):
        shares = [encode_batches(stores, budget, rank, world) for rank in range(world)]
        assert all(shares), world
        assert {item for share in shares for batch in share for item in batch} == \
            {("query", r) for r in range(3)} | {("passage", r) for r in range(5)}
