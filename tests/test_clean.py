"""`poi clean`: an audit turned into a label file for `poi train --labels` (issue 13)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import make_prepared
from poi_cli.cli import app
from poi_cli.data.store import PreparedDataset
from poi_cli.data.noise import flip_labels
from poi_cli.study import clean as clean_module
from poi_cli.study.clean import (CleanError, auto_fraction, choose_fraction, clean_labels, estimate_noise_rate,
                                     fitted_training_labels, noise_after_selection, read_audit_csv)

runner = CliRunner()
SPLITS = {"train": 4, "valid": 1}  # 7 classes: 28 training images


def _fixture_audit(prepared: Path, flipped_every: int = 4) -> tuple[pd.DataFrame, np.ndarray]:
    """An audit of the training split where every 4th label was flipped and the model is right:
    suspicion is high exactly on the flipped images and the suggestion is their clean class."""
    train = PreparedDataset(prepared).split("train")
    clean = train.labels.copy()
    flipped = np.arange(len(clean)) % flipped_every == 0
    given = np.where(flipped, (clean + 1) % 7, clean)
    table = pd.DataFrame({
        "rank": 0, "id": train.ids, "given_label": given, "suggested_label": clean,
        "suspicion": np.where(flipped, 0.9, 0.1), "clean_label": clean, "flipped": flipped,
    })
    table = table.sort_values("suspicion", ascending=False, kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table, flipped


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_relabel_restores_the_clean_class_of_flipped_images_and_leaves_the_rest(tmp_path):
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    table, _ = _fixture_audit(prepared)
    classes = list(PreparedDataset(prepared).classes)
    result = clean_labels(table, classes, "relabel", threshold=0.5)
    labels = result.labels
    was_flipped = table["given_label"] != table["clean_label"]
    assert (labels.loc[was_flipped, "label"] == table.loc[was_flipped, "clean_label"]).all()
    assert (labels.loc[~was_flipped, "label"] == table.loc[~was_flipped, "given_label"]).all()
    assert (labels.loc[was_flipped, "action"] == "relabel").all() and (labels.loc[~was_flipped, "action"] == "").all()
    s = result.summary
    assert s["n_changed"] == s["changed_wrong_before"] == s["changed_right_after"] == int(was_flipped.sum())
    assert s["noise_rate_before"] == pytest.approx(was_flipped.mean()) and s["noise_rate_after"] == 0.0


def test_fraction_selects_the_most_suspect_and_drop_removes_exactly_them(tmp_path):
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    table, _ = _fixture_audit(prepared)
    classes = list(PreparedDataset(prepared).classes)
    result = clean_labels(table, classes, "drop", fraction=0.25)  # 7 of 28: the 7 flipped ones
    dropped = result.labels["label"] == -1
    assert dropped.sum() == 7
    assert set(result.labels.loc[dropped, "id"]) == set(table.loc[table["given_label"] != table["clean_label"], "id"])
    assert result.summary["dropped_clean"] == 0 and result.summary["n_kept"] == 21


def test_held_out_images_are_never_selected_and_a_fraction_is_of_the_trained_images(tmp_path):
    """The images a run held out for validation (audit column held_out) keep their labels; a
    --fraction counts the trained images only: 7 of the 28 are held out, among them 2 of the 7
    flipped, so --fraction 0.25 of the other 21 is ceil(5.25) = 6: the 5 flipped ones left and
    the most suspect clean one (selecting 7 of all 28, then skipping the held-out, gave 5)."""
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    table, _ = _fixture_audit(prepared)
    flipped = table["given_label"] != table["clean_label"]
    held = np.zeros(len(table), dtype=bool)
    held[np.flatnonzero(flipped)[:2]] = True
    held[np.flatnonzero(~flipped)[:5]] = True
    table["held_out"] = held
    result = clean_labels(table, list(PreparedDataset(prepared).classes), "drop", fraction=0.25)
    dropped = (result.labels["label"] == -1).to_numpy()
    assert dropped.sum() == 6 and not (dropped & held).any() and (dropped >= (flipped.to_numpy() & ~held)).all()
    assert result.summary["n_held_out_kept"] == 7
    # an empty cell (an old audit CSV joined to a new one) is not held out (NaN read as True)
    table["held_out"] = pd.Series(held).where(held)  # 1.0 or NaN
    again = clean_labels(table, list(PreparedDataset(prepared).classes), "drop", fraction=0.25)
    assert again.labels["label"].tolist() == result.labels["label"].tolist()


def test_label_file_round_trips_through_training_and_the_prepared_folder_is_untouched(tmp_path):
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    table, flipped = _fixture_audit(prepared)
    audit_csv = tmp_path / "audit.csv"
    table.to_csv(audit_csv, index=False)
    before = _digest(prepared)
    out = tmp_path / "clean" / "labels.csv"
    result = runner.invoke(app, ["clean", str(audit_csv), str(prepared), "--out", str(out), "--drop", "--threshold", "0.5"])
    assert result.exit_code == 0, result.output
    assert "7 dropped" in result.output and "noise 25.00% -> 0.00%" in result.output
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert _digest(prepared) == before  # the prepared data is only read
    # the store applies it: dropped images leave the split, the rest keep the file's labels
    data = PreparedDataset(prepared).split("train", labels_file=out)
    assert len(data.labels) == 21 and (data.labels == data.clean_labels).all()
    trained = runner.invoke(app, ["train", str(prepared), "--labels", str(out), "--size", "64", "--epochs", "1",
                                  "--batch", "7", "--amp", "off", "--project", str(tmp_path / "runs"), "--name", "cleaned"])
    assert trained.exit_code == 0, trained.output
    assert "0.00% of the training labels differ from the clean ones" in trained.output


@pytest.mark.parametrize("taken", ["labels.csv", "labels.json"])
def test_clean_never_writes_over_an_existing_label_file_or_summary(taken, tmp_path):
    """A label file may be what a run trained on (its config.json names it): `poi clean --out`
    onto one with other contents, or onto a .json beside it, is refused and both stay as they
    were; the same command again (the same contents) is no change."""
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    table, _ = _fixture_audit(prepared)
    table.to_csv(tmp_path / "audit.csv", index=False)
    out = tmp_path / "labels.csv"
    command = ["clean", str(tmp_path / "audit.csv"), str(prepared), "--out", str(out), "--threshold", "0.5"]
    assert runner.invoke(app, command).exit_code == 0
    assert runner.invoke(app, command).exit_code == 0  # a re-run writes the same files
    (tmp_path / taken).write_text("the user's own\n")
    kept = {p.name: p.read_bytes() for p in (out, out.with_suffix(".json"))}
    result = runner.invoke(app, command)
    assert result.exit_code == 1 and "exists already with other contents" in result.stderr, result.output
    assert str(tmp_path / taken) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (out, out.with_suffix(".json"))} == kept


def test_a_run_is_not_audited_before_the_selection_is_known_to_be_usable(tmp_path, monkeypatch):
    """Without --threshold, --fraction or --auto (or with two), clean audited the whole split
    first and only then said "give exactly one of --threshold and --fraction"."""
    import poi_cli.study.audit as audit_module

    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    monkeypatch.setattr(audit_module, "audit", lambda *args, **kwargs: pytest.fail("audited before the check"))
    for options in ([], ["--threshold", "0.5", "--fraction", "0.1"]):
        result = runner.invoke(app, ["clean", str(tmp_path / "run"), str(prepared), "--out", str(tmp_path / "l.csv"),
                                     *options])
        assert result.exit_code == 1 and "give exactly one of --threshold, --fraction and --auto" in result.output


def test_bad_audit_file_is_a_one_line_error(tmp_path):
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    bad = tmp_path / "not_an_audit.csv"
    bad.write_text("id,label\na,1\n")
    result = runner.invoke(app, ["clean", str(bad), str(prepared), "--out", str(tmp_path / "l.csv"), "--threshold", "0.5"])
    assert result.exit_code == 1 and "is not an audit CSV" in result.output and "Traceback" not in result.output
    table, _ = _fixture_audit(prepared)
    good = tmp_path / "audit.csv"
    table.to_csv(good, index=False)
    both = runner.invoke(app, ["clean", str(good), str(prepared), "--out", str(tmp_path / "l.csv"), "--threshold", "0.5", "--fraction", "0.1"])
    assert both.exit_code == 1 and "exactly one of --threshold, --fraction and --auto" in both.output
    auto_drop = runner.invoke(app, ["clean", str(good), str(prepared), "--out", str(tmp_path / "l.csv"), "--auto", "--drop"])
    assert auto_drop.exit_code == 1 and "--auto chooses the fraction" in auto_drop.output
    no_model = runner.invoke(app, ["clean", str(good), str(prepared), "--out", str(tmp_path / "l.csv"), "--auto"])
    assert no_model.exit_code == 1 and "--auto needs the model the audit used" in no_model.output
    assert not (tmp_path / "l.csv").exists()
    with pytest.raises(CleanError):
        read_audit_csv(tmp_path / "missing.csv")
    missing = runner.invoke(app, ["clean", str(tmp_path / "missing.csv"), str(prepared), "--out", str(tmp_path / "l.csv"),
                                  "--threshold", "0.5"])  # it said "no such run folder or checkpoint"
    assert missing.exit_code == 1 and "no such audit CSV" in missing.output
    # the folder `poi audit --out` wrote stands for its audit.csv (it said "holds no best.pt or last.pt")
    folder = runner.invoke(app, ["clean", str(tmp_path), str(prepared), "--out", str(tmp_path / "l.csv"), "--threshold", "0.5"])
    assert folder.exit_code == 0 and (tmp_path / "l.csv").is_file(), folder.output


@pytest.mark.parametrize("option", [["--threshold", "-5"], ["--threshold", "nan"], ["--threshold", "inf"],
                                    ["--threshold", "0"], ["--threshold", "1.5"], ["--fraction", "nan"]])
def test_a_threshold_outside_the_suspicion_range_is_refused_before_anything_is_written(option, tmp_path, monkeypatch):
    """--threshold -5 relabelled every image and --threshold nan none, both with exit 0; suspicion
    w * (1 - p*_y) lies in [0, 1]. Given a run, refused before the run is audited."""
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    table, _ = _fixture_audit(prepared)
    table.to_csv(tmp_path / "audit.csv", index=False)
    out = tmp_path / "l.csv"
    monkeypatch.setattr("poi_cli.study.audit.audit", lambda *a, **k: pytest.fail("audited before the check"))
    for source in (tmp_path / "audit.csv", tmp_path / "run"):
        result = runner.invoke(app, ["clean", str(source), str(prepared), "--out", str(out), *option])
        assert result.exit_code == 1 and f"{option[0]} must lie in" in result.stderr, result.output
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
        assert not out.exists() and not out.with_suffix(".json").exists()
    with pytest.raises(CleanError, match="--threshold must lie in"):
        clean_labels(table, list(PreparedDataset(prepared).classes), "relabel", threshold=float("nan"))


def test_noise_rate_estimate_inverts_the_agreement_of_a_suggestion():
    # a = 0.6, g = 0.45, C = 8: chance = 0.4 / 7; rho = 0.15 / (0.6 - 0.4 / 7) = 0.276316
    assert estimate_noise_rate(0.45, 0.6, 8) == pytest.approx(0.276316, abs=1e-6)
    # g = a (1 - rho) + rho (1 - a) / (C - 1) with a = 0.8, rho = 0.3, C = 5: g = 0.575
    assert estimate_noise_rate(0.575, 0.8, 5) == pytest.approx(0.3)
    assert estimate_noise_rate(0.9, 0.8, 5) == 0.0  # agrees more than it is right: no noise
    assert estimate_noise_rate(0.1, 0.2, 5) == 0.0  # a suggestion at chance tells nothing
    assert estimate_noise_rate(0.0, 1.0, 5) == 0.95  # clipped


def test_auto_says_when_its_validation_split_cannot_support_the_estimate(tmp_path):
    """A model answering happiness to everything was 100 % right on a validation split of two happy
    faces, and --auto relabelled half of training to happiness (noise 35 % -> 50 %), silently."""
    from poi_cli.study.clean import valid_caveat

    dataset = PreparedDataset(make_prepared(tmp_path / "data", splits=SPLITS))
    train = np.array([3, 4] * 100)
    one_class = valid_caveat(np.array([3, 3]), train, dataset, "val")
    assert one_class.startswith("val has no image of 1 class the training labels use (sadness)")
    few = valid_caveat(np.array([3, 4] * 10), train, dataset, "val")
    assert few.startswith("val has 20 images, fewer than 100")
    assert valid_caveat(np.array([3, 4] * 60), train, dataset, "val") is None
    from poi_cli import render

    auto = {"estimated_noise_rate": 0.5, "suggestion_accuracy_valid": 1.0, "valid_split": "val",
            "suggestion_agreement_train": 0.5, "fraction": 0.5, "valid_noise_after": 0.0, "valid_noise_before": 0.5,
            "valid_caveat": one_class}
    summary = {"n_selected": 100, "n_images": 200, "n_changed": 100, "changed_wrong_before": 50,
               "changed_right_after": 50, "noise_rate_before": 0.35, "noise_rate_after": 0.5, "auto": auto}
    assert f"warning: {one_class}" in [line.text for line in render.clean_summary(summary, True, ["l.csv"], "data")]


def test_an_audit_of_valid_is_cleaned_as_valid_and_auto_refuses_to_estimate_on_the_split_it_cleans(tmp_path):
    """An audit of --split val was cleaned as train ("8 audited images are not in split 'train'"),
    and --auto --split val estimated the noise on the very images it cleaned (0 by construction)."""
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    valid = PreparedDataset(prepared).split("valid")
    table = pd.DataFrame({"rank": np.arange(1, len(valid.ids) + 1), "id": valid.ids, "given_label": valid.labels,
                          "suggested_label": valid.labels, "suspicion": 0.1})
    audit = tmp_path / "audit"
    audit.mkdir()
    table.to_csv(audit / "audit.csv", index=False)
    (audit / "audit_summary.json").write_text(json.dumps({"split": "valid", "checkpoint": str(tmp_path / "run")}))
    result = runner.invoke(app, ["clean", str(audit), str(prepared), "--out", str(tmp_path / "l.csv"), "--threshold", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "l.json").read_text())["split"] == "valid"
    from poi_cli.study.clean import CleanError, auto_fraction

    with pytest.raises(CleanError, match="the split being cleaned: that is circular"):
        auto_fraction(tmp_path / "run", prepared, table, cleaned_split="valid")


def test_noise_after_relabelling_the_k_most_suspect():
    given, clean = np.array([0, 1, 2, 0]), np.array([1, 1, 2, 0])
    suggested, suspicion = np.array([1, 1, 0, 2]), np.array([0.9, 0.8, 0.7, 0.1])
    # k=1 fixes image 0; image 1's suggestion is its label; k=3, 4 break right labels
    assert noise_after_selection(suspicion, suggested, given, clean) == pytest.approx([0.25, 0.0, 0.0, 0.25, 0.5])


def test_auto_fraction_picks_the_flipped_share_when_the_model_is_right():
    rng = np.random.default_rng(0)
    valid_clean = rng.integers(0, 5, 400)
    objective = np.full((400, 5), 0.02)
    objective[np.arange(400), valid_clean] = 0.92  # right and confident on every validation image
    # training audit: suggestion right everywhere (a = 1), agreeing with 70 % of the labels: rho = 0.3
    train_suggested = rng.integers(0, 5, 1000)
    train_given = np.where(np.arange(1000) < 700, train_suggested, (train_suggested + 1) % 5)
    chosen = choose_fraction(train_given, train_suggested, objective, np.ones(400), valid_clean)
    assert chosen["estimated_noise_rate"] == pytest.approx(0.3)
    flipped = flip_labels(valid_clean, 5, 0.3, 0) != valid_clean  # the simulation's own flips (seed 0)
    assert chosen["fraction"] == pytest.approx(flipped.mean())  # exactly the flipped ones, the first minimum
    assert chosen["valid_noise_before"] == pytest.approx(flipped.mean()) and chosen["valid_noise_after"] == 0.0


def test_auto_fraction_on_a_dataset_with_an_unlabelled_class_flips_and_estimates_among_the_labelled():
    """CK+48: 8 classes, neutral (6) never labelled. The simulated noise on valid flips among
    the 7 labelled classes (never to neutral) and the estimate uses C = 7: with a = 0.6 and
    g = 0.45, rho = 0.15 / (0.6 - 0.4 / 6) = 0.28125 (C = 8 would give 0.276316)."""
    rng = np.random.default_rng(0)
    labelled = [0, 1, 2, 3, 4, 5, 7]
    valid_clean = rng.choice(labelled, 500)
    objective = np.full((500, 8), 0.01)
    right = np.arange(500) % 5 < 3  # a = 0.6 on valid
    objective[np.arange(500), np.where(right, valid_clean, (valid_clean + 1) % 8)] = 0.93
    train_suggested = rng.choice(labelled, 1000)
    train_given = np.where(np.arange(1000) < 450, train_suggested, 99)  # g = 0.45
    chosen = choose_fraction(train_given, train_suggested, objective, np.ones(500), valid_clean, classes=labelled)
    assert chosen["suggestion_accuracy_valid"] == pytest.approx(0.6)
    assert chosen["estimated_noise_rate"] == pytest.approx(0.28125)
    flipped = flip_labels(valid_clean, 8, 0.28125, 0, classes=labelled)
    assert 6 not in flipped and chosen["valid_noise_before"] == pytest.approx((flipped != valid_clean).mean())


def test_auto_fraction_on_a_combined_folder_flips_each_valid_face_among_its_own_datasets_classes():
    """A combined folder's valid faces were flipped among the union's classes (a CK+48 face to
    neutral). With each face's own classes (split_noise_targets' mask), C is their mean count:
    half the faces of 7 classes, half of 8, C = 7.5: rho = 0.15 / (0.6 - 0.4 / 6.5)."""
    rng = np.random.default_rng(0)
    mask = np.ones((500, 8), dtype=bool)
    mask[:250, 6] = False  # the first member (CK+48) never labels neutral
    valid_clean = np.where(np.arange(500) < 250, rng.choice([0, 1, 2, 3, 4, 5, 7], 500), rng.integers(0, 8, 500))
    objective = np.full((500, 8), 0.01)
    right = np.arange(500) % 5 < 3  # a = 0.6 on valid
    objective[np.arange(500), np.where(right, valid_clean, (valid_clean + 1) % 8)] = 0.93
    train_suggested = rng.integers(0, 7, 1000)
    train_given = np.where(np.arange(1000) < 450, train_suggested, 99)  # g = 0.45
    chosen = choose_fraction(train_given, train_suggested, objective, np.ones(500), valid_clean, classes=mask)
    assert chosen["estimated_noise_rate"] == pytest.approx(0.15 / (0.6 - 0.4 / 6.5))
    flipped = flip_labels(valid_clean, 8, chosen["estimated_noise_rate"], 0, classes=mask)
    assert 6 not in flipped[:250] and (flipped[250:] == 6).any()
    assert chosen["valid_noise_before"] == pytest.approx((flipped != valid_clean).mean())


def _scripted_objective(model, dataset, data, device, amp="auto", batch=256):
    """objective_of for named fake models: "right" predicts the label, "wrong" the next class,
    "half" the next class on every other image."""
    predicted = data.labels.copy()
    wrong = {"right": slice(0, 0), "wrong": slice(None), "half": slice(None, None, 2)}[model]
    predicted[wrong] = (predicted[wrong] + 1) % 7
    return np.eye(7)[predicted], np.ones(len(data.labels))


def test_auto_scores_valid_with_the_fold_models_of_a_cross_fitted_audit(tmp_path, monkeypatch):
    """A cross-fitted audit's suggestions come from K fold models: --auto must measure the
    suggestion's valid accuracy with them (each scoring a seeded 1/K of valid), not with the
    run's own model, or rho compares two different models (seen: rho 52 % for 29 % noise)."""
    prepared = make_prepared(tmp_path / "data", splits={"train": 4, "valid": 6})  # 42 validation images
    valid = PreparedDataset(prepared).split("valid")
    calls = []

    def recorded_objective(model, dataset, data, device, amp="auto", batch=256):
        calls.append((model, len(data.labels)))
        return _scripted_objective(model, dataset, data, device)

    monkeypatch.setattr(clean_module, "objective_of", recorded_objective)
    table = pd.DataFrame({"given_label": [0, 1, 2, 3], "suggested_label": [0, 1, 2, 3]})
    alone = auto_fraction("right", prepared, table)
    assert alone["suggestion_accuracy_valid"] == 1.0 and alone["valid_scored_by"] == 1
    calls.clear()
    folds = auto_fraction("right", prepared, table, fold_models=["right", "wrong"])
    assert folds["valid_scored_by"] == 2 and [c[0] for c in calls] == ["right", "wrong"]
    assert sum(c[1] for c in calls) == len(valid.labels) == 42 and calls[0][1] == 21  # each image once, halves
    assert folds["suggestion_accuracy_valid"] == pytest.approx(0.5)  # half the images scored by the wrong model
    # the rows a run held out for validation are no training labels: they do not move the agreement
    held = pd.concat([table.assign(held_out=False),
                      pd.DataFrame({"given_label": [4, 5], "suggested_label": [5, 6], "held_out": [True, True]})])
    assert auto_fraction("right", prepared, held)["suggestion_agreement_train"] == 1.0


