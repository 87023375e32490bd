"""Training augmentation of whole uint8 batches on the training device.

On the device, flip and translation are one gather on the uint8 rows, then one pass
converts to float (resizing if the store's side differs from the model's input) and one
applies brightness/contrast/saturation and the normalisation (data/preprocess.py) as a
per-image 3x3 colour map. No per-sample PIL decode anywhere.

The options that carry a model from grayscale 48-px faces (FERPlus) to colour photos in
the wild are off by default, each its own switch, so that a run without them draws the
same random numbers as before they existed: --gray-mix (a share of colour faces shown in
grey, folded into the colour map), --blur (Gaussian, a per-image sigma), --jpeg
(re-encoded at a random quality, on the CPU), --scale-jitter and --rotate (one affine
resampling that also does the flip and the shift).
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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

    def __init__(self, flip: bool = True, translate: float = 0.1, color_jitter: float = 0.4, grayscale: bool = False,
                 gray_mix: float = 0.0, blur: float = 0.0, jpeg: float = 0.0, scale_jitter: float = 0.0,
                 rotate: float = 0.0) -> None:
        self.flip, self.translate = flip, translate
        self.color_jitter = 0.0 if grayscale else color_jitter
        self.gray_mix = 0.0 if grayscale else gray_mix
        self.blur, self.jpeg, self.scale_jitter, self.rotate = blur, jpeg, scale_jitter, rotate

    def __call__(self, images: torch.Tensor, size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.jpeg > 0:
            images = self.jpeg_artefacts(images, generator)
        if self.scale_jitter > 0 or self.rotate > 0:
            x = self.affine(images, size, generator)
        else:
            if self.flip or self.translate > 0:
                images = self.flip_and_shift(images, generator)
            x = images.permute(0, 3, 1, 2).float()  # 0..255
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.blur > 0:
            x = self.gaussian_blur(x, generator)
        return self.colour_and_normalise(x, generator)

    def chosen(self, batch: int, probability: float, device: torch.device, generator: Optional[torch.Generator]) -> torch.Tensor:
        """A per-image coin with P(True) = probability."""
        return torch.rand(batch, device=device, generator=generator) < probability

    def affine(self, images: torch.Tensor, size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 (B, H, W, C) -> float (B, C, size, size): each face flipped (p 1/2), scaled by
        s in [1 - scale_jitter, 1 + scale_jitter] (s > 1 zooms in), rotated by up to `rotate`
        degrees and shifted by up to `translate` x the side, in one bilinear resampling, zero
        outside. The input point of output point p is R(a) (f p_x, p_y) / s + t."""
        batch, device = images.shape[0], images.device
        x = images.permute(0, 3, 1, 2).float()

        def uniform(limit: float) -> torch.Tensor:
            return (torch.rand(batch, device=device, generator=generator) * 2 - 1) * limit

        flip = torch.where(self.chosen(batch, 0.5 if self.flip else 0.0, device, generator), -1.0, 1.0)
        scale = 1 + uniform(self.scale_jitter)
        angle = torch.deg2rad(uniform(self.rotate))
        shift_x, shift_y = uniform(2 * self.translate), uniform(2 * self.translate)  # normalised units: the side is 2
        cos, sin = angle.cos() / scale, angle.sin() / scale
        theta = torch.stack([torch.stack([flip * cos, -sin, shift_x], -1), torch.stack([flip * sin, cos, shift_y], -1)], 1)
        grid = F.affine_grid(theta, [batch, x.shape[1], size, size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def gaussian_blur(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A chosen share (p = blur) of the faces blurred by a Gaussian of sigma in [0.5, 1.5]
        x side / 96 px (separable, reflected edges); the others pass unchanged."""
        batch, channels, height, width = x.shape
        chosen = self.chosen(batch, self.blur, x.device, generator)
        sigma = (0.5 + torch.rand(batch, device=x.device, generator=generator)) * (height / 96)
        radius = max(1, int(3 * 1.5 * height / 96 + 0.5))
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
        kernel = kernel / kernel.sum(1, keepdim=True)
        identity = (offsets == 0).to(x.dtype).expand(batch, -1)
        kernel = torch.where(chosen[:, None], kernel, identity).repeat_interleave(channels, 0)  # (B*C, k)
        flat = F.pad(x.reshape(1, batch * channels, height, width), (radius, radius, radius, radius), mode="reflect")
        flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * channels)
        flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * channels)
        return flat.view_as(x)

    def jpeg_artefacts(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 (B, H, W, 3): a chosen share (p = jpeg) re-encoded as JPEG at a quality in
        [30, 90] and decoded (Pillow, on the CPU)."""
        batch = images.shape[0]
        chosen = self.chosen(batch, self.jpeg, images.device, generator)
        quality = torch.randint(30, 91, (batch,), device=images.device, generator=generator)
        picked = torch.nonzero(chosen).flatten().tolist()
        if not picked:
            return images
        out = images.clone()
        for i in picked:
            buffer = io.BytesIO()
            Image.fromarray(images[i].cpu().numpy()).save(buffer, format="JPEG", quality=int(quality[i]))
            decoded = np.array(Image.open(buffer).convert("RGB"))  # writable: torch.from_numpy shares it
            out[i] = torch.from_numpy(decoded).to(images.device)
        return out

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
        gray_weights = x.new_tensor(GRAY_WEIGHTS)
        if j > 0:
            brightness, contrast, saturation = (
                torch.rand(batch, device=x.device, generator=generator) * 2 * j + 1 - j for _ in range(3)
            )
            mean_gray = x.mean(dim=(2, 3)) @ gray_weights
            if self.gray_mix > 0:  # grey = saturation 0 (the map 1 g^T), before brightness and contrast
                saturation = torch.where(self.chosen(batch, self.gray_mix, x.device, generator), 0.0, saturation)
            colour_map = saturation.view(-1, 1, 1) * colour_map + (1 - saturation).view(-1, 1, 1) * gray_weights.view(1, 1, 3)
            colour_map = (contrast * brightness).view(-1, 1, 1) * colour_map
            offset = ((1 - contrast) * brightness * mean_gray)[:, None].expand(batch, 3)
        elif self.gray_mix > 0:
            gray = self.chosen(batch, self.gray_mix, x.device, generator).view(-1, 1, 1)
            colour_map = torch.where(gray, gray_weights.view(1, 1, 3).expand(batch, 3, 3), colour_map)
        scale = 1.0 / (255.0 * std)
        colour_map = colour_map * scale.view(1, 3, 1)
        offset = offset * scale - mean / std
        out = torch.baddbmm(offset[:, :, None], colour_map, x.flatten(2)).view_as(x)
        if j > 0:  # clamp to what [0, 1] images normalise to
            out = out.clamp_((-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1))
        return out
