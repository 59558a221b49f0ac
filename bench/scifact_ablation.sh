#!/usr/bin/env bash
# The SciFact mining ablation of docs/results.md, end to end and resumable:
#   1. the base model's zero-shot score in the setting (the report's reference line)
#   2. round one: MiniLM fine-tuned on train, the in-domain teacher "round2"
#   3. mining statistics and plots per teacher (mine.py)
#   4. ours: one Hydra multirun over the methods per (teacher, seed)
#   5. sentence-transformers: the same methods, dense teachers and seeds (bench/st_ablation.py)
#   6. the report: docs/results/<setting>/ (records in runs/, report.md, charts)
#
#   bash bench/scifact_ablation.sh cpu    # reduced CPU setting (experiment=scifact/ablation_cpu): 128 tokens, 1 epoch
#   bash bench/scifact_ablation.sh gpu    # full setting (experiment=scifact/ablation): 256 tokens, 3 epochs
#   source .carry/device-setup.sh && bash bench/scifact_ablation.sh gpu       # on the lent GPU machine
#
# Finished runs are kept (a run is finished when its summary.json or JSON exists), so a killed script resumes.
# SEEDS, TEACHERS and METHODS narrow the grid, e.g. SEEDS=1 TEACHERS=minilm; REPORT moves the report.
set -euo pipefail
cd "$(dirname "$0")/.."
setting=${1:-cpu}
case $setting in
  cpu) experiment=scifact/ablation_cpu round1=scifact/round1_cpu length=128 st_args=(--epochs 1 --attention-dropout 0) ;;
  gpu) experiment=scifact/ablation round1=scifact/round1 length=256 st_args=(--epochs 3) ;;
  *) echo "usage: $0 cpu|gpu" >&2; exit 2 ;;
esac
seeds=${SEEDS:-1,2,3}
teachers=${TEACHERS:-minilm,round2,bm25}
methods=${METHODS:-none,naive_topk,topk_shifted,topk_abs,topk_marginpos,topk_percpos,sampled_topk,top1_sampled_topk}
logs=logs/ablation_$setting
report=${REPORT:-docs/results/$setting}
data=${SCIFACT_DIR:-../shared/data/scifact}
base=${MINILM_DIR:-sentence-transformers/all-MiniLM-L6-v2}  # a folder on the GPU machine, else the installed copy
round1_model=$logs/round1/model
[ -f "$data/corpus.jsonl" ] || { echo "no SciFact at $data (set SCIFACT_DIR)" >&2; exit 1; }

teacher_args() {  # the overrides that make teacher $1 the one of this ablation
  case $1 in
    minilm) echo "teacher=minilm teacher.name_or_path=$base" ;;
    round2) echo "teacher=round2 teacher.name_or_path=$round1_model" ;;
    *) echo "teacher=$1" ;;
  esac
}
common=(data=local data.path="$data" encode.progress=false)
student=(model.name_or_path="$base")

# 1. zero-shot, at the student's length and precision
zero_shot=$logs/zero_shot/metrics.json
[ -f "$zero_shot" ] || python evaluate.py "${common[@]}" "${student[@]}" data.split=dev encode.precision=auto \
  model.query_max_length=$length model.passage_max_length=$length hydra.run.dir=$logs/zero_shot

# 2. round one (only if the grid needs the round-two teacher)
if [[ ,$teachers, == *,round2,* ]] && [ ! -f "$round1_model/modules.json" ]; then
  python train.py experiment=$round1 "${common[@]}" "${student[@]}" $(teacher_args minilm) hydra.run.dir=$logs/round1
fi

for teacher in ${teachers//,/ }; do
  # 3. what each method makes of this teacher's candidates (mines them first: the cold mining time)
  [ -f "$logs/mine/$teacher/mining_stats.json" ] || python mine.py "${common[@]}" \
    $(teacher_args "$teacher") hydra.run.dir=$logs/mine/$teacher
  # 4. ours: a multirun over the methods not yet finished, one run dir per method
  for seed in ${seeds//,/ }; do
    sweep=$logs/ours/$teacher/seed$seed
    todo=$(for m in ${methods//,/ }; do [ -f "$sweep/$m/summary.json" ] || echo "$m"; done | paste -sd, -)
    [ -z "$todo" ] || python train.py -m experiment=$experiment "${common[@]}" "${student[@]}" $(teacher_args "$teacher") \
      mining="$todo" seed=$seed hydra.sweep.dir=$sweep 'hydra.sweep.subdir=${mining.name}'
  done
done

# 5. sentence-transformers (dense teachers only: it has no BM25)
st_teachers=$(for t in ${teachers//,/ }; do
  case $t in minilm) echo "minilm=$base" ;; round2) echo "round2=$round1_model" ;; esac; done | paste -sd, -)
[ -z "$st_teachers" ] || python bench/st_ablation.py --data "$data" --base "$base" --teachers "$st_teachers" \
  --methods "$methods" --seeds "$seeds" --max-length $length "${st_args[@]}" --out $logs/st

# 6. the report
python bench/ablation_report.py --ours $logs/ours --st $logs/st --out "$report" --zero-shot "$zero_shot" \
  --title "SciFact train -> dev, $setting setting ($experiment)"
for teacher in ${teachers//,/ }; do
  cp $logs/mine/$teacher/scores_$teacher.png "$report/mining_scores_$teacher.png"
  cp $logs/mine/$teacher/margins_$teacher.png "$report/mining_margins_$teacher.png"
done
