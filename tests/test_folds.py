"""CK+ protocols (issue 16): subject-independent folds and the paper's random 8:2 split at
prepare time, `poi train --fold K / all`, and the split `poi evaluate` picks by itself."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import add_folds, make_prepared, stripe_image, tiny_config
from poi_cli.cli import app
from poi_cli.core.manifests import CLASSES
from poi_cli.data.folds import folds_summary, random_test_mask, subject_folds
from poi_cli.data.prepare import PrepareError, prepare
from poi_cli.data.store import PreparedDataset
from poi_cli.study.evaluate import EvaluateError, choose_split
from poi_cli.pipeline import train_folds
from poi_cli.train.config import TrainConfig, TrainError
from poi_cli.train.engine import train

CK48_CLASSES = {"anger": "anger", "happy": "happiness", "surprise": "surprise"}


def write_ck48(root: Path, subjects: int = 12, frames: int = 3) -> Path:
    """A CK+48 tree: subject s has one sequence in class s % 3, `frames` frames (48 px gray PNGs)."""
    rng = np.random.default_rng(0)
    folders = list(CK48_CLASSES)
    for s in range(subjects):
        folder = folders[s % len(folders)]
        label = CLASSES.index(CK48_CLASSES[folder])
        for frame in range(frames):
            path = root / "CK+48" / folder / f"S{100 + s:03d}_001_{frame + 10:08d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(stripe_image(label, 48, rng, grayscale=True)[..., 0]).save(path)
    return root


def test_subject_folds_are_disjoint_cover_everything_and_follow_the_seed():
    subjects = [f"S{i % 23}" for i in range(200)] + ["", ""]  # two images without a subject
    folds = subject_folds(subjects, 5, seed=3)
    assert folds.shape == (202,) and set(folds) == set(range(5))
    by_subject = pd.DataFrame({"subject": subjects[:200], "fold": folds[:200]}).groupby("subject")["fold"].nunique()
    assert (by_subject == 1).all()  # no subject in two folds
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 9  # balanced within one subject's size (at most 9 images here)
    assert np.array_equal(folds, subject_folds(subjects, 5, seed=3))
    assert not np.array_equal(folds, subject_folds(subjects, 5, seed=4))
    with pytest.raises(ValueError, match="fewer than folds"):
        subject_folds(["a", "a", "b"], 3, seed=0)


def test_subject_folds_place_the_largest_subjects_first():
    # one subject of 4 images, four of 1: largest first gives folds of 4 and 4 (smallest first: 6 and 2)
    subjects = ["big"] * 4 + ["a", "b", "c", "d"]
    for seed in range(5):
        assert sorted(np.bincount(subject_folds(subjects, 2, seed), minlength=2)) == [4, 4]


def test_fraction_counts_round_half_up_and_the_folds_summary_by_hand():
    from poi_cli.train.data import hold_out

    # 0.3 of a class of 5 is 1.5 images: 2 (not 1)
    assert random_test_mask(np.zeros(5, int), 0.3, seed=0).sum() == 2
    assert hold_out(np.zeros(5, int), 0.3, seed=0).sum() == 2
    # whole subjects: stop once the target (0.25 of 8 = 2 images) is reached
    groups = np.array([f"s{i}" for i in range(8)])
    assert hold_out(np.repeat([0, 1], 4), 0.25, seed=0, groups=groups).sum() == 2
    rows = [{"fold": 0, "n_test": 1, "accuracy": 1.0, "mean_class_recall": 0.1},
            {"fold": 1, "n_test": 3, "accuracy": 0.5, "mean_class_recall": 0.2},
            {"fold": 2, "n_test": 4, "accuracy": 0.5, "mean_class_recall": 0.9}]
    summary = folds_summary(rows, "cv")
    assert summary["accuracy_pooled"] == pytest.approx((1.0 + 1.5 + 2.0) / 8)  # weighted by each fold's images
    assert summary["accuracy_mean"] == pytest.approx(2 / 3)
    assert summary["mean_class_recall_mean"] == pytest.approx(0.4)


def test_random_test_mask_takes_the_fraction_of_each_class():
    labels = np.repeat([0, 1, 2], [10, 20, 5])
    mask = random_test_mask(labels, 0.2, seed=0)
    assert [int(mask[labels == c].sum()) for c in range(3)] == [2, 4, 1]
    assert np.array_equal(mask, random_test_mask(labels, 0.2, seed=0))


def test_prepare_ckplus_writes_subject_folds_and_the_random_split(tmp_path):
    raw = write_ck48(tmp_path / "raw")
    result = prepare("ckplus", raw, tmp_path / "ck", size=48, show_progress=False, folds=4, fold_seed=1)
    assert result.meta["protocol"] == {"kind": "subject_folds", "folds": 4, "seed": 1}
    manifest = pd.read_csv(tmp_path / "ck" / "manifest.csv")
    assert manifest["fold"].between(0, 3).all()
    assert (manifest.groupby("subject")["fold"].nunique() == 1).all()  # subject-disjoint
    assert sorted(manifest.groupby("fold").size()) == [9, 9, 9, 9]  # 12 subjects x 3 frames in 4 folds

    dataset = PreparedDataset(tmp_path / "ck")
    assert dataset.folds == 4 and dataset.fold_splits() == ["fold0", "fold1", "fold2", "fold3"]
    held = dataset.split("fold2")
    rest = dataset.split("train", exclude_fold=2)
    assert set(held.ids) == set(manifest.loc[manifest["fold"] == 2, "id"])
    assert set(rest.ids) == set(manifest.loc[manifest["fold"] != 2, "id"]) and not set(held.ids) & set(rest.ids)
    with pytest.raises(Exception, match="not in 0..3"):
        dataset.split("fold4")

    paper = prepare("ckplus", raw, tmp_path / "ck82", size=48, show_progress=False, test_fraction=0.25)
    assert paper.meta["protocol"]["kind"] == "random" and "fold" not in pd.read_csv(tmp_path / "ck82" / "manifest.csv")
    assert paper.counts == {"test": {"ok": 9}, "train": {"ok": 27}}  # 12 images per class, a quarter of each
    assert any("image level" in note for note in paper.meta["notes"])
    # the release's 981 are train and test together now ("split train: 27 labelled images" read as missing data)
    assert any(note.startswith("split train+test: 36 labelled images, the official release has 981") for note in paper.meta["notes"])
    assert not any(note.startswith("split train:") for note in paper.meta["notes"])

    # the default: 10 folds for CK+ (12 subjects here), none for a set without subjects
    assert PreparedDataset(prepare("ckplus", raw, tmp_path / "ck10", size=48, show_progress=False).out_dir).folds == 10
    with pytest.raises(PrepareError, match="subject ids"):
        prepare("folder", raw / "CK+48", tmp_path / "f", size=48, detect=False, show_progress=False, folds=3)


def test_train_one_fold_then_evaluate_picks_the_fold(tmp_path):
    raw = write_ck48(tmp_path / "raw")
    data = prepare("ckplus", raw, tmp_path / "ck", size=64, show_progress=False, folds=3).out_dir
    config = TrainConfig(data=str(data), input_size=64, epochs=1, batch=8, lr=0.01, project=str(tmp_path / "runs"),
                         amp="off", use_pin=False, fold="1", val_fraction=0.2)
    run = train(config)
    saved = json.loads((run / "config.json").read_text())
    assert saved["fold"] == "1" and saved["resolved"]["test_split"] == "fold1"
    dataset = PreparedDataset(data)
    fold_ids = set(dataset.split("fold1").ids)
    held = set(pd.read_csv(run / "heldout_ids.csv", dtype={"id": str})["id"])
    assert held and not held & fold_ids  # validation comes from the training folds, never the held-out one
    assert saved["resolved"]["n_train"] + saved["resolved"]["n_val"] == 36 - len(fold_ids)

    choice = choose_split(run, dataset)
    assert (choice.split, choice.ids) == ("fold1", None) and "--fold 1" in choice.reason
    result = CliRunner().invoke(app, ["evaluate", str(run), str(data), "--json", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["split"] == "fold1" and metrics["n_images"] == len(fold_ids)


def test_hold_out_by_subject_keeps_every_subject_on_one_side_and_every_class_in_training():
    from poi_cli.train.data import hold_out

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 1])
    subjects = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "", ""])
    for seed in range(20):
        held = hold_out(labels, 0.3, seed, groups=subjects)
        named = subjects != ""
        assert not set(subjects[held & named]) & set(subjects[~held & named]), seed  # no subject on both sides
        assert held.sum() >= 4 and not held[labels == 2].any(), seed  # 30 % of 12, class 2's only subject stays
        assert set(labels[held]) >= {0, 1}, seed  # classes that have another subject are validated on
    assert (hold_out(labels, 0.3, 3, groups=subjects) == hold_out(labels, 0.3, 3, groups=subjects)).all()


def test_a_fold_run_holds_out_whole_subjects_and_a_resumed_run_keeps_its_own_hold_out(tmp_path):
    """Validation held out image by image shared subjects (CK+: near-identical frames of one
    sequence) with training: the best epoch and T_cal were chosen on copies of training faces."""
    from poi_cli.train.data import select_data

    raw = write_ck48(tmp_path / "raw", subjects=12, frames=3)
    data = prepare("ckplus", raw, tmp_path / "ck", size=64, show_progress=False, folds=3).out_dir
    dataset = PreparedDataset(data)
    config = TrainConfig(data=str(data), input_size=64, fold="1", val_fraction=0.25, seed=2)
    picked = select_data(config)
    subject_of = dict(zip(dataset.manifest["id"], dataset.manifest["subject"]))
    validated = {subject_of[i] for i in picked.val.ids}
    trained = {subject_of[i] for i in picked.train.ids}
    assert validated and not validated & trained
    assert f"whole subjects: {len(validated)} of {len(validated | trained)}, none of them trained on" in picked.val_note

    for val_split, what in (("fold1", "the fold this run is evaluated on (--fold 1)"), ("fold02", "part of train")):
        with pytest.raises(TrainError, match=re.escape(f"--val-split {val_split}: a fold is {what}")):  # "has no usable faces"
            select_data(TrainConfig(data=str(data), input_size=64, fold="1", val_split=val_split))

    run = tmp_path / "old_run"  # a run started with an image-level hold-out: its resume keeps those images
    run.mkdir()
    first = sorted(picked.train.ids)[:2] + sorted(picked.val.ids)[:1]
    pd.DataFrame({"id": first}).to_csv(run / "heldout_ids.csv", index=False)
    config.resume = str(run)
    resumed = select_data(config)
    assert sorted(resumed.val.ids) == sorted(first)
    assert "also trained on" in resumed.val_note


def test_a_fold_run_calibrates_on_its_held_out_images_never_on_a_fold_and_evaluate_says_what_it_saw(tmp_path, capsys):
    """calibrate's fold-K guard compared names (fold03 passed for fold 3), fitted on training
    folds without a word, and without --split asked for a split a fold run cannot name;
    evaluate on a training fold said nothing."""
    from poi_cli.study.calibrate import CalibrateError, calibrate
    from poi_cli.study.evaluate import evaluate

    raw = write_ck48(tmp_path / "raw")
    data = prepare("ckplus", raw, tmp_path / "ck", size=64, show_progress=False, folds=3).out_dir
    run = train(TrainConfig(data=str(data), input_size=64, epochs=1, batch=8, lr=0.01, project=str(tmp_path / "runs"),
                            amp="off", use_pin=False, fold="1", val_fraction=0.25))
    held = pd.read_csv(run / "heldout_ids.csv", dtype={"id": str})["id"]
    # its few held-out images make T_cal unreliable; calibrate would refit on the same ones
    # (it said 'calibrate the run on a larger split', which a fold run does not have)
    said = " ".join(capsys.readouterr().out.split())
    assert "hold out more with --val-fraction (now 0.25); `poi calibrate` of the run fits on the same" in said
    assert "larger split it has not trained on" not in said  # none: the store's other split is fold 1, its test
    result = calibrate(run, data, device="cpu", amp="off")  # the run's own held-out images, by default
    assert result.calibration.split == "train[held out by the run]" and result.calibration.n_images == len(held)
    assert Path(result.calibration.data) == data.resolve()
    # the calibrated copy in the run folder is evaluated on the run's fold too (it asked for a --split)
    assert evaluate(result.written, data, device="cpu", amp="off")["split"] == "fold1"
    for split, words in (("fold01", "is the fold this run is evaluated on"),
                         ("fold2", "images this model trained on (--fold 1 trains on every fold but 1)")):
        with pytest.raises(CalibrateError, match=re.escape(words)):
            calibrate(run, data, split=split, device="cpu", amp="off", out=tmp_path / "x.pt")

    on_training_fold = evaluate(run, data, split="fold2", device="cpu", amp="off")
    assert any("fold2 is training data of this model (--fold 1 trained on every fold but 1)" in n for n in on_training_fold["notes"])
    on_own_fold = evaluate(run, data, device="cpu", amp="off")
    assert on_own_fold["split"] == "fold1" and not any("training data" in n or "trained on" in n for n in on_own_fold["notes"])


def test_evaluate_notes_a_test_fold_the_fine_tune_start_or_the_teacher_trained_on(tmp_path):
    """--fold 1 --fine-tune RUN (or --teacher RUN), RUN trained on all of train: fold 1 was scored
    without a word, though the starting model (the teacher) had trained on it."""
    from poi_cli.study.evaluate import evaluate

    data = add_folds(make_prepared(tmp_path / "ck", splits={"train": 2}), folds=2)
    whole = train(tiny_config(data, tmp_path / "runs", epochs=1, name="whole"))
    for option, how in (("fine_tune", "started from"), ("teacher", "was taught by")):
        run = train(tiny_config(data, tmp_path / "runs", epochs=1, fold="1", name=option, **{option: str(whole)}))
        notes = evaluate(run, data, device="cpu", amp="off")["notes"]
        assert any(f"the model {how} {whole}" in n and "which trained on fold1 of this folder" in n for n in notes), notes
    own = train(tiny_config(data, tmp_path / "runs", epochs=1, fold="0", name="own_start"))
    started_within = train(tiny_config(data, tmp_path / "runs", epochs=1, fold="0", name="within", fine_tune=str(own)))
    assert not any("started from" in n for n in evaluate(started_within, data, device="cpu", amp="off")["notes"])


def test_evaluate_notes_the_split_a_run_was_selected_and_calibrated_on(tmp_path):
    """SFEW has train and val only: a run selected on val, or calibrated on it, was scored on val
    without a word (the held-out-images case already said 'optimistic')."""
    from poi_cli.study.calibrate import calibrate
    from poi_cli.study.evaluate import evaluate

    data = make_prepared(tmp_path / "sfew", splits={"train": 3, "val": 2})
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, use_pin=False))
    selected = evaluate(run, data, device="cpu", amp="off")
    assert selected["split"] == "val"
    assert any("selected best.pt on val of this folder (its validation split)" in n for n in selected["notes"])

    unselected = train(tiny_config(data, tmp_path / "runs", epochs=1, use_pin=False, val_split="none"))
    copy = calibrate(unselected, data, device="cpu", amp="off").written
    notes = evaluate(copy, data, device="cpu", amp="off")["notes"]
    assert any("T_cal and the prediction recipe (TRN, " in n and "were fitted on val of this folder" in n for n in notes)
    assert not any("selected best.pt" in n for n in notes)
    other = make_prepared(tmp_path / "other", splits={"train": 1, "val": 2}, seed=3)  # another store's val: not it
    assert not any("were fitted on" in n for n in evaluate(copy, other, device="cpu", amp="off")["notes"])


def test_evaluate_on_a_random_test_split_repeats_its_protocol(tmp_path):
    from poi_cli.study.evaluate import evaluate

    data = prepare("ckplus", write_ck48(tmp_path / "raw"), tmp_path / "ck82", size=64, show_progress=False,
                   test_fraction=0.25).out_dir
    run = train(TrainConfig(data=str(data), input_size=64, epochs=1, batch=8, lr=0.01, project=str(tmp_path / "runs"),
                            amp="off", use_pin=False, val_fraction=0.25))
    metrics = evaluate(run, data, device="cpu", amp="off")
    assert metrics["split"] == "test" and any("near-identical frames of the same sequences" in n for n in metrics["notes"])


def test_evaluate_split_rule_test_then_validation_then_the_runs_held_out_images(tmp_path):
    with_test = PreparedDataset(make_prepared(tmp_path / "a", splits={"train": 1, "valid": 1, "test": 1}))
    assert choose_split(tmp_path, with_test).split == "test"
    assert choose_split(tmp_path, with_test, "valid").split == "valid"
    with_val = PreparedDataset(make_prepared(tmp_path / "b", splits={"train": 1, "val": 1}))
    assert choose_split(tmp_path, with_val).split == "val"

    train_only = make_prepared(tmp_path / "c", splits={"train": 3})
    run = train(tiny_config(train_only, tmp_path / "runs", epochs=1, use_pin=False, val_fraction=0.34))
    choice = choose_split(run, PreparedDataset(train_only))
    held = pd.read_csv(run / "heldout_ids.csv", dtype={"id": str})["id"].tolist()
    assert choice.split == "train" and sorted(choice.ids) == sorted(held) and len(held) == 7
    assert choice.name == "train[held out by the run]" and "optimistic" in choice.reason
    result = CliRunner().invoke(app, ["evaluate", str(run), str(train_only), "--json", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n_images"] == 7
    # a checkpoint inside its run folder chooses as the run does; one outside any run folder, on a
    # store without test or validation, is a one-line error
    assert choose_split(run / "best.pt", PreparedDataset(train_only)) == choice
    alone = tmp_path / "alone" / "model.pt"
    alone.parent.mkdir()
    shutil.copyfile(run / "best.pt", alone)
    with pytest.raises(EvaluateError, match="name one with --split"):
        choose_split(alone, PreparedDataset(train_only))


def test_an_interrupted_fold_all_says_to_run_the_same_command_again(tmp_path, monkeypatch):
    """--fold all refuses --resume (the same command resumes it): Ctrl-C must not suggest it.
    A single run's Ctrl-C still does (--resume RUN_DIR is how it resumes)."""
    import poi_cli.pipeline

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(poi_cli.pipeline, "train", interrupted)  # Ctrl-C in the first fold's training
    data = add_folds(make_prepared(tmp_path / "ck", splits={"train": 2}), folds=2)
    options = ["train", str(data), "--size", "64", "--epochs", "1", "--project", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, [*options, "--name", "cv", "--fold", "all"])
    assert result.exit_code == 130 and "run the same command again to resume" in result.output
    assert "--resume" not in result.output
    result = CliRunner().invoke(app, [*options, "--name", "one", "--fold", "1"])
    assert result.exit_code == 130 and "continue with --resume RUN_DIR" in result.output


