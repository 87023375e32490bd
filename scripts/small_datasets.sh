#!/usr/bin/env bash
# The small-dataset study of docs/results/small_datasets.md: CK+ (10 subject-independent
# folds) and SFEW 2.0 (train -> val), POI fine-tuned from the bundled FERPlus model and the
# same recipe from scratch, plus the bundled model zero-shot on both.
#
#   bash scripts/small_datasets.sh [STEP ...]   # default: every step below, in this order
#
# Resumable: run it again after a kill; finished folds and runs are kept.
# Recipe: POI ResNet-10 at 96 px (the bundled model's architecture and input), 5 epochs,
# batch 32, SGD lr 0.01 with a cosine schedule, the paper's weight decay; CK+ folds select
# best.pt on a 10 % hold-out of their training folds; SFEW has no test split and its
# val is the reported split, so SFEW runs select nothing (--val-split none: the last epoch).
set -euo pipefail
cd "$(dirname "$0")/.."
CK_RAW="${CK_RAW:-../shared/datasets/ckplus48}"
SFEW_RAW="${SFEW_RAW:-../shared/datasets/sfew}"
CK="${CK:-prepared/ck96}"
SFEW="${SFEW:-prepared/sfew96}"
PROJECT="${PROJECT:-runs/small}"
POI="${POI:-.venv/bin/poi}"
BUNDLED="${BUNDLED:-poi_cli/weights/poi_ferplus8_resnet10_96.fp16.pt}"  # the source model (the tables: v1 and v4)
RECIPE=(--arch resnet10 --size 96 --epochs 5 --batch 32 --lr 0.01 --schedule cosine --weight-decay 1e-4 --seed 0)
THREADS_OPTION=()  # THREADS: torch threads of every training and evaluation (default: poi's)
[ -n "${THREADS:-}" ] && THREADS_OPTION=(--threads "$THREADS") && RECIPE+=("${THREADS_OPTION[@]}")
FT=(--fine-tune "$BUNDLED")

prepare_data() {
  [ -f "$CK/prepared.json" ] || "$POI" prepare ckplus "$CK_RAW" --out "$CK" --size 96
  [ -f "$SFEW/prepared.json" ] || "$POI" prepare sfew "$SFEW_RAW" --out "$SFEW" --size 96
}

evaluate() {  # evaluate RUN_OR_CKPT DATA SPLIT OUT
  [ -f "$4/metrics.json" ] || "$POI" evaluate "$1" "$2" --split "$3" "${THREADS_OPTION[@]}" --out "$4" > /dev/null
}
sfew_run() {  # sfew_run NAME [OPTIONS...]
  local name="$1" dir="$PROJECT/$1"; shift
  if [ -f "$dir/last.pt" ]; then "$POI" train --resume "$dir" "${THREADS_OPTION[@]}" || true
  else rm -rf "$dir"; "$POI" train "$SFEW" "${RECIPE[@]}" --val-split none "$@" --project "$PROJECT" --name "$name"; fi
  evaluate "$dir" "$SFEW" val "$dir/eval"
}
ck_scratch_fold() {  # one fold of the from-scratch CK+ runs (they are slow: run as many as time allows)
  local dir="$PROJECT/ck_scratch/fold$1"
  if [ -f "$dir/last.pt" ]; then "$POI" train --resume "$dir" "${THREADS_OPTION[@]}" || true
  else rm -rf "$dir"; "$POI" train "$CK" "${RECIPE[@]}" --fold "$1" --project "$PROJECT/ck_scratch" --name "fold$1"; fi
  evaluate "$dir" "$CK" "fold$1" "$dir/eval"
}

step() {
  [ "$1" = summary ] || prepare_data
  case "$1" in
    zero_shot)  evaluate "$BUNDLED" "$CK" train "$PROJECT/zero_shot_ck"; evaluate "$BUNDLED" "$SFEW" val "$PROJECT/zero_shot_sfew" ;;
    ck_ft)      "$POI" train "$CK" "${RECIPE[@]}" "${FT[@]}" --fold all --project "$PROJECT" --name ck_ft ;;
    ck_ft_last) for k in 0 1 2 3 4 5 6 7 8 9; do  # the same runs' last epoch instead of best.pt
                  evaluate "$PROJECT/ck_ft/fold$k/last.pt" "$CK" "fold$k" "$PROJECT/ck_ft_last/fold$k"; done ;;
    # second recipe, tried after ck_ft missed 95 %: 10 epochs, every training fold trained on (no hold-out), last epoch
    ck_ft_e10)  "$POI" train "$CK" "${RECIPE[@]}" "${FT[@]}" --epochs 10 --val-fraction 0 --fold all \
                  --project "$PROJECT" --name ck_ft_e10 ;;
    sfew_ft)    sfew_run sfew_ft "${FT[@]}" ;;
    sfew_scratch) sfew_run sfew_scratch ;;
    ck_scratch) for k in 0 1 2 3 4 5 6 7 8 9; do ck_scratch_fold "$k"; done ;;
    summary)    # accuracy per study: mean and sample std over the folds evaluated so far, SFEW val
                PROJECT="$PROJECT" "${PYTHON:-.venv/bin/python}" - <<'PY'
import glob, json, os, statistics
project = os.environ["PROJECT"]
def accuracy(path):
    return 100 * json.load(open(path))["accuracy"]
for study, pattern in [("ck_ft", "ck_ft/fold*/eval/metrics.json"), ("ck_ft_last", "ck_ft_last/fold*/metrics.json"),
                       ("ck_ft_e10", "ck_ft_e10/fold*/eval/metrics.json"), ("ck_scratch", "ck_scratch/fold*/eval/metrics.json")]:
    values = [accuracy(p) for p in sorted(glob.glob(os.path.join(project, pattern)))]
    if values:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{study}: {len(values)} folds, mean {statistics.mean(values):.2f} ± {spread:.2f} (min {min(values):.2f}, max {max(values):.2f})")
for study, path in [("zero_shot_ck", "zero_shot_ck/metrics.json"), ("zero_shot_sfew", "zero_shot_sfew/metrics.json"),
                    ("sfew_ft", "sfew_ft/eval/metrics.json"), ("sfew_scratch", "sfew_scratch/eval/metrics.json")]:
    if os.path.isfile(os.path.join(project, path)):
        print(f"{study}: {accuracy(os.path.join(project, path)):.2f}")
PY
                ;;
    *) echo "unknown step $1" >&2; exit 2 ;;
  esac
}
for s in "${@:-zero_shot ck_ft ck_ft_last sfew_ft sfew_scratch ck_scratch ck_ft_e10}"; do for t in $s; do step "$t"; done; done
