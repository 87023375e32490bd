"""The one inference path over a prepared split: `predict_split(model, ...) -> SplitPredictions`.

    predictions = predict_split(model, dataset.faces, data.store_rows, data.labels, input_size=224,
                                batch=256, device=device, amp=True)
    predictions.accuracy, predictions.trn_probs, predictions.intermediate_probs(1.0)
    predictions.recipe_log_probs(recipe)    # log p of a PredictionRecipe (mirror=True kept the mirror's outputs)

The model runs in eval mode under no_grad over the store rows in order (BatchLoader,
to_model_input, bf16 autocast when asked); its raw outputs come back as numpy arrays on
the CPU, and every probability that evaluation, the audit, the report and training's
validation need is derived from them here, in float32 with the model's own equations.
Training validates its model in memory; everything that studies a saved model (evaluate,
audit, clean, calibrate, the cross-fitted audit) runs it with `predict_checkpoint_split`,
which also picks the device and bf16 as every command does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Optional

import numpy as np
import torch
from rich.console import Console

from poi_cli.core.outputs import PredictionRecipe
from poi_cli.core.progress import progress_bar
from poi_cli.core.runtime import autocast, select_device, use_bf16
from poi_cli.data.loader import BatchLoader
from poi_cli.data.preprocess import to_model_input
from poi_cli.model.checkpoint import model_of
from poi_cli.model.network import POIOutput, intermediate_log_probs, tempered_log_probs
from poi_cli.model.reporting import mirrored, objective_log_probs, recipe_log_probs

# POIOutput fields kept per image besides the TRN logits (None when the model has none).
PIN_FIELDS = ("region_logits", "gate_weights", "consistency", "eye_au_probs", "mouth_au_probs")
# What is kept of the mirrored image (mirror=True): what a recipe's flip needs.
MIRROR_FIELDS = ("mirror_trn_logits", "mirror_region_logits", "mirror_gate_weights")


@dataclass
class SplitPredictions:
    """A model's per-image outputs over (this process's share of) a split, as CPU numpy arrays.

    Row i is the image at split position positions[i]; the PIN fields are None for a
    baseline model or when predicted with with_pin=False, gate_weights also without OIM;
    the mirror_ fields (the same outputs for the image's horizontal mirror) are None unless
    predicted with mirror=True. Class indices are the model's.
    """

    trn_logits: np.ndarray  # z, (n, C) float32
    labels: np.ndarray  # (n,) int64: the labels passed to predict_split, in row order
    positions: Optional[np.ndarray] = None  # (n,) int64 positions into the store rows passed in
    region_logits: Optional[np.ndarray] = None  # t_n, (n, 4, C) float32
    gate_weights: Optional[np.ndarray] = None  # the OIM's w_n, (n, 4)
    consistency: Optional[np.ndarray] = None  # the UEM's w (Eq. 10), (n,)
    eye_au_probs: Optional[np.ndarray] = None  # (n, 2, 6)
    mouth_au_probs: Optional[np.ndarray] = None  # (n, 2, 7)
    mirror_trn_logits: Optional[np.ndarray] = None  # z of the mirrored image, (n, C)
    mirror_region_logits: Optional[np.ndarray] = None  # (n, 4, C)
    mirror_gate_weights: Optional[np.ndarray] = None  # (n, 4)
    temperature: float = 3.0  # the model's T (Eq. 6-7): the default of the PIN's probabilities
    bf16: bool = False  # predicted under bf16 autocast (poi predict computes in float32)

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def trn_probs(self) -> np.ndarray:
        """q = softmax(z), (n, C)."""
        return torch.from_numpy(self.trn_logits).softmax(-1).numpy()

    @property
    def predicted(self) -> np.ndarray:
        """The TRN's class per image (argmax z), (n,)."""
        return self.trn_logits.argmax(1)

    @property
    def correct(self) -> np.ndarray:
        """Whether the TRN's class is the label, (n,) bool."""
        return self.predicted == self.labels

    @property
    def accuracy(self) -> Optional[float]:
        """The TRN's accuracy on the labels; None for no image."""
        return float(self.correct.mean()) if len(self) else None

    def region_probs(self, temperature: Optional[float] = None) -> Optional[np.ndarray]:
        """p~_n = softmax(t_n / T) (Eq. 6), (n, 4, C); T defaults to the model's."""
        if self.region_logits is None:
            return None
        return tempered_log_probs(torch.from_numpy(self.region_logits), self._t(temperature)).exp().numpy()

    def region_average(self, temperature: Optional[float] = None) -> Optional[np.ndarray]:
        """mean_n p~_n, the plain average of the four regions (Fig. 13), (n, C)."""
        if self.region_logits is None:
            return None
        # torch's mean, as the model's outputs were averaged before: identical numbers.
        return tempered_log_probs(torch.from_numpy(self.region_logits), self._t(temperature)).exp().mean(1).numpy()

    def intermediate_probs(self, temperature: Optional[float] = None) -> Optional[np.ndarray]:
        """p~* = sum_n w_n softmax(t_n / T) (Eq. 7), (n, C); None without OIM. T defaults to
        the model's; T = 1 gives the objective inference on the TRN's probability scale."""
        if self.region_logits is None or self.gate_weights is None:
            return None
        log_probs = intermediate_log_probs(torch.from_numpy(self.region_logits), torch.from_numpy(self.gate_weights),
                                           self._t(temperature))
        return log_probs.exp().numpy()

    def recipe_log_probs(self, recipe: PredictionRecipe) -> np.ndarray:
        """log p of a PredictionRecipe (model/reporting.recipe_log_probs: the one fusion), (n, C);
        softmax(log p / T_cal) is what prediction reports. ValueError when the recipe needs an
        output that was not kept (the mirror's, or the PIN's p~*)."""
        trn, objective = self._views(recipe.flip)
        return recipe_log_probs(trn, objective, recipe.fusion).numpy()

    def objective_probs(self) -> Optional[np.ndarray]:
        """p~* at T = 1 of the image, the PIN's objective inference as prediction reports it
        (pin_expression is its argmax; never the mirror's, like every regions' output); None without OIM."""
        _, (objective,) = self._views(flip=False)
        return None if objective is None else objective.exp().numpy()

    def _views(self, flip: bool) -> tuple[list[torch.Tensor], list[Optional[torch.Tensor]]]:
        """(z, log p~* at T = 1) of the image and, with flip, of its mirror, as tensors."""
        views = [(self.trn_logits, self.region_logits, self.gate_weights)]
        if flip:
            if self.mirror_trn_logits is None:
                raise ValueError("a recipe with flip needs the mirrored images' outputs: predict with mirror=True")
            views.append((self.mirror_trn_logits, self.mirror_region_logits, self.mirror_gate_weights))
        tensor = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
        return ([torch.from_numpy(z) for z, _, _ in views],
                [objective_log_probs(tensor(t), tensor(w)) for _, t, w in views])

    def _t(self, temperature: Optional[float]) -> float:
        return self.temperature if temperature is None else temperature


def _pin_values(output: POIOutput) -> dict[str, Optional[torch.Tensor]]:
    """The PIN fields of one batch in float32 (under bf16 autocast the heads answer in bf16)."""
    values = {"region_logits": output.region_logits, "gate_weights": output.gate_weights, "consistency": output.consistency}
    # The sigmoid of the float32 AU logits, not POIOutput's sigmoid in bf16: full precision.
    for name, logits in (("eye_au_probs", output.eye_au_logits), ("mouth_au_probs", output.mouth_au_logits)):
        values[name] = None if logits is None else logits.float().sigmoid()
    return {name: None if value is None else value.float() for name, value in values.items()}


def _concatenate(chunks: list[torch.Tensor]) -> Optional[np.ndarray]:
    return torch.cat(chunks).numpy() if chunks else None


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    faces: np.ndarray,
    store_rows: np.ndarray,
    labels: np.ndarray,
    input_size: int,
    batch: int,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    with_pin: bool = True,
    progress: bool = False,
    mirror: bool = False,
) -> SplitPredictions:
    """Run `model` (a POIModel, or one wrapped by DistributedDataParallel) over faces[store_rows]
    in order; under torchrun each process predicts its share (rank, world_size).

    with_pin=False runs the TRN alone (training's validation: trn_logits only). mirror=True
    also runs each image's horizontal mirror and keeps the mirror_ fields (a recipe's flip).
    progress shows a transient bar on stderr, so that stdout stays clean for --json. The
    model's train/eval mode is restored afterwards.
    """
    loader = BatchLoader(faces, store_rows, np.asarray(labels), batch, shuffle=False, rank=rank,
                         world_size=world_size, device=device)
    was_training = model.training
    model.eval()
    try:
        return _collect(model, loader, input_size, device, amp, channels_last, with_pin, progress, mirror)
    finally:
        model.train(was_training)


