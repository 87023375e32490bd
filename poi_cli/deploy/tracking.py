"""Face tracks across video frames: IoU association, and per-track smoothing of probabilities.

    tracker = IoUTracker(max_gap=1.0)
    ids = tracker.update(boxes, timestamp)      # one id per box, stable while the face moves

A box joins the live track whose last box overlaps it most (intersection over union at
least `min_iou`; greedy, best pairs first, each track takes one box per frame). A track
not seen for up to `max_gap` seconds keeps its id and can be picked up again (a face lost
for a few frames: a blink of the detector, a hand in front); after that a new face gets
a new id. Ids count from 0 in order of appearance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

DEFAULT_MIN_IOU = 0.3
DEFAULT_MAX_GAP = 1.0  # seconds a lost face keeps its track id


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes (0 when either is empty)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: np.ndarray
    last_seen: float


class IoUTracker:
    """Frame-to-frame association of face boxes by IoU; see the module docstring."""

    def __init__(self, min_iou: float = DEFAULT_MIN_IOU, max_gap: float = DEFAULT_MAX_GAP) -> None:
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        self.min_iou, self.max_gap = float(min_iou), float(max_gap)
        self.tracks: list[_Track] = []
        self.next_id = 0

    def update(self, boxes: Sequence[Sequence[float]], timestamp: float) -> list[int]:
        """The track id of each box of this frame (new ids for faces that match no track)."""
        self.tracks = [t for t in self.tracks if timestamp - t.last_seen <= self.max_gap + 1e-9]
        pairs = sorted(
            ((box_iou(box, track.box), b, t) for b, box in enumerate(boxes) for t, track in enumerate(self.tracks)),
            key=lambda pair: -pair[0],
        )
        ids: list[Optional[int]] = [None] * len(boxes)
        taken: set[int] = set()
        for iou, b, t in pairs:
            if iou < self.min_iou:
                break
            if ids[b] is None and t not in taken:
                ids[b] = self.tracks[t].id
                taken.add(t)
                self.tracks[t].box, self.tracks[t].last_seen = np.asarray(boxes[b], float), timestamp
        for b, box in enumerate(boxes):
            if ids[b] is None:
                ids[b] = self.next_id
                self.tracks.append(_Track(self.next_id, np.asarray(box, float), timestamp))
                self.next_id += 1
        return [int(i) for i in ids]


class TrackSmoother:
    """Exponential moving average of each track's probabilities with a time constant in seconds.

    After a gap of dt seconds the new frame gets the weight 1 - exp(-dt / seconds), so
    the smoothing means the same thing whatever the sampling rate; a new track starts
    at its first frame's values.
    """

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"--smooth must be a positive number of seconds, got {seconds}")
        self.seconds = float(seconds)
        self.state: dict[int, tuple[float, np.ndarray]] = {}

    def update(self, track: int, timestamp: float, probabilities: np.ndarray) -> np.ndarray:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        previous = self.state.get(track)
        if previous is None:
            smoothed = probabilities
        else:
            weight = 1.0 - math.exp(-max(0.0, timestamp - previous[0]) / self.seconds)
            smoothed = previous[1] + weight * (probabilities - previous[1])
        self.state[track] = (timestamp, smoothed)
        return smoothed
