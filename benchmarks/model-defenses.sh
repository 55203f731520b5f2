#!/usr/bin/env bash
# The Defenses II comparison of the issue note: PGD adversarial training with relu / gelu / silu and
# with non-local (Gaussian) denoising blocks, all at the budget of benchmarks/defenses.sh (same data,
# eps, epochs, steps); then the detector under the plain and the adaptive attack, and noisy-student
# teacher vs student on the same first TRAIN_LIMIT training images. The adversarially trained
# models also get the standard suite's worst case beside PGD-20.
# Usage: bash benchmarks/model-defenses.sh [OUT] [TRAIN_LIMIT] [EPOCHS] [N_EVAL] [SUITE]
set -euo pipefail
out=${1:-runs/model-defenses}; limit=${2:-10000}; epochs=${3:-2}; n=${4:-1000}; suite=${5:-standard}
py=${PY:-.venv/bin/python}
common=(--dataset fashion-mnist --train-limit "$limit" --epochs "$epochs" --batch-size 128 --lr 2e-3
        --schedule onecycle --seed 0 --quiet --device cpu --monitor-n 200
        --defense pgd-at --eps 0.1 --defense-option steps=5)
declare -A variants=(
  [relu]=""
  [gelu]="--activation gelu"
  [silu]="--activation silu"
  [relu-nonlocal]="--denoise nonlocal"
)
# shellcheck source=benchmarks/bench_row.sh
source "$(dirname "$0")/bench_row.sh"
bench_header model
for name in relu gelu silu relu-nonlocal; do
  # shellcheck disable=SC2086
  bench_row "$name" "$out/pgd-at-$name" "${common[@]}" ${variants[$name]}
done

# The detector guards a standard (clean-trained) model at the same budget.
std="$out/clean"
train_once "$std" --dataset fashion-mnist --train-limit "$limit" --epochs "$epochs" --batch-size 128 --lr 2e-3 \
    --schedule onecycle --seed 0 --quiet --device cpu --monitor-n 200
echo; echo "detector on $std (PGD-10 training examples, PGD-20 plain and adaptive attacks, eps 0.1):"
$py -m robustlab train-detector "$std" --attack pgd --eps 0.1 --n-train 5000 --n-test "$n" --out "$out/detector" --device cpu

echo; echo "noisy student: 2000 labelled + 8000 unlabelled of the first $limit images, 5 epochs per model:"
$py -m robustlab noisy-student --labelled 2000 --unlabelled 8000 --iterations 2 --epochs 5 --eval-n "$n" \
    --out "$out/noisy-student" --device cpu --quiet
