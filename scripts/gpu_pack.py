#!/usr/bin/env python3
"""The GPU pack (issue 27): everything this project wants measured on a GPU, as one call of at
most 10 minutes, its results written as files. `scripts/gpu_pack.sh` is the entry point:

    bash scripts/gpu_pack.sh                 # on a machine with a CUDA GPU: results in $OUT, else runs/gpu_pack
    bash scripts/gpu_pack.sh --dry-run       # the same stages at tiny sizes on the CPU (a minute or two)
    python scripts/gpu_pack.py pack-data     # here, where FERPlus is: the faces the GPU machine trains on

Stages, in order, each under a hard time limit, each result written as soon as it is known:
  env                 nvidia-smi, torch, CUDA, cuDNN, NCCL, the GPU
  tests               the suite's GPU cases (`pytest -m gpu`; in the dry run on the CPU, POI_TEST_DEVICE=cpu)
  throughput          POI ResNet-18 training at 224 px, batch 256, bf16, channels_last: images/s and
                      peak GPU memory (benchmarks/train_throughput.py), the baseline beside it
  throughput_compile  the same POI step under torch.compile (GPU only)
  data                the prepared FERPlus store of the noise runs (unpacked from the carried pack)
  bundle              (only when --stages names it; issue 25) the bundled model's recipe on the GPU:
                      FERPlus train + SFEW 2.0 train as one dataset (`poi combine`, SFEW drawn 4x), POI
                      ResNet-10 at 96 px with the wild augmentations, `--rounds 2 --rounds-teacher
                      --rounds-fine-tune N` (poi's own audit, clean and teach), then round 3 on FERPlus's
                      annotator votes taught by round 2 (as the shipped v4), as many epochs as fit; every
                      round evaluated on FERPlus valid and SFEW val and brought back as packed fp16
                      weights (bundle_round1.fp16.pt, bundle_round2.fp16.pt, bundle_round3_soft.fp16.pt)
                      for `train_bundled_model.sh pack card` on the CPU. Reads the FERPlus pack and the
                      SFEW pack (`pack-sfew`)
  noise               cross-entropy and POI at 30 % label noise (the shipped seed-0 file) and the
                      clean-and-teach recipe (`poi train --rounds 2 --rounds-teacher --rounds-fine-tune N`:
                      round 2 fine-tuned from round 1, as many epochs at 0.4 x the lr) at 112 px, each evaluated on
                      FERPlus valid, with as many epochs as the time left allows; --noise-runs and
                      --noise-seed choose others (the 0 % pair ce_n0,poi_n0; a second training seed)

Results, in the output folder (at most 8 files, none in a sub-folder: what the device tool brings
back): summary.json and summary.md (rewritten after every stage, so a pack killed at any point
still returns what finished), pack.log (everything every stage printed) and details.tar.gz (each
stage's log, the benchmark JSON, pytest's junit XML, each run's config.json, results.csv,
evaluation and cleaning summaries); the bundle stage adds its weight files (three at most).

Subcommands: `run` (the orchestrator; standard library only, never imports torch, so that it
cannot hang on a GPU), `env`, `data`, `bundle-data` and `poi-batch` (stage helpers), `pack-data` and
`pack-sfew` (the carried faces),
`withhold` and `restore` (the model weights left out of a device call, then tracked again).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional
import xml.etree.ElementTree as ET

from poi_cli.core.atomic import atomic_write, atomic_write_text  # stdlib only: the bare GPU machine has it (PYTHONPATH)
from poi_cli.train.config import WILD_AUGMENTATIONS, cli_flags  # plain Python values: no torch in the orchestrator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACK = ROOT / "prepared" / "gpu_pack_ferplus"  # ignored by git; the device call carries it
DEFAULT_SFEW_PACK = ROOT / "prepared" / "gpu_pack_sfew96"  # the bundle stage's SFEW 2.0 (pack-sfew), carried likewise
SFEW_RAW_CANDIDATES = (ROOT.parent / "shared" / "datasets" / "sfew", ROOT / "shared" / "datasets" / "sfew")
DEFAULT_OUT = ROOT / "runs" / "gpu_pack"
NOISE30 = ROOT / "data_manifests" / "noise" / "ferplus_train_noise30_seed0.csv"
RAW_CANDIDATES = (ROOT.parent / "shared" / "datasets" / "ferplus", ROOT / "shared" / "datasets" / "ferplus")
TRAVEL_LIMIT = 64 * 2**20  # what a device call carries: the working tree, shared/ and the carried paths
PACK_FORMAT = 1
THROUGHPUT_TARGET = 5000  # images/s, POI ResNet-18 at 224 px, batch 256, on one H100 (issue 27)
OUT_FILES = ("summary.json", "summary.md", "pack.log", "details.tar.gz")
FINALIZE_S = 8  # kept back at the end of the budget: the last summary and details.tar.gz
DETAIL_MAX_BYTES = 2 * 2**20  # a run's files larger than this (label files, audits) stay out of details.tar.gz


# ------------------------------------------------------------------------------------ plan


@dataclass
class StagePlan:
    name: str
    cap_s: float  # the most this stage may take (GPU run)
    dry_cap_s: float  # in the dry run; 0: not run in the dry run
    min_s: float  # below this much time the stage is skipped rather than started (GPU run)
    dry_min_s: float  # the same in the dry run
    what: str


# the minimums: what each stage took on the first lent H200 (2026-12-04: env 8 s, tests 66 s,
# throughput 21 s, throughput_compile 61 s, data 5 s) and in the dry run on 2 CPU cores (env 2,
# tests 13, throughput 5, data 1, noise 15), with some room: a stage given less would time out
PLAN = [
    StagePlan("env", 30, 60, 10, 5, "nvidia-smi, torch, CUDA, cuDNN, NCCL"),
    StagePlan("tests", 150, 150, 75, 20, "pytest -m gpu"),
    StagePlan("throughput", 90, 90, 30, 10, "POI and baseline ResNet-18, 224 px, batch 256, bf16, channels_last"),
    StagePlan("throughput_compile", 120, 0, 75, 0, "POI under torch.compile"),
    StagePlan("data", 60, 60, 8, 3, "the prepared FERPlus store"),
    StagePlan("bundle", 0, 0, 150, 30, "the bundled model's recipe: FERPlus + SFEW train, three rounds, 96 px (issue 25)"),
    StagePlan("noise", 0, 0, 60, 20, "CE and POI at 30 % noise, the clean-and-teach recipe, 112 px (--noise-runs)"),  # cap 0: the rest
]
# what runs without --stages: all but bundle, a call of its own (issue 25's, not the noise study's)
DEFAULT_STAGES = [p.name for p in PLAN if p.name != "bundle"]
# kept for a selected later stage while the stages before it run (never from data, which both need)
RESERVE_S = {"bundle": 240, "noise": 150}
DRY_RESERVE_S = {"bundle": 60, "noise": 40}
NOISE_MIN_S, DRY_NOISE_MIN_S = RESERVE_S["noise"], DRY_RESERVE_S["noise"]
# kept from each noise run's training for evaluating what it finished, should the training hit its
# limit: a process start (about 9 s on the H200) and 1.5 s per evaluation
EVAL_RESERVE_S, DRY_EVAL_RESERVE_S = 25, 15
# the bundle stage's: a process start, packing up to three rounds (about 1 s each in process), their evaluations
BUNDLE_RESERVE_S, DRY_BUNDLE_RESERVE_S = 40, 20
# the noise stage's runs (--noise-runs): cross-entropy (--baseline) and POI on the clean labels
# (n0) or the shipped 30 % file (n30); poi_n30 goes on into the clean-and-teach recipe's round 2
NOISE_RUNS = {"ce_n30": "cross-entropy, 30 %", "poi_n30": "POI, 30 %", "ce_n0": "cross-entropy, 0 %",
              "poi_n0": "POI, 0 %"}
# the bundle stage: the bundled model's recipe (scripts/train_bundled_model.sh's round 1, with the wild
# augmentations its round 2 chose), its run folders and the weight files they come back as
BUNDLE_RECIPE = ["--weight-decay", "5e-4", "--schedule", "cosine", *cli_flags(WILD_AUGMENTATIONS)]  # round 1 adds a warm-up
BUNDLE_RUNS = {"bundle": "bundle_round1.fp16.pt", "bundle_round2": "bundle_round2.fp16.pt",  # run folder: weights file
               "bundle_soft": "bundle_round3_soft.fp16.pt"}
SOFT_LR_FACTOR = 0.1  # round 3's lr, of round 1's: the CPU's v4 fine-tuned at 0.01 after 0.1
SFEW_WEIGHT = 4  # SFEW's 860 faces drawn 4 times per epoch, as the CPU rounds drew them
# the bundled model's trunk: the deploy runtime's measured cost, and its packed weights (16.6 MB) come
# back from a device call (16 MiB a file); ResNet-18's (29 MB) would not
BUNDLE_ARCH = "resnet10"


# ------------------------------------------------------------------------------ helpers


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_csv_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return []


def number(value: Any) -> Optional[float]:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    x = number(value)
    return "–" if x is None else f"{x:,.{digits}f}{unit}"


def pct(value: Any) -> str:
    x = number(value)
    return "–" if x is None else f"{100 * x:.2f}"


# ------------------------------------------------------------------------------ the run


class Pack:
    """One run of the pack: stages in order under one deadline, results in `out`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        # the options first: a refused pack leaves no folder behind
        self.selected = {name for name in args.stages.split(",") if name} if args.stages else set(DEFAULT_STAGES)
        unknown = self.selected - {p.name for p in PLAN}
        if unknown or not self.selected:
            raise SystemExit(f"--stages: unknown stage(s) {', '.join(sorted(unknown)) or '(none)'} "
                             f"(known: {', '.join(p.name for p in PLAN)})")
        for stage in ("bundle", "noise"):
            if stage in self.selected and "data" not in self.selected:
                raise SystemExit(f"--stages: {stage} trains on the store the data stage makes ready: add data")
        if args.noise_seed < 0 or args.noise_warmup < 0 or (args.noise_epochs is not None and args.noise_epochs < 1):
            raise SystemExit("--noise-seed and --noise-warmup must be 0 or more, --noise-epochs 1 or more")
        if ((args.bundle_epochs is not None and args.bundle_epochs < 1) or args.bundle_max_epochs < 1
                or not 0 < args.bundle_fine_tune <= 2 or not 0 <= args.bundle_soft <= 2):
            raise SystemExit("--bundle-epochs and --bundle-max-epochs must be 1 or more, --bundle-fine-tune in (0, 2], "
                             "--bundle-soft in [0, 2]")
        if "bundle" in self.selected and not self.dry:
            sfew = read_json(Path(args.sfew_pack) / "pack.json")
            if not sfew:
                raise SystemExit(f"--stages bundle: no SFEW pack at {args.sfew_pack} (make it here with "
                                 "`python scripts/gpu_pack.py pack-sfew` and carry it)")
            if sfew.get("size") != args.bundle_size:
                raise SystemExit(f"--stages bundle: the SFEW pack holds {sfew.get('size')}-px faces, --bundle-size is "
                                 f"{args.bundle_size} (pack-sfew --size {args.bundle_size})")
        self.noise_runs = [run for run in args.noise_runs.split(",") if run]
        wrong = ", ".join(run for run in self.noise_runs if run not in NOISE_RUNS)
        if not self.noise_runs or wrong or len(set(self.noise_runs)) < len(self.noise_runs):
            problem = wrong or ("a run named twice" if self.noise_runs else "(none)")
            raise SystemExit(f"--noise-runs: {problem}: name each once, among {', '.join(NOISE_RUNS)}")
        self.out = Path(args.out or os.environ.get("OUT") or DEFAULT_OUT).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="poi_gpu_pack_"))
        self.stages_dir = self.work / "stages"
        self.runs_dir = self.work / "runs"
        self.stages_dir.mkdir(parents=True, exist_ok=True)
        self.python = sys.executable
        self.budget = float(args.budget or (300 if self.dry else 540))
        self.started = time.monotonic()
        self.deadline = self.started + self.budget
        self.log_path = self.out / "pack.log"
        self.log_lock = threading.Lock()
        self.log_path.write_text("")
        self.summary: dict[str, Any] = {
            "pack": {
                "mode": "dry-run (CPU, tiny sizes)" if self.dry else "GPU", "dry_run": self.dry,
                "started": now_iso(), "budget_s": self.budget, "host": platform.node(),
                "python": sys.executable, "work": str(self.work), "out": str(self.out),
                "stages_selected": [p.name for p in PLAN if p.name in self.selected],
                "command": " ".join(sys.argv),
            },
            "stages": {},
            "figures": {},
        }
        self.stop_reason: Optional[str] = None
        self.current: Optional[subprocess.Popen] = None
        signal.signal(signal.SIGTERM, self.terminated)

    def terminated(self, signum, frame) -> None:
        """SIGTERM (a limit outside the pack): end the running stage's processes, keep what finished."""
        if self.current is not None:
            try:
                os.killpg(self.current.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.summary["pack"]["status"] = "terminated (SIGTERM)"
        try:
            self.write_summary()
        finally:
            if not self.args.work and not self.args.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
            os._exit(143)

    # -- logging and files

    def log(self, line: str) -> None:
        with self.log_lock:
            print(line, flush=True)
            with open(self.log_path, "a") as handle:
                handle.write(line + "\n")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def write_summary(self) -> None:
        self.summary["pack"]["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.summary["pack"]["updated"] = now_iso()
        atomic_write_text(self.out / "summary.json", json.dumps(self.summary, indent=1, default=str) + "\n")
        atomic_write_text(self.out / "summary.md", render_markdown(self.summary))
        self.write_details()

    def write_details(self) -> None:
        """details.tar.gz: the stage logs and results, and each run's small files."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(self.stages_dir.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=f"stages/{path.relative_to(self.stages_dir)}")
            if self.runs_dir.is_dir():
                for path in sorted(self.runs_dir.rglob("*")):
                    if (path.is_file() and path.suffix not in (".pt", ".npy", ".onnx")
                            and path.stat().st_size <= DETAIL_MAX_BYTES and not path.name.startswith(".")):
                        tar.add(path, arcname=f"runs/{path.relative_to(self.runs_dir)}")
        atomic_write(self.out / "details.tar.gz", lambda f: f.write(buffer.getvalue()))

    # -- commands

    def command(self, stage: str, argv: list[str], timeout: float, env: Optional[dict] = None,
                log_name: Optional[str] = None) -> dict:
        """Run argv under a hard timeout (its whole process group is ended at the limit),
        its output streamed to the stage's log, pack.log and stdout; returns status, rc, seconds."""
        log_file = self.stages_dir / f"{log_name or stage}.log"
        shown = " ".join(argv)
        self.log(f"[{stage}] $ {shown}  (limit {timeout:.0f} s)")
        started = time.monotonic()
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", **(env or {})}
        with open(log_file, "a") as handle:
            handle.write(f"$ {shown}\n")
            # its own process group (ended whole at the limit), but not a new session: whatever ends
            # this command (the device tool at its limit) ends the stage's processes with it
            group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
            process = subprocess.Popen(argv, cwd=ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, text=True, errors="replace", **group)
            self.current = process

            def pump() -> None:
                for line in process.stdout:
                    handle.write(line)
                    handle.flush()
                    self.log(f"[{stage}] {line.rstrip()}")

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            timed_out = False
            try:
                process.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                timed_out = True
                self.log(f"[{stage}] time limit of {timeout:.0f} s reached: stopping the process group")
                for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        process.wait(timeout=grace)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            reader.join(timeout=5)
            self.current = None
        seconds = round(time.monotonic() - started, 1)
        status = "timeout" if timed_out else ("ok" if process.returncode == 0 else "failed")
        self.log(f"[{stage}] {status} (exit {process.returncode}) in {seconds} s")
        return {"status": status, "rc": process.returncode, "seconds": seconds, "argv": argv}

    # -- the stages

    def run(self) -> int:
        self.log(f"GPU pack {'dry run ' if self.dry else ''}started {self.summary['pack']['started']}: "
                 f"budget {self.budget:.0f} s, out {self.out}, work {self.work}")
        self.write_summary()
        for plan in PLAN:
            record = self.summary["stages"].setdefault(plan.name, {"what": plan.what})
            if plan.name not in self.selected:
                record.update(status="skipped", reason="not selected (--stages)")
                continue
            if self.stop_reason:
                record.update(status="skipped", reason=self.stop_reason)
                continue
            if self.dry and plan.dry_cap_s == 0 and plan.name not in RESERVE_S:  # cap 0 there: the rest
                record.update(status="skipped", reason=dry_skip_reason(plan.name))
                self.write_summary()
                continue
            allowed = stage_allowance(plan, self.remaining(), self.selected, self.dry)
            min_s = plan.dry_min_s if self.dry else plan.min_s
            if allowed < min_s:
                record.update(status="skipped", reason=f"budget: {max(allowed, 0):.0f} s left for it, needs {min_s:.0f} s")
                self.write_summary()
                continue
            record.update(status="running", budget_s=round(allowed), started=now_iso())
            self.write_summary()
            began = time.monotonic()
            try:
                getattr(self, f"stage_{plan.name}")(record, allowed)
            except Exception as error:  # a bug in a stage must not cost the others
                record.update(status="failed", error=f"{type(error).__name__}: {error}")
                self.log(f"[{plan.name}] failed: {type(error).__name__}: {error}")
            record["seconds"] = round(time.monotonic() - began, 1)
            self.write_summary()
        self.summary["pack"]["finished"] = now_iso()
        failed = [name for name, r in self.summary["stages"].items() if r.get("status") not in ("ok", "skipped")]
        self.summary["pack"]["status"] = "ok" if not failed else f"not ok: {', '.join(failed)}"
        self.write_summary()
        self.log("")
        for line in (self.out / "summary.md").read_text().splitlines():
            self.log(line)
        self.log(f"\nresults: {', '.join(str(self.out / name) for name in OUT_FILES)}")
        return 0 if not failed else 1

    def stage_env(self, record: dict, limit: float) -> None:
        target = self.stages_dir / "env.json"
        done = self.command("env", [self.python, str(Path(__file__)), "env", "--json", str(target)], limit)
        record.update(done)
        info = read_json(target) or {}
        record["result"] = info
        if done["status"] == "ok" and not self.dry and not info.get("cuda_available"):
            record["status"] = "failed"
            self.stop_reason = "no CUDA GPU visible to torch (on a CPU run scripts/gpu_pack.sh --dry-run)"
        if info.get("devices"):
            self.summary["figures"]["gpu"] = info["devices"][0].get("name")

    def stage_tests(self, record: dict, limit: float) -> None:
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                       if p.name != "test_gpu_pack.py" and "pytest.mark.gpu" in p.read_text(errors="replace"))
        junit = self.stages_dir / "tests.xml"
        argv = [self.python, "-m", "pytest", "-q", "-m", "gpu", "-rA", "-p", "no:cacheprovider",
                f"--junitxml={junit}", "-o", "junit_family=xunit2", *files]
        env = {"POI_TEST_DEVICE": "cpu"} if self.dry else {}
        done = self.command("tests", argv, limit, env=env)
        record.update(done)
        record["device"] = "cpu (POI_TEST_DEVICE=cpu)" if self.dry else "cuda"
        record["result"] = junit_summary(junit)
        result = record["result"]
        self.summary["figures"]["tests"] = (f"{result.get('passed', 0)} passed, {result.get('failed', 0)} failed, "
                                            f"{result.get('skipped', 0)} skipped")

    def throughput_argv(self, json_path: Path, compile_: bool) -> list[str]:
        argv = [self.python, str(ROOT / "benchmarks" / "train_throughput.py"), "--json", str(json_path)]
        if self.dry:
            argv += ["--device", "cpu", "--arch", "resnet10", "--size", "64", "--batch", "8", "--steps", "2",
                     "--rounds", "1", "--amp", "off"]
        else:
            argv += ["--device", "cuda", "--arch", "resnet18", "--size", "224", "--batch", "256",
                     "--steps", str(self.args.throughput_steps), "--rounds", "3", "--amp", "bf16", "--channels-last", "on"]
        if compile_:
            argv += ["--compile", "--models", "poi", "--rounds", "2"]
        return argv

    def stage_throughput(self, record: dict, limit: float, compile_: bool = False) -> None:
        name = "throughput_compile" if compile_ else "throughput"
        target = self.stages_dir / f"{name}.json"
        record.update(self.command(name, self.throughput_argv(target, compile_), limit))
        result = read_json(target)
        record["result"] = result
        if result:
            for model, values in result.get("models", {}).items():
                key = f"{model}{'_compiled' if compile_ else ''}"
                self.summary["figures"][f"throughput_{key}_images_per_s"] = values.get("images_per_s")
                self.summary["figures"][f"throughput_{key}_peak_gib"] = values.get("peak_gib")
        elif record["status"] == "ok":
            record["status"] = "failed"
            record["error"] = f"no {target.name} written"

    def stage_throughput_compile(self, record: dict, limit: float) -> None:
        self.stage_throughput(record, limit, compile_=True)

    def stage_data(self, record: dict, limit: float) -> None:
        target = self.stages_dir / "data.json"
        argv = [self.python, str(Path(__file__)), "data", "--work", str(self.work), "--json", str(target)]
        if self.dry:
            argv.append("--dry-run")
        elif self.args.data:
            argv += ["--prepared", self.args.data]
        else:
            argv += ["--pack", self.args.data_pack]
        record.update(self.command("data", argv, limit))
        record["result"] = read_json(target)
        if record["status"] == "ok" and not record["result"]:
            record.update(status="failed", error=f"no {target.name} written")

    # -- noise

    def data_result(self, record: dict) -> Optional[dict]:
        """The data stage's result for a stage that trains on it; None (the stage marked skipped) without one."""
        data = (self.summary["stages"].get("data") or {}).get("result")
        if not data:
            record.update(status="skipped", reason="no prepared data (the data stage did not finish)")
        return data or None

    def stage_noise(self, record: dict, limit: float) -> None:
        deadline = time.monotonic() + limit
        data = self.data_result(record)
        if data is None:
            return
        store, labels, val = data["store"], data["labels_30"], data["val_split"]
        record["data"] = {k: data.get(k) for k in ("source", "store", "n_train", "n_val", "val_split", "labels_30")}
        epochs, plan = self.noise_epochs(data, deadline)
        record["epochs"], record["epoch_plan"] = epochs, plan
        if self.dry:
            recipe = ["--arch", "resnet10", "--size", "64", "--batch", "16", "--lr", "0.05", "--lr-steps", str(epochs)]
        else:
            recipe = ["--arch", self.args.noise_arch, "--size", str(self.args.noise_size), "--batch", str(self.args.noise_batch),
                      "--lr", str(self.args.noise_lr), "--schedule", "step", "--lr-steps", lr_steps(epochs),
                      "--weight-decay", "1e-4",
                      *(["--warmup-epochs", str(self.args.noise_warmup)] if self.args.noise_warmup else [])]
        recipe = ["--epochs", str(epochs), "--seed", str(self.args.noise_seed), *recipe]
        threshold = self.args.clean_threshold
        if threshold is None and self.dry and "poi_n30" in self.noise_runs:
            # one epoch on 48 stripes leaves --auto nothing to relabel, and round 2 would not run at all
            threshold = 0.01
            record["note"] = "dry run: --clean-threshold 0.01, so that the second round runs"
        cleaning = ["--clean-threshold", str(threshold)] if threshold is not None else []
        record["recipe"], record["seed"] = " ".join(recipe), self.args.noise_seed
        project = str(self.runs_dir)

        def evaluate(folder: str) -> list[str]:
            run_dir = self.runs_dir / folder
            return ["evaluate", str(run_dir), store, "--split", val, "--out", str(run_dir / "eval")]

        # one process per training command and the evaluations of what it trained (`poi` commands,
        # in process: scripts/gpu_pack.py poi-batch), in --noise-runs' order (default: the 30 % pair,
        # cross-entropy first, then POI and the recipe's second round)
        groups = []
        for run in self.noise_runs:
            folder = run_folder(run, self.args.noise_seed)
            noisy = ["--labels", labels] if run.endswith("_n30") else []
            names = ["--project", project, "--name", folder]
            if run.startswith("ce_"):
                groups.append((run, [["train", store, *recipe, "--baseline", *noisy, *names], evaluate(folder)], [folder]))
            elif run == "poi_n30":
                rounds = ["--rounds", "2", "--rounds-teacher", "--rounds-fine-tune", str(epochs), *cleaning]
                groups.append((run, [["train", store, *recipe, *noisy, *rounds, *names], evaluate(folder),
                                     evaluate(f"{folder}_round2")], [folder, f"{folder}_round2"]))
            else:
                groups.append((run, [["train", store, *recipe, *noisy, *names], evaluate(folder)], [folder]))
        record["runs"], statuses = {}, []
        expected = plan.get("expected_s") or {}
        for index, (name, commands, folders) in enumerate(groups):
            left = deadline - time.monotonic()
            later = sum(expected.get(run, 0) for run, _, _ in groups[index + 1:])
            if expected.get(name) and later:
                # a slower run than planned must leave the runs after it their time
                left = min(left, max(1.5 * expected[name], left - later))
            if left < 15:
                for folder in folders:
                    record["runs"][folder] = {"status": "skipped", "reason": f"budget: {max(left, 0):.0f} s left"}
                statuses.append("skipped")
                continue
            batch = self.stages_dir / f"noise_{name}.json"
            group_end = time.monotonic() + left  # this run's share: the evaluations below stay inside it
            reserve = DRY_EVAL_RESERVE_S if self.dry else EVAL_RESERVE_S
            done = self.command("noise", [self.python, str(Path(__file__)), "poi-batch", "--record", str(batch),
                                          "--commands", json.dumps(commands)], left - reserve if left > 3 * reserve else left,
                                log_name=f"noise_{name}")
            statuses.append(done["status"])
            steps = {tuple(r["argv"][:2]): r for r in (read_json(batch) or [])}
            if done["status"] == "timeout":
                steps.update(self.evaluate_what_finished(name, commands, group_end))
            for folder in folders:
                run_dir = self.runs_dir / folder
                entry = run_summary(run_dir, epochs)
                entry["process_status"] = done["status"]
                evaluated = steps.get(("evaluate", str(run_dir)))
                if evaluated:
                    entry["evaluate_status"] = evaluated["status"]
                entry.update(evaluation_summary(run_dir / "eval" / "metrics.json"))
                if not run_dir.exists() and folder.endswith("_round2"):
                    clean = read_json(self.runs_dir / folders[0] / "clean" / "labels.json") or {}
                    if clean.get("n_changed") == 0:
                        entry.update(status="not trained", reason="the cleaning of round 1 changed no label")
                record["runs"][folder] = entry
                self.summary["figures"][f"noise_{folder}_val_acc"] = entry.get("val_acc_final")
            self.write_summary()
        record["status"] = "ok" if all(s == "ok" for s in statuses) else (
            "timeout" if "timeout" in statuses else "failed" if "failed" in statuses else "partial")
        clean = "poi_n30" in self.noise_runs and read_json(
            self.runs_dir / run_folder("poi_n30", self.args.noise_seed) / "clean" / "labels.json")  # not a reused --work's
        if clean:
            record["cleaning"] = {k: v for k, v in clean.items() if isinstance(v, (int, float, str, bool)) or v is None}

    def evaluate_what_finished(self, name: str, commands: list[list[str]], until: float) -> dict:
        """After a noise run's process hit its limit (round 2 of the recipe, say): the evaluations
        of its folders that have a best.pt and no evaluation yet (round 1's, a partial round 2's),
        in the time kept back for them; their poi-batch records by (command, folder)."""
        missing = [argv for argv in commands if argv[0] == "evaluate" and (Path(argv[1]) / "best.pt").is_file()
                   and not (Path(argv[-1]) / "metrics.json").is_file()]
        left = until - time.monotonic()
        if not missing or left < 5:
            return {}
        self.log(f"[noise] {name} stopped at its limit: evaluating what it finished ({len(missing)} run folder(s))")
        record = self.stages_dir / f"noise_{name}_evaluate.json"
        self.command("noise", [self.python, str(Path(__file__)), "poi-batch", "--record", str(record),
                               "--commands", json.dumps(missing)], left, log_name=f"noise_{name}")
        return {tuple(r["argv"][:2]): r for r in (read_json(record) or [])}

    def noise_epochs(self, data: dict, deadline: float) -> tuple[int, dict]:
        """Epochs of the noise runs' trainings: given (--noise-epochs), 1 in the dry run, else as many
        as the time left fits, from a short measured probe of the training speed at that size."""
        if self.args.noise_epochs:
            return int(self.args.noise_epochs), {"how": "--noise-epochs"}
        if self.dry:
            return 1, {"how": "dry run: one epoch"}
        poi, base, plan = self.probe_rates("noise", self.args.noise_arch, self.args.noise_size,
                                           data.get("size") or self.args.noise_size, self.args.noise_batch, deadline)
        startup = plan["process_start_s"]
        if not poi or not base:
            plan["how"] = "probe failed: 2 epochs"
            return 2, plan
        n, v = float(data["n_train"]), float(data["n_val"])
        # seconds per epoch: training, validation (a forward pass, about 4x a training step's
        # speed), checkpoints; the second round also runs its teacher's forward pass (about 0.4x)
        epoch_ce = n / base + v / (4 * base) + 1.0
        epoch_poi = n / poi + v / (4 * poi) + 1.0
        epoch_round2 = 1.4 * n / poi + v / (4 * poi) + 1.0
        audit = n / (2 * poi) + 15  # round 1's audit of its training labels and `poi clean --auto`
        per_run = {"ce_n0": epoch_ce, "ce_n30": epoch_ce, "poi_n0": epoch_poi, "poi_n30": epoch_poi + epoch_round2}
        fixed_run = {run: startup + (audit + 12 if run == "poi_n30" else 6) for run in per_run}
        per_epoch = sum(per_run[run] for run in self.noise_runs)
        fixed = sum(fixed_run[run] for run in self.noise_runs)  # a process each, the audit and cleaning, evaluations
        available = deadline - time.monotonic()
        epochs = int(0.85 * (available - fixed) / per_epoch)
        epochs = max(1, min(epochs, self.args.noise_max_epochs))
        plan.update(seconds_per_epoch_of_all_trainings=round(per_epoch, 2), fixed_s=round(fixed, 1),
                    available_s=round(available, 1), safety=0.85, max_epochs=self.args.noise_max_epochs,
                    expected_s={run: round(fixed_run[run] + epochs * per_run[run]) for run in self.noise_runs})
        self.log(f"[noise] {available:.0f} s left: {epochs} epochs (about {per_epoch:.1f} s per epoch of the "
                 f"{len(self.noise_runs)} runs' trainings, {fixed:.0f} s fixed, POI {poi:,.0f} and cross-entropy {base:,.0f} images/s)")
        return epochs, plan

    def probe_rates(self, stage: str, arch: str, size: int, store_size: int, batch: int, deadline: float,
                    extra: tuple[str, ...] = ()) -> tuple[Optional[float], Optional[float], dict]:
        """A short measured training speed (benchmarks/train_throughput.py) on the GPU: POI's and
        the baseline's images/s (None where the probe failed) and the plan record it starts."""
        probe = self.stages_dir / f"{stage}_probe.json"
        argv = [self.python, str(ROOT / "benchmarks" / "train_throughput.py"), "--json", str(probe),
                "--device", "cuda", "--arch", arch, "--size", str(size), "--store-size", str(store_size),
                "--batch", str(batch), "--steps", "12", "--rounds", "1", *extra]
        done = self.command(stage, argv, min(90, max(deadline - time.monotonic() - 60, 10)), log_name=f"{stage}_probe")
        rates = (read_json(probe) or {}).get("models", {})
        poi, base = number((rates.get("poi") or {}).get("images_per_s")), number((rates.get("baseline") or {}).get("images_per_s"))
        env = (self.summary["stages"].get("env") or {}).get("result") or {}
        startup = (number(env.get("import_torch_s")) or 5.0) + (number(env.get("cuda_init_s")) or 2.0) + 3.0
        return poi, base, {"how": "probe", "probe_status": done["status"], "poi_images_per_s": poi,
                           "baseline_images_per_s": base, "process_start_s": round(startup, 1)}

    # -- bundle (issue 25)

    def stage_bundle(self, record: dict, limit: float) -> None:
        deadline = time.monotonic() + limit
        data = self.data_result(record)
        if data is None:
            return
        target = self.stages_dir / "bundle_data.json"
        argv = [self.python, str(Path(__file__)), "bundle-data", "--work", str(self.work), "--ferplus", data["store"],
                "--size", str(self.bundle_size()), "--json", str(target)]
        argv += ["--dry-run"] if self.dry else ["--sfew-pack", self.args.sfew_pack]
        done = self.command("bundle", argv, min(120, max(limit - 60, 10)), log_name="bundle_data")
        stores = read_json(target)
        if done["status"] != "ok" or not stores:
            record.update(status="failed", error=f"the combined FERPlus + SFEW folder was not made ({done['status']})")
            return
        record["data"] = stores
        epochs, plan = self.bundle_epochs(stores, deadline)
        record.update(epochs=epochs, epoch_plan=plan)
        if self.dry:
            model = ["--arch", "resnet10", "--batch", "16"]
            lr = 0.05
        else:
            model = ["--arch", BUNDLE_ARCH, "--batch", str(self.args.bundle_batch)]
            lr = self.args.bundle_lr
        common = ["--size", str(self.bundle_size()), "--seed", "0", *model, *BUNDLE_RECIPE]
        # round 2 trains also where the audit relabels nothing (taught by and fine-tuned from round 1)
        rounds = ["--epochs", str(epochs["bundle"]), "--lr", str(lr), "--warmup-epochs", "1", "--rounds", "2",
                  "--rounds-teacher", "--rounds-fine-tune", str(epochs["bundle_round2"])]
        runs = {name: self.runs_dir / name for name in epochs}  # `--name bundle`, its `_round2`, bundle_soft
        record["recipe"] = " ".join(common + rounds)
        for name in BUNDLE_RUNS.values():  # an earlier pack's files in this --out are not this run's
            (self.out / name).unlink(missing_ok=True)
        # the weights are what the call is for: each round is packed as soon as it is trained, then evaluated
        export = lambda name: ["export", str(runs[name]), "--format", "weights", "--out", str(self.out / BUNDLE_RUNS[name])]  # noqa: E731
        evaluate = lambda name: ["evaluate", str(runs[name]), stores["combined"], "--split", "val",  # noqa: E731
                                 "--out", str(runs[name] / "eval")]
        commands = [["train", stores["combined"], *common, *rounds, "--project", str(self.runs_dir), "--name", "bundle"],
                    export("bundle"), export("bundle_round2"), evaluate("bundle"), evaluate("bundle_round2")]
        if "bundle_soft" in runs:  # round 3 as the CPU's v4: FERPlus's votes as targets, round 2 the teacher
            soft = ["--epochs", str(epochs["bundle_soft"]), "--lr", f"{lr * SOFT_LR_FACTOR:g}", "--soft-labels",
                    "--fine-tune", str(runs["bundle_round2"]), "--teacher", str(runs["bundle_round2"])]
            record["soft_recipe"] = " ".join(common + soft)
            commands += [["train", stores["combined"], *common, *soft, "--project", str(self.runs_dir), "--name", "bundle_soft"],
                         export("bundle_soft"), evaluate("bundle_soft")]
        reserve = DRY_BUNDLE_RESERVE_S if self.dry else BUNDLE_RESERVE_S
        left = deadline - time.monotonic() - reserve  # kept back: packing, then evaluating, what finished
        batch = self.stages_dir / "bundle_train.json"
        done = self.command("bundle", [self.python, str(Path(__file__)), "poi-batch", "--record", str(batch),
                                       "--commands", json.dumps(commands)], left, log_name="bundle_train")
        if done["status"] == "timeout":  # stopped in a training: pack every round with a best.pt, then evaluate
            finished = [export(name) for name, run in runs.items()
                        if (run / "best.pt").is_file() and not (self.out / BUNDLE_RUNS[name]).is_file()]
            finished += [evaluate(name) for name, run in runs.items()
                         if (run / "best.pt").is_file() and not (run / "eval" / "metrics.json").is_file()]
            if finished:
                self.command("bundle", [self.python, str(Path(__file__)), "poi-batch", "--record",
                                        str(self.stages_dir / "bundle_finish.json"), "--commands", json.dumps(finished)],
                             max(deadline - time.monotonic(), 5), log_name="bundle_finish")
        record["runs"] = {}
        for name, run in runs.items():
            entry = run_summary(run, epochs[name])
            rows = read_csv_rows(run / "results.csv")
            members = [key for key in (rows[0] if rows else {}) if key.startswith("val_acc_")]
            entry["val_acc_by_dataset_final"] = {key[len("val_acc_"):]: number(rows[-1].get(key)) for key in members}
            metrics = read_json(run / "eval" / "metrics.json") or {}
            entry.update(evaluation_summary(run / "eval" / "metrics.json"))
            entry["eval_by_dataset"] = {member: (values or {}).get("accuracy")
                                        for member, values in (metrics.get("members") or {}).items()}
            weights = self.out / BUNDLE_RUNS[name]
            entry["weights"] = weights.name if weights.is_file() else None
            record["runs"][name] = entry
            self.summary["figures"][f"{name}_val_acc_by_dataset"] = entry["val_acc_by_dataset_final"]
        clean = read_json(runs["bundle"] / "clean" / "labels.json")
        if clean:
            record["cleaning"] = {k: v for k, v in clean.items() if isinstance(v, (int, float, str, bool)) or v is None}
        missing = [name for name, entry in record["runs"].items() if not entry["weights"]]
        record["status"] = "timeout" if done["status"] == "timeout" else "ok" if done["status"] == "ok" and not missing else "failed"
        if missing and record["status"] != "ok":
            record["error"] = f"no weights of {', '.join(missing)} (pack.log says why)"

    def bundle_size(self) -> int:
        return 64 if self.dry else self.args.bundle_size

    def bundle_epochs(self, stores: dict, deadline: float) -> tuple[dict[str, int], dict]:
        """Epochs of each round, by run folder: round 1 (given, 1 in the dry run, else as many as
        fit, measured by a probe with the wild augmentations), round 2 (--bundle-fine-tune x round
        1's) and round 3 on the votes (--bundle-soft x round 1's; none at 0)."""
        shares = {"bundle_round2": self.args.bundle_fine_tune, "bundle_soft": self.args.bundle_soft}

        def rounds(first: int) -> dict[str, int]:
            return {"bundle": first, **{name: max(1, round(share * first)) for name, share in shares.items() if share > 0}}

        if self.args.bundle_epochs:
            return rounds(self.args.bundle_epochs), {"how": "--bundle-epochs"}
        if self.dry:
            return {name: 1 for name in rounds(1)}, {"how": "dry run: one epoch each"}
        poi, _, plan = self.probe_rates("bundle", BUNDLE_ARCH, self.args.bundle_size, stores["size"],
                                        self.args.bundle_batch, deadline, ("--wild", "--models", "poi"))
        if not poi:
            plan["how"] = "probe failed: 2 epochs"
            return rounds(2), plan
        n, v = float(stores["epoch_images"]), float(stores["n_val"])
        epoch_1 = n / poi + v / (4 * poi) + 1.0  # as the noise stage reckons an epoch
        epoch_taught = 1.4 * n / poi + v / (4 * poi) + 1.0  # and its teacher's forward pass (rounds 2 and 3)
        # process starts (the rounds' batch, round 3), the audit and cleaning, evaluations and packing
        fixed = 2 * plan["process_start_s"] + n / (2 * poi) + 15 + 40
        available = deadline - time.monotonic() - (DRY_BUNDLE_RESERVE_S if self.dry else BUNDLE_RESERVE_S)
        per_epoch = epoch_1 + sum(shares.values()) * epoch_taught  # per epoch of round 1
        first = max(1, min(int(0.85 * (available - fixed) / per_epoch), self.args.bundle_max_epochs))
        plan.update(seconds_per_epoch=[round(epoch_1, 2), round(epoch_taught, 2)], fixed_s=round(fixed, 1),
                    available_s=round(available, 1), safety=0.85, max_epochs=self.args.bundle_max_epochs)
        chosen = rounds(first)
        self.log(f"[bundle] {available:.0f} s left: epochs {chosen} (about {epoch_1:.1f} s per epoch of round 1, "
                 f"{epoch_taught:.1f} of a taught round, {fixed:.0f} s fixed, POI {poi:,.0f} images/s)")
        return chosen, plan


def stage_allowance(plan: StagePlan, remaining: float, selected: set[str], dry: bool) -> float:
    """Seconds a stage may take: what is left of the budget less the final summary's, less the
    reserves of the selected stages after it (bundle, noise), but not for the data stage, which
    they need (squeezing it out would leave their reserves unused), within the stage's cap."""
    allowed = remaining - FINALIZE_S
    if plan.name != "data":
        order = [p.name for p in PLAN]
        later = [name for name in order[order.index(plan.name) + 1:] if name in selected]
        allowed -= sum((DRY_RESERVE_S if dry else RESERVE_S).get(name, 0) for name in later)
    cap = plan.dry_cap_s if dry else plan.cap_s
    return min(allowed, cap) if cap else allowed


def dry_skip_reason(name: str) -> str:
    if name == "throughput_compile":
        return "dry run: torch.compile on the CPU builds C++ kernels for minutes (GPU runs only)"
    return "dry run: GPU only"


def run_folder(run: str, seed: int) -> str:
    """A noise run's folder: its name, with the training seed where it is not 0 (`poi_n30_s1`)."""
    return run if seed == 0 else f"{run}_s{seed}"


def lr_steps(epochs: int) -> str:
    """The step schedule's milestones: lr / 10 at 1/2 and 3/4 of the epochs (the CPU study's 6,9 of 12)."""
    if epochs < 4:
        return str(epochs)  # no decay inside so short a run
    steps = sorted({max(1, round(epochs / 2)), max(2, round(3 * epochs / 4))})
    return ",".join(str(s) for s in steps)


def run_summary(run_dir: Path, epochs: int) -> dict:
    rows = read_csv_rows(run_dir / "results.csv")
    entry: dict[str, Any] = {"run": run_dir.name, "epochs_planned": epochs, "epochs_done": len(rows)}
    if not rows:
        entry["status"] = "no finished epoch"
        return entry
    val = [number(r.get("val_acc")) for r in rows]
    entry["val_acc"] = val
    entry["val_acc_final"] = val[-1]
    known = [(v, i) for i, v in enumerate(val) if v is not None]
    if known:
        best, at = max(known, key=lambda t: (t[0], -t[1]))
        entry["val_acc_best"], entry["best_epoch"] = best, at + 1
    entry["train_acc_final"] = number(rows[-1].get("train_acc"))
    times = [number(r.get("epoch_time_s")) for r in rows if number(r.get("epoch_time_s"))]
    speeds = [number(r.get("images_per_s")) for r in rows if number(r.get("images_per_s"))]
    entry["epoch_time_s_median"] = statistics.median(times) if times else None
    entry["images_per_s_median"] = statistics.median(speeds) if speeds else None
    config = read_json(run_dir / "config.json") or {}
    resolved = config.get("resolved") or {}
    entry.update(device=resolved.get("device"), bf16=resolved.get("bf16"), channels_last=resolved.get("channels_last"),
                 n_train=resolved.get("n_train"), labels=config.get("labels"), teacher=config.get("teacher"),
                 fine_tune=config.get("fine_tune"))
    entry["status"] = "finished" if len(rows) >= epochs else "partial"
    return entry


def evaluation_summary(path: Path) -> dict:
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        return {}
    keep = ("accuracy", "mean_class_recall", "n_images", "split", "epoch", "checkpoint")
    return {f"eval_{k}": metrics.get(k) for k in keep if k in metrics}


def junit_summary(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    cases, counts = [], {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "").splitlines()[0][:300] if child.get("message") else ""
        counts[outcome] += 1
        cases.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome,
                      "seconds": number(case.get("time")), "message": message})
    return {**counts, "cases": cases}


