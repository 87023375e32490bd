"""Recipes that chain training and inference: above both layers, beside cli.py.

`train_rounds`: POI trained on noisy labels, then, for each further round, the run's own
training labels audited by its PIN (poi audit), the suspects relabelled to the PIN's
suggestion (poi clean), and a new run trained from scratch on the cleaned labels. Each
round is an ordinary run folder (NAME, NAME_round2, ...); the cleaned label file and its
summary sit in the previous round's folder, under clean/.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from rich.console import Console

from poi_cli.inference.clean import clean, write_clean
from poi_cli.train.config import TrainConfig, TrainError
from poi_cli.train.engine import train

CLEAN_DIR = "clean"


def cleaned_labels(run_dir: Path, config: TrainConfig, device: str = "auto") -> Path:
    """Audit a finished POI run on the labels it trained on and relabel its suspects; returns the label file."""
    out = run_dir / CLEAN_DIR / "labels.csv"
    result = clean(run_dir, config.data, "relabel", threshold=config.clean_threshold, split=config.train_split,
                   device=device)
    write_clean(result, out)
    return out


def train_rounds(config: TrainConfig, console: Optional[Console] = None,
                 announce: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Train `config.rounds` runs, each on the labels the previous one cleaned; returns their folders."""
    if config.rounds > 1 and not config.use_pin:
        raise TrainError("--rounds needs the PIN to audit the labels: it cannot be combined with --baseline")
    if config.rounds > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainError("--rounds runs one process: train each round under torchrun, with poi audit and poi clean between")
    runs = [train(config, console)]
    for number in range(2, config.rounds + 1):
        labels = cleaned_labels(runs[-1], config, config.device)
        announce(f"round {number}: labels cleaned by {runs[-1].name} -> {labels}")
        following = replace(config, labels=str(labels), noise=0.0, name=f"{config.name}_round{number}", resume=None)
        runs.append(train(following, console))
    return runs
