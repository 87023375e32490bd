"""Bad input, every case a row: each command exits 1 with one line and no traceback, and
no input file changes (its bytes, or a checkpoint's inode, size and time, before and after).
Fixtures are built here: a copy of the session's tiny prepared folder and its one-epoch POI
run (conftest.tiny_runs).

Cases so far: outputs that would write over an input (a prepared folder's files, the
label file read), label files that are wrong (a label outside the classes, negative or
too large; a label_name that contradicts its label; repeated ids; not UTF-8; empty; not
whole numbers), broken prepared folders (faces.npy empty, truncated or garbage; a
manifest without its columns or not a CSV; prepared.json not JSON; a store_index out of
range) for calibrate, clean and evaluate, and symlinks planted in `poi prepare`'s output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import pytest
from typer.testing import CliRunner

from poi_cli.cli import app

runner = CliRunner()


def contents(world: dict[str, Path]) -> dict[str, object]:
    """Every input file by name (DATA/faces.npy, RUN/best.pt, LABELS...): its bytes, or for a
    file over 1 MiB (the checkpoints) its inode, size and modification time in nanoseconds,
    which any write into it or replacement of it changes; reading and hashing the 64-MB
    checkpoints before and after took most of each case's time."""
    files: dict[str, object] = {}
    for name, path in world.items():
        if name != "TMP":
            for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if p.is_file():
                    stat = p.stat()
                    big = stat.st_size > 2**20
                    files[str(Path(name) / p.relative_to(path))] = \
                        (stat.st_ino, stat.st_size, stat.st_mtime_ns) if big else p.read_bytes()
    return files


@pytest.fixture
def world(tiny_runs, tmp_path: Path) -> dict[str, Path]:
    """This test's own copies: DATA (prepared), RUN (a one-epoch POI run), LABELS (the train split's labels)."""
    data = Path(shutil.copytree(tiny_runs.data, tmp_path / "data"))
    run = Path(shutil.copytree(tiny_runs.poi, tmp_path / "run"))
    manifest = pd.read_csv(data / "manifest.csv", dtype={"id": str})
    train = manifest[(manifest["split"] == "train") & (manifest["status"] == "ok")]
    labels = tmp_path / "labels.csv"
    train[["id", "label", "label_name"]].to_csv(labels, index=False)
    return {"DATA": data, "RUN": run, "LABELS": labels, "TMP": tmp_path}


def edit_labels(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[dict[str, Path]], None]:
    def apply(world: dict[str, Path]) -> None:
        table = pd.read_csv(world["LABELS"], dtype={"id": str, "label_name": str})
        change(table).to_csv(world["LABELS"], index=False)
    return apply


def set_row(column: str, value: object, row: int = 0) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(table: pd.DataFrame) -> pd.DataFrame:
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
        return table
    return change


def write_bytes(data: bytes) -> Callable[[dict[str, Path]], None]:
    return lambda world: world["LABELS"].write_bytes(data)


def write_data(name: str, change: Callable[[bytes], bytes]) -> Callable[[dict[str, Path]], None]:
    """Replace the prepared folder's file `name` by change(its bytes)."""
    def apply(world: dict[str, Path]) -> None:
        path = world["DATA"] / name
        path.write_bytes(change(path.read_bytes()))
    return apply


def manifest_store_index(value: int) -> Callable[[dict[str, Path]], None]:
    def apply(world: dict[str, Path]) -> None:
        manifest = pd.read_csv(world["DATA"] / "manifest.csv", dtype={"id": str})
        manifest.loc[manifest["status"] == "ok", "store_index"] = value
        manifest.to_csv(world["DATA"] / "manifest.csv", index=False)
    return apply


def zip_bytes() -> bytes:
    """An .npz archive (what a checkpoint written over faces.npy looks like to np.load: a zip)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, faces=np.zeros((2, 4, 4, 3), np.uint8))
    return buffer.getvalue()


def faces_behind_a_symlink(world: dict[str, Path]) -> None:
    """DATA/faces.npy becomes a symlink to the faces kept in another folder."""
    elsewhere = world["TMP"] / "elsewhere"
    elsewhere.mkdir()
    (world["DATA"] / "faces.npy").rename(elsewhere / "faces.npy")
    (world["DATA"] / "faces.npy").symlink_to(elsewhere / "faces.npy")


def an_audit_beside(world: dict[str, Path]) -> None:
    """TMP/aud/audit.csv and the audit_summary.json `poi clean --auto` reads beside it."""
    (world["TMP"] / "aud").mkdir()
    (world["TMP"] / "aud" / "audit.csv").write_text("id,label\n")
    (world["TMP"] / "aud" / "audit_summary.json").write_text("{}\n")


def an_audit_of_the_run(world: dict[str, Path]) -> None:
    """TMP/aud/audit.csv whose audit_summary.json names RUN's best.pt, as `poi audit` writes it."""
    (world["TMP"] / "aud").mkdir()
    (world["TMP"] / "aud" / "audit.csv").write_text("id,label\n")
    (world["TMP"] / "aud" / "audit_summary.json").write_text(json.dumps({"checkpoint": str(world["RUN"] / "best.pt")}))


def run_trained_on_labels(world: dict[str, Path]) -> None:
    """RUN's config.json says it trained on LABELS (`poi train --labels LABELS`)."""
    config = world["RUN"] / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "labels": str(world["LABELS"])}))


