"""GradCache: the loss over the whole batch with the towers run in chunks has the plain loss's value and gradients,
on one process and on two (in-batch negatives gathered across them), and in a real run. With dropout on, its
second pass draws exactly the first pass's masks (which are drawn chunk by chunk, so they differ from one
unchunked pass's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import EXACT_SGD, compose_cfg, run_script, tiny_overrides

from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.towers import Towers
from pa_retriever.training.grad_cache import CachedEncoding
from pa_retriever.training.loss import contrastive_loss

QUERIES = ["why does magma rise", "how is bread made", "what moves the tides", "who founded rome"]
PASSAGES = [f"{word} passage {i} about {topic} and more words here"
            for topic in ("magma", "bread", "tides", "rome") for i, word in enumerate(("a", "the", "one"))]


def towers_and_batch(model_dir: Path, dropout: bool = True) -> tuple[Towers, dict]:
    torch.manual_seed(0)
    spec = EncoderSpec.from_config({"name_or_path": str(model_dir), "query_max_length": 16, "passage_max_length": 24})
    off = None if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    towers = Towers.for_training(spec, config_overrides=off)
    tokenizer = towers.query.tokenizer
    batch = {"queries": tokenizer.pad(tokenizer(QUERIES, "query"), "query"),
             "passages": tokenizer.pad(tokenizer(PASSAGES, "passage"), "passage"),
             "passage_idx": torch.arange(12).reshape(4, 3), "positive_idx": torch.arange(0, 12, 3)[:, None]}
    return towers, batch


def rows(batch: dict, queries: slice) -> dict:
    """The part of a batch that holds the given queries and their passage groups."""
    groups = slice(queries.start * 3, queries.stop * 3)
    return {"queries": {k: v[queries] for k, v in batch["queries"].items()},
            "passages": {k: v[groups] for k, v in batch["passages"].items()},
            "passage_idx": batch["passage_idx"][queries], "positive_idx": batch["positive_idx"][queries]}


def plain(towers: Towers, batch: dict, chunk: int = 10**6) -> tuple[torch.Tensor, dict]:
    """The loss and gradients with one graph over the whole batch (built chunk by chunk when `chunk` is small, so
    that dropout draws what the cached pass draws)."""
    torch.manual_seed(7)
    embed = lambda kind, tokens: torch.cat([towers.tower(kind)(**{k: v[i:i + chunk] for k, v in tokens.items()})  # noqa: E731
                                            for i in range(0, next(iter(tokens.values())).shape[0], chunk)])
    loss = contrastive_loss(embed("query", batch["queries"]), embed("passage", batch["passages"]),
                            batch["passage_idx"], batch["positive_idx"])[0]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in towers.named_parameters() if p.grad is not None}


def cached(towers: Towers, batch: dict, chunk: int) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(7)
    cache = CachedEncoding(lambda kind, tokens: towers.tower(kind)(**tokens), chunk)
    queries, passages = cache.embed("query", batch["queries"]), cache.embed("passage", batch["passages"])
    loss = contrastive_loss(queries, passages, batch["passage_idx"], batch["positive_idx"])[0]
    cache.backward(loss)
    return loss.detach(), {n: p.grad.clone() for n, p in towers.named_parameters() if p.grad is not None}


def assert_same(got: tuple[torch.Tensor, dict], expected: tuple[torch.Tensor, dict]) -> None:
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=0)
    assert got[1].keys() == expected[1].keys()
    for name, grad in expected[1].items():
        torch.testing.assert_close(got[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_cached_loss_and_gradients_equal_the_plain_ones(tiny_bert_dir, chunk):
    towers, batch = towers_and_batch(tiny_bert_dir, dropout=False)
    expected = plain(towers, batch)
    towers.zero_grad()
    assert_same(cached(towers, batch, chunk), expected)


@pytest.mark.parametrize("chunk", [1, 3])
def test_the_second_pass_draws_the_first_pass_dropout_masks(tiny_bert_dir, chunk):
    towers, batch = towers_and_batch(tiny_bert_dir, dropout=True)
    expected = plain(towers, batch, chunk)
    towers.zero_grad()
    assert_same(cached(towers, batch, chunk), expected)


def _worker(rank: int, world: int, init_file: str, model_dir: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    towers, batch = towers_and_batch(Path(model_dir), dropout=False)
    torch.manual_seed(7 + rank)
    loss, grads = cached(towers, rows(batch, slice(2 * rank, 2 * rank + 2)), chunk=1)
    for grad in grads.values():  # what DDP does with the gradients
        dist.all_reduce(grad)
        grad /= world
    results[rank] = (loss, grads)
    dist.destroy_process_group()


def test_two_processes_with_gathered_negatives_equal_one_plain_batch(tiny_bert_dir, tmp_path):
    towers, batch = towers_and_batch(tiny_bert_dir, dropout=False)
    expected_loss, expected = plain(towers, batch)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(2, str(tmp_path / "rendezvous"), str(tiny_bert_dir), results), nprocs=2,
                           start_method="spawn")
        losses = [results[rank][0] for rank in range(2)]
        grads = results[0][1]
    assert_same((sum(losses) / 2, grads), (expected_loss, expected))


def test_a_run_with_grad_cache_trains_the_weights_a_plain_run_does(tiny_bert_dir, tmp_path):
    """The module's backward hook: the same weights after two epochs of fp32 CPU training (dropout off: it draws
    per chunk; SGD: Adam would blow the rounding noise of gradients that are zero in exact arithmetic, such as
    attention key biases', up to full-size steps)."""
    from pa_retriever.tasks.train import train
    common = tiny_overrides(tiny_bert_dir, tmp_path) + EXACT_SGD + [
        "trainer.max_epochs=2", "+trainer.limit_train_batches=2", "trainer.accelerator=cpu"]
    weights = []
    for name, extra in (("plain", []), ("cached", ["module.grad_cache_chunk=5"])):
        train(compose_cfg("train", common + extra, tmp_path / name))
        weights.append(torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_grad_cache_under_ddp_trains_the_weights_a_plain_ddp_run_does(tiny_bert_dir, tmp_path):
    """Two gloo processes: DDP's reducer stays out of the chunked second pass and the module averages the
    gradients itself, to the weights plain DDP reaches (same recipe as the one-process test above)."""
    common = tiny_overrides(tiny_bert_dir, tmp_path) + EXACT_SGD + [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2", "validate_before_training=false"]
    weights = []
    for name, extra in (("plain", []), ("cached", ["module.grad_cache_chunk=3"])):
        run_script("train.py", common + extra + [f"hydra.run.dir={tmp_path / name}"], timeout=900)
        weights.append(torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-5, rtol=1e-4, msg=name)
