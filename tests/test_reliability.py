"""Reliability: nothing the user gave is overwritten, bad model files give one line, one
writer per output, and a bad input is reported by the same rule alone or in a batch.

Each test reproduces a defect of issue 15 that it failed on before the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data as skimage_data
from typer.testing import CliRunner

from conftest import write_checkpoint
from poi_cli.cli import app
from poi_cli.core.locks import LockError, claim, lock_path
from poi_cli.data.prepare import PrepareError, prepare

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reliability")
    g = root / "g"
    g.mkdir()
    Image.fromarray(skimage_data.astronaut()).resize((256, 256)).save(g / "good.jpg")
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))
    Image.fromarray(gradient).convert("RGB").save(g / "other.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return {"root": root, "g": g, "good": g / "good.jpg", "other": g / "other.png", "corrupt": root / "corrupt.jpg",
            "model": tiny_checkpoint}


def one_error_line(result) -> str:
    """The run failed with exactly one error line and no traceback; that line."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    others = [line for line in result.stderr.strip().splitlines() if not line.startswith(("error:", "note:"))]
    assert len(errors) == 1 and not others, result.stderr
    return errors[0]


# 1. an output that is an input reached through a glob, a folder or a symlink

@pytest.mark.parametrize("how", ["glob", "folder", "symlink"])
def test_csv_that_is_an_input_reached_by_glob_folder_or_symlink_is_refused(photos, tmp_path, how):
    before = photos["good"].read_bytes()
    if how == "glob":
        args, csv = [str(photos["g"] / "*.jpg")], str(photos["good"])
    elif how == "folder":
        args, csv = [str(photos["g"])], str(photos["good"])
    else:
        link = tmp_path / "out.csv"
        link.symlink_to(photos["good"])
        args, csv = [str(photos["g"] / "*.jpg")], str(link)
    result = runner.invoke(app, ["predict", *args, "--model", str(photos["model"]), "--csv", csv])
    assert "is one of the inputs" in one_error_line(result)
    assert photos["good"].read_bytes() == before


# 2. --save-vis never replaces another input named <stem>_poi.png

def test_save_vis_keeps_an_input_named_like_its_output(photos, tmp_path):
    v = tmp_path / "v"
    v.mkdir()
    (v / "a.jpg").write_bytes(photos["good"].read_bytes())
    (v / "a_poi.png").write_bytes(photos["other"].read_bytes())
    before = (v / "a_poi.png").read_bytes()
    result = runner.invoke(app, ["predict", str(v / "a.jpg"), str(v / "a_poi.png"), "--model", str(photos["model"]),
                                 "--save-vis", str(v)])
    assert result.exit_code == 0, result.output
    assert (v / "a_poi.png").read_bytes() == before
    assert (v / "a_poi2.png").is_file()  # a.jpg's picture under the next free name


# 3 and 6. a zero-byte or non-checkpoint model file: one line in every command

@pytest.fixture
def bad_models(tmp_path, prepared) -> dict[str, Path]:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "text.pt"
    text.write_text("hello world\n")
    single = tmp_path / "e.pt"
    single.write_bytes(b"e")
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    return {"empty": empty, "text": text, "single": single, "run": run}


@pytest.mark.parametrize("kind, expected", [("empty", "empty (0 bytes)"), ("text", "not a file written by torch.save"),
                                            ("single", "not a file written by torch.save")])
def test_bad_checkpoint_file_is_one_line_in_every_command(photos, bad_models, prepared, tmp_path, kind, expected):
    model = str(bad_models[kind])
    commands = {
        "predict": ["predict", str(photos["good"]), "--model", model],
        "evaluate": ["evaluate", model, str(prepared), "--out", str(tmp_path / "ev"), "--device", "cpu"],
        "audit": ["audit", model, str(prepared), "--out", str(tmp_path / "au"), "--device", "cpu"],
        "export": ["export", model, "--out", str(tmp_path / "m.onnx")],
    }
    for name, args in commands.items():
        line = one_error_line(runner.invoke(app, args))
        assert expected in line and "IndexError" not in line, (name, line)


