"""A frozen teacher for `poi train --teacher RUN` (beyond the paper).

The paper's PIN teaches the TRN of the same network (Eq. 11), but both fit the same noisy
labels, so on FERPlus they agree and the distillation moves nothing
(docs/results/ferplus.md). A teacher trained before, e.g. the first round of `--rounds`,
is a second opinion that did not co-adapt with the student: its objective inference p~*
(Eq. 7, at the student's T; its TRN's softmax(z / T) for a model without the OIM) on each
training batch is the target of loss_kl_teacher. May import torch and poi_cli.model.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Sequence

import torch

from poi_cli.core.errors import PoiError
from poi_cli.data.preprocess import GRAY_WEIGHTS, Preprocessing
from poi_cli.model.checkpoint import CheckpointInfo, load_model
from poi_cli.model.network import intermediate_log_probs, tempered_log_probs
from poi_cli.train.config import TrainError


class Teacher:
    """The frozen model of a run folder or checkpoint, checked to see the student's input and classes."""

    def __init__(self, path: str, classes: Sequence[str], preprocessing: Preprocessing, device: torch.device) -> None:
        try:
            model, checkpoint = load_model(path, device)
        except PoiError as error:
            raise TrainError(f"--teacher: {error}") from None
        info = CheckpointInfo.of(checkpoint)
        if list(info.classes) != list(classes):
            raise TrainError(f"--teacher: {path} predicts {', '.join(info.classes)}; this run trains {', '.join(classes)}")
        # A grey teacher (FERPlus) can teach a colour student (a combined folder): it sees the batch in grey.
        self.grey = info.preprocessing.grayscale and not preprocessing.grayscale
        if info.preprocessing != (replace(preprocessing, grayscale=True) if self.grey else preprocessing):
            theirs, ours = asdict(info.preprocessing), asdict(preprocessing)
            differ = ", ".join(f"{key} {theirs[key]} (this run: {ours[key]})" for key in ours if theirs.get(key) != ours[key])
            raise TrainError(f"--teacher: {path} was trained on other input: {differ}")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model = model
        self.mean, self.std = preprocessing.mean, preprocessing.std

    @torch.no_grad()
    def log_probs(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """log p~* of the teacher at `temperature` for the batch x, (B, C), float32, no gradient."""
        output = self.model(grey_input(x, self.mean, self.std) if self.grey else x)
        if output.region_logits is not None and output.gate_weights is not None:
            return intermediate_log_probs(output.region_logits, output.gate_weights, temperature)
        return tempered_log_probs(output.trn_logits, temperature)


def grey_input(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """A normalised colour batch (B, 3, H, W) as the same faces in grey, normalised again:
    what a model trained on grey faces was shown (x -> x std + mean, luma, then back)."""
    mean_t, std_t = x.new_tensor(mean).view(1, 3, 1, 1), x.new_tensor(std).view(1, 3, 1, 1)
    luma = ((x * std_t + mean_t) * x.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (luma - mean_t) / std_t
