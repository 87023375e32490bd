"""What the `poi` commands print: the presentation layer beside cli.py.

cli.py parses options, calls one library function, handles its errors (one-line `fail`)
and prints what this module builds from the result: one function per command result,
returning rich renderables (tables) and `Line`s, in the order they are printed. Nothing
here prints, reads files or decides an exit status.

Imports: rich, and plain types and constants of poi_cli.core only (schema's statuses). The
results it formats (PrepareResult, AuditResult's summary, Report, ...) arrive as arguments
and are named for type checkers alone, so importing this module never loads torch, numpy or
pandas: `poi --help` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from poi_cli.core.schema import STATUS_OK

if TYPE_CHECKING:  # the result types, for annotations only (their modules import torch or pandas)
    from poi_cli.data.prepare import PrepareResult
    from poi_cli.study.calibrate import CalibrateResult
    from poi_cli.train.head_refit import HeadScore, RefitResult
    from poi_cli.train.run_folder import RunSummary
    from poi_cli.model.export import ExportResult
    from poi_cli.study.report import Report
    from poi_cli.deploy.records import FaceRecord


@dataclass(frozen=True)
class Line:
    """One printed line of text, as it is: no rich markup or emoji codes (it names the user's
    files, and `photo [edited].jpg` is a file name, not a style).

    highlight: colour numbers, paths and the like (rich's repr highlighter); off for
    almost every line. soft_wrap: never cut or wrapped at the console width (paths and
    commands stay copyable); otherwise wrapped at the width like a table cell.
    """

    text: str
    soft_wrap: bool = False
    highlight: bool = False


Item = Union[RenderableType, Line]  # what a command prints: tables and lines, in order


class FittedTable(Table):
    """A table that breaks lines between words where the console's width allows it.

    rich narrows the widest columns first and folds their cells mid-word: in an 80-column
    terminal `poi predict` printed `astronaut.j` / `pg` while the AUs column could have
    wrapped between its AUs. Here each column first gets its longest word (its header's as
    well where the width allows), then the spare width goes to the columns that need the least
    more to fit on one line. Where even the longest words do not fit, the longest are folded.
    """

    def add_column(self, *args: Any, overflow: str = "fold", **kwargs: Any) -> None:
        """Folded, not cut with an ellipsis: a cell names a file or a run the user copies."""
        super().add_column(*args, overflow=overflow, **kwargs)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._fit_columns(console, options)
        yield from super().__rich_console__(console, options)

    def _fit_columns(self, console: Console, options: ConsoleOptions) -> None:
        columns = self.columns
        for column in columns:
            column.width = None  # rendered before at another width
        pad = self.padding[1] + self.padding[3]
        room = options.max_width - pad * len(columns) - self._border_width()
        headers = [Measurement.get(console, options, column.header) for column in columns]
        cells = [[Measurement.get(console, options, cell) for cell in column.cells] for column in columns]
        widest = [max([header.maximum] + [m.maximum for m in measures]) for header, measures in zip(headers, cells)]
        if sum(widest) <= room:
            return  # it fits as it is
        cell_words = [max([1] + [m.minimum for m in measures]) for measures in cells]
        with_headers = [max(words, header.minimum) for words, header in zip(cell_words, headers)]
        widths = next((list(w) for w in (with_headers, cell_words) if sum(w) <= room), list(cell_words))
        while sum(widths) > room:  # too narrow even for the words: only the longest are folded
            widest_word = max(widths)
            if widest_word == 1:
                return
            widths[widths.index(widest_word)] -= 1
        spare = room - sum(widths)
        for index in sorted(range(len(columns)), key=lambda i: widest[i] - widths[i]):
            more = min(spare, widest[index] - widths[index])
            widths[index] += more
            spare -= more
        for column, width in zip(columns, widths):
            column.width = width

    def _border_width(self) -> int:
        """The columns' separators and, with show_edge, the two outer edges."""
        if self.box is None:
            return 0
        return len(self.columns) - 1 + (2 if self.show_edge else 0)


def note_lines(notes: Sequence[str], soft_wrap: bool = False) -> list[Line]:
    """`note: ...`, one line per note of a library result."""
    return [Line(f"note: {note}", soft_wrap=soft_wrap) for note in notes]


def _wrote(files: Sequence[Any]) -> str:
    return f"wrote {', '.join(str(f) for f in files)}"


# ------------------------------------------------------------------------ poi info


def info_table(result: dict, arch: str, classes: int, size: int) -> Table:
    """Parameters and GFLOPs of the deployed TRN and the full training model (`model_info`)."""
    table = FittedTable(title=f"POI {arch}, {classes} classes, {size}x{size} input (L_sub = {result['subregion_size']})")
    table.add_column("model")
    table.add_column("parameters (M)", justify="right")
    table.add_column("GFLOPs (MACs)", justify="right")
    table.add_row("deployed TRN (inference)", f"{result['trn_params'] / 1e6:.2f}", f"{result['trn_gflops']:.2f}")
    table.add_row("full model (training: TRN + PIN)", f"{result['full_params'] / 1e6:.2f}", f"{result['full_gflops']:.2f}")
    return table


# --------------------------------------------------------------------- poi prepare


def prepare_summary(dataset: str, result: "PrepareResult") -> list[Item]:
    """Images per split and status, the dataset's notes, and the speed of this run."""
    items: list[Item] = []
    if result.already_done:
        items.append(Line(f"{result.out_dir} is already prepared with these settings: nothing to do.", highlight=True))
    statuses = sorted({s for counts in result.counts.values() for s in counts}, key=lambda s: (s != STATUS_OK, s))
    items.append(Line(f"{dataset} -> {result.out_dir}", soft_wrap=True))
    table = FittedTable()
    table.add_column("split")
    for status in statuses:
        table.add_column(status, justify="right")
    for split, counts in sorted(result.counts.items()):
        table.add_row(split, *(str(counts.get(s, 0)) for s in statuses))
    items.append(table)
    items += note_lines(result.notes)
    if not result.already_done:
        resumed = f", {result.resumed} done by an earlier run" if result.resumed else ""
        speed = result.images_per_second
        speed_text = f"{speed:.0f}" if speed >= 10 else f"{speed:.2f}"
        items.append(Line(f"{result.processed} images in {result.seconds:.1f} s ({speed_text} images/s){resumed}"))
    return items


# ----------------------------------------------------------------------- poi noise


def noise_summary(path: Path, summary: dict, rate: float, seed: int) -> list[Item]:
    """Flips per class of `write_noisy_labels`, and where the label file went."""
    kept = (f" (a subset of {summary['split_images']}, subset seed {summary['subset_seed']}; the rest labelled -1)"
            if "subset" in summary else "")
    table = FittedTable(title=f"{summary['split']}: {summary['flipped']} of {summary['images']} labels flipped{kept} "
                              f"(realised rate {summary['realised_rate']:.4f}, asked {rate:g}, seed {seed})")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("flipped", justify="right")
    table.add_column("noisy labels", justify="right")
    for name, row in summary["per_class"].items():
        table.add_row(name, str(row["images"]), str(row["flipped"]), str(row["noisy_labels"]))
    never = ([Line(f"flips only among the classes the dataset labels: never to {', '.join(summary['never_labelled'])}",
                   soft_wrap=True)] if summary.get("never_labelled") and not summary.get("never_labelled_by") else [])
    if summary.get("never_labelled_by"):  # a combined folder: each face among its own dataset's classes
        holes = "; ".join(f"{name}'s never to {', '.join(classes)}" for name, classes in summary["never_labelled_by"].items())
        never = [Line(f"flips each face only among the classes its own dataset labels: {holes}", soft_wrap=True)]
    return [table, *never,
            Line(f"wrote {path} and {path.with_suffix('.json').name}; train with --labels {quote(str(path))}", soft_wrap=True)]


def combine_summary(root: Path, classes: list[str], members: list[dict]) -> list[Item]:
    """`poi combine`: each member's weight and faces per split, the union of the classes."""
    table = FittedTable(title=escape(f"{root}: {len(members)} datasets, {len(classes)} classes matched by name"))
    table.add_column("dataset")
    table.add_column("weight", justify="right")
    table.add_column("classes", justify="right")
    table.add_column("faces per split")
    for member in members:
        splits = ", ".join(f"{name} {n}" for name, n in member["splits"].items())
        table.add_row(escape(member["name"]), f"{member['weight']:g}", str(member["classes"]), splits)
    return [table, Line(f"classes: {', '.join(classes)}", soft_wrap=True),
            Line(f"train with `poi train {quote(str(root))}`: validation accuracy per dataset (val_acc_NAME), selected on their mean",
                 soft_wrap=True)]


# ----------------------------------------------------------------------- poi train


def train_done(run_dir: Any, summary: Optional["RunSummary"] = None) -> Line:
    """The last line of `poi train`: the run folder, its best validation epoch (best.pt), the
    last one's accuracy and the time it trained, and what to do with it."""
    told = ""
    if summary is not None:
        if summary.best_val_acc is not None:
            last = (f", last {summary.last_val_acc:.2%}" if summary.last_val_acc is not None
                    and summary.best_epoch != summary.epochs else "")
            told = f"best val_acc {summary.best_val_acc:.2%} at epoch {summary.best_epoch}{last}; "
        told += f"{_count(summary.epochs, 'epoch')} in {summary.minutes:.1f} min; "
    return Line(f"done: {run_dir} ({told}results.csv, best.pt, last.pt); evaluate with "
                f"`poi evaluate {quote(str(run_dir))} PREPARED_DIR`", soft_wrap=True)


def folds_summary(summary: dict) -> list[Item]:
    """`poi train --fold all`: accuracy per fold on its held-out images, then mean and spread."""
    table = FittedTable(title=escape(f"{summary['folds']}-fold cross-validation: {summary['folder']}"))
    for name, justify in (("fold", "right"), ("train images", "right"), ("test images", "right"), ("accuracy", "right"),
                          ("mean class recall", "right")):
        table.add_column(name, justify=justify)
    for row in summary["per_fold"]:
        table.add_row(str(row["fold"]), str(row["n_train"]), str(row["n_test"]), f"{row['accuracy']:.2%}",
                      f"{row['mean_class_recall']:.2%}")
    return [table, Line(f"accuracy over {summary['folds']} folds: mean {summary['accuracy_mean']:.2%}, "
                        f"std {summary['accuracy_std']:.2%} (min {summary['accuracy_min']:.2%}, max {summary['accuracy_max']:.2%}); "
                        f"pooled over all {summary['n_test']} images {summary['accuracy_pooled']:.2%}; "
                        f"wrote {summary['folder']}/cv.csv and cv.json", soft_wrap=True)]


# -------------------------------------------------------------------- poi evaluate


def evaluate_summary(result: dict, files: Sequence[Any]) -> list[Item]:
    """Notes, recall per class, then accuracy, PIN, consistency, strata and calibration lines."""
    table = FittedTable(title=escape(f"{result['checkpoint']} on {result['split']} ({result['n_images']} images)"))
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("recall", justify="right")
    for name, row in result["per_class"].items():
        table.add_row(name, str(row["n"]), "-" if row["recall"] is None else f"{row['recall']:.2%}")
    lines = [f"split: {result['split']} ({result['split_reason']})"] if result.get("split_reason") else []
    lines.append(f"accuracy {result['accuracy']:.2%}, mean class recall {result['mean_class_recall']:.2%} "
                 f"(recipe: {result['recipe']['description']}; the TRN alone {result['trn_accuracy']:.2%})")
    lines += agreement_lines(result)
    if result["pin_average_accuracy"] is not None:
        pin = result["pin_intermediate_accuracy"]
        lines.append(f"PIN intermediate p~* {'-' if pin is None else f'{pin:.2%}'}, region average {result['pin_average_accuracy']:.2%}")
    if result.get("consistency_quantiles"):
        q = result["consistency_quantiles"]
        lines.append(f"consistency w: min {q['min']:.4f}, 5% {q['q05']:.4f}, median {q['median']:.4f}, max {q['max']:.4f}")
    lines += strata_lines(result)
    lines += calibration_lines(result)
    lines.append(_wrote(files))
    return [*note_lines(result["notes"]), table, *(Line(line, soft_wrap=True) for line in lines)]


def _cell(cell: dict) -> str:
    """`88.12% (3050)`: a group's accuracy and its number of images ('-' for none)."""
    accuracy = "-" if cell["accuracy"] is None else f"{cell['accuracy']:.2%}"
    return f"{accuracy} ({cell['n']})"


def agreement_lines(result: dict) -> list[str]:
    """`poi evaluate`'s trust lines: accuracy per regions_agree level, by pin_expression, flagged vs the rest."""
    lines = []
    if result.get("regions_agree"):
        levels = ", ".join(f"{row['regions_agree']}/4 {_cell(row)}" for row in reversed(result["regions_agree"]))
        lines.append(f"accuracy by regions agreeing with the prediction (images): {levels}")
    if result.get("pin_agreement"):
        pin = result["pin_agreement"]
        lines.append(f"accuracy where the PIN's expression is the same: {_cell(pin['same'])}; differs: {_cell(pin['differs'])}")
    if result.get("flagged"):
        flagged = result["flagged"]
        gap = "" if flagged["gap"] is None else f": {flagged['gap'] * 100:.1f} points apart"
        lines.append(f"flagged ({flagged['rule']}): {_cell(flagged['flagged'])}; the rest {_cell(flagged['rest'])}{gap}")
    twins = result.get("twins")
    if twins and twins["with"]["n"]:
        lines.append(f"faces with {twins['rule']}: {_cell(twins['with'])}; without: {_cell(twins['without'])}")
    if result.get("members"):
        lines.append("accuracy per dataset (each among its own classes): "
                     + ", ".join(f"{name} {_cell(cell)}" for name, cell in result["members"].items()))
    return lines


def strata_lines(result: dict) -> list[str]:
    """`poi evaluate`'s Table IV lines: accuracy of the most / least confident images by each score."""
    by_score = {name: result.get(f"{name}_strata") or [] for name in ("confidence", "consistency")}
    lines = []
    for index, s in enumerate(by_score["confidence"]):
        parts = [f"by confidence {s['most_confident_accuracy']:.2%} / {s['least_confident_accuracy']:.2%}"]
        if index < len(by_score["consistency"]):
            w = by_score["consistency"][index]
            parts.append(f"by consistency {w['most_confident_accuracy']:.2%} / {w['least_confident_accuracy']:.2%}")
        lines.append(f"{s['fraction']:.0%} most / least confident: {'; '.join(parts)}")
    return lines


def calibration_lines(result: dict) -> list[str]:
    """`poi evaluate`'s calibration lines: the protocol, then one per score (ECE beside the ECE a perfectly
    calibrated score would measure on as many images, NLL, AURC, accuracy at 80 % coverage)."""
    calibration = result.get("calibration")
    if not calibration:
        return []
    stored = result.get("checkpoint_temperature")
    lines = [f"calibration study: {calibration['protocol']}; T fitted there {calibration['temperature_half']:.3f} "
             f"(checkpoint T_cal {'none' if stored is None else f'{stored:.3f}'})"]
    for name, row in calibration["scores"].items():
        if row is None:
            lines.append(f"  {name}: - (baseline model: no UEM w)")
            continue
        nll = "-" if row["nll"] is None else f"{row['nll']:.4f}"
        floor = f" (perfectly calibrated here: {row['ece_floor']:.4f})" if row.get("ece_floor") is not None else ""
        lines.append(f"  {name}: ECE {row['ece']:.4f}{floor}, NLL {nll}, AURC {row['aurc']:.4f}, "
                     f"accuracy at 80% coverage {row['accuracy_at_80']:.2%}")
    return lines


# --------------------------------------------------------------------- poi predict


def shared_folder(images: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """(the folder every image path lies under, each path relative to it), or (None, the paths)
    when they share none or one is not a file path (`<image 1>`, an upload's name): the table
    names the folder once in its caption, so that its narrow image column holds short names."""
    parents = [str(Path(image).parent) for image in images]
    if not images or any(image.startswith("<") for image in images) or "." in parents:
        return None, list(images)
    try:
        folder = os.path.commonpath(parents)
    except ValueError:  # absolute and relative paths mixed
        return None, list(images)
    if folder in ("", "/"):
        return None, list(images)
    return folder, [os.path.relpath(image, folder) for image in images]


def shown_path(path: Any) -> str:
    """A file path as the user would type it: relative to the working folder when that is
    shorter (always under it; `../models/m.onnx` beside it), else as it is."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    try:
        relative = os.path.relpath(text, os.path.abspath(os.curdir))
    except ValueError:  # another drive (Windows): no relative path
        return text
    return relative if len(relative) < len(text) else text


def predict_table(records: Sequence["FaceRecord"], checkpoint: Any, classes: Sequence[str], show_au: bool,
                  bundled: bool = False) -> Table:
    """One row per face (or per image without one): expression, confidence, how many of the
    four regions agree with it (`3/4`; consistency stays in JSON / CSV), AUs, status. Image
    paths are shown relative to the folder they share, which the caption names. The title
    names the model: the bundled one by its file name (its path, inside site-packages once
    installed, wrapped mid-word in an 80-column terminal), any other by shown_path."""
    from poi_cli.deploy.records import shown_percent  # numpy: not at import (test_render)

    folder, names = shared_folder([r.image for r in records])
    model = f"bundled model {Path(checkpoint).name}" if bundled else shown_path(checkpoint)
    table = FittedTable(title=escape(f"{model} ({len(classes)} classes)"),
                        caption=None if folder is None else escape(f"images in {folder}"))
    for column in ("image", "face", "expression", "confidence", "regions", *(("AUs > 0.5",) if show_au else ()), "status"):
        table.add_column(column, justify="right" if column in ("face", "confidence", "regions") else "left",
                         overflow="fold")
    for r, name in zip(records, names):
        ok = r.is_face
        cells = [escape(name), "" if r.face is None else str(r.face), r.expression or "-",
                 shown_percent(r.confidence) if ok else "-", regions_agreement(r) if ok else "-"]
        if show_au:
            cells.append(active_aus(r.aus))
        cells.append(r.status if ok else escape(f"{r.status}: {r.reason}"))
        table.add_row(*cells)
    return table


def regions_agreement(record: "FaceRecord") -> str:
    """`3/4`: how many of the four facial regions see the predicted expression ('-' without a PIN)."""
    return "-" if record.regions_agree is None else f"{record.regions_agree}/4"


def active_aus(aus: Optional[dict]) -> str:
    """`AU06(L,R) AU12(L,R)`: the AUs with probability >= 0.5 in some region, and the regions' initials."""
    def on(p: Optional[float]) -> bool:  # a region without a value (None) is not active
        return p is not None and p >= 0.5

    active = [f"{au}({','.join(reg.split('_')[0][0].upper() for reg, p in regions.items() if on(p))})"
              for au, regions in (aus or {}).items() if any(on(p) for p in regions.values())]
    return " ".join(active) or "-"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def predict_summary(images: int, counts: dict, csv_file: Optional[str], save_vis: Optional[str | Path],
                    videos: int = 0, frames: int = 0) -> Line:
    """`3 images: 1 face predicted, 0 images without a face, 2 errors`, and where the files went
    (with videos: `1 video (40 frames) and 2 images: ..., 3 frames or images without a face`)."""
    inputs = _count(images, "image")
    if videos:
        inputs = f"{_count(videos, 'video')} ({_count(frames, 'frame')})" + (f" and {inputs}" if images else "")
    return Line(f"{inputs}: {_count(counts['ok'], 'face')} predicted, "
                f"{_without_face(counts['no_face'], videos, images)} without a face, "
                f"{_count(counts['error'], 'error')}"
                + (f"; wrote {csv_file}" if csv_file else "") + (f"; pictures in {save_vis}" if save_vis else ""),
                soft_wrap=True)


def _without_face(n: int, videos: int, images: int) -> str:
    if not videos:
        return _count(n, "image")
    return _count(n, "frame") if not images else f"{n} {'frame or image' if n == 1 else 'frames or images'}"


def video_summaries(summaries: Sequence[dict]) -> list[Item]:
    """Per video: its frames and, per track, its span, dominant expression and share of time per expression."""
    items: list[Item] = []
    for video in summaries:
        span = "" if video["start"] is None else f", {video['start']:.2f}-{video['end']:.2f} s"
        head = (f"{video['video']}: {_count(video['frames'], 'frame')} analysed{span}, "
                f"{video['frames_with_face']} with a face")
        if video["no_face"]:
            head += "; no face in any analysed frame"
        items.append(Line(head, soft_wrap=True))
        if video["tracks"]:
            table = FittedTable(title=f"tracks ({video['expressions_from']} expressions)")
            for column in ("track", "frames", "seconds", "dominant", "share of time"):
                table.add_column(column, justify="right" if column in ("track", "frames") else "left", overflow="fold")
            for track in video["tracks"]:
                shares = " ".join(f"{name} {share:.0%}" for name, share in track["share"].items())
                table.add_row(str(track["track"]), str(track["frames"]), f"{track['first']:.2f}-{track['last']:.2f}",
                              track["dominant"], shares)
            items.append(table)
        if video["stopped"]:
            items.append(Line(f"warning: {video['video']}: {video['stopped']}; the frames before are kept", soft_wrap=True))
    return items


# ---------------------------------------------------------------------- poi export


def export_summary(result: "ExportResult") -> list[Line]:
    """What was written, and its largest difference from PyTorch (pass or fail is cli's to act on)."""
    what = "full model (TRN + PIN)" if result.full else "deployed TRN"
    what = f"fp16 weights of the {what}" if result.format == "weights" else what
    details = ", ".join(f"{name} {diff:.2e}" for name, diff in result.per_output_diff.items())
    done = "wrote" if result.passed else "checked (not written)"
    return [
        Line(f"{done} {result.path}: {what}, outputs {', '.join(result.output_names)}", soft_wrap=True),
        Line(f"largest difference from PyTorch on random input {tuple(result.input_shape)} (relative where |output| > 1): {result.max_diff:.2e} "
             f"({details}; tolerance {result.tolerance:g})", soft_wrap=True),
    ]


# ---------------------------------------------------------------------- poi report


def report_skipped(result: "Report") -> list[Line]:
    """`skipped PATH: why`, one line per folder the report left out (for stderr)."""
    return [Line(f"skipped {reason}", soft_wrap=True) for reason in result.skipped]


def _pct(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}"


def _cross_validation_line(row: Any) -> Line:
    """A row of cross_validation.csv: the folds' test accuracy (not their validation accuracy)."""
    spread = "" if _pct(row.accuracy_std) == "-" else f" ± {_pct(row.accuracy_std)}"
    return Line(f"cross-validation {row.cv or 'of fold runs'}: test accuracy on the held-out folds {_pct(row.accuracy_mean)}"
                f"{spread} % over {row.folds} folds (pooled {_pct(row.accuracy_pooled)} %)", soft_wrap=True)


def report_summary(result: "Report") -> list[Item]:
    """The runs table (final / best / evaluated accuracy in %) and where the report went."""
    table = FittedTable(title=f"{len(result.runs)} runs (accuracy %)")
    for column in ("run", "method", "noise", "epochs", "final val", "best val (epoch)", "best.pt evaluated"):
        table.add_column(column, justify="left" if column in ("run", "method") else "right")
    for _, row in result.summary.iterrows():
        planned = "?" if row["epochs_planned"] is None or row["epochs_planned"] != row["epochs_planned"] else int(row["epochs_planned"])
        best = "-" if row["best_epoch"] is None or row["best_epoch"] != row["best_epoch"] else f"{_pct(row['best_val_acc'])} ({int(row['best_epoch'])})"
        n = row.get("eval_n")
        where = [row["eval_split"]] if isinstance(row["eval_split"], str) else []
        where += [f"{int(n)} images"] if isinstance(n, (int, float)) and n == n else []  # n == n: not NaN
        evaluated = _pct(row["eval_acc"]) + (f" ({', '.join(where)})" if where else "")
        table.add_row(escape(row["run"]), row["method"], _pct(row["noise"]), f"{row['epochs_done']}/{planned}",
                      _pct(row["final_val_acc"]), best, evaluated)
    lines = [_cross_validation_line(row) for row in result.cross_validation.itertuples() if _pct(row.accuracy_mean) != "-"]
    named = [path.name for path in result.files if path.suffix != ".png"]
    pictures = len(result.files) - len(named)
    if pictures:
        named.append(f"{pictures} PNG{'s' if pictures > 1 else ''}")
    return [table, *lines, Line(f"wrote {len(result.files)} files in {result.out_dir} ({', '.join(named)})", soft_wrap=True)]


# ----------------------------------------------------------------------- poi audit


def audit_summary(summary: dict, files: Sequence[Any], thresholds: Sequence[float]) -> list[Item]:
    """What was audited, suspects per class at each threshold, how well each score finds the
    flipped labels (when the clean labels are known, else a note), and the files written."""
    items: list[Item] = [
        Line(f"audited {summary['n_images']} images of split {summary['split']}: {summary['mode']}; {summary['labels']}"),
    ]
    table = FittedTable(title="suspect labels (suspicion = w * (1 - p*\\[given label]))")
    table.add_column("class")
    for threshold in thresholds:
        table.add_column(f">= {threshold}", justify="right")
    for name, counts in summary["suspects_per_class"].items():
        table.add_row(name, *(str(counts[str(t)]) for t in thresholds))
    table.add_row("all", *(str(summary["suspects"][str(t)]) for t in thresholds), style="bold")
    items.append(table)
    if summary["detection"] is None:
        items.append(Line(f"note: {summary['detection_note']}"))
    else:
        detection = FittedTable(title=f"finding the {summary['flipped']} flipped labels ({summary['realised_noise_rate']:.2%})")
        for column in ("score", "ROC AUC", "precision @ noise count", "recall @ top 10%", "@ 20%", "@ 30%"):
            detection.add_column(column, justify="left" if column == "score" else "right")
        for name, m in summary["detection"].items():
            cells = [m["roc_auc"], m["precision_at_noise_count"], m["recall_at_top_10pct"], m["recall_at_top_20pct"], m["recall_at_top_30pct"]]
            detection.add_row(name, *("-" if v is None else f"{v:.3f}" for v in cells))
        items.append(detection)
        recovered = summary["suggested_recovers_clean_label"]
        if recovered is not None:
            items.append(Line(f"the suggested label (argmax p*) is the clean label for {recovered:.2%} of the flipped images"))
    items.append(Line(_wrote(files)))
    return items


# ----------------------------------------------------------------------- poi clean


def clean_summary(summary: dict, relabel: bool, files: Sequence[Any], prepared_dir: str) -> list[Line]:
    """Images selected and changed, what that did to the label noise (when known), and the next command."""
    s = summary
    action = "relabelled" if relabel else "dropped"
    lines = []
    if auto := s.get("auto"):
        folds = auto.get("valid_scored_by", 1)
        scored_by = f" scored by the {folds} fold models" if folds > 1 else ""
        lines.append(Line(f"--auto: noise rate estimated at {auto['estimated_noise_rate']:.1%} (suggestion right on "
                          f"{auto['suggestion_accuracy_valid']:.1%} of {auto['valid_split']}{scored_by}, agrees with "
                          f"{auto['suggestion_agreement_train']:.1%} of the given labels); on {auto['valid_split']} flipped "
                          f"at that rate, relabelling the top {auto['fraction']:.1%} leaves {auto['valid_noise_after']:.1%} "
                          f"wrong (from {auto['valid_noise_before']:.1%})", soft_wrap=True))
        if auto.get("fitted_training_labels"):
            from poi_cli.study.clean import FITTED_ADVICE

            lines.append(Line(f"warning: it agrees with far more of its training labels than it gets right on "
                              f"{auto['valid_split']}: {FITTED_ADVICE}", soft_wrap=True))
        if auto.get("valid_caveat"):
            lines.append(Line(f"warning: {auto['valid_caveat']}", soft_wrap=True))
    kept = s.get("n_held_out_kept") or 0  # never selected: the base of a --fraction is the rest
    base = f"the {s['n_images'] - kept} images the run trained on" if kept else f"{s['n_images']} images"
    lines.append(Line(f"{s['n_selected']} of {base} selected, {s['n_changed']} {action}"
                      + (f"; {s['n_not_audited']} images of the split not audited stay out of training (label -1)"
                         if s.get("n_not_audited") else "")))
    if "changed_wrong_before" in s:
        line = f"of the {s['n_changed']} {action}: {s['changed_wrong_before']} had a wrong label"
        if relabel:
            line += f", {s['changed_right_after']} now have the right one"
        after = "-" if s["noise_rate_after"] is None else f"{s['noise_rate_after']:.2%}"
        lines.append(Line(f"{line}; label noise {s['noise_rate_before']:.2%} -> {after}"))
    if s.get("n_held_out_kept"):
        again = ("" if s.get("held_out_run") else ": give the next `poi train` --heldout-from with the audited run's "
                 "folder to validate on them again")
        lines.append(Line(f"{s['n_held_out_kept']} images the run held out for validation keep their labels{again}",
                          soft_wrap=True))
    split = s.get("split", "train")  # the label file covers the split the audit did: train on that one
    on = "" if split == "train" else f" --train-split {quote(split)}"
    if s.get("held_out_run"):
        on += f" --heldout-from {quote(s['held_out_run'])}"
    if split == "test":  # a look at the test labels, never a training set (poi train refuses --train-split test)
        lines.append(Line(f"{_wrote(files)}; test is the split models are measured on: never train on it", soft_wrap=True))
        return lines
    lines.append(Line(f"{_wrote(files)}; train with `poi train {quote(str(prepared_dir))} --labels {quote(str(files[0]))}{on}`",
                      soft_wrap=True))
    return lines


# ------------------------------------------------------------------- poi refit-head


def refit_summary(result: "RefitResult") -> list[Table | Line]:
    """Each head tried (and the model's own) on the validation split, per member, the chosen one
    marked; the file written and the next step."""
    table = FittedTable(title=f"heads on {result.val_images} {result.split} images ({'face and mirror' if result.views == 2 else 'face'}); "
                              f"chosen by {result.select}", title_justify="left")
    table.add_column("class\npower")
    table.add_column("l2")
    for what in ("accuracy", "mean recall"):
        for name in result.members:
            table.add_column(f"{name}\n{what}", justify="right")
    table.add_column("score", justify="right")
    table.add_column("")

    def row(head: "HeadScore", mark: str) -> list[str]:
        return [("own head" if head.class_power is None else f"{head.class_power:g}"),
                ("" if head.l2 is None else f"{head.l2:g}"),
                *[f"{100 * head.accuracy[n]:.2f}" if n in head.accuracy else "-" for n in result.members],
                *[f"{100 * head.mean_recall[n]:.2f}" if n in head.mean_recall else "-" for n in result.members],
                f"{100 * head.score:.2f}", mark]

    table.add_row(*row(result.before, "chosen" if result.kept_own_head else ""))
    for head in result.candidates:
        table.add_row(*row(head, "chosen" if head is result.chosen else ""))
    took = " and ".join(f"{part} {value:.1f} s" for part, value in result.seconds.items())
    left_out = [Line(f"note: left out, the fit diverged (weights not finite): {'; '.join(result.diverged)}",
                     soft_wrap=True)] if result.diverged else []
    shown = [table, *left_out]
    if result.kept_own_head:
        return [*shown, Line(f"no re-fitted head scored above the model's own: wrote {result.written} with its own head and "
                            f"calibration ({result.train_images} training images and their mirrors; {took})", soft_wrap=True)]
    return [*shown, Line(f"wrote {result.written} (fitted on {result.train_images} training images and their mirrors; {took}; "
                        f"uncalibrated: run `poi calibrate {quote(str(result.written))} PREPARED_DIR --in-place` next)", soft_wrap=True)]


# ------------------------------------------------------------------- poi calibrate


def calibrate_summary(result: "CalibrateResult") -> list[Line]:
    """The recipe chosen (and the NLL of each one tried), the fitted T_cal, the one it replaces,
    NLL before and after, and the file written."""
    c = result.calibration
    before = "uncalibrated (T_cal = 1)" if result.previous is None else f"T_cal {result.previous.temperature:.4f}"
    tried = result.candidates
    why = ("the only one asked for" if len(tried) <= 1 else "lowest NLL after temperature scaling, ties to the cheaper; "
           + "; ".join(f"{t.recipe.describe()} {t.nll_after:.4f}" for t in tried))
    return [
        Line(f"recipe: {c.recipe.describe()} ({why})", soft_wrap=True),
        Line(f"T_cal = {c.temperature:.4f} fitted on {c.n_images} images of split {c.split} (was {before}); "
             f"NLL {abs(c.nll_before):.4f} -> {abs(c.nll_after):.4f}", soft_wrap=True),
        *([Line(f"warning: {c.caveat}", soft_wrap=True)] if c.caveat else []),
        Line(f"wrote {result.written}", soft_wrap=True),
    ]
