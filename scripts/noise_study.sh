#!/usr/bin/env bash
# The FERPlus label-noise study of issue 13 (docs/results/ferplus.md): cross-entropy and
# POI under one recipe where cross-entropy memorises wrong labels, at 0 % and 30 % noise
# (the shipped seed-0 noise files), with both readings of the UEM (Eq. 10), and POI
# with one cleaning round (train, audit its own training labels, relabel the suspects
# to the PIN's suggestion with `poi clean`, train again from scratch).
#
#   bash scripts/noise_study.sh [RUN ...]      # default: every run below, in this order
#
# Each run is resumable: a killed run continues at its first unfinished epoch, a finished
# one is skipped, and every finished run is evaluated on FERPlus valid.
# Recipe (chosen on clean-label cross-entropy validation accuracy): ResNet-18 from
# scratch, 64 px, 20 epochs, batch 128, SGD lr 0.1 divided by 10 at epochs 10 and 15,
# momentum 0.9, weight decay 1e-4 (the paper's), flip + translation, bf16 where the CPU has it.
set -euo pipefail
cd "$(dirname "$0")/.."
RAW="${RAW:-../shared/datasets/ferplus}"
DATA="${DATA:-prepared/ferplus64}"
PROJECT="${PROJECT:-runs/noise_study}"
POI="${POI:-.venv/bin/poi}"
CLEAN_THRESHOLD="${CLEAN_THRESHOLD:-0.5}"  # suspicion >= 0.5: p* puts over half its mass elsewhere, regions agreeing
SEED="${SEED:-0}"
NOISE_DIR=data_manifests/noise
RECIPE=(--arch resnet18 --size 64 --epochs 20 --batch 128 --lr 0.1 --schedule step --lr-steps 10,15
        --weight-decay 1e-4 --seed "$SEED")
N30=(--labels "$NOISE_DIR/ferplus_train_noise30_seed0.csv")
PAPER_UEM=(--uem-temperature 3 --uem-scale paper)

cleaned() { echo "--labels $PROJECT/${1}_seed$SEED/clean/labels.csv"; }
declare -A RUNS=(
  [ce_n0]="--baseline"
  [ce_n30]="--baseline ${N30[*]}"
  [poi_n30]="${N30[*]}"
  [poi_n30_paper_uem]="${N30[*]} ${PAPER_UEM[*]}"
  [poi_n0]=""
  [poi_n0_paper_uem]="${PAPER_UEM[*]}"
  [poi_n30_clean]="$(cleaned poi_n30)"
  [poi_n0_clean]="$(cleaned poi_n0)"
)
# a *_clean run first audits and cleans the labels of the run it names
declare -A CLEANS=([poi_n30_clean]=poi_n30 [poi_n0_clean]=poi_n0)
ORDER=(ce_n0 ce_n30 poi_n30 poi_n30_clean poi_n0 poi_n0_clean poi_n30_paper_uem poi_n0_paper_uem)

[ -f "$DATA/prepared.json" ] || "$POI" prepare ferplus "$RAW" --out "$DATA" --size 64

clean_labels() {  # audit a finished run on the labels it trained on, relabel its suspects
  local dir="$PROJECT/${1}_seed$SEED"
  [ -f "$dir/audit/audit.csv" ] || "$POI" audit "$dir" "$DATA" --out "$dir/audit" > "$dir/audit.log"
  [ -f "$dir/clean/labels.csv" ] || "$POI" clean "$dir/audit/audit.csv" "$DATA" --relabel \
    --threshold "$CLEAN_THRESHOLD" --out "$dir/clean/labels.csv"
}

run() {  # train unless finished (resume when killed), then evaluate on valid
  local name="$1" dir="$PROJECT/${1}_seed$SEED"
  if [ -n "${CLEANS[$name]:-}" ]; then clean_labels "${CLEANS[$name]}"; fi
  if [ -f "$dir/last.pt" ]; then
    "$POI" train --resume "$dir" || true  # "already finished" is fine
  else
    rm -rf "$dir"  # killed before its first epoch ended: nothing to keep
    # shellcheck disable=SC2086
    "$POI" train "$DATA" "${RECIPE[@]}" ${RUNS[$name]} --project "$PROJECT" --name "${name}_seed$SEED"
  fi
  [ -f "$dir/eval/metrics.json" ] || "$POI" evaluate "$dir" "$DATA" --split val --out "$dir/eval" > /dev/null
}

for name in "${@:-${ORDER[@]}}"; do run "$name"; done
