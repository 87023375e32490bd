"""Fast unit tests of poi_cli/pipeline.py: the cleaning between rounds (cleaned_labels), the rounds
(train_rounds, later_rounds, fine_tuned_round), --resume of a round (resume_rounds), --fold all
(train_folds, train_or_resume, check_same_cv) and the cross-fit's checks (cross_fit_audit,
check_same_cross_fit, labels_digest).

Nothing here trains: train, clean, clean_audit, cross_fit_audit, evaluate and the checkpoint
readers of poi_cli.pipeline are replaced by fakes that record their arguments and write the files
the real ones would (config.json, a last.pt whose text is its epoch, labels.csv, metrics.json).
Each test guards one bug a mutation audit found the rest of the suite let through.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import add_folds, make_prepared
from poi_cli import pipeline
from poi_cli.core.locks import LockError, claim
from poi_cli.study.audit import AuditError
from poi_cli.study.clean import CleanResult
from poi_cli.train.config import TrainConfig, TrainError
from poi_cli.train.engine import TrainingInterrupted


# --------------------------------------------------------------------------- fakes


class FakeRuns:
    """Stands in for training: train() records its config and writes the run folder as a finished
    run (config.json, heldout_ids.csv, last.pt holding its epoch as text); the checkpoint readers
    read that text."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.trained: list[TrainConfig] = []
        self.cleaned: list[Path] = []
        self.repaired: list[Path] = []
        self.announced: list[str] = []
        self.n_changed = 2
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        monkeypatch.setattr(pipeline, "train", self.train)
        monkeypatch.setattr(pipeline, "cleaned_labels", self.cleaned_labels)
        monkeypatch.setattr(pipeline, "read_checkpoint_info", lambda path: SimpleNamespace(epoch=epoch_of(path)))
        monkeypatch.setattr(pipeline, "load_checkpoint", lambda path: {"epoch": epoch_of(path)})
        monkeypatch.setattr(pipeline, "repair_finished", lambda run_dir, checkpoint: self.repaired.append(run_dir))

    def train(self, config: TrainConfig, console=None) -> Path:
        self.trained.append(config)
        if config.resume:  # resumed to its end: the epochs of its own config.json
            run_dir = Path(config.resume)
            (run_dir / "last.pt").write_text(str(json.loads((run_dir / "config.json").read_text())["epochs"]))
            return run_dir
        return write_run(Path(config.project) / config.name, config, config.epochs)

    def cleaned_labels(self, run_dir: Path, config: TrainConfig, device: str):
        with pytest.raises(LockError):  # the round being audited is claimed by the recipe
            with claim(run_dir, "run folder"):
                pass
        self.cleaned.append(run_dir)
        return run_dir / "clean" / "labels.csv", {"n_changed": self.n_changed}

    def names(self) -> list[str]:
        return [Path(c.resume).name if c.resume else c.name for c in self.trained]


def epoch_of(last_pt: Path) -> int:
    """The epoch a fake last.pt holds (its text)."""
    return int(Path(last_pt).read_text())


def write_run(run_dir: Path, config: TrainConfig, epoch: int | None, **resolved) -> Path:
    """A run folder: config.json (with `resolved`), and last.pt holding `epoch` (none when None)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    values = {**config.to_dict(), "resume": None, "resolved": {"n_train": 10, **resolved}}
    (run_dir / "config.json").write_text(json.dumps(values))
    (run_dir / "heldout_ids.csv").write_text("id\ntrain/a\n")
    if epoch is not None:
        (run_dir / "last.pt").write_text(str(epoch))
    return run_dir


def recipe(tmp_path: Path, **options) -> TrainConfig:
    """Round 1's options: 2 epochs at lr 0.05 with --noise 0.3, cleaned at threshold 0.5 (no data read)."""
    values = dict(data=str(tmp_path / "data"), project=str(tmp_path / "runs"), name="exp", epochs=2, lr=0.05,
                  noise=0.3, clean_threshold=0.5, warmup_epochs=1.0, rounds=3)
    return TrainConfig(**{**values, **options})


# --------------------------------------------------------------------------- cleaned_labels


