"""The model's input from uint8 faces: the one normalisation of the project, and the
Preprocessing contract that says how a model's faces were made.

ImageNet mean/std, what torchvision and face-recognition ResNets expect. Training,
evaluation and prediction all call `to_model_input` / `normalize`; the training
augmentation (train/augment.py) folds the same constants into its colour map.

Preprocessing is written in a store's prepared.json (face_size = input_size = the
store's size), in every checkpoint (input_size = the model's) and in every exported ONNX
file's metadata, and read back by prediction and export, so that a photo becomes the same
kind of input as a training face.

Two implementations of the same arithmetic: the torch one (training, evaluation, the torch
backend) and the numpy one (`model_input_array`, the deploy runtime, which imports no
torch). torch is imported inside the torch functions, so this module loads without it;
tests/test_deploy.py checks that both give the same input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from PIL import Image

from poi_cli.data.faces import ALIGNMENT_TEMPLATE, align_face, resize_face

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL and torchvision use

if TYPE_CHECKING:
    import torch


def to_unit_float(images: "torch.Tensor", size: int) -> "torch.Tensor":
    """uint8 (B, S, S, 3) -> float (B, 3, size, size) in [0, 1], resized when S != size."""
    import torch.nn.functional as F

    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return x


def normalize(x: "torch.Tensor", mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> "torch.Tensor":
    """[0, 1] float (B, 3, H, W) -> normalised per channel (ImageNet's mean and std by default)."""
    mean_t = x.new_tensor(mean).view(1, 3, 1, 1)
    std_t = x.new_tensor(std).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def to_model_input(images: "torch.Tensor", size: int, channels_last: bool = False,
                   mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> "torch.Tensor":
    """uint8 (B, S, S, 3) store rows -> the model's normalised float input (no augmentation)."""
    import torch

    x = normalize(to_unit_float(images, size), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def unit_float_array(faces: np.ndarray, size: int) -> np.ndarray:
    """numpy twin of to_unit_float: uint8 (B, S, S, 3) -> float32 (B, 3, size, size) in [0, 1].

    A resize goes through Pillow's float ("F") bilinear filter, which widens its support
    when shrinking exactly as torch's interpolate(antialias=True) does (torch's antialiased
    mode was written to match Pillow), so both paths see the same pixels to float rounding."""
    x = np.asarray(faces, dtype=np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    if x.shape[-1] == size and x.shape[-2] == size:
        return np.ascontiguousarray(x)
    out = np.empty((x.shape[0], 3, size, size), dtype=np.float32)
    for b in range(x.shape[0]):
        for c in range(3):
            out[b, c] = np.asarray(Image.fromarray(x[b, c], mode="F").resize((size, size), Image.BILINEAR))
    return np.clip(out, 0.0, 1.0)


def model_input_array(faces: np.ndarray, size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                      std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """numpy twin of to_model_input: uint8 (B, S, S, 3) -> normalised float32 (B, 3, size, size)."""
    x = unit_float_array(faces, size)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - mean_a) / std_a


def to_gray_rgb(face: np.ndarray) -> np.ndarray:
    """uint8 (S, S, 3) -> the same face in grey (ITU-R 601 luma, as PIL), repeated on 3 channels."""
    return np.repeat(np.asarray(Image.fromarray(face).convert("L"))[..., None], 3, axis=2)


@dataclass(frozen=True)
class Preprocessing:
    """How a face becomes the model's input: the contract between a store, a checkpoint
    and prediction / export.

    face_size: side of the aligned uint8 face (the store's size; predict aligns photos at it).
    input_size: side the model sees; faces are resized face_size -> input_size (bilinear,
        antialiased) by to_model_input.
    grayscale: the faces are grey (FERPlus, CK+); predict converts photos to match.
    mean, std: the per-channel normalisation of [0, 1] RGB.
    alignment: the 5-point template faces are aligned on (poi_cli.data.faces).
    """

    face_size: int
    input_size: int
    grayscale: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    alignment: str = ALIGNMENT_TEMPLATE

    def __post_init__(self) -> None:
        if self.face_size < 1 or self.input_size < 1:
            raise ValueError(f"preprocessing sizes must be positive, got face_size {self.face_size}, input_size {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("preprocessing mean and std need three values each, std positive")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON / torch.load(weights_only=True) values."""
        return {"face_size": self.face_size, "input_size": self.input_size, "grayscale": self.grayscale,
                "mean": list(self.mean), "std": list(self.std), "alignment": self.alignment}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Preprocessing":
        """The inverse of to_dict; mean, std and alignment take their defaults when absent."""
        return cls(
            face_size=int(values["face_size"]), input_size=int(values["input_size"]),
            grayscale=bool(values.get("grayscale", False)),
            mean=tuple(float(v) for v in values.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in values.get("std", IMAGENET_STD)),
            alignment=str(values.get("alignment", ALIGNMENT_TEMPLATE)),
        )

    def for_model(self, input_size: int) -> "Preprocessing":
        """The same faces fed to a model of another input size (a store's -> a checkpoint's)."""
        return replace(self, input_size=int(input_size))

    def face(self, image: Image.Image, landmarks: np.ndarray) -> np.ndarray:
        """A photo's face, aligned on its five landmarks as the store's faces were: uint8 (S, S, 3)."""
        crop = align_face(image, landmarks, self.face_size)
        return to_gray_rgb(crop) if self.grayscale else crop

    def whole_face(self, image: Image.Image) -> np.ndarray:
        """An image taken whole as one face (`poi predict --no-detect`): resized, not cropped,
        as `poi prepare` stores datasets that ship cropped faces: uint8 (S, S, 3)."""
        crop = resize_face(image, self.face_size)
        return to_gray_rgb(crop) if self.grayscale else crop

    def model_input(self, faces: "torch.Tensor", channels_last: bool = False) -> "torch.Tensor":
        """uint8 (B, face_size, face_size, 3) -> the model's normalised float input (torch)."""
        return to_model_input(faces, self.input_size, channels_last, self.mean, self.std)

    def model_input_array(self, faces: np.ndarray) -> np.ndarray:
        """The same as model_input, in numpy (the deploy runtime): float32 (B, 3, S, S)."""
        return model_input_array(faces, self.input_size, self.mean, self.std)
