"""The GPU paths against their CPU twins: search, one training step in bf16, dropout seeding and exact resume.

Skipped without CUDA (`pytest -m gpu` selects them; bench/gpu_suite.sh runs them on the lent GPU)."""

from __future__ import annotations

import importlib.util
import os
from unittest import mock

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, read when it starts

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from helpers import EXACT_SGD, compose_cfg, crash_and_resume, tiny_overrides  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_gpu_search_equals_cpu_search():
    """Same top-k on the GPU (torch) as on the CPU (faiss, else torch), from fp16 shards, scores in fp32."""
    from pa_retriever.encode.search import exact_search, faiss_available
    rng = np.random.default_rng(0)
    queries = F.normalize(torch.from_numpy(rng.standard_normal((300, 64), dtype=np.float32)), dim=1).numpy()
    corpus = F.normalize(torch.from_numpy(rng.standard_normal((30_000, 64), dtype=np.float32)), dim=1).numpy()
    shards = [corpus[:12_345].astype(np.float16), corpus[12_345:].astype(np.float16)]
    gpu_scores, gpu_idx = exact_search(queries, shards, 50, backend="torch", max_block_scores=2**20)
    if faiss_available():
        cpu_scores, cpu_idx = exact_search(queries, shards, 50, backend="faiss", max_block_scores=2**20)
    else:
        with mock.patch("torch.cuda.is_available", return_value=False):  # torch's search, on the CPU
            cpu_scores, cpu_idx = exact_search(queries, shards, 50, backend="torch", max_block_scores=2**20)
    reference = queries.astype(np.float64) @ np.concatenate(shards).astype(np.float64).T
    expected = np.take_along_axis(reference, gpu_idx, 1)
    np.testing.assert_allclose(gpu_scores, expected, atol=2e-6)  # fp32, not TF32 (which errs by ~1e-3)
    np.testing.assert_allclose(gpu_scores, cpu_scores, atol=2e-6)
    # Where a neighbour ties within rounding the order may differ; elsewhere the passage must be the same one.
    apart = np.abs(np.diff(gpu_scores, axis=1)) > 1e-5
    settled = np.pad(apart, ((0, 0), (1, 0)), constant_values=True)[:, :-1] & apart  # apart from both neighbours
    assert (gpu_idx[:, :-1] == cpu_idx[:, :-1])[settled].all() and settled.mean() > 0.9


def test_one_training_step_on_gpu_in_bf16_equals_the_cpu_step_in_fp32(tiny_bert_dir):
    """The loss and every gradient of one step, computed on the GPU under bf16 autocast, match the fp32 CPU
    step within bf16's precision (dropout off: the two devices draw different masks)."""
    import copy

    from pa_retriever.encode.spec import EncoderSpec
    from pa_retriever.encode.tokenizer import PromptTokenizer
    from pa_retriever.training.loss import contrastive_loss
    from pa_retriever.training.module import BiEncoderModule
    model_cfg = {"name_or_path": str(tiny_bert_dir), "query_max_length": 32, "passage_max_length": 64}
    module = BiEncoderModule(EncoderSpec.from_config(model_cfg), torch.optim.AdamW,
                             config_overrides={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    tokenizer: PromptTokenizer = module.towers.query.tokenizer
    queries = ["why does magma rise", "how is bread made", "what causes tides", "who built rome"]
    passages = [f"passage {i} about {topic}" for topic in ("magma", "bread", "tides", "rome") for i in range(3)]
    batch = {"queries": tokenizer.pad(tokenizer(queries, "query"), "query"),
             "passages": tokenizer.pad(tokenizer(passages, "passage"), "passage"),
             "passage_idx": torch.arange(12).reshape(4, 3), "positive_idx": torch.arange(0, 12, 3)[:, None]}

    def step(device: str, dtype: torch.dtype):
        model = copy.deepcopy(module).to(device)
        moved = {k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v.to(device))
                 for k, v in batch.items()}
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = contrastive_loss(model.towers.query(**moved["queries"]), model.towers.query(**moved["passages"]),
                                       moved["passage_idx"], moved["positive_idx"], temperature=0.05)
        loss.backward()
        return loss.item(), {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}

    cpu_loss, cpu_grads = step("cpu", torch.float32)
    gpu_loss, gpu_grads = step("cuda", torch.bfloat16)
    assert gpu_loss == pytest.approx(cpu_loss, rel=2e-2)
    flat = lambda grads: torch.cat([grads[n].flatten() for n in sorted(cpu_grads)])  # noqa: E731
    assert (flat(gpu_grads) - flat(cpu_grads)).norm() <= 0.05 * flat(cpu_grads).norm()
    largest = max(g.norm() for g in cpu_grads.values())
    for name, grad in cpu_grads.items():  # tensors whose gradient is ~0 in exact arithmetic (key biases) hold noise
        if grad.norm() > 0.01 * largest:
            assert F.cosine_similarity(gpu_grads[name].flatten(), grad.flatten(), dim=0) > 0.98, name


def test_dropout_masks_on_the_gpu_follow_the_batch_count_not_the_history():
    """Each batch seeds this process's CUDA generator from (seed, rank, batches completed): a resumed run draws the
    masks an unbroken one drew, whatever was drawn before."""
    from types import SimpleNamespace

    from pa_retriever.training.module import BiEncoderModule

    class Stub:  # what on_train_batch_start reads of a module and its trainer
        hparams = SimpleNamespace(seed=7)
        global_rank, device = 0, torch.device("cuda")

        def __init__(self, batches_completed: int):
            total = SimpleNamespace(completed=batches_completed)
            self.trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
                batch_progress=SimpleNamespace(total=total))))

    def masks(batches_completed: int, draws_before: int) -> torch.Tensor:
        torch.rand(draws_before, device="cuda")  # whatever happened earlier on this generator
        BiEncoderModule.on_train_batch_start(Stub(batches_completed), None, 0)
        return F.dropout(torch.ones(4096, device="cuda"), p=0.1)

    assert torch.equal(masks(5, 0), masks(5, 1000))
    assert not torch.equal(masks(5, 0), masks(6, 0))