def a_file(name: str) -> Callable[[dict[str, Path]], None]:
    return lambda world: (world["TMP"] / name).write_text("mine\n")


def a_users_file(name: str, make: Callable[[dict[str, Path], Path], None]) -> Callable[[dict[str, Path]], None]:
    """TMP/name made by `make(world, path)`, and checked unchanged after the command (world["USER"])."""
    def apply(world: dict[str, Path]) -> None:
        world["USER"] = world["TMP"] / name
        make(world, world["USER"])
    return apply


def training_checkpoint_copy(world: dict[str, Path], path: Path) -> None:
    shutil.copy(world["RUN"] / "best.pt", path)  # perhaps the only copy of a trained model


def torchscript_of_the_users(world: dict[str, Path], path: Path) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


def csv_with_header(columns: Callable[[], list[str]]) -> Callable[[dict[str, Path], Path], None]:
    return lambda world, path: path.write_text(",".join(columns()) + "\n" + ",".join("x" for _ in columns()) + "\n")


def poi_csv_columns_and_a_rating() -> list[str]:
    from poi_cli.core.manifests import class_names
    from poi_cli.deploy.records import flat_columns

    return [*flat_columns(class_names(8)), "my_rating"]  # a poi CSV the user added a column to


HELD_CLAIMS = ExitStack()  # the claims being_written holds for the test, released after it


@pytest.fixture(autouse=True)
def release_held_claims() -> Iterator[None]:
    yield
    HELD_CLAIMS.close()


def being_written(name: str) -> Callable[[dict[str, Path]], None]:
    """TMP/name claimed by a live poi process (this one, until the test ends; core/locks.py)."""
    def apply(world: dict[str, Path]) -> None:
        from poi_cli.core.locks import claim

        HELD_CLAIMS.enter_context(claim(world["TMP"] / name))
    return apply


def another_dataset_and_run(world: dict[str, Path]) -> None:
    """TMP/other (a copy of DATA) and TMP/other_run (a copy of RUN): folders the command does
    not read, whose own files it must not write over either."""
    shutil.copytree(world["DATA"], world["TMP"] / "other")
    shutil.copytree(world["RUN"], world["TMP"] / "other_run")


