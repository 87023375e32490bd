"""Cross-fitted (out-of-fold) audit, issue 13: every training image scored by a model that
never trained on it, with the run's own recipe and labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from conftest import make_prepared, tiny_config
from poi_cli.cli import app
from poi_cli.data.folds import stratified_folds
from poi_cli.data.store import PreparedDataset
from poi_cli.study.audit import audit
from poi_cli.model.checkpoint import load_model
from poi_cli.model.predictions import predict_split
from poi_cli.pipeline import cross_fit_audit
from poi_cli.train.engine import train

RECIPE_FIELDS = ("arch", "input_size", "epochs", "batch", "lr", "seed", "use_pin", "temperature", "val_split")


def test_stratified_folds_deal_each_class_over_the_folds():
    labels = np.repeat([0, 1, 2], [5, 4, 3])
    folds = stratified_folds(labels, 3, seed=0)
    for c in range(3):
        counts = np.bincount(folds[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert sorted(np.bincount(folds, minlength=3)) == [4, 4, 4]
    assert np.array_equal(folds, stratified_folds(labels, 3, seed=0))


def test_cross_fit_audit_scores_every_image_out_of_fold(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"train": 4, "valid": 1})
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, batch=14, noise=0.3, noise_seed=2))
    out = tmp_path / "audit"
    result = cross_fit_audit(run, data, 2, out, device="cpu")
    table = result.table
    assert sorted(table["id"]) == sorted(pd.read_csv(data / "manifest.csv").query("split == 'train'")["id"])
    assert set(table["fold"]) == {0, 1}
    # the image is left out (-1) of the label file of the model that scored it, and kept in the other
    files = {k: pd.read_csv(out / "crossfit" / f"fold{k}_labels.csv", dtype={"id": str}).set_index("id") for k in (0, 1)}
    for row in table.itertuples():
        assert files[row.fold].loc[row.id, "label"] == -1
        assert files[1 - row.fold].loc[row.id, "label"] == row.given_label
    # the audited labels are the run's own noisy ones, and the fold models repeat its recipe
    run_config = json.loads((run / "config.json").read_text())
    assert result.summary["flipped"] == round(run_config["resolved"]["noise_realised_rate"] * 28)
    assert int(table["flipped"].sum()) == result.summary["flipped"] > 0
    for k in (0, 1):
        fold_config = json.loads((out / "crossfit" / f"fold{k}" / "config.json").read_text())
        assert {f: fold_config[f] for f in RECIPE_FIELDS} == {f: run_config[f] for f in RECIPE_FIELDS}
        assert fold_config["noise"] == 0.0 and fold_config["labels"].endswith(f"fold{k}_labels.csv")
        assert fold_config["resolved"]["n_train"] == 14  # half the 28 training images
    # each image's probabilities are those of its own fold's model, not the other's
    dataset = PreparedDataset(data)
    for k in (0, 1):
        rows = table[table["fold"] == k]
        index = dataset.manifest.set_index("id").loc[rows["id"], "store_index"].to_numpy()
        own = {}
        for m in (0, 1):
            model, _ = load_model(out / "crossfit" / f"fold{m}" / "best.pt")
            predicted = predict_split(model, dataset.faces, index, rows["given_label"].to_numpy(), 64, 8,
                                      torch.device("cpu"), False)
            own[m] = predicted.trn_probs[np.arange(len(rows)), rows["given_label"].to_numpy()]
        assert np.allclose(rows["trn_prob_given"], own[k], atol=1e-5)
        assert not np.allclose(rows["trn_prob_given"], own[1 - k], atol=1e-5)
    assert "out of fold" in result.summary["mode"]
    assert set(result.summary["detection"]) == {"pin_suspicion", "trn_one_minus_q"}

    stamp = (out / "crossfit" / "fold0" / "last.pt").stat().st_mtime_ns
    runner = CliRunner()
    done = runner.invoke(app, ["audit", str(run), str(data), "--cross-fit", "2", "--out", str(out), "--device", "cpu"])
    assert done.exit_code == 0, done.output
    assert (out / "crossfit" / "fold0" / "last.pt").stat().st_mtime_ns == stamp  # finished fold models are reused
    # ... but only by the same cross-fit: K = 3 into the same folder would score images with
    # the K = 2 models that trained on them (it used to, exit 0)
    other = runner.invoke(app, ["audit", str(run), str(data), "--cross-fit", "3", "--out", str(out), "--device", "cpu"])
    assert other.exit_code == 1 and "holds the fold models of another cross-fit (its folds differ" in other.stderr
    assert (out / "crossfit" / "fold0" / "last.pt").stat().st_mtime_ns == stamp
    cleaned = runner.invoke(app, ["clean", str(out / "audit.csv"), str(data), "--out", str(tmp_path / "labels.csv"),
                                  "--auto"])  # chosen on valid with the run's own model (audit_summary.json "model")
    assert cleaned.exit_code == 0, cleaned.output
    assert len(pd.read_csv(tmp_path / "labels.csv")) == 28
    assert json.loads((tmp_path / "labels.json").read_text())["auto"]["valid_images"] == 7
    # ... valid scored by the fold models that made the suggestions (audit_summary.json "fold_models")
    assert json.loads((tmp_path / "labels.json").read_text())["auto"]["valid_scored_by"] == 2
    fold_models = json.loads((out / "audit_summary.json").read_text())["fold_models"]
    assert fold_models == [str((out / "crossfit" / f"fold{k}").resolve()) for k in range(2)]

    refused = runner.invoke(app, ["audit", str(run), str(data), "--cross-fit", "2", "--split", "valid"])
    assert refused.exit_code != 0 and "--cross-fit audits the labels the run trained on" in refused.output
    not_a_run = runner.invoke(app, ["audit", str(run / "best.pt"), str(data), "--cross-fit", "2", "--out", str(tmp_path / "x")])
    assert not_a_run.exit_code != 0 and "needs a poi run folder" in not_a_run.output
    assert "Traceback" not in not_a_run.output
    config = json.loads((run / "config.json").read_text())  # a run on the annotators' votes: no label files to repeat it on
    (run / "config.json").write_text(json.dumps({**config, "soft_labels": True}))
    soft = runner.invoke(app, ["audit", str(run), str(data), "--cross-fit", "2", "--out", str(tmp_path / "y")])
    assert soft.exit_code != 0 and "audit it in sample" in soft.output and "Traceback" not in soft.output
    (run / "config.json").write_text(json.dumps(config))


def test_cross_fit_folds_keep_each_subject_whole(tmp_path):
    """Image-level folds put a CK+ subject's near-identical frames in the fold model that scored
    its other frames: an audit in sample in all but name."""
    data = make_prepared(tmp_path / "data", splits={"train": 4, "valid": 1})
    manifest = pd.read_csv(data / "manifest.csv")
    manifest["subject"] = [f"S{i // 3}" for i in range(len(manifest))]  # runs of 3 images
    manifest.to_csv(data / "manifest.csv", index=False)
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, batch=14))
    result = cross_fit_audit(run, data, 2, tmp_path / "audit", device="cpu")
    subject_of = manifest.set_index("id")["subject"]
    folds_per_subject = result.table.assign(subject=subject_of.loc[result.table["id"]].to_numpy()).groupby("subject")["fold"].nunique()
    assert (folds_per_subject == 1).all() and set(result.table["fold"]) == {0, 1}
    assert json.loads((tmp_path / "audit" / "crossfit" / "crossfit.json").read_text())["by_subject"] is True


def test_the_audit_of_a_fold_run_leaves_out_its_test_fold_in_sample_and_cross_fitted(tmp_path):
    """A --fold K run's audit scored fold K (its test set) as "the model's own training set",
    and --clean-cross-fit trained its fold models on fold K's labels: the test fold's labels
    reached the cleaned labels of round 2."""
    from conftest import add_folds

    data = add_folds(make_prepared(tmp_path / "data", splits={"train": 4, "valid": 1}), folds=3)
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, batch=14, fold="1"))
    test_ids = set(PreparedDataset(data).split("fold1").ids)
    in_sample = audit(run, data, device="cpu", amp="off")
    assert test_ids and not test_ids & set(in_sample.table["id"])
    assert len(in_sample.table) == 28 - len(test_ids) and "without fold1" in in_sample.summary["labels"]
    cross_fitted = cross_fit_audit(run, data, 2, tmp_path / "audit", device="cpu")
    assert not test_ids & set(cross_fitted.table["id"])
    for fold in (0, 1):  # the fold models never trained on the test fold's labels
        labels = pd.read_csv(tmp_path / "audit" / "crossfit" / f"fold{fold}_labels.csv", dtype={"id": str})
        assert (labels.set_index("id").loc[sorted(test_ids), "label"] == -1).all()


def test_the_audit_of_a_fold_run_with_noise_audits_the_labels_it_trained_on(tmp_path):
    """--fold K --noise: the run flips the labels of its training split without fold K, the
    audit flipped the whole split and then left fold K out: the flips fall in the order of the
    images, so 11 of the 19 labels it audited (and cleaned for round 2) were not the run's."""
    from conftest import add_folds
    from poi_cli.train.data import select_data

    data = add_folds(make_prepared(tmp_path / "data", splits={"train": 4, "valid": 1}), folds=3)
    config = tiny_config(data, tmp_path / "runs", epochs=1, batch=14, fold="1", noise=0.5)
    picked = select_data(config)
    trained = pd.Series(picked.labels, index=picked.train.ids)
    assert (picked.labels != picked.clean_labels).any()
    table = audit(train(config), data, device="cpu", amp="off").table.set_index("id")
    assert sorted(table.index) == sorted(trained.index)
    assert (table.loc[trained.index, "given_label"] == trained).all()


