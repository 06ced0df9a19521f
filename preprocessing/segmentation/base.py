"""Common types of the segmentation backends: `Segmentation`, the `Segmenter` protocol, the factory.

A segmenter turns a chunk of RGB frames of one clip (n, H, W, 3) uint8, with the clip's iBUG-68
landmarks (n, 68, 2) in the frames' pixels (NaN rows where no face) and optionally the rendered 3DMM
face silhouettes (n, H, W) bool, into a soft person matte (n, H, W) float32 in [0, 1]; backends
with semantic classes also return MediaPipe's six-class map (0 background, 1 hair, 2 body skin,
3 face skin, 4 clothes, 5 others). `reset()` starts a new clip (clears propagated state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

# MediaPipe selfie_multiclass_256x256 classes (the reference's segmentation)
BACKGROUND, HAIR, BODY_SKIN, FACE_SKIN, CLOTHES, OTHERS = range(6)
CLASS_NAMES = ("background", "hair", "body-skin", "face-skin", "clothes", "others")


class SegmentationError(RuntimeError):
    """A backend cannot run; the message says what to do. `reason`: `model_missing`, `library_missing`,
    `model_unreadable` or `segmentation_failed`."""

    def __init__(self, message: str, reason: str = "segmentation_failed") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return (type(self), (str(self), self.reason))


@dataclass
class Segmentation:
    """One chunk's result: soft person matte and, for class-based backends, the class map."""

    person: np.ndarray  # (n, H, W) float32 alpha in [0, 1]
    classes: np.ndarray | None = None  # (n, H, W) uint8 MediaPipe classes, or None


@runtime_checkable
class Segmenter(Protocol):
    """Segments the frames of one clip chunk by chunk."""

    name: str

    def reset(self) -> None:
        """Start a new clip: forget anything propagated from earlier frames."""
        ...

    def segment(self, frames: np.ndarray, landmarks: np.ndarray,
                face_masks: np.ndarray | None = None) -> Segmentation:
        """Person matte (and classes) for frames (n, H, W, 3) uint8 with landmarks (n, 68, 2)."""
        ...


def r3p_home(home: str | os.PathLike | None = None) -> Path:
    """The asset root: `home` if given, else $R3P_HOME, else ~/.r3p."""
    return Path(home if home is not None else os.environ.get("R3P_HOME", "~/.r3p")).expanduser()


def check_inputs(frames: np.ndarray, landmarks: np.ndarray,
                 face_masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate a chunk: frames (n, H, W, 3) uint8, landmarks (n, 68, 2), face_masks (n, H, W) bool."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be RGB uint8 of shape (n, H, W, 3), got {frames.dtype} {frames.shape}")
    n, h, w = frames.shape[:3]
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape != (n, 68, 2):
        raise ValueError(f"landmarks must have shape (n, 68, 2) = ({n}, 68, 2) to match frames, "
                         f"got {landmarks.shape}")
    if face_masks is not None:
        face_masks = np.asarray(face_masks)
        if face_masks.shape != (n, h, w):
            raise ValueError(f"face_masks must have shape (n, H, W) = ({n}, {h}, {w}) to match frames, "
                             f"got {face_masks.shape}")
        face_masks = face_masks.astype(bool, copy=False)
    return np.ascontiguousarray(frames), landmarks, face_masks


_BACKENDS: dict[str, Callable[..., Segmenter]] = {}


def register_backend(name: str, factory: Callable[..., Segmenter]) -> None:
    """Make `factory(**params)` available to `make_segmenter(name, ...)`."""
    _BACKENDS[name] = factory


def available_segmenters() -> list[str]:
    """Names accepted by `make_segmenter`."""
    return sorted(_BACKENDS)


def make_segmenter(name: str = "colour", **params) -> Segmenter:
    """A segmenter by backend name ('colour' default, 'rembg', 'mediapipe'); models load here, once."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown segmentation backend {name!r}; choose one of {available_segmenters()}")
    return _BACKENDS[name](**params)