def fake_clean_result(n_changed: int) -> CleanResult:
    return CleanResult(labels=pd.DataFrame({"id": ["train/a", "train/b"], "label": [1, 0]}),
                       summary={"n_changed": n_changed})


def test_cleaned_labels_relabel_the_run_s_training_split_in_sample_and_choose_the_fraction_only_without_threshold(
        tmp_path, monkeypatch):
    # guards: auto inverted; "drop" for "relabel"; the split of the cleaning not passed (clean's default: the audit's)
    calls = []
    monkeypatch.setattr(pipeline, "clean",
                        lambda *args, **kwargs: (calls.append((args, kwargs)), fake_clean_result(3))[1])
    run = tmp_path / "exp"
    for threshold, auto in ((0.4, False), (None, True)):
        config = TrainConfig(data="store", train_split="valid", val_split="val", clean_threshold=threshold)
        out, summary = pipeline.cleaned_labels(run, config, "cpu")
        assert out == run / "clean" / "labels.csv" and summary == {"n_changed": 3}
        args, kwargs = calls[-1]
        assert args == (run, "store", "relabel")
        assert kwargs == {"threshold": threshold, "split": "valid", "device": "cpu", "auto": auto}
        assert pd.read_csv(out)["label"].tolist() == [1, 0]
        assert json.loads(out.with_suffix(".json").read_text()) == {"n_changed": 3}
        (run / "clean" / "labels.json").unlink()  # a kill between the two files: cleaned again


def test_cleaned_labels_are_reused_only_when_both_files_were_written_and_otherwise_replaced(tmp_path, monkeypatch):
    # guards: labels.csv alone taken for a finished cleaning (json of a missing file); a half-written
    # cleaning not replaced (write_clean without replace=True refuses other contents); a finished cleaning redone
    calls = []
    monkeypatch.setattr(pipeline, "clean", lambda *args, **kwargs: (calls.append(args), fake_clean_result(1))[1])
    run = tmp_path / "exp"
    (run / "clean").mkdir(parents=True)
    (run / "clean" / "labels.csv").write_text("id,label\ntrain/a,6\n")  # killed before labels.json
    config = TrainConfig(data="store", clean_threshold=0.5)
    out, summary = pipeline.cleaned_labels(run, config)
    assert len(calls) == 1 and summary == {"n_changed": 1}
    assert pd.read_csv(out)["label"].tolist() == [1, 0]
    (run / "clean" / "labels.json").write_text(json.dumps({"n_changed": 7}))
    again, summary = pipeline.cleaned_labels(run, config)
    assert len(calls) == 1 and again == out and summary == {"n_changed": 7}


def test_cleaned_labels_cross_fitted_give_k_the_clean_folder_and_the_fold_models_to_clean_audit(tmp_path, monkeypatch):
    # guards: K hard-wired; the fold models not passed (--auto then scores valid with the run's own model);
    # "drop" for "relabel"; auto inverted
    audits, cleans = [], []
    table = pd.DataFrame({"id": ["train/a"]})

    def cross_fit_audit(*args):
        audits.append(args)
        return SimpleNamespace(table=table, summary={"fold_models": ["m0", "m1", "m2"]})

    def clean_audit(*args, **kwargs):
        cleans.append((args, kwargs))
        return fake_clean_result(0)

    monkeypatch.setattr(pipeline, "cross_fit_audit", cross_fit_audit)
    monkeypatch.setattr(pipeline, "clean_audit", clean_audit)
    monkeypatch.setattr(pipeline, "PreparedDataset", lambda path: ("store", path))
    run = tmp_path / "exp"
    config = TrainConfig(data="data", clean_cross_fit=3, train_split="train")
    out, summary = pipeline.cleaned_labels(run, config, "cpu")
    assert audits == [(run, "data", 3, run / "clean", "cpu")]
    args, kwargs = cleans[0]
    assert args == (table, ("store", "data"), "train", run, "cross-fitted, 3 folds", "relabel", None)
    assert kwargs == {"auto": True, "device": "cpu", "fold_models": ["m0", "m1", "m2"]}
    assert summary == {"n_changed": 0} and out.is_file()


# --------------------------------------------------------------------------- rounds