def render_markdown(summary: dict) -> str:
    pack, stages, figures = summary["pack"], summary["stages"], summary["figures"]
    lines = [f"# GPU pack: {pack['mode']}", "",
             f"Started {pack['started']} on {pack.get('host')}, {pack.get('elapsed_s', 0):.0f} s of a {pack['budget_s']:.0f} s "
             f"budget; status: {pack.get('status', 'running')}." + (f" GPU: {figures['gpu']}." if figures.get("gpu") else ""),
             "", "| stage | status | seconds | limit | note |", "|---|---|---|---|---|"]
    for name, record in stages.items():
        note = record.get("reason") or record.get("error") or ""
        if name == "tests" and figures.get("tests"):
            note = figures["tests"]
        lines.append(f"| {name} | {record.get('status', '')} | {fmt(record.get('seconds'))} | {fmt(record.get('budget_s'), 0)} | {note} |")
    env = (stages.get("env") or {}).get("result") or {}
    if env:
        lines += ["", f"torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}, "
                      f"NCCL {env.get('nccl')}, {env.get('cpu_count')} CPUs, Python {env.get('python')}"]
    for key, title in (("throughput", "eager"), ("throughput_compile", "torch.compile")):
        result = (stages.get(key) or {}).get("result")
        if not result:
            continue
        s = result.get("settings", {})
        if key == "throughput":
            lines += ["", f"## Training throughput ({s.get('arch')}, {s.get('size')} px, batch {s.get('batch')}, "
                          f"device {result.get('device')}, bf16 {result.get('bf16')}, channels_last {result.get('channels_last')}; "
                          f"median of {s.get('rounds')} epochs of {s.get('steps')} steps after a warm-up)", "",
                      "| model | mode | images/s | peak memory (GiB) |", "|---|---|---|---|"]
            lines.append(f"| input pipeline alone | {title} | {fmt(result.get('input_images_per_s'))} | |")
        for model, values in result.get("models", {}).items():
            label = "POI (TRN + PIN)" if model == "poi" else "baseline (TRN + CE)"
            lines.append(f"| {label} | {title} | {fmt(values.get('images_per_s'))} | {fmt(values.get('peak_gib'), 2)} |")
    if not summary["pack"]["dry_run"] and stages.get("throughput", {}).get("result"):
        poi = number(figures.get("throughput_poi_images_per_s"))
        best = max([x for x in (poi, number(figures.get("throughput_poi_compiled_images_per_s"))) if x] or [0])
        lines += ["", f"Target (issue 27): POI at 224 px, batch 256, at least {THROUGHPUT_TARGET:,} images/s on one H100: "
                      f"{'met' if best >= THROUGHPUT_TARGET else 'not met'} ({best:,.0f} images/s at best here)."]
    noise = stages.get("noise") or {}
    if noise.get("runs"):
        data = noise.get("data") or {}
        epochs = noise.get("epochs")
        carried = ((stages.get("data") or {}).get("result") or {}).get("unpack", {}).get("splits", {})
        faces = "; ".join(f"{split} faces {'lossless' if v.get('lossless') else 'WebP quality %s, PSNR %s dB' % (v.get('quality'), v.get('psnr_db'))}"
                          for split, v in carried.items())
        noisy = any(folder.split("_")[1] == "n30" for folder in noise["runs"])
        labels = f"noisy labels (30 %) {Path(str(data.get('labels_30'))).name}" if noisy else "the clean labels"
        lines += ["", f"## Label noise: {epochs} epoch{'' if epochs == 1 else 's'}, `{noise.get('recipe')}`", "",
                  f"Data: {data.get('source')}, {data.get('n_train')} training and {data.get('n_val')} "
                  f"{data.get('val_split')} images{' (' + faces + ')' if faces else ''}; {labels}.", "",
                  "| run | epochs | final val % | best val % (epoch) | evaluate (best.pt) % | mean class recall % | s/epoch | images/s |",
                  "|---|---|---|---|---|---|---|---|"]
        names = {**{run_folder(run, seed): title for run, title in NOISE_RUNS.items() for seed in (0, noise.get("seed", 0))},
                 **{run_folder("poi_n30", seed) + "_round2": "clean-and-teach (round 2), 30 %" for seed in (0, noise.get("seed", 0))}}
        for folder, entry in noise["runs"].items():
            if "epochs_done" not in entry or entry.get("status") == "not trained":
                lines.append(f"| {names.get(folder, folder)} (`{folder}`) | {entry.get('status')}: {entry.get('reason', '')} | | | | | | |")
                continue
            lines.append(
                f"| {names.get(folder, folder)} (`{folder}`) | {entry['epochs_done']}/{entry['epochs_planned']} | "
                f"{pct(entry.get('val_acc_final'))} | {pct(entry.get('val_acc_best'))} ({entry.get('best_epoch', '–')}) | "
                f"{pct(entry.get('eval_accuracy'))} | {pct(entry.get('eval_mean_class_recall'))} | "
                f"{fmt(entry.get('epoch_time_s_median'))} | {fmt(entry.get('images_per_s_median'), 0)} |")
        cleaning = noise.get("cleaning")
        if cleaning:
            shown = {k: cleaning[k] for k in ("n_changed", "fraction", "threshold", "n_images") if k in cleaning}
            lines += ["", f"Cleaning of round 1's labels: {json.dumps(shown)}"]
        if noise.get("note"):
            lines += ["", noise["note"]]
    bundle = stages.get("bundle") or {}
    if bundle.get("runs"):
        data = bundle.get("data") or {}
        members = list((data.get("val_rows") or {}))
        train_rows, val_rows = data.get("train_rows") or {}, data.get("val_rows") or {}
        trained = ", ".join(f"{name} {train_rows.get(name)}" for name in members)
        validated = ", ".join(f"{name} {val_rows.get(name)}" for name in members)
        epochs = ", ".join(f"{folder} {count}" for folder, count in (bundle.get("epochs") or {}).items())
        soft = f"; round 3: `{bundle['soft_recipe']}`" if bundle.get("soft_recipe") else ""
        lines += ["", f"## The bundled model's recipe (issue 25): epochs {epochs}; `{bundle.get('recipe')}`{soft}", "",
                  f"Data: training faces {trained} ({data.get('epoch_images')} drawn per epoch); validation {validated}.",
                  "", "| run | epochs | " + " | ".join(f"final val {m} %" for m in members)
                  + " | best mean val % (epoch) | " + " | ".join(f"evaluate {m} % (best.pt)" for m in members) + " | weights |",
                  "|---|---|" + "---|" * (2 * len(members) + 2)]
        for folder, entry in bundle["runs"].items():
            finals = entry.get("val_acc_by_dataset_final") or {}
            evaluated = entry.get("eval_by_dataset") or {}
            lines.append(f"| `{folder}` | {entry.get('epochs_done', 0)}/{entry.get('epochs_planned')} | "
                         + " | ".join(pct(finals.get(m)) for m in members)
                         + f" | {pct(entry.get('val_acc_best'))} ({entry.get('best_epoch', '–')}) | "
                         + " | ".join(pct(evaluated.get(m)) for m in members) + f" | {entry.get('weights') or '–'} |")
        if bundle.get("cleaning"):
            shown = {k: bundle["cleaning"][k] for k in ("n_changed", "fraction", "threshold", "n_images") if k in bundle["cleaning"]}
            lines += ["", f"Cleaning of round 1's labels: {json.dumps(shown)}"]
    tests = (stages.get("tests") or {}).get("result") or {}
    if tests.get("cases"):
        lines += ["", f"## GPU test cases ({(stages.get('tests') or {}).get('device')})", "",
                  "| test | outcome | seconds |", "|---|---|---|"]
        for case in tests["cases"]:
            message = f" ({case['message']})" if case.get("message") and case["outcome"] != "passed" else ""
            lines.append(f"| {case['test']} | {case['outcome']}{message} | {fmt(case.get('seconds'), 2)} |")
    return "\n".join(lines) + "\n"


