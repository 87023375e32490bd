"""Layer 3, train: `poi train`. May import core, data and model; nothing imports it but the CLI.

config (TrainConfig, every option of `poi train`), engine (the epoch loop), augment
(batch augmentation on the device), run_folder (config.json, results.csv, RNG state).
"""
