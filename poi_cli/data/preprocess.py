"""The model's input from uint8 faces: the one normalisation of the project.

ImageNet mean/std, what torchvision and face-recognition ResNets expect. Training,
evaluation and prediction all call `to_model_input` / `normalize`; the training
augmentation (train/augment.py) folds the same constants into its colour map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL and torchvision use


def to_unit_float(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, size, size) in [0, 1], resized when S != size."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float (B, 3, H, W) -> ImageNet-normalised."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def to_model_input(images: torch.Tensor, size: int, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, S, S, 3) store rows -> the model's normalised float input (no augmentation)."""
    x = normalize(to_unit_float(images, size))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