def test_fold_all_refuses_its_excluded_options_before_it_writes_anything(tmp_path):
    """--fold all --rounds 2 trained each fold once (the folds were validated as --fold K, where
    --rounds is allowed) and recorded rounds 2, which --resume of a fold then ran; an option
    refused in the first fold left cv_config.json behind, which refused the corrected command."""
    data = add_folds(make_prepared(tmp_path / "ck", splits={"train": 2}), folds=2)
    config = TrainConfig(data=str(data), input_size=64, epochs=1, batch=8, amp="off", use_pin=False,
                         project=str(tmp_path / "runs"), name="cv", fold="all")
    for options, message in (({"rounds": 2, "use_pin": True}, "--fold all and --rounds exclude each other"),
                             ({"rounds_teacher": True}, "--rounds-teacher needs --rounds 2"),
                             ({"epochs": 0}, "--epochs must be at least 1")):
        with pytest.raises(ValueError, match=re.escape(message)):
            train_folds(replace(config, **options))
        assert not (tmp_path / "runs").exists()


def test_fold_all_trains_every_fold_writes_cv_and_resumes(tmp_path):
    raw = write_ck48(tmp_path / "raw", subjects=6, frames=2)
    data = prepare("ckplus", raw, tmp_path / "ck", size=64, show_progress=False, folds=2).out_dir
    config = TrainConfig(data=str(data), input_size=64, epochs=1, batch=8, lr=0.01, amp="off", use_pin=False,
                         project=str(tmp_path / "runs"), name="cv", fold="all", val_fraction=0.0)
    summary = train_folds(config)
    folder = tmp_path / "runs" / "cv"
    table = pd.read_csv(folder / "cv.csv")
    assert table["fold"].tolist() == [0, 1] and table["n_test"].sum() == 12
    accuracy = table["accuracy"].to_numpy()
    assert summary["accuracy_mean"] == pytest.approx(accuracy.mean())
    assert summary["accuracy_std"] == pytest.approx(accuracy.std(ddof=1))
    assert json.loads((folder / "cv.json").read_text())["folds"] == 2
    for fold in (0, 1):
        assert json.loads((folder / f"fold{fold}" / "eval" / "metrics.json").read_text())["split"] == f"fold{fold}"

    stamp = (folder / "fold0" / "last.pt").stat().st_mtime_ns
    train_folds(config)  # finished folds are kept, not trained again
    assert (folder / "fold0" / "last.pt").stat().st_mtime_ns == stamp
    # a cv_config.json written before an option existed: the option reads as its default, not as a change
    saved = json.loads((folder / "cv_config.json").read_text())
    del saved["soft_labels"]
    (folder / "cv_config.json").write_text(json.dumps(saved))
    train_folds(config)
    assert (folder / "fold0" / "last.pt").stat().st_mtime_ns == stamp
    from poi_cli.train.config import TrainError
    with pytest.raises(TrainError, match="other options"):
        train_folds(TrainConfig(**{**config.to_dict(), "lr": 0.02}))
    single = tmp_path / "runs" / "single"  # a folder holding one run is not a cross-validation's
    single.mkdir()
    (single / "config.json").write_text("{}")
    with pytest.raises(TrainError, match="holds a training run"):
        train_folds(TrainConfig(**{**config.to_dict(), "name": "single"}))
    assert sorted(p.name for p in single.iterdir()) == ["config.json"]