def test_idle_round_options_say_the_teacher_note_only_with_rounds_teacher():
    # guards: the note of --teacher given to round 1 said without --rounds-teacher
    assert pipeline.idle_round_options(TrainConfig(teacher="run")) == []
    assert pipeline.idle_round_options(TrainConfig(rounds=2, teacher="run")) == []
    # guards: the cleaning's options said to be idle with the rounds that use them
    assert pipeline.idle_round_options(TrainConfig(rounds=2, clean_threshold=0.5)) == []


def test_auto_clean_problem_names_a_circular_split_and_a_hold_out_too_small(tmp_path):
    # guards: the circular check inverted (every store with valid refused); the hold-out check inverted
    with_valid = make_prepared(tmp_path / "valid", splits={"train": 1, "valid": 1})
    assert pipeline.auto_clean_problem(TrainConfig(data=str(with_valid))) is None
    assert pipeline.auto_clean_problem(TrainConfig(data=str(with_valid), train_split="valid")) == (
        "it would estimate the noise on valid, the split it cleans (circular)")
    one_each = make_prepared(tmp_path / "one_each", splits={"train": 1})  # 7 images: 10 % holds none out
    assert "holds no images out: no validation" in pipeline.auto_clean_problem(TrainConfig(data=str(one_each)))
    three_each = make_prepared(tmp_path / "three_each", splits={"train": 3})  # 21 images: 10 % holds some out
    assert pipeline.auto_clean_problem(TrainConfig(data=str(three_each))) is None
    assert pipeline.auto_clean_problem(TrainConfig(data=str(three_each), val_fraction=0)) == (
        f"{three_each} has no valid/val split and the run holds no images out (--val-fraction 0)")


def test_three_rounds_each_audit_and_learn_from_the_round_before(tmp_path, monkeypatch):
    # guards: the last round never trained (range end), round 2 skipped, round 1 audited/claimed/teaching/
    # fine-tuning/holding out for every round, a change of one label taken for none, the runs repeated in the result
    fake = FakeRuns(monkeypatch)
    fake.n_changed = 1
    config = recipe(tmp_path, rounds_teacher=True, rounds_fine_tune=1, pretrained="imagenet", fine_tune=None)
    runs = pipeline.train_rounds(config, announce=fake.announced.append)
    project = tmp_path / "runs"
    assert runs == [project / "exp", project / "exp_round2", project / "exp_round3"]
    assert fake.cleaned == runs[:2]
    assert fake.names() == ["exp", "exp_round2", "exp_round3"]
    for previous, taught in zip(runs[:2], fake.trained[1:]):
        assert (taught.teacher, taught.fine_tune, taught.heldout_from) == (str(previous),) * 3
        assert taught.labels == str(previous / "clean" / "labels.csv") and taught.noise == 0.0
        # fine_tuned_round: rounds_fine_tune epochs at 0.4 x lr, cosine, no warm-up, no --pretrained
        assert (taught.epochs, taught.lr, taught.schedule, taught.warmup_epochs, taught.pretrained) == (
            1, 0.02, "cosine", 0.0, None)
        assert (taught.project, taught.exist_ok, taught.resume) == (str(project), True, None)
    assert fake.announced[-1] == f"round 3: labels cleaned by exp_round2 -> {runs[1] / 'clean' / 'labels.csv'}"


def test_rounds_are_checked_before_round_1_trains(tmp_path, monkeypatch):
    # guards: check_rounds skipped by train_rounds (round 1 trained, then the recipe failed); WORLD_SIZE 2 let through
    fake = FakeRuns(monkeypatch)
    with pytest.raises(TrainError, match="--rounds needs the PIN"):
        pipeline.train_rounds(recipe(tmp_path, rounds=2, use_pin=False))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainError, match="--rounds runs one process"):
        pipeline.train_rounds(recipe(tmp_path, rounds=2))
    assert fake.trained == []


def test_one_round_on_a_store_without_validation_needs_no_clean_threshold(tmp_path, monkeypatch):
    # guards: the --auto check of the cleaning between rounds applied to a single round
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = make_prepared(tmp_path / "data", splits={"train": 1})
    pipeline.check_rounds(TrainConfig(data=str(data), val_split="none"))
    with pytest.raises(TrainError, match=r"holds no images out \(--val-split none\)"):
        pipeline.check_rounds(TrainConfig(data=str(data), val_split="none", rounds=2))


