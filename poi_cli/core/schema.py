"""Names that several files share: image statuses and the five landmarks.

Every module that writes or reads a status or a landmark name imports it from here, so a
spelling exists once. These strings are user-visible (manifest.csv's `status`, the
`status` of `poi predict` records, the `landmark_<name>_x/y` columns): changing one is a
format change.
"""

from __future__ import annotations

# Statuses of a manifest.csv row (`poi prepare`). A dataset parser sets pending /
# excluded / missing; preparing an image sets ok / bad_image / no_face / error.
STATUS_PENDING = "pending"  # to be loaded and stored (never left in a finished manifest)
STATUS_EXCLUDED = "excluded"  # the dataset's label rule drops it (no majority, unknown, None...)
STATUS_MISSING = "missing"  # listed by the labels but not on disk
STATUS_OK = "ok"  # a face is stored (manifest) / a face was predicted (predict)
STATUS_BAD_IMAGE = "bad_image"  # unreadable, empty, truncated, too small or too large
STATUS_NO_FACE = "no_face"  # no face detected
STATUS_ERROR = "error"  # anything else that went wrong with this one image

STORE_STATUSES: tuple[str, ...] = (STATUS_OK, STATUS_EXCLUDED, STATUS_MISSING, STATUS_BAD_IMAGE, STATUS_NO_FACE, STATUS_ERROR)
# Statuses of a `poi predict` record: a face, an image without a face, an unusable input.
PREDICT_STATUSES: tuple[str, ...] = (STATUS_OK, STATUS_NO_FACE, STATUS_ERROR)

# The five landmarks of MTCNN, the alignment template and every landmark array (5, 2), in
# this order; "left" is image-left. One spelling: <side>_<part> (`left_mouth`, never
# `mouth_left`), as in predict's `landmark_left_mouth_x` columns.
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
NUM_LANDMARKS = len(LANDMARK_NAMES)

# Columns a video adds to `poi predict`'s records, right after `image`: the frame's index
# among all decoded frames (0-based), its time in seconds from the first frame, and the
# face's track id (one id per face followed from frame to frame; null on no_face rows).
VIDEO_COLUMNS: tuple[str, ...] = ("frame", "timestamp", "track")

# `detector` of a `poi predict` record: how the face was found. MTCNN, or none: the whole
# image (or frame) taken as one face (`--no-detect`, for already-cropped faces).
DETECTOR_MTCNN = "mtcnn"
DETECTOR_NONE = "none"

# --amp of every command that runs a model (train, evaluate, calibrate, audit, clean, report).
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "off")


def check_amp(amp: str) -> None:
    """ValueError (one line) for an --amp that is not one of AMP_MODES."""
    if amp not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")

# --device of every command that runs torch (core.runtime.select_device's choices)
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