def cmd_run(args: argparse.Namespace) -> int:
    pack = Pack(args)
    try:
        return pack.run()
    finally:
        if not args.keep_work and not args.work:
            shutil.rmtree(pack.work, ignore_errors=True)


# ------------------------------------------------------------------------------ env


def cmd_env(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "time": now_iso()}
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        for key, argv in (("nvidia_smi", [smi]),
                          ("nvidia_smi_query", [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                                     "power.limit,pstate", "--format=csv"])):
            try:
                info[key] = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
            except (OSError, subprocess.TimeoutExpired) as error:
                info[key] = f"failed: {error}"
    else:
        info["nvidia_smi"] = None
    started = time.perf_counter()
    import torch

    info["import_torch_s"] = round(time.perf_counter() - started, 2)
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                torch_threads=torch.get_num_threads())
    from importlib import metadata

    versions = {}
    for name in ("numpy", "pandas", "pillow", "torchvision", "typer", "rich", "pytest", "triton", "matplotlib", "onnx"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # a missing optional package is a reading, not a failure
            versions[name] = None
    info["packages"] = versions
    if torch.cuda.is_available():
        started = time.perf_counter()
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        info["cuda_init_s"] = round(time.perf_counter() - started, 2)
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        try:
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as error:  # noqa: BLE001
            info["nccl"] = f"unavailable: {error}"
        info["devices"] = []
        for index in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(index)
            info["devices"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                    "memory_gib": round(p.total_memory / 2**30, 1),
                                    "multiprocessors": p.multi_processor_count})
    for key in ("torch", "torch_cuda", "cuda_available", "cudnn", "nccl", "import_torch_s", "cuda_init_s"):
        print(f"{key}: {info.get(key)}")
    for device in info.get("devices", []):
        print(f"device: {device}")
    if info.get("nvidia_smi_query"):
        print(info["nvidia_smi_query"].strip())
    Path(args.json).write_text(json.dumps(info, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------------------ poi-batch


def cmd_poi_batch(args: argparse.Namespace) -> int:
    """Run `poi` command lines one after another in this process (one start-up of torch and CUDA
    for a training and the evaluations of what it trained); each one's exit code and seconds
    are appended to --record as it finishes. An `evaluate` or `export` of a run folder without
    best.pt (a round that did not run) is skipped."""
    import traceback

    from poi_cli.cli import app

    records: list[dict] = []
    failed = False
    for argv in json.loads(args.commands):
        entry: dict[str, Any] = {"argv": argv}
        if argv[0] in ("evaluate", "export") and not (Path(argv[1]) / "best.pt").is_file():
            entry.update(status="skipped", reason=f"no {Path(argv[1]).name}/best.pt")
            print(f"skipped: poi {' '.join(argv)} ({entry['reason']})", flush=True)
        else:
            print(f"$ poi {' '.join(argv)}", flush=True)
            started = time.perf_counter()
            try:
                code = app(args=argv, prog_name="poi", standalone_mode=False)
                code = 0 if code is None else int(code)
            except SystemExit as error:
                code = error.code if isinstance(error.code, int) else 1
            except Exception:  # noqa: BLE001 - recorded, and the next command still runs
                traceback.print_exc()
                code = 1
            entry.update(status="ok" if code == 0 else "failed", rc=code, seconds=round(time.perf_counter() - started, 1))
            print(f"exit {code} after {entry['seconds']} s", flush=True)
            failed = failed or code != 0
        records.append(entry)
        Path(args.record).write_text(json.dumps(records, indent=1) + "\n")
    return 1 if failed else 0


# ------------------------------------------------------------------------------ data


def stripe_faces(labels, size: int, seed: int = 0):
    """Gray faces a small network learns in a few steps: class c is horizontal stripes of
    frequency c + 1 with a random phase and noise (tests/conftest.py's pattern)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(size)[:, None] / size
    faces = np.empty((len(labels), size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        value = 0.5 + 0.35 * np.sin(2 * np.pi * (label + 1) * y + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 0.05, (size, size))
        faces[i] = (np.clip(value, 0, 1)[..., None].repeat(3, 2) * 255).astype(np.uint8)
    return faces


def synthetic_store(root: Path, size: int = 48, per_class: Optional[dict] = None, num_classes: int = 8,
                    colour: bool = False) -> Path:
    """A tiny store for the dry run: FERPlus-shaped by default (8 classes, gray, 48 px, splits
    train and val); `num_classes=7, colour=True` stands in for SFEW (no contempt, colour)."""
    from poi_cli.core.manifests import class_names
    from poi_cli.core.schema import STATUS_OK
    from poi_cli.data.store import write_store

    from poi_cli.data.datasets.ferplus import VOTE_PREFIX

    per_class = per_class or {"train": 6, "val": 2}
    names = class_names(num_classes)
    votes = [] if colour else [VOTE_PREFIX + name for name in names]  # FERPlus-shaped: its annotators' votes
    rows, labels = [], []
    for split, count in per_class.items():
        for label in range(len(names)):
            for index in range(count):
                rows.append({"id": f"{split}/{names[label]}_{index:03d}", "source": f"{split}/{names[label]}_{index:03d}.png",
                             "split": split, "label": label, "label_name": names[label], "status": STATUS_OK,
                             "reason": "", "det_score": 1.0, "n_faces": 1, "store_index": len(labels),
                             # 8 of 10 votes for the label, 2 for the next class (majority kept)
                             **{column: 8 if c == label else 2 if c == (label + 1) % len(names) else 0
                                for c, column in enumerate(votes)}})
                labels.append(label)
    faces = stripe_faces(labels, size, seed=int(colour))
    if colour:
        faces[..., 0] = faces[..., 0] // 2 + 100  # tinted: a colour dataset beside the grey one
    name = "synthetic-colour" if colour else "synthetic-stripes"
    return write_store(root, faces, rows, dataset=name, classes=names, grayscale=not colour, extra_columns=votes)


def row_ranges(rows) -> list[list[int]]:
    """Sorted store rows as [start, stop) runs (compact in pack.json)."""
    ranges: list[list[int]] = []
    for row in map(int, rows):
        if ranges and ranges[-1][1] == row:
            ranges[-1][1] += 1
        else:
            ranges.append([row, row + 1])
    return ranges


def ranges_rows(ranges):
    import numpy as np

    return np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.zeros(0, np.int64)


def mosaic(tiles, columns: int):
    """(n, S, S[, C]) -> one image of `columns` tiles a row (zero-padded)."""
    import numpy as np

    n, s = tiles.shape[0], tiles.shape[1]
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, *tiles.shape[1:]), np.uint8)
    padded[:n] = tiles
    shape = (rows, columns, s, s, *tiles.shape[3:])
    order = (0, 2, 1, 3, *range(4, len(shape)))
    return padded.reshape(shape).transpose(order).reshape(rows * s, columns * s, *tiles.shape[3:])


def unmosaic(image, n: int, size: int, columns: int):
    import numpy as np

    rows = image.shape[0] // size
    extra = image.shape[2:]
    tiles = image.reshape(rows, size, columns, size, *extra).transpose(0, 2, 1, 3, *range(4, 4 + len(extra)))
    return np.ascontiguousarray(tiles.reshape(rows * columns, size, size, *extra)[:n])


def encode(image, lossless: bool, quality: int) -> tuple[bytes, str]:
    from PIL import Image

    buffer = io.BytesIO()
    if lossless:
        Image.fromarray(image).save(buffer, "PNG", optimize=True)
        return buffer.getvalue(), "png"
    Image.fromarray(image).save(buffer, "WEBP", quality=quality, method=4)
    return buffer.getvalue(), "webp"


def decode(data: bytes, gray: bool):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L" if gray else "RGB"))


def pack_store(source: Path, out: Path, quality: int = 90, lossless_splits: tuple[str, ...] = ("val", "valid")) -> dict:
    """Write a prepared store as a pack: its faces as mosaics (WebP at `quality`; PNG, lossless,
    for `lossless_splits`), manifest.csv.gz, prepared.json and pack.json (rows, codecs, PSNR,
    and the SHA-1 of the pixels each mosaic decodes to, which unpacking checks)."""
    import numpy as np

    meta = json.loads((source / "prepared.json").read_text())
    faces = np.load(source / "faces.npy", mmap_mode="r")
    n, size = faces.shape[0], faces.shape[1]
    gray = all(np.array_equal(faces[i:i + 4096, ..., 0], faces[i:i + 4096, ..., c])
               for i in range(0, n, 4096) for c in (1, 2))
    with open(source / "manifest.csv", newline="") as handle:
        manifest = list(csv.DictReader(handle))
    by_split: dict[str, list[int]] = {}
    for row in manifest:
        index = int(float(row.get("store_index") or -1))
        if index >= 0:
            by_split.setdefault(row["split"], []).append(index)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    columns = max(1, min(64, 16383 // size))
    chunk = columns * columns
    chunks, errors = [], {}
    for split in sorted(by_split):
        rows = np.array(sorted(set(by_split[split])), np.int64)
        lossless = split in lossless_splits
        squared, count = 0.0, 0
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            tiles = np.asarray(faces[part])
            tiles = tiles[..., 0] if gray else tiles
            data, codec = encode(mosaic(tiles, columns), lossless, quality)
            name = f"faces_{len(chunks):03d}.{codec}"
            (out / name).write_bytes(data)
            back = unmosaic(decode(data, gray), len(part), size, columns)
            diff = back.astype(np.int16) - tiles
            squared += float((diff.astype(np.float64) ** 2).sum())
            count += diff.size
            chunks.append({"file": name, "split": split, "rows": row_ranges(part), "codec": codec,
                           "quality": None if lossless else quality, "bytes": len(data),
                           "sha1": hashlib.sha1(back.tobytes()).hexdigest(),
                           "max_abs_error": int(np.abs(diff).max())})
        mse = squared / max(count, 1)
        errors[split] = {"lossless": bool(lossless), "quality": None if lossless else quality,
                         "psnr_db": None if mse == 0 else round(10 * math.log10(255**2 / mse), 2),
                         "images": int(len(rows))}
    (out / "manifest.csv.gz").write_bytes(gzip.compress((source / "manifest.csv").read_bytes(), 9, mtime=0))
    shutil.copyfile(source / "prepared.json", out / "prepared.json")
    info = {"format": PACK_FORMAT, "n_faces": int(n), "size": int(size), "gray": bool(gray), "columns": columns,
            "dataset": meta.get("dataset"), "source": str(source), "made": now_iso(), "splits": errors,
            "chunks": chunks}
    (out / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
    info["bytes"] = sum(p.stat().st_size for p in out.iterdir())
    return info


def unpack_store(pack: Path, out: Path) -> dict:
    """A pack (pack_store) back into a prepared store; returns what it checked."""
    import numpy as np

    info = json.loads((pack / "pack.json").read_text())
    if info.get("format") != PACK_FORMAT:
        raise SystemExit(f"{pack}: pack format {info.get('format')!r}, expected {PACK_FORMAT}")
    n, size, gray, columns = info["n_faces"], info["size"], info["gray"], info["columns"]
    from PIL import features

    if any(c["codec"] == "webp" for c in info["chunks"]) and not features.check("webp"):
        raise SystemExit(f"{pack}: this Pillow cannot read WebP; make the pack where it can be read, or carry a prepared store")
    out.mkdir(parents=True, exist_ok=True)
    temp = out / ".faces.npy.tmp"
    faces = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    mismatched = []
    for chunk in info["chunks"]:
        rows = ranges_rows(chunk["rows"])
        tiles = unmosaic(decode((pack / chunk["file"]).read_bytes(), gray), len(rows), size, columns)
        if hashlib.sha1(tiles.tobytes()).hexdigest() != chunk["sha1"]:
            mismatched.append(chunk["file"])  # another decoder's rounding: a lossy mosaic's pixels may differ by 1
        faces[rows] = tiles[..., None] if gray else tiles
    faces.flush()
    del faces
    os.replace(temp, out / "faces.npy")
    (out / "manifest.csv").write_bytes(gzip.decompress((pack / "manifest.csv.gz").read_bytes()))
    meta = json.loads((pack / "prepared.json").read_text())
    meta["carried"] = {"pack": str(pack), "splits": info["splits"], "made": info.get("made")}
    (out / "prepared.json").write_text(json.dumps(meta, indent=1) + "\n")
    lossless_bad = [c["file"] for c in info["chunks"] if c["file"] in mismatched and c["codec"] == "png"]
    if lossless_bad:
        raise SystemExit(f"{pack}: lossless mosaics decode to other pixels than packed: {', '.join(lossless_bad)}")
    return {"splits": info["splits"], "decoded_as_packed": not mismatched, "mismatched_chunks": mismatched}


def cmd_data(args: argparse.Namespace) -> int:
    work = Path(args.work) / "data"
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    labels = str(NOISE30)
    if args.dry_run:
        source = synthetic_store(work / "synthetic_source")
        packed = pack_store(source, work / "synthetic_pack")
        store = work / "synthetic48"
        result["unpack"] = unpack_store(work / "synthetic_pack", store)
        result["source"] = "synthetic stripes (dry run), packed and unpacked as the FERPlus pack is"
        result["pack_bytes"] = packed["bytes"]
        from poi_cli.data.noise import write_noisy_labels

        labels = str(write_noisy_labels(store, 0.3, seed=0)[0])
    elif args.prepared:
        store = Path(args.prepared).resolve()
        result["source"] = f"prepared store {store}"
    elif (Path(args.pack) / "pack.json").is_file():
        store = work / "ferplus48"
        started = time.perf_counter()
        result["unpack"] = unpack_store(Path(args.pack), store)
        result["unpack_s"] = round(time.perf_counter() - started, 1)
        result["source"] = f"the carried pack {Path(args.pack).name} (FERPlus, 48 px)"
    else:
        raw = next((p for p in RAW_CANDIDATES if p.is_dir()), None)
        if raw is None:
            raise SystemExit(f"no FERPlus for the noise runs: carry {DEFAULT_PACK.relative_to(ROOT)} (made here by "
                             "`python scripts/gpu_pack.py pack-data`), or give --data PREPARED_DIR")
        store = work / "ferplus48"
        subprocess.run([sys.executable, "-m", "poi_cli", "prepare", "ferplus", str(raw), "--out", str(store),
                        "--size", "48"], check=True, cwd=ROOT)
        result["source"] = f"poi prepare ferplus {raw} --size 48"
    from poi_cli.data.store import PreparedDataset

    dataset = PreparedDataset(store)
    val = dataset.validation_split()
    if val is None:
        raise SystemExit(f"{store} has no valid/val split to evaluate on")
    if not args.dry_run and dataset.meta.get("dataset") != "ferplus":
        raise SystemExit(f"{store} holds {dataset.meta.get('dataset')!r}, not FERPlus: the 30 % label file is FERPlus's")
    result.update(store=str(store), labels_30=labels, val_split=val, size=dataset.size, grayscale=dataset.grayscale,
                  n_train=int(len(dataset.split("train").labels)), n_val=int(len(dataset.split(val).labels)),
                  classes=dataset.classes)
    print(json.dumps({k: v for k, v in result.items() if k != "classes"}, indent=1))
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def upscale_store(source: Path, out: Path, size: int) -> Path:
    """A prepared store's faces resized to `size` (each face as `poi prepare` resizes a dataset's
    own crops: faces.resize_face), its manifest unchanged: FERPlus at 96 px from the carried 48-px
    pack, the same pixels `poi prepare ferplus RAW --size 96` stores where the 48-px faces are exact."""
    import numpy as np
    from PIL import Image

    from poi_cli.data.faces import resize_face

    import pandas as pd

    from poi_cli.data.duplicates import DIGEST_COLUMN, face_digest

    faces = np.load(source / "faces.npy", mmap_mode="r")
    out.mkdir(parents=True, exist_ok=True)
    temp = out / ".faces.npy.tmp"
    resized = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=(faces.shape[0], size, size, 3))
    digests = []
    for i in range(faces.shape[0]):
        resized[i] = resize_face(Image.fromarray(np.asarray(faces[i])), size)
        digests.append(face_digest(resized[i]))
    resized.flush()
    del resized
    os.replace(temp, out / "faces.npy")
    # the manifest as it was, but the digests are of the faces stored now (a lossy pack's training
    # faces are no longer pixel-identical to the valid faces they were twins of)
    manifest = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    if DIGEST_COLUMN in manifest.columns:
        rows = pd.to_numeric(manifest["store_index"], errors="coerce").fillna(-1).astype(int).to_numpy()
        manifest[DIGEST_COLUMN] = [digests[r] if r >= 0 else "" for r in rows]
    manifest.to_csv(out / "manifest.csv", index=False)
    meta = json.loads((source / "prepared.json").read_text())
    meta["size"] = size
    meta["preprocessing"] = {**meta["preprocessing"], "face_size": size, "input_size": size}
    meta["upscaled_from"] = {"store": str(source), "size": int(faces.shape[1])}
    (out / "prepared.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def cmd_bundle_data(args: argparse.Namespace) -> int:
    """The bundle stage's combined folder: FERPlus (the data stage's 48-px store) resized to
    --size, SFEW unpacked from its pack, `poi combine` of the two with SFEW drawn 4x."""
    from poi_cli.data.combined import combine
    from poi_cli.data.store import PreparedDataset

    work = Path(args.work) / "bundle"
    work.mkdir(parents=True, exist_ok=True)
    size = args.size
    started = time.perf_counter()
    ferplus = upscale_store(Path(args.ferplus), work / f"ferplus{size}", size)
    result: dict[str, Any] = {"upscale_s": round(time.perf_counter() - started, 1), "size": size}
    sfew = work / f"sfew{size}"
    if args.dry_run:
        source = synthetic_store(work / "synthetic_sfew_source", size, {"train": 3, "val": 2}, num_classes=7, colour=True)
        pack_store(source, work / "synthetic_sfew_pack")
        result["sfew_unpack"] = unpack_store(work / "synthetic_sfew_pack", sfew)
        result["sfew_source"] = "synthetic colour stripes (dry run), packed and unpacked as the SFEW pack is"
    else:
        result["sfew_unpack"] = unpack_store(Path(args.sfew_pack), sfew)
        result["sfew_source"] = f"the carried pack {Path(args.sfew_pack).name}"
    members = [PreparedDataset(ferplus), PreparedDataset(sfew)]
    if members[1].size != size:
        raise SystemExit(f"{args.sfew_pack} holds {members[1].size}-px faces, the bundle trains at {size}: "
                         f"pack SFEW with `pack-sfew --size {size}`")
    combined = combine([ferplus, sfew], work / "combined", weights=[1.0, float(SFEW_WEIGHT)])
    rows = {d.root.name: int(len(d.split("train").labels)) for d in members}
    val = {d.root.name: int(len(d.split(d.validation_split()).labels)) for d in members}
    result.update(combined=str(combined), ferplus=str(ferplus), sfew=str(sfew), train_rows=rows, val_rows=val,
                  epoch_images=rows[ferplus.name] + SFEW_WEIGHT * rows[sfew.name], n_val=sum(val.values()))
    print(json.dumps(result, indent=1))
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------------------ pack-data


def travelling_bytes(*exclude: Path) -> Optional[int]:
    """Bytes a device call sends besides the carried paths: tracked and untracked-not-ignored
    files (and shared/ inside the checkout), the folders `exclude` left out."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in filter(None, listed):
        path = ROOT / os.fsdecode(name)
        if path.is_file() and not any(folder in path.parents for folder in exclude):
            total += path.stat().st_size
    shared = ROOT / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def pack_source(args: argparse.Namespace, temp: Path, dataset: str, candidates: tuple[Path, ...], size: int,
                layout: str) -> Path:
    """The prepared store a pack is made of: --prepared, else `poi prepare DATASET RAW --size SIZE`
    into `temp` from --raw or the first of `candidates` that exists (../shared/datasets/...)."""
    if args.prepared:
        return Path(args.prepared).resolve()
    raw = Path(args.raw) if args.raw else next((p for p in candidates if p.is_dir()), None)
    if raw is None or not raw.is_dir():
        raise SystemExit(f"no {dataset}: give --raw RAW_DIR ({layout}) or --prepared DIR")
    source = temp / f"{dataset}{size}"
    subprocess.run([sys.executable, "-m", "poi_cli", "prepare", dataset, str(raw), "--out", str(source), "--size", str(size)],
                   check=True, cwd=ROOT)
    return source


