"""The `poi` command line: thin wrappers over the library functions."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from poi_cli import __version__

app = typer.Typer(
    name="poi",
    help="Noise-robust facial expression recognition with POI (Prior-based Objective Inference).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error and exit non-zero (no traceback for bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"poi {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Noise-robust facial expression recognition with POI (Prior-based Objective Inference)."""


@app.command()
def info(
    arch: str = typer.Option("resnet18", help="Backbone: resnet18, resnet34 or resnet50."),
    classes: int = typer.Option(7, "--classes", help="Number of expression classes (7 or 8)."),
    size: int = typer.Option(224, help="Input size in pixels (a multiple of 16 from 64 to 448)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Parameter counts and GFLOPs (multiply-accumulates) of the training model and the deployed TRN."""
    from poi_cli.info import model_info

    try:
        result = model_info(arch=arch, num_classes=classes, input_size=size)
    except ValueError as error:
        fail(str(error))
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"POI {arch}, {classes} classes, {size}x{size} input (L_sub = {result['subregion_size']})")
    table.add_column("model")
    table.add_column("parameters (M)", justify="right")
    table.add_column("GFLOPs (MACs)", justify="right")
    table.add_row("deployed TRN (inference)", f"{result['trn_params'] / 1e6:.2f}", f"{result['trn_gflops']:.2f}")
    table.add_row("full model (training: TRN + PIN)", f"{result['full_params'] / 1e6:.2f}", f"{result['full_gflops']:.2f}")
    console.print(table)
