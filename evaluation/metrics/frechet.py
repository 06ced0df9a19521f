"""Fréchet distance between Gaussians fitted to feature sets: FID (Inception features) and FID-dlib.

d² = ‖μ1 − μ2‖² + Tr Σ1 + Tr Σ2 − 2 Tr (Σ1^½ Σ2 Σ1^½)^½. The trace term is computed from the
eigenvalues of symmetric PSD matrices (eigh), which equals Tr sqrtm(Σ1 Σ2) without the
instability of a general matrix square root (no complex parts, no retries).
"""

from __future__ import annotations

import numpy as np

from .base import Metric, MetricError, MetricResult
from .moments import GaussianMoments


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise MetricError(f"frechet_distance: shapes do not agree: mu {mu1.shape}/{mu2.shape}, "
                          f"sigma {s1.shape}/{s2.shape}")
    r1 = _psd_sqrt(s1)
    inner = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


class FrechetDistance(Metric):
    """FID-style metric: mergeable moments of real and generated features → Fréchet distance.

    `name` is `FID` only for the FID-Inception features; fallbacks use their own name (`FID-dlib`).
    """

    higher_is_better = False

    def __init__(self, dim: int, name: str = "FID", model: str = ""):
        self.name = name
        self.model = model
        self.dim = int(dim)
        self.real = GaussianMoments(self.dim)
        self.fake = GaussianMoments(self.dim)

    @classmethod
    def for_extractor(cls, extractor) -> FrechetDistance:
        """Named and labelled for its feature extractor (`FID` for Inception, `FID-dlib` for dlib)."""
        return cls(extractor.dim, extractor.fid_name, extractor.model)

    def spec(self) -> tuple:
        return (type(self).__name__, self.name, self.model, self.dim)

    def update(self, features: np.ndarray, real: bool) -> None:
        """Add feature rows (N, dim) of real (reference) or generated frames."""
        try:
            (self.real if real else self.fake).update(features)
        except ValueError as e:
            raise MetricError(f"{self.name}: {e}") from None

    def _merge_state(self, other: FrechetDistance) -> None:
        self.real.merge(other.real)
        self.fake.merge(other.fake)

    def compute(self) -> dict[str, MetricResult]:
        for side, mom in (("real", self.real), ("generated", self.fake)):
            if mom.n < 2:
                raise MetricError(f"{self.name}: needs at least 2 {side} feature vectors, got {mom.n}")
        value = frechet_distance(self.real.mean, self.real.covariance(), self.fake.mean, self.fake.covariance())
        return {self.name: MetricResult(self.name, value, False, self.fake.n, self.model,
                                        {"n_real": float(self.real.n), "n_generated": float(self.fake.n)})}
