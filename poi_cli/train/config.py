"""TrainConfig: every option of `poi train`, with the defaults of the paper's protocol.

POI_SPEC section 6: SGD, momentum 0.9, weight decay 1e-4, batch 256, lr 0.1 divided by
10 every 20 epochs, 60 epochs, input 224, flip + translation + brightness/contrast/
saturation (colour changes off for grayscale data). The config is saved as config.json
first thing in a run folder and inside every checkpoint, so it holds plain Python
values only (no torch here: the CLI imports this module to show its defaults).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

SCHEDULES = ("step", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("auto", "bf16", "off")
SWITCHES = ("auto", "on", "off")


@dataclass
class TrainConfig:
    data: str = ""  # a prepared folder (poi prepare)

    # model (POI_SPEC sections 2 and 5)
    arch: str = "resnet18"
    input_size: int = 224
    l_sub: Optional[int] = None  # None: round(9 L / 14)
    temperature: float = 3.0  # T of Eq. 6, 8 and 11
    uem_temperature: float = 1.0  # Eq. 10 on softmax(t_n / this); 3 with uem_scale "paper": the first reading
    uem_scale: str = "unit"  # "unit": w in [0, 1] (POI_SPEC's decision); "paper": w = 1 - sum var, in [0.25, 1]
    use_pin: bool = True  # False: the baseline (TRN + cross-entropy only)
    prior_supervision: bool = True  # False: "no PB"
    use_oim: bool = True  # False: "w/o inpre"
    use_uem: bool = True  # False: beta = 1
    pretrained: Optional[str] = None  # backbone weights file (pretrained.load_backbone)
    fine_tune: Optional[str] = None  # a poi checkpoint to start from (CK+ / SFEW protocol)

    # losses (Eq. 12)
    lambda_au: float = 0.5
    lambda_ce_au: float = 0.5
    lambda_ce_tar: float = 1.0
    au_eps: float = 0.1

    # optimisation (Sec. IV-B)
    epochs: int = 60
    batch: int = 256  # global batch: split over the processes under torchrun
    lr: float = 0.1
    schedule: str = "step"
    lr_steps: list[int] = field(default_factory=lambda: [20, 40])  # epochs where lr *= lr_gamma
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0, per step
    momentum: float = 0.9
    weight_decay: float = 1e-4

    # augmentation (on the training device, whole batches)
    augment: bool = True
    flip: bool = True
    translate: float = 0.1  # max shift, fraction of the side
    color_jitter: float = 0.4  # brightness / contrast / saturation factors in [1-j, 1+j]

    # data
    train_split: str = "train"
    val_split: Optional[str] = None  # None: valid, else val, else a held-out part of train; "none": no validation
    val_fraction: float = 0.1  # held out of the training split when the store has no valid/val split
    labels: Optional[str] = None  # label file (poi noise) for the training split
    noise: float = 0.0  # flip this fraction of the training labels on the fly
    noise_seed: int = 0

    # run
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # bf16 autocast: auto = on CUDA, and on CPUs with AVX512-BF16 / AMX
    channels_last: str = "auto"  # auto = on CUDA
    compile: bool = False
    sync_bn: bool = False  # SyncBatchNorm under torchrun on CUDA
    eval_batch: Optional[int] = None  # None: same as batch
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    resume: Optional[str] = None  # a run folder to continue

    def __post_init__(self) -> None:
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
            (not (self.noise and self.labels), "--noise and --labels exclude each other (a label file already holds its noise)"),
            (0.0 <= self.translate < 0.5, f"--translate must lie in [0, 0.5), got {self.translate}"),
            (0.0 <= self.color_jitter < 1.0, f"--color-jitter must lie in [0, 1), got {self.color_jitter}"),
            (0.0 <= self.val_fraction < 1.0, f"--val-fraction must lie in [0, 1), got {self.val_fraction}"),
            (self.val_split != "test", "--val-split test: models are never selected on the test split (use valid/val or --val-fraction)"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (all(s > 0 for s in self.lr_steps), f"--lr-steps must be positive epochs, got {self.lr_steps}"),
            (not (self.pretrained and self.fine_tune), "--pretrained and --fine-tune exclude each other"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def model_dict(self, num_classes: int) -> dict:
        """The ModelConfig fields (poi_cli.model.network), as plain values."""
        return {
            "arch": self.arch, "num_classes": num_classes, "input_size": self.input_size,
            "l_sub": self.l_sub, "temperature": self.temperature, "uem_temperature": self.uem_temperature,
            "uem_scale": self.uem_scale, "use_pin": self.use_pin,
            "prior_supervision": self.prior_supervision, "use_oim": self.use_oim,
        }

    def loss_dict(self) -> dict:
        """The LossConfig fields (poi_cli.model.losses), as plain values."""
        return {
            "lambda_au": self.lambda_au, "lambda_ce_au": self.lambda_ce_au,
            "lambda_ce_tar": self.lambda_ce_tar, "au_eps": self.au_eps, "use_uem": self.use_uem,
        }
