"""Fast input: batches gathered from the prepared uint8 store, augmented on the device.

The one normalisation of the project lives here (ImageNet mean/std, what torchvision
and face-recognition ResNets expect): training, evaluation and prediction all call
`to_model_input` / `normalize`.

Hot loop, per batch: a background thread gathers rows of faces.npy (uint8, memory-
mapped) into a pinned tensor; on the device, flip and translation are one gather on the
uint8 rows, then one pass converts to float (resizing if the store's side differs from
the model's input) and one applies brightness/contrast/saturation and the normalisation
as a per-image 3x3 colour map. No per-sample PIL decode anywhere.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL and torchvision use


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
            gray_weights = x.new_tensor(_GRAY)
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


class BatchLoader:
    """Batches of store rows for one split, gathered in a background thread.

    Training (shuffle=True): each epoch draws a permutation from (seed, epoch) alone, so
    a resumed run sees exactly the batches an uninterrupted one would; the last partial
    batch is dropped; under torchrun every process takes its share (rank::world_size)
    of each global batch. Evaluation (shuffle=False): every row once, in order, the
    process's share being positions rank::world_size.

    Yields (images uint8 (b, S, S, 3), labels int64 (b,), extra int64 (b,) or None,
    positions int64 (b,) into the split) on `device`.
    """

    def __init__(
        self,
        faces: np.ndarray,
        store_rows: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        extra: Optional[np.ndarray] = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        prefetch: int = 3,
    ) -> None:
        self.faces, self.store_rows, self.labels, self.extra = faces, store_rows, labels, extra
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.epoch = 0
        n = len(store_rows)
        if shuffle:
            # Global batch: at most the split, a multiple of the process count.
            self.global_batch = max(world_size, min(batch_size, n) // world_size * world_size)
            self.steps = max(1, n // self.global_batch)
        else:
            self.global_batch = batch_size * world_size
            self.steps = -(-n // self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def _batches(self) -> list[np.ndarray]:
        n = len(self.store_rows)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        batches = []
        for step in range(self.steps):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch]
            mine = chunk[self.rank::self.world_size]
            if self.shuffle:
                mine = np.sort(mine)  # ascending store rows read the memmap in file order
            batches.append(mine)
        return batches

    def _gather(self, positions: np.ndarray) -> tuple:
        rows = self.store_rows[positions]
        images = torch.from_numpy(np.ascontiguousarray(self.faces[rows]))
        labels = torch.from_numpy(self.labels[positions].astype(np.int64))
        extra = None if self.extra is None else torch.from_numpy(self.extra[positions].astype(np.int64))
        pos = torch.from_numpy(positions.astype(np.int64))
        if self.device.type == "cuda":
            images = images.pin_memory()
        return images, labels, extra, pos

    def __iter__(self) -> Iterator[tuple]:
        batches = self._batches()
        results: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for positions in batches:
                    if stop.is_set():
                        return
                    results.put(self._gather(positions))
            except BaseException as error:  # handed to the consumer, raised there
                results.put(error)
            results.put(None)

        worker = threading.Thread(target=produce, daemon=True, name="poi-batch-loader")
        worker.start()
        try:
            while True:
                item = results.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield tuple(None if t is None else t.to(self.device, non_blocking=True) for t in item)
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    results.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
