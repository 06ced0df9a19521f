"""What a training stage is: the one interface the runner (`training.loop`, `pipeline.train`) knows.

A stage module defines a `Stage` subclass and exposes it as `STAGE`. The stage declares the
dataset columns it reads, turns one clip's arrays into training examples (fixed-size windows;
pure numpy, run by the job inside Ray Data), builds its model, draws the random parts of a batch
(negatives, noise) for the whole global batch, computes its weighted losses on a worker's part of
the batch, validates, and names the checkpoints of earlier stages it loads and freezes. Its
parameters are a dataclass with `tiny` (CPU, tests and demo) and `paper` (published sizes) values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

#: columns every stage reads from `clips/` (besides its own)
BASE_CLIP_COLUMNS = ("clip_id", "split", "speaker_id", "status")


class StageError(ValueError):
    """A stage parameter, input or required checkpoint is wrong; the message names it and the fix."""


@dataclass
class StageParams:
    """Optimisation settings shared by every stage (sizes and loss weights live in the subclasses)."""

    steps: int = 1000
    batch_size: int = 64  # global: split evenly over the workers
    lr: float = 1e-3
    lr_decay: float = 1.0  # multiply the learning rate by this ...
    lr_decay_every: int = 1_000_000  # ... every this many steps
    lr_min: float = 0.0
    warmup: int = 0  # linear warm-up steps
    clip_grad: float = 1.0
    audio: str = "auto"  # auto (HuBERT when every clip has it, else mel) | mel | hubert

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at `step` (warm-up, then step decay with a floor)."""
        f = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        f *= self.lr_decay ** (step // self.lr_decay_every)
        return max(f, self.lr_min / self.lr) if self.lr > 0 else f


@dataclass
class ClipArrays:
    """One ok clip as arrays: audio rows at 50 Hz (2T, D), f0 (2T,), id (80,), per-frame columns (T, ...)."""

    clip_id: str
    speaker_id: str
    audio: np.ndarray
    f0: np.ndarray
    id_coeff: np.ndarray
    frames: dict[str, np.ndarray] = field(default_factory=dict)  # binary columns (images): object arrays of bytes
    context: dict[str, Any] = field(default_factory=dict)  # what the stage's `example_context` gave the job
    columns: dict[str, Any] = field(default_factory=dict)  # the stage's `clip_columns` of this clip's row

    @property
    def n_frames(self) -> int:
        return int(self.audio.shape[0] // 2)


class Stage:
    """Base class of a training stage (see the module docstring)."""

    name: ClassVar[str] = ""
    #: what the stage reads: "clips" (a `r3p preprocess` dataset: clips/ + frames/) or "views" (`r3p multiview`)
    dataset_kind: ClassVar[str] = "clips"
    #: clip stages only: whether examples need the audio features (the job then picks mel or HuBERT)
    uses_audio: ClassVar[bool] = True
    #: DDP must tolerate parameters without a gradient in a step (a part frozen for some steps)
    ddp_find_unused: ClassVar[bool] = False
    clip_columns: ClassVar[tuple[str, ...]] = ()
    frame_columns: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type] = StageParams
    sizes: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}, "paper": {}}

    # ---- parameters
    def params(self, size: str, overrides: dict[str, Any] | None = None) -> Any:
        """The stage's parameters for `size` ('tiny' | 'paper') with `overrides`; unknown keys raise StageError."""
        if size not in self.sizes:
            raise StageError(f"stage {self.name}: unknown size {size!r}; choose one of {sorted(self.sizes)}")
        values = {**self.sizes[size], **(overrides or {})}
        names = {f.name for f in dataclasses.fields(self.Params)}
        bad = sorted(set(values) - names)
        if bad:
            raise StageError(f"unknown config key(s) {[f'training.{self.name}.{k}' for k in bad]}; valid keys: "
                             + ", ".join(f"training.{self.name}.{n}" for n in sorted(names)))
        try:
            p = self.Params(**values)
        except TypeError as exc:
            raise StageError(f"stage {self.name}: {exc}") from None
        self.check_params(p)
        return p

    def check_params(self, p: Any) -> None:
        """Raise StageError naming the key of a bad value."""
        for k in ("steps", "batch_size"):
            if getattr(p, k) < 1:
                raise StageError(f"config key 'training.{self.name}.{k}' must be >= 1 (got {getattr(p, k)})")
        if not (p.lr > 0 and math.isfinite(p.lr)):
            raise StageError(f"config key 'training.{self.name}.lr' must be a positive number (got {p.lr})")
        if p.audio not in ("auto", "mel", "hubert"):
            raise StageError(f"config key 'training.{self.name}.audio' must be auto, mel or hubert (got {p.audio!r})")

    def params_from_dict(self, d: dict[str, Any]) -> Any:
        return self.Params(**d)

    def required_checkpoints(self, p: Any) -> dict[str, str | None]:
        """{param name: value} of earlier-stage checkpoints this run needs (None = needed but not given)."""
        return {}

    # ---- data
    def example_context(self, p: Any, face_model: Any) -> dict[str, Any]:
        """Driver-side objects every example task needs (e.g. the face model); picklable. Default: none."""
        return {}

    def examples(self, clip: ClipArrays, p: Any) -> dict[str, np.ndarray]:
        """Training examples of one clip: equal-shaped windows stacked on axis 0 (an empty dict if none)."""
        raise NotImplementedError

    def views_examples(self, image: np.ndarray, mask: np.ndarray, cameras: np.ndarray, p: Any) -> dict[str, np.ndarray]:
        """Views stages: training examples of one multi-view sample (image (V, H, W, 3) uint8, mask (V, H, W)
        bool, cameras (V, 25))."""
        raise NotImplementedError

    def init_weights(self, model: torch.nn.Module, p: Any) -> None:
        """Initialise a new run's model from earlier stages (not called when resuming or with --from)."""

    # ---- model and losses
    def build(self, p: Any, info: dict[str, Any]) -> torch.nn.Module:
        """The trainable model; `info` holds what the job found (audio_dim, keypoint basis, ...)."""
        raise NotImplementedError

    def frozen(self, p: Any, info: dict[str, Any]) -> dict[str, torch.nn.Module]:
        """Frozen models loaded from earlier stages' checkpoints (not trained, not saved)."""
        return {}

    def prepare(self, batch: dict[str, torch.Tensor], step: int, gen: torch.Generator, p: Any) -> dict:
        """Draw the batch's random parts (negatives, noise) for the whole global batch with `gen`."""
        return batch

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int, p: Any,
             frozen: dict[str, torch.nn.Module]) -> tuple[torch.Tensor, dict[str, float]]:
        """(weighted total loss, {term: value}) on a worker's part of a prepared batch."""
        raise NotImplementedError

    def validate(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], p: Any,
                 frozen: dict[str, torch.nn.Module]) -> dict[str, float]:
        """Validation metrics over prepared validation batches (higher or lower: see each stage)."""
        return {}

    #: the validation metric the summary calls "best", and whether higher is better
    best_metric: ClassVar[tuple[str, bool] | None] = None
