"""Layer 3, train: `poi train`. May import core, data and model; only the CLI and
pipeline.py (the recipes that chain training and study) import it.

config (TrainConfig: every option of `poi train`, defined once), engine (the epoch loop),
data (training labels, noise, the validation split or hold-out), run_folder (config.json,
results.csv, last/best, resume, repair after a kill), finetune (starting from a
checkpoint), meters (per-epoch sums by name), augment (batch augmentation on the device), teacher
(a frozen earlier model that teaches the TRN, `--teacher`), head_refit (`poi refit-head`: the
TRN's classifier fitted again on the frozen trunk's features, class-balanced).
"""
