"""Decoder students: bidirectional attention, instruction-masked mean pooling, LoRA through peft, exact merge."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from pa_retriever.encode.encoder import TextEncoder
from pa_retriever.encode.spec import EncoderSpec

TEXTS = ["why does magma rise through the crust", "lava flows downhill", "the ocean floor spreads at ridges"]


def hidden_states(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


@pytest.fixture(params=["mistral", "llama", "qwen2"])
def decoder_dir(request, tiny_mistral_dir, tiny_llama_dir, tiny_qwen2_dir):
    return {"mistral": tiny_mistral_dir, "llama": tiny_llama_dir, "qwen2": tiny_qwen2_dir}[request.param]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bidirectional_lets_a_later_token_change_an_earlier_position(decoder_dir, attention):
    """Causal: position 2 never sees position 5. Bidirectional: it does, on every attention path."""
    from pa_retriever.encode.encoder import load_model
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])
    changed = ids.clone()
    changed[0, 5] = 99
    for bidirectional in (False, True):
        spec = EncoderSpec.from_config({"name_or_path": str(decoder_dir), "bidirectional": bidirectional})
        model = load_model(spec, str(decoder_dir), torch.float32, attn_implementation=attention).eval()
        before, after = hidden_states(model, ids), hidden_states(model, changed)
        moved = (before[0, 2] - after[0, 2]).abs().max().item()
        assert (moved > 1e-4) == bidirectional, (bidirectional, moved)
        assert (before[0, 6] - after[0, 6]).abs().max() > 1e-4  # a later position sees it either way


def test_bidirectional_padding_is_masked_both_ways(tiny_mistral_dir):
    """A padded text encodes as it does alone: pad positions are neither attended to nor pooled."""
    spec = EncoderSpec.from_config({"name_or_path": str(tiny_mistral_dir), "bidirectional": True, "pooling": "mean"})
    encoder = TextEncoder.load(spec)
    together = encoder.encode(TEXTS, "passage", progress=False)
    alone = np.concatenate([encoder.encode([t], "passage", progress=False) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_the_instruction_stays_out_of_the_mean(tiny_mistral_dir):
    """NV-Retriever pools the query's own tokens: the same query under two instructions keeps most of its vector
    only because the instruction's tokens are left out of the mean (they still shape the others, bidirectionally)."""
    common = {"name_or_path": str(tiny_mistral_dir), "bidirectional": True, "pooling": "mean", "mask_prefix": True}
    encoder = TextEncoder.load(EncoderSpec.from_config({**common, "query_prefix": "Retrieve passages: "}))
    batch = encoder.tokenizer.pad(encoder.tokenizer(TEXTS, "query"), "query")
    prefix = len(encoder.tokenizer.prefix_ids["query"])
    assert (batch["pool_mask"][:, :prefix] == 0).all() and (batch["pool_mask"].sum(1) > 0).all()
    with torch.no_grad():
        pooled = encoder(**batch)
        hidden = encoder.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    weights = batch["pool_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- training

def decoder_spec(folder, **fields) -> EncoderSpec:
    return EncoderSpec.from_config({"name_or_path": str(folder), "bidirectional": True, "pooling": "mean",
                                    "mask_prefix": True, "query_prefix": "Retrieve passages: ",
                                    "passage_prefix": "passage: ", "query_max_length": 24, "passage_max_length": 48,
                                    **fields})


def batch_for(towers, queries=TEXTS, passages=TEXTS) -> dict:
    tokenizer = towers.query.tokenizer
    n, group = len(queries), len(passages) // len(queries)
    return {"queries": tokenizer.pad(tokenizer(list(queries), "query"), "query"),
            "passages": tokenizer.pad(tokenizer(list(passages), "passage"), "passage"),
            "passage_idx": torch.arange(n * group).reshape(n, group),
            "positive_idx": torch.arange(0, n * group, group)[:, None]}


def loss_of(towers, batch, temperature=0.05) -> torch.Tensor:
    from pa_retriever.training.loss import contrastive_loss
    return contrastive_loss(towers.tower("query")(**batch["queries"]), towers.tower("passage")(**batch["passages"]),
                            batch["passage_idx"], batch["positive_idx"], temperature)[0]


LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("weights_dtype", ["fp32", "bf16"])
def test_only_the_adapters_train_and_the_merge_is_exact(tiny_mistral_dir, tmp_path, weights_dtype):
    """With bf16 weights too: the export merges in fp32 and saves fp32, so nothing of a small update rounds away."""
    from safetensors.torch import load_file

    from pa_retriever.encode.towers import LoraSettings, Towers
    spec = decoder_spec(tiny_mistral_dir)
    towers = Towers.for_training(spec, lora=LoraSettings.from_config(LORA), weights_dtype=weights_dtype)
    trainable = {n for n, p in towers.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in towers.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in towers.parameters() if p.requires_grad], lr=1e-2)
    loss_of(towers, batch_for(towers)).backward()
    optimizer.step()
    changed = {n for n, p in towers.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n in trainable if "lora_B" in n or "lora_A" in n} and changed
    towers.eval()
    with torch.no_grad():  # base + adapter, unmerged, in fp32 (bf16 to fp32 is exact)
        adapted = copy.deepcopy(towers).float().encode(TEXTS, "query", progress=False)
    folder = towers.save(tmp_path / "model")
    assert {t.dtype for t in load_file(folder / "model.safetensors").values()} == {torch.float32}
    merged = TextEncoder.load(EncoderSpec.from_folder(folder)).encode(TEXTS, "query", progress=False)
    np.testing.assert_allclose(merged, adapted, atol=1e-5)  # base + adapter == the merged weights