def test_auto_warns_when_an_in_sample_audit_comes_from_a_model_that_fitted_its_labels(tmp_path, monkeypatch):
    """A model that fitted its noisy training labels agrees with them more than it is right
    on valid; its in-sample audit sees no noise (rho 0: seen at 99.8 % agreement, 41 % valid)."""
    assert fitted_training_labels(0.998, 0.414) and fitted_training_labels(0.80, 0.69)
    assert not fitted_training_labels(0.74, 0.69) and not fitted_training_labels(0.78, 0.69)  # margin 0.10
    assert not fitted_training_labels(0.2, 0.1)  # exactly the margin (0.2 - 0.1 == 0.1 in floats): more is needed
    prepared = make_prepared(tmp_path / "data", splits={"train": 4, "valid": 6})
    monkeypatch.setattr(clean_module, "objective_of", _scripted_objective)
    table, _ = _fixture_audit(prepared)  # the suggestion agrees with 75 % of the given labels
    assert not auto_fraction("right", prepared, table)["fitted_training_labels"]  # right on 100 % of valid
    fitted = auto_fraction("half", prepared, table)  # right on 50 % of valid, agrees with 75 % of its labels
    assert fitted["fitted_training_labels"] and fitted["estimated_noise_rate"] == 0.0
    # out of fold no suggestion saw the label it is compared with: no warning
    assert not auto_fraction("half", prepared, table, fold_models=["half", "half"])["fitted_training_labels"]
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    table.to_csv(audit_dir / "audit.csv", index=False)
    for model, warned in (("half", True), ("right", False)):
        (audit_dir / "audit_summary.json").write_text(json.dumps({"checkpoint": model}))
        result = runner.invoke(app, ["clean", str(audit_dir / "audit.csv"), str(prepared), "--auto",
                                     "--out", str(tmp_path / f"{model}.csv")])
        assert result.exit_code == 0, result.output
        assert ("audit out of fold" in result.output) == warned, result.output
        saved = json.loads((tmp_path / f"{model}.json").read_text())
        assert saved["auto"]["fitted_training_labels"] == warned