def test_an_unchanged_cleaning_stops_the_rounds_once(tmp_path, monkeypatch):
    # guards: `continue` for `break` (later rounds audited the same run again for nothing)
    fake = FakeRuns(monkeypatch)
    fake.n_changed = 0
    runs = pipeline.train_rounds(recipe(tmp_path, rounds=4), announce=fake.announced.append)
    assert runs == [tmp_path / "runs" / "exp"] and fake.cleaned == runs and fake.names() == ["exp"]
    assert sum("changed no label" in line for line in fake.announced) == 1


def test_an_unchanged_cleaning_with_rounds_fine_tune_alone_trains_the_next_round(tmp_path, monkeypatch):
    # guards: only --rounds-teacher counted as making the next round a new run
    fake = FakeRuns(monkeypatch)
    fake.n_changed = 0
    runs = pipeline.train_rounds(recipe(tmp_path, rounds=2, rounds_fine_tune=1), announce=fake.announced.append)
    assert [r.name for r in runs] == ["exp", "exp_round2"] and fake.trained[1].fine_tune == str(runs[0])
    assert "round 2 trains on the same labels, fine-tuned from exp" in fake.announced[-1]


def test_an_interrupt_in_the_audit_of_round_2_names_round_2(tmp_path, monkeypatch):
    # guards: TrainingInterrupted naming round 1 (its --resume would audit round 1 again)
    FakeRuns(monkeypatch)
    seen = []

    def stopped_in_round_3(run_dir, config, device):
        seen.append(run_dir)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return run_dir / "clean" / "labels.csv", {"n_changed": 5}

    monkeypatch.setattr(pipeline, "cleaned_labels", stopped_in_round_3)
    with pytest.raises(TrainingInterrupted) as stop:
        pipeline.train_rounds(recipe(tmp_path))
    assert stop.value.run_dir == tmp_path / "runs" / "exp_round2"


def test_a_run_in_a_rounds_folder_that_is_not_that_round_is_refused_not_taken_for_it(tmp_path, monkeypatch):
    # guards: `poi train --rounds 2` beside an unrelated finished run named exp_round2 (or a round 2 left from
    # a recipe whose exp was removed) kept it as its round 2, never trained on the cleaned labels; a killed one
    # was resumed with its own labels
    fake = FakeRuns(monkeypatch)
    first = recipe(tmp_path, rounds=2)
    runs = tmp_path / "runs"
    write_run(runs / "exp", first, 2)
    write_run(runs / "exp_round2", replace(first, noise=0.0, labels=str(tmp_path / "other.csv")), 2)
    with pytest.raises(TrainError, match=f"exp_round2 is where round 2 trains, but holds another run \\(trained on "
                                         f"{tmp_path}/other.csv; round 2 trains on {runs}/exp/clean/labels.csv\\)"):
        pipeline.later_rounds(runs / "exp", runs / "exp", 2, first, None, fake.announced.append)
    assert fake.trained == []
    write_run(runs / "exp_round2", replace(first, noise=0.0), None)  # killed before an epoch, no label file
    with pytest.raises(TrainError, match="trained on the prepared folder's labels;"):
        pipeline.later_rounds(runs / "exp", runs / "exp", 2, first, None, fake.announced.append)
    write_run(runs / "exp_round2", replace(first, noise=0.0, labels=str(runs / "exp" / "clean" / "labels.csv")), 1)
    assert pipeline.later_rounds(runs / "exp", runs / "exp", 2, first, None, fake.announced.append) == [
        runs / "exp_round2"]
    assert fake.names() == ["exp_round2"]  # its own round, killed after epoch 1: resumed


# --------------------------------------------------------------------------- resume_rounds


def resume(tmp_path: Path, fake: FakeRuns, run: Path) -> list[Path]:
    return pipeline.resume_rounds(TrainConfig(resume=str(run)), None, fake.announced.append)