def test_a_bidirectional_export_loads_in_sentence_transformers(tiny_mistral_dir, tmp_path):
    """The folder carries its bidirectional code: sentence-transformers, trusting it, encodes exactly as this project
    does; not trusting it, it attends causally."""
    from sentence_transformers import SentenceTransformer

    from pa_retriever.encode.towers import Towers
    towers = Towers.for_training(decoder_spec(tiny_mistral_dir, mask_prefix=False, passage_prefix=""))
    folder = towers.save(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "bidirectional.BidirectionalMistralModel"}
    ours = TextEncoder.load(EncoderSpec.from_folder(folder)).encode(TEXTS, "passage", progress=False)
    theirs = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    causal = SentenceTransformer(str(folder), device="cpu", trust_remote_code=False)
    assert np.abs(causal.encode(TEXTS) - ours).max() > 1e-4  # without its code it would attend causally


NV_QUERY_PREFIX = "Given a question, retrieve passages that answer the question: "


@pytest.mark.parametrize("family", ["mistral", "llama"])
def test_a_prefix_masked_export_encodes_in_sentence_transformers_as_here(family, tiny_mistral_dir, tiny_llama_dir,
                                                                         tmp_path):
    """NV-Retriever's prompts end with a space, alone a token of its own ('▁') that merges into the text's first
    word ('▁why') in context. sentence-transformers leaves out of the pool as many tokens as the prompt alone has;
    so does this project, with that space ignored: the instruction stays out, every token of the text pools, and an
    export encodes exactly as evaluate.py does (queries at their own max length, see the README)."""
    from sentence_transformers import SentenceTransformer

    from pa_retriever.encode.towers import Towers
    spec = decoder_spec({"mistral": tiny_mistral_dir, "llama": tiny_llama_dir}[family], query_prefix=NV_QUERY_PREFIX,
                        query_max_length=192, passage_max_length=512)
    folder = Towers.for_training(spec).save(tmp_path / "model")
    ours = TextEncoder.load(EncoderSpec.from_folder(folder))
    hf = ours.tokenizer.tokenizer
    for kind, prefix in (("query", NV_QUERY_PREFIX), ("passage", "passage: ")):
        alone, joined = hf(prefix)["input_ids"], hf(prefix + "why")["input_ids"]
        assert joined[:len(alone)] == alone and hf.convert_ids_to_tokens(joined[len(alone):]) == ["▁why"], kind
        assert ours.tokenizer.prefix_ids[kind] == alone
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu",
                             model_kwargs={"dtype": torch.float32})
    queries = [*TEXTS, "why", "(lava) flows ", "magma " * 150]  # the last is over 192 tokens
    passages = [*TEXTS, "why", "(lava) flows ", "magma " * 300]  # and this over 512
    np.testing.assert_allclose(st.encode_document(passages), ours.encode(passages, "passage", progress=False),
                               atol=1e-5)
    theirs = st.encode_query(queries)  # at the folder's one max_seq_length, the passages' 512
    here = ours.encode(queries, "query", progress=False)
    np.testing.assert_allclose(theirs[:-1], here[:-1], atol=1e-5)
    assert np.abs(theirs[-1] - here[-1]).max() > 1e-4  # a query over 192 tokens keeps more of itself there
    st.max_seq_length = spec.query_max_length
    np.testing.assert_allclose(st.encode_query(queries), here, atol=1e-5)