AUDIT = ["audit", "RUN", "DATA", "--labels", "LABELS", "--out", "TMP/audit"]
CALIBRATE = ["calibrate", "RUN", "DATA", "--out", "TMP/calibrated.pt"]
CLEAN = ["clean", "RUN", "DATA", "--fraction", "0.1", "--out", "TMP/clean.csv"]
EVALUATE = ["evaluate", "RUN", "DATA", "--out", "TMP/eval"]
BROKEN_STORES = {
    "empty faces.npy": (write_data("faces.npy", lambda b: b""), "faces.npy is not a readable face store"),
    "truncated faces.npy": (write_data("faces.npy", lambda b: b[: len(b) // 2]), "faces.npy is not a readable face store"),
    "garbage faces.npy": (write_data("faces.npy", lambda b: b"\x93NUMPY garbage" * 100), "faces.npy is not a readable face store"),
    "manifest without columns": (write_data("manifest.csv", lambda b: b"a,b\n1,2\n"), "lacks the column(s)"),
    "binary manifest": (write_data("manifest.csv", lambda b: bytes(range(256)) * 8), "manifest.csv"),
    "prepared.json not JSON": (write_data("prepared.json", lambda b: b"{broken"), "prepared.json is not valid JSON"),
    "store_index out of range": (manifest_store_index(10_000), "outside faces.npy's"),
    "faces.npy a zip archive": (write_data("faces.npy", lambda b: zip_bytes()), "faces.npy is not a readable face store"),
}
CASES = {
    # outputs that would write over an input
    "clean --out the prepared manifest": (None, ["clean", "RUN", "DATA", "--fraction", "0.1", "--out", "DATA/manifest.csv"],
                                          "would write over manifest.csv"),
    "clean --out the label file it reads": (None, ["clean", "RUN", "DATA", "--labels", "LABELS", "--fraction", "0.1",
                                                   "--out", "LABELS"], "is one of the inputs"),
    "clean --out whose summary lands on prepared.json": (None, ["clean", "RUN", "DATA", "--fraction", "0.1",
                                                                "--out", "DATA/prepared.csv"], "would write over prepared.json"),
    "calibrate --out the prepared faces": (None, ["calibrate", "RUN", "DATA", "--out", "DATA/faces.npy"],
                                           "would write over faces.npy"),
    "calibrate --out a run's own last.pt": (None, ["calibrate", "RUN", "DATA", "--out", "RUN/last.pt"],
                                            "is one of the inputs"),
    "calibrate --out the faces, a symlink": (faces_behind_a_symlink, ["calibrate", "RUN", "DATA", "--out", "DATA/faces.npy"],
                                             "would write over faces.npy"),
    "noise --out whose summary lands on prepared.json": (None, ["noise", "DATA", "--rate", "0.2", "--out", "DATA/prepared.csv"],
                                                         "prepared.json is one of the inputs"),
    "noise --out a .json (its own summary's name)": (None, ["noise", "DATA", "--rate", "0.2", "--out", "TMP/x.json"],
                                                      "must name a .csv label file"),
    "clean --out whose summary lands on the audit's": (an_audit_beside, ["clean", "TMP/aud/audit.csv", "DATA", "--fraction",
                                                                         "0.1", "--out", "TMP/aud/audit_summary.csv"],
                                                       "is one of the inputs"),
    "clean --out the labels its run trained on": (run_trained_on_labels, ["clean", "RUN", "DATA", "--fraction", "0.1",
                                                                          "--out", "LABELS"], "is one of the inputs"),
    "clean an audit --out its run's results.csv": (an_audit_of_the_run, ["clean", "TMP/aud/audit.csv", "DATA", "--fraction",
                                                                         "0.1", "--out", "RUN/results.csv"],
                                                   "would write over results.csv"),
    "export --out its run's last.pt": (None, ["export", "RUN", "--format", "onnx", "--out", "RUN/last.pt"],
                                       "is one of the inputs"),
    # outputs onto a file of the user's that is not the command's own kind (a label file here):
    # refused, where a re-run replaces the command's own earlier output
    "calibrate --out a label file": (None, ["calibrate", "RUN", "DATA", "--out", "LABELS"],
                                     "exists and is not a checkpoint `poi calibrate` wrote"),
    "refit-head --out a label file": (None, ["refit-head", "RUN", "DATA", "--out", "LABELS"],
                                      "exists and is not a checkpoint `poi refit-head` wrote"),
    **{f"export --format {kind} --out a label file": (None, ["export", "RUN", "--format", kind, "--out", "LABELS"],
                                                      "exists and is not a file `poi export` wrote")
       for kind in ("onnx", "weights", "torchscript")},
    "predict --csv a label file": (None, ["predict", "TMP/missing.jpg", "--model", "RUN", "--csv", "LABELS"],
                                   "exists and is not a CSV `poi predict` wrote"),
    # ... nor a trained model's checkpoint, a TorchScript file (refused without loading it: one
    # line, no torch.jit warning), a table that merely opens with poi's columns, an edited poi CSV
    "calibrate --out a copy of a training checkpoint": (a_users_file("production.pt", training_checkpoint_copy), [
        "calibrate", "RUN", "DATA", "--out", "TMP/production.pt"], "is not a checkpoint `poi calibrate` wrote"),
    "refit-head --out a copy of a training checkpoint": (a_users_file("production.pt", training_checkpoint_copy), [
        "refit-head", "RUN", "DATA", "--out", "TMP/production.pt"], "is not a checkpoint `poi refit-head` wrote"),
    "export --out a copy of a training checkpoint": (a_users_file("production.pt", training_checkpoint_copy), [
        "export", "RUN", "--format", "onnx", "--out", "TMP/production.pt"], "is not a file `poi export` wrote"),
    **{f"{args[0]} --out a TorchScript file of the user's": (a_users_file("ts.pt", torchscript_of_the_users), [
        *args, "--out", "TMP/ts.pt"], "exists and is not") for args in (["calibrate", "RUN", "DATA"],
                                                                       ["export", "RUN", "--format", "onnx"])},
    "predict --csv a table that opens with poi's columns": (
        a_users_file("table.csv", csv_with_header(lambda: ["image", "face", "status", "expression", "notes"])),
        ["predict", "TMP/missing.jpg", "--model", "RUN", "--csv", "TMP/table.csv"], "is not a CSV `poi predict` wrote"),
    "predict --csv a poi CSV the user added a column to": (
        a_users_file("rated.csv", csv_with_header(poi_csv_columns_and_a_rating)),
        ["predict", "TMP/missing.jpg", "--model", "RUN", "--csv", "TMP/rated.csv"], "is not a CSV `poi predict` wrote"),
    # outputs onto the files of a prepared folder or a run folder the command does not read
    "noise --out another dataset's manifest": (another_dataset_and_run, ["noise", "DATA", "--rate", "0.2", "--out",
                                                                        "TMP/other/manifest.csv"],
                                               "is the manifest.csv of the prepared folder"),
    "noise --out whose summary lands on another run's config.json": (another_dataset_and_run, [
        "noise", "DATA", "--rate", "0.2", "--out", "TMP/other_run/config.csv"], "is the config.json of the run folder"),
    "clean --out another run's results.csv": (another_dataset_and_run, ["clean", "RUN", "DATA", "--fraction", "0.1",
                                                                       "--out", "TMP/other_run/results.csv"],
                                              "is the results.csv of the run folder"),
    "calibrate --out another run's last.pt": (another_dataset_and_run, ["calibrate", "RUN", "DATA", "--out",
                                                                       "TMP/other_run/last.pt"],
                                              "is the last.pt of the run folder"),
    "export --out another run's best.pt": (another_dataset_and_run, ["export", "RUN", "--format", "weights", "--out",
                                                                    "TMP/other_run/best.pt"],
                                           "is the best.pt of the run folder"),
    "combine --out inside one of its folders": (another_dataset_and_run, ["combine", "DATA", "TMP/other", "--out",
                                                                          "DATA/combined"], "one of the folders it combines"),
    # failing after the output folder was made: the new folder is removed again (checked for every case)
    "combine a folder that is not prepared": (a_file("notes"), ["combine", "DATA", "RUN", "--out", "TMP/made/combined"],
                                              "prepared.json"),
    "report on runs that are not there": (None, ["report", "TMP/none", "--out", "TMP/made/report"], "no run folders to report"),
    # refused after its output file was checked: the folders it would go in were never made (they were)
    "predict --csv into new folders with a missing model": (None, [
        "predict", "TMP/missing.jpg", "--model", "TMP/missing.onnx", "--csv", "TMP/made/sub/rows.csv"],
        "no such model file or run folder"),
    "calibrate --out into new folders on a split that is not there": (None, [
        "calibrate", "RUN", "DATA", "--split", "nosuch", "--out", "TMP/made/sub/c.pt"], "nosuch"),
    "refit-head --out into new folders choosing on test": (None, [
        "refit-head", "RUN", "DATA", "--split", "test", "--out", "TMP/made/sub/r.pt"], "never test"),
    "clean --out into new folders with a bad label file": (edit_labels(set_row("label", -3)), [
        "clean", "RUN", "DATA", "--labels", "LABELS", "--fraction", "0.1", "--out", "TMP/made/sub/clean.csv"],
        "label -3 is not a class index"),
    # outputs another poi process is writing: the second command stops in one line
    "evaluate --out a folder another poi writes": (being_written("eval"), EVALUATE, "--out"),
    "noise --out a file another poi writes": (being_written("n.csv"), ["noise", "DATA", "--rate", "0.2", "--out", "TMP/n.csv"],
                                              "is being written by pid"),
    "refit-head --out a file another poi writes": (being_written("r.pt"), ["refit-head", "RUN", "DATA", "--out",
                                                                         "TMP/r.pt"], "is being written by pid"),
    "export --out a file another poi writes": (being_written("e.onnx"), ["export", "RUN", "--out", "TMP/e.onnx"],
                                               "is being written by pid"),
    # outputs that cannot be written: said before the work, in the user's words
    "evaluate --out a file": (a_file("taken"), ["evaluate", "RUN", "DATA", "--out", "TMP/taken"], "is a file, not a folder"),
    "evaluate --out under a file": (a_file("taken"), ["evaluate", "RUN", "DATA", "--out", "TMP/taken/sub"],
                                    "is a file, not a folder"),
    "export --out a folder": (None, ["export", "RUN", "--format", "weights", "--out", "TMP"], "is a folder"),
    "calibrate --out under a file": (a_file("taken"), ["calibrate", "RUN", "DATA", "--out", "TMP/taken/c.pt"],
                                     "is a file, not a folder"),
    "report --out a file": (a_file("taken"), ["report", "RUN", "--out", "TMP/taken"], "is a file, not a folder"),
    "combine --out empty": (None, ["combine", "DATA", "DATA", "--out", ""], "needs a folder name"),
    # training options that would train nonsense, and a label file that leaves nothing to train on
    **{f"train {' '.join(option)}": (None, ["train", "DATA", *option, "--epochs", "1", "--project", "TMP/runs"], message)
       for option, message in ((["--lr-gamma", "-2"], "--lr-gamma must lie in (0, 1]"),
                               *((["--momentum", value], "--momentum must lie in [0, 1)") for value in ("5", "nan", "-1", "1")),
                               *((["--rounds", "2", "--clean-threshold", value], "--clean-threshold must lie in (0, 1]")
                                 for value in ("-5", "nan", "inf")),
                               (["--lambda-au", "-1"], "--lambda-au must be a finite weight >= 0"),
                               (["--au-eps", "2"], "--au-eps must lie in [0, 0.5)"),
                               (["--seed", "-1"], "--seed must be 0 or more"),
                               (["--lr", "inf"], "--lr must be finite"),
                               (["--name", "../escaped"], "--name must be a plain folder name"))},
    "train on labels that leave every image out": (edit_labels(lambda t: t.assign(label=-1, label_name="")),
                                                   ["train", "DATA", "--labels", "LABELS", "--epochs", "1", "--project",
                                                    "TMP/runs"], "no training images"),
    "prepare --detector bogus": (None, ["prepare", "folder", "TMP", "--out", "TMP/prepared", "--detector", "bogus"],
                                 "--detector must be one of"),
    "evaluate --amp foo": (None, ["evaluate", "RUN", "DATA", "--amp", "foo", "--out", "TMP/eval"], "--amp must be one of"),
    # label files
    "label -3 (Python would read it as a class)": (edit_labels(set_row("label", -3)), AUDIT, "label -3 is not a class index"),
    "label 42": (edit_labels(set_row("label", 42)), AUDIT, "label 42 is not a class index"),
    "label_name contradicts label": (edit_labels(set_row("label_name", "contempt")), AUDIT, "contradicts label"),
    "repeated ids": (edit_labels(lambda t: pd.concat([t, t.head(1)])), AUDIT, "appears more than once"),
    "label not a whole number": (edit_labels(set_row("label", "happy")), AUDIT, "is not a whole number"),
    "label file not UTF-8": (write_bytes("id,label\n\xe9t\xe9,1\n".encode("latin-1")), AUDIT, "not a UTF-8"),
    "empty label file": (write_bytes(b""), AUDIT, "not a readable CSV label file"),
    "binary label file": (write_bytes(bytes(range(256)) * 4), AUDIT, "label file"),
    # the same label files through the other commands that take --labels
    **{f"{args[0]}: {name}": (prepare, args, message) for name, (prepare, message) in {
        "label -3": (edit_labels(set_row("label", -3)), "label -3 is not a class index"),
        "repeated ids": (edit_labels(lambda t: pd.concat([t, t.head(1)])), "appears more than once"),
        "class names in the label column": (edit_labels(lambda t: t.assign(label=t["label_name"])), "not a whole number"),
        "label file not UTF-8": (write_bytes("id,label\n\xe9t\xe9,1\n".encode("latin-1")), "not a UTF-8"),
    }.items() for args in (["train", "DATA", "--labels", "LABELS", "--epochs", "1", "--project", "TMP/runs"],
                           ["clean", "RUN", "DATA", "--labels", "LABELS", "--fraction", "0.1", "--out", "TMP/clean.csv"])},
    # broken prepared folders, for every command that reads one
    **{f"{args[0]}: {name}": (prepare, args, message) for name, (prepare, message) in BROKEN_STORES.items()
       for args in (CALIBRATE, CLEAN, EVALUATE)},
}


WITHOUT_THREADS = {"noise", "combine"}  # commands that compute nothing heavy


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case: str, world: dict[str, Path]) -> None:
    prepare, args, message = CASES[case]
    if prepare is not None:
        prepare(world)
    before = contents(world)
    folders_before = empty_folders(world["TMP"])
    argv = [a.replace("TMP", str(world["TMP"])) for a in args]
    for name in ("DATA", "RUN", "LABELS"):
        argv = [a.replace(name, str(world[name]), 1) if a.startswith(name) else a for a in argv]
    result = runner.invoke(app, [*argv, *(["--threads", "1"] if argv[0] not in WITHOUT_THREADS else [])])
    assert result.exit_code == 1, (case, result.output)
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (case, result.stderr)
    after = contents(world)
    assert [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)] == [], case
    # a failed command leaves no empty folder of its own behind (evaluate, audit, report, combine made --out first)
    assert empty_folders(world["TMP"]) == folders_before, (case, empty_folders(world["TMP"]) - folders_before)


def empty_folders(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())}