def test_resume_of_a_finished_middle_round_keeps_the_finished_rounds_and_trains_the_rest(tmp_path, monkeypatch):
    # guards: the next round taken for the last (refused as all finished); no repair; the resumed round
    # trained or cleaned again; the recipe read from the resumed round (its fine-tuned lr fine-tuned again)
    fake = FakeRuns(monkeypatch)
    first = recipe(tmp_path, rounds=4, rounds_fine_tune=1)
    runs = tmp_path / "runs"
    write_run(runs / "exp", first, 2)
    for number in (2, 3):  # each trained on the labels the round before cleaned
        cleaned = pipeline.round_folder(runs / "exp", number - 1) / "clean" / "labels.csv"
        later = pipeline.fine_tuned_round(replace(first, labels=str(cleaned), noise=0.0), runs / "exp")
        write_run(runs / f"exp_round{number}", later, 1)
    result = resume(tmp_path, fake, runs / "exp_round2")
    assert result == [runs / "exp_round2", runs / "exp_round3", runs / "exp_round4"]
    assert fake.repaired == [runs / "exp_round2"] and fake.cleaned == [runs / "exp_round2", runs / "exp_round3"]
    assert fake.names() == ["exp_round4"]  # round 3 finished: kept
    round_4 = fake.trained[0]
    assert (round_4.lr, round_4.epochs, round_4.fine_tune) == (0.02, 1, str(runs / "exp_round3"))
    assert fake.announced[0] == "exp_round2 finished earlier: going on with round 3 of 4"


def test_resume_of_the_finished_last_round_is_handed_to_train_and_of_round_1_then_refused(tmp_path, monkeypatch):
    # guards: the last round taken for one with rounds after it (never handed to train, which says it finished)
    fake = FakeRuns(monkeypatch)
    first = recipe(tmp_path, rounds=2)
    runs = tmp_path / "runs"
    write_run(runs / "exp", first, 2)
    write_run(runs / "exp_round2", replace(first, noise=0.0, labels="x.csv"), 2)
    assert resume(tmp_path, fake, runs / "exp_round2") == [runs / "exp_round2"]
    assert fake.names() == ["exp_round2"] and fake.repaired == [] and fake.cleaned == []
    with pytest.raises(TrainError, match="and the rounds after it already finished"):
        resume(tmp_path, fake, runs / "exp")
    assert fake.names() == ["exp_round2"]


def test_resume_of_an_unfinished_last_round_resumes_it_and_cleans_nothing(tmp_path, monkeypatch):
    # guards: `< rounds` for `<= rounds` (the last round taken for round 1 of a recipe of its own)
    fake = FakeRuns(monkeypatch)
    first = recipe(tmp_path, rounds=2)
    runs = tmp_path / "runs"
    write_run(runs / "exp", first, 2)
    write_run(runs / "exp_round2", replace(first, noise=0.0, labels="x.csv"), 1)
    assert resume(tmp_path, fake, runs / "exp_round2") == [runs / "exp_round2"]
    assert fake.names() == ["exp_round2"] and fake.cleaned == []


def test_resume_of_a_finished_run_without_rounds_in_its_config_is_one_round(tmp_path, monkeypatch):
    # guards: a missing "rounds" read as 2 (the finished run then skipped train, which says it finished)
    fake = FakeRuns(monkeypatch)
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": str(tmp_path / "data"), "epochs": 2}))
    (run / "last.pt").write_text("2")
    assert resume(tmp_path, fake, run) == [run]
    assert fake.names() == ["old"] and fake.repaired == []


@pytest.mark.parametrize("name, round_1", [("x_round1", "x"), ("solo_round2", None)])
def test_a_run_named_like_a_round_is_round_1_unless_it_is_a_later_round_of_its_recipe(tmp_path, monkeypatch, name,
                                                                                     round_1):
    # guards: _round1 taken for a later round (round 2 then trained into x_round2); the folder of round 1 not
    # checked (a run named solo_round2 of its own --rounds 2 taken for its last round: its round 2 never trained)
    fake = FakeRuns(monkeypatch)
    first = recipe(tmp_path, rounds=2)
    runs = tmp_path / "runs"
    if round_1:
        write_run(runs / round_1, first, 2)
    write_run(runs / name, replace(first, name=name), 2)
    assert resume(tmp_path, fake, runs / name) == [runs / name, runs / f"{name}_round2"]
    assert fake.cleaned == [runs / name] and fake.names() == [f"{name}_round2"]