def test_cross_fit_models_of_a_run_that_held_images_out_never_train_on_them(tmp_path):
    """A store without valid/val: the fold models drew hold-outs of their own and trained on
    part of the run's held-out images, which --auto then scored as validation (in sample for
    the fold model that had trained on them). Each fold model now validates on the run's
    held-out images and trains on none of them."""
    data = make_prepared(tmp_path / "data", splits={"train": 6})
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, batch=14, val_fraction=0.3))
    held = set(pd.read_csv(run / "heldout_ids.csv", dtype={"id": str})["id"])
    result = cross_fit_audit(run, data, 2, tmp_path / "audit", device="cpu")
    assert set(result.table.loc[result.table["held_out"], "id"]) == held
    for fold in (0, 1):
        labels = pd.read_csv(tmp_path / "audit" / "crossfit" / f"fold{fold}_labels.csv", dtype={"id": str})
        fold_held = set(pd.read_csv(tmp_path / "audit" / "crossfit" / f"fold{fold}" / "heldout_ids.csv", dtype={"id": str})["id"])
        trained = set(labels.loc[labels["label"] >= 0, "id"]) - fold_held
        assert fold_held == held and not trained & held  # every fold model validates on all of them


def test_cross_fit_audit_of_a_run_that_left_images_out(tmp_path):
    """A run trained on a label file with dropped images (poi clean --drop): the fold label
    files still cover the split, and only the run's own images are audited."""
    data = make_prepared(tmp_path / "data", splits={"train": 4, "valid": 1})
    split = PreparedDataset(data).split("train")
    labels = split.labels.copy()
    labels[::4] = -1  # 7 of 28 left out
    label_file = tmp_path / "labels.csv"
    pd.DataFrame({"id": split.ids, "label": labels}).to_csv(label_file, index=False)
    run = train(tiny_config(data, tmp_path / "runs", epochs=1, batch=14, labels=str(label_file)))
    result = cross_fit_audit(run, data, 2, tmp_path / "audit", device="cpu")
    assert sorted(result.table["id"]) == sorted(split.ids[labels >= 0])
    fold0 = pd.read_csv(tmp_path / "audit" / "crossfit" / "fold0_labels.csv", dtype={"id": str}).set_index("id")
    assert len(fold0) == 28 and (fold0.loc[split.ids[labels < 0], "label"] == -1).all()
    # the in-sample audit of the same run scores the same 21 images (it once predicted all 28)
    assert sorted(audit(run, data, device="cpu").table["id"]) == sorted(split.ids[labels >= 0])


