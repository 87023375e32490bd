"""TrainConfig: every option of `poi train`, defined once, with the defaults of the paper's protocol.

Each field carries its own help text, its section (model, loss, optimiser, augmentation,
data, run) and, where it differs from `--field-name`, its CLI flag, in `field(metadata=...)`;
the CLI generates the `poi train` options from them (poi_cli/cli.py) and the engine derives
ModelConfig and LossConfig from the fields of the same name (`TrainConfig.values_for`).

POI_SPEC section 6: SGD, momentum 0.9, weight decay 1e-4, batch 256, lr 0.1 divided by
10 every 20 epochs, 60 epochs, input 224, flip + translation + brightness/contrast/
saturation (colour changes off for grayscale data). The config is saved, as one flat
dict, as config.json first thing in a run folder and inside every checkpoint, so it holds
plain Python values only. Imports no torch: the CLI imports this module to show its
defaults, and torch is the optional `train` extra. The Eq. 12 weights take their defaults
from LossConfig (model/loss_config.py, torch-free), their one source. The defaults shared
with ModelConfig (model/network.py, which imports torch) are written here too;
tests/test_train.py fails when the two disagree.
"""

from __future__ import annotations

import math

from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from poi_cli.core.errors import PoiError
from poi_cli.core.schema import AMP_MODES, DEVICES
from poi_cli.model.loss_config import LossConfig

SCHEDULES = ("step", "cosine")
ALL_FOLDS = "all"  # --fold all: every fold in turn (poi_cli/pipeline.py)
# --rounds-fine-tune: a later round's learning rate as a fraction of --lr (docs/results/ferplus.md:
# 12 epochs at 0.02 after round 1's 0.05 beat round 2 from scratch on two seeds; 6 at 0.01 matched it)
ROUNDS_FINE_TUNE_LR_FACTOR = 0.4
SWITCHES = ("auto", "on", "off")
# the bundled model's augmentations for faces in the wild (issue 25; its round 2 kept them on
# validation): scripts/train_bundled_model.sh's WILD, the GPU pack's bundle stage, and
# benchmarks/train_throughput.py --wild
WILD_AUGMENTATIONS = {"gray_mix": 0.3, "blur": 0.2, "jpeg": 0.2, "scale_jitter": 0.1, "rotate": 10.0}
SECTIONS = ("model", "loss", "optimiser", "augmentation", "data", "run")
MODEL, LOSS, OPTIMISER, AUGMENTATION, DATA, RUN = SECTIONS


class TrainError(PoiError):
    """A training run that cannot start or go on; one-line message."""


def option(default: Any, section: str, help: str, *flags: str, invert: bool = False, cli: bool = True,
           argument: Optional[str] = None, path: bool = False) -> Any:
    """A TrainConfig field with its metadata: help text, section and CLI form.

    flags: the CLI names when not `--field-name` (a bool's `--x/--no-x` pair included);
    invert: the flag sets the field to False (`--baseline` for use_pin); cli: False for a
    library-only field; argument: the field is the command's positional argument, of this
    name; path: a path made absolute when a run starts (so that --resume works from anywhere).
    """
    assert section in SECTIONS, section
    metadata = {"help": help, "section": section, "flags": flags, "invert": invert, "cli": cli,
                "argument": argument, "path": path}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max, without importing numpy here


