"""Every model config in conf/model against an independent reference written from its model card.

The 7B/335M models cannot be downloaded here, so each config is pointed at a tiny random model of the same
family built in conftest.py (BERT for e5, e5_large_v2 and arctic; Mistral for e5_mistral; a remote-code
Mistral with NV-Embed's interface for nv_embed). What is checked is everything the config decides: prefixes,
pooling, EOS, the instruction mask, truncation, normalisation. MiniLM, installed offline, is checked for real
against sentence-transformers.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from transformers import AutoModel, AutoTokenizer

from pa_retriever.encode.encoder import TextEncoder
from pa_retriever.encode.spec import EncoderSpec

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

E5_MISTRAL_TASK = "Given a web search query, retrieve relevant passages that answer the query"
NV_EMBED_TASK = "Given a question, retrieve passages that answer the question"
NV_RETRIEVER_TASK = "Given a question, retrieve passages that answer the question"
ARCTIC_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "

COMMON = dict(revision=None, normalize=True, append_eos=False, mask_prefix=False, bidirectional=False,
              trust_remote_code=False, passage_tower=None,
              query_max_length=512, passage_max_length=512)
EXPECTED = {  # what each config must say, from its model card
    "minilm": dict(COMMON, name_or_path="sentence-transformers/all-MiniLM-L6-v2", pooling="mean",
                   query_prefix="", passage_prefix="", query_max_length=256, passage_max_length=256),
    "e5": dict(COMMON, name_or_path="intfloat/e5-large-unsupervised", pooling="mean",
               query_prefix="query: ", passage_prefix="passage: "),
    "e5_large_v2": dict(COMMON, name_or_path="intfloat/e5-large-v2", pooling="mean",
                        query_prefix="query: ", passage_prefix="passage: "),
    "arctic": dict(COMMON, name_or_path="Snowflake/snowflake-arctic-embed-l", pooling="cls",
                   query_prefix=ARCTIC_QUERY_PREFIX, passage_prefix=""),
    "e5_mistral": dict(COMMON, name_or_path="intfloat/e5-mistral-7b-instruct", pooling="last",
                       query_prefix=f"Instruct: {E5_MISTRAL_TASK}\nQuery: ", passage_prefix="", append_eos=True),
    "nv_embed": dict(COMMON, name_or_path="nvidia/NV-Embed-v1", pooling="model",
                     query_prefix=f"Instruct: {NV_EMBED_TASK}\nQuery: ", passage_prefix="", append_eos=True,
                     mask_prefix=True, trust_remote_code=True),
    "nv_retriever_v1": dict(COMMON, name_or_path="mistralai/Mistral-7B-v0.1", pooling="mean",
                            query_prefix=f"{NV_RETRIEVER_TASK}: ", passage_prefix="passage: ", query_max_length=192,
                            passage_max_length=512, mask_prefix=True, bidirectional=True),
}
FAMILY = {"e5": "bert", "e5_large_v2": "bert", "arctic": "bert", "e5_mistral": "mistral", "nv_embed": "nv_embed",
          "nv_retriever_v1": "mistral"}
TINY_CONFIGS = sorted(FAMILY)


def _demo(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "data" / "demo" / name).read_text().splitlines() if line.strip()]


DEMO_QUERIES = [row["text"] for row in _demo("queries.jsonl")]
DEMO_PASSAGES = [row["text"] for row in _demo("corpus.jsonl")]
LONG_TEXT = " ".join(DEMO_PASSAGES[:12])  # far over 512 tokens for either tokenizer
# Clearly different lengths in one batch, so padding matters; the long one is truncated.
QUERIES = ["volcano", DEMO_QUERIES[0], DEMO_QUERIES[40] + " " + DEMO_QUERIES[41] + " " + DEMO_QUERIES[42], LONG_TEXT]
PASSAGES = ["Rome", DEMO_PASSAGES[150], DEMO_PASSAGES[0] + " " + DEMO_PASSAGES[1], LONG_TEXT]
KIND_TEXTS = {"query": QUERIES, "passage": PASSAGES}


# ---------------------------------------------------------------------------------------------- helpers

def model_config(name: str, **overrides):
    """conf/model/<name>.yaml as `evaluate` composes it (interpolations such as ${.instruction} resolved)."""
    args = [f"model={name}"] + [f"model.{key}='{value}'" if isinstance(value, str) else f"model.{key}={value}"
                                for key, value in overrides.items()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=args).model


@pytest.fixture(scope="module")
def tiny_dirs(tiny_bert_dir, tiny_mistral_dir, tiny_nv_embed_dir) -> dict[str, Path]:
    return {"bert": tiny_bert_dir, "mistral": tiny_mistral_dir, "nv_embed": tiny_nv_embed_dir}


@pytest.fixture(scope="module")
def tiny_encoder(tiny_dirs):
    """name -> TextEncoder for that config with name_or_path pointed at the tiny model of its family."""
    cache: dict[str, TextEncoder] = {}

    def get(name: str) -> TextEncoder:
        if name not in cache:
            spec = EncoderSpec.from_config(model_config(name, name_or_path=str(tiny_dirs[FAMILY[name]])))
            cache[name] = TextEncoder.load(spec)
        return cache[name]

    return get


def encode(encoder: TextEncoder, texts: list[str], kind: str) -> np.ndarray:
    return encoder.encode(texts, kind, progress=False)


# ---------------------------------------------------------------------------------------------- references
# Written from the model cards, sharing no code with src/encode.

@torch.no_grad()
def reference_bert(model_dir: Path, texts: list[str], prefix: str, pooling: str, max_length: int) -> np.ndarray:
    """e5 (average_pool over the attention mask) and arctic (CLS) cards: prefix, pad, pool, L2-normalise."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer([prefix + t for t in texts], max_length=max_length, padding=True, truncation=True,
                      return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    if pooling == "mean":
        hidden = hidden.masked_fill(~batch["attention_mask"][..., None].bool(), 0.0)
        embeddings = hidden.sum(dim=1) / batch["attention_mask"].sum(dim=1)[..., None]
    else:
        embeddings = hidden[:, 0]
    return F.normalize(embeddings, p=2, dim=1).numpy()


