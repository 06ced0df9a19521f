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
A trained model is not loaded here: `r3p animate` lives in `pipeline/`, above this package, so the job
(`pipeline.evaluate`) builds it (`pipeline.animate_generator.make_generator`) behind this same
`Generator` interface; `load_generator` knows the baselines and says so for anything else.
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
    """Per-frame fitted geometry: landmarks (T, 68, 2) crop pixels, expression (T, 64), Euler angles (T, 3) radians;
    when the dataset has them, the fitted translation (T, 3) and EG3D cameras (T, 25) (what a model driven by
    the clip's pose reads)."""

    landmarks: np.ndarray
    exp: np.ndarray
    euler: np.ndarray
    trans: np.ndarray | None = None
    cams: np.ndarray | None = None

    def __post_init__(self) -> None:
        t = len(self.landmarks)
        if self.landmarks.shape[1:] != (68, 2) or self.exp.shape != (t, 64) or self.euler.shape != (t, 3):
            raise ValueError(f"Geometry: landmarks {self.landmarks.shape}, exp {self.exp.shape}, euler "
                             f"{self.euler.shape} must be (T, 68, 2), (T, 64), (T, 3) with one T")
        for name, a, d in (("trans", self.trans, 3), ("cams", self.cams, 25)):
            if a is not None and np.shape(a) != (t, d):
                raise ValueError(f"Geometry: {name} {np.shape(a)} must be ({t}, {d})")

    def take(self, index: np.ndarray) -> Geometry:
        """The rows at `index` (frames)."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Geometry(self.landmarks[index], self.exp[index], self.euler[index], pick(self.trans), pick(self.cams))


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
    driving_index: np.ndarray | None = None  # (T,) frame index in the clip of each driving row (audio rows 2i, 2i+1)


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
    """The generator of a baseline (`static`, `ground_truth`); GeneratorNotAvailable for any other name (trained
    models are built by the job: `pipeline.animate_generator.make_generator`)."""
    if model == "static":
        return StaticSource()
    if model == "ground_truth":
        return GroundTruth()
    raise GeneratorNotAvailable(f"--model {model!r} is not a baseline ({'|'.join(BASELINES)}); trained models are "
                                "loaded by `r3p evaluate` through `r3p animate`'s pipeline")
