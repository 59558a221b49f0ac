#!/usr/bin/env bash
# Teacher scores used three ways on SciFact (docs/results.md), in the reduced CPU setting, resumable:
#   1. a cross-encoder trained here on SciFact train from MiniLM (bench/train_cross_encoder.py)
#   2. round one: MiniLM fine-tuned on train, the in-domain teacher "round2" (shared with bench/scifact_ablation.sh)
#   3. InfoNCE, InfoNCE + KL and KL alone with the MiniLM, round-two and cross-encoder teachers
#   4. positive-aware masking of in-batch negatives (PercPos 95%) by the student and by the MiniLM teacher
#   5. the table (bench/runs_table.py)
#
#   SCIFACT_DIR=/data/scifact bash bench/teacher_scores.sh          # SEEDS=1 for one seed; about 2.5 h on 2 cores
#
# A run is finished when its summary.json exists: a killed script resumes where it stopped.
set -euo pipefail

main() {  # read whole before it runs: editing the file cannot change a run in progress
  cd "$(dirname "$0")/.."
  local data=${SCIFACT_DIR:?set SCIFACT_DIR to the BEIR SciFact folder (train and dev judgements)}
  local base=${MINILM_DIR:-sentence-transformers/all-MiniLM-L6-v2} seeds=${SEEDS:-1,2,3}
  local logs=logs/teacher_scores round1_model=logs/ablation_cpu/round1/model ce=logs/teacher_scores/cross_encoder
  local common=(experiment=scifact/ablation_cpu data=local "data.path=$data" "model.name_or_path=$base"
                mining=topk_percpos encode.progress=false)

  # 1. the cross-encoder teacher
  # (its record says whether it reorders MiniLM's dev top 100 better than MiniLM: the table reads beside it)
  [ -f "$ce/record.json" ] || python -m bench.train_cross_encoder --data "$data" --model "$base" --out "$ce"
  # 2. round one
  [ -f "$round1_model/modules.json" ] || python train.py experiment=scifact/round1_cpu data=local "data.path=$data" \
    "model.name_or_path=$base" "teacher.name_or_path=$base" "hydra.run.dir=$(dirname "$round1_model")"

  local -A teachers=(
    [minilm]="teacher=minilm teacher.name_or_path=$base module.loss.teacher_temperature=0.05"
    [round2]="teacher=round2 teacher.name_or_path=$round1_model module.loss.teacher_temperature=0.05"
    # raw logits (no sigmoid) at temperature 1, as rerankers are distilled, at the length it was trained at; it
    # rescores MiniLM's top 30 and a tail of 8 (a quarter of the pairs of depth 100 + tail 32: a CPU's budget)
    [cross_encoder]="teacher=cross_encoder teacher.name_or_path=$ce/model teacher.first_stage.name_or_path=$base
                     teacher.max_length=128 teacher.activation=none module.loss.teacher_temperature=1.0
                     candidates.query_chunk=64 candidates.depth=30 candidates.tail=8"
  )
  local -A losses=([infonce]="" [infonce_kl]="module.loss.kl=1" [kl]="module.loss.infonce=0 module.loss.kl=1")
  local -A masking=(
    [mask_student]="module.in_batch_filter={filter:percpos,perc:0.95,scorer:student}"
    [mask_teacher]="module.in_batch_filter={filter:percpos,perc:0.95,scorer:teacher}"
  )
  local teacher loss seed run
  train() {  # label seed overrides...
    run=$logs/$1/seed$2
    [ -f "$run/summary.json" ] || python train.py "${common[@]}" "seed=$2" "hydra.run.dir=$run" "${@:3}"
  }
  for seed in ${seeds//,/ }; do  # the cross-encoder last: its mining costs the most on a CPU
    for teacher in minilm round2; do
      for loss in infonce infonce_kl kl; do
        # shellcheck disable=SC2086  # the overrides split into words on purpose
        train "$teacher/$loss" "$seed" ${teachers[$teacher]} ${losses[$loss]}
      done
    done
    for loss in mask_student mask_teacher; do
      # shellcheck disable=SC2086
      train "minilm/$loss" "$seed" ${teachers[minilm]} ${masking[$loss]}
    done
    for loss in infonce infonce_kl kl; do
      # shellcheck disable=SC2086
      train "cross_encoder/$loss" "$seed" ${teachers[cross_encoder]} ${losses[$loss]}
    done
  done

  # 5. the table
  local groups=()
  for teacher in minilm round2 cross_encoder; do
    for loss in infonce infonce_kl kl; do groups+=("$teacher, $loss=$logs/$teacher/$loss/*"); done
  done
  groups+=("minilm, masked by the student=$logs/minilm/mask_student/*" "minilm, masked by MiniLM=$logs/minilm/mask_teacher/*")
  python -m bench.runs_table "${groups[@]}" | tee "$logs/table.md"
  cat "$ce/record.json"
}

main "$@"
