"""The weights of Eq. 12 (LossConfig), in a module without torch: `poi train`'s options
(train/config.py, which the CLI reads without torch) take their defaults from it, and
model/losses.py computes the terms they weigh."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LossConfig:
    """Weights of Eq. 12 and the AU pseudo-label smoothing (POI_SPEC sections 3-5).

    The one source of these defaults: TrainConfig's fields of the same name take them from
    here, and a run's LossConfig is built from its TrainConfig field by field
    (train.engine.loss_config_of)."""

    lambda_au: float = 0.5  # lambda_1
    lambda_ce_au: float = 0.5  # lambda_2
    lambda_ce_tar: float = 1.0  # lambda_3
    au_eps: float = 0.1  # eps of the AU pseudo-labels
    use_uem: bool = True  # False: "without UEM", beta = 1 for every image
    teacher_weight: float = 1.0  # weight of L_KL_teacher (--teacher; beyond the paper)

    def to_dict(self) -> dict:
        return asdict(self)
