#!/usr/bin/env bash
# Ours against sentence-transformers at one recipe, scored by 5-fold cross-validation over SciFact train+dev
# (docs/results.md): naive top-4 with the MiniLM teacher, 128 tokens, attention dropout off, EPOCHS epochs; each
# side trains on four folds and is scored on the fifth, for every fold and seed; the table pairs the sides by
# seed, each seed counting by its mean over the five folds.
#
#   SCIFACT_DIR=/data/scifact bash bench/cv_vs_st.sh     # SEEDS=1,2,3 EPOCHS=1: about 105 minutes on 2 cores
#
# A run is finished when its summary.json (ours) or record (ST) exists: a killed script resumes where it stopped.
set -euo pipefail

main() {  # read whole before it runs: editing the file cannot change a run in progress
  cd "$(dirname "$0")/.."
  local data=${SCIFACT_DIR:?set SCIFACT_DIR to the BEIR SciFact folder (train and dev judgements)}
  local base=${MINILM_DIR:-sentence-transformers/all-MiniLM-L6-v2} seeds=${SEEDS:-1,2,3} epochs=${EPOCHS:-1}
  local logs=logs/cv_vs_st/epochs$epochs folds=5 fold seed run
  for seed in ${seeds//,/ }; do  # seed by seed: each one finished is a row of the table
    for ((fold = 0; fold < folds; fold++)); do
      run=$logs/ours/fold$fold-seed$seed
      [ -f "$run/summary.json" ] || python train.py experiment=scifact/ablation_cpu cv=kfold "data.folds=$folds" \
        "data.fold=$fold" "seed=$seed" data=local "data.path=$data" "model.name_or_path=$base" \
        "teacher.name_or_path=$base" mining=naive_topk "trainer.max_epochs=$epochs" encode.progress=false \
        "hydra.run.dir=$run"
      python -m bench.st_ablation --data "$data" --base "$base" --methods naive_topk --seeds "$seed" \
        --train-split "train+dev:without-fold${fold}of$folds" --eval-split "train+dev:fold${fold}of$folds" \
        --epochs "$epochs" --max-length 128 --attention-dropout 0 --out "$logs/st/fold$fold" --cache "$logs/st/cache"
    done
  done
  python -m bench.runs_table "ours=$logs/ours/*" "sentence-transformers=$logs/st/*/*.json" | tee "$logs/table.md"
}

main "$@"
