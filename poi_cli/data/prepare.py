"""`poi prepare`: a dataset's official layout -> a prepared store (see poi_cli.data.store).

    parse labels (poi_cli.data.datasets) -> load images in a thread pool -> [MTCNN, batched]
    -> align on five landmarks, or resize a pre-cropped face -> a row of faces.npy

faces.npy is preallocated as a memory-mapped .npy and every face is written into its
row in place, so a 290k-face AffectNet never has to fit in RAM. Resuming: progress.json
holds the run's settings and progress.jsonl gets one line per finished image at each
checkpoint (after the face rows are flushed to disk), so an interrupted run loses at
most the last couple of seconds. manifest.csv and then prepared.json are written last;
once prepared.json exists a re-run with the same settings does nothing.

RAW_DIR is only read. A bad image gets a status and a reason in the manifest and the
run goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from poi_cli import __version__
from poi_cli.core.errors import PoiError
from poi_cli.core.schema import DEVICES
from poi_cli.core.locks import LockError, claim
from poi_cli.core.atomic import atomic_write_text
from poi_cli.data.datasets import PENDING, Item, LayoutError, ParsedDataset, parse_dataset
from poi_cli.data.datasets.common import dataset_manifest
from poi_cli.data.duplicates import DIGEST_COLUMN, duplicate_notes, face_digest
from poi_cli.data.faces import (BLANK_REASON, DETECTORS, ImageLoadError, align_face, face_at, is_blank, is_grayscale, largest_face,
                                load_image, make_detector, resize_face)
from poi_cli.core.manifests import class_names
from poi_cli.core.progress import progress_bar
from poi_cli.core.schema import LANDMARK_NAMES, STATUS_BAD_IMAGE, STATUS_ERROR, STATUS_EXCLUDED, STATUS_NO_FACE, STATUS_OK
from poi_cli.data.preprocess import Preprocessing
from poi_cli.data.folds import FOLD_COLUMN, NO_FOLD, RANDOM_PROTOCOL, RANDOM_SPLIT_NOTE, SUBJECT_COLUMN, random_test_mask, subject_folds
from poi_cli.core.layout import META_FILE, PREPARE_JOURNAL_FILE, PREPARE_PROGRESS_FILE, STORE_FILES
from poi_cli.data.store import MANIFEST_COLUMNS, STORE_FORMAT, StoreError, StoreWriter, store_meta
CHECKPOINT_SECONDS = 2.0

# Image-level statuses: core.schema (ok, bad_image, no_face, error; the parsers set
# excluded / missing; see docs/datasets.md).


class PrepareError(PoiError):
    """Bad arguments or OUT_DIR state; the message is one line."""


@dataclass
class PrepareResult:
    out_dir: Path
    counts: dict[str, dict[str, int]]  # split -> status -> images
    notes: list[str]
    already_done: bool = False  # a finished run with the same settings was found: nothing done
    resumed: int = 0  # images an earlier, interrupted run had finished
    processed: int = 0  # images loaded by this run
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


# A detected image's manifest reason, of which the notes count each
KEPT_LARGEST = "kept the largest"
KEPT_MARKED = "kept the one the dataset marks"  # its shipped landmarks or face box say which face is labelled
AWAY_FROM_MARK = "where the dataset marks its face"


@dataclass
class _Loaded:
    """What a loader thread hands back for one image."""

    image: Any = None  # PIL image, kept only when it still has to go through detection
    shipped_at: np.ndarray | None = None  # (x, y): the centre of the face the dataset's box or landmarks mark
    face: np.ndarray | None = None
    gray: bool | None = None
    status: str = STATUS_OK
    reason: str = ""


# ------------------------------------------------------------------------ entry point

def prepare(
    dataset: str,
    raw_dir: str | Path,
    out_dir: str | Path,
    size: int = 224,
    detect: bool | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    splits: list[str] | None = None,
    workers: int = 2,
    show_progress: bool = True,
    detector: Any = "mtcnn",
    folds: int | None = None,
    fold_seed: int = 0,
    test_fraction: float = 0.0,
) -> PrepareResult:
    """Prepare `dataset` from its official layout in `raw_dir` into `out_dir`.

    detect None: the dataset's default (off for sets that ship cropped or aligned
    faces). `detector`: a name in faces.DETECTORS (the default "mtcnn": MTCNN run by ONNX
    Runtime, the detector `poi predict` uses, so training and predicted faces are cut the
    same way), or anything with .detect(list of images) (tests).
    folds None: the dataset's default (10 subject-independent folds for CK+, none elsewhere;
    0 for none); test_fraction > 0: a random, class-stratified share of train becomes split
    test instead (the POI paper's CK+ protocol at 0.2). See poi_cli/data/folds.py.
    """
    if not 32 <= size <= 1024:
        raise PrepareError(f"--size must lie in 32..1024, got {size}")
    if batch_size < 1:
        raise PrepareError(f"--batch must be at least 1, got {batch_size}")
    if device not in DEVICES:  # checked also when no detector runs (--no-detect): a typo is said at once
        raise PrepareError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if isinstance(detector, str) and detector not in DETECTORS:
        raise PrepareError(f"--detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    raw = Path(raw_dir).resolve()
    out = Path(out_dir).resolve()
    if out == raw or raw in out.parents:
        raise PrepareError(f"--out {out} lies inside RAW_DIR {raw}: RAW_DIR is never written to, choose another folder")
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} exists and is not a folder")
    # a store inside another store's folder would be read as part of it by tools that walk
    # folders, and moving or removing the outer one would take it along
    outer = next((parent for parent in out.parents if (parent / META_FILE).is_file()), None)
    if outer is not None:
        raise PrepareError(f"--out {out} lies inside the prepared dataset {outer}; choose a folder outside it")
    parsed = parse_dataset(dataset, raw)
    items = _select_splits(parsed, splits)
    protocol = _apply_protocol(parsed, items, folds, fold_seed, test_fraction)
    # photos whose layout ships landmarks but not theirs (Item.detect) are detected, unless --no-detect was given
    detect_unaligned = detect is not False
    detect = parsed.detect if detect is None else detect
    settings = _settings(parsed, items, size, detect)
    unaligned = sum(1 for item in items if item.detect and item.status == PENDING)
    if unaligned:  # the parser's note says why these photos have no landmarks; this one, what is done with them
        parsed.notes.append(f"{unaligned} photos without landmarks: " + (
            "their faces are detected (the largest in each photo) and aligned" if detect_unaligned
            else "each is resized whole, not aligned (--no-detect)"))
    if not detect_unaligned and unaligned:  # absent otherwise: older stores keep their settings
        settings["unaligned_photos"] = "resized whole (--no-detect)"
    if protocol:  # absent otherwise: stores of other datasets keep their settings (a re-run stays a no-op)
        settings["protocol"] = protocol
    if detect and isinstance(detector, str) and detector != DETECTORS[0]:  # the default keeps older stores' settings
        settings["detector"] = detector

    # One writer per --out: a second `poi prepare` into the same folder stops at once
    # instead of redoing (and racing) all the work.
    try:
        with claim(out, "prepared folder"):
            return _prepare_into(out, raw, parsed, items, settings, size, detect, device, batch_size, workers,
                                 show_progress, detector, detect_unaligned)
    except LockError as error:
        raise PrepareError(str(error)) from None


def _prepare_into(out: Path, raw: Path, parsed: ParsedDataset, items: list[Item], settings: dict[str, Any], size: int,
                  detect: bool, device: str, batch_size: int, workers: int, show_progress: bool,
                  detector: Any, detect_unaligned: bool = True) -> PrepareResult:
    state = _out_dir_state(out, settings)
    if state == "done":
        for name in (PREPARE_JOURNAL_FILE, PREPARE_PROGRESS_FILE):  # a run killed after prepared.json, before removing them
            (out / name).unlink(missing_ok=True)
        meta = json.loads((out / META_FILE).read_text())
        return PrepareResult(out, meta.get("counts", {}), meta.get("notes", []), already_done=True, meta=meta)

    rows = {index: row for row, index in enumerate(i for i, item in enumerate(items) if item.status == PENDING)}
    out.mkdir(parents=True, exist_ok=True)
    if state == "fresh":
        atomic_write_text(out / PREPARE_PROGRESS_FILE, json.dumps({"settings": settings}, indent=1))
        (out / PREPARE_JOURNAL_FILE).write_text("")
    try:
        faces = StoreWriter(out).open_faces(len(rows), size, resume=state == "resume")
    except StoreError as error:
        raise PrepareError(str(error)) from None
    _mend_journal(out / PREPARE_JOURNAL_FILE)
    records = _read_journal(out / PREPARE_JOURNAL_FILE)
    todo = [i for i in rows if i not in records]

    start = time.perf_counter()
    worker = _Worker(raw, items, size, detect, want_gray=parsed.grayscale is None, device=device, detector=detector,
                     detect_unaligned=detect_unaligned)
    resumed = len(records)
    processed = _run(worker, todo, rows, faces, records, out / PREPARE_JOURNAL_FILE, batch_size, workers, show_progress)
    seconds = time.perf_counter() - start

    meta = _finish(out, parsed, items, rows, records, settings, size, detect, raw, faces)
    return PrepareResult(out, meta["counts"], meta["notes"], resumed=resumed, processed=processed,
                         seconds=seconds, meta=meta)


def _select_splits(parsed: ParsedDataset, splits: list[str] | None) -> list[Item]:
    """The items of `splits` (all without), and only the parser's notes about those splits: the
    notes of one split start `split NAME: ` (`split test: FER2013Test/ is absent, skipped` is no
    news to `--splits train`)."""
    if not splits:
        return parsed.items
    # the names a folder dataset's split folders may have (`valid` for FERPlus's val, as its docs say it)
    aliases = dataset_manifest("folder")["split_names"]
    splits = [aliases.get(name.lower(), name) for name in splits]
    available = sorted({item.split for item in parsed.items})
    unknown = [s for s in splits if s not in available]
    if unknown:
        raise PrepareError(f"split(s) {', '.join(unknown)} not found in RAW_DIR (available: {', '.join(available)})")
    parsed.notes[:] = [note for note in parsed.notes
                       if not note.startswith("split ") or note.split(":", 1)[0].removeprefix("split ") in splits]
    return [item for item in parsed.items if item.split in splits]


def _apply_protocol(parsed: ParsedDataset, items: list[Item], folds: int | None, fold_seed: int,
                    test_fraction: float) -> dict[str, Any]:
    """Write the evaluation protocol into the items (split test, or a fold per train image) and
    return its description for prepared.json ({} when the dataset gets none)."""
    if test_fraction:
        if folds:
            raise PrepareError("--test-fraction and --folds exclude each other: choose folds or a random test split")
        if any(item.split == "test" for item in items):
            raise PrepareError(f"{parsed.name} already has a test split: --test-fraction is for sets without one (CK+)")
        labelled = [item for item in items if item.split == "train" and item.label >= 0]
        try:
            chosen = random_test_mask([item.label for item in labelled], test_fraction, fold_seed)
        except ValueError as error:
            raise PrepareError(str(error)) from None
        for item, to_test in zip(labelled, chosen):
            if to_test:
                item.split = "test"
        parsed.notes.append(RANDOM_SPLIT_NOTE.format(pct=test_fraction))
        if "train" in parsed.expected:  # the release's train count is now train and test together
            parsed.expected["train+test"] = parsed.expected.pop("train")
        return {"kind": RANDOM_PROTOCOL, "test_fraction": test_fraction, "seed": fold_seed}
    k = dataset_manifest(parsed.name).get("default_folds", 0) if folds is None else folds
    if not k:
        return {}
    if SUBJECT_COLUMN not in parsed.extra_columns:
        raise PrepareError(f"--folds needs subject ids and {parsed.name} has none: "
                           "subject-independent folds are for CK+ (use --folds 0 for none)")
    folded = [item for item in items if item.split == "train"]
    subjects = len({str(item.extra.get(SUBJECT_COLUMN, "")) or item.id for item in folded})
    if folds is None and subjects < k:  # the default on a small set: as many folds as subjects, none for one
        parsed.notes.append(f"only {subjects} subject(s): {'no folds' if subjects < 2 else f'{subjects} folds'} instead of the default {k}")
        k = subjects if subjects >= 2 else 0
        if not k:
            return {}
    try:
        assigned = subject_folds([str(item.extra.get(SUBJECT_COLUMN, "")) for item in folded], k, fold_seed)
    except ValueError as error:
        raise PrepareError(str(error)) from None
    for item in items:
        item.extra[FOLD_COLUMN] = NO_FOLD
    for item, fold in zip(folded, assigned):
        item.extra[FOLD_COLUMN] = int(fold)
    parsed.extra_columns.append(FOLD_COLUMN)
    parsed.notes.append(f"{k} subject-independent folds of split train (seed {fold_seed}): "
                        f"`poi train --fold K` trains on the others and keeps fold K for evaluation")
    return {"kind": "subject_folds", "folds": k, "seed": fold_seed}


def _settings(parsed: ParsedDataset, items: list[Item], size: int, detect: bool) -> dict[str, Any]:
    """What decides the output: a resume or a no-op re-run needs all of it unchanged."""
    digest = hashlib.sha1()
    for item in items:
        digest.update(f"{item.id}\t{item.source}\t{item.split}\t{item.label}\t{item.status}\n".encode())
    return {"format": STORE_FORMAT, "dataset": parsed.name, "layout": parsed.layout, "size": size,
            "detect": bool(detect), "images": len(items), "items_sha1": digest.hexdigest()}


def _out_dir_state(out: Path, settings: dict[str, Any]) -> str:
    """'fresh', 'resume' or 'done'; raises when OUT_DIR holds something else, or when one
    of the files prepare writes there is a symlink (prepare never creates one: a planted
    link would make a resumed run append to, or write over, a file outside --out)."""
    for name in STORE_FILES:
        if (out / name).is_symlink():
            raise PrepareError(f"{out / name} is a symbolic link, which poi prepare never makes: it does not write "
                               "through it; remove it (or choose another --out)")
    if (out / META_FILE).is_file():
        old = json.loads((out / META_FILE).read_text()).get("settings")
        if old == settings:
            return "done"
        raise PrepareError(f"{out} already holds a prepared dataset made with other settings ({_difference(old, settings)}); choose another --out or remove it")
    if (out / PREPARE_PROGRESS_FILE).is_file():
        old = json.loads((out / PREPARE_PROGRESS_FILE).read_text()).get("settings")
        if old == settings:
            return "resume"
        raise PrepareError(f"{out} holds an unfinished preparation with other settings ({_difference(old, settings)}); re-run it with those, or choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise PrepareError(f"{out} is not empty and holds no preparation; choose an empty or new folder for --out")
    return "fresh"


def _difference(old: dict | None, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "unreadable settings"
    # Some settings are written only when not at their default (detector, protocol...): a key
    # either side lacks is that default, and is named as such.
    keys = list(new) + [k for k in old if k not in new]
    changed = [f"{k} {_setting(old, k)} -> {_setting(new, k)}" for k in keys
               if old.get(k) != new.get(k) and k != "items_sha1"]
    return ", ".join(changed) or "the input images or labels changed"


def _setting(settings: dict[str, Any], key: str) -> str:
    return repr(settings[key]) if key in settings else "the default"


def _mend_journal(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write) off the journal, so that the next line
    appended starts a line of its own instead of being glued to it and lost with it."""
    try:
        with open(path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def _read_journal(path: Path) -> dict[int, dict[str, Any]]:
    """Finished images of an earlier run; a torn last line (killed mid-write) is ignored."""
    records: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[int(record["i"])] = record
            except (ValueError, KeyError, TypeError):
                continue
    return records


# ---------------------------------------------------------------- per-image processing

class _Worker:
    """Turns items into faces: the loader threads call load(); detection runs in batches."""

    def __init__(self, raw: Path, items: list[Item], size: int, detect: bool, want_gray: bool,
                 device: str, detector: Any, detect_unaligned: bool = True) -> None:
        self.raw, self.items, self.size, self.detect = raw, items, size, detect
        self.detect_unaligned = detect_unaligned  # the items marked detect (photos without their landmarks); off under --no-detect
        self.want_gray, self.device = want_gray, device
        self.detector_name = detector if isinstance(detector, str) else None
        self._detector = None if isinstance(detector, str) else detector

    @property
    def detector(self) -> Any:
        if self._detector is None:  # built on first use: MTCNN takes a moment to load
            self._detector = make_detector(self.detector_name, device=self.device)
        return self._detector

    def load(self, index: int) -> _Loaded:
        item = self.items[index]
        try:
            image = load_image(self.raw / item.source)
        except ImageLoadError as error:
            return _Loaded(status=STATUS_BAD_IMAGE, reason=str(error))
        except Exception as error:  # never let one file stop the run
            return _Loaded(status=STATUS_ERROR, reason=_one_line(error))
        try:
            if is_blank(image):  # nothing to detect, and no face to crop: never stored as one
                return _Loaded(status=STATUS_NO_FACE, reason=BLANK_REASON)
            gray = is_grayscale(image) if self.want_gray else None
            if self.detect or (item.detect and self.detect_unaligned):
                return _Loaded(image=image, gray=gray, shipped_at=_shipped_centre(item))
            if item.landmarks is not None:
                return _Loaded(face=align_face(image, item.landmarks, self.size), gray=gray)
            if item.box is not None:  # a shipped face box without landmarks: cropped, not aligned
                return _Loaded(face=resize_face(image.crop(tuple(round(v) for v in item.box)), self.size), gray=gray)
            return _Loaded(face=resize_face(image, self.size), gray=gray)
        except Exception as error:
            return _Loaded(status=STATUS_ERROR, reason=_one_line(error))

    def detect_batch(self, loaded: list[_Loaded]) -> list[dict[str, Any]]:
        """Detect the faces of loaded images in one batch; align the one the dataset marks, else the largest, of each."""
        try:
            found = self.detector.detect([entry.image for entry in loaded])
        except Exception:
            found = [self._detect_one(entry.image) for entry in loaded]  # isolate the culprit
        results = []
        for entry, faces in zip(loaded, found):
            if isinstance(faces, Exception):
                results.append({"status": STATUS_ERROR, "reason": f"detection failed: {_one_line(faces)}"})
                continue
            # under --detect the dataset's own box or landmarks (where it ships them) say which face is labelled
            at = face_at(faces, entry.shipped_at) if entry.shipped_at is not None else None
            face = at or largest_face(faces)
            if face is None:
                results.append({"status": STATUS_NO_FACE, "reason": "no face detected", "n": 0})
                continue
            try:
                pixels = align_face(entry.image, face.landmarks, self.size)
            except Exception as error:
                results.append({"status": STATUS_ERROR, "reason": f"alignment failed: {_one_line(error)}", "n": len(faces)})
                continue
            if entry.shipped_at is None or at is not None:
                reason = "" if len(faces) == 1 else f"{len(faces)} faces, " + (KEPT_MARKED if at else KEPT_LARGEST)
            else:
                reason = (f"{len(faces)} faces, none {AWAY_FROM_MARK}: {KEPT_LARGEST}" if len(faces) > 1
                          else f"the face detected is not {AWAY_FROM_MARK}")
            results.append({"status": STATUS_OK, "reason": reason, "n": len(faces), "score": float(face.score),
                            "box": np.asarray(face.box, float).round(2).tolist(),
                            "lm": np.asarray(face.landmarks, float).reshape(-1).round(2).tolist(), "face": pixels})
        return results

    def _detect_one(self, image: Any) -> Any:
        try:
            return self.detector.detect([image])[0]
        except Exception as error:
            return error


def _shipped_centre(item: Item) -> np.ndarray | None:
    """The centre of the face the dataset marks in the photo (its landmarks', else its box's), if any."""
    if item.landmarks is not None:
        return np.asarray(item.landmarks, float).reshape(-1, 2).mean(axis=0)
    if item.box is not None:
        x0, y0, x1, y1 = (float(v) for v in item.box)
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _run(worker: _Worker, todo: list[int], rows: dict[int, int], faces: np.ndarray,
         records: dict[int, dict[str, Any]], journal: Path, batch_size: int, workers: int,
         show_progress: bool) -> int:
    """Process `todo` in chunks; checkpoint (flush faces, then journal) every few seconds."""
    pending_lines: list[str] = []
    last_checkpoint = time.monotonic()

    def checkpoint() -> None:
        nonlocal last_checkpoint
        if pending_lines:
            if isinstance(faces, np.memmap):
                faces.flush()  # the face rows reach the disk before the journal says they are done
            with open(journal, "a") as handle:
                handle.write("".join(pending_lines))
                handle.flush()
                os.fsync(handle.fileno())
            pending_lines.clear()
        last_checkpoint = time.monotonic()

    def finish(index: int, result: dict[str, Any]) -> None:
        face = result.pop("face", None)
        if face is not None:
            faces[rows[index]] = face
            result["digest"] = face_digest(faces[rows[index]])  # of the face as stored (data/duplicates.py)
        result["i"] = index
        records[index] = result
        pending_lines.append(json.dumps(result) + "\n")

    chunks = [todo[k:k + batch_size] for k in range(0, len(todo), batch_size)]
    processed = 0
    with progress_bar(enabled=show_progress, transient=False) as progress, ThreadPoolExecutor(max(1, workers)) as pool:
        task = progress.add_task("preparing", total=len(todo))
        submit: Callable[[list[int]], list[Future]] = lambda chunk: [pool.submit(worker.load, i) for i in chunk]
        upcoming = submit(chunks[0]) if chunks else []
        try:
            for c, chunk in enumerate(chunks):
                loaded = [future.result() for future in upcoming]
                # Start loading the next chunk while this one is detected and stored.
                upcoming = submit(chunks[c + 1]) if c + 1 < len(chunks) else []
                to_detect = []
                for index, entry in zip(chunk, loaded):
                    if entry.status != STATUS_OK:
                        finish(index, {"status": entry.status, "reason": entry.reason})
                    elif entry.face is not None:
                        finish(index, {"status": STATUS_OK, "reason": "", "face": entry.face, "gray": entry.gray})
                    else:
                        to_detect.append((index, entry))
                if to_detect:
                    for (index, entry), result in zip(to_detect, worker.detect_batch([e for _, e in to_detect])):
                        result["gray"] = entry.gray
                        finish(index, result)
                processed += len(chunk)
                progress.update(task, advance=len(chunk))
                if time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS:
                    checkpoint()
        finally:
            for future in upcoming:
                future.cancel()
            checkpoint()  # also on Ctrl-C: whatever is finished stays finished
    return processed


# ----------------------------------------------------------------------------- output

def _finish(out: Path, parsed: ParsedDataset, items: list[Item], rows: dict[int, int],
            records: dict[int, dict[str, Any]], settings: dict[str, Any], size: int, detect: bool,
            raw: Path, faces: np.ndarray) -> dict[str, Any]:
    """Write manifest.csv, then prepared.json (the 'finished' mark), then drop the journal."""
    names = class_names(parsed.num_classes)
    columns: dict[str, list[Any]] = {name: [] for name in (*MANIFEST_COLUMNS, *parsed.extra_columns)}
    box_columns = ("box_x1", "box_y1", "box_x2", "box_y2")
    landmark_columns = [f"lm_{axis}{i}" for i in range(len(LANDMARK_NAMES)) for axis in "xy"]  # x0, y0, x1, ...
    for index, item in enumerate(items):  # column lists, not row dicts: AffectNet has 400k rows
        record = records.get(index, {})
        status = record.get("status", item.status)
        landmarks = record.get("lm")
        if landmarks is None and status == STATUS_OK and item.landmarks is not None and not detect:
            landmarks = np.asarray(item.landmarks, float).reshape(-1).round(2).tolist()
        values = {
            "id": item.id, "source": item.source, "split": item.split, "label": item.label,
            "label_name": names[item.label] if item.label >= 0 else "",
            "status": status, "reason": record.get("reason", item.reason),
            "det_score": record.get("score", np.nan),
            **dict(zip(box_columns, record.get("box") or [np.nan] * 4)),
            **dict(zip(landmark_columns, landmarks or [np.nan] * 10)),
            "n_faces": record.get("n", 1 if status == STATUS_OK else 0),
            "store_index": rows[index] if status == STATUS_OK else -1,
            # a journal of an older poi has no digest: taken from the stored face
            DIGEST_COLUMN: (record.get("digest") or face_digest(faces[rows[index]])) if status == STATUS_OK else None,
            **item.extra,
        }
        for name, column in columns.items():
            column.append(values.get(name))
    writer = StoreWriter(out)
    manifest = writer.write_manifest(pd.DataFrame(columns), parsed.extra_columns)

    counts = {split: {str(k): int(v) for k, v in group["status"].value_counts().sort_index().items()}
              for split, group in manifest.groupby("split")}
    ok_records = [r for r in records.values() if r.get("status") == STATUS_OK]
    grayscale = parsed.grayscale if parsed.grayscale is not None else bool(ok_records) and all(r.get("gray") for r in ok_records)
    meta = writer.write_meta(store_meta(
        dataset=parsed.name, layout=parsed.layout, classes=names,
        preprocessing=Preprocessing(face_size=size, input_size=size, grayscale=bool(grayscale)),
        splits=sorted(manifest.loc[manifest["status"] == STATUS_OK, "split"].unique().tolist()),
        detect=bool(detect), counts=counts, notes=parsed.notes + _count_notes(manifest, parsed) + duplicate_notes(manifest),
        source_dir=str(raw), poi_version=__version__, settings=settings,
        **({"protocol": settings["protocol"]} if "protocol" in settings else {}),
    ))
    for name in (PREPARE_JOURNAL_FILE, PREPARE_PROGRESS_FILE):
        (out / name).unlink(missing_ok=True)
    return meta


def _count_notes(manifest: pd.DataFrame, parsed: ParsedDataset) -> list[str]:
    """Compare each split's labelled images with the official release's count ("train+test":
    the two together, after --test-fraction drew test out of train)."""
    notes = []
    for split, expected in parsed.expected.items():
        labelled = int((manifest["split"].isin(split.split("+")) & (manifest["status"] != STATUS_EXCLUDED)).sum())
        if labelled and labelled != expected:
            notes.append(f"split {split}: {labelled} labelled images, the official release has {expected}")
    reasons = manifest["reason"].fillna("")
    several = int(reasons.str.contains(KEPT_LARGEST).sum())
    if several:
        notes.append(f"{several} images had several faces: the largest was kept (see reason)")
    marked = int(reasons.str.contains(KEPT_MARKED).sum())
    if marked:
        notes.append(f"{marked} images had several faces: the one the dataset's landmarks or face box mark was kept")
    astray = int(reasons.str.contains(AWAY_FROM_MARK).sum())
    if astray:
        notes.append(f"{astray} images: no face was detected where the dataset's landmarks or face box mark it "
                     "(see reason): the face stored may not be the labelled one")
    blank = int((manifest["reason"].fillna("") == BLANK_REASON).sum())
    if blank:
        notes.append(f"{blank} images are not stored ({BLANK_REASON}): status no_face")
    return notes


__all__ = ["PrepareError", "PrepareResult", "LayoutError", "prepare"]
