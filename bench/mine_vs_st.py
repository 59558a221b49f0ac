"""Time our mining against sentence-transformers' mine_hard_negatives, same data, model and device, one run.

    python -m bench.mine_vs_st                                   # SciFact train split, all-MiniLM-L6-v2
    python -m bench.mine_vs_st --synthetic 100000                # the 100k-passage corpus of docs/anchors
    python -m bench.mine_vs_st --precision fp32 --out result.json
    python -m bench.mine_vs_st --synthetic 1000000 --no-st       # ours alone (ST would take many minutes)

Both sides start cold (no embedding cache; the model loaded inside the timed span, CUDA already started) and
include encoding. Prints both times, the speed ratio, the agreement of the naive top-4 negatives (pairs ST
kept), and how many queries each side keeps with PercPos 95%.
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
from pa_retriever.encode.spec import resolve_model_path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def ours(data_dir: Path, split: str, model: str, precision: str, cache: Path, num_negatives: int,
         batch_size: str) -> dict:
    from hydra import compose, initialize_config_dir

    from pa_retriever.encode.encoder import EncodeSettings
    from pa_retriever.mining.methods import MiningMethod
    from pa_retriever.mining.source import candidate_source
    from pa_retriever.mining.stats import method_stats
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("mine", overrides=[f"teacher.name_or_path={model}", f"encode.precision={precision}",
                                         "encode.progress=false", f"encode.batch_size={batch_size}"])
    started = time.perf_counter()
    data = load_split(data_dir, split)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    source = candidate_source(None, cfg.teacher, cfg.candidates, EncodeSettings.from_config(cfg.encode), cache,
                              data_dir.name)
    candidates = source.load(data)["minilm"]
    seconds = time.perf_counter() - started
    percpos = method_stats([candidates], MiningMethod("topk_percpos", num_negatives, filter="percpos", perc=0.95))
    text = dict(zip(data.query_ids, data.queries))  # keyed by text: queries of one text are mined as one
    naive = {text[q]: ids[ids >= 0][:num_negatives] for q, ids in zip(candidates.query_ids, candidates.neg_idx)}
    return {"seconds": seconds, "naive": {q: [data.corpus_ids[i] for i in v] for q, v in naive.items()},
            "percpos_queries_full": percpos.queries - percpos.queries_short, "queries": percpos.queries,
            "passages": len(data.passages), "load_seconds": load_seconds}


def sentence_transformers(data_dir: Path, split: str, model: str, num_negatives: int, device: str,
                          cache: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    data = load_split(data_dir, split)
    text = dict(zip(data.query_ids, data.queries))
    pairs = [(q, p) for q in data.query_ids for p in data.positives(q)]
    dataset = Dataset.from_dict({"query": [text[q] for q, _ in pairs],
                                 "positive": [data.passages[data.passage_index[p]] for _, p in pairs]})
    started = time.perf_counter()
    st = SentenceTransformer(resolve_model_path(model), device=device)
    naive = mine_hard_negatives(dataset, st, corpus=data.passages, num_negatives=num_negatives,
                                sampling_strategy="top", output_format="n-tuple", batch_size=64, verbose=False,
                                cache_folder=str(cache))
    seconds = time.perf_counter() - started
    percpos = mine_hard_negatives(dataset, st, corpus=data.passages, num_negatives=num_negatives,
                                  relative_margin=0.05, sampling_strategy="top", output_format="n-tuple",
                                  batch_size=64, verbose=False, cache_folder=str(cache))  # ST's PercPos 95%, untimed
    passage_id = {text: pid for pid, text in zip(data.corpus_ids, data.passages)}
    rows = {}
    for row in naive:
        negatives = [row[f"negative_{i + 1}"] for i in range(num_negatives)]
        rows.setdefault(row["query"], []).append([passage_id[n] for n in negatives])
    return {"seconds": seconds, "naive": rows, "pairs": len(pairs), "naive_rows": len(naive),
            "percpos_rows": len(percpos)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("SCIFACT_DIR"), required="SCIFACT_DIR" not in os.environ,
                        help="the BEIR SciFact folder (default: $SCIFACT_DIR)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--precision", default="auto", help="ours: auto (bf16 where native), fp32, bf16")
    parser.add_argument("--synthetic", type=int, default=0, help="build the anchors' corpus with this many passages")
    parser.add_argument("--num-negatives", type=int, default=4)
    parser.add_argument("--batch-size", default="auto", help="ours: encode.batch_size (rows at full length)")
    parser.add_argument("--no-st", action="store_true", help="ours alone")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"SKIP: no BEIR data at {args.data}")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.zeros(1, device=device)  # start CUDA outside both timed spans
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, split = args.data, args.split
        if args.synthetic:
            data_dir, split = build_synthetic(args.data, args.synthetic, Path(tmp) / "synthetic"), "train"
        st = None if args.no_st else sentence_transformers(data_dir, split, args.model, args.num_negatives, device,
                                                           Path(tmp) / "st_cache")
        us = ours(data_dir, split, args.model, args.precision, Path(tmp) / "cache", args.num_negatives,
                  args.batch_size)
    result = {
        "device": device_name(),
        "data": f"{data_dir.name if not args.synthetic else f'synthetic {args.synthetic}'} / {split}",
        "passages": us["passages"], "queries": us["queries"],
        "ours_seconds": round(us["seconds"], 1), "ours_load_seconds": round(us["load_seconds"], 1),
        "ours_precision": args.precision,
        "ours_encode_batch_size": args.batch_size,
        "percpos95_queries_with_all_negatives": {"ours": f"{us['percpos_queries_full']}/{us['queries']}"},
    }
    if st is not None:
        agree = total = 0
        for query, lists in st["naive"].items():
            for negatives in lists:
                agree += len(set(negatives) & set(us["naive"][query]))
                total += len(negatives)
        result.update({"st_seconds": round(st["seconds"], 1), "speedup": round(st["seconds"] / us["seconds"], 2),
                       "naive_top4_agreement": round(agree / max(1, total), 4),
                       "st_naive_rows_kept": f"{st['naive_rows']}/{st['pairs']}"})
        result["percpos95_queries_with_all_negatives"]["st_rows_kept"] = f"{st['percpos_rows']}/{st['pairs']}"
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