def cmd_pack_sfew(args: argparse.Namespace) -> int:
    """SFEW 2.0 (train and val, colour) at the bundle stage's size, packed beside the FERPlus pack."""
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="poi_sfew_") as temp:
        source = pack_source(args, Path(temp), "sfew", SFEW_RAW_CANDIDATES, args.size, "its Train/ and Val/ folders")
        meta = json.loads((source / "prepared.json").read_text())
        if meta.get("dataset") != "sfew" or meta.get("size") != args.size:
            raise SystemExit(f"{source} holds {meta.get('dataset')!r} at {meta.get('size')} px, not SFEW at {args.size}")
        info = pack_store(source, out, args.quality)
    ferplus = Path(args.ferplus_pack).resolve()
    ferplus_bytes = sum(p.stat().st_size for p in ferplus.iterdir()) if ferplus.is_dir() else 0
    others = travelling_bytes(out, ferplus)  # the tree without both packs; both are carried
    total = None if others is None else others + ferplus_bytes + info["bytes"]
    with_ferplus = f"with the FERPlus pack ({ferplus_bytes / 2**20:.1f} MiB)" if ferplus_bytes else "without a FERPlus pack"
    note = "" if total is None else f"; {with_ferplus} a device call would carry {total / 2**20:.1f} MiB of {TRAVEL_LIMIT / 2**20:.0f}"
    print(f"{out}: {info['bytes'] / 2**20:.1f} MiB at WebP quality {args.quality} ({json.dumps(info['splits'])}){note}")
    if total is not None and total > TRAVEL_LIMIT:
        raise SystemExit("over what a device call carries: `python scripts/gpu_pack.py withhold` leaves the model "
                         "weights behind (`restore` after the call)")
    return 0