def predict_checkpoint_split(
    checkpoint: Mapping[str, Any],
    faces: np.ndarray,
    store_rows: np.ndarray,
    labels: np.ndarray,
    device: str = "auto",
    batch: int = 256,
    amp: str = "auto",
    with_pin: bool = True,
    mirror: bool = False,
) -> SplitPredictions:
    """predict_split of a loaded checkpoint (load_checkpoint) over faces[store_rows]: its model
    built on `device` (core.runtime.select_device's choices), bf16 autocast as `amp` says
    (use_bf16), at the model's input size, with a progress bar on stderr (mirror: also the
    mirrored images, for a recipe's flip).

    Takes the loaded dict, not a path: callers read the checkpoint (CheckpointInfo) to
    choose the images and labels first, and the file is read once.
    """
    torch_device = select_device(device)
    model = model_of(checkpoint, torch_device)
    return predict_split(model, faces, store_rows, labels, model.config.input_size, batch, torch_device,
                         use_bf16(amp, torch_device), with_pin=with_pin, progress=True, mirror=mirror)


def _collect(model: torch.nn.Module, loader: BatchLoader, input_size: int, device: torch.device, amp: bool,
             channels_last: bool, with_pin: bool, progress: bool, mirror: bool = False) -> SplitPredictions:
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in ("trn_logits", "labels", "positions", *PIN_FIELDS,
                                                                      *MIRROR_FIELDS)}
    temperature = None
    # drawn on a terminal only: piped, a transient bar still left a blank line before the next message
    with progress_bar(Console(stderr=True), enabled=progress) as bar:
        task = bar.add_task("evaluating", total=len(loader))
        for images, targets, _, positions in loader:
            inputs = to_model_input(images, input_size, channels_last)
            with autocast(device, amp):
                output = model(inputs, with_pin=with_pin)
            temperature = output.temperature
            collected["trn_logits"].append(output.trn_logits.float().cpu())
            collected["labels"].append(targets.cpu())
            collected["positions"].append(positions.cpu())
            for name, value in _pin_values(output).items():
                if value is not None:
                    collected[name].append(value.cpu())
            if mirror:
                with autocast(device, amp):
                    flipped = model(mirrored(inputs), with_pin=with_pin)
                collected["mirror_trn_logits"].append(flipped.trn_logits.float().cpu())
                for name, value in _pin_values(flipped).items():
                    if name in ("region_logits", "gate_weights") and value is not None:
                        collected[f"mirror_{name}"].append(value.cpu())
            bar.advance(task)
    arrays = {name: _concatenate(chunks) for name, chunks in collected.items()}
    if arrays["trn_logits"] is None:  # no image in this share
        arrays.update(trn_logits=np.zeros((0, 0), np.float32), labels=np.zeros(0, np.int64), positions=np.zeros(0, np.int64))
    return SplitPredictions(**arrays, temperature=3.0 if temperature is None else temperature, bf16=amp)
