#!/usr/bin/env bash
# The defaults study (reports/defaults), from a clean clone after `pip install -r requirements.txt`:
#   bash reports/defaults/run.sh
# 1. Supervised recipes, seeds 0-23 (SEEDS), each trained as `dvc repro train` trains it with one thread (in this
#    process: reports/defaults/train_seeds.py) and scored greedily on its test and OOD splits:
#      old: the defaults before this study (train.lr 0.003, warmup 100); new: params.yaml (train.lr 0.002,
#      warmup 300). Seed k draws the same data in both: the comparison is paired.
# 2. RL before and after on the new recipe's models of seeds 0, 1, 2 x rl.seed 0, 1, 2
#    (reports/defaults/finetune_seeds.py): rl-old (rl.lr 3e-4, no replay: the old default), rl-new (params.yaml).
# 3. The levers: one trained model (new recipe, seed 0), rl.seed 0, one setting changed at a time.
# JOBS runs side by side (default: the cores), one thread each; every row lands in ROWS (a folder) as it ends,
# so a rerun after an interruption skips what is done. Then the report: supervised.csv, rl.csv, levers.csv,
# summary.csv, summary.md, time_to_90.png.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
study=reports/defaults
jobs=${JOBS:-$(python -c "import os; print(len(os.sched_getaffinity(0)))")}
rows=${ROWS:-$study/rows}
models=${MODELS:-$study/models}
mkdir -p "$rows" "$models"
old=(--set train.lr=0.003 --set train.warmup_steps=100)
rl_old=(--set rl.lr=0.0003 --set rl.replay_weight=0.0)

train() {  # recipe seed overrides...
  local recipe=$1 seed=$2; shift 2
  python $study/train_seeds.py --config "$recipe" --seeds "$seed" --out "$rows/supervised-$recipe-$seed.csv" \
    --save-models "$models" "$@"
}
finetune() {  # config trained-seed rl-seeds overrides...
  local config=$1 seed=$2 rl_seeds=$3; shift 3
  python $study/finetune_seeds.py --config "$config" --model "$models/new-seed$seed.pt" --seed "$seed" \
    --rl-seeds "$rl_seeds" --out "$rows/$config-$seed-$rl_seeds.csv" "$@"
}
export -f train finetune
export study rows models

{
  for seed in $(seq 0 $(( ${SEEDS:-24} - 1 ))); do
    echo "train new $seed"
    echo "train old $seed ${old[*]}"
  done
} | xargs -P "$jobs" -I{} bash -c '[ -e "$rows/supervised-$(echo {} | cut -d" " -f2-3 | tr " " -).csv" ] || {}'

{
  for seed in 0 1 2; do
    echo "finetune rl-new $seed 0-2"
    echo "finetune rl-old $seed 0-2 ${rl_old[*]}"
  done
  echo "finetune L-old 0 0 ${rl_old[*]}"
  for steps in 1 5 10; do echo "finetune L-old-${steps}steps 0 0 ${rl_old[*]} --set rl.steps=$steps"; done
  echo "finetune L-old-kl0.2 0 0 ${rl_old[*]} --set rl.kl_coef=0.2"
  echo "finetune L-old-digits1-4 0 0 ${rl_old[*]} --set rl.digits.min=1"
  echo "finetune L-old-T1 0 0 ${rl_old[*]} --set rl.temperature=1.0"
  echo "finetune L-old-replay1 0 0 --set rl.lr=0.0003"
  echo "finetune L-lr1e-4 0 0 --set rl.lr=0.0001 --set rl.replay_weight=0.0"
  echo "finetune L-lr5e-5 0 0 --set rl.replay_weight=0.0"
  echo "finetune L-lr5e-5-kl0.1 0 0 --set rl.replay_weight=0.0 --set rl.kl_coef=0.1"
  echo "finetune L-new 0 0"
  echo "finetune L-new-60steps 0 0 --set rl.steps=60"
} | xargs -P "$jobs" -I{} bash -c '[ -e "$rows/$(echo {} | cut -d" " -f2-4 | tr " " -).csv" ] || {}'

python $study/summarise.py --rows "$rows" --study "$study"
echo "done on $(lscpu | sed -n 's/^Model name: *//p'), $jobs jobs"
