"""Confidence that means what it says: temperature scaling and the metrics that judge it.

`confidence` (POI_SPEC section 4b) is the model's distribution after temperature scaling
(Guo et al. 2017): one scalar T_cal > 0, fitted by minimising the negative log-likelihood
of softmax(log p / T_cal) on a validation split, stored in the checkpoint and applied to
every class probability poi reports. p is what the checkpoint's PredictionRecipe makes
(core/outputs.py): the TRN's softmax(z) by default, when softmax(log p / T) = softmax(z / T);
T_cal is fitted after the recipe's fusion, and choose_recipe picks the recipe on the same
split. Dividing by one positive scalar never changes the predicted class, only how sure
the probabilities say it is.

The metrics are those of calibration (ECE, NLL, Brier) and of selective prediction
(the risk-coverage curve, its area AURC, accuracy at a coverage): they judge a score by
whether its value can be read as a probability (ECE) and whether it ranks right answers
above wrong ones (AURC, lower is better). May import core only (and torch, numpy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from poi_cli.core.outputs import T_RANGE, PredictionRecipe, clipped_temperature_caveat

ECE_BINS = 15  # equal-width bins over [0, 1], the field's usual choice
ECE_FLOOR_DRAWS = 200  # simulated outcomes behind ece_sampling_floor (its Monte Carlo error: about 0.0002 at 1,600 images)
COVERAGES = (0.5, 0.8, 0.9)
# Below this many images a fitted T_cal is said to be unreliable (Calibration.caveat): FERPlus
# valid's 3,191 fit it to +-0.01, a few dozen can put it anywhere in T_RANGE.
CALIBRATION_MIN_IMAGES = 100
# choose_recipe: recipes whose NLL after temperature scaling is within this many nats of
# the lowest count as equally good, and the cheapest of them is chosen.
RECIPE_TIE_NLL = 1e-3


@dataclass(frozen=True)
class Calibration:
    """What a checkpoint stores about its temperature scaling (key "calibration")."""

    temperature: float  # T_cal: reported probabilities are softmax(log p / T_cal), p the recipe's
    split: str  # the split it was fitted on
    n_images: int
    nll_before: float  # of p itself (T = 1)
    nll_after: float
    recipe: PredictionRecipe = PredictionRecipe()  # how p is made; T_cal belongs to it (absent in older files: TRN alone)
    data: Optional[str] = None  # the prepared folder of `split` (resolved path; None in files written before it was kept)

    @property
    def caveat(self) -> Optional[str]:
        """Why this T_cal should not be trusted, or None: too few images, a T clipped at the edge of
        T_RANGE (the logits do not calibrate), or images that leave T undetermined (every one
        answered right with certainty: the NLL is 0 whatever T)."""
        if self.nll_before < 1e-6 and self.nll_after < 1e-6:
            return (f"every one of the {self.n_images} images is answered right with certainty, which leaves T_cal "
                    "undetermined: fit it on a split with the model's mistakes")
        clipped = clipped_temperature_caveat(self.temperature)
        if clipped:
            return clipped
        if self.n_images < CALIBRATION_MIN_IMAGES:
            return (f"T_cal fitted on {self.n_images} images, fewer than {CALIBRATION_MIN_IMAGES}: confidence may be far "
                    "from a calibrated probability (fit it on a larger split)")
        return None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> Optional["Calibration"]:
        if not values:
            return None
        scalars = {k: values[k] for k in cls.__dataclass_fields__ if k not in ("recipe", "data")}
        return cls(**scalars, recipe=PredictionRecipe.from_dict(values.get("recipe")), data=values.get("data"))

    def fitted_on(self, split: str, data: str | Path, trained_there: bool = False) -> bool:
        """Whether T_cal (and the recipe) were fitted on `split` of the prepared folder `data`.
        A file that does not say which folder (older ones) counts only where the model also
        trained on `data` (trained_there): the split of the same name of another folder is not it."""
        if split != self.split:
            return False
        if self.data is None:
            return trained_there
        try:
            return Path(self.data).resolve() == Path(data).resolve()
        except OSError:
            return False


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) over the last axis, in float64."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    picked = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of sum_c (p_c - [c = y])^2, in [0, 2]."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T_cal minimising the NLL of softmax(logits / T) (a convex problem in 1 / T).

    LBFGS on log T in float64, from T = 1; the result is clipped to T_RANGE.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(math.exp(log_t.item()), *T_RANGE))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of |bin| / n * |accuracy(bin) - mean confidence(bin)|.

    Bin b holds confidences in (b / bins, (b + 1) / bins]; a confidence of exactly 0 goes to bin 0.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(confidence))


def ece_sampling_floor(confidence: np.ndarray, bins: int = ECE_BINS, draws: int = ECE_FLOOR_DRAWS,
                       seed: int = 0) -> float:
    """The ECE that a perfectly calibrated score with these values would measure on this many images.

    ECE is biased upward on a finite sample: each bin adds |accuracy - confidence|, never a
    negative, so even right-or-wrong outcomes drawn from the confidences themselves (correct_i
    ~ Bernoulli(confidence_i), calibration by construction) give an ECE above 0, larger the
    fewer the images. The floor is the mean ECE of `draws` such simulated outcome sets, with
    the same bins as expected_calibration_error; a measured ECE near it is as calibrated as the
    sample can show (e.g. about 0.018 on half of FERPlus valid, 1,596 images).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    members = np.zeros((len(confidence), bins))
    members[np.arange(len(confidence)), index] = 1.0
    expected = confidence @ members  # per bin: the sum of its confidences
    rng, total = np.random.default_rng([seed, 7919]), 0.0
    for start in range(0, draws, 25):  # 25 draws at a time: a (25, n) block, bounded for large splits
        outcomes = (rng.random((min(25, draws - start), len(confidence))) < confidence).astype(np.float64)
        # per draw and bin: n_b |accuracy_b - confidence_b| = |sum of outcomes - sum of confidences|
        total += np.abs(outcomes @ members - expected).sum()
    return float(total / draws / max(1, len(confidence)))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per bin: its range, count, mean confidence and accuracy (the reliability diagram's bars)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        rows.append({
            "low": b / bins, "high": (b + 1) / bins, "n": int(members.sum()),
            "confidence": float(confidence[members].mean()) if members.any() else None,
            "accuracy": float(correct[members].mean()) if members.any() else None,
        })
    return rows


