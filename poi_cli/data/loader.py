"""Batches of a prepared split, gathered from the uint8 store by a background thread.

Hot loop, per batch: a background thread gathers rows of faces.npy (uint8, memory-
mapped) into a pinned tensor and hands it to the device; no per-sample decode.
Used by training (shuffled, sharded over processes) and by inference (in order).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Optional

import numpy as np
import torch


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
