#!/usr/bin/env bash
# The FERPlus label-noise study of issue 13 (docs/results/ferplus.md): cross-entropy and
# POI under one recipe where cross-entropy memorises wrong labels, at 0 % and 30 % noise
# (the shipped seed-0 noise files), with both readings of the UEM (Eq. 10), and POI
# with one cleaning round (train, audit its own training labels, relabel the suspects
# to the PIN's suggestion with `poi clean`, train again from scratch; *_clean_oof: the
# same with the out-of-fold audit, `poi audit --cross-fit $CROSS_FIT`; *_clean_drop: the
# images the relabelling selected left out instead, `poi clean --drop`; poi_n30_clean_round3:
# a second cleaning, of poi_n30_clean's own labels, and a third training; poi_n30_clean_teacher:
# poi_n30_clean's labels with poi_n30 as a frozen teacher, `poi train --teacher` (*3: --teacher-weight 3;
# *_ft: fine-tuned from poi_n30 instead of trained from scratch, FT_EPOCHS epochs at FT_LR, cosine;
# poi_n0_ft, its control: poi_n0 trained on as long, fine-tuned from and taught by itself on the clean labels);
# poi_n30_oracle_drop: an analysis with the known flips, the 30 % labels without their flipped
# images, i.e. what a perfect `poi clean --drop` would train on), then the levers the paper
# allows at 30 % (lambda_2 0.1, --distill-warmup 5, T = 1), the Table X ablations at 30 %, and
# cross-entropy and POI at 10 % and 20 %, and POI on the annotators' votes (poi_n0_soft, --soft-labels).
#
#   bash scripts/noise_study.sh [RUN ...]      # default: every run below, in this order
#
# Each run is resumable: a killed run continues at its first unfinished epoch, a finished
# one is skipped, and every finished run is evaluated on FERPlus valid.
# Recipe (chosen on clean-label cross-entropy validation accuracy): ResNet-18 from
# scratch, 64 px, 20 epochs, batch 128, SGD lr 0.1 divided by 10 at epochs 10 and 15,
# momentum 0.9, weight decay 1e-4 (the paper's), flip + translation, bf16 where the CPU has it.
# ARCH, SIZE, EPOCHS, LR, LR_STEPS and BATCH override it (a GPU: ARCH=resnet18 SIZE=224
# EPOCHS=60 LR_STEPS=20,40 BATCH=256 with DATA prepared at 224 px is the paper's).
# SUBSET=N: a reduced study on a seeded random N of the training images (`poi noise
# --subset`; the same images at every rate, flipped as in the shipped file of that rate).
# THREADS: torch threads per run (two studies side by side on 2 cores: THREADS=1 each).
# AUGMENT=0: no training augmentation (no flip, shift or colour jitter).
set -euo pipefail
cd "$(dirname "$0")/.."
RAW="${RAW:-../shared/datasets/ferplus}"
DATA="${DATA:-prepared/ferplus64}"
PROJECT="${PROJECT:-runs/noise_study}"
POI="${POI:-.venv/bin/poi}"
PYTHON="${PYTHON:-.venv/bin/python}"  # the project's Python (scripts/oracle_drop_labels.py imports poi_cli)
# cleaning: the fraction `poi clean --auto` chooses on valid (the default of `poi train --rounds`), or CLEAN_THRESHOLD=X
CLEAN_SELECT=(--auto)
[ -n "${CLEAN_THRESHOLD:-}" ] && CLEAN_SELECT=(--threshold "$CLEAN_THRESHOLD")
SEED="${SEED:-0}"
NOISE_DIR=data_manifests/noise
RECIPE=(--arch "${ARCH:-resnet18}" --size "${SIZE:-64}" --epochs "${EPOCHS:-20}" --batch "${BATCH:-128}" --lr "${LR:-0.1}"
        --schedule step --lr-steps "${LR_STEPS:-10,15}" --weight-decay 1e-4 --seed "$SEED")
