"""Small, fast checks of poi_cli/cli.py's own logic: the one-line `error:` rule (stderr, exit 1,
Ctrl-C 130, brackets kept), the --threads resolution of each command (and `poi train --resume`'s
recorded threads and its notes), predict's option checks, notes and interrupted paths, serve's
limits, and the checks report, audit and clean make before their work.

Each test guards one bug a mutation audit of cli.py found the rest of the suite let through.
The library functions a command calls are replaced (they are imported inside the commands, so
they are patched on their modules): nothing here trains, predicts or serves. Everything is
generated in tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

import poi_cli.cli as cli
from poi_cli import __version__, render
from poi_cli.cli import app
from poi_cli.core.errors import PoiError
from poi_cli.core.threads import THREADS_ENV

runner = CliRunner()


@pytest.fixture
def threads_seen(monkeypatch) -> list[tuple[Any, bool]]:
    """configure_threads replaced by a recorder: (threads given, import_torch) per call; it
    answers the count given, else 4 (the machine's default)."""
    seen: list[tuple[Any, bool]] = []

    def configure(threads=None, import_torch=True):
        seen.append((threads, import_torch))
        return threads or 4

    monkeypatch.setattr("poi_cli.core.threads.configure_threads", configure)
    return seen


def raising(error: BaseException):
    def fake(*args, **kwargs):
        raise error
    return fake


# ------------------------------------------------------------------ the error rule (fail, user_errors, run)


def test_version_is_printed_on_stdout_alone():
    # guards: `poi --version` printed on stderr (a script reading `poi --version` got nothing)
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"poi {__version__}\n" and result.stderr == ""


def test_bad_input_is_one_error_line_on_stderr_with_exit_1_and_its_brackets_kept(monkeypatch):
    # guards: fail() printing on stdout, exiting 2, or reading `poi-fer[train]` as rich markup (the tag vanished),
    # and a plain ValueError from the library escaping user_errors as a traceback
    error = ValueError("needs pip install 'poi-fer[train]'")
    monkeypatch.setattr("poi_cli.data.noise.write_noisy_labels", raising(error))
    result = runner.invoke(app, ["noise", "data", "--rate", "0.2"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == "error: needs pip install 'poi-fer[train]'\n"


def test_a_file_error_is_one_line_too(monkeypatch):
    # guards: OSError (permission, full disk) left out of user_errors: a traceback
    error = PermissionError(13, "Permission denied", "x.csv")
    monkeypatch.setattr("poi_cli.data.noise.write_noisy_labels", raising(error))
    result = runner.invoke(app, ["noise", "data", "--rate", "0.2"])
    assert result.exit_code == 1 and result.stderr == "error: x.csv: Permission denied\n"


def test_ctrl_c_inside_a_command_exits_130_with_its_interrupted_line(monkeypatch):
    # guards: Ctrl-C exiting 1 (a script cannot tell a stop from bad input)
    monkeypatch.setattr("poi_cli.data.noise.write_noisy_labels", raising(KeyboardInterrupt()))
    result = runner.invoke(app, ["noise", "data", "--rate", "0.2"])
    assert result.exit_code == 130 and result.stderr == "error: interrupted\n"


def test_an_encoding_error_passes_user_errors_for_run_to_explain(monkeypatch):
    # guards: UnicodeEncodeError (a ValueError) turned into a bare one-liner inside the command, so run()
    # never said to set PYTHONIOENCODING=utf-8
    monkeypatch.setattr("poi_cli.data.noise.write_noisy_labels", raising(UnicodeEncodeError("ascii", "é", 0, 1, "no")))
    result = runner.invoke(app, ["noise", "data", "--rate", "0.2"])
    assert isinstance(result.exception, UnicodeEncodeError) and "error:" not in result.stderr


def test_run_names_the_pip_command_of_a_missing_extra_and_reraises_any_other_missing_module(monkeypatch, capsys):
    # guards: a command whose extra is missing ending in a ModuleNotFoundError traceback
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    monkeypatch.setattr(cli, "app", raising(ModuleNotFoundError("No module named 'torch.nn'", name="torch.nn")))
    with pytest.raises(SystemExit) as stop:
        cli.run()
    assert stop.value.code == 1
    assert capsys.readouterr().err.startswith("error: this command needs torch, which is not installed: ")
    monkeypatch.setattr(cli, "app", raising(ModuleNotFoundError("No module named 'yaml'", name="yaml")))
    with pytest.raises(ModuleNotFoundError):
        cli.run()


# ------------------------------------------------------------------ info, evaluate: --json


def test_info_json_prints_the_object_alone(monkeypatch):
    # guards: `poi info --json` printing the table after the JSON (json.loads of its output failed)
    monkeypatch.setattr("poi_cli.model.info.model_info", lambda **kwargs: {"arch": kwargs["arch"], "trn_params": 7})
    done = runner.invoke(app, ["info", "--json", "--arch", "resnet34"])
    assert done.exit_code == 0 and json.loads(done.stdout) == {"arch": "resnet34", "trn_params": 7}


def test_evaluate_json_prints_the_object_alone(tmp_path, threads_seen, monkeypatch):
    # guards: `poi evaluate --json` printing its summary after the JSON
    monkeypatch.setattr("poi_cli.study.evaluate.evaluate", lambda *args, **kwargs: {"accuracy": 0.5})
    monkeypatch.setattr("poi_cli.study.evaluate.write_reports", lambda result, out_dir: [])
    done = runner.invoke(app, ["evaluate", "run", "data", "--json", "--out", str(tmp_path / "eval")])
    assert done.exit_code == 0 and json.loads(done.stdout) == {"accuracy": 0.5}


# ------------------------------------------------------------------ prepare


@pytest.fixture
def fake_prepare(monkeypatch) -> dict[str, Any]:
    """prepare's library call replaced: it records its keyword arguments and returns `counts`."""
    seen: dict[str, Any] = {"counts": {}}

    def run_prepare(dataset, raw_dir, out, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(counts=seen["counts"])

    monkeypatch.setattr("poi_cli.data.prepare.prepare", run_prepare)
    monkeypatch.setattr(render, "prepare_summary", lambda dataset, result: [])
    return seen


def test_prepare_that_stored_faces_succeeds_and_one_that_stored_none_says_what_it_found(fake_prepare, threads_seen):
    # guards: the empty-store check flipped (every good prepare failed), and --splits names kept with their spaces
    fake_prepare["counts"] = {"train": {"ok": 2, "missing": 1}}
    done = runner.invoke(app, ["prepare", "folder", "raw", "--out", "out", "--splits", " train , valid ,"])
    assert done.exit_code == 0, done.output
    assert fake_prepare["splits"] == ["train", "valid"]
    fake_prepare["counts"] = {"train": {"missing": 3}}
    done = runner.invoke(app, ["prepare", "folder", "raw", "--out", "out"])
    assert done.exit_code == 1
    assert done.stderr.startswith("error: no face was stored in out (3 missing): is raw the folder")


# ------------------------------------------------------------------ train


def write_run(folder: Path, threads: Any = None, **config: Any) -> Path:
    """A run folder holding only its config.json (resolved.threads when given)."""
    from poi_cli.train.config import TrainConfig

    folder.mkdir(parents=True)
    values = TrainConfig(**config).to_dict()
    if threads is not None:
        values["resolved"] = {"threads": threads}
    (folder / "config.json").write_text(json.dumps(values))
    return folder


@pytest.fixture
def fake_rounds(monkeypatch) -> list[Any]:
    """train_rounds replaced: it records its config and stops with a PoiError (exit 1)."""
    configs: list[Any] = []

    def train_rounds(config, **kwargs):
        configs.append(config)
        raise PoiError("stopped by the test")

    monkeypatch.setattr("poi_cli.pipeline.train_rounds", train_rounds)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    return configs


def test_resume_applies_the_runs_threads_unless_threads_or_the_environment_say_otherwise(
        tmp_path, threads_seen, fake_rounds, monkeypatch):
    # guards: --resume taking the machine's default (the numbers drift from a run never stopped), the recorded
    # count beating $POI_THREADS, and the note of another count on stdout, missing, or said when the counts agree
    run = str(write_run(tmp_path / "run", threads=3, epochs=1))
    done = runner.invoke(app, ["train", "--resume", run])
    assert threads_seen[-1] == (3, True) and "note:" not in done.output
    done = runner.invoke(app, ["train", "--resume", run, "--threads", "2"])
    assert threads_seen[-1] == (2, True) and done.stdout == ""
    assert f"note: {run} trained with 3 CPU threads; with 2 its numbers differ" in done.stderr
    monkeypatch.setenv(THREADS_ENV, "2")
    runner.invoke(app, ["train", "--resume", run])
    assert threads_seen[-1] == (None, True)


def test_a_run_trained_with_one_thread_is_said_in_the_singular(tmp_path, threads_seen, fake_rounds):
    # guards: "trained with 1 CPU threads"
    run = str(write_run(tmp_path / "run", threads=1, epochs=1))
    done = runner.invoke(app, ["train", "--resume", run, "--threads", "2"])
    assert "trained with 1 CPU thread; with 2" in done.stderr


@pytest.mark.parametrize("recorded", [0, 2.5, "3"])
def test_a_recorded_thread_count_that_is_no_whole_positive_number_is_not_applied(recorded, tmp_path, threads_seen,
                                                                                fake_rounds):
    # guards: a config.json's 0 or 2.5 threads applied (0: `--threads must be at least 1` for a run the user never
    # gave it to; 2.5: torch refuses it), or a string compared with 1 (TypeError traceback)
    run = str(write_run(tmp_path / "run", threads=recorded, epochs=1))
    done = runner.invoke(app, ["train", "--resume", run])
    assert threads_seen[-1] == (None, True) and done.exit_code == 1 and "stopped by the test" in done.stderr


def test_a_run_config_without_its_resolved_threads_or_folder_resumes_without_a_traceback(tmp_path, threads_seen,
                                                                                      fake_rounds):
    # guards: KeyError (a config.json written before poi recorded threads) or OSError (no such folder) escaping
    # _threads_of_run / _ignored_by_resume as a traceback instead of --resume's own one-line answer
    run = str(write_run(tmp_path / "run", epochs=1))
    done = runner.invoke(app, ["train", "--resume", run])
    assert threads_seen[-1] == (None, True) and done.exit_code == 1 and "stopped by the test" in done.stderr
    done = runner.invoke(app, ["train", "--resume", str(tmp_path / "missing"), "--epochs", "5"])
    assert done.exit_code == 1 and "stopped by the test" in done.stderr, done.output


def test_resume_notes_the_options_it_ignores_on_stderr_keeps_the_device_and_never_names_it(tmp_path, threads_seen,
                                                                                       fake_rounds):
    # guards: the ignored-options note on stdout, --device dropped on --resume (only it may change), or named as
    # ignored
    run = str(write_run(tmp_path / "run", epochs=1))
    done = runner.invoke(app, ["train", "--resume", run, "--epochs", "5", "--device", "cpu"])
    assert done.stdout == ""
    assert f"note: --resume continues {run} with its own options; ignored: --epochs 5 (the run's: 1) (a new" \
        in done.stderr
    assert "--device" not in done.stderr
    assert fake_rounds[-1].device == "cpu" and fake_rounds[-1].resume == run and fake_rounds[-1].epochs != 5


def test_resume_with_its_own_data_given_by_a_relative_name_ignores_nothing(tmp_path, threads_seen, fake_rounds,
                                                                         monkeypatch):
    # guards: PREPARED_DIR compared unresolved: `poi train data --resume RUN` from the data's folder said the
    # run's own data was ignored
    (tmp_path / "data").mkdir()
    run = str(write_run(tmp_path / "run", data=str(tmp_path / "data"), epochs=1))
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["train", "data", "--resume", run])
    assert done.exit_code == 1 and "ignored" not in done.stderr, done.stderr


def test_train_without_data_or_resume_is_one_line(threads_seen, fake_rounds):
    # guards: the check dropped: training started on no data
    done = runner.invoke(app, ["train"])
    assert done.exit_code == 1 and done.stderr == "error: give a prepared folder (PREPARED_DIR) or --resume RUN_DIR\n"
    assert fake_rounds == []


def test_an_interrupted_train_names_how_to_continue_and_exits_130(tmp_path, threads_seen, monkeypatch):
    # guards: the --fold all and single-run interrupted lines swapped, TrainingInterrupted exiting 1, and a run
    # folder with a space in its name given unquoted in the command to paste
    from poi_cli.train.engine import TrainingInterrupted

    monkeypatch.setattr("poi_cli.pipeline.train_rounds", raising(TrainingInterrupted(Path("runs/my run"))))
    done = runner.invoke(app, ["train", "data"])
    assert done.exit_code == 130
    assert done.stderr == ("error: interrupted: finished epochs are saved in runs/my run; continue with "
                           "`poi train --resume 'runs/my run'`\n")
    monkeypatch.setattr("poi_cli.pipeline.train_rounds", raising(KeyboardInterrupt()))
    done = runner.invoke(app, ["train", "data"])
    assert done.exit_code == 130
    assert done.stderr == "error: interrupted: finished epochs are saved; continue with --resume RUN_DIR\n"
    monkeypatch.setattr("poi_cli.pipeline.train_folds", raising(KeyboardInterrupt()))
    done = runner.invoke(app, ["train", "data", "--fold", "all"])
    assert done.exit_code == 130
    assert done.stderr == ("error: interrupted: finished folds and epochs are saved; "
                           "run the same command again to resume\n")


# ------------------------------------------------------------------ predict


class FakePredictor:
    """Predictor replaced: it keeps its keyword arguments."""

    made: list[dict] = []

    def __init__(self, runner: Any, **kwargs: Any) -> None:
        FakePredictor.made.append(kwargs)
        self.notes: list[str] = []
        self.model_path = "model.onnx"
        self.classes = ["happy", "sad"]


class FakeRecord:
    def __init__(self, image: str, status: str = "ok", reason: str = "") -> None:
        self.image, self.status, self.reason = image, status, reason

    def to_dict(self) -> dict:
        return {"image": self.image, "status": self.status}


@pytest.fixture
def fake_predict(monkeypatch) -> dict[str, Any]:
    """open_runner, Predictor and predict_files replaced; predict_files returns what `run` holds (a PredictRun)
    and records its keyword arguments."""
    from poi_cli.deploy.predict import PredictRun

    FakePredictor.made = []
    seen: dict[str, Any] = {"run": PredictRun()}

    def predict_files(predictor, items, show_au, csv_file, save_vis, input_files, video, note, keep):
        seen.update(items=items, keep=keep)
        return seen["run"]

    monkeypatch.setattr("poi_cli.backends.open_runner", lambda *args, **kwargs: object())
    monkeypatch.setattr("poi_cli.deploy.predict.Predictor", FakePredictor)
    monkeypatch.setattr("poi_cli.deploy.predict.predict_files", predict_files)
    monkeypatch.setattr(render, "predict_table", lambda *args, **kwargs: render.Line("TABLE"))
    monkeypatch.delenv("POI_MODEL", raising=False)
    return seen


def one_image_run(interrupted: bool = False, records: int = 1):
    from poi_cli.deploy.predict import PredictRun

    kept = [FakeRecord("a.jpg") for _ in range(records)]
    return PredictRun(records=kept, counts={"ok": records, "no_face": 0, "error": 0}, first=kept[0] if kept else None,
                      statuses={"a.jpg": {"ok"}} if kept else {}, interrupted=interrupted)


@pytest.fixture
def photo(tmp_path: Path) -> str:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"not decoded: predict_files is replaced")
    return str(path)


def test_predict_applies_threads_without_importing_torch_and_so_does_serve(threads_seen, fake_predict, photo):
    # guards: --threads dropped by predict or serve, or torch imported by the deploy commands to set them
    runner.invoke(app, ["predict", photo, "--threads", "3", "--json"])
    assert threads_seen == [(3, False)]
    runner.invoke(app, ["serve", "--threads", "2", "--max-files", "0"])
    assert threads_seen[-1] == (2, False)


@pytest.mark.parametrize("args, message", [
    (["--json", "--csv", "rows.csv"], "--json and --csv exclude each other: choose one output"),
    (["--csv", "  "], "--csv needs a name"),
    (["--save-vis", " "], "--save-vis needs a name"),
])
def test_predicts_conflicting_or_empty_outputs_are_one_line(args, message, threads_seen, fake_predict, photo):
    # guards: --json with --csv (one of them silently lost), or a blank name taken as a file called "  "
    done = runner.invoke(app, ["predict", photo, *args])
    assert done.exit_code == 1 and done.stderr == f"error: {message}\n" and "items" not in fake_predict


def test_predict_refuses_a_csv_onto_the_model_named_by_poi_model(tmp_path, threads_seen, fake_predict, photo,
                                                                monkeypatch):
    # guards: $POI_MODEL not counted among the inputs: --csv onto it wrote over the model
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model")
    monkeypatch.setenv("POI_MODEL", str(model))
    done = runner.invoke(app, ["predict", photo, "--csv", str(model)])
    assert done.exit_code == 1 and done.stderr.startswith(f"error: --csv {model} is one of the inputs")
    assert model.read_bytes() == b"model"


def test_predict_refuses_a_csv_that_is_a_folder_naming_what_to_give(tmp_path, threads_seen, fake_predict, photo):
    # guards: the folder check dropped: a later check answered in words that do not say to give a file name
    done = runner.invoke(app, ["predict", photo, "--csv", str(tmp_path)])
    assert done.exit_code == 1 and done.stderr == f"error: --csv {tmp_path} is a folder: give the CSV file's name\n"


def test_predict_refuses_pictures_under_a_file_before_the_work(tmp_path, threads_seen, fake_predict, photo):
    # guards: only --save-vis itself checked: a file above it failed after the model was loaded
    (tmp_path / "taken").write_text("a file")
    done = runner.invoke(app, ["predict", photo, "--save-vis", str(tmp_path / "taken" / "vis")])
    assert done.exit_code == 1 and "items" not in fake_predict
    assert done.stderr == (f"error: --save-vis {tmp_path / 'taken' / 'vis'}: {tmp_path / 'taken'} is a file, "
                           "not a folder: give a folder for the pictures\n")


def test_predict_passes_detect_and_keeps_only_the_records_its_output_needs(threads_seen, fake_predict, photo,
                                                                          tmp_path):
    # guards: --no-detect inverted, and --csv keeping every record in memory (its rows are in the file)
    from poi_cli.deploy.predict import KEEP_ALL, KEEP_IMAGES, KEEP_NONE

    runner.invoke(app, ["predict", photo, "--no-detect", "--json"])
    assert FakePredictor.made[-1]["detect"] is False and fake_predict["keep"] == KEEP_ALL
    runner.invoke(app, ["predict", photo, "--csv", str(tmp_path / "rows.csv")])
    assert FakePredictor.made[-1]["detect"] is True and fake_predict["keep"] == KEEP_NONE
    runner.invoke(app, ["predict", photo])
    assert fake_predict["keep"] == KEEP_IMAGES


def test_a_file_named_twice_is_noted_on_stderr_with_the_verb_agreeing(threads_seen, fake_predict, photo):
    # guards: the repeated-names note on stdout (mixed into --json's list) or saying "1 name reach" / "2 names reaches"
    fake_predict["run"] = one_image_run()
    done = runner.invoke(app, ["predict", photo, photo, "--json"])
    assert json.loads(done.stdout) == [{"image": "a.jpg", "status": "ok"}]
    assert "note: 1 name (given twice, or found in a folder) reaches a file already read" in done.stderr
    done = runner.invoke(app, ["predict", photo, photo, photo, "--json"])
    assert "note: 2 names (given twice, or found in a folder) reach a file already read" in done.stderr


def test_pictures_poi_wrote_inside_the_input_folder_are_skipped_with_a_note_on_stderr(tmp_path, threads_seen,
                                                                                     fake_predict, monkeypatch):
    # guards: the skipped-pictures note on stdout, or "1 file ... are not read"
    monkeypatch.setattr("poi_cli.deploy.visualize.is_own_output", lambda path: True)
    (tmp_path / "photos" / "vis").mkdir(parents=True)
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    (tmp_path / "photos" / "vis" / "a_poi.png").write_bytes(b"x")
    fake_predict["run"] = one_image_run()
    done = runner.invoke(app, ["predict", str(tmp_path / "photos"), "--save-vis", str(tmp_path / "photos" / "vis"),
                               "--json"])
    assert [item.path.name for item in fake_predict["items"]] == ["a.jpg"]
    assert json.loads(done.stdout) == [{"image": "a.jpg", "status": "ok"}]
    assert "note: 1 file that poi wrote in --save-vis" in done.stderr and "is not read as input" in done.stderr


def test_own_pictures_outside_the_save_vis_folder_are_inputs(tmp_path, monkeypatch):
    # guards: every poi picture skipped wherever it lies (a picture the user moved out to predict again vanished)
    monkeypatch.setattr("poi_cli.deploy.visualize.is_own_output", lambda path: True)
    (tmp_path / "vis").mkdir()
    skipped: list[Path] = []
    skip = cli._own_pictures_in(str(tmp_path / "vis"), skipped)
    assert skip(tmp_path / "old_poi.png") is False and skip(tmp_path / "vis" / "a_poi.png") is True
    assert skipped == [tmp_path / "vis" / "a_poi.png"]


@pytest.mark.parametrize("args, records, stdout, stderr", [
    (["--json"], 0, "", "error: interrupted\n"),
    (["--json"], 1, '[{"image": "a.jpg", "status": "ok"}]\n',
     "error: interrupted: the records of 1 input are printed\n"),
    (["--csv", "ROWS"], 1, "", "error: interrupted: the records of 1 input are in ROWS\n"),
    ([], 1, "", "error: interrupted\n"),
])
def test_an_interrupted_predict_exits_130_saying_what_it_kept(args, records, stdout, stderr, threads_seen, fake_predict,
                                                              photo, tmp_path):
    # guards: Ctrl-C before any record printing `[]` or "the records of 0 inputs are printed", and any interrupted
    # path exiting 1
    rows = str(tmp_path / "rows.csv")
    fake_predict["run"] = one_image_run(interrupted=True, records=records)
    done = runner.invoke(app, ["predict", photo, *[rows if a == "ROWS" else a for a in args]])
    assert done.exit_code == 130
    assert done.stdout == stdout and done.stderr == stderr.replace("ROWS", rows)


def test_unreadable_inputs_exit_1_naming_the_one_or_counting_the_many(threads_seen, fake_predict, tmp_path):
    # guards: many unreadable inputs reported as the first one's reason alone
    from poi_cli.deploy.predict import PredictRun

    bad = FakeRecord("a.jpg", "error", "cannot identify image file")
    fake_predict["run"] = PredictRun(records=[bad], counts={"ok": 0, "no_face": 0, "error": 1}, first=bad,
                                     statuses={"a.jpg": {"error"}})
    done = runner.invoke(app, ["predict", str(tmp_path / "a.jpg"), "--json"])
    assert done.exit_code == 1 and done.stderr.endswith("error: a.jpg: cannot identify image file\n")
    fake_predict["run"] = PredictRun(records=[bad, bad], counts={"ok": 0, "no_face": 0, "error": 2}, first=bad,
                                     statuses={"a.jpg": {"error"}, "b.jpg": {"error"}})
    done = runner.invoke(app, ["predict", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "--json"])
    assert done.exit_code == 1 and done.stderr.endswith("error: none of the 2 inputs could be read\n")


def test_csv_rows_on_stdout_leave_stdout_to_the_rows(threads_seen, fake_predict, photo):
    # guards: `--csv /dev/stdout` with the closing summary printed into the rows
    fake_predict["run"] = one_image_run()
    done = runner.invoke(app, ["predict", photo, "--csv", "/dev/stdout"])
    assert done.exit_code == 0, done.output
    assert "1 image: 1 face predicted" in done.stderr and "predicted" not in done.stdout


# ------------------------------------------------------------------ serve


@pytest.fixture
def fake_serve(monkeypatch) -> list[dict]:
    """open_runner, Predictor and the server replaced; the server records its limits and stops as Ctrl-C does."""
    served: list[dict] = []

    def run_serve(predictor, **kwargs):
        served.append(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr("poi_cli.backends.open_runner", lambda *args, **kwargs: object())
    monkeypatch.setattr("poi_cli.deploy.predict.Predictor", FakePredictor)
    monkeypatch.setattr("poi_cli.deploy.serve.serve", run_serve)
    return served


@pytest.mark.parametrize("args, message", [
    (["--max-files", "0"], "--max-files must be a positive number, got 0"),
    (["--max-upload-mb", "0.0000001"], "--max-upload-mb 1e-07 is less than one byte"),
])
def test_a_serve_limit_of_zero_or_below_one_unit_is_one_line(args, message, threads_seen, fake_serve):
    # guards: 0 accepted as a limit (every request refused), or a limit that rounds to 0 bytes
    done = runner.invoke(app, ["serve", *args])
    assert done.exit_code == 1 and done.stderr == f"error: {message}\n" and fake_serve == []


def test_a_stopped_server_exits_0_saying_so_on_stderr(threads_seen, fake_serve):
    # guards: "server stopped" printed on stdout
    done = runner.invoke(app, ["serve", "--port", "8123"])
    assert done.exit_code == 0 and done.stdout == "" and done.stderr.endswith("server stopped\n")
    assert fake_serve[0]["port"] == 8123


# ------------------------------------------------------------------ report, audit, clean


def test_report_notes_the_runs_it_skipped_on_stderr(tmp_path, threads_seen, monkeypatch):
    # guards: the skipped runs printed on stdout, among the report's table
    result = SimpleNamespace(skipped=["runs/x: no results.csv"])
    monkeypatch.setattr("poi_cli.study.report.build_report", lambda *args, **kwargs: result)
    monkeypatch.setattr(render, "report_summary", lambda result: [render.Line("SUMMARY")])
    done = runner.invoke(app, ["report", "runs", "--out", str(tmp_path / "report")])
    assert done.exit_code == 0, done.output
    assert done.stdout == "SUMMARY\n" and done.stderr == "skipped runs/x: no results.csv\n"


@pytest.mark.parametrize("option", [["--labels", "l.csv"], ["--baseline", "base"], ["--split", "valid"]])
def test_audit_cross_fit_refuses_the_options_it_cannot_honour(option, threads_seen, monkeypatch):
    # guards: --cross-fit with --split valid accepted (it audits the training split whatever --split says)
    monkeypatch.setattr("poi_cli.pipeline.cross_fit_audit", raising(AssertionError("no work expected")))
    done = runner.invoke(app, ["audit", "run", "data", "--cross-fit", "2", *option])
    assert done.exit_code == 1 and done.stderr.startswith("error: --cross-fit audits the labels the run trained on")


@pytest.mark.parametrize("flag, mode", [("--relabel", "relabel"), ("--drop", "drop")])
def test_clean_passes_relabel_or_drop(flag, mode, tmp_path, threads_seen, monkeypatch):
    # guards: --relabel and --drop swapped
    seen = []
    monkeypatch.setattr("poi_cli.study.clean.clean_inputs", lambda source: [source])
    monkeypatch.setattr("poi_cli.study.clean.clean", lambda audit, data, how, *args, **kwargs: seen.append(how) or
                        (_ for _ in ()).throw(PoiError("stopped by the test")))
    done = runner.invoke(app, ["clean", "audit.csv", "data", "--out", str(tmp_path / "clean.csv"), flag,
                               "--fraction", "0.1"])
    assert done.exit_code == 1 and seen == [mode]
