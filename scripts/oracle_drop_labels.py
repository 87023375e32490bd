"""The label file of a perfect drop-cleaning, an analysis for scripts/noise_study.sh (poi_n30_oracle_drop):
a noisy label file with exactly its flipped images left out, i.e. what `poi clean --drop` would
train on if it found every wrong label and nothing else. It uses the known clean labels, so it is a
bound, not a method.

    python scripts/oracle_drop_labels.py PREPARED_DIR NOISY.csv OUT.csv

The noisy and clean labels are read as `poi train --labels` reads them (apply_label_file: the file's
clean_label column, else the manifest's labels); images the noisy file leaves out stay out.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from poi_cli.core.atomic import atomic_write_text
from poi_cli.data.store import DROPPED_LABEL, PreparedDataset, label_names


def oracle_drop_labels(prepared_dir: str, noisy_file: str, out: str) -> int:
    """Write OUT; returns how many images keep a label."""
    dataset = PreparedDataset(prepared_dir)
    split = dataset.split("train")
    given = dataset.split("train", noisy_file)
    right = given.labels == given.clean_labels
    kept = pd.Series(given.labels[right], index=given.ids[right])
    labels = kept.reindex(split.ids, fill_value=DROPPED_LABEL).to_numpy(np.int64)
    table = pd.DataFrame({"id": split.ids, "label": labels, "label_name": label_names(labels, dataset.classes)})
    atomic_write_text(out, table.to_csv(index=False, lineterminator="\n"))
    return int(right.sum())


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(f"{sys.argv[3]}: {oracle_drop_labels(*sys.argv[1:])} images keep their (right) label")
