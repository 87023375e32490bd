"""Checkpoints: built by build_checkpoint, written atomically (temp file + os.replace),
read safely and typed by CheckpointInfo.

A checkpoint is a dict of plain Python values and tensors, so it loads with
torch.load(weights_only=True):
    format, epoch (finished epochs), model (state dict), model_config (ModelConfig dict),
    classes (names), preprocessing (Preprocessing dict), config (TrainConfig dict),
    best_val_acc, best_epoch, val_acc, resolved (the run's resolved settings);
    training checkpoints add optimizer (state dict), history (results.csv rows) and
    rng (torch RNG states); packed ones (`poi export --format weights`) add packed;
    calibrated ones add calibration (T_cal and the PredictionRecipe it was fitted after:
    model/calibration.Calibration; CheckpointInfo.recipe reads it); a copy `poi calibrate`
    wrote adds calibrated_from (its source's file name), one `poi refit-head` wrote head_refit:
    what marks a file as that command's own output, which its re-run may replace.
Checkpoints written before `preprocessing` existed still load: CheckpointInfo derives it
from resolved.store_size, resolved.grayscale and model_config.input_size.
A killed process leaves either the previous file or the new one, never a torn one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import torch

from poi_cli.core.errors import PoiError, one_line
from poi_cli.core.atomic import atomic_write
# what training writes into a run folder (named in core/layout.py, torch-free)
from poi_cli.core.layout import (BEST, CONFIG_FILE, HELDOUT_FILE, LAST, RESULTS_FILE, RUN_FILES,  # noqa: F401
                                no_checkpoint_message, run_checkpoint)
from poi_cli.core.outputs import PredictionRecipe
from poi_cli.data.folds import FOLD_COLUMN, fold_split_name, parse_fold_split
from poi_cli.data.preprocess import Preprocessing
from poi_cli.model.calibration import Calibration
from poi_cli.model.network import ModelConfig, POIModel, rename_legacy_keys

if TYPE_CHECKING:
    import numpy as np

    from poi_cli.data.store import PreparedDataset

CHECKPOINT_FORMAT = 1


class CheckpointError(PoiError):
    """A checkpoint or run folder that cannot be used; one-line message."""


def build_checkpoint(
    *,
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    model_config: ModelConfig | Mapping[str, Any],
    classes: Sequence[str],
    preprocessing: Preprocessing,
    epoch: int = 0,
    config: Optional[Mapping[str, Any]] = None,
    best_val_acc: Optional[float] = None,
    best_epoch: Optional[int] = None,
    val_acc: Optional[float] = None,
    resolved: Optional[Mapping[str, Any]] = None,
    optimizer: Optional[Mapping[str, Any]] = None,
    history: Optional[Sequence[Mapping[str, Any]]] = None,
    rng: Any = None,
    packed: Optional[Mapping[str, Any]] = None,
    calibration: Optional[Calibration] = None,
) -> dict[str, Any]:
    """The dict save_checkpoint writes (see the module docstring for its keys).

    model: the module or its state dict. optimizer, history, rng (training) and packed
    (export) are left out when None; the other keys are always there."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    model_dict = model_config.to_dict() if isinstance(model_config, ModelConfig) else dict(model_config)
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "epoch": int(epoch), "model": state, "model_config": model_dict,
        "classes": list(classes), "preprocessing": preprocessing.to_dict(), "config": dict(config or {}),
        "best_val_acc": best_val_acc, "best_epoch": best_epoch, "val_acc": val_acc, "resolved": dict(resolved or {}),
    }
    optional = {"optimizer": optimizer, "history": None if history is None else list(history), "rng": rng,
                "packed": None if packed is None else dict(packed),
                "calibration": None if calibration is None else calibration.to_dict()}
    checkpoint.update({key: value for key, value in optional.items() if value is not None})
    return checkpoint


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write a checkpoint (from build_checkpoint; a hand-built dict gets the format key)."""
    atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **payload}, f))


def safe_torch_load(path: str | Path, what: str, error_type: type[Exception]) -> Any:
    """torch.load with weights_only=True on the CPU; a missing or unreadable file raises
    error_type with a one-line message naming `what` the file should have been."""
    path = Path(path)
    if not path.is_file():
        raise error_type(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as error:
        raise error_type(f"cannot read {path}: {one_line(error)}") from None
    if not head:
        raise error_type(f"cannot read {path} as a {what}: the file is empty (0 bytes)")
    # torch.save writes a zip archive (PK..) or, before torch 1.6, a pickle (protocol byte
    # 0x80); anything else is not a checkpoint, and torch.load's own errors for it ("101",
    # "pop from empty list") say nothing useful
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise error_type(f"cannot read {path} as a {what}: it is not a file written by torch.save")
    if torch_archive_kind(zip_member_names(path)) == "torchscript":  # torch.load would hand it to torch.jit.load, with a warning
        raise error_type(f"cannot read {path} as a {what}: it is a TorchScript export (`poi export --format "
                         "torchscript`), not a file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file (some without text)
        raise error_type(f"cannot read {path} as a {what}: {type(error).__name__}: {one_line(error)}") from None


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely (weights_only=True) on the CPU."""
    if Path(path).suffix.lower() == ".onnx" and Path(path).is_file():
        raise CheckpointError(f"{path} is an ONNX file (what `poi predict` and `poi serve` run): this command reads "
                              "the .pt checkpoint or run folder it was exported from")
    checkpoint = safe_torch_load(path, "poi checkpoint", CheckpointError)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "model_config" not in checkpoint:
        raise CheckpointError(f"{path} is not a poi checkpoint (it lacks model weights and model_config)")
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {checkpoint.get('format')!r}")
    # Checked once, where a checkpoint enters, for every command that loads one: the keys
    # CheckpointInfo reads, of the right types (one line naming the file and the key).
    weights, model_config = checkpoint["model"], checkpoint["model_config"]
    if not isinstance(model_config, Mapping):
        raise CheckpointError(f"{path}: model_config is a {type(model_config).__name__}, not a mapping of settings")
    if not isinstance(weights, Mapping) or not weights or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{path}: its model weights are empty or not tensors")
    classes = checkpoint.get("classes")
    if classes is not None and (not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: classes is not a list of class names")
    try:
        config = ModelConfig.from_dict(model_config)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: model_config is not a model's settings ({one_line(error)})") from None
    # every command reads the class names and loads the weights into the model model_config
    # describes: a mismatch is said here, in one line, not as load_state_dict's traceback
    if not classes or len(classes) != config.num_classes:
        raise CheckpointError(f"{path}: it names {len(classes or ())} classes for a model of {config.num_classes} outputs "
                              "(its `classes` list is missing or wrong)")
    problem = weights_mismatch(weights, config)
    if problem:
        raise CheckpointError(f"{path}: its weights do not fit the model its model_config describes ({problem})")
    # a diverged training's weights would answer every face with NaN (and argmax: the first class)
    broken = next((k for k, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if broken:
        raise CheckpointError(f"{path}: its weights are not finite ({broken} holds NaN or infinity): "
                              "the training diverged; train again (a lower --lr)")
    return checkpoint


def weights_mismatch(weights: Mapping[str, torch.Tensor], config: ModelConfig) -> Optional[str]:
    """What keeps `weights` from loading into POIModel(config), in a few words (missing or
    unexpected tensors, a shape), or None when they fit. The model is built on the meta
    device: no memory, a few milliseconds. Older names are read as load_state_dict reads them."""
    with torch.device("meta"):
        expected = POIModel(config).state_dict()
    weights = rename_legacy_keys(dict(weights))
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing:
        return f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"
    if unexpected:
        return f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}"
    if shapes:
        key = shapes[0]
        return f"{key} is {tuple(weights[key].shape)}, the model's is {tuple(expected[key].shape)}"
    return None


def zip_member_names(path: str | Path) -> Optional[list[str]]:
    """The member names of a zip archive (its central directory alone is read), None for a
    file that is not one."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def torch_archive_kind(names: Optional[Sequence[str]]) -> Optional[str]:
    """"torchscript" or "torch.save" from a zip archive's member names (zip_member_names),
    None for anything else."""
    if names is None:
        return None
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return "torchscript"
    return "torch.save" if any(name.endswith("/data.pkl") for name in names) else None


def checkpoint_marked(path: str | Path, mark: str) -> bool:
    """Whether a file is a poi checkpoint carrying the key `mark` (calibrated_from, head_refit,
    packed: which command wrote it), read with its tensors memory-mapped, not loaded."""
    if torch_archive_kind(zip_member_names(path)) != "torch.save":
        return False
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a checkpoint of ours: torch raises many types
        return False
    return isinstance(checkpoint, dict) and "model_config" in checkpoint and mark in checkpoint


# output_file's `replaces` of the commands that write checkpoints: only their own earlier output,
# never a training checkpoint (perhaps the only copy of a trained model) nor another command's file
CALIBRATED_COPY = ("a checkpoint `poi calibrate` wrote", lambda path: checkpoint_marked(path, "calibrated_from"))
REFIT_COPY = ("a checkpoint `poi refit-head` wrote", lambda path: checkpoint_marked(path, "head_refit"))


def checkpoint_inputs(checkpoint_path: str | Path) -> list[Path]:
    """What a command that reads this checkpoint reads, for refuse_input_as_output: the file
    and what training wrote beside it (RUN_FILES), not every file of its folder: an earlier
    output there (best.calibrated.pt, an export) is not read, and a re-run replaces it."""
    path = Path(checkpoint_path)
    return [path, *(path.parent / name for name in RUN_FILES if (path.parent / name).exists())]


def read_heldout_ids(run_dir: str | Path) -> list[str]:
    """The ids a run held out of its training split for validation (its HELDOUT_FILE)."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / HELDOUT_FILE, dtype={"id": str})["id"].tolist()


def held_out_mask(run_dir: str | Path, ids: Sequence[str]) -> Optional[np.ndarray]:
    """(len(ids),) bool: which of `ids` the run in run_dir held out of its training split for
    validation (its HELDOUT_FILE); None when the run folder has no such file. What a resumed run
    and a later --rounds round validate on, what the audit marks and cleaning leaves."""
    import numpy as np  # noqa: F811 (the module imports it for type checking only)

    if not (Path(run_dir) / HELDOUT_FILE).is_file():
        return None
    return np.isin(np.asarray(ids), read_heldout_ids(run_dir))


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A run folder -> its best.pt (else last.pt); a file -> itself."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        found = run_checkpoint(path)
        if found is None:
            raise CheckpointError(no_checkpoint_message(path))
        return found
    if not path.exists():
        raise CheckpointError(f"no such run folder or checkpoint: {path}")
    return path


def model_of(checkpoint: Mapping[str, Any], device: torch.device | str = "cpu") -> POIModel:
    """The POIModel a loaded checkpoint describes, with its weights, on `device`, in eval mode
    (float32 even for a packed fp16 checkpoint: the weights are copied into the new model)."""
    model = POIModel(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def load_model(run_or_checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Build the POIModel a checkpoint describes, with its weights, in eval mode; also
    the checkpoint dict (CheckpointInfo.of(it) types it)."""
    checkpoint = load_checkpoint(resolve_checkpoint(run_or_checkpoint))
    return model_of(checkpoint, device), checkpoint


def legacy_preprocessing(checkpoint: Mapping[str, Any]) -> Preprocessing:
    """The Preprocessing of a checkpoint written before the key existed: faces cut at the
    training store's size (resolved.store_size, else the input size), grey when the
    store was (resolved.grayscale), ImageNet-normalised."""
    input_size = ModelConfig.from_dict(checkpoint["model_config"]).input_size
    resolved = checkpoint.get("resolved") or {}
    return Preprocessing(face_size=int(resolved.get("store_size") or input_size), input_size=input_size,
                         grayscale=bool(resolved.get("grayscale", False)))


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about its model, typed (everything but the weights):
    what prediction, export and evaluation read of it."""

    model_config: ModelConfig
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    epoch: Optional[int] = None
    best_val_acc: Optional[float] = None
    best_epoch: Optional[int] = None
    val_acc: Optional[float] = None
    config: dict = field(default_factory=dict)  # TrainConfig dict ({} when unknown)
    resolved: dict = field(default_factory=dict)  # the run's resolved settings ({} when unknown)
    packed: Optional[dict] = None  # set in fp16 packed checkpoints
    calibration: Optional[Calibration] = None  # T_cal and its recipe; None: uncalibrated (T_cal = 1, TRN alone)

    @classmethod
    def of(cls, checkpoint: Mapping[str, Any]) -> "CheckpointInfo":
        """Type a checkpoint dict (from load_checkpoint / load_model / build_checkpoint)."""
        preprocessing = (Preprocessing.from_dict(checkpoint["preprocessing"]) if checkpoint.get("preprocessing")
                         else legacy_preprocessing(checkpoint))
        return cls(
            model_config=ModelConfig.from_dict(checkpoint["model_config"]),
            classes=tuple(checkpoint.get("classes") or ()), preprocessing=preprocessing,
            epoch=checkpoint.get("epoch"), best_val_acc=checkpoint.get("best_val_acc"),
            best_epoch=checkpoint.get("best_epoch"), val_acc=checkpoint.get("val_acc"),
            config=dict(checkpoint.get("config") or {}), resolved=dict(checkpoint.get("resolved") or {}),
            packed=checkpoint.get("packed"), calibration=Calibration.from_dict(checkpoint.get("calibration")),
        )

    @property
    def calibration_temperature(self) -> float:
        """T_cal of the reported probabilities: 1 for a checkpoint that was never calibrated."""
        return 1.0 if self.calibration is None else self.calibration.temperature

    @property
    def recipe(self) -> PredictionRecipe:
        """How the reported probabilities are made (POI_SPEC 4b): stored with T_cal by `poi calibrate`;
        the TRN alone on the image alone for a checkpoint calibrated before recipes, or never."""
        return PredictionRecipe() if self.calibration is None else self.calibration.recipe

    @property
    def input_size(self) -> int:
        return self.model_config.input_size

    @property
    def training_data(self) -> Optional[str]:
        """The prepared folder the model was trained on, by name (training_data_name)."""
        return training_data_name(self.config, self.resolved)


def training_data_name(config: Mapping[str, Any], resolved: Mapping[str, Any]) -> Optional[str]:
    """The prepared folder a run trained on, by name only (its full path is the training
    machine's business), from its TrainConfig dict and resolved settings (a checkpoint's, or
    config.json's); None when they do not say."""
    return resolved.get("dataset") or (Path(config["data"]).name if config.get("data") else None)


def trained_on_folder(config: Mapping[str, Any], folder: str | Path) -> bool:
    """Whether the run of `config` (a TrainConfig dict: config.json's or a checkpoint's) trained on
    the prepared folder `folder`, by the path training recorded, resolved (a copy elsewhere, or
    another folder of the same name, is not it)."""
    data = config.get("data")
    try:
        return bool(data) and Path(str(data)).resolve() == Path(folder).resolve()
    except OSError:
        return False


def held_out_fold(config: Mapping[str, Any]) -> Optional[str]:
    """The fold a `--fold K` run never trained on, kept for its evaluation ('fold3': config.json's
    resolved.test_split, the split `poi evaluate` picks for it); None for any other run."""
    test_split = (config.get("resolved") or {}).get("test_split")
    if test_split:
        return str(test_split)
    fold = str(config.get("fold") or "")
    return fold_split_name(int(fold)) if fold.isdigit() else None


def training_overlap(config: Mapping[str, Any], dataset: "PreparedDataset", split: str) -> Optional[str]:
    """How `split` of `dataset` overlaps what the run of `config` (config.json's dict, resolved
    included) trained on: "train" (its training split of this folder), "fold" (a fold of that
    split other than the one a --fold K run holds out; `fold03` is fold 3), or None. What
    evaluate notes and report refuses to score."""
    if not trained_on_folder(config, dataset.root):
        return None
    train_split = config.get("train_split") or "train"
    if split == train_split:
        return "train"
    fold = parse_fold_split(split)
    if fold is None or fold == parse_fold_split(held_out_fold(config) or ""):
        return None
    manifest = dataset.manifest
    in_training = FOLD_COLUMN in manifest.columns and ((manifest[FOLD_COLUMN] == fold) & (manifest["split"] == train_split)).any()
    return "fold" if in_training else None  # a fold outside the run's training split is not its data


def read_checkpoint_info(run_or_checkpoint: str | Path) -> CheckpointInfo:
    """The CheckpointInfo of a checkpoint file or run folder (its best.pt, else last.pt)."""
    return CheckpointInfo.of(load_checkpoint(resolve_checkpoint(run_or_checkpoint)))