def test_train_resume_from_an_empty_last_pt_is_one_line(bad_models, prepared):
    (bad_models["run"] / "config.json").write_text(json.dumps({"data": str(prepared), "epochs": 1}))
    result = runner.invoke(app, ["train", "--resume", str(bad_models["run"])])
    line = one_error_line(result)
    assert "Traceback" not in result.output and ("empty" in line or "config" in line), line


# 4. one writer per output

def test_second_writer_of_a_csv_is_refused_while_the_first_holds_it(photos, tmp_path):
    csv = tmp_path / "same.csv"
    with claim(csv, "--csv"):
        result = runner.invoke(app, ["predict", str(photos["good"]), "--model", str(photos["model"]), "--csv", str(csv)])
        assert "being written by" in one_error_line(result)
        assert not csv.exists()
    assert not lock_path(csv).exists()  # removed at exit


def test_a_csv_name_that_fits_but_whose_lock_name_does_not_is_one_line_naming_it(photos, tmp_path):
    # 252 characters: the CSV may be written, `.NAME.lock` (258) may not; the error named the lock
    csv = tmp_path / ("r" * 248 + ".csv")
    result = runner.invoke(app, ["predict", str(photos["good"]), "--model", str(photos["model"]), "--csv", str(csv)])
    line = one_error_line(result)
    assert f"--csv {csv}: the name is too long for poi's lock file" in line and "258 bytes" in line


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    target = tmp_path / "out.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    lock_path(target).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with claim(target) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(LockError, match="being written by pid"):
            with claim(target):
                pass
    assert not lock.exists()


def test_second_prepare_into_the_same_folder_stops_at_once(tmp_path):
    raw = tmp_path / "raw" / "happy"
    raw.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(raw / "a.png")
    out = tmp_path / "out"
    with claim(out, "prepared folder"):
        with pytest.raises(PrepareError, match="being written by"):
            prepare("folder", tmp_path / "raw", out, size=32, detect=False, show_progress=False)
        assert not out.exists()
    assert prepare("folder", tmp_path / "raw", out, size=32, detect=False, show_progress=False).counts


# 5. report --data with a missing split

def test_report_with_a_missing_split_fails(photos, prepared, tmp_path):
    run = tmp_path / "runs" / "poi"
    run.mkdir(parents=True)
    write_checkpoint(run / "best.pt")
    result = runner.invoke(app, ["report", str(run), "--data", str(prepared), "--split", "nosuch",
                                 "--out", str(tmp_path / "report")])
    assert "--split nosuch" in one_error_line(result)
    assert not (tmp_path / "report" / "report.md").exists()


# 7. a broken symlink in a folder dataset gets a manifest row

