#!/usr/bin/env bash
# Every GPU check in one call, each stage's JSON record in $OUT/records (or logs/gpu_suite/records), its log
# in logs/: where encoding and a training step spend their time (bench/gpu_probe.py), the GPU tests (search, FSDP's
# export, bidirectional flash attention, a bf16 step against the CPU's, exact resume), mining against
# sentence-transformers (SciFact, 100k and 1M synthetic passages), training throughput against it, a
# Mistral-7B-shaped LoRA student's memory and speed, the SciFact final recipe at 256 tokens with attention dropout,
# and zero-shot parity. A failed stage is reported and the next one runs; the whole suite ends by DEADLINE seconds
# (default 560), each stage cut at its share.
#   bash bench/gpu_suite.sh                                  # every stage
#   STAGES="mine_1m train" bash bench/gpu_suite.sh           # some of them
#   ST_100K=0 PROFILE=1 ...                                  # 100k without ST's side; Lightning's time per hook
# On the lent GPU machine: bash ../shared/tools/device-kit.sh here once, then run with carry [".whl", ".carry"]:
#   source .carry/device-setup.sh && bash bench/gpu_suite.sh
# It ends by packing records and logs into $OUT/gpu_suite.tgz (a device call returns at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-logs/gpu_suite}
data=${SCIFACT_DIR:-}
model=${MINILM_DIR:-sentence-transformers/all-MiniLM-L6-v2}
stages=${STAGES:-env probe tests mine_scifact mine_100k train mine_1m llm final eval}
deadline=${DEADLINE:-560}
needs_data=$(for s in $stages; do case $s in env|tests|llm) ;; *) echo "$s" ;; esac; done)
[ -z "$needs_data" ] || [ -f "$data/corpus.jsonl" ] || {
  echo "SCIFACT_DIR must name the BEIR SciFact folder (train/dev qrels) for: $needs_data"; exit 2; }
mkdir -p "$out/records" "$out/logs"
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
tmp=$(mktemp -d)

run() {  # run STAGE LIMIT COMMAND...: the command's output to logs/STAGE.log, its status and time to the console
  local stage=$1 limit=$2; shift 2
  case " $stages " in *" $stage "*) ;; *) return 0 ;; esac
  local left=$((deadline - SECONDS))
  [ "$left" -lt 20 ] && { echo "$stage: skipped, ${left}s left"; return 0; }
  [ "$limit" -gt "$left" ] && limit=$left
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$out/logs/$stage.log" 2>&1
  local rc=$?
  echo "$stage: rc=$rc in $((SECONDS - started))s (limit ${limit}s)"
  [ "$rc" -ne 0 ] && tail -n 25 "$out/logs/$stage.log"
  return 0
}

run env 30 bash -c "nvidia-smi; python -c 'import torch, transformers, lightning, sentence_transformers as st;
print(torch.__version__, transformers.__version__, lightning.__version__, st.__version__, torch.cuda.get_device_name())'"
run probe 90 python -m bench.gpu_probe --data "$data" --model "$model" --out "$out/records/probe.json"
run tests 200 python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
run mine_scifact 60 python -m bench.mine_vs_st --data "$data" --model "$model" --out "$out/records/mine_scifact.json"
run mine_100k 150 python -m bench.mine_vs_st --data "$data" --model "$model" --synthetic 100000 \
  $([ "${ST_100K:-1}" = 0 ] && echo --no-st) --out "$out/records/mine_100k.json"
run train 120 python -m bench.train_vs_st --data "$data" --model "$model" --steps 60 --warmup 10 \
  $([ "${PROFILE:-0}" = 1 ] && echo --profile) --out "$out/records/train.json"
run mine_1m 150 python -m bench.mine_vs_st --data "$data" --model "$model" --synthetic 1000000 --no-st \
  --out "$out/records/mine_1m.json"
# A Mistral-7B-shaped student, LoRA + checkpointing + GradCache, global batch 128, against sentence-transformers
# (a 7B step takes tens of seconds on one GPU: STAGES=llm alone gives it the whole deadline)
run llm 420 python -m bench.llm_memory --batch 128 --chunk 16 --steps 3 --warmup 1 --out "$out/records/llm_memory.json"
# The final recipe as the CPU cannot afford it: 256 tokens, attention dropout on; train split -> dev.
run final 150 bash -c "python train.py experiment=scifact/final data.path='$data' data.train_split=train \
  data.split=dev model.name_or_path='$model' teacher.name_or_path='$model' model.query_max_length=256 \
  model.passage_max_length=256 module.config_overrides=null datamodule.num_workers=4 trainer=gpu seed=1 \
  encode.progress=false hydra.run.dir='$tmp/final' paths.cache_dir='$tmp/cache' \
  && cp '$tmp/final/summary.json' '$out/records/final_recipe.json'"
run eval 60 python -m bench.eval_vs_st --data "$data" --model "$model" --out "$out/records/eval_scifact_dev.json"

for f in "$out"/records/*.json; do [ -f "$f" ] && { echo "== $(basename "$f")"; cat "$f"; }; done
if [ -n "${OUT:-}" ]; then  # a device call returns at most 8 files: one archive
  tar -czf "$OUT/gpu_suite.tgz" -C "$OUT" records logs && rm -rf "$OUT/records" "$OUT/logs"
fi
rm -rf "$tmp"