# --------------------------------------------------------------------------- train_folds


def evaluated(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replace evaluate (accuracy 0.25 x (K + 1) on foldK) and write_reports (metrics.json); returns the calls."""
    calls = []

    def evaluate(run_dir, data, split, device):
        calls.append((Path(run_dir).name, data, split))
        fold = int(split.removeprefix("fold"))
        return {"n_images": 4, "accuracy": 0.25 * (fold + 1), "mean_class_recall": 0.1, "epoch": 2, "split": split}

    def write_reports(result, out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result))

    monkeypatch.setattr(pipeline, "evaluate", evaluate)
    monkeypatch.setattr(pipeline, "write_reports", write_reports)
    return calls


def test_fold_all_keeps_finished_folds_resumes_killed_ones_and_trains_the_rest(tmp_path, monkeypatch):
    # guards: fold 0 skipped; a finished fold retrained; a killed fold started again (not --resume) or its stale
    # metrics.json reused; a new fold numbered beside its folder (exist_ok); n_train lost; the data path left relative
    fake = FakeRuns(monkeypatch)
    calls = evaluated(monkeypatch)
    add_folds(make_prepared(tmp_path / "data", splits={"train": 1}), folds=3)
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(data="data", project="runs", name="cv", fold="all", epochs=2)
    cv = tmp_path / "runs" / "cv"
    write_run(cv / "fold0", replace(config, fold="0"), 2, n_train=20)
    (cv / "fold0" / "eval").mkdir()
    (cv / "fold0" / "eval" / "metrics.json").write_text(json.dumps(
        {"n_images": 5, "accuracy": 0.5, "mean_class_recall": 0.4, "epoch": 1}))
    write_run(cv / "fold1", replace(config, fold="1"), 1, n_train=21)  # killed in epoch 2
    (cv / "fold1" / "eval").mkdir()
    (cv / "fold1" / "eval" / "metrics.json").write_text(json.dumps({"n_images": 5, "accuracy": 0.0}))
    summary = pipeline.train_folds(config, announce=fake.announced.append)
    data, absolute = str((tmp_path / "data").resolve()), (tmp_path / "runs" / "cv").resolve()
    assert [(c.resume, c.name, c.fold) for c in fake.trained] == [(str(absolute / "fold1"), "cv", "1"),
                                                                  (None, "fold2", "2")]
    assert (fake.trained[1].project, fake.trained[1].exist_ok, fake.trained[1].data) == (str(absolute), True, data)
    assert calls == [("fold1", data, "fold1"), ("fold2", data, "fold2")]
    table = pd.read_csv(cv / "cv.csv")
    assert table["fold"].tolist() == [0, 1, 2] and table["n_train"].tolist() == [20, 21, 10]
    assert table["accuracy"].tolist() == [0.5, 0.5, 0.75] and table["n_test"].tolist() == [5, 4, 4]
    assert summary["accuracy_pooled"] == pytest.approx((0.5 * 5 + 0.5 * 4 + 0.75 * 4) / 13)
    assert json.loads((cv / "cv_config.json").read_text())["data"] == data
    assert fake.announced == [f"fold {k + 1}/3: {absolute / f'fold{k}'}" for k in range(3)]


def test_fold_all_refuses_resume_before_anything(tmp_path, monkeypatch):
    # guards: --fold all --resume accepted (it resumes by the same command again)
    fake = FakeRuns(monkeypatch)
    with pytest.raises(TrainError, match="resumes by running the same command again"):
        pipeline.train_folds(TrainConfig(data=str(tmp_path), project=str(tmp_path / "runs"), fold="all",
                                         resume=str(tmp_path / "runs" / "cv")))
    assert fake.trained == [] and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- cross-fit


def test_labels_digest_hashes_each_id_with_its_label():
    # guards: the digest of the ids alone (fold models of other labels reused)
    expected = hashlib.sha256(b"a,0\nb,1").hexdigest()
    assert pipeline.labels_digest(np.array(["a", "b"]), np.array([0, 1])) == expected
    assert pipeline.labels_digest(np.array(["a", "b"]), np.array([1, 0])) != expected


def test_check_same_cross_fit_writes_a_record_and_refuses_files_without_one(tmp_path):
    # guards: fold models without a crossfit.json taken as this cross-fit's
    record = {"run": "/r", "folds": 2, "seed": 0, "labels": "abc"}
    pipeline.check_same_cross_fit(tmp_path / "new", record)
    assert json.loads((tmp_path / "new" / "crossfit.json").read_text()) == record
    pipeline.check_same_cross_fit(tmp_path / "new", record)  # the same cross-fit: resumed
    with pytest.raises(AuditError, match=r"another cross-fit \(its labels differ"):
        pipeline.check_same_cross_fit(tmp_path / "new", {**record, "labels": "abd"})
    (tmp_path / "old" / "fold0").mkdir(parents=True)
    with pytest.raises(AuditError, match="holds files but no crossfit.json"):
        pipeline.check_same_cross_fit(tmp_path / "old", record)
    assert not (tmp_path / "old" / "crossfit.json").exists()


def cross_fit_run(tmp_path: Path, data: Path, **options) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text(json.dumps(TrainConfig(data=str(data), **options).to_dict()))
    return run


class Stop(Exception):
    pass


def test_cross_fit_refuses_a_run_without_objective_inference_another_store_and_one_fold(tmp_path, monkeypatch):
    # guards: --no-oim runs cross-fitted; a run of another store cross-fitted on this one; K = 1 accepted
    monkeypatch.setattr(pipeline, "train_or_resume", lambda *args: (_ for _ in ()).throw(Stop()))
    data = make_prepared(tmp_path / "data", splits={"train": 1})
    with pytest.raises(AuditError, match="not a full POI run"):
        pipeline.cross_fit_audit(cross_fit_run(tmp_path, data, use_oim=False), data, 2, tmp_path / "out")
    other = make_prepared(tmp_path / "other", splits={"train": 1})
    with pytest.raises(AuditError, match="was trained on"):
        pipeline.cross_fit_audit(cross_fit_run(tmp_path, other), data, 2, tmp_path / "out")
    for folds in (1, 8):  # 7 training images
        with pytest.raises(AuditError, match=f"needs 2 to 7 folds .* got {folds}"):
            pipeline.cross_fit_audit(cross_fit_run(tmp_path, data), data, folds, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cross_fit_keeps_subjects_whole_with_as_many_subjects_as_folds_and_repeats_the_run_s_hold_out(
        tmp_path, monkeypatch):
    # guards: `> folds` for `>= folds` (2 subjects in 2 folds dealt by image); the run's --heldout-from dropped
    # from the fold models' recipe when the run itself held nothing out
    seen = []
    monkeypatch.setattr(pipeline, "train_or_resume", lambda run_dir, config, console: (seen.append(config),
                                                                                        (_ for _ in ()).throw(Stop())))
    data = make_prepared(tmp_path / "data", splits={"train": 2})
    manifest = pd.read_csv(data / "manifest.csv")
    manifest["subject"] = [f"S{i % 2}" for i in range(len(manifest))]
    manifest.to_csv(data / "manifest.csv", index=False)
    run = cross_fit_run(tmp_path, data, heldout_from="/elsewhere/run")
    with pytest.raises(Stop):
        pipeline.cross_fit_audit(run, data, 2, tmp_path / "out", device="cpu")
    record = json.loads((tmp_path / "out" / "crossfit" / "crossfit.json").read_text())
    assert record["by_subject"] is True and record["folds"] == 2 and record["run"] == str(run.resolve())
    assert seen[0].heldout_from == "/elsewhere/run"
    assert (seen[0].rounds, seen[0].noise, seen[0].device) == (1, 0.0, "cpu")
    fold0 = pd.read_csv(tmp_path / "out" / "crossfit" / "fold0_labels.csv", dtype={"id": str})
    subject = manifest.set_index("id")["subject"]
    left_out = fold0.loc[fold0["label"] == -1, "id"]
    assert len(left_out) == 7 and subject.loc[left_out].nunique() == 1  # one subject's 7 images out of fold 0