def test_broken_symlink_in_a_folder_dataset_gets_a_manifest_row(tmp_path):
    raw = tmp_path / "raw"
    (raw / "happy").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(raw / "happy" / "a.png")
    (raw / "happy" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(raw / "happy" / "pipe.png")  # read, it would block: named without being opened
    result = prepare("folder", raw, tmp_path / "out", size=32, detect=False, show_progress=False)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    row = manifest[manifest["source"] == "happy/gone.png"]
    assert len(row) == 1 and row.iloc[0]["status"] != "ok" and "symlink" in row.iloc[0]["reason"]
    row = manifest[manifest["source"] == "happy/pipe.png"]  # once left out without a row
    assert len(row) == 1 and row.iloc[0]["status"] != "ok" and row.iloc[0]["reason"] == "not a regular file"
    assert result.counts["train"]["ok"] == 1


# 8. one bad input follows the batch rule: its record is written, exit 1

def test_single_bad_input_writes_its_error_record_like_a_batch(photos, tmp_path):
    result = runner.invoke(app, ["predict", str(photos["corrupt"]), "--model", str(photos["model"]), "--json"])
    assert result.exit_code == 1
    (record,) = json.loads(result.stdout)
    assert record["status"] == "error" and "corrupt.jpg" in record["image"]
    assert "corrupt.jpg" in one_error_line(result)

    csv = tmp_path / "bad.csv"
    result = runner.invoke(app, ["predict", str(photos["corrupt"]), "--model", str(photos["model"]), "--csv", str(csv)])
    assert result.exit_code == 1
    table = pd.read_csv(csv)
    assert table["status"].tolist() == ["error"]


# 9. the model file is an input too; a --save-vis that is a file is refused before the work

def test_csv_onto_the_model_file_is_refused(photos, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(photos["model"].read_bytes())
    result = runner.invoke(app, ["predict", str(photos["good"]), "--model", str(model), "--csv", str(model)])
    assert "is one of the inputs" in one_error_line(result)
    assert model.read_bytes() == photos["model"].read_bytes()


def test_save_vis_onto_a_file_is_refused_and_the_file_kept(photos, tmp_path):
    blocker = tmp_path / "taken.jpg"
    blocker.write_bytes(b"keep me")
    result = runner.invoke(app, ["predict", str(photos["good"]), "--model", str(photos["model"]), "--json",
                                 "--save-vis", str(blocker)])
    assert "--save-vis" in one_error_line(result) and "is a file" in one_error_line(result) and not result.stdout
    assert blocker.read_bytes() == b"keep me"


def test_a_model_that_is_no_model_file_says_so_without_asking_for_torch(photos, tmp_path, monkeypatch):
    from poi_cli import backends

    text = tmp_path / "notes.jpg"
    text.write_text("hello\n")
    monkeypatch.setattr(backends, "torch_available", lambda: False)  # the deploy runtime
    result = runner.invoke(app, ["predict", str(photos["good"]), "--model", str(text)])
    line = one_error_line(result)
    assert "is not a model file" in line and "pip install" not in line
    result = runner.invoke(app, ["predict", str(photos["good"]), "--model", str(photos["model"])])
    assert "needs torch" in one_error_line(result)  # a real checkpoint still asks for torch


def test_an_onnx_file_given_to_a_torch_command_names_the_checkpoint_it_needs(photos, prepared, tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07")  # what the command reads of it does not matter: the name says ONNX
    for args in (["evaluate", str(onnx), str(prepared), "--out", str(tmp_path / "ev")],
                 ["calibrate", str(onnx), str(prepared), "--out", str(tmp_path / "c.pt")]):
        assert "is an ONNX file" in one_error_line(runner.invoke(app, args))


def _claim_after(barrier, target: str, held) -> None:
    from poi_cli.core.locks import LockError, claim

    barrier.wait()
    try:
        with claim(target):
            held.put(1)
            time.sleep(0.2)
    except LockError:
        held.put(0)


def test_two_processes_taking_over_a_left_behind_lock_never_both_win(tmp_path):
    """The take-over was: is it stale? unlink; O_EXCL again: a slower process unlinked the lock a
    faster one had just made, and both wrote (59 of 200 tries in the audit). A flock is taken
    or not, atomically; a live pid in the file (PID 1 of another container) holds nothing."""
    import multiprocessing
    import socket

    context = multiprocessing.get_context("fork")
    target = tmp_path / "out.csv"
    for trial in range(8):
        lock_path(target).write_text(json.dumps({"pid": 1 if trial % 2 else 999_999_999, "host": socket.gethostname()}))
        barrier, held = context.Barrier(2), context.Queue()
        workers = [context.Process(target=_claim_after, args=(barrier, str(target), held)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert sorted(held.get(timeout=5) for _ in workers) == [0, 1], trial
        assert not lock_path(target).exists()


def test_a_claim_holds_when_its_owner_note_cannot_be_written(tmp_path, monkeypatch):
    """On a full disk the pid note failed first: the command stopped with a nameless
    "[Errno 28] No space left on device" (train left its empty run folder each try)."""
    import errno

    from poi_cli.core import locks

    def full(handle, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks.os, "write", full)
    with claim(tmp_path / "out.csv") as lock:
        assert lock.exists()
        with pytest.raises(LockError, match="another process"):  # still the claim: a second writer stops
            with claim(tmp_path / "out.csv"):
                pass
    assert not lock.exists()