@pytest.mark.parametrize("planted", ["progress.jsonl", "faces.npy"])
def test_resumed_prepare_does_not_write_through_a_symlink_planted_in_its_output(
        planted: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted `poi prepare` whose progress.jsonl or faces.npy was replaced by a link
    to a file outside --out: the resumed run refuses, and the outside file is untouched
    (before: 84 lines appended to it, or the .npy written over)."""
    from test_prepare import InterruptingDetector, make_folder_tree

    from poi_cli.data import prepare as prepare_module

    monkeypatch.setattr(prepare_module, "CHECKPOINT_SECONDS", 0.0)
    raw, out = make_folder_tree(tmp_path / "raw"), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare("folder", raw, out, size=48, batch_size=4, show_progress=False,
                               detector=InterruptingDetector(stop_at=3))
    outside = tmp_path / f"outside_{planted}"
    shutil.move(out / planted, outside)
    (out / planted).symlink_to(outside)
    kept = outside.read_bytes()
    with pytest.raises(prepare_module.PrepareError, match="symbolic link"):
        prepare_module.prepare("folder", raw, out, size=48, batch_size=4, show_progress=False,
                               detector=InterruptingDetector())
    assert outside.read_bytes() == kept


@pytest.mark.parametrize("planted", ["progress.jsonl", "faces.npy", "manifest.csv"])
def test_prepare_does_not_write_through_a_symlink_planted_in_its_output(planted: str, tmp_path: Path) -> None:
    """A resumed or fresh `poi prepare` never follows a link it did not make out of --out."""
    from PIL import Image

    raw = tmp_path / "raw"
    for name in ("happiness", "sadness"):
        (raw / name).mkdir(parents=True)
        for k in range(2):
            Image.new("L", (48, 48), 60 * k + 40).save(raw / name / f"{k}.png")
    outside = tmp_path / "outside.txt"
    outside.write_text("not poi's\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / planted).symlink_to(outside)
    result = runner.invoke(app, ["prepare", "folder", str(raw), "--out", str(out), "--size", "48", "--threads", "1"])
    assert result.exit_code == 1 and "symbolic link" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert outside.read_text() == "not poi's\n"


def change_weights(change: Callable[[dict], dict]) -> Callable[[dict], dict]:
    return lambda c: {**c, "model": change(dict(c["model"]))}


def first_linear_weight(weights: dict) -> str:
    return next(k for k, t in weights.items() if k.endswith(".weight") and t.dim() == 2)


BAD_CHECKPOINTS = {
    "model_config not a mapping": (lambda c: {**c, "model_config": [1, 2, 3]}, "model_config is a list"),
    "empty weights": (lambda c: {**c, "model": {}}, "weights are empty"),
    "classes not names": (lambda c: {**c, "classes": 7}, "classes is not a list"),
    "no classes": (lambda c: {k: v for k, v in c.items() if k != "classes"}, "names 0 classes for a model of 7 outputs"),
    "classes one short": (lambda c: {**c, "classes": c["classes"][:-1]}, "names 6 classes for a model of 7 outputs"),
    "a weight of the wrong shape": (change_weights(lambda w: {**w, (k := first_linear_weight(w)): w[k][:, :-1]}),
                                    "weights do not fit the model its model_config describes"),
    "a weight missing": (change_weights(lambda w: {k: v for k, v in w.items() if k != first_linear_weight(w)}),
                         "1 tensor(s) missing"),
    "a weight too many": (change_weights(lambda w: {**w, "extra.weight": w[first_linear_weight(w)]}),
                          "unexpected tensor(s), e.g. extra.weight"),
    # a diverged training: answered, every face would be NaN and the first class
    "a weight NaN": (change_weights(lambda w: {**w, (k := first_linear_weight(w)): w[k] * float("nan")}),
                     "weights are not finite"),
}
LOADERS = {
    "evaluate": ["evaluate", "CKPT", "DATA", "--out", "TMP/eval"],
    "calibrate": ["calibrate", "CKPT", "DATA", "--out", "TMP/calibrated.pt"],
    "audit": ["audit", "CKPT", "DATA", "--out", "TMP/audit"],
    "export": ["export", "CKPT", "--format", "weights", "--out", "TMP/packed.pt"],
    "predict": ["predict", "DATA/manifest.csv", "--model", "CKPT", "--backend", "torch"],
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("bad", sorted(BAD_CHECKPOINTS))
def test_a_broken_checkpoint_is_one_line_for_every_command_that_loads_one(bad: str, loader: str, world) -> None:
    import torch

    change, message = BAD_CHECKPOINTS[bad]
    checkpoint = world["TMP"] / "bad.pt"
    torch.save(change(torch.load(world["RUN"] / "best.pt", weights_only=True)), checkpoint)
    kept = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    argv = [a.replace("CKPT", str(checkpoint)).replace("DATA", str(world["DATA"])).replace("TMP", str(world["TMP"]))
            for a in LOADERS[loader]]
    result = runner.invoke(app, [*argv, *(["--threads", "1"] if argv[0] not in WITHOUT_THREADS else [])])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], (bad, loader, result.stderr)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == kept


FOLDER_COMMANDS = {  # command: its argv with --out OUT, a file it writes there
    "evaluate": (["evaluate", "RUN", "DATA", "--out", "OUT", "--threads", "1"], "metrics.json"),
    "audit": (["audit", "RUN", "DATA", "--out", "OUT", "--threads", "1"], "audit.csv"),
    "report": (["report", "RUN", "--out", "OUT"], "report.md"),
}


def folder_argv(command: str, world: dict[str, Path], out: Path) -> list[str]:
    argv = FOLDER_COMMANDS[command][0]
    return [{"RUN": str(world["RUN"]), "DATA": str(world["DATA"]), "OUT": str(out)}.get(a, a) for a in argv]


@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_an_output_folder_keeps_the_users_files_and_takes_the_commands_own(command: str, world) -> None:
    """`--out DIR` of evaluate, audit and report: a file of the user's there under a name the
    command writes (their own metrics.json, notes in report.md, a reviewed audit.csv) is refused
    in one line before any work (they were replaced); the command's own earlier output there is
    replaced (a re-run), and an unrelated file beside it stays."""
    out = world["TMP"] / "mine"
    out.mkdir()
    written = FOLDER_COMMANDS[command][1]
    (out / written).write_text("my own notes\n")
    (out / "thesis.txt").write_text("keep me\n")
    result = runner.invoke(app, folder_argv(command, world, out))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and f"holds {written}" in lines[0], result.output
    assert (out / written).read_text() == "my own notes\n" and sorted(p.name for p in out.iterdir()) == [written, "thesis.txt"]
    (out / written).unlink()
    for _ in range(2):  # the command's own folder, written, then rewritten
        result = runner.invoke(app, folder_argv(command, world, out))
        assert result.exit_code == 0, result.output
    assert (out / written).read_text() != "my own notes\n" and (out / "thesis.txt").read_text() == "keep me\n"


def test_a_report_stopped_before_its_report_md_runs_again_but_a_users_picture_stays(world) -> None:
    """report writes its figures before report.md: poi's own pictures without the marker (a
    report stopped by Ctrl-C) are its own; a picture of the user's under such a name is not."""
    from PIL import Image

    from poi_cli.core.atomic import save_image

    out = world["TMP"] / "report"
    out.mkdir()
    save_image(Image.new("RGB", (8, 8)), out / "curves_run.png")  # what the stopped report left
    assert runner.invoke(app, folder_argv("report", world, out)).exit_code == 0
    users = world["TMP"] / "users"
    users.mkdir()
    Image.new("RGB", (8, 8)).save(users / "curves_run.png")
    refused = runner.invoke(app, folder_argv("report", world, users))
    assert refused.exit_code == 1 and "holds curves_run.png" in refused.stderr