def withhold_hint() -> str:
    """What to do when a pack does not fit: withhold the model weights ("" once they are withheld)."""
    withheld = WITHHOLD_BEGIN in (exclude_file().read_text().splitlines() if exclude_file().is_file() else [])
    return "" if withheld else (": `python scripts/gpu_pack.py withhold` leaves the model weights behind, then run "
                                "pack-data again (and `restore` after the call)")


def cmd_pack_data(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="poi_ferplus48_") as temp:
        source = pack_source(args, Path(temp), "ferplus", RAW_CANDIDATES, 48, "the official layout")
        meta = json.loads((source / "prepared.json").read_text())
        if meta.get("dataset") != "ferplus":
            print(f"note: {source} holds {meta.get('dataset')!r}; the pack's noise runs use FERPlus's 30 % label file")
        others = travelling_bytes(out)
        if args.fit and others is not None and others >= TRAVEL_LIMIT - args.margin_mib * 2**20:
            # the rest of the tree fills the call alone: no quality could fit, so say so before any encoding
            raise SystemExit(f"the working tree alone would carry {others / 2**20:.1f} MiB of {TRAVEL_LIMIT / 2**20:.0f}"
                             + (withhold_hint() or ": no pack fits beside it"))
        for quality in [args.quality, *[q for q in (85, 80, 75) if q < args.quality]]:
            info = pack_store(source, out, quality)
            total = None if others is None else others + info["bytes"]
            note = "" if total is None else f"; a device call would carry {total / 2**20:.1f} MiB of {TRAVEL_LIMIT / 2**20:.0f}"
            print(f"{out}: {info['bytes'] / 2**20:.1f} MiB at WebP quality {quality} ({json.dumps(info['splits'])}){note}")
            if total is None or total <= TRAVEL_LIMIT - args.margin_mib * 2**20 or not args.fit:
                break
            print(f"over the limit with {args.margin_mib} MiB to spare: trying a lower quality")
        else:
            raise SystemExit("the pack does not fit a device call even at quality 75" + withhold_hint())
    print(f"carry it: run(command='bash scripts/gpu_pack.sh', carry=['{out.relative_to(ROOT) if ROOT in out.parents else out}'])")
    return 0