@dataclass
class TrainConfig:
    """The options of one training run (all of `poi train`), as plain values."""

    data: str = option("", DATA, "A folder written by `poi prepare` (not needed with --resume).",
                       argument="prepared_dir", path=True)

    # model (POI_SPEC sections 2 and 5)
    arch: str = option("resnet18", MODEL, "Backbone: resnet18, resnet34, resnet50, or resnet10 (one block per stage; the bundled model).")
    input_size: int = option(224, MODEL, "Input side in pixels, a multiple of 16 from 64 to 448 (faces are resized on the device when the store differs).", "--size")
    l_sub: Optional[int] = option(None, MODEL, "Subregion side on the feature map, whose side L is --size / 16 (default round(9 L / 14)).")
    temperature: float = option(3.0, MODEL, "Temperature T of Eq. 6 and 11.", "--temperature", "-T")
    uem_temperature: float = option(1.0, MODEL, "Temperature of the region distributions in the UEM's w (Eq. 10).")
    uem_scale: str = option("unit", MODEL, "unit: w = 1 - N/(N-1) sum var, in [0, 1] (the spec); paper: w = 1 - sum var "
                                           "(the first reading, with --uem-temperature 3).")
    use_pin: bool = option(True, MODEL, "Train the baseline: TRN with cross-entropy only (no PIN; not with --no-prior, --no-oim or --no-uem).", "--baseline", invert=True)
    prior_supervision: bool = option(True, MODEL, "Ablation: no AU nets / AU loss (no PB).", "--no-prior", invert=True)
    use_oim: bool = option(True, MODEL, "Ablation: no gate, no intermediate prediction (w/o inpre).", "--no-oim", invert=True)
    pretrained: Optional[str] = option(None, MODEL, "Backbone weights file (torchvision or resnet18_msceleb layout; not with --fine-tune).", path=True)
    fine_tune: Optional[str] = option(None, MODEL, "Start from a poi checkpoint or run folder (classes mapped by name).", path=True)

    # losses (Eq. 12)
    lambda_au: float = option(LossConfig.lambda_au, LOSS, "lambda_1 of Eq. 12 (AU loss).")
    lambda_ce_au: float = option(LossConfig.lambda_ce_au, LOSS, "lambda_2 of Eq. 12 (region cross-entropy).")
    lambda_ce_tar: float = option(LossConfig.lambda_ce_tar, LOSS, "lambda_3 of Eq. 12 (TRN cross-entropy).")
    au_eps: float = option(LossConfig.au_eps, LOSS, "eps of the AU pseudo-labels.")
    use_uem: bool = option(LossConfig.use_uem, LOSS, "Ablation: beta = 1 for every image.", "--no-uem", invert=True)
    distill_warmup: int = option(0, LOSS, "Epochs before the PIN starts teaching the TRN: L_KL_tar (Eq. 11) left out of "
                                          "Eq. 12 until then (a lever the paper allows; 0: the paper's Eq. 12 throughout).")
    teacher: Optional[str] = option(None, LOSS, "Also distil from this run folder or checkpoint (beyond the paper: e.g. the "
                                                "previous cleaning round): its PIN's objective inference p~* at T teaches the "
                                                "TRN as in Eq. 11, weighted T^2 x --teacher-weight.", path=True)
    teacher_weight: float = option(LossConfig.teacher_weight, LOSS, "Weight of the --teacher distillation.")
    soft_labels: bool = option(False, LOSS, "y of Eq. 4, 5 and 9 is the annotators' vote distribution (FERPlus's votes, "
                                            "single votes dropped as its majority rule drops them), not the majority label "
                                            "(beyond the paper); validation and the audit keep the majority label. Not "
                                            "with --noise, --labels or --rounds.")

    # optimisation (Sec. IV-B)
    epochs: int = option(60, OPTIMISER, "Epochs.")
    batch: int = option(256, OPTIMISER, "Global batch size (split over processes under torchrun).")
    lr: float = option(0.1, OPTIMISER, "Initial learning rate (SGD).")
    schedule: str = option("step", OPTIMISER, "step (lr x gamma at --lr-steps) or cosine.")
    lr_steps: list[int] = option([20, 40], OPTIMISER, "Epochs where the step schedule multiplies lr by --lr-gamma.")
    lr_gamma: float = option(0.1, OPTIMISER, "Factor of the step schedule.")
    warmup_epochs: float = option(0.0, OPTIMISER, "Linear warm-up length in epochs.")
    momentum: float = option(0.9, OPTIMISER, "SGD momentum, in [0, 1).")
    weight_decay: float = option(1e-4, OPTIMISER, "SGD weight decay.")

    # augmentation (on the training device, whole batches)
    augment: bool = option(True, AUGMENTATION, "Training augmentation on the device.")
    flip: bool = option(True, AUGMENTATION, "Random horizontal flips (with --augment).", cli=False)
    translate: float = option(0.1, AUGMENTATION, "Max random shift, fraction of the side.")
    color_jitter: float = option(0.4, AUGMENTATION, "Brightness/contrast/saturation range (off for grayscale data).")
    gray_mix: float = option(0.0, AUGMENTATION, "Share of colour faces shown in grey, in [0, 1] (a colour model that also reads grey faces).")
    blur: float = option(0.0, AUGMENTATION, "Share of faces blurred, in [0, 1] (Gaussian, sigma 0.5-1.5 px at 96 px).")
    jpeg: float = option(0.0, AUGMENTATION, "Share of faces re-encoded as JPEG, in [0, 1] (quality 30-90).")
    scale_jitter: float = option(0.0, AUGMENTATION, "Max random zoom in or out, fraction of the size (0.1: 0.9-1.1).")
    rotate: float = option(0.0, AUGMENTATION, "Max random rotation in degrees.")

    # data
    train_split: str = option("train", DATA, "Split to train on (never test).")
    val_split: Optional[str] = option(None, DATA, "Split for model selection (default valid, else val; 'none' for none; never test).")
    val_fraction: float = option(0.1, DATA, "Without a valid/val split: hold out this stratified fraction of train.")
    heldout_from: Optional[str] = option(None, DATA, "Without a valid/val split: validate on the images this run folder "
                                                     "held out (its heldout_ids.csv), not a new --val-fraction draw: a "
                                                     "round after `poi clean` of that run (--rounds does it itself).",
                                         path=True)
    labels: Optional[str] = option(None, DATA, "Label file for the training split (from `poi noise`; not with --noise or --soft-labels).", path=True)
    noise: float = option(0.0, DATA, "Flip this fraction of the training labels on the fly, in [0, 1] (recorded; not with --labels or --soft-labels).")
    noise_seed: int = option(0, DATA, "Seed of --noise.")
    rounds: int = option(1, DATA, "Training rounds: after each, audit the run's own training labels, relabel the "
                                  "suspects to the PIN's suggestion (poi clean) and train again on them (from scratch, "
                                  "or see --rounds-fine-tune).")
    clean_threshold: Optional[float] = option(None, DATA, "With --rounds 2 or more: relabel images whose audit suspicion is at "
                                                          "least this (default: the fraction `poi clean --auto` chooses on "
                                                          "the validation split).")
    rounds_teacher: bool = option(False, DATA, "With --rounds 2 or more: each later round also learns from the round "
                                               "before it, as --teacher (its objective inference teaches the TRN).")
    rounds_fine_tune: Optional[int] = option(None, DATA, "With --rounds 2 or more: each later round starts from the weights "
                                                         "of the round before it (as --fine-tune) and trains this many epochs "
                                                         f"at {ROUNDS_FINE_TUNE_LR_FACTOR:g} x --lr, cosine, instead of the whole "
                                                         "recipe from scratch (FERPlus at 30 % noise, round 1 12 epochs at 0.05: "
                                                         "12 such epochs beat round 2 from scratch). Not for a round 1 that has "
                                                         "fitted its training labels: it would hand them on.")
    clean_cross_fit: int = option(0, DATA, "With --rounds 2 or more: score the audit out of fold with this many cross-fitted "
                                           "models (K extra trainings, as confident learning does); 0: the run's own in-sample audit.")
    fold: Optional[str] = option(None, DATA, "Cross-validation on a store with folds (CK+): train on every fold but K and keep "
                                             "fold K for evaluation; 'all' trains each fold in turn into NAME/fold<K> and "
                                             "reports mean and spread.")

    # run
    seed: int = option(0, RUN, "Random seed (initialisation, batches, augmentation).")
    device: str = option("auto", RUN, "auto, cpu, cuda or mps.")
    amp: str = option("auto", RUN, "bf16 autocast: auto (CUDA, or CPUs with AVX512-BF16/AMX), bf16 or off.")
    channels_last: str = option("auto", RUN, "auto (on for CUDA), on or off.")
    compile: bool = option(False, RUN, "torch.compile the model.")
    sync_bn: bool = option(False, RUN, "SyncBatchNorm under torchrun (CUDA).")
    eval_batch: Optional[int] = option(None, RUN, "Validation batch size (default: --batch).", cli=False)
    project: str = option("runs/train", RUN, "Folder of the run folders.", path=True)
    name: str = option("exp", RUN, "Run folder name (numbered when taken: exp2, exp3, ...).")
    exist_ok: bool = option(False, RUN, "Reuse the run folder NAME when it exists instead of numbering a new one.", cli=False)
    resume: Optional[str] = option(None, RUN, "Continue an interrupted run folder with its own config (--device may change; other options set to other values than the run's are named in a note and ignored) and its CPU threads (unless --threads or $POI_THREADS).")

    def __post_init__(self) -> None:
        if isinstance(self.lr_steps, str):  # the CLI's form: "20,40"
            try:
                self.lr_steps = [int(s) for s in self.lr_steps.split(",") if s.strip()]
            except ValueError:
                raise ValueError(f"--lr-steps must be comma-separated epochs, got {self.lr_steps!r}") from None
        self.lr_steps = [int(x) for x in self.lr_steps]

    def validate(self) -> None:
        """Raise ValueError with a one-line message for an impossible option."""
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch >= 1, f"--batch must be at least 1, got {self.batch}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}"),
            (self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}"),
            (self.channels_last in SWITCHES, f"--channels-last must be one of {', '.join(SWITCHES)}, got {self.channels_last!r}"),
            (0.0 <= self.noise <= 1.0, f"--noise must lie in [0, 1], got {self.noise}"),
            (self.rounds >= 1, f"--rounds must be at least 1, got {self.rounds}"),
            (self.use_pin or (self.prior_supervision and self.use_oim and self.use_uem),
             "--baseline trains no PIN: --no-prior, --no-oim and --no-uem (ablations of the PIN) do not apply to it"),
            (not self.rounds_teacher or self.rounds >= 2, "--rounds-teacher needs --rounds 2 or more"),
            (self.rounds_fine_tune is None or self.rounds >= 2, "--rounds-fine-tune needs --rounds 2 or more"),
            (self.rounds_fine_tune is None or self.rounds_fine_tune >= 1,
             f"--rounds-fine-tune must be at least 1 epoch, got {self.rounds_fine_tune}"),
            (self.clean_cross_fit == 0 or self.clean_cross_fit >= 2, f"--clean-cross-fit must be 0 or at least 2, got {self.clean_cross_fit}"),
            (self.fold is None or self.fold == ALL_FOLDS or (self.fold.isdigit()),
             f"--fold must be a fold number or '{ALL_FOLDS}', got {self.fold!r}"),
            (not (self.fold == ALL_FOLDS and self.rounds > 1), "--fold all and --rounds exclude each other: run the rounds per fold"),
            (self.clean_threshold is None or 0.0 < self.clean_threshold <= 1.0,
             f"--clean-threshold must lie in (0, 1], got {self.clean_threshold}"),
            (not (self.noise and self.labels), "--noise and --labels exclude each other (a label file already holds its noise)"),
            (not (self.soft_labels and (self.noise or self.labels or self.rounds > 1)),
             "--soft-labels trains on the manifest's votes: not with --noise, --labels or --rounds (their labels have no votes)"),
            (0.0 <= self.translate < 0.5, f"--translate must lie in [0, 0.5), got {self.translate}"),
            (0.0 <= self.color_jitter < 1.0, f"--color-jitter must lie in [0, 1), got {self.color_jitter}"),
            *((0.0 <= getattr(self, name) <= 1.0, f"--{name.replace('_', '-')} must lie in [0, 1], got {getattr(self, name)}")
              for name in ("gray_mix", "blur", "jpeg")),
            (0.0 <= self.scale_jitter < 0.5, f"--scale-jitter must lie in [0, 0.5), got {self.scale_jitter}"),
            (0.0 <= self.rotate <= 45.0, f"--rotate must lie in [0, 45] degrees, got {self.rotate}"),
            (0.0 <= self.val_fraction < 1.0, f"--val-fraction must lie in [0, 1), got {self.val_fraction}"),
            (self.val_split != "test", "--val-split test: models are never selected on the test split (use valid/val or --val-fraction)"),
            (self.train_split != "test", "--train-split test: models are never trained on the test split, which their "
                                         "figures are measured on (train on train; valid/val, e.g. --train-split valid, "
                                         "where the store has one)"),
            (self.val_split != self.train_split,
             f"--val-split {self.val_split} is the split it trains on (--train-split): best.pt and T_cal would be chosen "
             "on the training images; use another split or --val-fraction"),
            (self.distill_warmup >= 0, f"--distill-warmup must be >= 0, got {self.distill_warmup}"),
            (self.teacher_weight >= 0, f"--teacher-weight must be >= 0, got {self.teacher_weight}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (all(s > 0 for s in self.lr_steps), f"--lr-steps must be positive epochs, got {self.lr_steps}"),
            (not (self.pretrained and self.fine_tune), "--pretrained and --fine-tune exclude each other"),
            *((getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
              for name in ("temperature", "uem_temperature")),
            (0.0 < self.lr_gamma <= 1.0, f"--lr-gamma must lie in (0, 1], got {self.lr_gamma}"),
            (0.0 <= self.momentum < 1.0, f"--momentum must lie in [0, 1), got {self.momentum}"),  # nan fails too
            (math.isfinite(self.lr), f"--lr must be finite, got {self.lr}"),
            # what torch computes in float32 must be a float32 (--lr 1e39 stopped SGD with a traceback; an
            # infinite --temperature or --teacher-weight diverged with advice to lower --lr, --warmup-epochs inf
            # trained at lr 0, --uem-temperature inf turned the UEM off)
            *((math.isfinite(getattr(self, name)) and abs(getattr(self, name)) <= FLOAT32_MAX,
               f"--{name.replace('_', '-')} must be a finite number (float32), got {getattr(self, name)}")
              for name in ("lr", "temperature", "uem_temperature", "teacher_weight", "warmup_epochs", "lambda_au",
                           "lambda_ce_au", "lambda_ce_tar", "weight_decay")),
            *((getattr(self, name) >= 0 and math.isfinite(getattr(self, name)),
               f"--{name.replace('_', '-')} must be a finite weight >= 0, got {getattr(self, name)}")
              for name in ("lambda_au", "lambda_ce_au", "lambda_ce_tar", "weight_decay")),
            (0.0 <= self.au_eps < 0.5, f"--au-eps must lie in [0, 0.5) (AU targets stay on the prior's side), got {self.au_eps}"),
            *((getattr(self, name) >= 0, f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
              for name in ("seed", "noise_seed")),
            (self.name.strip() not in ("", ".", "..") and "/" not in self.name and "\\" not in self.name,
             f"--name must be a plain folder name (no '/'), got {self.name!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def fold_index(self) -> Optional[int]:
        """The held-out fold K of --fold K; None without --fold (or with --fold all, which the pipeline expands)."""
        return int(self.fold) if self.fold is not None and self.fold.isdigit() else None

    def resolve_paths(self) -> None:
        """Make the path fields absolute (a run resumes from any working directory)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("path") and value:
                setattr(self, f.name, str(Path(value).resolve()))

    def to_dict(self) -> dict:
        """The flat dict of config.json and of a checkpoint's "config"."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """From config.json or a checkpoint's "config" (keys this version does not know are dropped)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def values_for(self, target: type) -> dict:
        """This config's values of the fields of dataclass `target` (ModelConfig, LossConfig) it shares by name."""
        return {f.name: getattr(self, f.name) for f in fields(target) if f.name in _FIELD_NAMES}


_FIELD_NAMES = frozenset(f.name for f in fields(TrainConfig))


def field_default(f: Field) -> Any:
    """A field's default value."""
    return f.default_factory() if f.default is MISSING else f.default


def cli_flags(values: dict[str, Any]) -> list[str]:
    """TrainConfig field values as `poi train` flags: {"gray_mix": 0.3} -> ["--gray-mix", "0.3"]."""
    return [part for name, value in values.items() for part in (f"--{name.replace('_', '-')}", f"{value:g}")]
