"""The one place that reads the facts in data_manifests/ (class order, AU prior table,
the four facial regions).

Everything else imports from here instead of repeating a class list, an AU table or a
region name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np


def read_manifest(name: str) -> Any:
    """Parse a JSON file shipped in data_manifests/ (installed as poi_cli.data_manifests)."""
    text = resources.files("poi_cli.data_manifests").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


CLASSES: tuple[str, ...] = tuple(read_manifest("classes.json")["classes"])
_AU_PRIOR = read_manifest("au_prior.json")
EYE_AUS: tuple[str, ...] = tuple(_AU_PRIOR["eye_aus"])
MOUTH_AUS: tuple[str, ...] = tuple(_AU_PRIOR["mouth_aus"])
AU_NAMES: dict[str, str] = dict(_AU_PRIOR["au_names"])
AU_GROUPS: dict[str, tuple[str, ...]] = {"eye": EYE_AUS, "mouth": MOUTH_AUS}  # group -> its AUs, in output order
BRANCHES = ("upper", "lower")  # the prior branches B_upper, B_lower


@dataclass(frozen=True)
class Region:
    """One of the PIN's four facial regions: a row of data_manifests/regions.json.

    index: n, the crop order (region logits t_n, gate weights, per-region outputs).
    side: the region's place among the regions of its AU group, 0 image-left and
    1 image-right: the second axis of the model's eye / mouth AU outputs (B, 2, M).
    """

    index: int
    name: str
    branch: str  # "upper" / "lower": the prior branch it goes through
    au_group: str  # "eye" / "mouth": the AUs its AU nets predict
    flipped: bool  # the crop is mirrored (the image-right regions)
    side: int

    @property
    def aus(self) -> tuple[str, ...]:
        """The AUs this region carries, in output order."""
        return AU_GROUPS[self.au_group]


def _read_regions() -> tuple[Region, ...]:
    rows = read_manifest("regions.json")["regions"]
    regions = []
    for index, row in enumerate(rows):
        if row["branch"] not in BRANCHES or row["au_group"] not in AU_GROUPS:
            raise ValueError(f"regions.json: region {row['name']!r} has an unknown branch or AU group")
        side = sum(1 for earlier in rows[:index] if earlier["au_group"] == row["au_group"])
        regions.append(Region(index, row["name"], row["branch"], row["au_group"], bool(row["flipped"]), side))
    return tuple(regions)


REGIONS: tuple[Region, ...] = _read_regions()
REGION_NAMES: tuple[str, ...] = tuple(region.name for region in REGIONS)
ALL_AUS: tuple[str, ...] = tuple(au for aus in AU_GROUPS.values() for au in aus)  # eye AUs, then mouth AUs
# AU -> the regions that carry it (image-left first): AU06 -> (left_eye, right_eye).
AU_REGIONS: dict[str, tuple[Region, ...]] = {au: tuple(r for r in REGIONS if au in r.aus) for au in ALL_AUS}


def au_columns() -> list[str]:
    """`<AU>_<region>` for every AU in every region that carries it (AU06_left_eye, ...)."""
    return [f"{au}_{region.name}" for au, regions in AU_REGIONS.items() for region in regions]


def class_names(num_classes: int) -> tuple[str, ...]:
    """The first num_classes canonical names (7: no contempt, 8: with contempt)."""
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be between 2 and {len(CLASSES)}, got {num_classes}")
    return CLASSES[:num_classes]


@lru_cache(maxsize=None)
def au_prior_matrix(group: str) -> np.ndarray:
    """Binary (8 classes, num_aus) matrix of Table I for group 'eye' or 'mouth'.

    Row c (canonical order) has a 1 for every AU that expression c activates in that
    facial region. 7-class models simply never index the contempt row. float32, read-only
    (cached: one array for every caller).
    """
    aus = AU_GROUPS[group]
    matrix = np.zeros((len(CLASSES), len(aus)), dtype=np.float32)
    for class_index, name in enumerate(CLASSES):
        for au in _AU_PRIOR["expressions"][name][group]:
            matrix[class_index, aus.index(au)] = 1.0
    matrix.flags.writeable = False
    return matrix
