"""The gathered loss under DDP equals the single-process loss on the same global batch, gradients included.

A past bug in a popular library laid gathered passages out in the wrong order and trained queries towards
their negatives; this pins the layout: 2 gloo processes against 1 process, with a labelled positive that
crosses ranks and empty negative slots.
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pa_retriever.training.loss import contrastive_loss

BATCH, GROUP, DIM = 4, 3, 8  # global batch of 4 queries, each with 1 positive + 2 negatives


def make_batch():
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(BATCH, DIM, generator=g)
    passages = torch.randn(BATCH * GROUP, DIM, generator=g)
    passage_idx = torch.arange(BATCH * GROUP).reshape(BATCH, GROUP) + 100
    passage_idx[1, 2] = -1  # an empty negative slot (the filter left too few)
    positive_idx = passage_idx[:, :1].clone()
    # Query 0 (rank 0) has a second labelled positive that query 3 (rank 1) drew as a negative.
    positive_idx = torch.cat([positive_idx, torch.full((BATCH, 1), -1)], 1)
    positive_idx[0, 1] = passage_idx[3, 1]
    return queries, passages, passage_idx, positive_idx


def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.Tanh(), torch.nn.Linear(DIM, DIM))


def loss_and_grads(net, queries, passages, passage_idx, positive_idx, in_batch):
    loss, _ = contrastive_loss(torch.nn.functional.normalize(net(queries), dim=-1),
                               torch.nn.functional.normalize(net(passages), dim=-1),
                               passage_idx, positive_idx, temperature=0.1, in_batch_negatives=in_batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in net.parameters()]


def worker(rank, world, init_file, in_batch, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    queries, passages, passage_idx, positive_idx = make_batch()
    b = BATCH // world
    local = slice(rank * b, (rank + 1) * b)
    net = model()
    loss, grads = loss_and_grads(net, queries[local], passages[rank * b * GROUP:(rank + 1) * b * GROUP],
                                 passage_idx[local], positive_idx[local], in_batch)
    for grad in grads:  # what DDP does with the gradients
        dist.all_reduce(grad)
        grad /= world
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss)
    results[rank] = (torch.stack(losses).mean(), grads)
    dist.destroy_process_group()


@pytest.mark.parametrize("in_batch", [True, False])
def test_two_process_gather_equals_one_process(in_batch, tmp_path):
    expected_loss, expected_grads = loss_and_grads(model(), *make_batch(), in_batch)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(worker, args=(2, str(tmp_path / "rendezvous"), in_batch, results), nprocs=2,
                           start_method="spawn")
        for rank in range(2):
            loss, grads = results[rank]
            torch.testing.assert_close(loss, expected_loss)
            for got, want in zip(grads, expected_grads):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_masking_of_labelled_positives_and_empty_slots():
    queries, passages, passage_idx, positive_idx = make_batch()
    q = torch.nn.functional.normalize(queries, dim=-1)
    p = torch.nn.functional.normalize(passages, dim=-1)
    loss, _ = contrastive_loss(q, p, passage_idx, positive_idx, temperature=0.1)
    logits = q @ p.T / 0.1
    logits[0, 3 * GROUP + 1] = float("-inf")  # query 0's second positive, drawn by query 3
    logits[:, 1 * GROUP + 2] = float("-inf")  # the empty slot
    labels = torch.arange(BATCH) * GROUP
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))


def test_equals_sentence_transformers_multiple_negatives_ranking_loss():
    """Unique passages, no masking: our loss and gradients are ST's MNRL (scale 20 = temperature 0.05), the
    comparison docs/results.md relies on."""
    losses = pytest.importorskip("sentence_transformers.losses")
    queries, passages, _, _ = make_batch()
    passage_idx = torch.arange(BATCH * GROUP).reshape(BATCH, GROUP)
    ours_q, ours_p, st_q, st_p = (x.clone().requires_grad_() for x in (queries, passages, queries, passages))
    normalize = torch.nn.functional.normalize
    ours, _ = contrastive_loss(normalize(ours_q, dim=-1), normalize(ours_p, dim=-1), passage_idx, passage_idx[:, :1],
                               temperature=0.05)
    columns = st_p.reshape(BATCH, GROUP, DIM).unbind(1)  # ST: anchors, positives, then each negative column
    theirs = losses.MultipleNegativesRankingLoss(None, scale=20.0).compute_loss_from_embeddings([st_q, *columns], None)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_q.grad, st_q.grad)
    torch.testing.assert_close(ours_p.grad, st_p.grad)


def test_logits_are_float32_under_bf16_autocast():
    """bf16 logits would round near-ties between positive and hard negative together; the loss must not."""
    torch.manual_seed(0)
    queries = F.normalize(torch.randn(4, 16), dim=-1).bfloat16()
    passages = F.normalize(torch.randn(8, 16), dim=-1).bfloat16()
    idx = torch.arange(8).reshape(4, 2)
    exact, _ = contrastive_loss(queries.float(), passages.float(), idx, idx[:, :1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast, _ = contrastive_loss(queries, passages, idx, idx[:, :1])
    assert autocast.item() == pytest.approx(exact.item(), abs=1e-6)
