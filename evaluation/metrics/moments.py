"""Mergeable first and second feature moments (count, mean, centred scatter), float64.

Batches and partial states combine with the parallel (Chan et al.) update, which is exact and
stable: merging any split of the data gives the moments of the whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GaussianMoments:
    """Count, mean (d,) and centred scatter matrix (d, d) of feature vectors."""

    dim: int
    n: int = 0
    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    scatter: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.dim)
        if self.scatter is None:
            self.scatter = np.zeros((self.dim, self.dim))

    def _combine(self, n_b: int, mean_b: np.ndarray, scatter_b: np.ndarray) -> None:
        if n_b == 0:
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.scatter = self.scatter + scatter_b + np.outer(delta, delta) * (self.n * n_b / n)
        self.mean = self.mean + delta * (n_b / n)
        self.n = n

    def update(self, features: np.ndarray) -> None:
        """Add a batch of feature rows (N, dim)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf")
        if len(x) == 0:
            return
        mean_b = x.mean(axis=0)
        xc = x - mean_b
        self._combine(len(x), mean_b, xc.T @ xc)

    def merge(self, other: GaussianMoments) -> None:
        """Fold another state of the same dimension into this one."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {other.dim} into {self.dim}")
        self._combine(other.n, other.mean, other.scatter)

    def covariance(self) -> np.ndarray:
        """Unbiased covariance (d, d), like np.cov(x, rowvar=False); needs n >= 2."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        return self.scatter / (self.n - 1)