def test_rounds_clean_with_the_cross_fitted_audit_and_the_fraction_chosen_on_valid(tmp_path):
    data = make_prepared(tmp_path / "data", splits={"train": 4, "valid": 1})
    project = tmp_path / "runs"
    # with --rounds-teacher: each fold model repeats one training of the recipe, without the rounds'
    # options (they used to make every fold's config invalid: "--rounds-teacher needs --rounds 2")
    result = CliRunner().invoke(app, ["train", str(data), "--noise", "0.3", "--rounds", "2", "--clean-cross-fit", "2",
                                      "--rounds-teacher", "--size", "64", "--epochs", "1", "--batch", "14", "--amp", "off",
                                      "--project", str(project)])
    assert result.exit_code == 0, result.output
    summary = json.loads((project / "exp" / "clean" / "labels.json").read_text())
    assert summary["audit"] == "cross-fitted, 2 folds" and summary["auto"]["valid_images"] == 7
    assert summary["auto"]["valid_scored_by"] == 2  # the fold models, as they scored the training images
    assert (project / "exp" / "clean" / "crossfit" / "fold1" / "last.pt").is_file()
    labels = pd.read_csv(project / "exp" / "clean" / "labels.csv")
    assert len(labels) == 28 and summary["fraction"] == summary["auto"]["fraction"]
    # taught by round 1, round 2 trains on the cleaned labels also where the cleaning changed none
    config = json.loads((project / "exp_round2" / "config.json").read_text())
    assert config["labels"].endswith("labels.csv") and Path(config["teacher"]).name == "exp"
