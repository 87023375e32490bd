"""scripts/gpu_pack.sh: its dry run (the CPU, tiny sizes) and the FERPlus pack a device call carries.

The dry run runs every stage the GPU run runs (the GPU test cases on the CPU, the throughput
benchmark, the carried data packed and unpacked, the noise runs and their evaluations) and
writes its results as a device call brings them back: a few files in one folder.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_prepared

ROOT = Path(__file__).resolve().parents[1]


def gpu_pack_module():
    spec = importlib.util.spec_from_file_location("gpu_pack", ROOT / "scripts" / "gpu_pack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def dry_run(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    """`bash scripts/gpu_pack.sh --dry-run` into tmp_path/out (work in tmp_path/work), with this
    interpreter (also where there is no .venv) and no device-tool $OUT."""
    env = {**{k: v for k, v in os.environ.items() if k != "OUT"}, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_pack.sh"), "--dry-run", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work"), *options], env=env, capture_output=True, text=True, timeout=600)


def test_dry_run_writes_what_a_device_call_brings_back(tmp_path):
    out = tmp_path / "out"
    done = dry_run(tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    # what the device tool brings back: at most 8 files, 16 MiB each, no sub-folders, plain names
    files = [p for p in out.rglob("*")]
    assert sorted(p.name for p in files) == ["details.tar.gz", "pack.log", "summary.json", "summary.md"]
    assert all(p.parent == out and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files)
    assert all(p.stat().st_size < 16 * 2**20 for p in files)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["pack"]["dry_run"] and summary["pack"]["status"] == "ok"
    stages = summary["stages"]
    assert {name: stages[name]["status"] for name in stages} == {
        "env": "ok", "tests": "ok", "throughput": "ok", "throughput_compile": "skipped", "data": "ok", "bundle": "skipped",
        "noise": "ok"}
    assert stages["bundle"]["reason"] == "not selected (--stages)"  # a call of its own
    assert stages["env"]["result"]["torch"]
    tests = stages["tests"]["result"]
    assert tests["failed"] == tests["errors"] == 0 and tests["passed"] >= 5  # the GPU cases, run on the CPU
    assert {case["test"].split("::")[1] for case in tests["cases"]} >= {
        "test_bf16_autocast_training_step", "test_channels_last_matches_contiguous",
        "test_compile_trains_and_saves_the_plain_module", "test_one_process_ddp_step_matches_the_plain_step",
        "test_resume_after_kill_on_the_device_matches_uninterrupted"}
    models = stages["throughput"]["result"]["models"]
    assert models["poi"]["images_per_s"] > 0 and models["baseline"]["peak_gib"] > 0
    assert stages["data"]["result"]["unpack"]["decoded_as_packed"]

    noise = stages["noise"]
    assert set(noise["runs"]) == {"ce_n30", "poi_n30", "poi_n30_round2"}
    for name, run in noise["runs"].items():
        assert run["epochs_done"] == run["epochs_planned"] == 1, name
        assert 0 <= run["val_acc_final"] <= 1 and run["eval_accuracy"] is not None, name
    assert noise["runs"]["poi_n30_round2"]["teacher"].endswith("poi_n30")  # --rounds-teacher
    assert noise["runs"]["poi_n30_round2"]["fine_tune"].endswith("poi_n30")  # --rounds-fine-tune
    assert noise["runs"]["poi_n30"]["fine_tune"] is None
    assert noise["runs"]["poi_n30_round2"]["labels"].endswith("poi_n30/clean/labels.csv")
    assert noise["cleaning"]["n_changed"] > 0

    markdown = (out / "summary.md").read_text()
    for heading in ("| stage | status |", "## Training throughput", "## Label noise", "## GPU test cases"):
        assert heading in markdown
    with tarfile.open(out / "details.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"stages/tests.xml", "stages/throughput.json", "runs/poi_n30_round2/results.csv",
            "runs/ce_n30/eval/metrics.json"} <= names
    assert not any(name.endswith((".pt", ".npy")) for name in names)


def test_pack_keeps_valid_exact_and_training_faces_close(tmp_path):
    gpu_pack = gpu_pack_module()
    source = make_prepared(tmp_path / "source", size=48, num_classes=8, splits={"train": 3, "val": 1}, grayscale=True)
    info = gpu_pack.pack_store(source, tmp_path / "pack", quality=85)
    assert info["splits"]["val"]["lossless"] and info["splits"]["train"]["psnr_db"] > 30
    checked = gpu_pack.unpack_store(tmp_path / "pack", tmp_path / "store")
    assert checked["decoded_as_packed"]
    before, after = np.load(source / "faces.npy"), np.load(tmp_path / "store" / "faces.npy")
    assert before.shape == after.shape
    manifest = (source / "manifest.csv").read_text()
    assert (tmp_path / "store" / "manifest.csv").read_text() == manifest
    val_rows = [int(row["store_index"]) for row in csv.DictReader(io.StringIO(manifest)) if row["split"] == "val"]
    assert val_rows and np.array_equal(before[val_rows], after[val_rows])  # the evaluation faces, exactly
    assert np.abs(before.astype(int) - after).max() < 64
    meta = json.loads((tmp_path / "store" / "prepared.json").read_text())
    assert meta["carried"]["splits"]["train"]["quality"] == 85


def test_bundle_dry_run_brings_back_every_round_as_packed_weights(tmp_path):
    """`--stages data,bundle`: FERPlus resized and combined with a colour SFEW-like member, poi's
    own two rounds (audit, clean, round 1 teaching round 2) and round 3 on the annotators' votes
    taught by round 2, each evaluated per member and brought back as fp16 weights that poi
    loads, beside the four summary files."""
    from poi_cli.model.checkpoint import read_checkpoint_info

    out = tmp_path / "out"
    done = dry_run(tmp_path, "--stages", "data,bundle")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    files = list(out.rglob("*"))
    assert sorted(p.name for p in files) == ["bundle_round1.fp16.pt", "bundle_round2.fp16.pt", "bundle_round3_soft.fp16.pt",
                                             "details.tar.gz", "pack.log", "summary.json", "summary.md"]
    assert all(p.parent == out and p.stat().st_size < 16 * 2**20 for p in files)  # what a device call brings back

    bundle = json.loads((out / "summary.json").read_text())["stages"]["bundle"]
    assert bundle["status"] == "ok" and bundle["data"]["train_rows"] == {"ferplus64": 48, "sfew64": 21}
    assert bundle["data"]["epoch_images"] == 48 + 4 * 21  # SFEW drawn 4 times per epoch
    first, second, third = (bundle["runs"][name] for name in ("bundle", "bundle_round2", "bundle_soft"))
    for run in (first, second, third):
        assert run["epochs_done"] == 1 and set(run["eval_by_dataset"]) == {"ferplus64", "sfew64"}
        assert set(run["val_acc_by_dataset_final"]) == {"ferplus64", "sfew64"}
    assert first["teacher"] is None and second["teacher"].endswith("bundle")  # --rounds-teacher
    assert second["fine_tune"].endswith("bundle") and second["labels"].endswith("bundle/clean/labels.csv")
    assert third["teacher"].endswith("bundle_round2") and third["fine_tune"].endswith("bundle_round2")
    assert "--gray-mix 0.3" in bundle["recipe"] and "--rounds 2" in bundle["recipe"]
    assert "--soft-labels" in bundle["soft_recipe"] and "--warmup-epochs" not in bundle["soft_recipe"]

    soft = json.loads((tmp_path / "work" / "runs" / "bundle_soft" / "config.json").read_text())
    assert soft["soft_labels"] and soft["lr"] == pytest.approx(0.1 * 0.05)  # the FERPlus member's votes
    info = read_checkpoint_info(out / "bundle_round3_soft.fp16.pt")
    assert info.packed and info.input_size == 64 and len(info.classes) == 8 and info.classes[-1] == "contempt"
    assert not info.preprocessing.grayscale  # one colour member: a colour model
    assert "## The bundled model's recipe" in (out / "summary.md").read_text()


@pytest.mark.parametrize("soft", [0.25, 0.0])
def test_bundle_epochs_fit_the_time_left_from_the_probed_speed(tmp_path, soft):
    """The GPU plan: from a probed POI speed, round 1's epochs such that all rounds (round 2 and
    round 3 taught, so slower) and the fixed costs fit the stage's time; --bundle-soft 0: no round 3."""
    gpu_pack = gpu_pack_module()
    args = gpu_pack.build_parser().parse_args(["run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                                                "--stages", "env", "--bundle-soft", str(soft)])
    pack = gpu_pack.Pack(args)
    pack.probe_rates = lambda *a, **k: (10000.0, 20000.0, {"how": "probe", "process_start_s": 9.0})
    stores = {"size": 96, "epoch_images": 28485, "n_val": 3610}
    epochs, plan = pack.bundle_epochs(stores, gpu_pack.time.monotonic() + 400)
    assert set(epochs) == ({"bundle", "bundle_round2", "bundle_soft"} if soft else {"bundle", "bundle_round2"})
    assert epochs["bundle_round2"] == round(0.5 * epochs["bundle"]) and epochs.get("bundle_soft", 0) == round(soft * epochs["bundle"])
    one, taught = plan["seconds_per_epoch"]
    needed = plan["fixed_s"] + epochs["bundle"] * one + (epochs["bundle_round2"] + epochs.get("bundle_soft", 0)) * taught
    assert 0.7 * plan["available_s"] < needed <= plan["available_s"]  # uses the time, within it
    assert 10 < epochs["bundle"] < 80  # neither the floor nor the cap at this speed


def test_upscaled_ferplus_is_what_prepare_stores_at_that_size(tmp_path):
    """The bundle stage's FERPlus at 96 px comes from the carried 48-px faces: resized as `poi
    prepare` resizes a dataset's crops, so lossless faces give exactly the prepared pixels."""
    from poi_cli.data.prepare import prepare
    from test_prepare import make_ferplus

    raw = make_ferplus(tmp_path / "raw")
    small = prepare("ferplus", raw, tmp_path / "f48", size=48, show_progress=False).out_dir
    large = prepare("ferplus", raw, tmp_path / "f96", size=96, show_progress=False).out_dir
    upscaled = gpu_pack_module().upscale_store(Path(small), tmp_path / "up96", 96)
    expected = np.load(Path(large) / "faces.npy")
    assert expected.shape[1] == 96 and expected.std() > 0
    assert np.array_equal(np.load(upscaled / "faces.npy"), expected)
    # the manifest as prepare writes it at 96 px: the same rows, the digests of the 96-px faces
    assert (upscaled / "manifest.csv").read_text() == (Path(large) / "manifest.csv").read_text()
    meta = json.loads((upscaled / "prepared.json").read_text())
    assert meta["size"] == meta["preprocessing"]["face_size"] == meta["preprocessing"]["input_size"] == 96


@pytest.mark.parametrize("epochs, steps", [(1, "1"), (3, "3"), (4, "2,3"), (12, "6,9"), (25, "12,19"), (60, "30,45")])
def test_noise_schedule_divides_lr_at_half_and_three_quarters(epochs, steps):
    assert gpu_pack_module().lr_steps(epochs) == steps


def test_the_noise_reserve_never_squeezes_out_the_data_the_noise_runs_need():
    """`--stages data,noise --budget 145` skipped the data stage (145 s less the noise stage's
    150 s reserve) and with it the noise runs it was all for (device call of 2026-12-04)."""
    gpu_pack = gpu_pack_module()
    plans = {plan.name: plan for plan in gpu_pack.PLAN}
    reserve, final = gpu_pack.NOISE_MIN_S, gpu_pack.FINALIZE_S
    both = {"data", "noise"}
    assert gpu_pack.stage_allowance(plans["data"], 145, both, dry=False) == plans["data"].cap_s
    assert gpu_pack.stage_allowance(plans["noise"], 140, both, dry=False) == 140 - final  # noise: all that is left
    # stages the noise runs do not need keep the reserve back for them, within their caps
    assert gpu_pack.stage_allowance(plans["tests"], 300, {"tests", "noise"}, dry=False) == 300 - final - reserve
    assert gpu_pack.stage_allowance(plans["tests"], 900, {"tests", "noise"}, dry=False) == plans["tests"].cap_s
    assert gpu_pack.stage_allowance(plans["tests"], 100, {"tests"}, dry=False) == 100 - final
    assert gpu_pack.stage_allowance(plans["tests"], 100, {"tests", "noise"}, dry=True) == 100 - final - gpu_pack.DRY_NOISE_MIN_S
    # the bundle stage's reserve likewise, and the bundle stage keeps the noise stage's when both run
    bundle = gpu_pack.RESERVE_S["bundle"]
    assert gpu_pack.stage_allowance(plans["tests"], 600, {"tests", "data", "bundle"}, dry=False) == plans["tests"].cap_s
    assert gpu_pack.stage_allowance(plans["tests"], 300, {"tests", "data", "bundle"}, dry=False) == 300 - final - bundle
    assert gpu_pack.stage_allowance(plans["data"], 100, {"data", "bundle", "noise"}, dry=False) == plans["data"].cap_s
    assert gpu_pack.stage_allowance(plans["bundle"], 500, {"data", "bundle", "noise"}, dry=False) == 500 - final - reserve
    assert gpu_pack.stage_allowance(plans["bundle"], 500, {"data", "bundle"}, dry=False) == 500 - final


def test_noise_runs_and_seed_name_their_folders_and_rows(tmp_path):
    """`--noise-runs poi_n0 --noise-seed 2` in the dry run: the one run, its folder `poi_n0_s2`,
    trained with seed 2 on the clean labels, labelled so in summary.md; no cleaning line."""
    out = tmp_path / "out"
    done = dry_run(tmp_path, "--stages", "data,noise", "--noise-runs", "poi_n0", "--noise-seed", "2")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    noise = json.loads((out / "summary.json").read_text())["stages"]["noise"]
    assert list(noise["runs"]) == ["poi_n0_s2"] and noise["runs"]["poi_n0_s2"]["labels"] is None
    assert "--seed 2" in noise["recipe"] and "cleaning" not in noise and "note" not in noise
    markdown = (out / "summary.md").read_text()
    assert "| POI, 0 % (`poi_n0_s2`) | 1/1 |" in markdown and "the clean labels." in markdown
    assert "Cleaning" not in markdown


@pytest.mark.parametrize("options, error", [(["--stages", "noise"], "add data"),
                                            (["--noise-seed", "-1"], "must be 0 or more"),
                                            (["--noise-warmup", "-2"], "must be 0 or more"),
                                            (["--stages", "bundle"], "add data"),
                                            (["--bundle-fine-tune", "0"], "--bundle-fine-tune in (0, 2]"),
                                            (["--bundle-epochs", "0"], "must be 1 or more"),
                                            (["--bundle-soft", "-1"], "--bundle-soft in [0, 2]"),
                                            (["--stages", ","], "(none)")])
def test_options_a_pack_cannot_run_are_refused_before_any_folder(tmp_path, options, error):
    with pytest.raises(SystemExit, match=re.escape(error)):
        gpu_pack_module().main(["run", "--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                                *options])
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_a_bundle_call_without_the_sfew_pack_is_refused_before_any_folder(tmp_path):
    with pytest.raises(SystemExit, match="pack-sfew"):
        gpu_pack_module().main(["run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                                "--stages", "data,bundle", "--sfew-pack", str(tmp_path / "nowhere")])
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize("runs, error", [("ce_n0,poi_n31", "poi_n31"), ("poi_n0,poi_n0", "a run named twice"),
                                         (",", "(none)")])
def test_noise_runs_are_named_once_among_the_known_ones(tmp_path, runs, error):
    gpu_pack = gpu_pack_module()
    with pytest.raises(SystemExit, match=re.escape(error)):
        gpu_pack.main(["run", "--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                       "--noise-runs", runs])
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()  # refused before any folder
    assert [gpu_pack.run_folder("poi_n30", seed) for seed in (0, 1)] == ["poi_n30", "poi_n30_s1"]


HEAVY = ["poi_cli/weights/model.onnx", "weights/history/model_v1.fp16.pt"]


@pytest.fixture
def weights_repo(tmp_path, monkeypatch):
    """gpu_pack run against a small git repository with two tracked weight files of 4 MiB and the
    small detector, which travels."""
    gpu_pack = gpu_pack_module()
    repo = tmp_path / "repo"
    (repo / "weights" / "history").mkdir(parents=True)
    (repo / "poi_cli" / "weights" / "mtcnn").mkdir(parents=True)
    for name in HEAVY:
        (repo / name).write_bytes(b"w" * gpu_pack.WITHHELD_MIN_BYTES)
    (repo / "poi_cli" / "weights" / "mtcnn" / "onet.onnx").write_bytes(b"small")
    (repo / "README.md").write_text("poi\n")
    for argv in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(["git", *argv], cwd=repo, check=True)
    monkeypatch.setattr(gpu_pack, "ROOT", repo)
    return gpu_pack, repo


def carried(gpu_pack) -> set[str]:
    """What a device call carries: tracked and untracked-not-ignored files."""
    return set(gpu_pack.git("ls-files", "--cached", "--others", "--exclude-standard").split())


def test_withhold_leaves_the_weights_out_of_what_a_device_call_carries_and_restore_undoes_it(weights_repo):
    gpu_pack, repo = weights_repo
    everything = carried(gpu_pack)
    assert gpu_pack.main(["withhold"]) == 0
    assert carried(gpu_pack) == everything - set(HEAVY)
    assert all((repo / name).read_bytes() == b"w" * gpu_pack.WITHHELD_MIN_BYTES for name in HEAVY)  # files kept
    with pytest.raises(SystemExit, match="withheld already"):
        gpu_pack.main(["withhold"])
    assert gpu_pack.main(["restore"]) == 0
    assert carried(gpu_pack) == everything and gpu_pack.git("status", "--porcelain") == ""
    assert gpu_pack.WITHHOLD_BEGIN not in gpu_pack.exclude_file().read_text()
    with pytest.raises(SystemExit, match="nothing is withheld"):
        gpu_pack.main(["restore"])


def test_restore_refuses_after_a_commit_that_deleted_the_withheld_weights_and_says_how_to_recover(weights_repo):
    gpu_pack, repo = weights_repo
    gpu_pack.main(["withhold"])
    (repo / "README.md").write_text("poi, edited during a GPU session\n")
    gpu_pack.git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "docs")  # the staged deletions go in too
    with pytest.raises(SystemExit, match=r"not in HEAD: commit \w+ deleted them") as refused:
        gpu_pack.main(["restore"])
    assert gpu_pack.WITHHOLD_BEGIN in gpu_pack.exclude_file().read_text()  # nothing changed: restore can run again
    recovery = re.search(r"`git checkout (.+?)`", str(refused.value)).group(1).split()
    gpu_pack.git("checkout", *recovery)
    gpu_pack.git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "weights back")
    assert gpu_pack.main(["restore"]) == 0
    assert set(HEAVY) <= set(gpu_pack.git("ls-files").split()) and gpu_pack.git("status", "--porcelain") == ""


@pytest.mark.parametrize("edit", ["end marker removed", "blank line and a pattern of the user's inside"])
def test_restore_reads_a_hand_edited_block(weights_repo, edit):
    gpu_pack, repo = weights_repo
    gpu_pack.main(["withhold"])
    exclude = gpu_pack.exclude_file()
    lines = exclude.read_text().splitlines()
    if edit == "end marker removed":
        lines.remove(gpu_pack.WITHHOLD_END)
    else:
        lines[lines.index(gpu_pack.WITHHOLD_BEGIN) + 1:1] = ["", "/out2/"]
    exclude.write_text("\n".join(lines) + "\n")
    assert gpu_pack.main(["restore"]) == 0
    assert set(HEAVY) <= set(gpu_pack.git("ls-files").split()) and gpu_pack.git("status", "--porcelain") == ""
    left = exclude.read_text().splitlines()
    assert gpu_pack.WITHHOLD_BEGIN not in left and not any(name in line for line in left for name in HEAVY)
    assert ("/out2/" in left) == (edit != "end marker removed")  # the user's own pattern stays


def test_withhold_refuses_weights_with_staged_changes_and_marks_nothing(weights_repo):
    gpu_pack, repo = weights_repo
    (repo / HEAVY[0]).write_bytes(b"v" * gpu_pack.WITHHELD_MIN_BYTES)
    gpu_pack.git("add", HEAVY[0])
    with pytest.raises(SystemExit, match="staged changes"):
        gpu_pack.main(["withhold"])
    assert not gpu_pack.exclude_file().is_file() or gpu_pack.WITHHOLD_BEGIN not in gpu_pack.exclude_file().read_text()
    assert set(HEAVY) <= set(gpu_pack.git("ls-files").split())


def test_a_noise_run_stopped_at_its_limit_still_has_what_it_finished_evaluated(tmp_path):
    """The recipe's process hits its limit in round 2 (the second H200 call: round 1 had
    finished, its evaluation was queued behind round 2 and lost): the pack keeps time back and
    evaluates every folder with a best.pt, inside the run's own share of the time."""
    gpu_pack = gpu_pack_module()
    args = gpu_pack.build_parser().parse_args(["run", "--dry-run", "--out", str(tmp_path / "out"), "--work",
                                                str(tmp_path / "work"), "--noise-runs", "poi_n30", "--noise-epochs", "3"])
    pack = gpu_pack.Pack(args)
    pack.summary["stages"]["data"] = {"result": {"store": "STORE", "labels_30": "L.csv", "val_split": "val",
                                                 "n_train": 10, "n_val": 5}}
    calls = []

    def command(stage, argv, timeout, env=None, log_name=None):
        commands = json.loads(argv[argv.index("--commands") + 1])
        calls.append((commands, timeout))
        if len(calls) == 1:  # the training: round 1's 3 epochs and 1 of round 2's, then killed
            for folder, epochs in (("poi_n30", 3), ("poi_n30_round2", 1)):
                run = pack.runs_dir / folder
                run.mkdir(parents=True)
                (run / "best.pt").write_bytes(b"")
                (run / "results.csv").write_text("epoch,val_acc\n" + "".join(f"{e},0.5\n" for e in range(1, epochs + 1)))
            return {"status": "timeout"}
        for evaluate in commands:
            (Path(evaluate[-1])).mkdir(parents=True)
            (Path(evaluate[-1]) / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "split": "val"}))
        Path(argv[argv.index("--record") + 1]).write_text(json.dumps([{"argv": c, "status": "ok"} for c in commands]))
        return {"status": "ok"}

    pack.command = command
    record: dict = {}
    pack.stage_noise(record, limit=120)
    assert [c[0] for c in calls[0][0]] == ["train", "evaluate", "evaluate"]
    assert calls[0][1] <= 120 - gpu_pack.DRY_EVAL_RESERVE_S  # the time kept back
    assert [(c[0], Path(c[1]).name) for c in calls[1][0]] == [("evaluate", "poi_n30"), ("evaluate", "poi_n30_round2")]
    runs = record["runs"]
    assert runs["poi_n30"]["evaluate_status"] == "ok" and runs["poi_n30"]["eval_accuracy"] == 0.5
    assert runs["poi_n30_round2"]["status"] == "partial" and runs["poi_n30_round2"]["evaluate_status"] == "ok"
    assert record["status"] == "timeout"


def test_a_bundle_stopped_at_its_limit_still_brings_back_the_rounds_it_trained(tmp_path):
    """The rounds' process hits its limit in round 2: every round with a best.pt is packed
    first (the weights are what the call is for), then evaluated, in the time kept back; an
    earlier pack's weight file in the same folder is not taken for this run's."""
    gpu_pack = gpu_pack_module()
    out = tmp_path / "out"
    args = gpu_pack.build_parser().parse_args(["run", "--dry-run", "--out", str(out), "--work", str(tmp_path / "work"),
                                                "--stages", "data,bundle", "--bundle-epochs", "4"])
    pack = gpu_pack.Pack(args)
    (out / "bundle_round3_soft.fp16.pt").write_bytes(b"an earlier pack's")
    pack.summary["stages"]["data"] = {"result": {"store": "STORE48"}}
    calls = []

    def command(stage, argv, timeout, env=None, log_name=None):
        calls.append((log_name, argv, timeout))
        if log_name == "bundle_data":
            Path(argv[argv.index("--json") + 1]).write_text(json.dumps(
                {"combined": "COMBINED", "size": 64, "epoch_images": 100, "n_val": 10,
                 "train_rows": {"ferplus64": 80, "sfew64": 5}, "val_rows": {"ferplus64": 8, "sfew64": 2}}))
            return {"status": "ok"}
        commands = json.loads(argv[argv.index("--commands") + 1])
        if log_name == "bundle_train":  # round 1's 4 epochs and 1 of round 2's, then killed
            for folder, epochs in (("bundle", 4), ("bundle_round2", 1)):
                run = pack.runs_dir / folder
                run.mkdir(parents=True)
                (run / "best.pt").write_bytes(b"")
                (run / "results.csv").write_text("epoch,val_acc,val_acc_ferplus64,val_acc_sfew64\n"
                                                 + "".join(f"{e},0.5,0.6,0.4\n" for e in range(1, epochs + 1)))
            return {"status": "timeout"}
        for argv_ in commands:  # the finishing batch: exports and evaluations
            if argv_[0] == "export":
                Path(argv_[-1]).write_bytes(b"weights")
            else:
                Path(argv_[-1]).mkdir(parents=True)
                (Path(argv_[-1]) / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "members": {}}))
        return {"status": "ok"}

    pack.command = command
    record: dict = {}
    pack.stage_bundle(record, limit=200)
    names, train, finish = [c[0] for c in calls], calls[1], calls[2]
    assert names == ["bundle_data", "bundle_train", "bundle_finish"]
    trained = json.loads(train[1][train[1].index("--commands") + 1])
    assert [c[0] for c in trained] == ["train", "export", "export", "evaluate", "evaluate", "train", "export", "evaluate"]
    assert train[2] <= 200 - gpu_pack.DRY_BUNDLE_RESERVE_S  # the time kept back
    finishing = json.loads(finish[1][finish[1].index("--commands") + 1])
    assert [(c[0], Path(c[1]).name) for c in finishing] == [
        ("export", "bundle"), ("export", "bundle_round2"), ("evaluate", "bundle"), ("evaluate", "bundle_round2")]
    assert record["status"] == "timeout" and record["runs"]["bundle_soft"]["weights"] is None
    assert [record["runs"][n]["weights"] for n in ("bundle", "bundle_round2")] == ["bundle_round1.fp16.pt", "bundle_round2.fp16.pt"]
    assert not (out / "bundle_round3_soft.fp16.pt").exists()  # the earlier pack's, not this run's