def last_token_pool(last_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Verbatim from the intfloat/e5-mistral-7b-instruct model card."""
    left_padding = (attention_mask[:, -1].sum() == attention_mask.shape[0])
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths]


@torch.no_grad()
def reference_e5_mistral(model_dir: Path, texts: list[str], kind: str, max_length: int) -> np.ndarray:
    """The e5-mistral card: instructed queries, max_length - 1 then EOS, pad (this tokenizer pads on the LEFT),
    last_token_pool, normalise."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.padding_side == "left"
    tokenizer.pad_token = tokenizer.eos_token  # the tiny tokenizer has none; the card's tokenizer pads with </s>
    model = AutoModel.from_pretrained(model_dir).eval()
    input_texts = [f"Instruct: {E5_MISTRAL_TASK}\nQuery: {t}" for t in texts] if kind == "query" else texts
    batch_dict = tokenizer(input_texts, max_length=max_length - 1, return_attention_mask=False, padding=False,
                           truncation=True)
    batch_dict["input_ids"] = [input_ids + [tokenizer.eos_token_id] for input_ids in batch_dict["input_ids"]]
    batch_dict = tokenizer.pad(batch_dict, padding=True, return_attention_mask=True, return_tensors="pt")
    outputs = model(**batch_dict)
    embeddings = last_token_pool(outputs.last_hidden_state, batch_dict["attention_mask"])
    return F.normalize(embeddings, p=2, dim=1).numpy()


@torch.no_grad()
def reference_nv_embed(model_dir: Path, texts: list[str], kind: str, max_length: int) -> np.ndarray:
    """The NV-Embed-v1 card (encode / input_transform_func / prepare_kwargs_from_batch): instruction + text,
    EOS at the end, right padding, pool_mask = attention mask with the first len(tokenize(instruction))
    positions zeroed (BOS plus the instruction's tokens as they stand before the text), the model's
    sentence_embeddings, normalised. One deliberate difference: the card appends the EOS string before
    truncating, which drops EOS from over-long inputs; like e5-mistral we truncate to max_length - 1 and then
    append EOS, so every input ends with EOS."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    tokenizer.padding_side = "right"
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    instruction = f"Instruct: {NV_EMBED_TASK}\nQuery: " if kind == "query" else ""
    instruction_lens = len(tokenizer.tokenize(instruction)) if instruction else 0
    ids = tokenizer([instruction + t for t in texts], max_length=max_length - 1, truncation=True)["input_ids"]
    batch = tokenizer.pad({"input_ids": [seq + [tokenizer.eos_token_id] for seq in ids]}, padding=True,
                          return_attention_mask=True, return_tensors="pt")
    pool_mask = batch["attention_mask"].clone()
    pool_mask[:, :instruction_lens] = 0
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pool_mask=pool_mask,
                return_dict=True)
    return F.normalize(out["sentence_embeddings"], p=2, dim=-1).numpy()


@torch.no_grad()
def reference_nv_retriever(model_dir: Path, texts: list[str], kind: str, max_length: int) -> np.ndarray:
    """The NV-Retriever paper: Mistral with its causal mask replaced by the padding mask alone (every token
    attends to every token), queries "{instruction}: {query}" and passages "passage: {text}", the mean over the
    text's own tokens (BOS and the prompt's tokens as they stand before the text left out, as the NV-Embed card
    counts them), normalised."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "right"
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    prompt = f"{NV_RETRIEVER_TASK}: " if kind == "query" else "passage: "
    batch = tokenizer([prompt + t for t in texts], max_length=max_length, truncation=True, padding=True,
                      return_tensors="pt")
    mask = batch["attention_mask"]
    size, length = mask.shape
    both_ways = ((1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min).expand(size, 1, length, length)
    hidden = model(input_ids=batch["input_ids"], attention_mask=both_ways).last_hidden_state
    pool = mask.clone()
    pool[:, :len(tokenizer.tokenize(prompt))] = 0
    embeddings = (hidden * pool[..., None]).sum(1) / pool.sum(1, keepdim=True)
    return F.normalize(embeddings, p=2, dim=-1).numpy()


def reference(name: str, model_dir: Path, texts: list[str], kind: str) -> np.ndarray:
    expected = EXPECTED[name]
    max_length = expected[f"{kind}_max_length"]
    if name == "nv_retriever_v1":
        return reference_nv_retriever(model_dir, texts, kind, max_length)
    if name == "e5_mistral":
        return reference_e5_mistral(model_dir, texts, kind, max_length)
    if name == "nv_embed":
        return reference_nv_embed(model_dir, texts, kind, max_length)
    return reference_bert(model_dir, texts, expected[f"{kind}_prefix"], expected["pooling"], max_length)


# ---------------------------------------------------------------------------------------------- the configs

def test_every_model_config_is_covered():
    assert {p.stem for p in (CONF_DIR / "model").glob("*.yaml")} == set(EXPECTED) | {"folder"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_fields(name):
    spec = EncoderSpec.from_config(model_config(name))
    assert spec.as_dict() == EXPECTED[name]
    assert spec.trust_remote_code == (name == "nv_embed")  # no other config may run a model's own code


@pytest.mark.parametrize("name", TINY_CONFIGS)
@pytest.mark.parametrize("kind", ["query", "passage"])
def test_matches_model_card_reference(name, kind, tiny_encoder, tiny_dirs):
    encoder = tiny_encoder(name)
    assert encoder.spec.as_dict() == dict(EXPECTED[name], name_or_path=str(tiny_dirs[FAMILY[name]]))
    texts = KIND_TEXTS[kind]
    ours = encode(encoder, texts, kind)
    ref = reference(name, tiny_dirs[FAMILY[name]], texts, kind)
    assert ours.shape == ref.shape == (len(texts), 32)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # the texts must give clearly different vectors, or the comparison would prove little
    assert np.abs(ours[:, None] - ours[None]).max(-1)[~np.eye(len(texts), dtype=bool)].min() > 1e-2
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY_CONFIGS)
@pytest.mark.parametrize("kind", ["query", "passage"])
def test_padding_invariance(name, kind, tiny_encoder):
    encoder = tiny_encoder(name)
    texts = KIND_TEXTS[kind]
    batch = encoder.tokenizer.pad(encoder.tokenizer(texts, kind), kind)
    # right padding whatever the tokenizer's own padding side (the tiny Mistral's is "left")
    mask = batch["attention_mask"]
    assert (mask[:, 0] == 1).all() and (mask.diff(dim=1) <= 0).all() and (mask == 0).any()
    together = encode(encoder, texts, kind)
    alone = np.concatenate([encode(encoder, [t], kind) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY_CONFIGS)
@pytest.mark.parametrize("kind", ["query", "passage"])
def test_max_length_truncates(name, kind, tiny_encoder, tiny_dirs):
    """A very long text gives exactly max_length tokens: the head of its full tokenisation (the prefix first),
    then the closing token: EOS where the config appends it, BERT's [SEP] otherwise; a decoder that appends
    nothing simply stops at max_length."""
    encoder = tiny_encoder(name)
    hf = encoder.tokenizer.tokenizer
    last = hf.eos_token_id if EXPECTED[name]["append_eos"] else hf.sep_token_id
    full = hf(EXPECTED[name][f"{kind}_prefix"] + LONG_TEXT, truncation=True, max_length=4000)["input_ids"]
    assert len(full) > 600
    config = model_config(name, name_or_path=str(tiny_dirs[FAMILY[name]]), **{f"{kind}_max_length": 16})
    short_spec = EncoderSpec.from_config(config)  # the config's max length reaches the tokenizer
    for spec, max_length in ((encoder.spec, EXPECTED[name][f"{kind}_max_length"]), (short_spec, 16)):
        tokenizer = type(encoder.tokenizer)(hf, spec)
        (ids,) = tokenizer([LONG_TEXT], kind)
        assert len(ids) == max_length
        if last is None:
            assert ids == full[:max_length]
            continue
        assert ids[:-1] == full[: max_length - 1] and ids[-1] == last and last not in ids[:-1]
        (short,) = tokenizer(["volcano"], kind)
        assert len(short) <= max_length and short[-1] == last and last not in short[:-1]


def test_e5_mistral_pools_the_appended_eos(tiny_encoder):
    encoder = tiny_encoder("e5_mistral")
    hf = encoder.tokenizer.tokenizer
    for kind, texts in KIND_TEXTS.items():
        for ids in encoder.tokenizer(texts, kind):
            assert ids[0] == hf.bos_token_id and ids[-1] == hf.eos_token_id and ids.count(hf.eos_token_id) == 1


def test_nv_embed_pool_mask_hides_exactly_the_instruction(tiny_encoder):
    """The zeroed pool_mask positions are the card's first `len(tokenizer.tokenize(instruction))` (BOS and the
    instruction's tokens; alone, its final space is a token of its own, '▁', counted in place of BOS), which is
    also sentence-transformers' count with that lone space ignored. The query's first word pools, whether the
    space merges into it ('▁why') or stands alone before it ('▁', '(', pooled as in the card)."""
    encoder = tiny_encoder("nv_embed")
    hf, prefix = encoder.tokenizer.tokenizer, encoder.spec.query_prefix
    card = AutoTokenizer.from_pretrained(encoder.spec.name_or_path, trust_remote_code=True)
    card_count = len(card.tokenize(prefix))
    assert card.tokenize(prefix)[-1] == "\u2581" and len(encoder.tokenizer.prefix_ids["query"]) == card_count
    queries = QUERIES[:3] + ["(lava) flows"]
    batch = encoder.tokenizer.pad(encoder.tokenizer(queries, "query"), "query")
    for row, query in enumerate(queries):
        offsets = hf(prefix + query, return_offsets_mapping=True)["offset_mapping"]
        inside = next(i for i, (start, end) in enumerate(offsets) if end > len(prefix))
        assert inside == (card_count + 1 if query.startswith("(") else card_count)
        n = int(batch["attention_mask"][row].sum())
        assert batch["pool_mask"][row, :card_count].eq(0).all()
        assert batch["pool_mask"][row, card_count:n].eq(1).all()  # the query's first token and its EOS pool
        assert batch["pool_mask"][row, n:].eq(0).all()
    passages = encoder.tokenizer.pad(encoder.tokenizer(PASSAGES, "passage"), "passage")
    assert "pool_mask" not in passages  # no passage prefix: everything attended is pooled


def test_nv_embed_needs_trust_remote_code(tiny_nv_embed_dir, tiny_encoder):
    assert type(tiny_encoder("nv_embed").model).__name__ == "TinyNVEmbedModel"
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModel.from_pretrained(tiny_nv_embed_dir, trust_remote_code=False)
    spec = EncoderSpec.from_config(model_config("nv_embed", name_or_path=str(tiny_nv_embed_dir)))
    with pytest.raises(ValueError, match="trust_remote_code"):
        TextEncoder.load(replace(spec, trust_remote_code=False))


# ---------------------------------------------------------------------------------------------- tiny fixtures

@torch.no_grad()
def test_tiny_models_are_what_the_configs_need(tiny_mistral_dir, tiny_nv_embed_dir, tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mistral_dir)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is None
    ids = tokenizer("why does magma form")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids  # BOS only, like Llama
    assert not (tiny_bert_dir / "modules.json").exists()  # a plain transformers folder: the config decides
    # the remote-code model is the tiny Mistral (weights loaded, not re-initialised) mean-pooled over pool_mask
    mistral = AutoModel.from_pretrained(tiny_mistral_dir).eval()
    nv = AutoModel.from_pretrained(tiny_nv_embed_dir, trust_remote_code=True).eval()
    input_ids = torch.tensor([ids, ids[:3] + [tokenizer.eos_token_id] * (len(ids) - 3)])
    attention_mask = torch.tensor([[1] * len(ids), [1] * 3 + [0] * (len(ids) - 3)])
    pool_mask = attention_mask.clone()
    pool_mask[:, :2] = 0
    hidden = mistral(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    expected = (hidden * pool_mask[..., None]).sum(1) / pool_mask.sum(1, keepdim=True)
    got = nv(input_ids=input_ids, attention_mask=attention_mask, pool_mask=pool_mask)["sentence_embeddings"]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- MiniLM, for real

@pytest.fixture(scope="module")
def minilm_encoder():
    return TextEncoder.load(EncoderSpec.from_config(model_config("minilm")))


def test_minilm_matches_sentence_transformers(minilm_encoder, minilm_path):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path), device="cpu")
    passages = DEMO_PASSAGES[::15] + [LONG_TEXT]  # 20 passages and one over max_seq_length
    queries = DEMO_QUERIES[::6] + ["rome"]  # 20 queries and a one-word one
    for kind, texts in (("passage", passages), ("query", queries)):
        ours = encode(minilm_encoder, texts, kind)
        theirs = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    (ids,) = minilm_encoder.tokenizer([LONG_TEXT], "passage")
    assert len(ids) == 256 == st.max_seq_length


def test_folder_config_reads_the_minilm_folder(minilm_encoder, minilm_path):
    folder = EncoderSpec.from_config(model_config("folder", name_or_path=str(minilm_path)))
    assert folder.pooling == "mean" and folder.normalize is True
    assert folder.query_max_length == folder.passage_max_length == 256
    assert replace(folder, name_or_path=minilm_encoder.spec.name_or_path) == minilm_encoder.spec


def test_folder_config_reads_what_the_installed_sentence_transformers_saves(tiny_bert_dir, tmp_path):
    """sentence-transformers >= 6 keeps the max length only in tokenizer_config.json and the pooling as
    `pooling_mode`; read wrong, a model saved at 48 tokens with CLS pooling would be scored at 512 with mean."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(tiny_bert_dir))
    st = SentenceTransformer(modules=[transformer, models.Pooling(transformer.auto_model.config.hidden_size, "cls"),
                                      models.Normalize()], device="cpu")
    st.max_seq_length = 48
    st.save(str(tmp_path / "saved"))
    spec = EncoderSpec.from_config(model_config("folder", name_or_path=str(tmp_path / "saved")))
    assert (spec.pooling, spec.normalize, spec.query_max_length, spec.passage_max_length) == ("cls", True, 48, 48)
    texts = [LONG_TEXT, "a short one"]
    theirs = SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(encode(TextEncoder.load(spec), texts, "passage"), theirs, atol=1e-5, rtol=0)


def _saved_by_sentence_transformers(tiny_bert_dir, folder, *extra, similarity=None, include_prompt=True):
    from sentence_transformers import SentenceTransformer, models
    transformer = models.Transformer(str(tiny_bert_dir))
    pooling = models.Pooling(transformer.auto_model.config.hidden_size, "mean", include_prompt=include_prompt)
    st = SentenceTransformer(modules=[transformer, pooling, *extra], device="cpu", similarity_fn_name=similarity,
                             prompts={"query": "query: "})
    st.save(str(folder))
    return EncoderSpec.from_config(model_config("folder", name_or_path=str(folder)))


@pytest.mark.parametrize("similarity, normalize", [(None, True), ("cosine", True), ("dot", False)])
def test_a_folder_without_normalize_ranks_by_its_own_similarity(tiny_bert_dir, tmp_path, similarity, normalize):
    """sentence-transformers scores a folder by its similarity_fn_name (cosine unless named): normalising is how
    a dot-product search ranks by cosine."""
    spec = _saved_by_sentence_transformers(tiny_bert_dir, tmp_path / "saved", similarity=similarity)
    assert spec.normalize is normalize


def test_a_folder_whose_pooling_leaves_out_the_prompt_masks_it(tiny_bert_dir, tmp_path):
    assert _saved_by_sentence_transformers(tiny_bert_dir, tmp_path / "saved", include_prompt=False).mask_prefix


def test_a_folder_with_a_module_we_do_not_reproduce_is_refused(tiny_bert_dir, tmp_path):
    from sentence_transformers import models
    with pytest.raises(ValueError, match=r"modules.json: .*Dense is not reproduced"):
        _saved_by_sentence_transformers(tiny_bert_dir, tmp_path / "saved", models.Dense(32, 8))


@pytest.mark.parametrize("files, expected", [
    ({"sentence_bert_config.json": {"max_seq_length": 256}, "tokenizer_config.json": {"model_max_length": 512}}, 256),
    ({"sentence_bert_config.json": {"max_seq_length": 256, "processor_kwargs": {"model_max_length": 64}}}, 64),
    ({"tokenizer_config.json": {"model_max_length": 128}, "config.json": {"max_position_embeddings": 512}}, 128),
    ({"tokenizer_config.json": {"model_max_length": 1e30}, "config.json": {"max_position_embeddings": 514}}, 514),
    ({"config.json": {"max_position_embeddings": -1}}, None),
])
def test_max_length_is_resolved_as_sentence_transformers_does(tmp_path, files, expected):
    from pa_retriever.encode.st_folder import transformer_max_length
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    assert transformer_max_length(tmp_path) == expected


# ------------------------------------------------------------------------------------- inference precision

def test_small_models_keep_fp32_weights_and_autocast_large_ones_load_in_the_compute_dtype(tiny_bert_dir,
                                                                                         monkeypatch):
    import pa_retriever.encode.encoder as encoder_module

    spec = EncoderSpec.from_config({"name_or_path": str(tiny_bert_dir)})
    texts = ["a short query", "a longer passage about something else entirely"]
    reference = TextEncoder.load(spec, precision="fp32").encode(texts, "passage", progress=False)
    small = TextEncoder.load(spec, precision="bf16")
    assert next(small.model.parameters()).dtype == torch.float32 and small.compute_dtype == torch.bfloat16
    autocast = small.encode(texts, "passage", progress=False)
    assert not np.array_equal(autocast, reference)  # bf16 did run
    np.testing.assert_allclose(autocast, reference, atol=2e-2)
    monkeypatch.setattr(encoder_module, "LARGE_MODEL_PARAMETERS", encoder_module.parameter_count(spec))
    large = TextEncoder.load(spec, precision="bf16")
    assert next(large.model.parameters()).dtype == torch.bfloat16
    np.testing.assert_allclose(large.encode(texts, "passage", progress=False), reference, atol=5e-2)
