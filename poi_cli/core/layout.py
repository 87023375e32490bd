"""The files poi writes into its folders, named once, and the checkpoint a run folder
stands for (torch-free: the deploy runtime and the data modules read them as well as
training).

A prepared folder (`poi prepare`, `poi combine`) holds STORE_FILES; a run folder
(`poi train`) holds RUN_FILES. No command writes an output of its own under one of these
names inside such a folder (core/atomic.refuse_poi_file): the file would be read back as
the folder's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

# a prepared folder
META_FILE = "prepared.json"
MANIFEST_FILE = "manifest.csv"
FACES_FILE = "faces.npy"
PREPARE_PROGRESS_FILE = "progress.json"  # settings of an unfinished `poi prepare`
PREPARE_JOURNAL_FILE = "progress.jsonl"  # one JSON line per image it finished
STORE_FILES = (META_FILE, MANIFEST_FILE, FACES_FILE, PREPARE_PROGRESS_FILE, PREPARE_JOURNAL_FILE)

# a run folder
LAST, BEST = "last.pt", "best.pt"
CONFIG_FILE, RESULTS_FILE = "config.json", "results.csv"
HELD_OUT_MARK = "[held out"  # in the name of validation held out of a training split: train[held out 0.1]
HELD_OUT_SUFFIX = f"{HELD_OUT_MARK} by the run]"  # after the training split's name: the images of HELDOUT_FILE (evaluate, calibrate)
HELDOUT_FILE = "heldout_ids.csv"  # ids of the training images held out for validation, when the store had no val split
# The audit table's column of those images: audited like the rest, but never relabelled or
# dropped by poi clean, so that a later --rounds round validates on them as round 1 did
HELD_OUT_COLUMN = "held_out"
# results.csv of a run on a combined folder: each member's validation accuracy (val_acc_NAME);
# its val_acc, which best.pt is selected on, is their mean
MEMBER_VAL_PREFIX = "val_acc_"
RUN_FILES = (LAST, BEST, CONFIG_FILE, RESULTS_FILE, HELDOUT_FILE)


def run_checkpoint(folder: str | Path) -> Optional[Path]:
    """The checkpoint a run folder stands for: its BEST, else its LAST; None when it holds neither."""
    return next((Path(folder) / name for name in (BEST, LAST) if (Path(folder) / name).is_file()), None)


def no_checkpoint_message(folder: str | Path) -> str:
    """The one line for a folder given as a model that holds none, naming what was looked for
    (the torch commands and the deploy runtime say the same, with or without torch)."""
    return (f"{folder} holds no model: looked for {BEST} and {LAST}, the checkpoints of a poi run folder "
            "(written from its first finished epoch)")
