"""`poi report` on small run folders written in the training format (config.json from
TrainConfig, results.csv with the engine's columns, best.pt a random 64 px model)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import add_folds, make_prepared, tiny_config, tiny_model, write_checkpoint
from poi_cli.model.checkpoint import save_checkpoint
from poi_cli.cli import app
from poi_cli.train.config import AUGMENTATION, LOSS, MODEL, OPTIMISER, TrainConfig
from poi_cli.train.engine import RESULT_COLUMNS
from poi_cli.core.manifests import class_names
from poi_cli.study.report import CALIBRATION_COLUMNS, SWITCHES, build_report, recipe_of

runner = CliRunner()


def make_run(folder: Path, epochs: dict[int, float], noise: float = 0.0, use_pin: bool = True, planned: int = 4,
             seed: int = 0, realised: float | None = None, **options) -> Path:
    """A run folder: config.json, results.csv with val_acc per listed epoch, best.pt;
    options: other TrainConfig fields."""
    folder.mkdir(parents=True)
    config = TrainConfig(input_size=64, epochs=planned, noise=noise, use_pin=use_pin, seed=seed, **options).to_dict()
    config["resolved"] = {"classes": list(class_names(7)),
                          "noise_realised_rate": noise * 0.95 if realised is None else realised}
    (folder / "config.json").write_text(json.dumps(config))
    rows = [{column: None for column in RESULT_COLUMNS} | {"epoch": e, "loss_total": 2.0 / e, "loss_ce_tar": 1.5 / e,
             "train_acc": 0.2 * e, "val_acc": acc, "lr": 0.1} for e, acc in epochs.items()]
    pd.DataFrame(rows, columns=RESULT_COLUMNS).to_csv(folder / "results.csv", index=False)
    write_checkpoint(folder / "best.pt", tiny_model(use_pin=use_pin), epoch=max(epochs), config=config)
    return folder


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs" / "train"
    make_run(root / "poi20", {1: 0.30, 2: 0.55, 4: 0.50}, noise=0.2)  # epoch 3 missing
    make_run(root / "base20", {1: 0.25, 2: 0.40}, noise=0.2, use_pin=False, planned=2)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a run")
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_report_inside_the_folder_of_its_runs_is_passed_over_silently(runs):
    """scripts/ferplus_study.sh writes PROJECT/report: every rerun said 'report: not a run folder'."""
    first = runner.invoke(app, ["report", str(runs), "--out", str(runs / "report")])
    assert first.exit_code == 0, first.stderr
    rerun = runner.invoke(app, ["report", str(runs), "--out", str(runs / "report")])
    assert rerun.exit_code == 0 and "not a run folder" not in rerun.stderr, rerun.stderr
    assert pd.read_csv(runs / "report" / "runs.csv")["run"].tolist() == ["base20", "poi20"]


def test_report_on_two_runs_writes_tables_and_curves(runs, tmp_path):
    before = snapshot(runs)
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(runs), str(tmp_path / "notes"), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "notes" in result.stderr and "not a run folder" in result.stderr
    for name in ("report.md", "runs.csv", "by_noise.csv", "strata.csv", "curves_poi20.png", "curves_base20.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "runs.csv", dtype={"missing_epochs": str}).set_index("run")
    poi, base = summary.loc["poi20"], summary.loc["base20"]
    assert poi["method"] == "POI" and base["method"] == "baseline"
    assert poi["best_val_acc"] == pytest.approx(0.55) and poi["best_epoch"] == 2
    assert poi["final_val_acc"] == pytest.approx(0.50) and poi["epochs_done"] == 3
    assert str(poi["missing_epochs"]) == "3" and poi["noise"] == pytest.approx(0.2)
    assert base["best_val_acc"] == pytest.approx(0.40) and pd.isna(base["missing_epochs"])
    assert summary[list(CALIBRATION_COLUMNS)].isna().all().all()  # the columns exist; no evaluation to fill them
    by_noise = pd.read_csv(out / "by_noise.csv").set_index("method")
    assert by_noise.loc["POI", "noise 20%"] == pytest.approx(0.55)
    assert by_noise.loc["baseline", "noise 20%"] == pytest.approx(0.40)
    markdown = (out / "report.md").read_text()
    assert "| poi20 | POI |  | 20.00 |" in markdown and "55.00" in markdown and "skipped" in markdown
    assert "(seeds)" not in markdown  # one run per method and noise: no spread to show
    assert snapshot(runs) == before  # run folders are only read


def test_runs_of_several_seeds_get_mean_and_range(runs, tmp_path):
    make_run(runs / "poi20_seed1", {1: 0.35, 2: 0.45, 3: 0.60, 4: 0.58}, noise=0.2, seed=1)
    report = build_report([runs], tmp_path / "report")
    seeds = pd.read_csv(tmp_path / "report" / "by_noise_seeds.csv", dtype={"seeds": str}).set_index("method")
    poi, base = seeds.loc["POI"], seeds.loc["baseline"]
    assert poi["runs"] == 2 and poi["seeds"] == "0 1" and base["runs"] == 1
    assert poi["final_mean_acc"] == pytest.approx((0.50 + 0.58) / 2)
    assert (poi["final_min_acc"], poi["final_max_acc"]) == pytest.approx((0.50, 0.58))
    assert (poi["best_min_acc"], poi["best_max_acc"]) == pytest.approx((0.55, 0.60))
    assert report.summary.set_index("run").loc["poi20_seed1", "seed"] == 1
    assert "(seeds)" in (tmp_path / "report" / "report.md").read_text()
    assert "more than once" not in (tmp_path / "report" / "report.md").read_text()


def test_a_seed_repeated_in_a_group_is_said_to_be_no_spread_over_seeds(runs, tmp_path):
    make_run(runs / "poi20_again", {1: 0.35, 2: 0.45, 3: 0.60, 4: 0.58}, noise=0.2, seed=0)  # poi20's seed and recipe
    build_report([runs], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "A seed comes more than once in POI at noise 0.2 (seeds 0 0)" in text and "baseline at noise" not in text


def test_runs_of_other_recipes_are_not_averaged_with_the_seeds(runs, tmp_path):
    # Two seeds of one recipe, one run at another temperature, two seeds with a teacher
    # (each its own teacher run): three groups at 20 %, each averaging only its own runs.
    make_run(runs / "poi20_seed1", {1: 0.35, 4: 0.60}, noise=0.2, seed=1)
    make_run(runs / "poi20_T1", {1: 0.30, 4: 0.40}, noise=0.2, temperature=1.0)
    for seed, acc in ((0, 0.70), (1, 0.66)):
        make_run(runs / f"poi20_teacher_seed{seed}", {1: 0.5, 4: acc}, noise=0.2, seed=seed,
                 teacher=str(runs / f"poi20_seed{seed}"))
    report = build_report([runs], tmp_path / "report")
    variants = report.summary.set_index("run")["variant"]
    assert variants["poi20"] == variants["poi20_seed1"] == variants["base20"] == ""
    assert variants["poi20_T1"] == "temperature=1.0"
    assert variants["poi20_teacher_seed0"] == variants["poi20_teacher_seed1"] == "teacher=yes, teacher_weight=1.0"
    seeds = pd.read_csv(tmp_path / "report" / "by_noise_seeds.csv", dtype={"seeds": str}, keep_default_na=False)
    poi = seeds[seeds["method"] == "POI"].set_index("variant")
    assert poi.loc["", "runs"] == 2 and poi.loc["", "final_mean_acc"] == pytest.approx((0.50 + 0.60) / 2)
    assert poi.loc["temperature=1.0", "runs"] == 1 and poi.loc["temperature=1.0", "final_mean_acc"] == pytest.approx(0.40)
    teacher = poi.loc["teacher=yes, teacher_weight=1.0"]
    assert teacher["runs"] == 2 and teacher["seeds"] == "0 1" and teacher["final_mean_acc"] == pytest.approx(0.68)
    by_noise = pd.read_csv(tmp_path / "report" / "by_noise.csv").set_index("method")
    assert by_noise.loc["POI (temperature=1.0)", "noise 20%"] == pytest.approx(0.40)
    assert by_noise.loc["POI", "noise 20%"] == pytest.approx((0.55 + 0.60) / 2)  # the mean of the seeds' best


def test_noise_of_a_label_file_and_of_a_clean_run(runs, tmp_path):
    """A run on a `poi noise` file reports the file's requested and realised rates (in that order);
    a run without noise 0 and 0, whatever its config holds."""
    labels = tmp_path / "noisy.csv"
    labels.write_text("id,label\n")
    labels.with_suffix(".json").write_text(json.dumps({"rate": 0.3, "realised_rate": 0.29}))
    make_run(runs / "poi_file", {1: 0.4, 4: 0.5}, labels=str(labels))
    clean = make_run(runs / "poi_clean", {1: 0.4, 4: 0.5})
    config = json.loads((clean / "config.json").read_text())
    config["resolved"]["noise_realised_rate"] = None  # what a run without noise records
    (clean / "config.json").write_text(json.dumps(config))
    rows = build_report([runs], tmp_path / "report").summary.set_index("run")
    assert (rows.loc["poi_file", "noise"], rows.loc["poi_file", "noise_realised"]) == pytest.approx((0.3, 0.29))
    assert (rows.loc["poi_clean", "noise"], rows.loc["poi_clean", "noise_realised"]) == (0.0, 0.0)


def test_runs_on_different_prepared_folders_are_never_averaged(runs, tmp_path):
    """Validation accuracies of two datasets are not seeds of one figure (they were, into one
    POI cell of Table II, when the recipe left the data out)."""
    make_run(runs / "poi20_sfew", {1: 0.20, 4: 0.30}, noise=0.2, data=str(tmp_path / "prepared" / "sfew64"))
    make_run(runs / "poi20_ck", {1: 0.60, 4: 0.80}, noise=0.2, data=str(tmp_path / "prepared" / "ck64"))
    report = build_report([runs], tmp_path / "report")
    assert report.summary.set_index("run").loc["poi20_sfew", "data"] == "sfew64"
    seeds = pd.read_csv(tmp_path / "report" / "by_noise_seeds.csv", dtype={"seeds": str}, keep_default_na=False)
    poi = seeds[seeds["method"] == "POI"].set_index("data")
    assert set(poi.index) == {"", "sfew64", "ck64"} and (poi["runs"] == 1).all()
    assert poi.loc["ck64", "final_mean_acc"] == pytest.approx(0.80) and poi.loc["sfew64", "best_mean_acc"] == pytest.approx(0.30)
    by_noise = pd.read_csv(tmp_path / "report" / "by_noise.csv", keep_default_na=False).set_index(["data", "method"])
    assert by_noise.loc[("ck64", "POI"), "noise 20%"] == pytest.approx(0.80)


def test_recipe_is_the_model_loss_optimiser_and_augmentation_options():
    # report.NOT_RECIPE lists the others by name: a new option of poi train lands on the right side
    recipe = {f.name for f in fields(TrainConfig) if f.metadata["section"] in (MODEL, LOSS, OPTIMISER, AUGMENTATION)}
    assert set(recipe_of(TrainConfig().to_dict())) == recipe - set(SWITCHES) | {"labels"}


def test_run_on_cleaned_labels_reports_the_noise_it_started_from(runs, tmp_path):
    # poi20 (20 % noise) audited and cleaned as `poi audit` and `poi clean` write it; a
    # second run trained on the cleaned file is "POI, cleaned (relabel)" at 20 %, with
    # the noise left after the cleaning as its realised rate.
    audit = runs / "poi20" / "audit"
    audit.mkdir()
    (audit / "audit_summary.json").write_text(json.dumps({"checkpoint": str(runs / "poi20" / "best.pt")}))
    clean = runs / "poi20" / "clean"
    clean.mkdir()
    (clean / "labels.csv").write_text("id,label,label_name\n")
    (clean / "labels.json").write_text(json.dumps({"mode": "relabel", "n_changed": 5, "audit": str(audit / "audit.csv")}))
    make_run(runs / "poi20_clean", {1: 0.4, 4: 0.62}, labels=str(clean / "labels.csv"), realised=0.12)
    report = build_report([runs], tmp_path / "report")
    row = report.summary.set_index("run").loc["poi20_clean"]
    assert row["noise"] == pytest.approx(0.2) and row["noise_realised"] == pytest.approx(0.12)
    assert row["variant"] == "labels=cleaned (relabel)"
    # where most runs are cleaned, the one that is not says so (it read 'labels=none')
    make_run(runs / "poi20_clean_b", {1: 0.4, 4: 0.62}, labels=str(clean / "labels.csv"), realised=0.12)
    variants = build_report([runs], tmp_path / "report_most").summary.set_index("run")["variant"]
    assert variants["poi20"] == "labels=not cleaned" and variants["poi20_clean_b"] == ""
    shutil.rmtree(runs / "poi20_clean_b")
    # `poi train --rounds` and `poi clean RUN` name the audited run itself, not an audit.csv: the same
    # row (its noise showed "-", and the round left by_noise.csv, the table --rounds is for)
    by_audit = (clean / "labels.json").read_text()
    (clean / "labels.json").write_text(json.dumps({"mode": "relabel", "n_changed": 5, "audit": str(runs / "poi20")}))
    row = build_report([runs], tmp_path / "report_run").summary.set_index("run").loc["poi20_clean"]
    assert row["noise"] == pytest.approx(0.2) and row["noise_realised"] == pytest.approx(0.12)
    (clean / "labels.json").write_text(by_audit)
    # the audited run gone: the noise is unknown rather than that of the cleaned file
    (audit / "audit_summary.json").unlink()
    report = build_report([runs], tmp_path / "report2")
    row = report.summary.set_index("run").loc["poi20_clean"]
    assert pd.isna(row["noise"]) and row["variant"] == "labels=cleaned (relabel)"
    # a summary that names no audit at all (written by hand, or by an older poi clean)
    (clean / "labels.json").write_text(json.dumps({"mode": "drop", "n_changed": 5}))
    report = build_report([runs], tmp_path / "report3")
    row = report.summary.set_index("run").loc["poi20_clean"]
    assert pd.isna(row["noise"]) and row["variant"] == "labels=cleaned (drop)"


def test_report_with_data_says_how_many_faces_a_run_was_scored_on(runs, tmp_path):
    """A 7-class run on an 8-class folder is scored without the contempt faces: runs.csv and
    report.md say on how many and why (the accuracies once sat side by side as if comparable)."""
    from conftest import make_prepared

    eight = make_prepared(tmp_path / "eight", num_classes=8, splits={"train": 2, "test": 2})
    report = build_report([runs / "poi20"], tmp_path / "out8", data=eight, split="test", device="cpu")
    row = report.summary.set_index("run").loc["poi20"]
    assert (row["eval_n"], row["eval_left_out"]) == (14, 2)  # 7 classes x 2 of the 16 test faces
    assert any("eval on 14 images" in note and "contempt" in note for note in report.runs[0].notes)
    markdown = (tmp_path / "out8" / "report.md").read_text()
    assert "eval_n" in markdown and "eval on 14 images" in markdown


def test_report_with_data_adds_confusion_consistency_strata_and_calibration(runs, prepared, tmp_path):
    report = build_report([runs / "poi20", runs / "base20"], tmp_path / "out", data=prepared, split="test", device="cpu")
    names = {p.name for p in report.files}
    assert {"confusion_poi20.png", "confusion_base20.png", "consistency_poi20.png"} <= names
    assert "consistency_base20.png" not in names and not any(n.startswith("confidence_") for n in names)
    assert any("no PIN" in note for note in report.runs[1].notes)
    strata = report.strata
    assert list(zip(strata["run"], strata["score"])) == ([("poi20", "confidence")] * 3 + [("poi20", "consistency")] * 3
                                                         + [("base20", "confidence")] * 3)
    assert list(strata["n"]) == [4, 7, 10] * 3  # 30/50/70% of 14 test images
    assert strata[["most_confident_accuracy", "least_confident_accuracy"]].stack().between(0, 1).all()
    assert report.summary["eval_acc"].between(0, 1).all()
    # no face of the test split is another split's: without the twins is every face
    assert (report.summary["eval_acc_without_twins"] == report.summary["eval_acc"]).all()
    summary = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run")
    poi, base = summary.loc["poi20"], summary.loc["base20"]
    assert poi[list(CALIBRATION_COLUMNS)].between(0, 1).all()
    assert pd.isna(base["aurc_consistency"]) and base[["ece_confidence", "aurc_max_softmax"]].between(0, 1).all()
    # the same figures as `poi evaluate` of the same model on the same split
    from poi_cli.study.evaluate import evaluate

    expected = evaluate(runs / "poi20", prepared, device="cpu")["calibration"]["scores"]
    assert poi["aurc_consistency"] == pytest.approx(expected["consistency"]["aurc"])
    assert poi["ece_confidence"] == pytest.approx(expected["confidence"]["ece"])
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "most confident (confidence)" in markdown and "least confident (consistency)" in markdown
    assert "## Calibration" in markdown and "aurc_consistency" in markdown


def test_report_takes_the_fold_splits_evaluate_takes(runs, prepared, tmp_path):
    """CK+ is cross-validated: `poi evaluate --split fold1` works, so must `poi report --split fold1`."""
    add_folds(prepared, folds=3)
    report = build_report([runs / "poi20"], tmp_path / "out", data=prepared, split="fold1", device="cpu")
    evaluation = report.runs[0].evaluation
    assert evaluation["split"] == "fold1" and evaluation["n_images"] == 14  # 42 train images in 3 folds
    result = runner.invoke(app, ["report", str(runs / "poi20"), "--data", str(prepared), "--split", "fold1",
                                 "--out", str(tmp_path / "cli"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for split, message in (("fold3", "fold 3 is not in 0..2"), ("nosuch", "no usable faces in split 'nosuch'")):
        result = runner.invoke(app, ["report", str(runs / "poi20"), "--data", str(prepared), "--split", split,
                                     "--out", str(tmp_path / split)])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
        assert "fold0, fold1, fold2" in result.output or split == "fold3"  # the names it would take


def test_run_whose_model_knows_no_class_of_the_data_gets_a_note(runs, prepared, tmp_path):
    best = runs / "poi20" / "best.pt"
    checkpoint = torch.load(best, weights_only=True)
    save_checkpoint(best, {**checkpoint, "classes": [f"other{k}" for k in range(7)]})
    report = build_report([runs / "poi20"], tmp_path / "out", data=prepared, split="test", device="cpu")
    note = report.runs[0].notes[0]
    assert note.startswith(f"no predictions: {runs / 'poi20'}: ") and "share none" in note
    assert not any(p.name.startswith("confusion_") for p in report.files)


def write_metrics(run: Path, **extra) -> None:
    """RUN/eval/metrics.json as `poi evaluate --out RUN/eval` writes it (the keys a report reads), plus `extra`."""
    (run / "eval").mkdir()
    metrics = {"split": "test", "accuracy": 0.6, "classes": ["fear", "happiness"], "confusion_matrix": [[3, 1], [1, 3]],
               **extra}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))


def stratum(most: float, least: float) -> dict:
    return {"fraction": 0.5, "n": 4, "most_confident_accuracy": most, "least_confident_accuracy": least}


def test_single_run_with_old_eval_metrics_and_a_run_without_epochs(runs, tmp_path):
    run = runs / "poi20"
    write_metrics(run, confidence_strata=[stratum(1.0, 0.5)])  # before calibration: strata of w, no consistency_strata
    empty = tmp_path / "fresh"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(TrainConfig(epochs=3).to_dict()))
    report = build_report([run, empty], tmp_path / "out")
    assert (tmp_path / "out" / "confusion_poi20.png").is_file()
    assert report.strata.iloc[0]["most_confident_accuracy"] == 1.0 and list(report.strata["score"]) == ["consistency"]
    summary = report.summary.set_index("run")
    assert summary.loc["poi20", "eval_acc"] == pytest.approx(0.6)
    assert summary.loc["poi20", list(CALIBRATION_COLUMNS)].isna().all()
    assert summary.loc["fresh", "epochs_done"] == 0 and pd.isna(summary.loc["fresh", "best_val_acc"])
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "no finished epoch" in markdown and "predates calibrated confidence" in markdown
    assert "most confident (consistency)" in markdown and "most confident (confidence)" not in markdown


def test_a_run_folder_that_cannot_be_read_is_skipped_with_a_note(runs, tmp_path, monkeypatch):
    """chmod 000 on one run of a folder of runs stopped the whole report ("Permission denied")."""
    import os

    locked = runs / "base20"
    real_is_file, real_listdir = Path.is_file, os.listdir

    def is_file(path):  # chmod 000 does not stop root, who may run this suite
        if locked in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)

    def listdir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(Path, "is_file", is_file)
    monkeypatch.setattr(os, "listdir", listdir)
    result = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"{locked}: cannot be read (Permission denied)" in result.stderr
    assert pd.read_csv(tmp_path / "out" / "runs.csv")["run"].tolist() == ["poi20"]


def test_an_evaluation_of_an_epoch_best_pt_no_longer_holds_is_left_out_with_a_note(runs, tmp_path):
    """`poi evaluate RUN --out RUN/eval` while the run trained on: the report showed its accuracy
    as best.pt's under a later best epoch, without a word."""
    write_metrics(runs / "poi20", checkpoint=str(runs / "poi20" / "best.pt"), epoch=2, n_images=8)
    report = build_report([runs / "poi20"], tmp_path / "out")
    assert pd.isna(report.summary.loc[0, "eval_acc"])
    assert any("is of epoch 2 of best.pt, which now holds epoch 4" in note for note in report.runs[0].notes)
    (runs / "poi20" / "eval" / "metrics.json").write_text(json.dumps(
        {"split": "test", "accuracy": 0.6, "checkpoint": str(runs / "poi20" / "best.pt"), "epoch": 4}))
    assert build_report([runs / "poi20"], tmp_path / "again").summary.loc[0, "eval_acc"] == pytest.approx(0.6)