# ------------------------------------------------------------------------ withhold / restore

WITHHELD_MIN_BYTES = 4 * 2**20
WITHHOLD_BEGIN, WITHHOLD_END = "# scripts/gpu_pack.py withhold: begin", "# scripts/gpu_pack.py withhold: end"


def git(*argv: str, check: bool = True) -> str:
    done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"git {' '.join(argv[:2])}: {(done.stderr.strip() or 'failed').splitlines()[0]}")
    return done.stdout if check else str(done.returncode)


def exclude_file() -> Path:
    return ROOT / git("rev-parse", "--git-path", "info/exclude").strip()


def in_head(name: str) -> bool:
    return git("cat-file", "-e", f"HEAD:{name}", check=False) == "0"


def withheld_paths(lines: list[str]) -> tuple[list[str], list[str]]:
    """The withheld weights named in .git/info/exclude's withhold block, and its lines without
    them: the block's own markers and paths go, any other line there (a pattern or comment
    added by hand) stays. A path is a line naming a file HEAD tracks or tracked."""
    if WITHHOLD_BEGIN not in lines:
        return [], lines
    begin = lines.index(WITHHOLD_BEGIN)
    end = lines.index(WITHHOLD_END, begin) if WITHHOLD_END in lines[begin:] else len(lines)
    names, kept = [], []
    for line in lines[begin + 1:end]:
        name = line.strip().lstrip("/")
        if line.startswith("/") and name and ((ROOT / name).is_file() or in_head(name)):
            names.append(name)
        elif line.strip():
            kept.append(line)
    return names, lines[:begin] + kept + lines[end + 1:]


