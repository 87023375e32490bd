"""Training augmentation of whole uint8 batches on the training device.

On the device, flip and translation are one gather on the uint8 rows, then one pass
converts to float (resizing if the store's side differs from the model's input) and one
applies brightness/contrast/saturation and the normalisation (data/preprocess.py) as a
per-image 3x3 colour map. No per-sample PIL decode anywhere.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from poi_cli.data.preprocess import GRAY_WEIGHTS, IMAGENET_MEAN, IMAGENET_STD


class BatchAugment:
    """Training augmentation of a whole uint8 batch on its device, ending in the model's input.

    uint8 (B, S, S, 3) store rows -> float (B, 3, size, size), normalised. Per image:
    a random horizontal flip and a shift by whole pixels up to `translate` x the side
    (zero fill, like torchvision's RandomAffine), done on the uint8 rows by one gather;
    then brightness, contrast and saturation factors drawn in [1 - j, 1 + j], composed
    with the normalisation into one 3x3 colour map per image (one pass over the floats).
    `grayscale` turns the colour changes off (POI_SPEC section 6: CK+ and FERPlus).
    """

    def __init__(self, flip: bool = True, translate: float = 0.1, color_jitter: float = 0.4, grayscale: bool = False) -> None:
        self.flip, self.translate = flip, translate
        self.color_jitter = 0.0 if grayscale else color_jitter

    def __call__(self, images: torch.Tensor, size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.flip or self.translate > 0:
            images = self.flip_and_shift(images, generator)
        x = images.permute(0, 3, 1, 2).float()  # 0..255
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.colour_and_normalise(x, generator)

    def flip_and_shift(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 (B, H, W, C): out[y, x] = in[y - dy, flip(x - dx)], zero outside."""
        batch, height, width, _ = images.shape
        device = images.device
        limit_y, limit_x = int(self.translate * height), int(self.translate * width)
        flip = torch.rand(batch, device=device, generator=generator) < 0.5
        if not self.flip:
            flip = torch.zeros_like(flip)
        dy = torch.randint(-limit_y, limit_y + 1, (batch, 1), device=device, generator=generator)
        dx = torch.randint(-limit_x, limit_x + 1, (batch, 1), device=device, generator=generator)
        # Indices into the zero-padded batch, so that shifted-in pixels read the padding.
        rows = torch.arange(height, device=device) - dy + limit_y
        cols = torch.arange(width, device=device) - dx
        cols = torch.where(flip[:, None], width - 1 - cols, cols) + limit_x
        padded = F.pad(images, (0, 0, limit_x, limit_x, limit_y, limit_y))
        index = torch.arange(batch, device=device)[:, None, None]
        return padded[index, rows[:, :, None], cols[:, None, :]]

    def colour_and_normalise(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """float (B, 3, H, W) in 0..255 -> jittered, clamped to the valid range, ImageNet-normalised.

        brightness: x -> b x; contrast: x -> c x + (1 - c) mean_gray(x); saturation:
        x -> s x + (1 - s) gray(x). All three are linear, so together
            x -> c b A x + (1 - c) b m,   A = s I + (1 - s) 1 g^T,  m = mean gray of x
        (g the luma weights, which sum to 1), and the normalisation (x / 255 - mean) / std
        folds into the same map. Unlike torchvision there is no clamp between the three
        steps, only once at the end (done in normalised units).
        """
        batch, j = x.shape[0], self.color_jitter
        mean, std = x.new_tensor(IMAGENET_MEAN), x.new_tensor(IMAGENET_STD)
        colour_map = torch.eye(3, device=x.device, dtype=x.dtype).expand(batch, 3, 3)
        offset = x.new_zeros(batch, 3)
        if j > 0:
            brightness, contrast, saturation = (
                torch.rand(batch, device=x.device, generator=generator) * 2 * j + 1 - j for _ in range(3)
            )
            gray_weights = x.new_tensor(GRAY_WEIGHTS)
            mean_gray = x.mean(dim=(2, 3)) @ gray_weights
            colour_map = saturation.view(-1, 1, 1) * colour_map + (1 - saturation).view(-1, 1, 1) * gray_weights.view(1, 1, 3)
            colour_map = (contrast * brightness).view(-1, 1, 1) * colour_map
            offset = ((1 - contrast) * brightness * mean_gray)[:, None].expand(batch, 3)
        scale = 1.0 / (255.0 * std)
        colour_map = colour_map * scale.view(1, 3, 1)
        offset = offset * scale - mean / std
        out = torch.baddbmm(offset[:, :, None], colour_map, x.flatten(2)).view_as(x)
        if j > 0:  # clamp to what [0, 1] images normalise to
            out = out.clamp_((-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1))
        return out
