"""Zero-shot evaluation: our encoder against sentence-transformers' own encode (as MTEB runs it), one split.

    python -m bench.eval_vs_st                                   # all-MiniLM-L6-v2 on SciFact dev
    python -m bench.eval_vs_st --split test --data <BEIR scifact> # the published 0.6451 lives on test

Both embeddings are scored by the same search and pytrec_eval code, so any difference in nDCG@10 comes from
encoding (text joining, truncation, pooling, normalisation). Prints both metric sets, the largest
per-query nDCG@10 difference and the lowest cosine between the two embeddings of a passage.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.st_common import device_name
from pa_retriever.data.beir import load_split
from pa_retriever.encode.encoder import EncodeSettings
from pa_retriever.encode.spec import EncoderSpec, resolve_model_path
from pa_retriever.encode.towers import Towers
from pa_retriever.eval.retrieval import evaluate_embeddings

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("SCIFACT_DIR"), required="SCIFACT_DIR" not in os.environ,
                        help="the BEIR SciFact folder (default: $SCIFACT_DIR)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--precision", default="fp32", help="ours: fp32 (as published figures), auto, bf16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"SKIP: no BEIR data at {args.data}")
        return
    from sentence_transformers import SentenceTransformer

    data = load_split(args.data, args.split)
    encoder = Towers.load(EncoderSpec.from_config({"name_or_path": args.model}), EncodeSettings(precision=args.precision))
    started = time.perf_counter()
    ours = {kind: encoder.encode(texts, kind, progress=False)
            for kind, texts in (("passage", data.passages), ("query", data.queries))}
    ours_seconds = time.perf_counter() - started

    st = SentenceTransformer(resolve_model_path(args.model))
    started = time.perf_counter()
    theirs = {kind: st.encode(texts, convert_to_numpy=True, show_progress_bar=False)
              for kind, texts in (("passage", data.passages), ("query", data.queries))}
    st_seconds = time.perf_counter() - started

    ours_eval = evaluate_embeddings(data, ours["query"], ours["passage"])
    st_eval = evaluate_embeddings(data, theirs["query"], theirs["passage"])
    per_query_gap = max(abs(ours_eval.per_query[q]["ndcg@10"] - st_eval.per_query[q]["ndcg@10"])
                        for q in ours_eval.per_query)
    result = {
        "device": device_name(), "data": f"{args.data.name}/{args.split}", "queries": len(data.queries),
        "model": args.model, "ours_precision": args.precision,
        "ours": {k: round(v, 4) for k, v in ours_eval.metrics.items()},
        "sentence_transformers": {k: round(v, 4) for k, v in st_eval.metrics.items()},
        "max_per_query_ndcg10_difference": round(per_query_gap, 4),
        "min_passage_cosine": round(float((ours["passage"] * theirs["passage"]).sum(1).min()), 6),
        "ours_encode_seconds": round(ours_seconds, 1), "st_encode_seconds": round(st_seconds, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