[ -n "${THREADS:-}" ] && RECIPE+=(--threads "$THREADS")
[ "${AUGMENT:-1}" = 0 ] && RECIPE+=(--no-augment)  # the memorisation probe (docs/results/ferplus.md)
NOISE_PERCENTS=(0 10 20 30)  # the shipped seed-0 noise files (0 %: the manifest's labels)
subset_labels() { echo "$PROJECT/labels/train_noise${1}_seed0_subset$SUBSET.csv"; }  # PERCENT
noisy() {  # PERCENT: the --labels of the training labels at that noise rate
  if [ -n "${SUBSET:-}" ]; then echo "--labels $(subset_labels "$1")"
  elif [ "$1" != 0 ]; then echo "--labels $NOISE_DIR/ferplus_train_noise${1}_seed0.csv"; fi
}
oracle_drop() { echo "$PROJECT/labels/train_noise${1}_seed0${SUBSET:+_subset$SUBSET}_oracle_drop.csv"; }  # PERCENT
PAPER_UEM=(--uem-temperature 3 --uem-scale paper)

cleaned() { echo "--labels $PROJECT/${1}_seed$SEED/clean${2:-}/labels.csv"; }  # _oof: the cross-fitted audit's
declare -A RUNS=(
  [ce_n0]="--baseline $(noisy 0)"
  [ce_n30]="--baseline $(noisy 30)"
  [poi_n30]="$(noisy 30)"
  [poi_n30_paper_uem]="$(noisy 30) ${PAPER_UEM[*]}"
  [poi_n0]="$(noisy 0)"
  [ce_n10]="--baseline $(noisy 10)"
  [ce_n20]="--baseline $(noisy 20)"
  [poi_n10]="$(noisy 10)"
  [poi_n20]="$(noisy 20)"
  [poi_n0_paper_uem]="$(noisy 0) ${PAPER_UEM[*]}"
  [poi_n30_clean]="$(cleaned poi_n30)"
  [poi_n0_clean]="$(cleaned poi_n0)"
  [poi_n30_clean_oof]="$(cleaned poi_n30 _oof)"
  [poi_n30_clean_drop]="$(cleaned poi_n30 _drop)"
  [poi_n30_clean_round3]="$(cleaned poi_n30_clean)"
  [poi_n30_clean_teacher]="$(cleaned poi_n30) --teacher $PROJECT/poi_n30_seed$SEED"
  [poi_n30_clean_teacher3]="$(cleaned poi_n30) --teacher $PROJECT/poi_n30_seed$SEED --teacher-weight 3"
  [poi_n0_ft]="$(noisy 0) --teacher $PROJECT/poi_n0_seed$SEED --fine-tune $PROJECT/poi_n0_seed$SEED
               --epochs ${FT_EPOCHS:-6} --lr ${FT_LR:-0.01} --schedule cosine"
  [poi_n30_clean_teacher_ft]="$(cleaned poi_n30) --teacher $PROJECT/poi_n30_seed$SEED --fine-tune $PROJECT/poi_n30_seed$SEED
                              --epochs ${FT_EPOCHS:-6} --lr ${FT_LR:-0.01} --schedule cosine"
  [poi_n30_oracle_drop]="--labels $(oracle_drop 30)"
  # the paper's levers on the 30 % runs (issue 13, section 2), each chosen on valid
  [poi_n30_lambda2_0.1]="$(noisy 30) --lambda-ce-au 0.1"
  [poi_n30_distill_warmup5]="$(noisy 30) --distill-warmup 5"
  [poi_n30_T1]="$(noisy 30) --temperature 1"
  # the Table X ablations at 30 %
  [poi_n30_no_prior]="$(noisy 30) --no-prior"
  [poi_n30_no_oim]="$(noisy 30) --no-oim"
  [poi_n30_no_uem]="$(noisy 30) --no-uem"
  # the annotators' votes as the targets (--soft-labels, beyond the paper), on the clean labels
  [poi_n0_soft]="--soft-labels"
)
# an *_oracle_drop run trains on the noisy labels of that rate without their flipped images
declare -A ORACLES=([poi_n30_oracle_drop]=30)
# a *_clean run first audits and cleans the labels of the run it names
declare -A CLEANS=([poi_n30_clean]=poi_n30 [poi_n0_clean]=poi_n0 [poi_n30_clean_oof]=poi_n30 [poi_n30_clean_drop]=poi_n30
                   [poi_n30_clean_round3]=poi_n30_clean [poi_n30_clean_teacher]=poi_n30
                   [poi_n30_clean_teacher3]=poi_n30 [poi_n30_clean_teacher_ft]=poi_n30)