def test_counts_stay_whole_numbers_and_a_baseline_has_no_pin_switches(runs, tmp_path):
    """eval_n read 56.0 (in runs.csv and report.md) where another run had no evaluation, and a
    baseline's PIN ablation switches read True, the defaults it ignored."""
    write_metrics(runs / "poi20", n_images=56, n_left_out=0)
    build_report([runs / "poi20", runs / "base20"], tmp_path / "out")
    text = (tmp_path / "out" / "runs.csv").read_text()
    rows = {row["run"]: row for row in csv.DictReader(text.splitlines())}
    assert (rows["poi20"]["eval_n"], rows["poi20"]["eval_left_out"], rows["base20"]["eval_n"]) == ("56", "0", "")
    assert (rows["poi20"]["best_epoch"], rows["base20"]["epochs_planned"]) == ("2", "2")
    assert [rows["base20"][k] for k in ("use_pin", "prior_supervision", "use_oim", "use_uem")] == ["False", "", "", ""]
    assert rows["poi20"]["use_uem"] == "True"
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| 56 |" in markdown and "56.0" not in markdown


def test_eval_metrics_with_calibration_fill_runs_csv_and_both_strata(runs, tmp_path):
    scores = {"max_softmax": {"ece": 0.2, "aurc": 0.3}, "confidence": {"ece": 0.05, "ece_floor": 0.02, "aurc": 0.3},
              "consistency": {"ece": 0.4, "aurc": 0.35}}
    write_metrics(runs / "poi20", confidence_strata=[stratum(0.9, 0.4)], consistency_strata=[stratum(0.8, 0.5)],
                  calibration={"scores": scores})
    write_metrics(runs / "base20", confidence_strata=[stratum(0.7, 0.6)], consistency_strata=None,
                  calibration={"scores": {**scores, "consistency": None}})
    build_report([runs], tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run")
    assert summary.loc["poi20", list(CALIBRATION_COLUMNS)].tolist() == pytest.approx([0.05, 0.02, 0.2, 0.3, 0.35, 0.3])
    assert pd.isna(summary.loc["base20", "aurc_consistency"]) and summary.loc["base20", "ece_confidence"] == 0.05
    strata = pd.read_csv(tmp_path / "out" / "strata.csv")
    assert strata.columns.tolist() == ["run", "score", "fraction", "n", "most_confident_accuracy", "least_confident_accuracy"]
    rows = {(r.run, r.score): r.most_confident_accuracy for r in strata.itertuples()}
    assert rows == {("poi20", "confidence"): 0.9, ("poi20", "consistency"): 0.8, ("base20", "confidence"): 0.7}
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| poi20 | 50.00 | 4 | 90.00 | 40.00 | 80.00 | 50.00 |" in markdown
    assert "| base20 | 50.00 | 4 | 70.00 | 60.00 | - | - |" in markdown
    assert "predates" not in markdown
    build_report([runs / "base20"], tmp_path / "base")  # no run with a consistency AURC
    assert "| base20 | 0.05 | 0.02 | 0.2 | 0.3 | - | 0.3 |" in (tmp_path / "base" / "report.md").read_text()


def test_report_without_runs_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "no run folders" in result.stderr and result.stderr.count("\n") == 1


def test_a_results_csv_without_an_epoch_column_is_a_one_line_error(tmp_path):
    run = tmp_path / "badrun"
    run.mkdir()
    (run / "config.json").write_text("{}")
    for content in ("garbage,,,\n1,2\n", "garbage,loss\n"):  # rows, or only a header
        (run / "results.csv").write_text(content)
        result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "out")])
        assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
        assert "has no epoch column" in result.stderr and result.stderr.count("\n") == 1


