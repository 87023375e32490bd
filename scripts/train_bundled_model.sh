#!/usr/bin/env bash
# Trains the model bundled with poi (poi_cli/weights/, issue 6) and packs it:
# POI, ResNet-10, 96 px, 8 FERPlus classes (majority labels), clean labels, selected on
# valid. The CPU recipe it was trained with is the default; on a GPU raise EPOCHS/SIZE.
#
#   bash scripts/train_bundled_model.sh [FERPLUS_RAW_DIR]
#
# Resumable: run it again after an interruption and it continues from last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
RAW="${1:-../shared/datasets/ferplus}"
ARCH="${ARCH:-resnet10}" SIZE="${SIZE:-96}" EPOCHS="${EPOCHS:-40}" BATCH="${BATCH:-128}"
LR="${LR:-0.1}" WD="${WD:-5e-4}" WARMUP="${WARMUP:-1}" SEED="${SEED:-0}"
DATA="${DATA:-prepared/ferplus${SIZE}}"
RUN="${RUN:-runs/bundle/poi_${ARCH}_${SIZE}}"
POI="${POI:-.venv/bin/poi}"

"$POI" prepare ferplus "$RAW" --out "$DATA" --size "$SIZE"
if [ -f "$RUN/results.csv" ] && [ "$(($(wc -l < "$RUN/results.csv") - 1))" -ge "$EPOCHS" ]; then
  echo "== $RUN: finished earlier"
elif [ -f "$RUN/last.pt" ]; then
  "$POI" train --resume "$RUN"
else
  rm -rf "${RUN:?}"
  "$POI" train "$DATA" --arch "$ARCH" --size "$SIZE" --epochs "$EPOCHS" --batch "$BATCH" \
    --lr "$LR" --weight-decay "$WD" --schedule cosine --warmup-epochs "$WARMUP" --seed "$SEED" \
    --project "$(dirname "$RUN")" --name "$(basename "$RUN")"
fi
"$POI" evaluate "$RUN" "$DATA" --split val --out "$RUN/eval" > /dev/null
