#!/usr/bin/env bash
# Every speed benchmark against sentence-transformers in one GPU call (about 5 minutes on an H100), each
# result as JSON in $OUT (or logs/bench): zero-shot parity, mining on SciFact and on the 100k-passage
# corpus of the anchors, training throughput.
#   bash bench/gpu_suite.sh
# On the lent GPU machine: bash ../shared/tools/device-kit.sh here once, then run with carry [".whl", ".carry"]:
#   source .carry/device-setup.sh && bash bench/gpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-logs/bench}
data=${SCIFACT_DIR:-../shared/data/scifact}
model=${MINILM_DIR:-sentence-transformers/all-MiniLM-L6-v2}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
python bench/eval_vs_st.py --data "$data" --model "$model" --out "$out/eval_scifact_dev.json"
python bench/mine_vs_st.py --data "$data" --model "$model" --out "$out/mine_scifact.json"
python bench/mine_vs_st.py --data "$data" --model "$model" --synthetic 100000 --out "$out/mine_100k.json"
python bench/train_vs_st.py --data "$data" --model "$model" --steps 60 --warmup 10 --out "$out/train.json"
