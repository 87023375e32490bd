#!/usr/bin/env bash
# The FERPlus noise study (issue 6): baseline vs POI at 0/10/20/30 % symmetric label
# noise (the shipped seed-0 noise files), then the Table X ablations at 30 %, all under
# one recipe, each run evaluated on the validation split.
#
#   bash scripts/ferplus_study.sh [FERPLUS_RAW_DIR]
#
# Defaults are the reduced CPU recipe reported in docs/results/ferplus.md; on a GPU use
# e.g. SIZE=224 EPOCHS=60 BATCH=256 LR=0.1 SCHEDULE=step (the paper's protocol).
set -euo pipefail
cd "$(dirname "$0")/.."
RAW="${1:-../shared/datasets/ferplus}"
SIZE="${SIZE:-64}" EPOCHS="${EPOCHS:-6}" BATCH="${BATCH:-128}" LR="${LR:-0.1}"
SCHEDULE="${SCHEDULE:-cosine}" WARMUP="${WARMUP:-0.5}" SEED="${SEED:-0}"
DATA="${DATA:-prepared/ferplus${SIZE}}"
PROJECT="${PROJECT:-runs/ferplus${SIZE}}"
POI="${POI:-.venv/bin/poi}"
NOISE_DIR=data_manifests/noise

"$POI" prepare ferplus "$RAW" --out "$DATA" --size "$SIZE"

run() {  # run NAME [poi train options...]: train unless finished, then evaluate on val
  local name="$1"; shift
  if [ -f "$PROJECT/$name/results.csv" ] && [ "$(($(wc -l < "$PROJECT/$name/results.csv") - 1))" -ge "$EPOCHS" ]; then
    echo "== $name: finished earlier"
  elif [ -f "$PROJECT/$name/last.pt" ]; then
    "$POI" train --resume "$PROJECT/$name"
  else
    rm -rf "${PROJECT:?}/$name"  # a start killed before its first epoch: nothing to keep
    "$POI" train "$DATA" --size "$SIZE" --epochs "$EPOCHS" --batch "$BATCH" --lr "$LR" \
      --schedule "$SCHEDULE" --warmup-epochs "$WARMUP" --seed "$SEED" \
      --project "$PROJECT" --name "$name" "$@"
  fi
  "$POI" evaluate "$PROJECT/$name" "$DATA" --split val --out "$PROJECT/$name/eval" > /dev/null
}

labels() { [ "$1" = 0 ] && return 0; echo "--labels $NOISE_DIR/ferplus_train_noise$1_seed0.csv"; }

for rate in 0 30 10 20; do
  run "poi_n$rate" $(labels "$rate")
  run "baseline_n$rate" --baseline $(labels "$rate")
done
run poi_n30_no_prior --no-prior $(labels 30)
run poi_n30_no_oim --no-oim $(labels 30)
run poi_n30_no_uem --no-uem $(labels 30)
"$POI" report "$PROJECT" --out "$PROJECT/report"
