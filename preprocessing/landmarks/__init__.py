"""Face detection + 68-point landmarks behind one interface, and per-clip face tracking.

`make_detector("dlib" | "insightface", **params).detect(rgb_uint8) -> list[Face]`; landmarks are
iBUG-68 in image pixels (x right, y down, pixel centres at +0.5). `track_faces(per_frame_faces)`
gives the clip's main face track, smoothed landmarks and one square crop (`crop_frames`).
Backends import their libraries lazily (dlib / insightface are loaded when a detector is made).
"""

from __future__ import annotations

from .base import (
    N_LANDMARKS,
    Face,
    LandmarkDetector,
    LandmarkModelError,
    available_detectors,
    dlib_models_dir,
    make_detector,
)
from . import dlib_backend as _dlib_backend  # noqa: F401  (registers "dlib")
from . import insightface_backend as _insightface_backend  # noqa: F401  (registers "insightface")
from .tracking import (
    CropBox,
    FaceTrack,
    TrackingError,
    TrackingParams,
    compute_crop_box,
    crop_frames,
    landmarks_to_crop,
    smooth_landmarks,
    track_faces,
)

__all__ = [
    "N_LANDMARKS", "Face", "LandmarkDetector", "LandmarkModelError", "available_detectors",
    "dlib_models_dir", "make_detector", "CropBox", "FaceTrack", "TrackingError", "TrackingParams",
    "compute_crop_box", "crop_frames", "landmarks_to_crop", "smooth_landmarks", "track_faces",
]
