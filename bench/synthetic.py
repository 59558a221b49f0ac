"""The synthetic corpus of the speed anchors (100k passages there), at any size: passages of 6 SciFact sentences.

Every SciFact sentence recurs in about a dozen passages at 100k, so a teacher's top-k holds many passages that
share the query's sentence: false negatives by construction, as at the scale of the paper's datasets.

    python -m bench.synthetic --data <BEIR scifact> --passages 1000000 --out /tmp/synthetic-1m
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def sentences(scifact: Path) -> list[str]:
    """SciFact's abstracts split at '. ', '! ' and '? ' (the mark kept), sentences longer than 40 characters."""
    found = []
    for line in open(scifact / "corpus.jsonl", encoding="utf-8"):
        text = json.loads(line)["text"]
        for part in text.replace("! ", "!\n").replace("? ", "?\n").replace(". ", ".\n").split("\n"):
            if len(part.strip()) > 40:
                found.append(part.strip())
    return found


def made_up_sentences(n: int = 30_000) -> list[str]:
    """Where SciFact is absent: sentences of made-up words, Zipf-distributed as a language's are (seeded)."""
    rng = random.Random(0)
    letters = "etaoinshrdlcumwfgypbvk"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(20_000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    return [" ".join(rng.choices(words, weights, k=rng.randint(8, 25))).capitalize() + "." for _ in range(n)]


def build_synthetic(scifact: Path | None, size: int, out: Path, n_queries: int = 2000) -> Path:
    """A BEIR folder at `out` (train split only): `size` passages, each 6 sentences drawn with random.Random(0);
    `n_queries` of them are positives, and each one's query is its first '. '-separated piece. Built once: a
    folder already holding this size and query count is reused. Without SciFact, made-up sentences."""
    stamp = out / "built.json"
    built = {"passages": size, "queries": n_queries, "sentences": "scifact" if scifact else "made up"}
    if stamp.is_file() and json.loads(stamp.read_text()) == built:
        return out
    pool = sentences(scifact) if scifact else made_up_sentences()
    rng = random.Random(0)
    passages = [" ".join(rng.sample(pool, 6)) for _ in range(size)]
    positives = rng.sample(range(size), min(n_queries, size))
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, p in enumerate(passages):
            f.write(json.dumps({"_id": f"p{i}", "title": "", "text": p}) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as f, open(out / "qrels" / "train.tsv", "w") as q:
        q.write("query-id\tcorpus-id\tscore\n")
        for n, i in enumerate(positives):
            f.write(json.dumps({"_id": f"q{n}", "text": passages[i].split(". ")[0]}) + "\n")
            q.write(f"q{n}\tp{i}\t1\n")
    stamp.write_text(json.dumps(built))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a BEIR SciFact folder (its corpus.jsonl)")
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(build_synthetic(args.data, args.passages, args.out, args.queries))


if __name__ == "__main__":
    main()
