"""Common types of the landmark backends: `Face`, the `LandmarkDetector` protocol and the factory.

Coordinate convention (all backends): image pixels, x right, y down, continuous coordinates with
pixel centres at +0.5 (pixel (i, j) covers [j, j+1) × [i, i+1)). Backends whose libraries report
integer pixel indices (dlib, OpenCV/insightface) add 0.5 on the way out.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

N_LANDMARKS = 68


class LandmarkModelError(FileNotFoundError):
    """A backend's model files are missing or unusable; the message says which and how to fix it."""


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face: box (x0, y0, x1, y1), detector score, 68 iBUG landmarks (68, 2), pixels."""

    box: np.ndarray  # (4,) float64
    score: float
    landmarks: np.ndarray  # (68, 2) float64

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float64).reshape(4)
        lm = np.asarray(self.landmarks, dtype=np.float64)
        if lm.shape != (N_LANDMARKS, 2):
            raise ValueError(f"Face.landmarks must have shape (68, 2), got {lm.shape}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "landmarks", lm)
        object.__setattr__(self, "score", float(self.score))

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


@runtime_checkable
class LandmarkDetector(Protocol):
    """Finds faces and their 68 landmarks in one RGB uint8 image (H, W, 3)."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in `image` (RGB uint8, H×W×3), in the module's pixel convention."""
        ...


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an RGB uint8 (H, W, 3) image and return it C-contiguous."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def dlib_models_dir() -> Path | None:
    """The `models/` folder of the installed face_recognition_models package, without importing it.

    (Its __init__ imports pkg_resources, which current setuptools no longer ships.)
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


_BACKENDS: dict[str, Callable[..., LandmarkDetector]] = {}


def register_backend(name: str, factory: Callable[..., LandmarkDetector]) -> None:
    """Make `factory(**params)` available to `make_detector(name, ...)`."""
    _BACKENDS[name] = factory


def available_detectors() -> list[str]:
    """Names accepted by `make_detector`."""
    return sorted(_BACKENDS)


def make_detector(name: str = "dlib", **params) -> LandmarkDetector:
    """A landmark detector by backend name ('dlib' default, 'insightface'), built with `params`."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown landmark backend {name!r}; choose one of {available_detectors()}")
    return _BACKENDS[name](**params)