def cmd_withhold(args: argparse.Namespace) -> int:
    """A device call carries every tracked file; the model weights (shipped and historical, about
    80 MiB) leave the FERPlus pack no room. Untrack them in the index alone (`git rm --cached`) and
    ignore them in .git/info/exclude, so that the call leaves them behind; `restore` undoes both."""
    lines = exclude_file().read_text().splitlines() if exclude_file().is_file() else []
    if WITHHOLD_BEGIN in lines:
        raise SystemExit("weights are withheld already (`python scripts/gpu_pack.py restore` undoes it)")
    names = [name for name in git("ls-files", "-z", "--", "weights", "poi_cli/weights").split("\0")
             if name.endswith((".pt", ".onnx")) and (ROOT / name).is_file()
             and (ROOT / name).stat().st_size >= WITHHELD_MIN_BYTES]
    if not names:
        raise SystemExit("no tracked weights of 4 MiB or more to withhold")
    if git("diff", "--cached", "--quiet", "--", *names, check=False) != "0":
        raise SystemExit("weight files have staged changes (restore would drop them): commit or unstage them first")
    git("rm", "--cached", "-q", "--", *names)  # first: where git refuses, nothing is marked withheld
    exclude_file().parent.mkdir(parents=True, exist_ok=True)
    exclude_file().write_text("\n".join([*lines, WITHHOLD_BEGIN, *[f"/{name}" for name in names], WITHHOLD_END]) + "\n")
    size = sum((ROOT / name).stat().st_size for name in names) / 2**20
    print(f"withheld from device calls: {len(names)} weight files, {size:.1f} MiB (untracked in the index, files kept); "
          "commit nothing until `python scripts/gpu_pack.py restore`")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    lines = exclude_file().read_text().splitlines() if exclude_file().is_file() else []
    names, rest = withheld_paths(lines)
    if not names:
        raise SystemExit("nothing is withheld")
    deleted = [name for name in names if not in_head(name)]
    if deleted:  # a commit made while they were withheld recorded their deletion: resetting the index cannot bring them back
        commit = git("log", "--diff-filter=D", "-1", "--format=%h", "--", deleted[0]).strip() or "COMMIT"
        raise SystemExit(f"{len(deleted)} withheld weight files are not in HEAD: commit {commit} deleted them while they "
                         f"were withheld; bring them back with `git checkout {commit}^ -- {' '.join(deleted)}`, commit, "
                         "then run restore again (the files on disk are untouched)")
    git("reset", "-q", "HEAD", "--", *names)
    missing = set(names) - set(git("ls-files", "-z", "--", *names).split("\0"))
    if missing:
        raise SystemExit(f"still untracked after the reset: {', '.join(sorted(missing))}")
    exclude_file().write_text("\n".join(rest) + ("\n" if rest else ""))
    print(f"restored: {len(names)} weight files tracked again")
    return 0