def risk_coverage(score: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k / n and risk (error rate of the k highest-scored images) for k = 1..n.

    Ties are broken by image order (a stable sort), so the curve is reproducible.
    """
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    errors = np.cumsum(1.0 - np.asarray(correct, dtype=np.float64)[order])
    k = np.arange(1, len(order) + 1)
    return k / len(order), errors / k


def aurc(score: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean of the risks at k = 1..n (lower is better)."""
    return float(risk_coverage(score, correct)[1].mean())


def accuracy_at_coverage(score: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy of the ceil(coverage * n) highest-scored images."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    keep = max(1, math.ceil(coverage * len(order)))
    return float(np.asarray(correct, dtype=np.float64)[order[:keep]].mean())


def calibration_of(logits: np.ndarray, labels: np.ndarray, split: str,
                   recipe: PredictionRecipe = PredictionRecipe(), data: Optional[str] = None) -> Calibration:
    """T_cal fitted on (logits, labels) of `split` (at least 2 images), with the NLL before and after.

    logits: the TRN's z, or the log p a recipe makes (model/reporting.py), which softmax
    turns back into p; recipe: the one that made them, stored with T_cal; data: the prepared
    folder of `split` (Calibration.fitted_on)."""
    temperature = fit_temperature(logits, labels)
    return Calibration(temperature=temperature, split=split, n_images=int(len(labels)),
                       nll_before=nll(softmax(logits), labels), nll_after=nll(softmax(logits, temperature), labels),
                       recipe=recipe, data=data)


def choose_recipe(candidates: dict[PredictionRecipe, np.ndarray], labels: np.ndarray,
                  split: str, data: Optional[str] = None) -> tuple[Calibration, list[Calibration]]:
    """The recipe `poi calibrate` stores: T_cal fitted after each candidate's fusion (its log p,
    (n, C), on the same images), then the lowest NLL after temperature scaling wins, the
    cheapest (PredictionRecipe.cost) among those within RECIPE_TIE_NLL of it.

    Returns the chosen Calibration and every candidate's, cheapest first."""
    fitted = sorted((calibration_of(log_p, labels, split, recipe, data) for recipe, log_p in candidates.items()),
                    key=lambda c: c.recipe.cost)
    best = min(c.nll_after for c in fitted)
    return next(c for c in fitted if c.nll_after <= best + RECIPE_TIE_NLL), fitted


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into a fitting half and a measuring half (sorted indices)."""
    order = np.random.default_rng([seed, 4099]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def score_metrics(score: np.ndarray, correct: np.ndarray, probs: Optional[np.ndarray] = None,
                  labels: Optional[np.ndarray] = None) -> dict:
    """ECE (and ece_floor, what a perfectly calibrated score would measure here), AURC and accuracy at
    COVERAGES of one score; NLL and Brier when it comes with class probabilities."""
    row = {
        "ece": expected_calibration_error(score, correct), "ece_floor": ece_sampling_floor(score),
        "aurc": aurc(score, correct),
        **{f"accuracy_at_{round(c * 100)}": accuracy_at_coverage(score, correct, c) for c in COVERAGES},
        "nll": None, "brier": None,
    }
    if probs is not None and labels is not None:
        row["nll"], row["brier"] = nll(probs, labels), brier(probs, labels)
    return row


def calibration_study(logits: np.ndarray, labels: np.ndarray, consistency: Optional[np.ndarray] = None,
                      seed: int = 0) -> dict:
    """Honest calibration figures: T_cal fitted on one seeded half, every score measured on the other.

    Scores: `max_softmax` (the raw softmax of the logits: the TRN's z, or a recipe's log p,
    whose softmax is p), `confidence` (the same after temperature scaling) and, for models
    with a PIN, `consistency` (the UEM's w, judged as a score: it has no class
    probabilities, so no NLL or Brier).
    """
    fit, held = halves(len(labels), seed)
    temperature = fit_temperature(logits[fit], labels[fit])
    raw, calibrated = softmax(logits[held]), softmax(logits[held], temperature)
    y = labels[held]
    correct = raw.argmax(1) == y  # the same for both: a temperature never changes the argmax
    scores = {
        "max_softmax": score_metrics(raw.max(1), correct, raw, y),
        "confidence": score_metrics(calibrated.max(1), correct, calibrated, y),
    }
    if consistency is not None:
        scores["consistency"] = score_metrics(consistency[held], correct)
    return {
        "protocol": f"T_cal fitted on a seeded half of the split ({len(fit)} images, seed {seed}), "
                    f"every figure measured on the other half ({len(held)} images)",
        "temperature_half": temperature, "n_fit": int(len(fit)), "n_measured": int(len(held)),
        "accuracy_measured": float(correct.mean()), "scores": scores,
    }
