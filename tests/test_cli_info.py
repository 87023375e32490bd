"""`poi --version`, `poi --help` and `poi info`."""

import json

import pytest
from typer.testing import CliRunner

from poi_cli import __version__
from poi_cli.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_info_json_has_the_documented_keys_and_field_convention():
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert {"arch", "num_classes", "input_size", "trn_params", "full_params", "trn_gflops", "full_gflops"} <= set(info)
    assert info["arch"] == "resnet18" and info["num_classes"] == 7 and info["input_size"] == 224
    # ResNet-18 at 224 px is 1.82 G multiply-accumulates with a 1000-class head; ours has 7.
    assert info["trn_gflops"] == pytest.approx(1.82, abs=0.02)
    assert info["full_params"] > info["trn_params"] > 11_000_000
    assert info["full_gflops"] > info["trn_gflops"]


def test_info_scales_with_input_size():
    small = json.loads(runner.invoke(app, ["info", "--json", "--size", "224"]).output)
    large = json.loads(runner.invoke(app, ["info", "--json", "--size", "448"]).output)
    assert small["trn_params"] == large["trn_params"]
    # Every feature map doubles in side: four times the convolution cost (the FC is noise).
    assert large["trn_gflops"] == pytest.approx(4 * small["trn_gflops"], rel=0.01)


@pytest.mark.parametrize("args,needle", [(["--size", "100"], "multiple of 16"), (["--arch", "vgg16"], "--arch must be one of"), (["--size", "100"], "--size (the input side)")])
def test_info_bad_options_give_one_line_errors(args, needle):
    result = runner.invoke(app, ["info", *args])
    assert result.exit_code != 0
    assert needle in result.output
    assert "Traceback" not in result.output


def test_train_help_lists_every_config_option_in_its_section():
    from dataclasses import fields

    from poi_cli.train.config import TrainConfig

    result = runner.invoke(app, ["train", "--help"], terminal_width=250)
    assert result.exit_code == 0, result.output
    for f in fields(TrainConfig):
        if f.metadata["cli"] and not f.metadata["argument"]:
            flag = (f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",))[0].split("/")[0]
            assert flag in result.output, f.name
    for panel in ("Model", "Loss", "Optimiser", "Augmentation", "Data", "Run"):
        assert f"─ {panel} ─" in result.output
    assert "--flip" not in result.output and "--eval-batch" not in result.output  # library-only fields


def test_train_options_fill_the_config_by_field(monkeypatch):
    import poi_cli.pipeline as pipeline
    from poi_cli.train.config import TrainConfig

    seen = []
    monkeypatch.setattr(pipeline, "train", lambda config, console=None: seen.append(config) or "runs/train/exp")
    args = ["train", "data", "--size", "112", "-T", "2", "--baseline", "--no-augment", "--lr-steps", "5,9",
            "--uem-temperature", "3", "--uem-scale", "paper", "--compile", "--val-split", "none"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = TrainConfig(data="data", input_size=112, temperature=2.0, use_pin=False, augment=False,
                           lr_steps=[5, 9], uem_temperature=3.0, uem_scale="paper", compile=True, val_split="none")
    assert seen == [expected]
    assert runner.invoke(app, ["train", "data", "--no-uem", "--no-prior"]).exit_code == 0
    assert seen[-1] == TrainConfig(data="data", use_uem=False, prior_supervision=False)
    assert runner.invoke(app, ["train", "data"]).exit_code == 0 and seen[-1] == TrainConfig(data="data")
    bad = runner.invoke(app, ["train", "data", "--lr-steps", "5,x"])
    assert bad.exit_code == 1 and "--lr-steps must be comma-separated epochs" in bad.output
    missing = runner.invoke(app, ["train"])
    assert missing.exit_code == 1 and "give a prepared folder" in missing.output


def test_dash_h_is_help_as_in_git_pip_and_yolo():
    runner = CliRunner()
    for argv in (["-h"], ["predict", "-h"], ["train", "-h"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0 and "Usage: poi" in result.output, (argv, result.output)


def test_help_of_the_full_install_marks_no_command_and_says_where_the_docs_are():
    """The deploy install's help marks the train extra's commands (tests/test_deploy.py); with torch
    installed no command is marked, and the docs the help names are said to be in the source repository."""
    pytest.importorskip("torch")
    result = runner.invoke(app, ["--help"], terminal_width=400)
    assert result.exit_code == 0 and "needs poi-fer" not in result.output
    assert "see docs/predict.md in the source repository." in result.output
    assert "Needs the train extra" not in runner.invoke(app, ["train", "--help"], terminal_width=400).output


def test_arguments_are_named_as_the_readme_and_the_messages_name_them():
    """Usage lines said `{model} {prepared_dir}`, and a missing one "Missing argument 'prepared_dir'",
    while the README and poi's messages say RUN_DIR_OR_CKPT and PREPARED_DIR."""
    result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 2 and "Missing argument 'RUN_DIR_OR_CKPT'" in result.output
    assert "PREPARED_DIR" in runner.invoke(app, ["train", "-h"]).output
    assert "AUDIT_CSV_OR_RUN" in runner.invoke(app, ["clean", "-h"]).output


def test_every_command_that_runs_a_model_over_a_split_takes_amp(monkeypatch, tmp_path):
    """calibrate (T_cal under bf16 where the deploy runtime computes float32), audit, clean and
    report --data ran bf16 autocast wherever the machine had it, with no way to turn it off."""
    import poi_cli.study.audit as audit_module
    import poi_cli.study.calibrate as calibrate_module
    import poi_cli.study.clean as clean_module
    import poi_cli.study.report as report_module

    seen = {}

    def stop(name):
        def record(*args, **kwargs):
            seen[name] = kwargs.get("amp")
            if name in ("clean", "report"):  # they run a model too (--batch was missing there)
                assert kwargs.get("batch") == 8, name
            raise ValueError("stop")
        return record

    monkeypatch.setattr(calibrate_module, "calibrate", stop("calibrate"))
    monkeypatch.setattr(audit_module, "audit", stop("audit"))
    monkeypatch.setattr(clean_module, "clean", stop("clean"))
    monkeypatch.setattr(report_module, "build_report", stop("report"))
    runner.invoke(app, ["calibrate", "m.pt", "data", "--amp", "off"])
    runner.invoke(app, ["audit", "m.pt", "data", "--amp", "off", "--out", str(tmp_path / "audit")])
    runner.invoke(app, ["clean", "m.pt", "data", "--out", str(tmp_path / "l.csv"), "--auto", "--amp", "off", "--batch", "8"])
    runner.invoke(app, ["report", "runs", "--data", "data", "--amp", "off", "--out", str(tmp_path / "report"),
                        "--batch", "8"])
    assert seen == {"calibrate": "off", "audit": "off", "clean": "off", "report": "off"}


def test_amp_is_checked_where_no_model_runs_too(tmp_path):
    """report without --data and clean of an audit.csv took --amp foo without a word."""
    for argv in (["report", str(tmp_path)], ["clean", str(tmp_path / "audit.csv"), "data", "--out", str(tmp_path / "l.csv"),
                                             "--threshold", "0.5"]):
        result = runner.invoke(app, [*argv, "--amp", "foo"])
        assert result.exit_code == 1 and result.stderr == "error: --amp must be one of auto, bf16, off, got 'foo'\n"


@pytest.mark.parametrize("module", ["poi_cli", "poi_cli.cli"])
def test_python_m_runs_the_cli(module):
    """`python -m poi_cli.cli --help` printed nothing and exited 0 (no __main__ guard)."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and __version__ in done.stdout, done.stderr