ORDER=(ce_n0 ce_n30 poi_n30 poi_n30_clean poi_n0 poi_n0_clean poi_n30_paper_uem poi_n0_paper_uem
       poi_n30_clean_oof poi_n30_clean_drop poi_n30_clean_round3
       poi_n30_clean_teacher poi_n30_clean_teacher3 poi_n30_clean_teacher_ft poi_n0_ft poi_n30_oracle_drop
       poi_n30_lambda2_0.1 poi_n30_distill_warmup5 poi_n30_T1 poi_n30_no_prior poi_n30_no_oim poi_n30_no_uem
       ce_n10 poi_n10 ce_n20 poi_n20 poi_n0_soft)
CROSS_FIT="${CROSS_FIT:-5}"  # folds of the out-of-fold audit behind *_clean_oof

[ -f "$DATA/prepared.json" ] || "$POI" prepare ferplus "$RAW" --out "$DATA" --size "${SIZE:-64}"
if [ -n "${SUBSET:-}" ]; then
  for percent in "${NOISE_PERCENTS[@]}"; do
    file="$(subset_labels "$percent")"
    [ -f "$file" ] || "$POI" noise "$DATA" --rate "$(awk "BEGIN { print $percent / 100 }")" --subset "$SUBSET" \
      --out "$file" > /dev/null
  done
fi

json_field() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }  # FILE KEY

clean_labels() {  # audit a finished run on the labels it trained on (in sample, or out of fold), relabel its suspects
  local dir="$PROJECT/${1}_seed$SEED" kind="${2:-}" audit="audit${2:-}" cross=() select=(--relabel "${CLEAN_SELECT[@]}")
  [ "$kind" = _oof ] && cross=(--cross-fit "$CROSS_FIT")
  if [ "$kind" = _drop ]; then  # the in-sample audit; drop the images the relabelling selected (its fraction)
    clean_labels "$1"
    audit=audit select=(--drop --fraction "$(json_field "$dir/clean/labels.json" fraction)")
  fi
  [ -f "$dir/$audit/audit.csv" ] || "$POI" audit "$dir" "$DATA" "${cross[@]}" ${THREADS:+--threads "$THREADS"} \
    --out "$dir/$audit" > "$dir/$audit.log"
  [ -f "$dir/clean$kind/labels.csv" ] || "$POI" clean "$dir/$audit/audit.csv" "$DATA" "${select[@]}" \
    ${THREADS:+--threads "$THREADS"} --out "$dir/clean$kind/labels.csv"
}

run() {  # train unless finished (resume when killed), then evaluate on valid
  local name="$1" dir="$PROJECT/${1}_seed$SEED"
  if [ "$name" = poi_n0_soft ] && [ -n "${SUBSET:-}" ]; then  # --soft-labels reads the manifest, not a subset's label file
    echo "$name: --soft-labels trains on every training image's votes, not on SUBSET's: skipped"
    return
  fi
  if [ -n "${CLEANS[$name]:-}" ]; then
    local kind; kind="$(grep -o '_oof$\|_drop$' <<< "$name" || true)"
    clean_labels "${CLEANS[$name]}" "$kind"
    local summary="$PROJECT/${CLEANS[$name]}_seed$SEED/clean$kind/labels.json"
    if [ "$(json_field "$summary" n_changed)" = 0 ]; then
      echo "$name: the cleaning changed no label ($summary): training it would repeat ${CLEANS[$name]}, skipped"
      return
    fi
  fi
  if [ -n "${ORACLES[$name]:-}" ] && [ ! -f "$(oracle_drop "${ORACLES[$name]}")" ]; then
    local noisy_file; noisy_file="$(noisy "${ORACLES[$name]}")"
    mkdir -p "$PROJECT/labels"
    "$PYTHON" scripts/oracle_drop_labels.py "$DATA" "${noisy_file#--labels }" "$(oracle_drop "${ORACLES[$name]}")"
  fi
  if [ -f "$dir/last.pt" ]; then
    "$POI" train --resume "$dir" ${THREADS:+--threads "$THREADS"} || true  # "already finished" is fine
  else
    rm -rf "$dir"  # killed before its first epoch ended: nothing to keep
    # shellcheck disable=SC2086
    "$POI" train "$DATA" "${RECIPE[@]}" ${RUNS[$name]} --project "$PROJECT" --name "${name}_seed$SEED"
  fi
  [ -f "$dir/eval/metrics.json" ] || "$POI" evaluate "$dir" "$DATA" --split val --out "$dir/eval" > /dev/null
}

for name in "${@:-${ORDER[@]}}"; do run "$name"; done
