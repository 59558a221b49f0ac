"""module.compile: towers through torch.compile train as the eager ones do (same loss and gradients, batch after
batch of other lengths), and keep their weights' names, so checkpoints and exports match."""

from __future__ import annotations

import pytest
import torch

from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.towers import Towers
from pa_retriever.training.loss import contrastive_loss

QUERIES = ["why does magma rise", "how is bread made today in most of the bakeries of the world"]
PASSAGES = ["magma rises because it is less dense", "a passage on the tides", "bread is made from flour and water",
            "rome was not built in a day, nor in a week"]


def loss_and_gradients(towers: Towers, queries: list[str], passages: list[str]) -> tuple[float, dict]:
    tokenizer = towers.query.tokenizer
    embed = lambda kind, texts: towers.tower(kind)(**tokenizer.pad(tokenizer(texts, kind), kind))  # noqa: E731
    passage_idx = torch.arange(len(passages)).reshape(len(queries), -1)
    loss = contrastive_loss(embed("query", queries), embed("passage", passages), passage_idx, passage_idx[:, :1])[0]
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in towers.named_parameters() if p.grad is not None}
    towers.zero_grad()
    return loss.item(), gradients


@pytest.mark.slow  # compiling forward and backward takes about a minute on 2 cores
def test_compiled_towers_train_as_eager_ones(tiny_bert_dir):
    spec = EncoderSpec.from_config({"name_or_path": str(tiny_bert_dir), "query_max_length": 16,
                                    "passage_max_length": 24})
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    eager = Towers.for_training(spec, config_overrides=no_dropout)
    compiled = Towers.for_training(spec, config_overrides=no_dropout, compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for cut in (None, 1):  # a second batch of other lengths and sizes
        queries, passages = QUERIES[:cut], PASSAGES[:2 if cut else None]
        want, want_gradients = loss_and_gradients(eager, queries, passages)
        got, got_gradients = loss_and_gradients(compiled, queries, passages)
        assert abs(got - want) < 1e-5
        assert got_gradients.keys() == want_gradients.keys()
        for name, gradient in want_gradients.items():
            torch.testing.assert_close(got_gradients[name], gradient, atol=1e-5, rtol=1e-4, msg=name)
