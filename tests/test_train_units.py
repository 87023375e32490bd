"""Small unit tests of training pieces with hand-computed expected values: the lr schedule and
where the engine applies it, the augmentations' ranges, config boundaries, training data
selection, the epoch meters, the head re-fit's inputs and a combined folder's sampling.
Each test names the bug it guards against (found by a mutation audit)."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_SPLITS, make_prepared, tiny_config
from poi_cli.data.combined import CombineError, Member, combine, member_of_rows, sampling_positions
from poi_cli.train import engine
from poi_cli.train.augment import BatchAugment
from poi_cli.train.config import TrainConfig, TrainError
from poi_cli.train.data import hold_out, select_data, training_labels
from poi_cli.train.engine import Trainer, learning_rate
from poi_cli.train.meters import EpochMeters

CPU = torch.device("cpu")


# ----------------------------------------------------------------------- lr schedule


def test_step_schedule_multiplies_by_lr_gamma_not_a_fixed_tenth():
    # guards: --lr-gamma ignored (0.1 hard-wired)
    config = TrainConfig(lr=0.1, lr_steps=[10], lr_gamma=0.5)
    assert learning_rate(config, 9, 0, 100) == pytest.approx(0.1)
    assert learning_rate(config, 20, 0, 100) == pytest.approx(0.05)


def test_cosine_after_warm_up_spans_the_epochs_left_after_it():
    # guards: cosine span of all epochs, or its phase not starting at the end of warm-up
    config = TrainConfig(lr=0.1, schedule="cosine", epochs=10, warmup_epochs=2)
    assert learning_rate(config, 6, 0, 10) == pytest.approx(0.05)  # half way through epochs 2..10: cos(pi/2) = 0
    assert learning_rate(config, 2, 0, 10) == pytest.approx(0.1)  # the cosine starts at the base lr


def test_warm_up_ends_exactly_at_the_base_lr():
    # guards: `progress <= warmup` (one more warm-up step past the end gives lr x (1 + 1/steps))
    config = TrainConfig(lr=0.1, warmup_epochs=2)
    assert learning_rate(config, 2, 0, 10) == pytest.approx(0.1)


def test_training_sets_the_warm_up_lr_per_step_and_results_csv_records_the_scheduled_lr(tmp_path):
    # guards: learning_rate called with step 0 (warm-up per epoch only); results.csv's lr being --lr
    data = make_prepared(tmp_path / "data", splits={"train": TINY_SPLITS["train"]})  # 14 images: 2 steps of 7
    config = tiny_config(data, tmp_path / "runs", epochs=2, warmup_epochs=1, lr_steps=[1], val_split="none",
                         augment=False)
    trainer = Trainer(config, engine.Console(file=io.StringIO()))
    real_step, lrs = trainer.train_step, []
    trainer.train_step = lambda x, targets, lr, distill=1.0: (lrs.append(lr), real_step(x, targets, lr, distill))[1]
    run = trainer.fit()
    # lr 0.01: warm-up steps at (0 + 1/2) / 1 and (1/2 + 1/2) / 1 of it, then x 0.1 from epoch 1 on
    assert lrs == pytest.approx([0.005, 0.01, 0.001, 0.001])
    assert pd.read_csv(run / "results.csv")["lr"].tolist() == pytest.approx([0.01, 0.001])


def test_each_epoch_has_its_own_augmentation_seed():
    # guards: the epoch left out of epoch_generator's seed (every epoch augmenting alike)
    fake = SimpleNamespace(ctx=SimpleNamespace(device=CPU, rank=0), config=SimpleNamespace(seed=2))
    first, second = Trainer.epoch_generator(fake, 0), Trainer.epoch_generator(fake, 1)
    assert first.initial_seed() == 2 * 1_000_003 and second.initial_seed() == 2 * 1_000_003 + 101
    assert not torch.equal(torch.rand(8, generator=first), torch.rand(8, generator=second))


class _Stop(Exception):
    pass


def test_the_teacher_is_read_at_the_model_temperature():
    # guards: the teacher's log-probabilities taken at T = 1 instead of the model's T
    seen = []

    class Teacher:
        def log_probs(self, x, temperature):
            seen.append(temperature)
            raise _Stop

    parameter = torch.nn.Parameter(torch.zeros(1))
    fake = SimpleNamespace(optimizer=torch.optim.SGD([parameter], lr=0.1), ctx=SimpleNamespace(device=CPU), amp=False,
                           forward=lambda x: None, teacher=Teacher(), model_config=SimpleNamespace(temperature=3.0))
    with pytest.raises(_Stop):
        Trainer.train_step(fake, torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long), 0.1)
    assert seen == [3.0]


def test_validation_accuracy_answers_each_image_among_its_classes_only(monkeypatch):
    # guards: plain argmax in _validate (a class the image's dataset never labels could be answered)
    logits = np.array([[5.0, 1.0, 0.0]], np.float32)  # argmax 0, but class 0 is not answered: 1 is
    predictions = SimpleNamespace(trn_logits=logits, labels=np.array([1]), positions=np.array([0]))
    monkeypatch.setattr(engine, "predict_split", lambda *args, **kwargs: predictions)
    fake = SimpleNamespace(
        config=SimpleNamespace(input_size=64, eval_batch=None, batch=1),
        ctx=SimpleNamespace(device=CPU, rank=0, world_size=1, distributed=False),
        data=SimpleNamespace(val_members=None, val_answers=np.array([[False, True, True]])),
        val_data=SimpleNamespace(store_rows=np.array([0]), labels=np.array([1])),
        dataset=SimpleNamespace(faces=None), model=None, amp=False, channels_last=False,
    )
    accuracy, calibration, per_member = Trainer._validate(fake, 0)
    assert accuracy == 1.0 and calibration is None and per_member == {}


# ----------------------------------------------------------------------- augmentation


def left_dark_right_bright(batch: int) -> torch.Tensor:
    """uint8 (batch, 2, 2, 3): column 0 black, column 1 white (a mirror swaps them)."""
    images = torch.zeros(batch, 2, 2, 3, dtype=torch.uint8)
    images[:, :, 1] = 255
    return images


def test_flip_alone_mirrors_half_the_faces():
    # guards: flip skipped when --translate is 0; a flip probability other than 1/2
    augment = BatchAugment(flip=True, translate=0.0, color_jitter=0.0)
    out = augment(left_dark_right_bright(2000), 2, torch.Generator().manual_seed(0))
    mirrored = (out[:, 0, 0, 0] > out[:, 0, 0, 1]).float().mean().item()
    assert abs(mirrored - 0.5) < 0.04


def affine_matrices(monkeypatch, augment: BatchAugment, batch: int) -> torch.Tensor:
    """The (batch, 2, 3) theta BatchAugment.affine passes to affine_grid."""
    seen = []
    real = torch.nn.functional.affine_grid
    monkeypatch.setattr(torch.nn.functional, "affine_grid", lambda theta, *a, **k: (seen.append(theta), real(theta, *a, **k))[1])
    augment.affine(torch.zeros(batch, 4, 4, 3, dtype=torch.uint8), 4, torch.Generator().manual_seed(0))
    return seen[0]


def test_affine_shift_reaches_translate_times_the_side(monkeypatch):
    # guards: the shift drawn in +-translate normalised units (half the asked shift: the side is 2)
    theta = affine_matrices(monkeypatch, BatchAugment(flip=False, translate=0.2, rotate=1e-3), 2000)
    shift = theta[:, :, 2].abs()
    assert shift.max().item() <= 0.4 + 1e-6 and shift.max().item() > 0.39


def test_affine_flip_with_rotation_is_a_mirror_and_a_rotation_not_a_shear(monkeypatch):
    # guards: `sin` instead of `flip * sin` (a flipped face sheared instead of rotated)
    theta = affine_matrices(monkeypatch, BatchAugment(flip=True, translate=0.0, rotate=30.0), 500)
    determinant = torch.linalg.det(theta[:, :, :2].double())
    assert torch.allclose(determinant.abs(), torch.ones(500, dtype=torch.float64), atol=1e-5)  # no scale jitter
    assert (determinant < 0).any() and (determinant > 0).any()  # mirrored ones and plain ones


def test_blur_sigma_lies_in_half_to_one_and_a_half_pixels_at_96_px():
    # guards: sigma scaled by side / 48 (twice the blur)
    x = torch.zeros(64, 1, 96, 96)
    x[:, :, 48, 48] = 1.0
    out = BatchAugment(blur=1.0).gaussian_blur(x, torch.Generator().manual_seed(0))
    across = out[:, 0].sum(1)  # (64, 96): the kernel along x
    offsets = torch.arange(96) - 48.0
    variance = (across * offsets**2).sum(1) / across.sum(1)
    # discrete Gaussian variance: 0.21 at sigma 0.5, ~2.25 at sigma 1.5
    assert variance.min().item() > 0.2 and variance.max().item() < 2.3


def test_jpeg_quality_is_drawn_from_30_to_90(monkeypatch):
    # guards: a narrowed quality range
    from PIL import Image

    qualities, real_save = [], Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: (qualities.append(k.get("quality")),
                                                                         real_save(self, fp, *a, **k))[1])
    BatchAugment(jpeg=1.0).jpeg_artefacts(torch.zeros(200, 8, 8, 3, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert len(qualities) == 200 and min(qualities) >= 30 and max(qualities) <= 90
    assert min(qualities) < 40 and max(qualities) > 80


# ----------------------------------------------------------------------- config


def test_the_optimiser_defaults_are_the_papers():
    # guards: SGD momentum 0.9 and weight decay 1e-4 (POI_SPEC section 6) changed
    config = TrainConfig()
    assert config.momentum == 0.9 and config.weight_decay == 1e-4


@pytest.mark.parametrize("values, accepted", [
    ({"translate": 0.49}, True), ({"translate": 0.5}, False),
    ({"lr_gamma": 1.0}, True), ({"lr_gamma": 1.01}, False),
    ({"clean_cross_fit": 2}, True), ({"clean_cross_fit": 1}, False),
    ({"lr_steps": [1]}, True), ({"lr_steps": [0]}, False),
])
def test_config_boundaries(values, accepted):
    # guards: off-by-one bounds of --translate, --lr-gamma, --clean-cross-fit and --lr-steps
    config = TrainConfig(**values)
    if accepted:
        config.validate()
    else:
        with pytest.raises(ValueError, match=next(iter(values)).replace("_", "-")):
            config.validate()


# ----------------------------------------------------------------------- training data


def test_a_combined_folder_with_weights_1_and_2_draws_the_second_member_twice(tmp_path):
    # guards: sampling applied only when every weight differs from 1
    alpha = make_prepared(tmp_path / "alpha", size=16, splits={"train": 1, "valid": 1}, seed=1)
    beta = make_prepared(tmp_path / "beta", size=16, splits={"train": 1, "valid": 1}, seed=2)
    data = select_data(TrainConfig(data=str(combine([alpha, beta], tmp_path / "both", weights=[1, 2]))))
    rows, labels, _ = data.epoch_rows()
    assert len(rows) == len(labels) == 7 + 2 * 7


def test_a_training_label_equal_to_the_class_count_is_refused():
    # guards: `label > num_classes` (label C, one past the last class, let through)
    dataset, config = SimpleNamespace(num_classes=3), TrainConfig()
    good = SimpleNamespace(labels=np.array([0, 2]), clean_labels=None, store_rows=np.array([0, 1]))
    assert training_labels(dataset, good, config)[0].tolist() == [0, 2]
    bad = SimpleNamespace(labels=np.array([0, 3]), clean_labels=None, store_rows=np.array([0, 1]))
    with pytest.raises(TrainError, match="outside 0..2"):
        training_labels(dataset, bad, config)


def test_the_hold_out_draws_by_the_seed():
    # guards: the seed ignored by hold_out (every seed validating on the same images)
    labels = np.repeat(np.arange(2), 20)
    first, second = hold_out(labels, 0.5, 0), hold_out(labels, 0.5, 1)
    assert np.bincount(labels[first]).tolist() == np.bincount(labels[second]).tolist() == [10, 10]
    assert not np.array_equal(first, second)
    assert np.array_equal(first, hold_out(labels, 0.5, 0))


# ----------------------------------------------------------------------- meters


def test_epoch_meters_by_hand():
    # guards: flipped accuracy on the unflipped images or over all images, clean accuracy against
    # the given labels, the loss mean weighted by a fixed batch, the sign of beta's AUC
    meters = EpochMeters(CPU, with_clean=True)
    # labels [0,1,1,0], clean [0,0,1,1] (flipped: images 1 and 3), predicted [0,1,0,0], beta higher on flipped
    meters.update({"total": torch.tensor(1.0)}, torch.tensor([0, 1, 0]), torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]),
                  torch.tensor([0.2, 0.9, 0.3]))
    meters.update({"total": torch.tensor(5.0)}, torch.tensor([0]), torch.tensor([0]), torch.tensor([1]),
                  torch.tensor([0.8]))
    assert meters.mean_loss() == pytest.approx(2.0)  # (3 x 1 + 1 x 5) / 4
    row = meters.finish(distributed=False)
    assert row["loss_total"] == pytest.approx(2.0) and row["loss_ce_tar"] is None and row["_images"] == 4
    assert row["train_acc"] == pytest.approx(0.75)  # images 0, 1, 3
    assert row["train_acc_clean"] == pytest.approx(0.25)  # image 0 only
    assert row["train_acc_flipped"] == pytest.approx(1.0)  # both flipped images (1, 3) predicted as given
    assert row["beta_mean"] == pytest.approx(0.55) and row["beta_over_0.1"] == pytest.approx(1.0)
    assert row["beta_auc_flipped"] == pytest.approx(1.0)


# ----------------------------------------------------------------------- head re-fit


def test_view_probabilities_average_the_face_and_its_mirror():
    # guards: only the first view scored
    from poi_cli.train.head_refit import view_probabilities

    features = np.array([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])  # (views 2, n 1, d 2)
    probs = view_probabilities(features, np.eye(2), np.zeros(2))
    assert probs == pytest.approx(np.array([[0.625, 0.375]]))  # mean of (1/2, 1/2) and (3/4, 1/4)


def test_refit_head_weighs_members_and_scores_every_head_among_the_answered_classes(tiny_checkpoint, tmp_path,
                                                                                   monkeypatch):
    # guards: a combined folder's member weights replaced by ones; a candidate scored without the answer mask
    import poi_cli.train.head_refit as head_refit

    alpha = make_prepared(tmp_path / "alpha", splits={"train": 1, "valid": 1}, seed=1)
    beta = make_prepared(tmp_path / "beta", splits={"train": 1, "valid": 1}, seed=2)
    both = combine([alpha, beta], tmp_path / "both", weights=[1, 3])
    dataset_weights, answers = [], []
    real_weights, real_score = head_refit.sample_weights, head_refit.score_head

    def spy_weights(labels, weights, *rest):
        dataset_weights.append(weights)
        return real_weights(labels, weights, *rest)

    def spy_score(*args, **kwargs):
        answers.append(args[7] if len(args) > 7 else kwargs.get("answers"))
        return real_score(*args, **kwargs)

    monkeypatch.setattr(head_refit, "sample_weights", spy_weights)
    monkeypatch.setattr(head_refit, "score_head", spy_score)
    head_refit.refit_head(tiny_checkpoint, both, out=tmp_path / "r.pt", class_powers=(0.0,), l2s=(1e-4,),
                          device="cpu", amp="off", batch=32)
    assert dataset_weights[0].tolist() == [1.0] * 7 + [3.0] * 7  # alpha's 7 training images, then beta's
    assert len(answers) == 2 and all(a is not None and a.shape == (14, 7) for a in answers)  # own head, one candidate


def test_combine_refuses_members_of_another_alignment_or_normalisation(tmp_path):
    # guards: only the face size compared (faces aligned or normalised differently mixed)
    alpha = make_prepared(tmp_path / "alpha", size=16, splits={"train": 1})
    for key, value in (("alignment", "other_template"), ("mean", [0.5, 0.5, 0.5]), ("std", [0.5, 0.5, 0.5])):
        beta = make_prepared(tmp_path / f"beta_{key}", size=16, splits={"train": 1})
        meta = json.loads((beta / "prepared.json").read_text())
        meta["preprocessing"][key] = value
        (beta / "prepared.json").write_text(json.dumps(meta))
        with pytest.raises(CombineError):
            combine([alpha, beta], tmp_path / f"both_{key}")


# ----------------------------------------------------------------------- combined sampling


def test_member_of_rows_at_each_members_first_and_last_row():
    # guards: searchsorted side="left" (a member's first row given to the member before)
    members = [Member("a", "/a", 1.0, (), rows=3, offset=0), Member("b", "/b", 1.0, (), rows=4, offset=3)]
    assert member_of_rows(members, np.array([0, 2, 3, 6])).tolist() == [0, 0, 1, 1]


def test_sampling_positions_round_the_fractional_share():
    # guards: int() instead of round() (weight 2.5 on 3 images: 2 x 3 + round(1.5) = 8, not 7)
    assert len(sampling_positions(np.zeros(3, np.int64), [2.5], seed=0)) == 8


def test_sampling_positions_draw_the_extra_share_without_replacement():
    # guards: replace=True (an image drawn 3 times at weight 1.9)
    counts = np.bincount(sampling_positions(np.zeros(100, np.int64), [1.9], seed=0), minlength=100)
    assert counts.sum() == 190 and counts.max() == 2 and counts.min() == 1


def test_sampling_positions_follow_the_seed():
    # guards: the seed ignored (every run drawing the same extra images)
    member = np.zeros(100, np.int64)
    first, second = sampling_positions(member, [1.5], seed=0), sampling_positions(member, [1.5], seed=1)
    assert len(first) == len(second) == 150 and not np.array_equal(first, second)


# ----------------------------------------------------------------------- Ctrl-C


def _interrupted_twice(run_dir):
    """What a second Ctrl-C during the first one's cleanup raises: a KeyboardInterrupt whose
    __context__ is the TrainingInterrupted that was unwinding."""
    try:
        raise engine.TrainingInterrupted(run_dir)
    finally:
        raise KeyboardInterrupt  # the second signal, raised where it lands


def test_training_interrupted_within_finds_the_first_ctrl_c_behind_a_second(tmp_path):
    # guards the chain walk: the second KeyboardInterrupt hid the folder the first one named
    with pytest.raises(KeyboardInterrupt) as caught:
        _interrupted_twice(tmp_path / "run")
    assert not isinstance(caught.value, engine.TrainingInterrupted)
    assert engine.TrainingInterrupted.within(caught.value).run_dir == tmp_path / "run"
    assert engine.TrainingInterrupted.within(KeyboardInterrupt()) is None


def test_a_second_ctrl_c_still_names_the_run_folder_in_the_command_that_continues(tmp_path, monkeypatch):
    # guards: a second Ctrl-C while the first unwound printed "continue with --resume RUN_DIR", no folder
    from typer.testing import CliRunner

    from poi_cli import pipeline
    from poi_cli.cli import app

    run = tmp_path / "runs" / "exp"
    monkeypatch.setattr(pipeline, "train_rounds", lambda *args, **kwargs: _interrupted_twice(run))
    data = make_prepared(tmp_path / "data", splits=TINY_SPLITS)
    result = CliRunner().invoke(app, ["train", str(data), "--threads", "1"])
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == (
        f"error: interrupted: finished epochs are saved in {run}; continue with `poi train --resume {run}`")