def test_rounds_stopping_on_a_fitted_audit_say_to_audit_out_of_fold(tmp_path, monkeypatch):
    from poi_cli import pipeline

    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    monkeypatch.setattr(pipeline, "cleaned_labels", lambda run_dir, config, device: (
        run_dir / "clean" / "labels.csv", {"n_changed": 0, "auto": {"fitted_training_labels": True}}))
    result = runner.invoke(app, ["train", str(prepared), "--noise", "0.3", "--rounds", "2", "--size", "64", "--epochs", "1",
                                 "--batch", "7", "--amp", "off", "--project", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "changed no label" in result.output and "--clean-cross-fit 5" in result.output
    assert not (tmp_path / "runs" / "exp_round2").exists()


def test_train_rounds_retrains_on_the_labels_its_own_audit_cleaned(tmp_path, monkeypatch):
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    project = tmp_path / "runs"
    result = runner.invoke(app, ["train", str(prepared), "--noise", "0.3", "--rounds", "2",
                                 "--size", "64", "--epochs", "1", "--batch", "7", "--amp", "off", "--project", str(project)])
    assert result.exit_code == 0, result.output
    labels = project / "exp" / "clean" / "labels.csv"
    assert labels.is_file() and labels.with_suffix(".json").is_file()
    # the default selection: the fraction chosen on the validation split (poi clean --auto)
    summary = json.loads(labels.with_suffix(".json").read_text())
    assert summary["auto"]["valid_split"] == "valid" and summary["auto"]["valid_images"] == 7
    assert summary["fraction"] == summary["auto"]["fraction"] and summary["threshold"] is None
    assert (project / "exp_round2").exists() == (summary["n_changed"] > 0)  # no change: no repeated round
    # the same from an audit CSV: --auto finds the audit's model in audit_summary.json, also
    # when the audit named the run by a relative path and clean runs from another folder
    monkeypatch.chdir(tmp_path)
    audited = runner.invoke(app, ["audit", "runs/exp", str(prepared), "--out", str(tmp_path / "audit")])
    assert audited.exit_code == 0, audited.output
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = runner.invoke(app, ["clean", str(tmp_path / "audit" / "audit.csv"), str(prepared), "--auto",
                                "--out", str(tmp_path / "again.csv")])
    assert again.exit_code == 0 and "--auto: noise rate estimated at" in again.output, again.output
    by_id = pd.read_csv(tmp_path / "again.csv").set_index("id")["label"]
    rounds_labels = pd.read_csv(labels)
    assert by_id.loc[rounds_labels["id"]].tolist() == rounds_labels["label"].tolist()
    # a threshold that changes labels: round 2 trains from scratch on them
    forced = runner.invoke(app, ["train", str(prepared), "--noise", "0.3", "--rounds", "2", "--clean-threshold", "0.05",
                                 "--size", "64", "--epochs", "1", "--batch", "7", "--amp", "off", "--project", str(project),
                                 "--name", "forced"])
    assert forced.exit_code == 0, forced.output
    labels = project / "forced" / "clean" / "labels.csv"
    assert "round 2: labels cleaned by forced" in forced.output
    assert json.loads(labels.with_suffix(".json").read_text())["n_changed"] > 0
    config = json.loads((project / "forced_round2" / "config.json").read_text())
    assert config["labels"] == str(labels.resolve()) and config["noise"] == 0.0
    # the audit knew the flips of round 1 (--noise): the label file carries the clean labels
    table = pd.read_csv(labels)
    assert {"clean_label", "given_label", "action"} <= set(table.columns)
    assert (table["given_label"] != table["clean_label"]).any()
    baseline = runner.invoke(app, ["train", str(prepared), "--baseline", "--rounds", "2", "--project", str(project)])
    assert baseline.exit_code == 1 and "--rounds needs the PIN" in baseline.output
    no_oim = runner.invoke(app, ["train", str(prepared), "--no-oim", "--rounds", "2", "--project", str(project),
                                 "--name", "no_oim"])  # refused before round 1 (it trained round 1, then failed)
    assert no_oim.exit_code == 1 and "objective inference" in no_oim.output and not (project / "no_oim").exists()
    # --auto (the default cleaning) needs validation labels: refused before round 1 where there
    # are none (it trained round 1, then stopped naming poi clean's --auto), and where the
    # validation split is the one cleaned
    no_val = make_prepared(tmp_path / "noval", splits={"train": 2})
    # one image per class: the hold-out holds none out (a class's last image stays in training);
    # round 1 trained, then --auto failed on the missing heldout_ids.csv
    one_each = make_prepared(tmp_path / "one_each", splits={"train": 1})
    for data, options, problem in ((no_val, ["--val-split", "none"], "holds no images out (--val-split none)"),
                                   (no_val, ["--val-fraction", "0"], "holds no images out (--val-fraction 0)"),
                                   (one_each, [], "holds no images out: no validation (the store has no valid/val split, "
                                                  "and its 7 images are too few"),
                                   (prepared, ["--train-split", "valid"], "the split it cleans (circular)")):
        refused = runner.invoke(app, ["train", str(data), "--rounds", "2", *options, "--project", str(project),
                                      "--name", "auto"])
        assert refused.exit_code == 1 and problem in refused.output and "--clean-threshold" in refused.output, refused.output
        assert not (project / "auto").exists()


def test_later_rounds_validate_on_round_1s_hold_out_with_its_labels_as_given(tmp_path):
    """A store without valid/val (RAF-DB's layout): round 2 drew a new hold-out by the cleaned
    labels, so it selected best.pt on images round 1, its teacher, trained on; and the cleaning
    relabelled round 1's held-out images, so their labels were partly round 1's suggestions."""
    prepared = make_prepared(tmp_path / "data", splits={"train": 6})  # 42 images, no valid split
    project = tmp_path / "runs"
    result = runner.invoke(app, ["train", str(prepared), "--noise", "0.5", "--rounds", "2", "--clean-threshold", "1e-9",
                                 "--val-fraction", "0.3", "--size", "64", "--epochs", "1", "--batch", "7", "--amp", "off",
                                 "--project", str(project)])
    assert result.exit_code == 0, result.output
    held = pd.read_csv(project / "exp" / "heldout_ids.csv", dtype={"id": str})["id"]
    assert len(held) >= 7
    assert pd.read_csv(project / "exp_round2" / "heldout_ids.csv", dtype={"id": str})["id"].tolist() == held.tolist()
    cleaned = pd.read_csv(project / "exp" / "clean" / "labels.csv", dtype={"id": str}).set_index("id")
    assert (cleaned["action"].fillna("") != "").sum() > 0  # threshold ~0: every other suggestion taken
    assert (cleaned.loc[held, "action"].fillna("") == "").all()
    assert (cleaned.loc[held, "label"] == cleaned.loc[held, "given_label"]).all()
    summary = json.loads((project / "exp" / "clean" / "labels.json").read_text())
    assert summary["n_held_out_kept"] == len(held)
    # the audit marks them (poi audit of the run, as the rounds' cleaning read it)
    audited = runner.invoke(app, ["audit", str(project / "exp"), str(prepared), "--out", str(tmp_path / "audit")])
    assert audited.exit_code == 0, audited.output
    table = pd.read_csv(tmp_path / "audit" / "audit.csv", dtype={"id": str}).set_index("id")
    assert sorted(table.index[table["held_out"]]) == sorted(held)
    mode = json.loads((tmp_path / "audit" / "audit_summary.json").read_text())["mode"]
    assert mode == f"the model's own training set, but {len(held)} images it held out for validation (held_out)"
    # by hand (what --rounds does under torchrun): poi clean names --heldout-from in the next command
    cleaned = runner.invoke(app, ["clean", str(tmp_path / "audit" / "audit.csv"), str(prepared), "--threshold", "0.01",
                                  "--out", str(tmp_path / "manual.csv")])
    assert cleaned.exit_code == 0, cleaned.output
    text = " ".join(cleaned.output.split())
    assert f"{len(held)} images the run held out for validation keep their labels" in text
    assert f"of the {42 - len(held)} images the run trained on selected" in text
    assert f"--heldout-from {(project / 'exp').resolve()}" in text
    manual = runner.invoke(app, ["train", str(prepared), "--labels", str(tmp_path / "manual.csv"), "--heldout-from",
                                 str(project / "exp"), "--size", "64", "--epochs", "1", "--batch", "7", "--amp", "off",
                                 "--project", str(project), "--name", "manual"])
    assert manual.exit_code == 0, manual.output
    assert pd.read_csv(project / "manual" / "heldout_ids.csv", dtype={"id": str})["id"].tolist() == held.tolist()
    # the validation split is named by the run that drew it (not by this run's --val-fraction 0.1,
    # which drew nothing), and the few-images note does not advise --val-fraction here
    resolved = json.loads((project / "manual" / "config.json").read_text())["resolved"]
    assert resolved["val_split"] == "train[held out by exp]"
    said = " ".join(manual.output.split())
    assert "they are those exp held out (--heldout-from), so hold out more there" in said
    assert "hold out more with --val-fraction (now" not in said
    # without --heldout-from, a teacher that trained on part of the new hold-out is said
    taught = runner.invoke(app, ["train", str(prepared), "--labels", str(tmp_path / "manual.csv"), "--teacher",
                                 str(project / "exp"), "--size", "64", "--epochs", "1", "--batch", "7", "--amp", "off",
                                 "--project", str(project), "--name", "taught"])
    assert taught.exit_code == 0, taught.output
    drawn = set(pd.read_csv(project / "taught" / "heldout_ids.csv", dtype={"id": str})["id"])
    seen = len(drawn - set(held))
    assert seen > 0 and (f"{seen} of these {len(drawn)} images are ones exp (--teacher) trained on: --heldout-from "
                         in " ".join(taught.output.split()))
    # a folder without a hold-out is one line; on a store with valid/val the option is said to be unused
    missing = runner.invoke(app, ["train", str(prepared), "--heldout-from", str(tmp_path / "audit"), "--size", "64",
                                  "--epochs", "1", "--project", str(project), "--name", "missing"])
    assert missing.exit_code == 1 and "--heldout-from" in missing.output and "no heldout_ids.csv there" in missing.output
    with_valid = make_prepared(tmp_path / "with_valid", splits=SPLITS)
    unused = runner.invoke(app, ["train", str(with_valid), "--heldout-from", str(project / "exp"), "--size", "64",
                                 "--epochs", "1", "--batch", "7", "--amp", "off", "--baseline",
                                 "--project", str(project), "--name", "unused"])
    assert unused.exit_code == 0 and "--heldout-from is not used" in " ".join(unused.output.split()), unused.output
    # held-out ids of another store are one line; some of them a note
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "heldout_ids.csv").write_text("id\nelsewhere/0.png\nelsewhere/1.png\n")
    none_here = runner.invoke(app, ["train", str(prepared), "--heldout-from", str(foreign), "--size", "64", "--epochs", "1",
                                    "--project", str(project), "--name", "foreign"])
    assert none_here.exit_code == 1 and "none of the 2 images it held out is in train of" in " ".join(none_here.output.split())
    (foreign / "heldout_ids.csv").write_text("id\nelsewhere/0.png\n" + "\n".join(held) + "\n")
    some = runner.invoke(app, ["train", str(prepared), "--heldout-from", str(foreign), "--size", "64", "--epochs", "1",
                               "--batch", "7", "--amp", "off", "--baseline", "--project", str(project), "--name", "some"])
    assert some.exit_code == 0, some.output
    assert f"1 of the {len(held) + 1} images foreign held out are not in this run's train split" in " ".join(some.output.split())
    # an audit CSV away from its summary: the run is not known, and the line says to name it
    (tmp_path / "lone").mkdir()
    (tmp_path / "lone" / "audit.csv").write_bytes((tmp_path / "audit" / "audit.csv").read_bytes())
    lone = runner.invoke(app, ["clean", str(tmp_path / "lone" / "audit.csv"), str(prepared), "--threshold", "0.01",
                               "--out", str(tmp_path / "lone.csv")])
    text = " ".join(lone.output.split())
    assert lone.exit_code == 0 and "--heldout-from with the audited run's folder" in text and "--heldout-from /" not in text
    # an impossible option is named as such, before the check that reads the data with it
    bad = runner.invoke(app, ["train", str(prepared), "--rounds", "2", "--val-fraction", "-0.2", "--project", str(project)])
    assert bad.exit_code == 1 and "--val-fraction must lie in [0, 1)" in bad.output, bad.output


def test_resume_of_a_rounds_run_goes_on_with_the_rounds_left_and_names_follow_the_first(tmp_path, monkeypatch):
    import shutil

    from poi_cli import pipeline
    from poi_cli.core.locks import LockError, claim

    audited_while_claimed = []
    original = pipeline.cleaned_labels

    def cleaned_labels(run_dir, *args, **kwargs):  # the round being audited is claimed by the recipe
        with pytest.raises(LockError):
            with claim(run_dir, "run folder"):
                pass
        audited_while_claimed.append(Path(run_dir).name)
        return original(run_dir, *args, **kwargs)

    monkeypatch.setattr(pipeline, "cleaned_labels", cleaned_labels)
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    project = tmp_path / "runs"
    command = ["train", str(prepared), "--noise", "0.3", "--rounds", "2", "--clean-threshold", "0.05", "--size", "64",
               "--epochs", "1", "--batch", "7", "--amp", "off", "--project", str(project), "--name", "r"]
    assert runner.invoke(app, command).exit_code == 0
    assert audited_while_claimed == ["r"]
    first_round2 = (project / "r_round2" / "results.csv").read_text()
    shutil.rmtree(project / "r_round2")  # killed before round 2 began: round 1 is finished, its labels cleaned
    # while the recipe that trained round 1 audits it, a --resume of round 1 is refused at once (it
    # rewrote round 1's files and went on to its own audit, to stop only at round 2's folder)
    before = {p.name: p.read_bytes() for p in (project / "r").iterdir() if p.is_file()}
    repaired = []
    monkeypatch.setattr(pipeline, "repair_finished", lambda *args: repaired.append(args))
    with claim(project / "r", "run folder"):
        busy = runner.invoke(app, ["train", "--resume", str(project / "r")])
    assert busy.exit_code == 1 and "run folder" in busy.output and "is being written by" in busy.output
    assert {p.name: p.read_bytes() for p in (project / "r").iterdir() if p.is_file()} == before and not repaired
    monkeypatch.undo()
    resumed = runner.invoke(app, ["train", "--resume", str(project / "r")])
    assert resumed.exit_code == 0, resumed.output
    assert "going on with round 2 of 2" in resumed.output
    assert (project / "r_round2" / "results.csv").read_text().splitlines()[0] == first_round2.splitlines()[0]
    done = runner.invoke(app, ["train", "--resume", str(project / "r_round2")])
    assert done.exit_code == 1 and "already finished" in done.output  # the last round, finished: nothing left
    first_done = runner.invoke(app, ["train", "--resume", str(project / "r")])  # audited round 1 again, exit 0
    assert first_done.exit_code == 1 and "and the rounds after it already finished" in first_done.output
    again = runner.invoke(app, command)  # the same command again: a new numbered recipe, its rounds named after it
    assert again.exit_code == 0, again.output
    assert (project / "r2_round2" / "results.csv").is_file() and not (project / "r_round22").exists()


def test_rounds_stop_when_a_cleaning_changes_no_label(tmp_path):
    """Round N + 1 on unchanged labels would repeat round N (same labels, seed, options)."""
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    project = tmp_path / "runs"
    result = runner.invoke(app, ["train", str(prepared), "--noise", "0.3", "--rounds", "3", "--clean-threshold", "1.0",
                                 "--size", "64", "--epochs", "1", "--batch", "7", "--amp", "off", "--project", str(project)])
    assert result.exit_code == 0, result.output
    assert json.loads((project / "exp" / "clean" / "labels.json").read_text())["n_changed"] == 0
    assert "round 2: the audit of exp changed no label" in result.output and "exp is the last round" in result.output
    assert not (project / "exp_round2").exists() and not (project / "exp_round3").exists()


def test_a_taught_round_trains_on_unchanged_labels_instead_of_stopping(tmp_path):
    """With --rounds-teacher (or --rounds-fine-tune) round 2 is no repeat of round 1 when the
    cleaning changes no label: it trains on the same labels, taught by round 1 (as the bundled
    model's round 2 did, whose audit relabelled nothing)."""
    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    project = tmp_path / "runs"
    result = runner.invoke(app, ["train", str(prepared), "--rounds", "2", "--rounds-teacher", "--rounds-fine-tune", "1",
                                 "--clean-threshold", "1.0", "--size", "64", "--epochs", "1", "--batch", "7", "--amp", "off",
                                 "--project", str(project)])
    assert result.exit_code == 0, result.output
    labels = project / "exp" / "clean" / "labels.csv"
    assert json.loads(labels.with_suffix(".json").read_text())["n_changed"] == 0
    assert "changed no label" in " ".join(result.output.split()) and "is the last round" not in result.output
    assert "trains on the same labels, taught by exp and fine-tuned from exp" in " ".join(result.output.split())
    config = json.loads((project / "exp_round2" / "config.json").read_text())
    assert Path(config["teacher"]).name == Path(config["fine_tune"]).name == "exp"
    assert config["labels"] == str(labels.resolve())
    assert len(pd.read_csv(project / "exp_round2" / "results.csv")) == 1


def test_rounds_on_a_subset_label_file_keep_the_left_out_images_out(tmp_path):
    """A run trained on a `poi noise --subset` file audits only its own images; the cleaned
    file must still name every image of the split (label -1 for the others) to train on."""
    from poi_cli.data.noise import write_noisy_labels

    prepared = make_prepared(tmp_path / "data", splits=SPLITS)
    subset, _ = write_noisy_labels(prepared, 0.3, seed=0, subset=21, out=tmp_path / "subset.csv")
    left_out = set(pd.read_csv(subset).query("label == -1")["id"])
    project = tmp_path / "runs"
    result = runner.invoke(app, ["train", str(prepared), "--labels", str(subset), "--rounds", "2",
                                 "--clean-threshold", "0.05", "--size", "64",
                                 "--epochs", "1", "--batch", "7", "--amp", "off", "--project", str(project)])
    assert result.exit_code == 0, result.output
    assert json.loads((project / "exp" / "clean" / "labels.json").read_text())["n_not_audited"] == 7
    table = pd.read_csv(project / "exp" / "clean" / "labels.csv")
    assert len(table) == 28 and set(table.query("label == -1")["id"]) == left_out
    assert (table.query("label == -1")["action"] == "not audited").all()
    assert json.loads((project / "exp_round2" / "config.json").read_text())["resolved"]["n_train"] == 21


def test_auto_finds_the_held_out_images_through_a_checkpoint_of_the_run(tmp_path):
    import json as json_module

    from conftest import make_prepared
    from poi_cli.study.clean import validation_data

    store = PreparedDataset(make_prepared(tmp_path / "noval", splits={"train": 30}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json_module.dumps({"train_split": "train"}))
    held = store.split("train").ids[:6]
    pd.DataFrame({"id": held}).to_csv(run / "heldout_ids.csv", index=False)
    for model in (run, run / "best.pt"):  # the run folder, or its checkpoint as an audit names it
        data, reason = validation_data(model, store)
        assert list(data.ids) == list(held) and reason == "6 images of train the run held out"


def test_clean_labels_summary_by_hand():
    """Five audited images, threshold 0.5: a suspicion of exactly 0.5 is selected, a suggestion
    equal to the given label changes nothing, and the counts of the summary by hand."""
    table = pd.DataFrame({"id": list("abcde"), "given_label": [0, 1, 1, 2, 0], "suggested_label": [1, 1, 0, 2, 2],
                          "suspicion": [0.9, 0.5, 0.5, 0.2, 0.6], "clean_label": [1, 1, 1, 2, 0]})
    result = clean_labels(table, ["a", "b", "c"], threshold=0.5)
    assert result.labels["label"].tolist() == [1, 1, 0, 2, 2]
    assert result.labels["action"].tolist() == ["relabel", "", "relabel", "", "relabel"]
    summary = result.summary
    assert (summary["n_selected"], summary["n_changed"]) == (4, 3)  # b selected, its suggestion is its label
    assert summary["changed_wrong_before"] == 1 and summary["changed_right_before"] == 2  # a; c and e were right
    assert summary["changed_right_after"] == 1
    assert summary["noise_rate_before"] == pytest.approx(0.2) and summary["noise_rate_after"] == pytest.approx(0.4)


def test_auto_estimate_from_few_validation_images_is_said_rough_below_its_minimum():
    from types import SimpleNamespace

    from poi_cli.study.clean import AUTO_MIN_VALID, valid_caveat

    data = SimpleNamespace(classes=["a", "b"])
    enough = np.arange(AUTO_MIN_VALID) % 2
    assert valid_caveat(enough, np.array([0, 1]), data, "valid") is None
    assert "fewer than" in valid_caveat(enough[:-1], np.array([0, 1]), data, "valid")

