#!/usr/bin/env bash
# The defence comparison of the README / issue note: every adversarial-training objective on the
# same data, eps, epochs and model, then clean accuracy, PGD-20 and the standard suite's worst case
# (APGD-CE, APGD-T, Square: PGD-20 overstates robustness) on the same test images. Trained runs are
# reused. Usage: bash benchmarks/defences.sh [OUT] [TRAIN_LIMIT] [EPOCHS] [N_EVAL] [SUITE]
set -euo pipefail
out=${1:-runs/defences}; limit=${2:-10000}; epochs=${3:-2}; n=${4:-1000}; suite=${5:-standard}
py=${PY:-.venv/bin/python}
common=(--dataset fashion-mnist --train-limit "$limit" --epochs "$epochs" --batch-size 128 --lr 2e-3
        --schedule onecycle --seed 0 --quiet --device cpu --monitor-n 200)
declare -A defences=(
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
printf "%-10s %8s %8s %8s %8s %8s %8s\n" defence clean pgd20 "$suite" epochs train_s suite_s
for name in clean noise fgsm-at fast-at pgd-at pgd-at-bn mix trades alp adv-reg offline; do
  run="$out/$name"
  if [ ! -f "$run/metrics.json" ]; then
    start=$(date +%s)
    # shellcheck disable=SC2086
    $py -m robustlab train "${common[@]}" ${defences[$name]} --out "$run" >/dev/null
    secs=$(( $(date +%s) - start ))
    echo "{\"wall_seconds\": $secs}" > "$run/wall.json"
  fi
  $py -m robustlab evaluate "$run" --attacks pgd --steps 20 --eps 0.1 --n "$n" --quiet --device cpu >/dev/null
  pgd=$($py -c "import json;print(json.load(open('$run/metrics.json'))['robust_accuracy'])")
  clean=$($py -c "import json;print(json.load(open('$run/metrics.json'))['evaluation_clean_accuracy'])")
  $py -m robustlab evaluate "$run" --suite "$suite" --eps 0.1 --n "$n" --quiet --device cpu >/dev/null
  read -r worst suite_s < <($py -c "import json;m=json.load(open('$run/metrics.json'));print(m['robust_accuracy'],round(m['evaluate_seconds']))")
  secs=$($py -c "import json;print(round(json.load(open('$run/wall.json'))['wall_seconds']))")
  printf "%-10s %8.4f %8.4f %8.4f %8s %8s %8s\n" "$name" "$clean" "$pgd" "$worst" "$epochs" "$secs" "$suite_s"
done