@pytest.mark.parametrize("command", ["evaluate", "audit"])
@pytest.mark.parametrize("target", ["DATA", "RUN"])
def test_an_output_folder_is_never_the_dataset_or_the_run_it_reads(command: str, target: str, world) -> None:
    before = sorted(p.name for p in world[target].iterdir())
    result = runner.invoke(app, folder_argv(command, world, world[target]))
    lines = result.stderr.strip().splitlines()
    what = "a prepared folder" if target == "DATA" else "a run folder"
    assert result.exit_code == 1 and len(lines) == 1 and what in lines[0], result.output
    assert sorted(p.name for p in world[target].iterdir()) == before


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """`poi calibrate --in-place` killed twice left 86 MB of .model.pt.*.tmp files: the next
    write of the same file removes those whose process is gone, and only those."""
    import subprocess
    import sys

    from poi_cli.core.atomic import atomic_write_text

    target = tmp_path / "model.pt"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.pt.{int(gone.stdout)}.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    alive = tmp_path / f".model.pt.{os.getpid()}.def456.tmp"  # a writer still running (this process)
    alive.write_bytes(b"y")
    other = tmp_path / f".other.pt.{int(gone.stdout)}.ghi789.tmp"  # another file's: not ours to remove
    other.write_bytes(b"z")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and not stale.exists() and alive.exists() and other.exists()


