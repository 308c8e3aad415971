#!/usr/bin/env bash
# The defaults study (reports/defaults), from a clean clone after `pip install -r requirements.txt`:
#   bash reports/defaults/run.sh
# Every training is what `dvc repro train` runs for its seed (the same data, Trainer and params; one thread), in
# one process per seed (reports/defaults/train_seeds.py), scored greedily on its test and OOD splits; every RL
# run is the finetune stage's FineTuner (reports/defaults/finetune_seeds.py), scored before and after.
# 1. Screening on the seeds where the old defaults stall (5, 9, 11), one run each, stopped at a candidate's
#    first stall: lr2-w100 (peak lr 0.002), lr1.5-w100 (0.0015), wd1 (weight decay 1.0).
# 2. Confirmation, seeds 0-23: old (peak 0.003, warmup 100: the defaults before this study), lr2-w300 (0.002,
#    warmup 300) and lr3-w500 (0.003, warmup 500: the shipped params.yaml). Seed k draws the same data in all.
# 3. RL on each confirmed candidate's models of seeds 0-2 x rl.seed 0-2: rl-old (lr 3e-4, no replay: the old
#    default) and rl-new (params.yaml: lr 5e-5, replay weight 1.0).
# 4. The levers: lr2-w300's model of seed 0, rl.seed 0, one RL setting changed at a time.
# JOBS runs side by side (default: the cores), one thread each; each result lands in ROWS as it ends, and a rerun
# skips what is there. Then the report: supervised.csv, rl.csv, levers.csv, summary.csv, summary.md,
# time_to_90.png (reports/defaults/summarise.py).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
study=reports/defaults
jobs=${JOBS:-$(python -c "import os; print(len(os.sched_getaffinity(0)))")}
rows=${ROWS:-$study/rows}
models=${MODELS:-$study/models}
mkdir -p "$rows" "$models"
declare -A recipe=(
  [old]="--set train.lr=0.003 --set train.warmup_steps=100"
  [lr2-w300]="--set train.lr=0.002 --set train.warmup_steps=300"
  [lr3-w500]="--set train.lr=0.003 --set train.warmup_steps=500"
  [lr2-w100]="--set train.lr=0.002 --set train.warmup_steps=100"
  [lr1.5-w100]="--set train.lr=0.0015 --set train.warmup_steps=100"
  [wd1]="--set train.lr=0.003 --set train.warmup_steps=100 --set train.weight_decay=1.0"
)
rl_old="--set rl.lr=0.0003 --set rl.replay_weight=0.0"

train() {  # recipe seed overrides...: one seed's row, skipped when it is there
  local name=$1 seed=$2; shift 2
  [ -e "$rows/supervised-$name-$seed.csv" ] || python $study/train_seeds.py --config "$name" --seeds "$seed" \
    --out "$rows/supervised-$name-$seed.csv" --save-models "$models" "$@"
}
finetune() {  # config recipe trained-seed rl-seeds overrides...
  local config=$1 name=$2 seed=$3 rl_seeds=$4; shift 4
  local label="$config ($name models)" out="$rows/$config-$name-$seed-$rl_seeds.csv"
  case $config in L-*) label=$config;; esac  # the levers: one model, named in the report
  [ -e "$out" ] || python $study/finetune_seeds.py --config "$label" --model "$models/$name-seed$seed.pt" \
    --seed "$seed" --rl-seeds "$rl_seeds" --out "$out" "$@"
}
export -f train finetune
export study rows models

{
  for seed in 5 9 11; do echo "lr2-w100 $seed ${recipe[lr2-w100]}"; done
  for seed in 5 9; do echo "lr1.5-w100 $seed ${recipe[lr1.5-w100]}"; done
  echo "wd1 9 ${recipe[wd1]}"
  for seed in $(seq 0 23); do
    for name in old lr2-w300 lr3-w500; do echo "$name $seed ${recipe[$name]}"; done
  done
} | xargs -P "$jobs" -L 1 bash -c 'train "$@"' _

{
  for name in lr2-w300 lr3-w500; do
    for seed in 0 1 2; do
      echo "rl-new $name $seed 0-2"
      echo "rl-old $name $seed 0-2 $rl_old"
    done
  done
  echo "L-old lr2-w300 0 0 $rl_old"
  for steps in 1 5 10; do echo "L-old-${steps}step$([ "$steps" = 1 ] || echo s) lr2-w300 0 0 $rl_old --set rl.steps=$steps"; done
  echo "L-old-kl0.2 lr2-w300 0 0 $rl_old --set rl.kl_coef=0.2"
  echo "L-old-digits1-4 lr2-w300 0 0 $rl_old --set rl.digits.min=1"
  echo "L-old-T1 lr2-w300 0 0 $rl_old --set rl.temperature=1.0"
  echo "L-old-replay1 lr2-w300 0 0 --set rl.lr=0.0003"
  echo "L-lr1e-4 lr2-w300 0 0 --set rl.lr=0.0001 --set rl.replay_weight=0.0"
  echo "L-lr5e-5 lr2-w300 0 0 --set rl.replay_weight=0.0"
  echo "L-lr5e-5-kl0.1 lr2-w300 0 0 --set rl.replay_weight=0.0 --set rl.kl_coef=0.1"
  echo "L-new lr2-w300 0 0"
  echo "L-new-60steps lr2-w300 0 0 --set rl.steps=60"
} | xargs -P "$jobs" -L 1 bash -c 'finetune "$@"' _

python $study/summarise.py --rows "$rows" --study "$study"
echo "done on $(lscpu | sed -n 's/^Model name: *//p'), $jobs jobs"
