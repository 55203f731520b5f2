#!/usr/bin/env bash
# The defense comparison of the README / issue note: every adversarial-training objective on the
# same data, eps, epochs and model, then clean accuracy, PGD-20 and the standard suite's worst case
# (APGD-CE, APGD-T, Square: PGD-20 overstates robustness) on the same test images. Trained runs are
# reused. Usage: bash benchmarks/defenses.sh [OUT] [TRAIN_LIMIT] [EPOCHS] [N_EVAL] [SUITE]
set -euo pipefail
out=${1:-runs/defenses}; limit=${2:-10000}; epochs=${3:-2}; n=${4:-1000}; suite=${5:-standard}
py=${PY:-.venv/bin/python}
common=(--dataset fashion-mnist --train-limit "$limit" --epochs "$epochs" --batch-size 128 --lr 2e-3
        --schedule onecycle --seed 0 --quiet --device cpu --monitor-n 200)
declare -A defenses=(
  [clean]="--defense clean"
  [noise]="--defense noise --defense-option alpha=0.1"
  [fgsm-at]="--defense fgsm-at --eps 0.1"
  [fast-at]="--defense fast-at --eps 0.1"
  [pgd-at]="--defense pgd-at --eps 0.1 --defense-option steps=5"
  [pgd-at-bn]="--defense pgd-at --eps 0.1 --defense-option steps=5 --batchnorm"
  [mix]="--defense mix --eps 0.1 --defense-option steps=5"
  [trades]="--defense trades --eps 0.1 --defense-option steps=5"
  [alp]="--defense alp --eps 0.1 --defense-option steps=5"
  [adv-reg]="--defense adv-reg --eps 0.1"
  [offline]="--defense offline --eps 0.1"
)
# shellcheck source=benchmarks/bench_row.sh
source "$(dirname "$0")/bench_row.sh"
bench_header defense
for name in clean noise fgsm-at fast-at pgd-at pgd-at-bn mix trades alp adv-reg offline; do
  # shellcheck disable=SC2086
  bench_row "$name" "$out/$name" "${common[@]}" ${defenses[$name]}
done