def test_gpu_run_resumed_mid_epoch_matches_an_uninterrupted_one(tiny_bert_dir, tmp_path):
    """bf16 on the GPU, dropout on, deterministic kernels: a crash inside epoch 1, then a resume from its
    checkpoint, ends with exactly the weights of an unbroken run."""
    common = tiny_overrides(tiny_bert_dir, tmp_path) + [
        "trainer.max_epochs=2", "+trainer.limit_train_batches=3", "validate_before_training=false",
        "test_after_training=false", "trainer.accelerator=gpu", "trainer.precision=bf16-mixed",
        "+trainer.deterministic=true", "mining=sampled_topk", "datamodule.num_workers=2",
        "module.config_overrides={attn_implementation: eager}"]  # SDPA's fused backward is not deterministic
    straight, again = crash_and_resume(common, tmp_path, inside_step=True)
    for name, value in straight.items():
        torch.testing.assert_close(again[name], value, rtol=0, atol=0, msg=name)


def test_quickstart_pipeline_runs_on_the_gpu(tiny_bert_dir, tmp_path):
    """Mining, bf16 training with loader workers and pinned memory, export and evaluation, all on the GPU."""
    from pa_retriever.tasks.train import train
    metrics = train(compose_cfg("train", tiny_overrides(tiny_bert_dir, tmp_path) + [
        "debug=limit", "trainer.accelerator=gpu", "datamodule.num_workers=2", "encode.precision=auto"],
        tmp_path / "run"))
    assert set(metrics) == {"ndcg@10", "recall@100", "mrr@10", "map@100"}
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
def test_bidirectional_holds_on_the_flash_attention_path(tiny_mistral_dir):
    """Flash-attention takes no mask tensor, only is_causal: a later token must still move an earlier position,
    and the outputs must match SDPA's (bf16)."""
    from pa_retriever.encode.encoder import load_model
    from pa_retriever.encode.spec import EncoderSpec
    spec = EncoderSpec.from_config({"name_or_path": str(tiny_mistral_dir), "bidirectional": True})
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45]], device="cuda")
    changed = ids.clone()
    changed[0, 5] = 99
    outputs = {}
    for attention in ("flash_attention_2", "sdpa"):
        model = load_model(spec, str(tiny_mistral_dir), torch.bfloat16, attn_implementation=attention).cuda().eval()
        with torch.no_grad():
            outputs[attention] = [model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state.float()
                                  for x in (ids, changed)]
    before, after = outputs["flash_attention_2"]
    assert (before[0, 2] - after[0, 2]).abs().max() > 1e-3
    torch.testing.assert_close(before, outputs["sdpa"][0], atol=3e-2, rtol=3e-2)


def test_fsdp_on_one_gpu_exports_the_weights_a_plain_run_does(tiny_bert_dir, tmp_path):
    """trainer=fsdp: the export after fitting holds whole, unsharded weights under their own names, equal to a
    plain run's (fp32, dropout off, SGD: as the GradCache equality tests)."""
    from safetensors.torch import load_file

    from pa_retriever.tasks.train import train
    common = tiny_overrides(tiny_bert_dir, tmp_path) + EXACT_SGD + [
        "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "validate_before_training=false"]
    weights = []
    for name, trainer in (("plain", ["trainer=gpu"]), ("fsdp", ["trainer=fsdp", "trainer.devices=1"])):
        train(compose_cfg("train", common + trainer, tmp_path / name))
        weights.append(load_file(tmp_path / name / "model" / "model.safetensors"))
    assert weights[1].keys() == weights[0].keys()
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-5, rtol=1e-4, msg=name)
