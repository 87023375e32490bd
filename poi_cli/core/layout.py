"""The files poi writes into its folders, named once (torch-free: the deploy runtime and
the data modules read them as well as training).

A prepared folder (`poi prepare`, `poi combine`) holds STORE_FILES; a run folder
(`poi train`) holds RUN_FILES. No command writes an output of its own under one of these
names inside such a folder (core/atomic.refuse_poi_file): the file would be read back as
the folder's own.
"""

from __future__ import annotations

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
HELD_OUT_SUFFIX = "[held out by the run]"  # after the training split's name: the images of HELDOUT_FILE (evaluate, calibrate)
HELDOUT_FILE = "heldout_ids.csv"  # ids of the training images held out for validation, when the store had no val split
RUN_FILES = (LAST, BEST, CONFIG_FILE, RESULTS_FILE, HELDOUT_FILE)
