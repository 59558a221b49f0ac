"""Peak memory and samples/s of an LLM student trained the NV-Retriever way, against sentence-transformers.

    python -m bench.llm_memory                                   # a Mistral-7B-shaped student (random weights)
    python -m bench.llm_memory --hidden 1024 --layers 4 --intermediate 3584 --steps 3   # scaled down, for a CPU
    python -m bench.llm_memory --batch 128 --chunk 16 --out llm_memory.json             # the GPU target's batch

Both sides train the same randomly initialised Mistral-shaped model (built from its config: nothing to download)
with LoRA (rank 16, alpha 32, on the attention and MLP projections), gradient checkpointing and a cached
contrastive loss, batch B x (query + positive + 1 negative) at 192 / 512 tokens, bf16 where native: ours is
train.py's experiment=nv_retriever_v1/stage1 with module.grad_cache_chunk; sentence-transformers is its trainer
with CachedMultipleNegativesRankingLoss and a peft adapter. Each side runs in its own process, so its peak memory
(GPU: max allocated; CPU: peak RSS) is its own. The texts are built to fill 192 and 512 tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LORA = {"r": 16, "alpha": 32, "dropout": 0.1}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(folder: Path, args) -> None:
    """A BPE tokenizer trained on the demo texts and a random Mistral of the asked shape, saved in bf16; and a
    BEIR folder whose queries fill 192 tokens and passages 512 (each query's positive and one random passage)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import MistralConfig, MistralModel, PreTrainedTokenizerFast
    demo = [json.loads(line)["text"] for line in open(ROOT / "data" / "demo" / "corpus.jsonl")]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(demo, trainers.BpeTrainer(vocab_size=4000, special_tokens=["<unk>", "<s>", "</s>"],
                                                          show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="</s>", padding_side="right")
    tokenizer.save_pretrained(folder / "model")
    config = MistralConfig(vocab_size=32000, hidden_size=args.hidden, num_hidden_layers=args.layers,
                           num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                           intermediate_size=args.intermediate, max_position_embeddings=4096, sliding_window=None,
                           bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        MistralModel(config).to(torch.bfloat16).save_pretrained(folder / "model")

    def fill(first: int, tokens: int) -> str:  # demo passages joined until the text holds `tokens` tokens
        words: list[str] = []
        while len(tokenizer(" ".join(words))["input_ids"]) < tokens:
            words += demo[(first + len(words)) % len(demo)].split()
        ids = tokenizer(" ".join(words))["input_ids"][1:tokens - 2]
        return tokenizer.decode(ids)

    data = folder / "data"
    (data / "qrels").mkdir(parents=True)
    n = 4 * args.batch
    with open(data / "corpus.jsonl", "w") as f:
        for i in range(2 * n):
            f.write(json.dumps({"_id": f"p{i}", "title": "", "text": fill(i, 500)}) + "\n")
    with open(data / "queries.jsonl", "w") as f, open(data / "qrels" / "train.tsv", "w") as q:
        q.write("query-id\tcorpus-id\tscore\n")
        for i in range(n):
            f.write(json.dumps({"_id": f"q{i}", "text": fill(7 * i + 3, 150)}) + "\n")
            q.write(f"q{i}\tp{i}\t1\n")


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(folder: Path, args) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from pa_retriever.tasks.train import train
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "experiment=nv_retriever_v1/stage1", f"model.name_or_path={folder / 'model'}", "data=local",
            f"data.path={folder / 'data'}", "data.val_split=null", "mining=random", "mining.num_negatives=1",
            f"datamodule.batch_size={args.batch}", "datamodule.num_workers=2", f"module.grad_cache_chunk={args.chunk}",
            f"module.lora.r={LORA['r']}", f"module.lora.alpha={LORA['alpha']}", "trainer.accumulate_grad_batches=1",
            f"+trainer.max_steps={args.steps}", "trainer.max_epochs=-1", "validate_before_training=false",
            "test_after_training=false", "logger=csv", "~callbacks.model_checkpoint", "~callbacks.last_checkpoint",
            "+trainer.enable_checkpointing=false", "+callbacks.step_timer._target_=bench.train_vs_st.StepTimer",
            f"+callbacks.step_timer.steps=[{args.warmup},{args.steps}]", f"paths.cache_dir={folder / 'cache'}",
            "encode.progress=false"])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder / "ours")
        del cfg["hydra"]
    train(cfg)
    from bench.train_vs_st import STEP_TIMES, rate
    return {"samples_per_s": round(rate(STEP_TIMES, args.warmup, args.steps, args.batch), 2),
            "peak_memory_mb": round(peak_memory_mb())}


def sentence_transformers(folder: Path, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        models,
    )
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from bench.train_vs_st import _now
    from pa_retriever.training.module import training_precision
    transformer = models.Transformer(str(folder / "model"), max_seq_length=512)
    transformer.auto_model = transformer.auto_model.to(torch.bfloat16)  # as ours: bf16 weights, fp32 adapters
    transformer.auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    transformer.auto_model = get_peft_model(transformer.auto_model, LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=TARGETS))
    model = SentenceTransformer(modules=[transformer, models.Pooling(args.hidden, "mean"), models.Normalize()])
    rows = [json.loads(line) for line in open(folder / "data" / "queries.jsonl")]
    corpus = [json.loads(line)["text"] for line in open(folder / "data" / "corpus.jsonl")]
    n = len(rows)
    dataset = Dataset.from_dict({"anchor": [r["text"] for r in rows], "positive": corpus[:n],
                                 "negative": corpus[n:2 * n]})
    times: dict[int, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, _args, state, *a, **k):
            if state.global_step in (args.warmup, args.steps):
                times[state.global_step] = _now()

    training = SentenceTransformerTrainingArguments(
        output_dir=str(folder / "st"), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=1e-5, bf16=training_precision("auto") == "bf16-mixed", use_cpu=not torch.cuda.is_available(),
        logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=2)
    trainer = SentenceTransformerTrainer(model=model, args=training, train_dataset=dataset, callbacks=[Timer()],
                                         loss=CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.chunk))
    trainer.train()
    from bench.train_vs_st import rate
    return {"samples_per_s": round(rate(times, args.warmup, args.steps, args.batch), 2),
            "peak_memory_mb": round(peak_memory_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=8, help="texts per forward pass of the cached loss")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--side", choices=["both", "ours", "st"], default="both")
    parser.add_argument("--folder", type=Path, help="(internal) the built model and data")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.side != "both":
        result = (ours if args.side == "ours" else sentence_transformers)(args.folder, args)
        print("RESULT " + json.dumps(result))
        return
    from bench.st_common import device_name
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        build(folder, args)
        built = time.perf_counter() - started
        sides = {}
        for side in ("ours", "st"):  # a process each: each peak is its own
            command = [sys.executable, "-m", "bench.llm_memory", "--side", side, "--folder", str(folder),
                       *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                         if k not in ("side", "folder", "out") and v is not None]]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                raise RuntimeError(f"{side} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            sides[side] = json.loads(lines[-1][len("RESULT "):])
    shape = {k: getattr(args, k) for k in ("hidden", "layers", "heads", "kv_heads", "intermediate")}
    result = {"device": device_name(), "shape": shape, "batch": args.batch, "chunk": args.chunk,
              "lengths": {"query": 192, "passage": 512}, "texts_per_sample": 3, "lora": LORA, "steps": args.steps,
              "build_seconds": round(built, 1), "ours": sides["ours"], "sentence_transformers": sides["st"],
              "speedup": round(sides["ours"]["samples_per_s"] / sides["st"]["samples_per_s"], 2)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
