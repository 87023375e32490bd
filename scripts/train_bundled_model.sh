#!/usr/bin/env bash
# Trains the model bundled with poi (poi_cli/weights/) and packs it, in three rounds and a
# re-fit of the classifier (issue 25): POI ResNet-10, 96 px, 8 FERPlus classes (majority labels).
#
#   round 1  FERPlus train from scratch, 40 epochs (the first bundled model, issue 6;
#            kept as weights/history/poi_ferplus8_resnet10_96_v1.fp16.pt)
#   combine  FERPlus train + SFEW 2.0 train as one dataset, SFEW drawn 4 times per epoch
#   audit    round 1's audit of the combined training labels (`poi clean --auto`)
#   round 2  fine-tuned from round 1 on the (cleaned) combined labels, round 1 as the
#            teacher (`--teacher`: what `--rounds 2 --rounds-teacher` does, warm-started;
#            kept as weights/history/poi_ferplus8_resnet10_96_v2.fp16.pt)
#   round 3  fine-tuned from round 2 on the combined folder, round 2 as the teacher, with
#            FERPlus's annotator votes as the targets (`--soft-labels`; SFEW's faces one-hot).
#            Two arms were packed, soft and majority (the majority labels): soft was chosen on
#            the packed models' validation (README, the bundled model's card)
#   pack     round 3 packed as fp16 weights, its fusion and flip chosen on FERPlus valid
#            (`poi calibrate`); the TRN's classifier fitted again on the frozen features of
#            the combined training faces (`poi refit-head`, chosen on FERPlus valid and SFEW
#            val); fusion, flip and T_cal chosen again for the new head, exported as the
#            deploy runtime's .onnx
#
#   bash scripts/train_bundled_model.sh [STEP ...]   # default: every step, in order
#
# A round trained elsewhere (the GPU pack's bundle stage brings back bundle_round2.fp16.pt)
# goes on from its file: ROUND2=FILE for round 3 on top of it, ROUND3=FILE to pack it as it is;
# MODEL_OUT=runs/candidate/model packs a candidate beside the shipped model instead of over it
# (its intermediate file MODEL_OUT.round.fp16.pt and, unless CARD is given, its card MODEL_OUT.card/).
#
# Resumable: run it again after an interruption; finished steps are kept, a killed run
# continues from its last.pt. Nothing from a validation or test split is trained on:
# FERPlus valid and SFEW val select the epoch and fit the calibration.
set -euo pipefail
cd "$(dirname "$0")/.."
FERPLUS_RAW="${FERPLUS_RAW:-../shared/datasets/ferplus}"
SFEW_RAW="${SFEW_RAW:-../shared/datasets/sfew}"
CK_RAW="${CK_RAW:-../shared/datasets/ckplus48}"
POI="${POI:-.venv/bin/poi}"
THREADS="${THREADS:-1}"
SIZE=96
FERPLUS=prepared/ferplus$SIZE SFEW=prepared/sfew$SIZE CK=prepared/ck$SIZE BOTH=prepared/ferplus_sfew$SIZE
ROUND1="${ROUND1:-runs/bundle/poi_resnet10_96}"   # or the kept v1 weights: ROUND1=weights/history/poi_ferplus8_resnet10_96_v1.fp16.pt
ROUND2="${ROUND2:-runs/bundle2/wild}"     # or the kept v2 weights: ROUND2=weights/history/poi_ferplus8_resnet10_96_v2.fp16.pt
ROUND3="${ROUND3:-runs/bundle4/soft}"     # soft: the annotators' votes as targets; majority: the majority labels
ARM="$(basename "$ROUND2")"                         # wild: the augmentations below; plain: none
WILD=(--gray-mix 0.3 --blur 0.2 --jpeg 0.2 --scale-jitter 0.1 --rotate 10)
[ "$ARM" = wild ] || WILD=()
SOFT=(--soft-labels)
[ "$(basename "$ROUND3")" = soft ] || SOFT=()
OUT="${MODEL_OUT:-poi_cli/weights/poi_ferplus8_resnet10_96}"   # the packed model's files: OUT.fp16.pt, OUT.onnx
# round 3 packed and calibrated, before its head is re-fitted; a candidate's (MODEL_OUT) beside it, as its card
PACKED="$(dirname "$ROUND3")/round3.fp16.pt" DEFAULT_CARD=runs/bundle4/card
if [ -n "${MODEL_OUT:-}" ]; then PACKED="$OUT.round.fp16.pt" DEFAULT_CARD="$OUT.card"; fi
CARD="${CARD:-$DEFAULT_CARD}"

finished() {  # finished RUN EPOCHS: the run has all its epochs
  [ -f "$1/results.csv" ] && [ "$(($(wc -l < "$1/results.csv") - 1))" -ge "$2" ]
}

