"""Small hand-computed checks of poi_cli/core: atomic.py (streams, temp files, the errors of a
failed write, output checks, command output folders), locks.py (lock names, the owner note, the
O_EXCL fallback), outputs.py (T_cal's edge, PredictionRecipe, regions_agree, concatenate),
manifests.py (class names, regions, the AU prior table), threads.py and runtime.py (devices,
bf16, torchrun's environment).

Each test guards one bug a mutation audit found the rest of the suite let through. The tests
marked `deploy` import neither torch nor pandas (this file is collected in .venv-deploy too);
the runtime.py tests import torch inside. Everything is generated in tmp_path.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poi_cli.core import atomic, locks, manifests, threads
from poi_cli.core.atomic import (INCOMPLETE_FILE, FolderOutputs, atomic_write, atomic_write_text, check_output_folder,
                                 command_output_folder, interrupted_command, is_poi_png, is_stream, json_with_keys,
                                 next_run_dir, output_file, output_folder, refuse_input_as_output, refuse_poi_file,
                                 refuse_write_protected, replaced_entry, save_image, write_csv, write_json,
                                 write_new_or_same)
from poi_cli.core.errors import PoiError
from poi_cli.core.locks import INSIDE_LOCK, LockError, claim, lock_path
from poi_cli.core.manifests import (ALL_AUS, AU_REGIONS, CLASSES, REGION_NAMES, REGIONS, au_columns, au_prior_matrix,
                                    class_names)
from poi_cli.core.outputs import (FUSION_TRN, FUSION_TRN_PIN, ModelOutputs, PredictionRecipe,
                                  clipped_temperature_caveat, regions_agreeing)
from poi_cli.core.threads import THREADS_ENV, ThreadsError, configure_threads, onnx_session_options, resolve_threads

deploy = pytest.mark.deploy
DEAD_PID = 999_999_999  # above any pid_max: no such process


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------ atomic.py


@deploy
def test_is_stream_takes_any_name_in_dev_and_the_fd_folders_and_fifos_but_not_files(tmp_path):
    # guards: /dev/stdout redirected to a file (a regular file behind /proc/self/fd/1) is written
    # into, never replaced, so the folder decides even for a name that does not stat; a FIFO is a
    # stream on its own (FIFO or character device, not both); a link to /dev/null follows it
    assert is_stream("/proc/self/fd/99999") and is_stream("/dev/fd/99999") and is_stream("/dev/no-such-device")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert is_stream(fifo)
    (tmp_path / "null").symlink_to("/dev/null")
    assert is_stream(tmp_path / "null")
    (tmp_path / "rows.csv").write_text("x")
    assert not is_stream(tmp_path / "rows.csv") and not is_stream(tmp_path / "missing.csv")


@deploy
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_write_into_dev_full_names_the_device(tmp_path):
    # guards: the nameless "[Errno 28] No space left on device" of a stream gets the stream's name
    with pytest.raises(OSError) as caught:
        atomic_write_text("/dev/full", "x" * 10)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == "/dev/full"


@deploy
def test_an_atomic_write_makes_an_ordinary_0644_file_whatever_the_umask(tmp_path):
    # guards the chmod after mkstemp (0600: a label file or CSV only root could then read)
    before = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644 and _names(tmp_path) == ["a.csv"]


@deploy
def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    # guards the unlink of the temp file on failure (each failed write left a .NAME.PID.*.tmp behind)
    target = tmp_path / "a.csv"
    target.write_text("old")

    def fail(handle):
        handle.write(b"half")
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and _names(tmp_path) == ["a.csv"]


@deploy
def test_an_error_naming_the_temp_file_is_reported_under_the_file_asked_for(tmp_path):
    # guards `filename in (None, temp)`: the user never named .a.csv.PID.xxxx.tmp
    target = tmp_path / "a.csv"

    def fail(handle):
        temp = next(tmp_path.glob(".a.csv.*.tmp"))
        raise OSError(errno.EIO, "Input/output error", str(temp))

    with pytest.raises(OSError) as caught:
        atomic_write(target, fail)
    assert caught.value.filename == str(target) and caught.value.errno == errno.EIO


@deploy
def test_an_oserror_behind_a_writers_own_error_is_raised_as_it_is_when_it_names_another_file(tmp_path):
    # guards `raise failed`: a writer's RuntimeError raised while handling "No such file: other.bin"
    # is that OSError (its own file named), not the RuntimeError; without one the error stays itself
    other = str(tmp_path / "other.bin")

    def fail(handle):
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", other)
        except OSError:
            raise RuntimeError("unexpected pos")

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "a.pt", fail)
    assert caught.value.filename == other and caught.value.errno == errno.ENOENT

    def plain(handle):
        raise RuntimeError("plain")

    with pytest.raises(RuntimeError, match="plain"):
        atomic_write(tmp_path / "a.pt", plain)


@deploy
def test_stale_temp_files_of_a_name_with_glob_characters_are_removed_and_a_live_ones_kept(tmp_path):
    # guards glob.escape: `a[1].csv` as a pattern matches `a1.csv`, so its own stale temp files stayed
    target = tmp_path / "a[1].csv"
    stale = tmp_path / f".a[1].csv.{DEAD_PID}.abc.tmp"
    alive = tmp_path / f".a[1].csv.{os.getpid()}.def.tmp"
    stale.write_text("x")
    alive.write_text("y")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and not stale.exists() and alive.exists()


@deploy
def test_a_temp_file_of_another_users_process_is_kept(tmp_path, monkeypatch):
    # guards _process_runs' PermissionError: a process signalling 0 may not still runs
    def not_permitted(pid, signal):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    temp = tmp_path / ".a.csv.4242.abc.tmp"
    temp.write_text("x")
    monkeypatch.setattr(atomic.os, "kill", not_permitted)
    atomic_write_text(tmp_path / "a.csv", "new")
    assert temp.exists()


@deploy
def test_write_protected_means_nobody_may_write(tmp_path):
    # guards the write bits checked (user, group, other): a file its group may write is no user's protection
    protected, shared = tmp_path / "p.csv", tmp_path / "g.csv"
    protected.write_text("x")
    shared.write_text("x")
    protected.chmod(0o444)
    shared.chmod(0o464)
    with pytest.raises(PermissionError) as caught:
        refuse_write_protected(protected)
    assert caught.value.filename == str(protected)
    refuse_write_protected(shared)
    refuse_write_protected(tmp_path / "missing.csv")
    folder = tmp_path / "folder"  # a read-only folder is not a protected file (writing to it fails on its own)
    folder.mkdir()
    folder.chmod(0o555)
    try:
        refuse_write_protected(folder)
    finally:
        folder.chmod(0o755)


@deploy
def test_write_new_or_same_writes_nothing_when_any_file_has_other_contents(tmp_path):
    # guards the check before the writes: a label file written, then its summary refused, left half a pair;
    # and the same contents again leave the file itself (its inode) in place
    labels, summary = tmp_path / "l.csv", tmp_path / "l.json"
    summary.write_text("{\"other\": 1}\n")
    with pytest.raises(PoiError, match=r"l\.json exists already with other contents"):
        write_new_or_same({labels: "id,label\n", summary: "{}\n"}, "--out")
    assert _names(tmp_path) == ["l.json"]
    summary.write_text("{}\n")
    inode = summary.stat().st_ino
    write_new_or_same({labels: "id,label\n", summary: "{}\n"}, "--out")
    assert labels.read_text() == "id,label\n" and summary.stat().st_ino == inode


@deploy
def test_write_json_and_write_csv_text(tmp_path):
    # guards: the indent and final newline of JSON; CSV blanks for None and missing keys only (0 stays 0),
    # columns in the order given, extra keys ignored, "\n" line ends, quoting
    write_json(tmp_path / "a.json", {"b": [1], "a": 0})
    assert (tmp_path / "a.json").read_text() == '{\n  "b": [\n    1\n  ],\n  "a": 0\n}\n'
    write_csv(tmp_path / "a.csv", ["a", "b", "c"], [{"c": 0, "a": None, "x": 5}, {"b": "q,r", "c": False}])
    assert (tmp_path / "a.csv").read_bytes() == b'a,b,c\n,,0\n,"q,r",False\n'


@deploy
def test_is_poi_png_tells_poi_pictures_from_others(tmp_path):
    # guards the Software chunk written and read back: a user's PNG or a non-PNG is not poi's
    save_image(Image.new("RGB", (4, 3)), tmp_path / "poi.png")
    Image.new("RGB", (4, 3)).save(tmp_path / "user.png")
    Image.new("RGB", (4, 3)).save(tmp_path / "user.jpg", format="JPEG")
    (tmp_path / "text.png").write_text("not a picture")
    assert is_poi_png(tmp_path / "poi.png")
    assert not any(is_poi_png(tmp_path / name) for name in ("user.png", "user.jpg", "text.png", "missing.png"))


@deploy
def test_next_run_dir_numbers_from_2_and_skips_files(tmp_path):
    # guards: exp, exp2, exp3 (never exp1), a file of the name skipped, exist_ok reuses the first
    assert next_run_dir(tmp_path / "runs", "exp") == tmp_path / "runs" / "exp"
    assert next_run_dir(tmp_path / "runs", "exp") == tmp_path / "runs" / "exp2"
    (tmp_path / "runs" / "exp3").write_text("a file")
    assert next_run_dir(tmp_path / "runs", "exp") == tmp_path / "runs" / "exp4"
    assert next_run_dir(tmp_path / "runs", "exp", exist_ok=True) == tmp_path / "runs" / "exp"


@deploy
def test_replaced_entry_follows_the_folder_but_not_the_name(tmp_path):
    # guards: a write replaces a symlink itself, in its folder's real place
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "a.csv").symlink_to(tmp_path / "target.csv")
    assert replaced_entry(tmp_path / "linked" / "a.csv") == tmp_path.resolve() / "real" / "a.csv"


@deploy
def test_refuse_input_as_output_inside_an_input_folder(tmp_path):
    # guards: a new file in an input folder is allowed, an existing file or a dangling symlink there
    # is refused (named relative to the folder), also through a symlinked folder; a link to an input too
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.csv").write_text("x")
    (data / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    (tmp_path / "data_link").symlink_to(data)
    refuse_input_as_output(data / "new.csv", [data], "--csv")
    refuse_input_as_output(tmp_path / "elsewhere.csv", [data, data / "manifest.csv"], "--csv")
    with pytest.raises(PoiError, match="would write over manifest.csv of"):
        refuse_input_as_output(data / "manifest.csv", [tmp_path / "data_link"], "--csv")
    with pytest.raises(PoiError, match="would write over dangling.csv of"):
        refuse_input_as_output(data / "dangling.csv", [data], "--csv")
    (tmp_path / "out.csv").symlink_to(data / "manifest.csv")
    with pytest.raises(PoiError, match="is one of the inputs"):
        refuse_input_as_output(tmp_path / "out.csv", [data / "manifest.csv"], "--csv")


@deploy
def test_refuse_poi_file_knows_a_run_folder_by_any_one_of_its_files(tmp_path):
    # guards: a run folder holding only last.pt (killed in epoch 2) is still a run folder; a prepared
    # folder by its prepared.json; other names in them, and the same names elsewhere, are free
    run, prepared, plain = tmp_path / "run", tmp_path / "prepared", tmp_path / "plain"
    for folder in (run, prepared, plain):
        folder.mkdir()
    (run / "last.pt").write_bytes(b"x")
    (prepared / "prepared.json").write_text("{}")
    with pytest.raises(PoiError, match="is the results.csv of the run folder"):
        refuse_poi_file(run / "results.csv", "--csv")
    with pytest.raises(PoiError, match="is the faces.npy of the prepared folder"):
        refuse_poi_file(prepared / "faces.npy", "--out")
    refuse_poi_file(run / "notes.csv", "--csv")
    refuse_poi_file(prepared / "results.csv", "--csv")
    refuse_poi_file(plain / "manifest.csv", "--csv")
    refuse_poi_file(plain / "best.pt", "--out")


@deploy
def test_output_file_replaces_an_empty_file_and_refuses_a_users_file(tmp_path):
    # guards `st_size > 0` (an empty file, e.g. from `touch`, is nobody's output) and rewrites_itself
    # (calibrate --in-place writes best.pt of its run folder, and need not be of its own kind)
    never = ("a poi CSV", lambda path: False)
    (tmp_path / "empty.csv").touch()
    assert output_file(tmp_path / "empty.csv", "--csv", replaces=never) == tmp_path / "empty.csv"
    (tmp_path / "user.csv").write_text("a,b\n")
    with pytest.raises(PoiError, match="exists and is not a poi CSV"):
        output_file(tmp_path / "user.csv", "--csv", replaces=never)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "best.pt").write_bytes(b"x")
    with pytest.raises(PoiError, match="run folder"):
        output_file(tmp_path / "best.pt", "--out")
    assert output_file(tmp_path / "best.pt", "--out", rewrites_itself=True, replaces=never) == tmp_path / "best.pt"
    with pytest.raises(PoiError, match="needs a file name"):
        output_file("  ", "--csv")
    with pytest.raises(PoiError, match="is a folder"):
        output_file(tmp_path, "--csv")


@deploy
def test_output_file_takes_a_name_whose_temp_file_just_fits(tmp_path):
    # guards `>` at the limit: .NAME.PID.xxxxxxxx.tmp is len(NAME) + len(PID) + 15 bytes
    fits = atomic.name_limit(tmp_path) - len(str(os.getpid())) - 15
    assert output_file(tmp_path / ("a" * fits), "--csv") == tmp_path / ("a" * fits)
    with pytest.raises(PoiError, match=r"too long for the temporary file"):
        output_file(tmp_path / ("a" * (fits + 1)), "--csv")
    assert output_file(tmp_path / ("a" * (fits + 1)), "--csv", atomic=False) == tmp_path / ("a" * (fits + 1))


@deploy
def test_output_folder_names_the_file_in_the_way(tmp_path):
    # guards: every parent checked, the one that is a file named; a new folder made with its parents
    (tmp_path / "a").write_text("x")
    with pytest.raises(PoiError, match=re.escape(f"--out {tmp_path}/a/b/c: {tmp_path}/a is a file, not a folder")):
        output_folder(tmp_path / "a" / "b" / "c", "--out")
    assert output_folder(tmp_path / "n" / "m", "--out").is_dir()


@deploy
def test_output_file_checks_new_folders_and_the_writer_makes_them(tmp_path):
    # guards: a command refused after output_file's check (a missing model, a bad label file) left the
    # folders of `--out new/sub/x.csv` behind, empty; the check makes nothing, the write makes them
    target = tmp_path / "new" / "sub" / "x.csv"
    assert output_file(target, "--out") == target and _names(tmp_path) == []
    atomic_write_text(target, "x\n")
    assert target.read_text() == "x\n"


@deploy
@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_output_file_under_a_folder_nobody_may_write_is_refused_before_the_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(PoiError, match=f"cannot create the folder {locked}/sub \\({locked} is not writable\\)"):
            output_file(locked / "sub" / "x.csv", "--out")
        with pytest.raises(PoiError, match=f"the folder {locked} is not writable"):
            output_file(locked / "x.csv", "--out")
    finally:
        locked.chmod(0o755)


@deploy
def test_json_with_keys_needs_every_key_and_interrupted_command_an_object(tmp_path):
    # guards all (not any) of the keys, and a JSON that is no object
    (tmp_path / "a.json").write_text('{"command": "poi audit", "rows": 3}')
    (tmp_path / "list.json").write_text('["command"]')
    assert json_with_keys(tmp_path / "a.json", "command", "rows")
    assert not json_with_keys(tmp_path / "a.json", "command", "classes")
    assert not json_with_keys(tmp_path / "list.json", "command")
    (tmp_path / INCOMPLETE_FILE).write_text('["poi audit"]')
    assert interrupted_command(tmp_path) is None


AUDIT = FolderOutputs("poi audit", ("audit.csv", "curve_*.png"), "audit.json", lambda p: json_with_keys(p, "classes"))


@deploy
def test_check_output_folder_replaces_only_its_own_earlier_output(tmp_path):
    # guards: an empty file under an output name blocks nothing; a user's file does, named (the first
    # in order); a marker file that is not the command's own (is_own false) does not make it its own;
    # an interrupted run of the same command does, another command's does not; poi's own picture
    # (a report stopped before its marker) is no user's file
    check_output_folder(tmp_path, "--out", AUDIT)
    (tmp_path / "audit.csv").touch()
    save_image(Image.new("RGB", (2, 2)), tmp_path / "curve_a.png")
    check_output_folder(tmp_path, "--out", AUDIT)
    (tmp_path / "audit.csv").write_text("mine")
    (tmp_path / "curve_b.png").write_text("mine")
    with pytest.raises(PoiError, match="holds audit.csv, which poi audit did not write there"):
        check_output_folder(tmp_path, "--out", AUDIT)
    (tmp_path / "audit.json").write_text('{"mine": 1}')
    with pytest.raises(PoiError, match="holds audit.csv"):
        check_output_folder(tmp_path, "--out", AUDIT)
    (tmp_path / INCOMPLETE_FILE).write_text('{"command": "poi report"}')
    with pytest.raises(PoiError, match="holds audit.csv"):
        check_output_folder(tmp_path, "--out", AUDIT)
    (tmp_path / INCOMPLETE_FILE).write_text('{"command": "poi audit"}')
    check_output_folder(tmp_path, "--out", AUDIT)
    (tmp_path / INCOMPLETE_FILE).unlink()
    (tmp_path / "audit.json").write_text('{"classes": []}')
    check_output_folder(tmp_path, "--out", AUDIT)


@deploy
def test_a_failed_command_removes_the_folders_it_made_and_only_those(tmp_path):
    # guards: new folders (and their new parents) removed on failure; a folder the user had already
    # made stays, empty as it was
    with pytest.raises(RuntimeError):
        with command_output_folder(tmp_path / "a" / "b" / "c", "--out", outputs=AUDIT) as folder:
            assert (folder / INCOMPLETE_FILE).is_file()
            raise RuntimeError("stop")
    assert _names(tmp_path) == []
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError):
        with command_output_folder(tmp_path / "mine", "--out", outputs=AUDIT):
            raise RuntimeError("stop")
    assert _names(tmp_path) == ["mine"] and _names(tmp_path / "mine") == []
    with pytest.raises(RuntimeError):
        with command_output_folder(None, "--out", default_project=tmp_path / "runs"):
            raise RuntimeError("stop")
    assert _names(tmp_path) == ["mine"]


@deploy
def test_a_command_output_folder_the_user_named_is_checked_before_the_work(tmp_path):
    # guards the check of an existing --out folder: a user's audit.csv there stops the command untouched
    (tmp_path / "audit.csv").write_text("the user's")
    with pytest.raises(PoiError, match="holds audit.csv, which poi audit did not write there"):
        with command_output_folder(tmp_path, "--out", outputs=AUDIT):
            pytest.fail("the work ran")
    assert _names(tmp_path) == ["audit.csv"] and (tmp_path / "audit.csv").read_text() == "the user's"


@deploy
def test_a_command_output_folder_numbers_runs_and_removes_its_marker_when_done(tmp_path):
    with command_output_folder(None, "--out", default_project=tmp_path, outputs=AUDIT) as first:
        pass
    with command_output_folder(None, "--out", default_project=tmp_path) as second:
        pass
    assert (first, second) == (tmp_path / "exp", tmp_path / "exp2") and _names(first) == []
    with pytest.raises(ValueError, match="needs a folder name"):
        with command_output_folder(None, "--out"):
            pass


@deploy
def test_an_output_written_in_the_same_clock_tick_as_the_marker_counts_as_written(tmp_path):
    # guards `>=` in _wrote_since: on a file system with coarse times the marker and the first
    # output share an mtime, and the stopped run's files must stay marked as its own
    with pytest.raises(RuntimeError):
        with command_output_folder(tmp_path / "out", "--out", outputs=AUDIT) as folder:
            (folder / "audit.csv").write_text("rows")
            tick = (folder / INCOMPLETE_FILE).stat().st_mtime_ns
            os.utime(folder / "audit.csv", ns=(tick, tick))
            raise RuntimeError("stop")
    assert interrupted_command(tmp_path / "out") == "poi audit"


# ------------------------------------------------------------------------------ locks.py


@deploy
def test_lock_path_of_a_file_a_symlink_and_a_folder(tmp_path):
    # guards: a file's lock beside the name it is written under (a symlink is replaced, not followed);
    # a folder's beside where it really is; inside: in the folder
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "out.csv").symlink_to(tmp_path / "real" / "target.csv")
    root = tmp_path.resolve()
    assert lock_path(tmp_path / "out.csv") == root / ".out.csv.lock"
    assert lock_path(tmp_path / "link" / "a.csv") == root / "real" / ".a.csv.lock"
    assert lock_path(tmp_path / "link") == root / ".real.lock"
    assert lock_path(tmp_path / "link", inside=True) == root / "real" / INSIDE_LOCK


@deploy
def test_a_taken_over_lock_file_holds_only_the_new_owners_note(tmp_path):
    # guards the ftruncate: a longer note left behind kept its tail, and the second writer was told
    # "another process" instead of who holds the output
    target = tmp_path / "out.csv"
    lock_path(target).write_text(json.dumps({"pid": DEAD_PID, "host": "a-much-longer-host-name-than-this-one" * 3}))
    with claim(target) as lock:
        assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(LockError, match=f"is being written by pid {os.getpid()} on "):
            with claim(target, "--csv"):
                pass
    assert not lock.exists()


@deploy
def test_a_claim_is_let_go_on_an_exception_and_an_unreadable_note_names_no_one(tmp_path):
    with pytest.raises(KeyError):
        with claim(tmp_path / "out.csv") as lock:
            raise KeyError("x")
    assert not lock.exists()
    lock.write_text("[1, 2]")  # valid JSON, no object: "another process"
    assert locks._owner(lock) == "another process"


@deploy
def test_a_claim_removes_the_folders_it_made_for_its_lock_unless_an_output_is_in_them(tmp_path):
    # guards: `--csv new/sub/rows.csv` claimed (its lock made new/sub), then refused: new/sub stayed
    with pytest.raises(RuntimeError):
        with claim(tmp_path / "new" / "sub" / "rows.csv"):
            raise RuntimeError("refused")
    assert _names(tmp_path) == []
    with claim(tmp_path / "new" / "sub" / "rows.csv"):
        (tmp_path / "new" / "sub" / "rows.csv").write_text("x")
    assert _names(tmp_path / "new" / "sub") == ["rows.csv"]
    (tmp_path / "mine").mkdir()
    with claim(tmp_path / "mine" / "rows.csv"):
        pass
    assert _names(tmp_path / "mine") == []  # a folder that was there stays


@deploy
def test_without_flock_a_claim_is_an_exclusive_lock_file(tmp_path, monkeypatch):
    # guards the O_EXCL fallback (Windows): a second claim stops, the file goes at exit
    monkeypatch.setattr(locks, "fcntl", None)
    with claim(tmp_path / "out.csv") as lock:
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            with claim(tmp_path / "out.csv"):
                pass
    assert not lock.exists()
    with claim(tmp_path / "out.csv"):
        pass


@deploy
def test_a_name_that_fits_but_whose_lock_file_does_not_is_one_line(tmp_path):
    # guards the ENAMETOOLONG check: `.NAME.lock` is 6 bytes longer than NAME, and the OSError naming
    # the lock file (a name the user never gave) becomes the LockError that says what to do
    name = "a" * (atomic.name_limit(tmp_path) - 3)
    too_long = r"the name is too long for poi's lock file beside it \(\.a+\.lock: \d+ bytes\)"
    with pytest.raises(LockError, match=too_long):
        with claim(tmp_path / name, "--csv"):
            pass
    assert _names(tmp_path) == []


# ------------------------------------------------------------------------------ outputs.py


@deploy
def test_clipped_temperature_caveat_at_and_inside_the_edges():
    # guards strict comparisons: a T_cal exactly at 0.05 or 20 is clipped, just inside is not
    assert clipped_temperature_caveat(0.05) is not None and clipped_temperature_caveat(20.0) is not None
    assert clipped_temperature_caveat(0.0501) is None and clipped_temperature_caveat(19.99) is None
    assert "T_cal 20 is clipped at the edge of its range 0.05..20" in clipped_temperature_caveat(20.0)


@deploy
def test_prediction_recipe_checks_reads_and_sorts():
    # guards: flip must be a bool (1 is not), from_dict's defaults for absent keys and for None or {},
    # cost: a mirror costs more than the PIN (so trn+pin without flip comes before trn with flip)
    with pytest.raises(ValueError, match="flip must be true or false"):
        PredictionRecipe(flip=1)
    with pytest.raises(ValueError, match="fusion must be one of trn, trn\\+pin"):
        PredictionRecipe(fusion="pin")
    assert PredictionRecipe.from_dict(None) == PredictionRecipe.from_dict({}) == PredictionRecipe(FUSION_TRN, False)
    assert PredictionRecipe.from_dict({"flip": True}) == PredictionRecipe(FUSION_TRN, True)
    assert PredictionRecipe.from_dict({"fusion": FUSION_TRN_PIN}).to_dict() == {"fusion": "trn+pin", "flip": False}
    recipes = [PredictionRecipe(f, flip) for flip in (True, False) for f in (FUSION_TRN_PIN, FUSION_TRN)]
    assert [r.describe() for r in sorted(recipes, key=lambda r: r.cost)] == [
        "TRN, image alone", "TRN + PIN, image alone", "TRN, image and mirror", "TRN + PIN, image and mirror"]


@deploy
def test_regions_agreeing_counts_regions_whose_argmax_is_the_prediction():
    scores = np.array([[[5, 1, 0], [0, 1, 2], [9, 0, 0], [0, 3, 1]],  # argmax 0, 2, 0, 1
                       [[0, 0, 1], [0, 0, 1], [1, 0, 2], [0, 1, 3]]], np.float32)  # argmax 2, 2, 2, 2
    assert regions_agreeing(scores, np.array([0, 2])).tolist() == [2, 4]
    assert regions_agreeing(scores[0], 1) == 1


@deploy
def test_concatenate_joins_every_field_in_order():
    # guards the field order of the join (eye before mouth AUs, regions before the PIN) and None kept
    def part(n, start):
        return ModelOutputs(np.full((n, 2), start, np.float32), None, np.full((n, 2, 6), start),
                            np.full((n, 2, 7), start), np.full((n, 4, 2), start), np.full((n, 2), -start))

    joined = ModelOutputs.concatenate([part(1, 1), part(2, 2)], num_classes=2)
    assert len(joined) == 3 and joined.consistency is None
    assert joined.probabilities[:, 0].tolist() == [1, 2, 2] and joined.pin_probabilities[:, 0].tolist() == [-1, -2, -2]
    assert (joined.eye_aus.shape, joined.mouth_aus.shape, joined.region_probabilities.shape) == (
        (3, 2, 6), (3, 2, 7), (3, 4, 2))
    empty = ModelOutputs.concatenate([], num_classes=7)
    assert empty.probabilities.shape == (0, 7) and empty.probabilities.dtype == np.float32 and len(empty) == 0


# ------------------------------------------------------------------------------ manifests.py


@deploy
def test_class_names_bounds():
    assert class_names(2) == ("surprise", "fear") and class_names(8)[-1] == "contempt"
    for bad in (1, 9):
        with pytest.raises(ValueError, match="between 2 and 8"):
            class_names(bad)


@deploy
def test_regions_sides_aus_and_columns():
    # guards `side` counted within the AU group (0 image-left, 1 image-right), ALL_AUS eye then mouth,
    # the regions of an AU image-left first, and the AU-major column order
    assert [(r.name, r.branch, r.au_group, r.flipped, r.side) for r in REGIONS] == [
        ("left_eye", "upper", "eye", False, 0), ("right_eye", "upper", "eye", True, 1),
        ("left_mouth", "lower", "mouth", False, 0), ("right_mouth", "lower", "mouth", True, 1)]
    assert REGION_NAMES == ("left_eye", "right_eye", "left_mouth", "right_mouth")
    assert ALL_AUS[:2] == ("AU01", "AU02") and ALL_AUS[5:7] == ("AU09", "AU10") and len(ALL_AUS) == 13
    assert [r.name for r in AU_REGIONS["AU12"]] == ["left_mouth", "right_mouth"]
    columns = au_columns()
    assert columns[:3] == ["AU01_left_eye", "AU01_right_eye", "AU02_left_eye"] and columns[-1] == "AU26_right_mouth"
    assert len(columns) == 26


@deploy
def test_an_unknown_branch_in_regions_json_is_refused(monkeypatch):
    rows = {"regions": [{"name": "chin", "branch": "middle", "au_group": "mouth", "flipped": False}]}
    monkeypatch.setattr(manifests, "read_manifest", lambda name: rows)
    with pytest.raises(ValueError, match="region 'chin' has an unknown branch or AU group"):
        manifests._read_regions()


@deploy
def test_au_prior_matrix_rows_of_table_one():
    # guards each AU at its column (aus.index) and each class at its canonical row; read-only
    eye, mouth = au_prior_matrix("eye"), au_prior_matrix("mouth")
    happiness = CLASSES.index("happiness")
    assert eye.shape == (8, 6) and mouth.shape == (8, 7) and eye.dtype == np.float32
    assert eye[happiness].tolist() == [0, 0, 0, 0, 1, 0]  # AU06
    assert mouth[happiness].tolist() == [0, 1, 0, 0, 0, 0, 1]  # AU12, AU26
    assert eye[CLASSES.index("fear")].tolist() == [1, 0, 1, 1, 0, 0]  # AU01, AU04, AU05
    assert not eye[CLASSES.index("neutral")].any() and not eye.flags.writeable and au_prior_matrix("eye") is eye


# ------------------------------------------------------------------------------ threads.py


@deploy
def test_resolve_threads_names_where_a_bad_value_came_from(monkeypatch):
    # guards: the environment value stripped (a blank one is no value); 1 allowed; the message names
    # --threads or POI_THREADS; the default is the smaller of the cores and 4
    monkeypatch.setenv(THREADS_ENV, " 3 ")
    assert resolve_threads() == 3 and resolve_threads(1) == 1
    monkeypatch.setenv(THREADS_ENV, "0")
    with pytest.raises(ThreadsError, match="^POI_THREADS must be at least 1, got 0$"):
        resolve_threads()
    with pytest.raises(ThreadsError, match="^--threads must be at least 1, got -2$"):
        resolve_threads(-2)
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    monkeypatch.setenv(THREADS_ENV, "  ")  # blank (`POI_THREADS= ` in a .env file) is unset, not "not a number"
    assert resolve_threads() == 4
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert resolve_threads() == 2


@deploy
def test_usable_cores_without_affinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads.usable_cores() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert threads.usable_cores() == 6


@deploy
def test_configure_threads_without_torch_sets_only_the_environment(monkeypatch):
    # guards: OMP_NUM_THREADS set, MKL_NUM_THREADS and OMP_WAIT_POLICY only where unset, and the count
    # kept for ONNX Runtime sessions
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.setenv(name, "placeholder")  # restored after the test
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(threads, "_configured", None)
    assert configure_threads(3, import_torch=False) == 3
    assert (os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"], os.environ["OMP_WAIT_POLICY"]) == (
        "3", "7", "ACTIVE")
    assert threads._configured == 3 and onnx_session_options().intra_op_num_threads == 3
    monkeypatch.delenv("MKL_NUM_THREADS")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    configure_threads(2, import_torch=False)
    assert (os.environ["MKL_NUM_THREADS"], os.environ["OMP_WAIT_POLICY"]) == ("2", "PASSIVE")


@deploy
def test_onnx_session_options_explicit_count_beats_the_configured_one(monkeypatch):
    monkeypatch.setattr(threads, "_configured", 3)
    options = onnx_session_options(2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setattr(threads, "_configured", None)
    monkeypatch.setenv(THREADS_ENV, "5")
    assert onnx_session_options().intra_op_num_threads == 5


# ------------------------------------------------------------------------------ runtime.py (torch)


def test_select_device_falls_back_and_spreads_ranks_over_gpus(monkeypatch):
    # guards: auto without CUDA or MPS is the CPU; LOCAL_RANK 3 on 2 GPUs is cuda:1; an explicit
    # device that is not there is one line
    import torch

    from poi_cli.core.runtime import DeviceError, select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        select_device("cuda")
    with pytest.raises(DeviceError, match="MPS is not available"):
        select_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("auto", local_rank=3) == torch.device("cuda", 1)


def test_use_bf16_by_amp_and_device(monkeypatch):
    import torch

    from poi_cli.core import runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")
    assert runtime.use_bf16("auto", cpu) and not runtime.use_bf16("off", cpu) and runtime.use_bf16("bf16", cuda)
    assert not runtime.use_bf16("auto", cuda) and not runtime.use_bf16("auto", mps)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert not runtime.use_bf16("auto", cpu)
    with pytest.raises(ValueError, match="--amp must be one of"):
        runtime.use_bf16("fp16", cpu)


def test_cpu_has_bf16_reads_either_flag(monkeypatch):
    from poi_cli.core import runtime

    class Info:
        def __init__(self, text):
            self.text = text

        def read_text(self):
            if self.text is None:
                raise OSError(errno.ENOENT, "No such file or directory")
            return self.text

    for text, expected in (("flags: fpu avx512f amx_bf16", True), ("flags: avx512_bf16 sse", True),
                           ("flags: avx512f avx2", False), (None, False)):
        monkeypatch.setattr(runtime, "Path", lambda path, text=text: Info(text))
        assert runtime.cpu_has_bf16() is expected


def test_autocast_off_is_a_null_context():
    import contextlib

    import torch

    from poi_cli.core.runtime import autocast

    assert isinstance(autocast(torch.device("cpu"), False), contextlib.nullcontext)
    on = autocast(torch.device("cpu"), True)
    assert isinstance(on, torch.autocast) and on.fast_dtype == torch.bfloat16


def test_init_distributed_reads_torchruns_environment(monkeypatch):
    # guards: WORLD_SIZE 1 is one process (RANK need not be set); beyond it RANK and LOCAL_RANK (default 0)
    # are read, and a process group already initialised is not ours to destroy
    import torch

    from poi_cli.core import runtime

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("RANK", raising=False)
    single = runtime.init_distributed("cpu")
    assert (single.rank, single.world_size, single.local_rank, single.owns_group) == (0, 1, 0, False)
    assert single.is_main and not single.distributed
    started = []
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda backend: started.append(backend))
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    context = runtime.init_distributed("cpu")
    assert (context.rank, context.world_size, context.local_rank, context.device) == (1, 2, 0, torch.device("cpu"))
    assert not context.owns_group and not context.is_main and context.distributed and started == []
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    assert runtime.init_distributed("cpu").owns_group and started == ["gloo"]
