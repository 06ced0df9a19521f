"""LMD: landmark distance on the mouth (iBUG points 48–67), each set centred on its own mean, mean L2
per point, then over frames (pixels of the compared frames; lower is better)."""

from __future__ import annotations

import numpy as np

from .base import MeanMetric, MetricError

MOUTH = slice(48, 68)


def mouth_distance(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-frame mean L2 distance (N,) between mean-centred mouth points of (N, 68, 2) landmark arrays."""
    g, r = np.asarray(generated, np.float64), np.asarray(reference, np.float64)
    if g.ndim != 3 or g.shape[1:] != (68, 2) or g.shape != r.shape:
        raise MetricError(f"LMD: generated {g.shape} and reference {r.shape} must both be (frames, 68, 2)")
    gm, rm = g[:, MOUTH], r[:, MOUTH]
    gm = gm - gm.mean(axis=1, keepdims=True)
    rm = rm - rm.mean(axis=1, keepdims=True)
    return np.linalg.norm(gm - rm, axis=2).mean(axis=1)


class LMD(MeanMetric):
    """Mouth landmark distance, mean over frames."""

    def __init__(self, name: str = "LMD", model: str = ""):
        super().__init__(name, model)

    def update(self, generated_landmarks: np.ndarray, reference_landmarks: np.ndarray) -> None:
        """Add frames: 68-point landmarks (N, 68, 2) of generated and true frames, same pixel scale."""
        self._add(mouth_distance(generated_landmarks, reference_landmarks))
