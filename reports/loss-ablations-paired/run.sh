#!/usr/bin/env bash
# The second loss-ablation study, sized to answer (issue: studies that can answer), from a clean clone
# (after `pip install -r requirements.txt`):
#   bash reports/loss-ablations-paired/run.sh
# Paired design at today's defaults: seed k draws the same data (data.seed follows seed) and the same
# initialisation in every configuration, so differences from the baseline are taken per seed.
#   full budget (train.steps 1500): baseline, entropy weight -0.2 and +0.2             (36 experiments)
#   with FULL=1 also: label smoothing 0.1 at the full budget, and a short budget (train.steps 500, accuracy
#   off its ceiling) for the baseline and entropy weight -0.2                           (+36 experiments)
# The committed report ran the first arm only: on the 2-core machine of 2026-12-06, shared with other work,
# an experiment took about 4-5 minutes, so the 72 would not fit one working session (configurations were
# cut before seeds). SEEDS seeds each (default 12), run through DVC's queue N at a time with one thread each
# (the README's sweep recipe), up to the evaluate stage (visualize adds figures, no numbers), every run
# tagged `study=loss-ablations-paired` in MLflow; validation every 100 steps (50 on the short budget) for
# the learning-speed readings. Then the report (summary.{csv,md}, seeds.csv, figures) from the MLflow store.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
study=loss-ablations-paired
jobs=${JOBS:-$(python -c "import os; print(len(os.sched_getaffinity(0)))")}
seeds=$(python -c "print(','.join(map(str, range(${SEEDS:-12}))))")
common=(-S "mlflow.study=$study" -S train.threads=1 -S "seed=$seeds")
queue() { dvc exp run evaluate --queue --quiet "${common[@]}" "$@"; }

queue -S train.eval_every=100 -S 'loss.entropy_weight=-0.2,0,0.2'      # bonus (< 0), none, penalty (> 0)
if [ "${FULL:-0}" = 1 ]; then
  queue -S train.eval_every=100 -S loss.label_smoothing=0.1               # the classic confidence penalty
  queue -S train.steps=500 -S train.eval_every=50 -S 'loss.entropy_weight=-0.2,0'  # off the ceiling
fi
dvc queue status | tail -n 3
start=$(date +%s)
dvc exp run --run-all -j "$jobs"
echo "experiments done in $(( $(date +%s) - start )) s with -j $jobs on $(lscpu | sed -n 's/^Model name: *//p')"
python stages/compare.py --study "$study" --out-dir reports