def test_a_results_csv_whose_epoch_is_not_a_number_is_skipped_with_its_reason(runs, tmp_path):
    """epoch 'foo' was read as a run with 0 epochs; it is skipped, as the other bad run folders are."""
    bad = tmp_path / "badepoch"
    make_run(bad, {1: 0.3, 2: 0.4})
    results = pd.read_csv(bad / "results.csv")
    results["epoch"] = results["epoch"].astype(object)
    results.loc[1, "epoch"] = "foo"
    results.to_csv(bad / "results.csv", index=False)
    result = runner.invoke(app, ["report", str(runs / "poi20"), str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "epoch 'foo' is not a whole number" in result.stderr
    assert pd.read_csv(tmp_path / "out" / "runs.csv")["run"].tolist() == ["poi20"]
    alone = runner.invoke(app, ["report", str(bad), "--out", str(tmp_path / "alone")])
    assert alone.exit_code == 1 and "is not a whole number" in alone.stderr and alone.stderr.count("\n") == 1
    assert not (tmp_path / "alone").exists()


def test_the_closing_line_names_the_files_written(runs, tmp_path):
    """It said `(report.md, runs.csv, by_noise.csv, strata.csv, PNGs)` whatever was written."""
    fresh = tmp_path / "fresh"  # no finished epoch: no curves
    fresh.mkdir()
    (fresh / "config.json").write_text(json.dumps(TrainConfig(epochs=3).to_dict()))
    result = runner.invoke(app, ["report", str(fresh), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "wrote 5 files in" in result.stdout and "PNG" not in result.stdout
    assert "(report.md, runs.csv, by_noise.csv, by_noise_seeds.csv, strata.csv)" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["by_noise.csv", "by_noise_seeds.csv", "report.md",
                                                                    "runs.csv", "strata.csv"]
    result = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "two")])
    assert "wrote 7 files in" in result.stdout and "strata.csv, 2 PNGs)" in result.stdout, result.stdout


@dataclass(frozen=True)
class CrossValidation:
    data: Path  # a store named ck48 with 3 folds and no test or validation split (CK+'s shape)
    folder: Path  # `poi train --fold all --name cv` on it: cv/fold0..2, cv.csv, cv.json
    plain: Path  # a run without --fold, of the same recipe and seed, on another store also named ck48


@pytest.fixture(scope="module")
def cross_validation(tmp_path_factory) -> CrossValidation:
    """Trained once for the module (1 epoch each, baseline); read it, or copy it to change it."""
    from rich.console import Console

    from poi_cli.pipeline import train_folds
    from poi_cli.train.engine import train

    root = tmp_path_factory.mktemp("cross_validation")
    quiet = Console(file=io.StringIO())
    data = add_folds(make_prepared(root / "here" / "ck48", splits={"train": 2}), folds=3)
    train_folds(tiny_config(data, root / "runs", epochs=1, use_pin=False, name="cv", fold="all"), quiet)
    other = make_prepared(root / "there" / "ck48", splits={"train": 2, "test": 1}, seed=1)
    plain = train(tiny_config(other, root / "plain", epochs=1, use_pin=False, name="random"), quiet)
    return CrossValidation(data, root / "runs" / "cv", plain)


def test_a_cross_validation_is_one_row_of_its_test_accuracy_not_seeds_of_one_recipe(cross_validation, tmp_path):
    """The fold runs of a --fold all were averaged as seeds of one recipe ("those runs repeat one
    another"), by their validation accuracies, though each trains on other data."""
    cv = cross_validation.folder
    saved = json.loads((cv / "cv.json").read_text())
    report = build_report([cv], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "more than once" not in text and "(seeds)" not in text
    assert not (tmp_path / "report" / "by_noise_seeds.csv").read_text().strip()  # no validation accuracy is averaged
    assert report.summary["run"].tolist() == ["cv_fold0", "cv_fold1", "cv_fold2"]
    assert report.summary["fold"].tolist() == ["fold0", "fold1", "fold2"]
    table = pd.read_csv(tmp_path / "report" / "cross_validation.csv", keep_default_na=False)
    assert len(table) == 1 and (table.loc[0, "cv"], table.loc[0, "folds"], table.loc[0, "runs"]) == (str(cv), 3, 3)
    for key in ("accuracy_mean", "accuracy_std", "accuracy_pooled", "n_test"):
        assert table.loc[0, key] == pytest.approx(saved[key]), key
    assert table.loc[0, "source"] == "cv.json" and table.loc[0, "method"] == "baseline"
    assert "## Cross-validation (test accuracy over folds)" in text and "not their validation accuracies" in text
    assert f"{100 * saved['accuracy_mean']:.2f} ± {100 * saved['accuracy_std']:.2f}" in text

    # without cv.json (a --fold all stopped before its end): the same figures from the folds' eval/metrics.json
    copy = tmp_path / "copy" / "cv"
    shutil.copytree(cv, copy)
    (copy / "cv.json").unlink()
    again = build_report([copy], tmp_path / "again").cross_validation
    assert again.loc[0, "source"] == "fold runs' evaluations" and again.loc[0, "folds"] == 3
    for key in ("accuracy_mean", "accuracy_std", "accuracy_pooled", "n_test"):
        assert again.loc[0, key] == pytest.approx(saved[key]), key
    shutil.rmtree(copy / "fold2" / "eval")  # one fold not evaluated: left out, and said so
    short = build_report([copy], tmp_path / "short")
    assert short.cross_validation.loc[0, "folds"] == 2
    text = (tmp_path / "short" / "report.md").read_text()
    assert "cv_fold2 left out: no evaluation on its own held-out fold" in text

    # `poi report PROJECT`: the --fold all folder in it counts as its fold runs (it was skipped, "not a run folder")
    result = runner.invoke(app, ["report", str(cv.parent), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.stderr
    assert pd.read_csv(tmp_path / "cli" / "runs.csv")["run"].tolist() == ["cv_fold0", "cv_fold1", "cv_fold2"]


def test_fold_runs_trained_one_by_one_are_one_cross_validation_of_the_folds_they_cover(cross_validation, tmp_path):
    """--fold K runs outside a --fold all folder (trained one by one, e.g. under torchrun): one row from
    their own evaluations, which says how many of the store's folds it covers."""
    for fold in (0, 2):
        shutil.copytree(cross_validation.folder / f"fold{fold}", tmp_path / "runs" / f"k{fold}")
    report = build_report([tmp_path / "runs"], tmp_path / "report")
    row = report.cross_validation.iloc[0]
    assert len(report.cross_validation) == 1 and (row["cv"], row["folds"], row["source"]) == ("", 2, "fold runs' evaluations")
    per_fold = pd.read_csv(cross_validation.folder / "cv.csv").set_index("fold")
    assert row["accuracy_mean"] == pytest.approx(per_fold.loc[[0, 2], "accuracy"].mean())
    assert "fold runs k0 k2: 2 of the store's 3 folds, not the whole cross-validation" in (
        tmp_path / "report" / "report.md").read_text()


def test_report_data_without_split_scores_each_fold_run_on_its_own_fold(cross_validation, tmp_path):
    """Without --split, --data on a store without test or valid (CK+) stopped ("--split test: ...")
    where `poi evaluate` picks each run's own held-out fold."""
    cv, data = cross_validation.folder, cross_validation.data
    report = build_report([cv], tmp_path / "own", data=data, device="cpu")
    rows = report.summary.set_index("run")
    assert rows["eval_split"].tolist() == ["fold0", "fold1", "fold2"]
    for fold in range(3):  # the figures `poi train --fold all` wrote for that fold
        metrics = json.loads((cv / f"fold{fold}" / "eval" / "metrics.json").read_text())
        assert rows.loc[f"cv_fold{fold}", "eval_acc"] == pytest.approx(metrics["accuracy"])
        assert rows.loc[f"cv_fold{fold}", "eval_n"] == metrics["n_images"]
    result = runner.invoke(app, ["report", str(cv), "--data", str(data), "--out", str(tmp_path / "cli"),
                                 "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "cli" / "runs.csv")["eval_split"].tolist() == ["fold0", "fold1", "fold2"]


def test_report_data_does_not_score_a_fold_run_on_a_fold_it_trained_on(cross_validation, tmp_path):
    """--split fold1 scored every fold run on fold 1, though two of the three trained on it, without a word."""
    report = build_report([cross_validation.folder], tmp_path / "fold1", data=cross_validation.data, split="fold1",
                          device="cpu")
    notes = {run.path.name: run.notes for run in report.runs}
    assert report.runs[1].evaluation["split"] == "fold1" and not any("not scored" in n for n in notes["fold1"])
    for name, own in (("fold0", "fold0"), ("fold2", "fold2")):
        assert notes[name][-1] == (f"not scored on --split fold1: it trained on fold1 (it holds out {own}, its own test "
                                   "fold); without --split each --fold run is scored on its own held-out fold")
        assert notes[name][0].startswith("its val accuracies are on") and len(notes[name]) == 2  # held out of train
    assert {p.name for p in report.files if p.name.startswith("confusion_")} == {"confusion_cv_fold1.png"}
    text = (tmp_path / "fold1" / "report.md").read_text()
    assert text.count("not scored on --split fold1") == 2


def test_runs_on_two_stores_of_one_name_or_of_two_protocols_are_never_averaged(cross_validation, tmp_path):
    """Runs were grouped by the prepared folder's name: a random-split run on another ck48 was
    averaged with the fold runs of this ck48 into one row."""
    cv, plain = cross_validation.folder, cross_validation.plain
    copy = tmp_path / "elsewhere"  # the same recipe and seed on a third store named ck48
    shutil.copytree(plain, copy)
    config = json.loads((copy / "config.json").read_text())
    config["data"] = str(tmp_path / "third" / "ck48")
    (copy / "config.json").write_text(json.dumps(config))
    report = build_report([cv, plain, copy], tmp_path / "report")
    here, there, third = (str(path.resolve()) for path in (cross_validation.data, Path(json.loads(
        (plain / "config.json").read_text())["data"]), tmp_path / "third" / "ck48"))
    seeds = pd.read_csv(tmp_path / "report" / "by_noise_seeds.csv", keep_default_na=False)
    assert len(seeds) == 2 and (seeds["runs"] == 1).all()  # neither with the other nor with the fold runs
    assert sorted(seeds["data"]) == sorted([there, third])
    data = report.summary.set_index("run")["data"]
    assert data.tolist() == [here, here, here, there, third]  # by path: the name ck48 is three stores
    assert report.cross_validation["data"].tolist() == [here]
    by_noise = pd.read_csv(tmp_path / "report" / "by_noise.csv", keep_default_na=False)
    assert sorted(by_noise["data"]) == sorted([there, third])
    assert "more than once" not in (tmp_path / "report" / "report.md").read_text()


def test_a_fold_run_is_scored_on_its_own_fold_by_any_name_of_it(tmp_path):
    """report compared split names: --split fold01 of the run that holds out fold 1 was 'trained on'."""
    from poi_cli.data.store import PreparedDataset
    from poi_cli.study.report import trained_on

    data = add_folds(make_prepared(tmp_path / "ck", splits={"train": 3}), folds=3)
    config = {"data": str(data), "train_split": "train", "fold": "1", "resolved": {"test_split": "fold1"}}
    dataset = PreparedDataset(data)
    assert trained_on(config, dataset, "fold01") is None and trained_on(config, dataset, "fold1") is None
    assert trained_on(config, dataset, "fold02").startswith("it trained on fold02 (it holds out fold1")


def test_a_run_validated_on_its_own_hold_out_says_so(tmp_path):
    """RAF-DB (train and test only): best_val_acc was on each run's own hold-out of train, with
    its (noisy) training labels, and report.md said nothing; runs of other hold-outs or labels
    are not compared on the same images there."""
    root = tmp_path / "runs"
    run = make_run(root / "raf20", {1: 0.3, 2: 0.4}, noise=0.2, planned=2)
    config = json.loads((run / "config.json").read_text())
    config["resolved"].update(val_split="train[held out 0.1]", n_val=31)
    (run / "config.json").write_text(json.dumps(config))
    make_run(root / "ferplus", {1: 0.5}, planned=1)  # validated on a store's valid split: no note
    report = build_report([root], tmp_path / "report")
    text = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "raf20: its val accuracies are on 31 images it held out of train, with the labels it trained on" in text
    assert "ferplus: its val accuracies" not in text and report.summary is not None
