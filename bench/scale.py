"""Cost of mining and evaluation against corpus size (docs/benchmarks.md): synthetic corpora (bench/synthetic.py)
mined with a small random encoder, so that encoding does not hide search, storage and bookkeeping.

    python bench/scale.py --passages 100000                  # one size: time per stage, peak RSS; last line JSON
    python bench/scale.py --passages 100000 --st faiss       # sentence-transformers' mine_hard_negatives instead
    python bench/scale.py --sweep 100000,300000,1000000 --st faiss,torch --out docs/bench/scale_cpu.json \\
        --plot docs/bench/scale_cpu.png                      # each size and side in its own process; table, plot
    python bench/scale.py --datamodule 500000 --passages 100000   # the training DataModule at MS MARCO's size
    python bench/scale.py --report docs/bench/scale_cpu.json --plot docs/bench/scale_cpu.png   # saved rows again

One size runs in one process, so that its peak RSS (ru_maxrss) is its own. `text_mb` is what loading the split
added to the process (the corpus text as Python holds it); the memory target reads `peak_rss_mb - text_mb`.
The data is $SCIFACT_DIR's sentences when set (else made-up sentences); corpora and the encoder are built once
under --work and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.synthetic import build_synthetic

ROOT = Path(__file__).resolve().parents[1]

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def random_encoder(out: Path, hidden: int = 64, layers: int = 1, max_length: int = 128) -> Path:
    """A random BERT with MiniLM's tokenizer, saved as a sentence-transformers folder (mean pooling)."""
    if (out / "modules.json").is_file():
        return out
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pa_retriever.encode.spec import resolve_model_path
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM))
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=max(1, hidden // 32), intermediate_size=2 * hidden,
                                pad_token_id=tokenizer.pad_token_id))
    with tempfile.TemporaryDirectory() as tmp:
        bert.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        SentenceTransformer(modules=[models.Transformer(tmp, max_seq_length=max_length),
                                     models.Pooling(hidden, "mean")], device="cpu").save(str(out))
    return out


def stage(timings: dict, name: str, run):
    started = time.perf_counter()
    result = run()
    timings[name] = {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_rss_mb())}
    return result


def ours(data_dir: Path, model: Path, cache: Path) -> dict:
    """Encode (cached fp16 shards), search and store the candidates, load them; then evaluate the same model."""
    from hydra import compose, initialize_config_dir

    from pa_retriever.data.beir import load_split
    from pa_retriever.encode.encoder import EncodeSettings
    from pa_retriever.encode.spec import EncoderSpec
    from pa_retriever.encode.towers import Towers
    from pa_retriever.eval.retrieval import score_model
    from pa_retriever.mining.miner import trainable_queries
    from pa_retriever.mining.source import candidate_source
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("mine", overrides=["teacher=folder", f"teacher.name_or_path={model}", "teacher.name=random",
                                         "encode.precision=fp32", "encode.progress=false"])
    timings: dict = {}
    before = current_rss_mb()
    data = stage(timings, "load", lambda: load_split(data_dir, "train"))
    text_mb = current_rss_mb() - before
    settings = EncodeSettings.from_config(cfg.encode)
    source = candidate_source(None, cfg.teacher, cfg.candidates, settings, cache, data_dir.name)
    rows, _ = trainable_queries(data)
    teacher = source.teachers[0]
    stage(timings, "encode", lambda: teacher.prepare(data, [data.queries[i] for i in rows]))
    stage(timings, "search_and_store", lambda: source.mine(data))
    candidates = stage(timings, "load_candidates", lambda: source.load(data))["random"]
    mined = sum(timings[s]["seconds"] for s in ("encode", "search_and_store", "load_candidates"))
    towers = Towers.load(EncoderSpec.from_config(cfg.teacher), settings)
    result = stage(timings, "evaluate", lambda: score_model(towers, data, settings))
    return {"seconds": round(mined, 2), "stages": timings, "text_mb": round(text_mb),
            "candidates": list(candidates.neg_idx.shape), "recall@100": round(result.metrics["recall@100"], 4)}


