"""The files of a training run folder besides its checkpoints, and the RNG state it resumes with."""

from __future__ import annotations

from typing import Optional

import torch

CONFIG_FILE, RESULTS_FILE = "config.json", "results.csv"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Optional[dict]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
