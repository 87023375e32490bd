"""Per-epoch training metrics, accumulated on the device by name and reduced over torchrun processes.

`EpochMeters` takes each step's loss terms, predictions and labels (and the UEM's beta
and the flipped-label mask under label noise) and ends the epoch with the metric columns
of results.csv. Sums are float64 tensors on the training device (no host sync per step),
summed over processes with one all_reduce; per-image values (beta, flipped) are
all_gathered. May import torch and poi_cli.core.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from poi_cli.core.metrics import roc_auc

LOSS_TERMS = ("total", "ce_tar", "ce_au", "au", "kl_au", "kl_tar", "kl_teacher", "w_mean")
# What label noise does to training, per epoch (issue 13): train_acc_flipped is the
# accuracy against the given (wrong) label on the flipped images, i.e. how much of the
# noise the TRN has memorised; beta_* describe the UEM's weight of Eq. 11 over the epoch:
# its mean, the share of images above 0.1, and its ROC AUC for telling flipped images
# from clean ones (1: beta is higher on every flipped image).
NOISE_COLUMNS = ("train_acc_flipped", "beta_mean", "beta_over_0.1", "beta_auc_flipped")
COUNTS = ("images", "correct", "correct_clean", "correct_flipped")


def loss_column(term: str) -> str:
    """The results.csv column of a loss term of total_loss (w_mean keeps its name)."""
    return term if term == "w_mean" else f"loss_{term}"


class Sums:
    """Running float64 sums on one device, addressed by name."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.index = {name: i for i, name in enumerate(names)}
        self.values = torch.zeros(len(names), device=device, dtype=torch.float64)

    def add(self, name: str, value: torch.Tensor | float) -> None:
        self.values[self.index[name]] += value

    def item(self, name: str) -> float:
        """One sum on the host (a device sync)."""
        return self.values[self.index[name]].item()

    def all_reduce(self) -> None:
        """Sum over the torchrun processes."""
        dist.all_reduce(self.values)

    def to_dict(self) -> dict[str, float]:
        return dict(zip(self.index, self.values.tolist()))


class Gathered:
    """Per-image values of an epoch, kept on the device and concatenated at its end."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def add(self, values: torch.Tensor) -> None:
        self.parts.append(values)

    def result(self, distributed: bool) -> Optional[torch.Tensor]:
        """All values (of every process under torchrun), or None when none were added."""
        if not self.parts:
            return None
        values = torch.cat(self.parts)
        return all_gather(values) if distributed else values


class EpochMeters:
    """The training metrics of one epoch on one process; `finish` sums them over processes."""

    def __init__(self, device: torch.device, with_clean: bool) -> None:
        self.sums = Sums((*LOSS_TERMS, *COUNTS), device)
        self.with_clean = with_clean  # clean labels known: --noise, or a label file that has them
        self.present: set[str] = set()  # loss terms the model produced (ablations drop some)
        self.beta, self.flipped = Gathered(), Gathered()

    def update(self, terms: dict[str, torch.Tensor], predicted: torch.Tensor, labels: torch.Tensor,
               clean: Optional[torch.Tensor], beta: Optional[torch.Tensor]) -> None:
        """Add one step: its loss terms (batch means), predicted classes, labels, clean labels, UEM beta."""
        batch = labels.shape[0]
        for term in LOSS_TERMS:
            if term in terms:
                self.sums.add(term, terms[term].detach().double() * batch)
        self.present.update(terms)
        self.sums.add("images", batch)
        correct = predicted == labels
        self.sums.add("correct", correct.sum())
        if clean is not None:
            is_flipped = labels != clean
            self.sums.add("correct_clean", (predicted == clean).sum())
            self.sums.add("correct_flipped", (correct & is_flipped).sum())
            self.flipped.add(is_flipped)
        if beta is not None:
            self.beta.add(beta)

    def images(self) -> float:
        """Images seen so far on this process (a device sync)."""
        return self.sums.item("images")

    def mean_loss(self) -> float:
        """Mean total loss so far on this process (a device sync)."""
        return self.sums.item("total") / self.sums.item("images")

    def finish(self, distributed: bool) -> dict:
        """The epoch's metric columns of results.csv (None where they do not apply), and `_images`."""
        beta = self.beta.result(distributed)
        is_flipped = self.flipped.result(distributed)
        if distributed:
            self.sums.all_reduce()
        sums = self.sums.to_dict()
        images = sums["images"]
        row: dict = {"_images": images}
        for term in LOSS_TERMS:
            row[loss_column(term)] = round(sums[term] / images, 6) if term in self.present else None
        row["train_acc"] = round(sums["correct"] / images, 6)
        row["train_acc_clean"] = round(sums["correct_clean"] / images, 6) if self.with_clean else None
        row.update(noise_metrics(beta, is_flipped, sums["correct_flipped"]))
        return row


def noise_metrics(beta: Optional[torch.Tensor], is_flipped: Optional[torch.Tensor], correct_flipped: float) -> dict:
    """The NOISE_COLUMNS of an epoch from all its images (None where they do not apply)."""
    row: dict = dict.fromkeys(NOISE_COLUMNS)
    if is_flipped is not None and is_flipped.any():
        row["train_acc_flipped"] = round(correct_flipped / is_flipped.sum().item(), 6)
    if beta is not None:
        beta = beta.float()
        row["beta_mean"] = round(beta.mean().item(), 6)
        row["beta_over_0.1"] = round((beta > 0.1).float().mean().item(), 6)
        if is_flipped is not None:
            auc = roc_auc(beta.cpu().numpy(), is_flipped.cpu().numpy())
            row["beta_auc_flipped"] = None if auc is None else round(auc, 6)
    return row


def all_gather(values: torch.Tensor) -> torch.Tensor:
    """`values` of every process, concatenated in rank order (same shape on each process)."""
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values)
    return torch.cat(parts)