prepare() {
  [ -f "$FERPLUS/prepared.json" ] || "$POI" prepare ferplus "$FERPLUS_RAW" --out "$FERPLUS" --size $SIZE
  [ -f "$SFEW/prepared.json" ] || "$POI" prepare sfew "$SFEW_RAW" --out "$SFEW" --size $SIZE
  [ -f "$CK/prepared.json" ] || "$POI" prepare ckplus "$CK_RAW" --out "$CK" --size $SIZE
  [ -f "$BOTH/prepared.json" ] || "$POI" combine "$FERPLUS" "$SFEW" --weights 1,4 --out "$BOTH"
}

round1() {  # the first bundled model's recipe (68 min on the 2-core CPU with 2 threads)
  [ -f "$ROUND1" ] && return  # a checkpoint file was given
  if finished "$ROUND1" 40; then return; fi
  if [ -f "$ROUND1/last.pt" ]; then "$POI" train --resume "$ROUND1" --threads "$THREADS"; return; fi
  "$POI" train "$FERPLUS" --arch resnet10 --size $SIZE --epochs 40 --batch 128 --lr 0.1 --weight-decay 5e-4 \
    --schedule cosine --warmup-epochs 1 --seed 0 --project "$(dirname "$ROUND1")" --name "$(basename "$ROUND1")" \
    --threads "$THREADS"
}

audit() {  # round 1's audit of the combined training labels; with an in-sample audit of a
  # model that fitted its labels, --auto may relabel nothing (it says so)
  [ -f "$ROUND2" ] && return  # round 2 given as a checkpoint file: its labels were chosen already
  local labels="$(dirname "$ROUND2")/clean/labels.csv"
  [ -f "$labels" ] || "$POI" clean "$ROUND1" "$BOTH" --auto --out "$labels" --threads "$THREADS"
}

round2() {
  [ -f "$ROUND2" ] && return  # a checkpoint file was given
  local labels="$(dirname "$ROUND2")/clean/labels.csv"
  if finished "$ROUND2" 8; then return; fi
  if [ -f "$ROUND2/last.pt" ]; then "$POI" train --resume "$ROUND2" --threads "$THREADS"; return; fi
  "$POI" train "$BOTH" --labels "$labels" --arch resnet10 --size $SIZE --fine-tune "$ROUND1" --teacher "$ROUND1" \
    --epochs 8 --batch 128 --lr 0.02 --schedule cosine --weight-decay 5e-4 --seed 0 "${WILD[@]}" \
    --project "$(dirname "$ROUND2")" --name "$ARM" --threads "$THREADS"
}

round3() {  # the wild augmentations always (round 2 chose them)
  [ -f "$ROUND3" ] && return  # a checkpoint file was given
  if finished "$ROUND3" 6; then return; fi
  if [ -f "$ROUND3/last.pt" ]; then "$POI" train --resume "$ROUND3" --threads "$THREADS"; return; fi
  "$POI" train "$BOTH" "${SOFT[@]}" --arch resnet10 --size $SIZE --fine-tune "$ROUND2" --teacher "$ROUND2" \
    --epochs 6 --batch 128 --lr 0.01 --schedule cosine --weight-decay 5e-4 --seed 0 \
    --gray-mix 0.3 --blur 0.2 --jpeg 0.2 --scale-jitter 0.1 --rotate 10 \
    --project "$(dirname "$ROUND3")" --name "$(basename "$ROUND3")" --threads "$THREADS"
}

pack() {
  mkdir -p "$(dirname "$OUT")"
  "$POI" export "$ROUND3" --format weights --out "$PACKED"
  "$POI" calibrate "$PACKED" "$FERPLUS" --split val --fusion auto --flip auto --in-place --threads "$THREADS"
  "$POI" refit-head "$PACKED" "$BOTH" --out "$OUT.fp16.pt" --class-power 0,0.25,0.5,0.75,1 --l2 1e-5,1e-4,1e-3 \
    --threads "$THREADS"
  "$POI" calibrate "$OUT.fp16.pt" "$FERPLUS" --split val --fusion auto --flip auto --in-place --threads "$THREADS"
  "$POI" export "$OUT.fp16.pt" --format onnx --full --fp16-weights --out "$OUT.onnx"
}

card() {  # the model card's figures: FERPlus valid, SFEW val, CK+ zero-shot per fold
  local dir="$CARD"
  "$POI" evaluate "$OUT.fp16.pt" "$FERPLUS" --split val --out "$dir/ferplus_val" --amp off --threads "$THREADS" > /dev/null
  "$POI" evaluate "$OUT.fp16.pt" "$SFEW" --split val --out "$dir/sfew_val" --amp off --threads "$THREADS" > /dev/null
  for fold in 0 1 2 3 4 5 6 7 8 9; do
    "$POI" evaluate "$OUT.fp16.pt" "$CK" --split "fold$fold" --out "$dir/ck_fold$fold" --amp off --threads "$THREADS" > /dev/null
  done
}

STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(prepare round1 audit round2 round3 pack card)
for step in "${STEPS[@]}"; do
  echo "== $step"
  "$step"
done