def sentence_transformers(data_dir: Path, model: Path, use_faiss: bool) -> dict:
    """mine_hard_negatives with the same model: naive top-100 (our stored depth), encoding included."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from pa_retriever.data.beir import load_split
    timings: dict = {}
    before = current_rss_mb()
    data = stage(timings, "load", lambda: load_split(data_dir, "train"))
    text_mb = current_rss_mb() - before
    text = dict(zip(data.query_ids, data.queries))
    pairs = [(text[q], data.passages[data.passage_index[p]]) for q in data.query_ids for p in data.positives(q)]
    dataset = Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    st = SentenceTransformer(str(model), device="cpu")
    mined = stage(timings, "mine", lambda: mine_hard_negatives(
        dataset, st, corpus=data.passages, num_negatives=100, sampling_strategy="top", output_format="labeled-list",
        batch_size=256, use_faiss=use_faiss, verbose=False))
    return {"seconds": timings["mine"]["seconds"], "stages": timings, "text_mb": round(text_mb), "rows": len(mined)}


class StoredCandidates:
    """Candidates made up in memory (random rows, descending scores), in place of a mined source."""

    name = "made up"

    def __init__(self, candidates):
        self.candidates = candidates

    def check(self, method, distill: bool = False, embeddings: bool = False) -> None:
        pass

    def mine(self, data, rank: int = 0, world: int = 1) -> None:
        pass

    def load(self, data) -> dict:
        return {"made up": self.candidates}


def datamodule(args: argparse.Namespace) -> dict:
    """The training DataModule over `--datamodule` queries x 100 candidates + 32 tail (MS MARCO's train size is 500k
    queries): setup (tokenising every query and every stored passage), then batches drawn as training draws them."""
    import numpy as np

    from pa_retriever.data.beir import LoadReport, RetrievalData, load_split
    from pa_retriever.data.candidates import CandidateArrays
    from pa_retriever.encode.spec import EncoderSpec
    from pa_retriever.mining.methods import MiningMethod
    from pa_retriever.training.datamodule import RetrievalDataModule, TrainingPart
    corpus = load_split(build_synthetic(args.data, args.passages, args.work / f"synthetic-{args.passages}",
                                        args.queries), "train")
    n, rng, timings = args.datamodule, np.random.default_rng(0), {}
    before = current_rss_mb()
    texts = [f"{corpus.queries[i % len(corpus.queries)]} ({i})" for i in range(n)]
    pos = rng.integers(0, args.passages, (n, 1))
    data = RetrievalData(corpus.corpus_ids, corpus.passages, [f"q{i}" for i in range(n)], texts,
                         {f"q{i}": {corpus.corpus_ids[p]: 1} for i, p in enumerate(pos[:, 0])}, LoadReport("made up"))
    scores = lambda shape, top: np.sort(rng.uniform(0, top, shape).astype(np.float32), 1)[:, ::-1]  # noqa: E731
    candidates = CandidateArrays(data.query_ids, pos, np.full((n, 1), 0.9, np.float32),
                                 rng.integers(0, args.passages, (n, 100)), scores((n, 100), 0.95),
                                 rng.integers(0, args.passages, (n, 32)), scores((n, 32), 0.3), args.passages)
    text_mb = current_rss_mb() - before
    spec = EncoderSpec.from_folder(random_encoder(args.work / "random-encoder"))
    part = TrainingPart("made up", data, StoredCandidates(candidates),
                        MiningMethod("topk_percpos", 4, filter="percpos", perc=0.95), spec)
    module = RetrievalDataModule([part], batch_size=32, num_workers=0, progress=False)
    stage(timings, "setup", lambda: module.setup("fit"))
    loader = module.train_dataloader()

    def draw(batches: int = 500) -> int:
        return sum(1 for _, _ in zip(range(batches), loader))

    drawn = stage(timings, "batches", draw)
    return {"side": "ours (DataModule)", "queries": n, "passages": args.passages, "candidates": [n, 100 + 32],
            "stages": timings, "text_mb": round(text_mb), "peak_rss_mb": round(peak_rss_mb()),
            "batches_per_epoch": len(loader), "batches_drawn": drawn,
            "batch_ms": round(1000 * timings["batches"]["seconds"] / drawn, 2)}


def one_size(args: argparse.Namespace) -> dict:
    import torch
    started = time.perf_counter()
    data_dir = build_synthetic(args.data, args.passages, args.work / f"synthetic-{args.passages}", args.queries)
    build_seconds = time.perf_counter() - started
    model = random_encoder(args.work / "random-encoder")
    side = args.st or "ours"
    if side == "ours":
        with tempfile.TemporaryDirectory(dir=args.work) as cache:  # cold: nothing encoded before
            result = ours(data_dir, model, Path(cache))
    else:
        result = sentence_transformers(data_dir, model, use_faiss=side == "faiss")
    from bench.st_common import device_name
    return {"side": side if side == "ours" else f"sentence-transformers ({side})", "passages": args.passages,
            "queries": args.queries, **result, "peak_rss_mb": round(peak_rss_mb()),
            "build_seconds": round(build_seconds, 1), "device": device_name(), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d")}


def sweep(args: argparse.Namespace) -> list[dict]:
    """Every size and side in a fresh process (its own peak RSS); a side that fails (out of memory) is noted."""
    rows = []
    for passages in (int(n) for n in args.sweep.split(",")):
        for side in ["ours"] + [s for s in (args.st or "").split(",") if s]:
            command = [sys.executable, __file__, "--passages", str(passages), "--queries", str(args.queries),
                       "--work", str(args.work)] + (["--data", str(args.data)] if args.data else []) + \
                      ([] if side == "ours" else ["--st", side])
            print("$", " ".join(command), flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            if done.returncode or not lines:
                print(done.stderr[-2000:], file=sys.stderr)
                rows.append({"side": side, "passages": passages, "failed": f"exit {done.returncode}"})
            else:
                rows.append(json.loads(lines[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: seconds, seconds per million passages (flat when linear), peak and peak above the text."""
    out = ["| side | passages | seconds | s per 1M | encode | search + store | evaluate | peak RSS MB | "
           "peak - text MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "failed" in r:
            out.append(f"| {r['side']} | {r['passages']:,} | {r['failed']} | | | | | | |")
            continue
        st = r["stages"]
        cell = lambda name: f"{st[name]['seconds']:.1f}" if name in st else ""  # noqa: E731
        out.append(f"| {r['side']} | {r['passages']:,} | {r['seconds']:.1f} | "
                   f"{r['seconds'] / r['passages'] * 1e6:.0f} | {cell('encode')} | {cell('search_and_store')} | "
                   f"{cell('evaluate')} | {r['peak_rss_mb']:,} | {r['peak_rss_mb'] - r['text_mb']:,} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for side in dict.fromkeys(r["side"] for r in rows):
        done = [r for r in rows if r["side"] == side and "failed" not in r]
        sizes = [r["passages"] for r in done]
        time_ax.loglog(sizes, [r["seconds"] for r in done], "o-", label=side)
        memory_ax.loglog(sizes, [r["peak_rss_mb"] for r in done], "o-", label=side)
    time_ax.set(xlabel="passages", ylabel="seconds (encode + search + store)", title="mining time")
    memory_ax.set(xlabel="passages", ylabel="peak RSS (MB)", title="peak memory")
    for ax in (time_ax, memory_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, help="one corpus size, in this process")
    parser.add_argument("--sweep", help="sizes, comma-separated: each in its own process")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--datamodule", type=int, help="the training DataModule over this many made-up queries")
    parser.add_argument("--st", help="sentence-transformers instead of ours (one size: faiss or torch); with --sweep "
                                     "beside ours, comma-separated")
    parser.add_argument("--data", type=Path, default=os.environ.get("SCIFACT_DIR") or None,
                        help="a BEIR SciFact folder for the sentences (default: $SCIFACT_DIR, else made up)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pa-retriever-scale",
                        help="corpora and the random encoder, built once")
    parser.add_argument("--out", type=Path, help="--sweep: the rows as JSON")
    parser.add_argument("--report", type=Path, help="the table (and --plot) of rows a sweep saved")
    parser.add_argument("--plot", type=Path, help="--sweep: the log-log plot")
    args = parser.parse_args()
    if args.data and not (args.data / "corpus.jsonl").is_file():
        args.data = None
    args.work.mkdir(parents=True, exist_ok=True)
    if args.sweep or args.report:
        rows = json.loads(args.report.read_text()) if args.report else sweep(args)
        print(table(rows))
        if args.out and args.sweep:
            args.out.write_text(json.dumps(rows, indent=2) + "\n")
        if args.plot:
            plot(rows, args.plot)
        return
    if not args.passages:
        parser.error("give --passages or --sweep")
    print(json.dumps(datamodule(args) if args.datamodule else one_size(args)))


if __name__ == "__main__":
    main()