@pytest.mark.parametrize("args", [["evaluate", "RUN", "DATA", "--batch", "0"], ["calibrate", "RUN", "DATA", "--batch", "-5"],
                                  ["export", "RUN", "--opset", "5"], ["info", "--classes", "1"]])
def test_an_option_out_of_range_is_a_usage_error_before_any_work(args: list[str], world: dict[str, Path]) -> None:
    argv = [str(world[a]) if a in world else a for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and "Invalid value" in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("args", [
    ["calibrate", "RUN", "DATA", "--out", "TMP/out.pt"],
    ["export", "RUN", "--format", "onnx", "--out", "TMP/out.onnx"],
    ["export", "RUN", "--format", "torchscript", "--out", "TMP/out.pt"],
    ["predict", "TMP/missing.jpg", "--model", "RUN", "--csv", "TMP/out.csv"],
], ids=lambda args: " ".join(args[:1] + args[2:4]))
def test_a_rerun_replaces_the_commands_own_output(args: list[str], world: dict[str, Path]) -> None:
    """The other side of `--out a label file` above: what the command wrote itself, or an
    empty file (mktemp's), is replaced by the same command run again."""
    argv = [a.replace("TMP", str(world["TMP"])).replace("RUN", str(world["RUN"])).replace("DATA", str(world["DATA"]))
            for a in args]
    out = Path(argv[-1])
    out.write_bytes(b"")
    ok = {0, 1} if argv[0] == "predict" else {0}  # predict exits 1: its one input is missing (an error row)
    for attempt in range(2):
        result = runner.invoke(app, [*argv, "--threads", "1"])
        assert result.exit_code in ok and "exists and is not" not in result.output, (attempt, result.output)
        assert out.stat().st_size > 0


def test_a_re_export_replaces_an_earlier_export_in_any_format_and_one_older_than_poi_onnx_format(world):
    import onnx

    out = world["TMP"] / "model.out"
    for kind in ("torchscript", "weights", "onnx", "onnx"):
        result = runner.invoke(app, ["export", str(world["RUN"]), "--format", kind, "--out", str(out), "--threads", "1"])
        assert result.exit_code == 0, (kind, result.output)
    model = onnx.load(str(out))  # as exported before the key existed (its other metadata: classes, preprocessing, ...)
    kept = [entry for entry in model.metadata_props if entry.key != "poi_onnx_format"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(out))
    result = runner.invoke(app, ["export", str(world["RUN"]), "--format", "onnx", "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert any(entry.key == "poi_onnx_format" for entry in onnx.load(str(out)).metadata_props)


def test_a_torchscript_file_is_told_apart_by_its_member_names_without_loading_it(tmp_path):
    """torch.load hands a TorchScript archive to torch.jit.load, which warns on stderr (two more
    lines before the one-line error) and loads the whole model: poi reads the zip's names first."""
    import warnings

    from poi_cli.model.checkpoint import (CheckpointError, checkpoint_marked, load_checkpoint, torch_archive_kind,
                                          zip_member_names)
    from poi_cli.model.export import is_poi_export

    path = tmp_path / "ts.pt"
    torchscript_of_the_users({}, path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert torch_archive_kind(zip_member_names(path)) == "torchscript"
        assert not checkpoint_marked(path, "packed") and not is_poi_export(path)  # no extra/poi.json: not poi's
        with pytest.raises(CheckpointError, match="is a TorchScript export"):
            load_checkpoint(path)
    assert not [w for w in seen if "TorchScript" in str(w.message)], [str(w.message) for w in seen]


STOPPED_AT = {"audit": "audit_summary.json", "report": "report.md"}  # each command's marker, written last


@pytest.mark.parametrize("command", sorted(STOPPED_AT))
def test_a_command_stopped_before_its_marker_runs_again_in_its_folder(command: str, world, monkeypatch) -> None:
    """audit writes audit.csv, report its tables, before the file by which they know the folder
    as theirs: stopped in between (Ctrl-C, a kill), the same command was refused there ("holds
    audit.csv, which poi audit did not write"); and poi clean would have paired the new audit.csv
    with an older summary. Now the folder says it was stopped (.poi_incomplete.json) until a run
    finishes there."""
    from poi_cli.core import atomic

    real_write = atomic.atomic_write

    def stopped_at_the_marker(path, write):
        if Path(path).name == STOPPED_AT[command]:
            raise KeyboardInterrupt
        real_write(path, write)

    out = world["TMP"] / "stopped"
    monkeypatch.setattr(atomic, "atomic_write", stopped_at_the_marker)
    stopped = runner.invoke(app, folder_argv(command, world, out))
    assert stopped.exit_code == 130, stopped.output
    assert not (out / STOPPED_AT[command]).exists() and (out / atomic.INCOMPLETE_FILE).is_file()
    if command == "audit":
        refused = runner.invoke(app, ["clean", str(out / "audit.csv"), str(world["DATA"]), "--out",
                                      str(world["TMP"] / "labels.csv"), "--threshold", "0.5"])
        assert refused.exit_code == 1 and "was stopped before it finished" in refused.stderr, refused.output
    monkeypatch.setattr(atomic, "atomic_write", real_write)
    again = runner.invoke(app, folder_argv(command, world, out))
    assert again.exit_code == 0, again.output
    assert (out / STOPPED_AT[command]).is_file() and not (out / atomic.INCOMPLETE_FILE).exists()


def test_a_command_stopped_before_writing_anything_leaves_its_folder_as_it_was(world, monkeypatch) -> None:
    from poi_cli.core import atomic

    def stopped(path, write):
        raise KeyboardInterrupt

    out = world["TMP"] / "earlier"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me\n")
    monkeypatch.setattr(atomic, "atomic_write", stopped)
    result = runner.invoke(app, folder_argv("evaluate", world, out))
    assert result.exit_code == 130 and sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_ctrl_c_inside_torch_save_is_an_interruption_and_keeps_the_old_file(tmp_path: Path) -> None:
    """A KeyboardInterrupt raised inside torch.save makes its zip writer fail on the way out
    ("unexpected pos"): calibrate, refit-head, export and train printed that RuntimeError (a
    traceback, or "export failed") instead of stopping as Ctrl-C does."""
    import torch

    from poi_cli.core.atomic import atomic_write

    class InterruptedFile:  # Ctrl-C arrives while the third block is written
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    target = tmp_path / "model.pt"
    target.write_bytes(b"the old checkpoint")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda f: torch.save({"weights": torch.zeros(100_000)}, InterruptedFile(f)))
    assert target.read_bytes() == b"the old checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_full_disk_inside_torch_save_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    """A full disk in torch.save surfaced as "RuntimeError: unexpected pos" (a traceback from
    train, calibrate, refit-head and audit --cross-fit; "export failed" from export), and a
    write error without a file name said "[Errno 28] No space left on device" of no file."""
    import errno

    import torch

    from poi_cli.core.atomic import atomic_write

    class FullDisk:  # the disk fills while the third block is written
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    target = tmp_path / "model.pt"
    target.write_bytes(b"the old checkpoint")
    with pytest.raises(OSError) as raised:
        atomic_write(target, lambda f: torch.save({"weights": torch.zeros(100_000)}, FullDisk(f)))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert target.read_bytes() == b"the old checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() call raises it: no file name

    with pytest.raises(OSError) as raised:
        atomic_write(target, full)
    assert raised.value.filename == str(target) and target.read_bytes() == b"the old checkpoint"


def test_a_write_protected_output_is_never_replaced_and_the_same_contents_again_leave_it(tmp_path: Path) -> None:
    """chmod a-w files were replaced by a rename (even --in-place checkpoints, label files, CSVs),
    their mode reset to 0644; a label file written again with the same bytes was replaced too."""
    from poi_cli.core.atomic import atomic_write_text, write_new_or_same

    label, summary = tmp_path / "l.csv", tmp_path / "l.json"
    write_new_or_same({label: "id,label\n", summary: "{}\n"}, "--out")
    label.chmod(0o444)
    summary.chmod(0o444)
    write_new_or_same({label: "id,label\n", summary: "{}\n"}, "--out")  # the same command again: nothing to write
    assert label.stat().st_mode & 0o777 == 0o444
    with pytest.raises(PermissionError, match="write-protected"):
        atomic_write_text(label, "other\n")
    assert label.read_text() == "id,label\n" and sorted(p.name for p in tmp_path.iterdir()) == ["l.csv", "l.json"]


def test_an_output_named_by_a_dangling_symlink_makes_nothing_at_its_target(tmp_path: Path) -> None:
    """The lock followed the link: an empty folder appeared at the link's target (noise --out,
    clean --out, predict --csv), while the file itself replaced the link."""
    from poi_cli.core.atomic import write_new_or_same

    link = tmp_path / "labels.csv"
    link.symlink_to(tmp_path / "nowhere" / "x.csv")
    write_new_or_same({link: "id,label\n"}, "--out")
    assert not (tmp_path / "nowhere").exists() and not link.is_symlink() and link.read_text() == "id,label\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]


def test_the_command_that_loses_an_out_folders_claim_touches_nothing_of_the_holders(world: dict[str, Path]) -> None:
    """The second evaluate into a folder another evaluate holds stopped in one line, but on its
    way out it removed the holder's .poi_incomplete.json (and, when the folder was new and still
    empty, the folder itself from under the holder)."""
    from poi_cli.core.atomic import INCOMPLETE_FILE
    from poi_cli.core.locks import claim

    out = world["TMP"] / "eval"
    out.mkdir()
    (out / INCOMPLETE_FILE).write_text(json.dumps({"command": "poi evaluate"}))  # the holder at work
    with claim(out, "--out"):
        result = runner.invoke(app, ["evaluate", str(world["RUN"]), str(world["DATA"]), "--out", str(out),
                                     "--threads", "1"])
        assert result.exit_code == 1 and "being written by" in result.stderr
        assert sorted(p.name for p in out.iterdir()) == [INCOMPLETE_FILE]
    empty = world["TMP"] / "new"
    empty.mkdir()  # the holder's new folder, nothing in it yet
    with claim(empty, "--out"):
        result = runner.invoke(app, ["evaluate", str(world["RUN"]), str(world["DATA"]), "--out", str(empty),
                                     "--threads", "1"])
        assert result.exit_code == 1 and empty.is_dir()
