"""Where encoding and a training step spend their time on this device, part by part, as JSON.

    python -m bench.gpu_probe --data <BEIR scifact> --model <MiniLM folder> [--passages 20000]

Tokenising alone (1 and 2 threads), pinning a batch, the model's forward alone at the encode batch shape
(device time by CUDA events against host time to queue it; SDPA and eager attention), the whole `encode`, and a
training step split into forward, backward and optimizer at the benchmark's shape (32 queries + 160 passages,
256 tokens). Runs on a CPU too (host times only), so it can be checked before a device is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch

from bench.st_common import device_name
from bench.synthetic import build_synthetic
from pa_retriever.data.beir import load_split
from pa_retriever.encode.encoder import TextEncoder, length_sorted_batches
from pa_retriever.encode.spec import EncoderSpec
from pa_retriever.encode.tokenizer import tokenize_all

CUDA = torch.cuda.is_available()


def timed(fn, repeat: int = 5) -> dict:
    """Host seconds to return, and device seconds between CUDA events (on a GPU), per call after one warm-up."""
    fn()
    if CUDA:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    host = time.perf_counter()
    for _ in range(repeat):
        fn()
    host = (time.perf_counter() - host) / repeat
    out = {"host_ms": round(1000 * host, 2)}
    if CUDA:
        end.record()
        torch.cuda.synchronize()
        out["device_ms"] = round(start.elapsed_time(end) / repeat, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--passages", type=int, default=20_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if CUDA else "cpu")
    result: dict = {"device": device_name(), "cpus": os.cpu_count(),
                    "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM")}
    with tempfile.TemporaryDirectory() as tmp:
        data = load_split(build_synthetic(args.data, args.passages, Path(tmp) / "synthetic"), "train")
    texts = data.passages
    spec = EncoderSpec.from_config({"name_or_path": args.model, "passage_max_length": 256})
    encoder = TextEncoder.load(spec, device, precision="auto")
    result["encode_batch_size"], result["tokenize_threads"] = encoder.batch_size, encoder.tokenize_threads

    for threads in (1, 2):
        started = time.perf_counter()
        tokens = tokenize_all(encoder.tokenizer, texts, "passage", threads=threads, progress=False)
        result[f"tokenize_per_s_{threads}_threads"] = round(len(texts) / (time.perf_counter() - started))
    rows = next(length_sorted_batches(tokens.lengths(), encoder.batch_size * 256, max_rows=8 * encoder.batch_size))
    batch = encoder.tokenizer.pad(tokens.take(rows), "passage")
    result["batch_shape"] = list(batch["input_ids"].shape)
    result["pad_batch"] = timed(lambda: encoder.tokenizer.pad(tokens.take(rows), "passage"))
    if CUDA:
        result["pin_and_copy_batch"] = timed(lambda: {k: v.pin_memory().to(device, non_blocking=True)
                                                      for k, v in batch.items()})
        result["plain_copy_batch"] = timed(lambda: {k: v.to(device) for k, v in batch.items()})
    on_device = {k: v.to(device) for k, v in batch.items()}
    autocast = torch.autocast(device.type, dtype=encoder.compute_dtype or torch.float32,
                              enabled=encoder.compute_dtype not in (None, torch.float32))
    for implementation in ("sdpa", "eager"):
        encoder.model.set_attn_implementation(implementation)
        with torch.inference_mode(), autocast:
            result[f"forward_{implementation}"] = timed(lambda: encoder(**on_device))
    encoder.model.set_attn_implementation("sdpa")
    started = time.perf_counter()
    encoder.encode(texts, "passage", progress=False)
    result["encode_per_s"] = round(len(texts) / (time.perf_counter() - started))

    # A training step at the throughput benchmark's shape: 32 queries + 160 passages of 256 tokens, bf16 autocast.
    model = encoder.model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    queries = {k: v[:32, :32].to(device) for k, v in batch.items()}
    passages = {k: v[:160].to(device) for k, v in batch.items()}

    def forward():
        with autocast:
            q, p = encoder(**queries), encoder(**passages)
            return (q @ p.T).float().logsumexp(1).mean()

    result["train_forward"] = timed(forward)
    result["train_forward_backward"] = timed(lambda: forward().backward())
    result["train_step"] = timed(lambda: (forward().backward(), optimizer.step(), optimizer.zero_grad()))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
