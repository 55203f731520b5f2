# Shared by defenses.sh and model-defenses.sh (sourced): train a run once, timed, and print its
# table row. Expects the variables py, n (test images), suite and epochs.

# train_once RUN TRAIN_ARGS... : train into RUN unless it is already there; wall time to RUN/wall.json
train_once() {
  local run=$1; shift
  [ -f "$run/metrics.json" ] && return 0
  local start; start=$(date +%s)
  $py -m robustlab train "$@" --out "$run" >/dev/null
  echo "{\"wall_seconds\": $(( $(date +%s) - start ))}" > "$run/wall.json"
}

bench_header() {  # bench_header FIRST_COLUMN
  printf "%-14s %8s %8s %8s %8s %8s %8s\n" "$1" clean pgd20 "$suite" epochs train_s suite_s
}

# bench_row NAME RUN TRAIN_ARGS... : clean accuracy, PGD-20 and the suite's worst case on the first
# n test images, epochs, training and suite wall seconds
bench_row() {
  local name=$1 run=$2; shift 2
  train_once "$run" "$@"
  local clean pgd worst secs suite_s
  $py -m robustlab evaluate "$run" --attacks pgd --steps 20 --eps 0.1 --n "$n" --quiet --device cpu >/dev/null
  read -r clean pgd < <($py -c "import json;m=json.load(open('$run/metrics.json'));print(m['evaluation_clean_accuracy'],m['robust_accuracy'])")
  $py -m robustlab evaluate "$run" --suite "$suite" --eps 0.1 --n "$n" --quiet --device cpu >/dev/null
  read -r worst suite_s secs < <($py -c "import json;m=json.load(open('$run/metrics.json'));w=json.load(open('$run/wall.json'));print(m['robust_accuracy'],round(m['evaluate_seconds']),w['wall_seconds'])")
  printf "%-14s %8.4f %8.4f %8.4f %8s %8s %8s\n" "$name" "$clean" "$pgd" "$worst" "$epochs" "$secs" "$suite_s"
}
