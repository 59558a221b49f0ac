#!/usr/bin/env bash
# The SciFact mining ablation of docs/results.md, end to end and resumable:
#   1. the base model's zero-shot score in the setting (the report's reference line)
#   2. round one: MiniLM fine-tuned on train, the in-domain teacher "round2"
#   3. mining statistics, false-negative probe and plots per teacher (mine.py)
#   4. ours: one Hydra multirun over the methods per (teacher, seed)
#   5. sentence-transformers: the same methods, dense teachers and seeds (bench/st_ablation.py)
#   6. the report: docs/results/<setting>/ (records in runs/, report.md, charts)
#
#   bash bench/scifact_ablation.sh cpu    # reduced CPU setting (experiment=scifact/ablation_cpu): 128 tokens, 1 epoch
#   bash bench/scifact_ablation.sh gpu    # full setting (experiment=scifact/ablation): 256 tokens, 3 epochs
#   source .carry/device-setup.sh && bash bench/scifact_ablation.sh gpu       # on the lent GPU machine
#
# Finished runs are kept (a run is finished when its summary.json or JSON exists), so a killed script resumes.
# Teacher-free methods (none, random) are trained once per seed, under the first teacher; the report lends them on.
# Deleting logs/ablation_<setting>/round1 trains round one again and drops every result of its round2 teacher,
# the stored report records included.
# SEEDS, TEACHERS and METHODS narrow the grid, e.g. SEEDS=1 TEACHERS=minilm; REPORT moves the report.
set -euo pipefail

main() {  # read whole before it runs: editing the file cannot change a run in progress
  cd "$(dirname "$0")/.."
  local setting=${1:-cpu} experiment round1 length st_args
  case $setting in
    cpu) experiment=scifact/ablation_cpu round1=scifact/round1_cpu length=128 st_args=(--epochs 1 --attention-dropout 0) ;;
    gpu) experiment=scifact/ablation round1=scifact/round1 length=256 st_args=(--epochs 3) ;;
    *) echo "usage: $0 cpu|gpu" >&2; exit 2 ;;
  esac
  local seeds=${SEEDS:-1,2,3} teachers=${TEACHERS:-minilm,round2,bm25}
  local methods=${METHODS:-none,naive_topk,topk_shifted,topk_abs,topk_marginpos,topk_percpos,sampled_topk,top1_sampled_topk}
  local logs=logs/ablation_$setting report=${REPORT:-docs/results/$setting}
  local data=${SCIFACT_DIR:?set SCIFACT_DIR to the BEIR SciFact folder (train and dev judgements)}
  local base=${MINILM_DIR:-sentence-transformers/all-MiniLM-L6-v2}  # a folder on the GPU machine, else the installed copy
  local round1_model=$logs/round1/model
  [ -f "$data/corpus.jsonl" ] || { echo "no SciFact at $data (SCIFACT_DIR)" >&2; exit 1; }

  teacher_args() {  # the overrides that make teacher $1 the one of this ablation
    case $1 in
      minilm) echo "teacher=minilm teacher.name_or_path=$base" ;;
      round2) echo "teacher=round2 teacher.name_or_path=$round1_model" ;;
      *) echo "teacher=$1" ;;
    esac
  }
  local teacher_free  # methods that read no teacher score (none, random): a run under any teacher serves all
  teacher_free=$(python -c 'from bench.ablation_report import TEACHER_FREE; print(",".join(sorted(TEACHER_FREE)))')
  finished() {  # teacher seed method
    local owner=$1
    [[ ,$teacher_free, != *,$3,* ]] || owner='*'
    compgen -G "$logs/ours/$owner/seed$2/$3/summary.json" >/dev/null
  }
  local common=(data=local "data.path=$data" encode.progress=false) student=("model.name_or_path=$base")

  # 1. zero-shot, at the student's length and precision
  local zero_shot=$logs/zero_shot/metrics.json
  [ -f "$zero_shot" ] || python evaluate.py "${common[@]}" "${student[@]}" data.split=dev encode.precision=auto \
    "model.query_max_length=$length" "model.passage_max_length=$length" "hydra.run.dir=$logs/zero_shot"

  # 2. round one (only if the grid needs the round-two teacher); results of an earlier round one go with it
  if [[ ,$teachers, == *,round2,* ]] && [ ! -f "$round1_model/modules.json" ]; then
    rm -rf "$logs/mine/round2" "$logs/ours/round2" "$logs"/st/round2-*.json "$report"/runs/*-round2-*.json
    python train.py "experiment=$round1" "${common[@]}" "${student[@]}" $(teacher_args minilm) "hydra.run.dir=$logs/round1"
  fi

  local teacher seed sweep todo
  for teacher in ${teachers//,/ }; do
    # 3. what each method makes of this teacher's candidates (mines them first: the cold mining time)
    [ -f "$logs/mine/$teacher/mining_stats.json" ] || python mine.py "${common[@]}" $(teacher_args "$teacher") \
      "hydra.run.dir=$logs/mine/$teacher"
    # 4. ours: a multirun over the methods not yet finished, one run dir per method
    for seed in ${seeds//,/ }; do
      sweep=$logs/ours/$teacher/seed$seed
      todo=$(for m in ${methods//,/ }; do finished "$teacher" "$seed" "$m" || echo "$m"; done | paste -sd, -)
      [ -z "$todo" ] || python train.py -m "experiment=$experiment" "${common[@]}" "${student[@]}" \
        $(teacher_args "$teacher") "mining=$todo" "seed=$seed" "hydra.sweep.dir=$sweep" 'hydra.sweep.subdir=${mining.name}'
    done
  done

  # 5. sentence-transformers (dense teachers only: it has no BM25)
  local st_teachers
  st_teachers=$(for t in ${teachers//,/ }; do
    case $t in minilm) echo "minilm=$base" ;; round2) echo "round2=$round1_model" ;; esac; done | paste -sd, -)
  [ -z "$st_teachers" ] || python -m bench.st_ablation --data "$data" --base "$base" --teachers "$st_teachers" \
    --methods "$methods" --seeds "$seeds" --max-length "$length" "${st_args[@]}" --out "$logs/st"

  # 6. the report, with the zero-shot metrics and each teacher's mining plots beside it (logs/ is not kept)
  mkdir -p "$report" && cp "$zero_shot" "$report/zero_shot.json"
  if [ -f "$logs/round1/metrics.json" ]; then cp "$logs/round1/metrics.json" "$report/round1_metrics.json"; fi
  python -m bench.ablation_report --ours "$logs/ours" --st "$logs/st" --out "$report" --zero-shot "$report/zero_shot.json" \
    --title "SciFact train -> dev, $setting setting ($experiment)"
  local plot
  for teacher in ${teachers//,/ }; do
    cp "$logs/mine/$teacher/mining_stats.json" "$report/mining_stats_$teacher.json"
    for plot in "$logs/mine/$teacher"/{scores,margins,false_negatives}_*.png; do
      if [ -f "$plot" ]; then cp "$plot" "$report/mining_$(basename "$plot")"; fi
    done
  done
}

main "$@"