# ------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pack (what scripts/gpu_pack.sh calls)")
    run.add_argument("--dry-run", action="store_true", help="the CPU, tiny sizes, synthetic data")
    run.add_argument("--out", default=None, help="results folder (default $OUT, else runs/gpu_pack)")
    run.add_argument("--work", default=None, help="working folder (default: a temporary one, removed at the end)")
    run.add_argument("--keep-work", action="store_true", help="keep the temporary working folder")
    run.add_argument("--budget", type=float, default=None, help="seconds for the whole pack (default 540; dry run 300)")
    run.add_argument("--stages", default=None, help="comma-separated stages to run, among " + ",".join(p.name for p in PLAN)
                                                    + " (default: " + ",".join(DEFAULT_STAGES) + ")")
    run.add_argument("--data", default=None, help="a prepared FERPlus store for the noise runs (instead of the pack)")
    run.add_argument("--data-pack", default=str(DEFAULT_PACK), help="the carried pack (pack-data's output)")
    run.add_argument("--throughput-steps", type=int, default=20, help="steps per timed epoch of the throughput stage")
    run.add_argument("--noise-epochs", type=int, default=None, help="epochs of the noise runs (default: as many as fit)")
    run.add_argument("--noise-max-epochs", type=int, default=60, help="at most this many (the paper's 60)")
    run.add_argument("--noise-runs", default="ce_n30,poi_n30",
                     help=f"the noise runs, in order, comma-separated, among {','.join(NOISE_RUNS)} (poi_n30 goes on "
                          "into the clean-and-teach recipe's round 2, poi_n30_round2)")
    run.add_argument("--noise-seed", type=int, default=0,
                     help="the training seed of the noise runs (their label file stays the shipped seed-0 flips); "
                          "folders of seeds other than 0 end in _sSEED")
    run.add_argument("--noise-arch", default="resnet18")
    run.add_argument("--noise-size", type=int, default=112)
    run.add_argument("--noise-batch", type=int, default=256)
    run.add_argument("--noise-lr", type=float, default=0.1)
    run.add_argument("--noise-warmup", type=float, default=0.0,
                     help="epochs of linear lr warm-up (`poi train --warmup-epochs`; the first H200 runs, without one, "
                          "sat at the majority class for their first 7 to 9 of 26 epochs)")
    run.add_argument("--sfew-pack", default=str(DEFAULT_SFEW_PACK), help="the bundle stage's SFEW (pack-sfew's output)")
    run.add_argument("--bundle-epochs", type=int, default=None, help="round 1's epochs (default: as many as fit)")
    run.add_argument("--bundle-max-epochs", type=int, default=80, help="at most this many (the CPU's round 1 had 40)")
    run.add_argument("--bundle-fine-tune", type=float, default=0.5,
                     help="round 2's epochs as a share of round 1's (fine-tuned from it at 0.4 x the lr, it the teacher)")
    run.add_argument("--bundle-soft", type=float, default=0.25,
                     help="round 3's epochs as a share of round 1's: fine-tuned from round 2 on FERPlus's annotator votes "
                          "(--soft-labels) at 0.1 x the lr, round 2 the teacher, as the CPU's v4 (0: no round 3)")
    run.add_argument("--bundle-size", type=int, default=96)
    run.add_argument("--bundle-batch", type=int, default=128)
    run.add_argument("--bundle-lr", type=float, default=0.1)
    run.add_argument("--clean-threshold", type=float, default=None,
                     help="--clean-threshold of the cleaning round (default: poi clean --auto's choice)")
    env = sub.add_parser("env", help="stage helper: the environment report")
    env.add_argument("--json", required=True)
    data = sub.add_parser("data", help="stage helper: the prepared store of the noise runs")
    data.add_argument("--work", required=True)
    data.add_argument("--json", required=True)
    data.add_argument("--dry-run", action="store_true")
    data.add_argument("--prepared", default=None)
    data.add_argument("--pack", default=str(DEFAULT_PACK))
    bundle = sub.add_parser("bundle-data", help="stage helper: the bundle stage's combined FERPlus + SFEW folder")
    bundle.add_argument("--work", required=True)
    bundle.add_argument("--json", required=True)
    bundle.add_argument("--ferplus", required=True, help="the data stage's FERPlus store (48 px)")
    bundle.add_argument("--size", type=int, default=96)
    bundle.add_argument("--sfew-pack", default=str(DEFAULT_SFEW_PACK))
    bundle.add_argument("--dry-run", action="store_true")
    batch = sub.add_parser("poi-batch", help="stage helper: poi command lines in one process")
    batch.add_argument("--commands", required=True, help="a JSON list of argument lists")
    batch.add_argument("--record", required=True)
    pack = sub.add_parser("pack-data", help="here, where FERPlus is: the faces a device call carries")
    pack.add_argument("--raw", default=None, help="FERPlus in its official layout (default ../shared/datasets/ferplus)")
    pack.add_argument("--prepared", default=None, help="or a store `poi prepare ferplus RAW --size 48` wrote")
    pack.add_argument("--out", default=str(DEFAULT_PACK))
    pack.add_argument("--quality", type=int, default=90, help="WebP quality of the training faces (valid: lossless PNG)")
    pack.add_argument("--margin-mib", type=float, default=2.0, help="room to leave under the 64 MiB a call carries")
    pack.add_argument("--fit", action=argparse.BooleanOptionalAction, default=True,
                      help="lower the quality until the call fits (default on)")
    sfew = sub.add_parser("pack-sfew", help="here, where SFEW 2.0 is: its faces for the bundle stage")
    sfew.add_argument("--raw", default=None, help="SFEW 2.0's Train/ and Val/ (default ../shared/datasets/sfew)")
    sfew.add_argument("--prepared", default=None, help="or a store `poi prepare sfew RAW --size 96` wrote")
    sfew.add_argument("--size", type=int, default=96)
    sfew.add_argument("--out", default=str(DEFAULT_SFEW_PACK))
    sfew.add_argument("--ferplus-pack", default=str(DEFAULT_PACK), help="the FERPlus pack the same call carries")
    sfew.add_argument("--quality", type=int, default=90, help="WebP quality of the training faces (val: lossless PNG)")
    sub.add_parser("withhold", help="before a device call: leave the model weights (about 80 MiB) behind")
    sub.add_parser("restore", help="after it: track the weights again")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "env": cmd_env, "data": cmd_data, "bundle-data": cmd_bundle_data, "poi-batch": cmd_poi_batch,
                "pack-data": cmd_pack_data, "pack-sfew": cmd_pack_sfew, "withhold": cmd_withhold, "restore": cmd_restore}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
