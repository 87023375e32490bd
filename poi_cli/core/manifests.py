"""The one place that reads the facts in data_manifests/ (class order, AU prior table).

Everything else imports from here instead of repeating a class list or an AU table.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import torch


def read_manifest(name: str) -> Any:
    """Parse a JSON file shipped in data_manifests/ (installed as poi_cli.data_manifests)."""
    text = resources.files("poi_cli.data_manifests").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


CLASSES: tuple[str, ...] = tuple(read_manifest("classes.json")["classes"])
_AU_PRIOR = read_manifest("au_prior.json")
EYE_AUS: tuple[str, ...] = tuple(_AU_PRIOR["eye_aus"])
MOUTH_AUS: tuple[str, ...] = tuple(_AU_PRIOR["mouth_aus"])
AU_NAMES: dict[str, str] = dict(_AU_PRIOR["au_names"])


def class_names(num_classes: int) -> tuple[str, ...]:
    """The first num_classes canonical names (7: no contempt, 8: with contempt)."""
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be between 2 and {len(CLASSES)}, got {num_classes}")
    return CLASSES[:num_classes]


@lru_cache(maxsize=None)
def au_prior_matrix(group: str) -> torch.Tensor:
    """Binary (8 classes, num_aus) matrix of Table I for group 'eye' or 'mouth'.

    Row c (canonical order) has a 1 for every AU that expression c activates in that
    facial region. 7-class models simply never index the contempt row.
    """
    aus = {"eye": EYE_AUS, "mouth": MOUTH_AUS}[group]
    matrix = torch.zeros(len(CLASSES), len(aus))
    for class_index, name in enumerate(CLASSES):
        for au in _AU_PRIOR["expressions"][name][group]:
            matrix[class_index, aus.index(au)] = 1.0
    return matrix