def test_gradient_checkpointing_changes_memory_not_gradients(tiny_mistral_dir):
    """Checkpointing is really on (backward runs the layers again), and the gradients stay the same."""
    from pa_retriever.encode.towers import Towers
    grads, runs = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        towers = Towers.for_training(decoder_spec(tiny_mistral_dir), gradient_checkpointing=checkpointing,
                                     config_overrides={"attention_dropout": 0.1})
        # Inside a layer: transformers checkpoints a layer's forward, leaving the layer's own hooks outside. A
        # pre-hook: a recomputation stops once it has what backward needs, which may be before the MLP returns.
        mlp_runs = []
        towers.query.model.layers[0].mlp.register_forward_pre_hook(lambda *_: mlp_runs.append(1))
        torch.manual_seed(1)
        loss = loss_of(towers, batch_for(towers))
        forward_runs = len(mlp_runs)
        loss.backward()
        runs.append((forward_runs, len(mlp_runs)))
        grads.append({n: p.grad.clone() for n, p in towers.named_parameters() if p.grad is not None})
    assert runs == [(2, 2), (2, 4)]  # queries and passages, run again in backward only with checkpointing
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_a_lora_run_checkpoints_the_adapters_alone_and_resumes_exactly(tiny_mistral_dir, tmp_path):
    from helpers import crash_and_resume, tiny_overrides
    common = tiny_overrides(tiny_mistral_dir, tmp_path, groups=("model",)) + [
        "model.bidirectional=true", "model.pooling=mean", "trainer.max_epochs=2", "+trainer.limit_train_batches=3",
        "validate_before_training=false", "test_after_training=false", "trainer.accelerator=cpu",
        "trainer.precision=32-true", "mining=naive_topk", "module.lora={r: 4, alpha: 8, dropout: 0.1}",
        "module.optimizer.lr=1e-3"]
    straight, again = crash_and_resume(common, tmp_path, inside_step=True)
    assert straight.keys() == again.keys() and all("lora_" in name for name in straight)
    for name, value in straight.items():
        torch.testing.assert_close(again[name], value, msg=name)


def rebuilt_export(start, checkpoint, folder) -> dict[str, torch.Tensor]:
    """The weights a LoRA run exports, rebuilt from the model at `start` and the adapters in its `checkpoint`."""
    from safetensors.torch import load_file

    from pa_retriever.encode.towers import LoraSettings, Towers
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    settings = saved["hyper_parameters"]
    spec = EncoderSpec(**{**settings["spec"], "name_or_path": str(start)})
    towers = Towers.for_training(spec, lora=LoraSettings.from_config(settings["lora"]),
                                 weights_dtype=settings["weights_dtype"])
    adapters = {name.removeprefix("towers."): value for name, value in saved["state_dict"].items()}
    assert not towers.load_state_dict(adapters, strict=False).unexpected_keys
    return load_file(towers.save(folder) / "model.safetensors")


def test_nv_retriever_v1_stage_one_then_two_with_a_tiny_mistral(tiny_mistral_dir, tmp_path):
    """The paper's recipe as two commands on the demo data; stage 2 starts from stage 1's export (its export is
    stage 1's plus its own adapters, and not the base model's); both exports load in sentence-transformers."""
    from helpers import run_script
    from sentence_transformers import SentenceTransformer
    common = [f"model.name_or_path={tiny_mistral_dir}", "teacher=minilm", "data=demo", "trainer=cpu",
              f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}", "encode.progress=false",
              "trainer.max_epochs=2", "logger=csv"]
    run_script("train.py", ["experiment=nv_retriever_v1/stage1", *common])
    sts = tmp_path / "sts.jsonl"  # non-retrieval data: pairs with their own negatives
    sts.write_text("".join(json.dumps({"query": f"a sentence about {w}", "positive": f"another about {w}",
                                       "negatives": [f"a line on {v}" for v in ("rocks", "tides", "bread") if v != w]})
                           + "\n" for w in ("rocks", "tides", "bread", "stars", "salt")))
    stage2 = [arg for arg in common if not arg.startswith("model.name_or_path")]  # stage 2 starts from stage 1
    run_script("train.py", ["experiment=nv_retriever_v1/stage2", *stage2, "data.datasets=[{path: "
                            "${paths.data_dir}/demo}, {path: " + str(sts) + ", teacher: given, mining: naive_topk, "
                            "in_batch_negatives: false, instruction: Retrieve semantically similar text}]"])
    from safetensors.torch import load_file
    stage1, stage2 = (tmp_path / "logs" / "nv_retriever_v1" / stage for stage in ("stage1", "stage2"))
    last = torch.load(stage2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["hyper_parameters"]["spec"]["name_or_path"] == str(stage1 / "model")
    best = next(state["best_model_path"] for key, state in last["callbacks"].items() if "val/ndcg@10" in key)
    exported = load_file(stage2 / "model" / "model.safetensors")
    for start, same in ((stage1 / "model", True), (tiny_mistral_dir, False)):
        rebuilt = rebuilt_export(start, best, tmp_path / "rebuilt" / str(same))
        assert rebuilt.keys() == exported.keys()
        assert all(torch.equal(rebuilt[name], value) for name, value in exported.items()) == same, start
    for stage in ("stage1", "stage2"):
        folder = tmp_path / "logs" / "nv_retriever_v1" / stage / "model"
        summary = json.loads((folder.parent / "summary.json").read_text())
        assert summary["metrics"]["ndcg@10"] > 0
        spec = EncoderSpec.from_folder(folder)
        assert (spec.bidirectional, spec.mask_prefix, spec.query_max_length, spec.passage_max_length) == (
            True, True, 192, 512)
        ours = TextEncoder.load(spec).encode(TEXTS, "passage", progress=False)
        st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
        assert st.encode(TEXTS).shape == ours.shape
