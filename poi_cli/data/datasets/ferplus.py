"""FERPlus: FER2013Train/Valid/Test folders, each with the official label.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from poi_cli.data.datasets.common import (
    EXCLUDED, MISSING, Item, LayoutError, ParsedDataset, canonical_index, dataset_manifest, expected_counts,
    missing_reason,
)


VOTE_PREFIX = "vote_"  # the manifest's vote columns: vote_<class> for each class, vote_unknown, vote_NF
MAX_VOTES = 1000  # votes per class of one image: FERPlus has 10 annotators an image


def kept_votes(votes: np.ndarray) -> np.ndarray:
    """Votes with the single votes dropped as outliers (the FERPlus paper's rule), any shape."""
    return np.where(votes > 1, votes, 0)


def majority_label(votes: np.ndarray, vote_names: list[str], class_map: dict[str, str | None]) -> tuple[str | None, str]:
    """The FERPlus paper's majority rule: (winning class name or None, why when None).

    Single votes are dropped as outliers; the winner needs more than half of what is
    left, unknown and NF included; a winner that is unknown or NF is excluded.
    """
    kept = kept_votes(votes)
    total = kept.sum()
    if total == 0 or kept.max() * 2 <= total:
        return None, "no majority after dropping single votes"
    winner = vote_names[int(kept.argmax())]
    if class_map[winner] is None:
        return None, f"majority vote is {winner}"
    return class_map[winner], ""


def parse(raw_dir: Path) -> ParsedDataset:
    facts = dataset_manifest("ferplus")
    vote_names: list[str] = facts["vote_columns"]
    class_map: dict[str, str | None] = facts["class_map"]
    vote_columns = [f"{VOTE_PREFIX}{class_map[name] or name}" for name in vote_names]
    items: list[Item] = []
    notes: list[str] = []
    seen: set[str] = set()
    for split, info in facts["splits"].items():
        folder = raw_dir / info["folder"]
        label_file = folder / "label.csv"
        if not folder.is_dir():
            notes.append(f"split {split}: {info['folder']}/ is absent, skipped")
            continue
        if not label_file.is_file():
            raise LayoutError(f"{raw_dir} does not look like FERPlus: {info['folder']}/label.csv is missing")
        with open(label_file, newline="", encoding="utf-8-sig") as handle:
            for line_number, row in enumerate(csv.reader(handle), start=1):
                if not row or not row[0].strip():
                    continue
                if len(row) != 2 + len(vote_names):
                    raise LayoutError(
                        f"{label_file}: line {line_number} has {len(row)} fields, expected {2 + len(vote_names)} (name, box, {len(vote_names)} votes)"
                    )
                name = row[0].strip()
                try:
                    values = [float(v) for v in row[2:]]
                except ValueError:
                    raise LayoutError(f"{label_file}: line {line_number} has a vote that is not a number") from None
                if not all(0 <= v <= MAX_VOTES and v == int(v) for v in values):  # inf and nan fail too
                    raise LayoutError(f"{label_file}: line {line_number} has a vote that is not a count of "
                                      f"annotators (a whole number from 0 to {MAX_VOTES})")
                votes = np.array([int(v) for v in values])
                if Path(name).name != name or name in ("", ".", ".."):
                    # a name is a file of its own split's folder: `../FER2013Valid/x.png` in the train
                    # list would put a validation face into training
                    raise LayoutError(f"{label_file}: line {line_number} names {name!r}, not a file of {info['folder']}/")
                if f"{info['folder']}/{name}" in seen:
                    raise LayoutError(f"{label_file}: line {line_number} lists {name} again (each image once)")
                seen.add(f"{info['folder']}/{name}")
                winner, why = majority_label(votes, vote_names, class_map)
                item = Item(
                    id=f"{info['folder']}/{name}", source=f"{info['folder']}/{name}", split=split,
                    label=-1 if winner is None else canonical_index(winner),
                    extra=dict(zip(vote_columns, votes.tolist())),
                )
                if winner is None:
                    item.status, item.reason = EXCLUDED, why
                elif not (folder / name).is_file():
                    item.status, item.reason = MISSING, missing_reason(folder / name, "label.csv")
                items.append(item)
    if not items:
        folders = ", ".join(f"{info['folder']}/" for info in facts["splits"].values())
        raise LayoutError(f"{raw_dir} does not look like FERPlus: none of {folders} with a label.csv was found")
    return ParsedDataset(
        name="ferplus", layout="official", items=items, num_classes=facts["num_classes"],
        grayscale=facts["grayscale"], detect=facts["detect"], notes=notes,
        expected=expected_counts(facts), extra_columns=vote_columns,
    )
