"""What the evaluation job animates with: a small generator interface and the two baselines.

A generator takes one `GenerationInput` (the source frame and its fitted geometry, the driving
clip's per-frame rows, the clip's audio features) and returns `Generated` frames. When a
generator knows the 3DMM geometry of what it produced (the baselines do, by construction), it
returns it too, so AED/APD/LMD need no re-fitting; otherwise those fields stay None and the job
records those metrics as not computed, with the reason.

Baselines:
- `static`: the source frame repeated (what a model that never moves scores);
- `ground_truth`: the true frames of the driving clip (the ceiling for self-reenactment fidelity,
  sync and identity).
A trained model (`--model RUN|DIR|champion`) plugs in through `load_generator`; the animate
pipeline (`r3p animate`: I2P, motion adapter, HTB-SR) is not built yet, so it raises
`GeneratorNotAvailable` naming what is missing. That one function is the seam to fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

BASELINES = ("static", "ground_truth")


class GeneratorNotAvailable(RuntimeError):
    """A requested model cannot be loaded (not built yet, or not found); the message says what to use instead."""


@dataclass
class Geometry:
    """Per-frame fitted geometry: landmarks (T, 68, 2) crop pixels, expression (T, 64), Euler angles (T, 3) radians."""

    landmarks: np.ndarray
    exp: np.ndarray
    euler: np.ndarray

    def __post_init__(self) -> None:
        t = len(self.landmarks)
        if self.landmarks.shape[1:] != (68, 2) or self.exp.shape != (t, 64) or self.euler.shape != (t, 3):
            raise ValueError(f"Geometry: landmarks {self.landmarks.shape}, exp {self.exp.shape}, euler "
                             f"{self.euler.shape} must be (T, 68, 2), (T, 64), (T, 3) with one T")

    def take(self, index: np.ndarray) -> Geometry:
        """The rows at `index` (frames)."""
        return Geometry(self.landmarks[index], self.exp[index], self.euler[index])


@dataclass
class GenerationInput:
    """One evaluation item: source image + geometry, driving frames (true images) + geometry, audio features.

    `driving_frames` are the true frames of the driving clip (RGB uint8 (T, H, W, 3)); a generator
    driven by video may read only its geometry; `audio` holds the clip's features (mel (2T, 80), …)."""

    source_frame: np.ndarray  # (H, W, 3) uint8 RGB
    source_geometry: Geometry  # one row (1, …)
    driving_frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    driving_geometry: Geometry  # T rows
    audio: dict[str, np.ndarray]
    mode: str  # "video" (self / cross) or "audio"


@dataclass
class Generated:
    """Generated frames (T, H, W, 3) uint8 RGB and, when known by construction, their geometry."""

    frames: np.ndarray
    geometry: Geometry | None = None


class Generator(Protocol):
    """Anything that animates a source frame from a driving clip and/or audio features."""

    name: str
    identity: str  # what the model is (for the MLflow run and the report)

    def __call__(self, item: GenerationInput) -> Generated: ...


class StaticSource:
    """Baseline: the source frame repeated for every driving frame (geometry = the source's, repeated)."""

    name = "static"
    identity = "baseline: source frame repeated"

    def __call__(self, item: GenerationInput) -> Generated:
        t = len(item.driving_frames)
        frames = np.repeat(item.source_frame[None], t, axis=0)
        g = item.source_geometry
        return Generated(frames, Geometry(np.repeat(g.landmarks[:1], t, 0), np.repeat(g.exp[:1], t, 0),
                                          np.repeat(g.euler[:1], t, 0)))


class GroundTruth:
    """Baseline: the true frames of the driving clip (geometry = the dataset's fit of those frames)."""

    name = "ground_truth"
    identity = "baseline: the test frames themselves"

    def __call__(self, item: GenerationInput) -> Generated:
        return Generated(item.driving_frames.copy(), item.driving_geometry)


def load_generator(model: str) -> Generator:
    """The generator for a model name: a baseline (`static`, `ground_truth`), or a trained model (not built yet)."""
    if model == "static":
        return StaticSource()
    if model == "ground_truth":
        return GroundTruth()
    # The seam for trained models: `champion` (the MLflow registry alias), a run name or a checkpoint folder
    # will load `r3p animate`'s pipeline here once it exists.
    raise GeneratorNotAvailable(
        f"--model {model!r}: evaluating a trained talking-head model needs the animate pipeline "
        "(`r3p animate`: image-to-plane, motion adapter, HTB-SR), which is not built yet; evaluate the baselines "
        f"with --model {'|'.join(BASELINES)} (both run in every evaluation)")
