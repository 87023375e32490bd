"""Training on several prepared datasets at once (`poi combine`, data/combined.py), and the
augmentations that carry a grey 48-px dataset to colour photos (train/augment.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_prepared, tiny_config
from poi_cli.cli import app
from poi_cli.data.combined import CombineError, CombinedFaces, combine, parse_weights, sampling_positions, union_classes
from poi_cli.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_gray_rgb
from poi_cli.data.store import PreparedDataset, StoreError
from poi_cli.train.augment import BatchAugment
from poi_cli.train.engine import train
from poi_cli.train.teacher import grey_input


def reversed_classes(root):
    """Rewrite a prepared folder so that its classes come in reverse order (labels follow)."""
    meta = json.loads((root / "prepared.json").read_text())
    k = len(meta["classes"])
    meta["classes"] = meta["classes"][::-1]
    (root / "prepared.json").write_text(json.dumps(meta))
    manifest = pd.read_csv(root / "manifest.csv")
    manifest["label"] = k - 1 - manifest["label"]
    manifest.to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture
def two_stores(tmp_path):
    first = make_prepared(tmp_path / "alpha", num_classes=6, splits={"train": 2, "valid": 1}, grayscale=True, seed=1)
    second = reversed_classes(make_prepared(tmp_path / "beta", num_classes=7, splits={"train": 1, "val": 1}, seed=2))
    return first, second


def test_union_classes_keep_the_first_order_and_match_by_name():
    assert union_classes([["a", "b", "c"], ["d", "c", "a"]]) == ["a", "b", "c", "d"]


def test_combine_maps_classes_by_name_and_reads_every_face_from_its_own_store(two_stores, tmp_path):
    first, second = two_stores
    root = combine([first, second], tmp_path / "both", weights=[1, 3])
    assert not (root / "faces.npy").exists()  # nothing copied
    both, a, b = PreparedDataset(root), PreparedDataset(first), PreparedDataset(second)
    assert both.classes == a.classes + [b.classes[0]]  # b's extra class (reversed order: it comes first) at the end
    assert not both.grayscale  # one colour member: a colour model
    assert [m.name for m in both.members] == ["alpha", "beta"] and [m.weight for m in both.members] == [1, 3]
    assert both.splits() == ["train", "val"]  # alpha's valid and beta's val are both `val`
    for member, name in ((a, "alpha"), (b, "beta")):
        for split in ("train", member.validation_split()):
            own = member.split(split)
            combined_split = "train" if split == "train" else "val"
            mine = both.split(combined_split, ids=[f"{name}/{i}" for i in own.ids])
            assert list(mine.ids) == [f"{name}/{i}" for i in own.ids]
            # the same faces, and the same class names
            assert np.array_equal(both.faces[mine.store_rows], member.faces[own.store_rows])
            assert [both.classes[k] for k in mine.labels] == [member.classes[k] for k in own.labels]
    manifest = both.manifest
    assert set(manifest["dataset"]) == {"alpha", "beta"} and set(manifest["member_split"]) == {"train", "valid", "val"}


def test_combined_faces_index_like_an_array():
    parts = [np.arange(3 * 2).reshape(3, 2), np.arange(100, 108).reshape(4, 2)]
    faces, whole = CombinedFaces(parts), np.concatenate(parts)
    assert len(faces) == 7 and faces.shape == (7, 2)
    assert np.array_equal(faces[np.array([6, 0, 3, 2, 3])], whole[[6, 0, 3, 2, 3]])
    assert np.array_equal(faces[2:5], whole[2:5]) and np.array_equal(faces[4], whole[4])
    with pytest.raises(IndexError):
        faces[np.array([7])]


def test_sampling_weights_draw_each_member_that_many_times():
    member = np.array([0] * 10 + [1] * 4)
    positions = sampling_positions(member, [1.0, 2.5], seed=0)
    counts = np.bincount(positions, minlength=14)
    assert counts[:10].tolist() == [1] * 10
    assert sorted(counts[10:].tolist()) == [2, 2, 3, 3]  # floor(2.5) each, half of them once more
    assert np.array_equal(positions, sampling_positions(member, [1.0, 2.5], seed=0))  # seeded
    assert np.bincount(sampling_positions(member, [0.0, 1.0], seed=0), minlength=14)[:10].sum() == 0
    assert parse_weights(None, 2) == [1.0, 1.0] and parse_weights("1,0.5", 2) == [1.0, 0.5]
    assert parse_weights("1000,1", 2) == [1000.0, 1.0]
    for bad in ("1", "1,x", "-1,1", "0,0", "1e308,1e308", "1001,1", "nan,1"):  # 1e308 once crashed training
        with pytest.raises(CombineError):
            parse_weights(bad, 2)


def test_training_on_a_combined_folder_reports_each_member_and_selects_on_their_mean(two_stores, tmp_path):
    first, second = two_stores
    root = combine([first, second], tmp_path / "both", weights=[1, 2])
    run = train(tiny_config(root, tmp_path / "runs", epochs=1, batch=8, augment=True, gray_mix=0.5, blur=0.5,
                            jpeg=0.5, scale_jitter=0.1, rotate=10))
    results = pd.read_csv(run / "results.csv")
    assert {"val_acc_alpha", "val_acc_beta"} <= set(results.columns)
    assert results["val_acc"][0] == pytest.approx((results["val_acc_alpha"][0] + results["val_acc_beta"][0]) / 2, abs=1e-6)
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["n_train"] == 6 * 2 + 7 * 1 and resolved["num_classes"] == 7


def test_each_face_is_answered_among_the_classes_its_own_folder_labels(tmp_path):
    alpha = make_prepared(tmp_path / "alpha", num_classes=6, splits={"train": 1, "valid": 1}, seed=1)
    beta = make_prepared(tmp_path / "beta", num_classes=8, splits={"train": 1, "val": 1}, seed=2)
    meta = json.loads((beta / "prepared.json").read_text())
    (beta / "prepared.json").write_text(json.dumps({**meta, "dataset": "ckplus", "layout": "ck+48"}))  # labels no neutral
    both = PreparedDataset(combine([alpha, beta], tmp_path / "both"))
    rows = both.split("val").store_rows
    answers = both.answer_mask(rows)
    of_alpha = np.isin(rows, both.split("val", ids=[f"alpha/{i}" for i in PreparedDataset(alpha).split("valid").ids]).store_rows)
    neutral, contempt = both.classes.index("neutral"), both.classes.index("contempt")
    assert answers.shape == (len(rows), 8) and of_alpha.sum() == 6
    assert (answers[of_alpha].sum(1) == 6).all() and not answers[of_alpha][:, [neutral, contempt]].any()  # alpha's 6 classes
    assert (answers[~of_alpha].sum(1) == 7).all() and not answers[~of_alpha, neutral].any()  # CK+48: all but neutral
    single = PreparedDataset(alpha).answer_mask(np.arange(3))
    assert single.shape == (3, 6) and single.all()  # a folder poi has no facts for: every class


def test_a_combined_folder_whose_member_changed_or_moved_is_one_line(two_stores, tmp_path):
    first, second = two_stores
    root = combine([first, second], tmp_path / "both")
    make_prepared(tmp_path / "other", num_classes=6, splits={"train": 1})
    shutil.rmtree(first)
    shutil.copytree(tmp_path / "other", first)  # fewer faces than when combined
    with pytest.raises(StoreError, match="faces, .* when .* was combined"):
        PreparedDataset(root)
    shutil.rmtree(first)
    with pytest.raises(StoreError, match="which is gone"):
        PreparedDataset(root)


def test_combine_refuses_what_it_cannot_combine(two_stores, tmp_path):
    first, second = two_stores
    with pytest.raises(CombineError, match="same --size"):
        combine([first, make_prepared(tmp_path / "big", size=72, splits={"train": 1})], tmp_path / "x")
    root = combine([first, second], tmp_path / "both")
    with pytest.raises(CombineError, match="itself a combined folder"):
        combine([root, first], tmp_path / "y")
    result = CliRunner().invoke(app, ["combine", str(first), str(second), "--out", str(first / "inside"), "--weights", "1"])
    assert result.exit_code != 0 and "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["combine", str(first), str(second), "--out", str(first)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not (first / "inside").exists() and PreparedDataset(first).members == []  # nothing written over
    other = make_prepared(tmp_path / "other", num_classes=6, splits={"train": 1})
    before = (other / "manifest.csv").read_bytes()
    with pytest.raises(CombineError, match="holds a prepared dataset"):
        combine([first, second], other)  # a prepared folder that is not an input is not written over either
    assert (other / "manifest.csv").read_bytes() == before
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("epoch,val_acc\n1,0.5\n")
    with pytest.raises(CombineError, match="holds a training run"):
        combine([first, second], run)
    assert sorted(p.name for p in run.iterdir()) == ["results.csv"]
    combine([first, second], tmp_path / "again")
    combine([first, second], tmp_path / "again", weights=[1, 2])  # an earlier combined folder may be rewritten


def test_combine_command_prints_the_members(two_stores, tmp_path):
    first, second = two_stores
    result = CliRunner().invoke(app, ["combine", str(first), str(second), "--out", str(tmp_path / "both"), "--weights", "1,4"])
    assert result.exit_code == 0, result.output
    assert "alpha" in result.output and "beta" in result.output and "val_acc_NAME" in result.output


# ------------------------------------------------------------------ augmentations


def colour_batch(batch=4, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), generator=generator, dtype=torch.uint8)


def unnormalise(x):
    return x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


def test_gray_mix_one_turns_every_face_grey_and_zero_changes_nothing():
    images = colour_batch()
    plain = BatchAugment(flip=False, translate=0, color_jitter=0)(images, 32, torch.Generator().manual_seed(0))
    off = BatchAugment(flip=False, translate=0, color_jitter=0, gray_mix=0)(images, 32, torch.Generator().manual_seed(0))
    assert torch.equal(plain, off)
    grey = unnormalise(BatchAugment(flip=False, translate=0, color_jitter=0, gray_mix=1.0)(images, 32, torch.Generator()))
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-5)
    luma = (images.float() / 255 * torch.tensor([0.299, 0.587, 0.114])).sum(-1)
    assert torch.allclose(grey[:, 0], luma, atol=1e-5)
    jittered = unnormalise(BatchAugment(flip=False, translate=0, color_jitter=0.4, gray_mix=1.0)(images, 32, torch.Generator()))
    assert torch.allclose(jittered[:, 0], jittered[:, 2], atol=1e-5)  # grey survives brightness and contrast


def test_affine_without_change_is_the_identity_and_its_flip_is_a_mirror():
    images = colour_batch(size=16)
    still = BatchAugment(flip=False, translate=0, color_jitter=0, scale_jitter=1e-9)
    reference = BatchAugment(flip=False, translate=0, color_jitter=0)
    assert torch.allclose(still(images, 16, torch.Generator()), reference(images, 16, torch.Generator()), atol=1e-4)
    flipped = BatchAugment(flip=True, translate=0, color_jitter=0, scale_jitter=1e-9)(images, 16, torch.Generator().manual_seed(3))
    plain = reference(images, 16, torch.Generator())
    for i in range(len(images)):
        assert torch.allclose(flipped[i], plain[i], atol=1e-4) or torch.allclose(flipped[i], plain[i].flip(-1), atol=1e-4)
    rotated = BatchAugment(flip=False, translate=0, color_jitter=0, rotate=30)(images, 16, torch.Generator().manual_seed(1))
    assert not torch.allclose(rotated, plain, atol=1e-2)


def test_blur_smooths_and_jpeg_changes_pixels_a_little():
    images = colour_batch(size=48)
    plain = unnormalise(BatchAugment(flip=False, translate=0, color_jitter=0)(images, 48, torch.Generator()))
    blurred = unnormalise(BatchAugment(flip=False, translate=0, color_jitter=0, blur=1.0)(images, 48, torch.Generator()))
    assert blurred.diff(dim=-1).abs().mean() < 0.6 * plain.diff(dim=-1).abs().mean()
    assert blurred.mean() == pytest.approx(plain.mean().item(), abs=0.02)  # the light stays
    jpeg = unnormalise(BatchAugment(flip=False, translate=0, color_jitter=0, jpeg=1.0)(images, 48, torch.Generator()))
    assert not torch.equal(jpeg, plain) and (jpeg - plain).abs().mean() < 0.25


def test_a_grey_teacher_sees_a_colour_batch_in_grey():
    images = colour_batch(batch=2, size=8).numpy()
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    x = torch.from_numpy(((images / 255 - mean) / std).transpose(0, 3, 1, 2)).float()
    expected = np.stack([((to_gray_rgb(face) / 255 - mean) / std).transpose(2, 0, 1) for face in images])
    # PIL's "L" rounds the luma to a whole grey level: within half a level
    assert np.allclose(grey_input(x, IMAGENET_MEAN, IMAGENET_STD).numpy(), expected, atol=0.6 / 255 / min(IMAGENET_STD))


def test_the_augmentation_switches_are_checked():
    from poi_cli.train.config import TrainConfig

    for bad in ({"gray_mix": 1.5}, {"blur": -0.1}, {"jpeg": 2}, {"scale_jitter": 0.6}, {"rotate": 90}):
        with pytest.raises(ValueError, match=next(iter(bad)).replace("_", "-")):
            TrainConfig(data="x", **bad).validate()


def test_evaluate_on_a_member_says_the_run_trained_and_selected_on_it(tmp_path):
    """A run on a combined folder trained on each member's train split and chose best.pt on their
    val splits: evaluated on a member, it said nothing of either (only its own folder counted)."""
    from poi_cli.study.evaluate import evaluate

    first = make_prepared(tmp_path / "alpha", num_classes=7, splits={"train": 2, "val": 1}, seed=1)
    second = make_prepared(tmp_path / "beta", num_classes=7, splits={"train": 1, "val": 1}, seed=2)
    run = train(tiny_config(combine([first, second], tmp_path / "both"), tmp_path / "runs", epochs=1, use_pin=False))
    assert json.loads((run / "config.json").read_text())["resolved"]["val_split"] == "val"
    on_val = evaluate(run, second, split="val", device="cpu", amp="off")["notes"]
    assert any("the run selected best.pt on val of this folder" in n for n in on_val), on_val
    on_train = evaluate(run, first, split="train", device="cpu", amp="off")["notes"]
    assert any("the model trained on train of this folder" in n for n in on_train), on_train
    other = make_prepared(tmp_path / "gamma", num_classes=7, splits={"train": 1, "val": 1}, seed=3)
    assert not any("selected best.pt" in n for n in evaluate(run, other, split="val", device="cpu", amp="off")["notes"])

    # report: best_val_acc (the members' mean) and eval_acc (the split's faces pooled) differ by design, and say so
    from poi_cli.study.report import COMBINED_VAL_NOTE, build_report

    report = build_report([run, train(tiny_config(first, tmp_path / "runs", epochs=1, use_pin=False))],
                          tmp_path / "report", data=tmp_path / "both", split="val", device="cpu")
    notes = {r.path: r.notes for r in report.runs}
    assert COMBINED_VAL_NOTE in notes[run] and not any(COMBINED_VAL_NOTE in n for p, n in notes.items() if p != run)
    assert "mean of its datasets'" in (tmp_path / "report" / "report.md").read_text()


def test_evaluate_on_a_member_says_t_cal_was_fitted_on_the_combined_folder_that_holds_it(tmp_path):
    """T_cal fitted on a combined folder's val (or, in a file written before calibration.data,
    on a val of the combined run's) was measured on a member's val without a word: only a
    calibration on the member folder itself counted (the bundled model on FERPlus valid)."""
    import torch

    from poi_cli.study.calibrate import calibrate
    from poi_cli.study.evaluate import evaluate

    first = make_prepared(tmp_path / "alpha", num_classes=7, splits={"train": 2, "val": 2}, seed=1)
    second = make_prepared(tmp_path / "beta", num_classes=7, splits={"train": 1, "val": 2}, seed=2)
    both = combine([first, second], tmp_path / "both")
    run = train(tiny_config(both, tmp_path / "runs", epochs=1, use_pin=False))
    calibrated = calibrate(run, both, device="cpu", amp="off", out=tmp_path / "calibrated.pt").written
    fitted = "were fitted on val of the combined folder both, which holds this folder's"
    assert any(fitted in n for n in evaluate(calibrated, second, split="val", device="cpu", amp="off")["notes"])

    older = torch.load(calibrated, weights_only=True)  # as written before calibration.data was kept
    older["calibration"].pop("data")
    torch.save(older, tmp_path / "older.pt")
    notes = evaluate(tmp_path / "older.pt", second, split="val", device="cpu", amp="off")["notes"]
    assert any("were fitted on val of this folder or of the combined folder it trained on" in n for n in notes), notes
    other = make_prepared(tmp_path / "gamma", num_classes=7, splits={"train": 1, "val": 2}, seed=3)
    for model in (calibrated, tmp_path / "older.pt"):
        assert not any("were fitted on" in n for n in evaluate(model, other, split="val", device="cpu", amp="off")["notes"])
