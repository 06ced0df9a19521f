"""AED and APD: mean L1 between fitted 3DMM expression (64) / Euler angles (3, radians) of generated
and driving frames (lower is better). The fitting happens elsewhere; these take the arrays.

Coefficient layout (257): exp 80:144, angles 224:227 — `expression_and_angles` slices a full
coefficient array. APD is in radians (details carry degrees too).
"""

from __future__ import annotations

import math

import numpy as np

from .base import MeanMetric, MetricError

EXP = slice(80, 144)
ANGLES = slice(224, 227)


def expression_and_angles(coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 64) expression and (N, 3) Euler angles from (N, 257) Deep3DFaceRecon coefficients."""
    c = np.asarray(coeffs, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 257:
        raise MetricError(f"expected (N, 257) 3DMM coefficients, got {c.shape}")
    return c[:, EXP], c[:, ANGLES]


def _pair(generated: np.ndarray, driving: np.ndarray, dim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    g, d = np.asarray(generated, np.float64), np.asarray(driving, np.float64)
    if g.ndim != 2 or g.shape[1] != dim or g.shape != d.shape:
        raise MetricError(f"{what}: generated {g.shape} and driving {d.shape} must both be (frames, {dim})")
    return g, d


class AED(MeanMetric):
    """Average expression distance: mean over frames of the mean |Δ| over the 64 expression coefficients."""

    def __init__(self, name: str = "AED", model: str = ""):
        super().__init__(name, model)

    def update(self, generated_exp: np.ndarray, driving_exp: np.ndarray) -> None:
        """Add frames: expression coefficients (N, 64) of generated and driving frames."""
        g, d = _pair(generated_exp, driving_exp, 64, self.name)
        self._add(np.abs(g - d).mean(axis=1))


class APD(MeanMetric):
    """Average pose distance: mean over frames of the mean |Δ| over the 3 Euler angles (radians)."""

    def __init__(self, name: str = "APD", model: str = ""):
        super().__init__(name, model)

    def update(self, generated_angles: np.ndarray, driving_angles: np.ndarray) -> None:
        """Add frames: Euler angles (N, 3), radians, of generated and driving frames."""
        g, d = _pair(generated_angles, driving_angles, 3, self.name)
        self._add(np.abs(g - d).mean(axis=1))

    def _details(self) -> dict[str, float]:
        return {"degrees": math.degrees(self.total / self.n)}
