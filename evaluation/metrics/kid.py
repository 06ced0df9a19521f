"""Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel (x·y/d + 1)³.

Averaged over random subsets of size m = min(n_real, n_generated, subset_size) as clean-fid and
torchmetrics do (100 subsets of at most 1000); when m equals both set sizes one subset is the
exact full-set estimate. The state is the feature rows themselves (merging concatenates in order).
"""

from __future__ import annotations

import numpy as np

from .base import Metric, MetricError, MetricResult


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² between feature sets x (m, d) and y (m, d) with k(a, b) = (a·b/d + 1)³."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, d = x.shape
    if y.shape != (m, d) or m < 2:
        raise MetricError(f"polynomial_mmd2 needs two (m >= 2, d) sets of equal shape, got {x.shape} and {y.shape}")
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


class KernelDistance(Metric):
    """KID (or KID-dlib): mean and std of unbiased polynomial MMD² over random subsets."""

    def __init__(self, dim: int, name: str = "KID", model: str = "", num_subsets: int = 100,
                 subset_size: int = 1000, seed: int = 0):
        if num_subsets < 1 or subset_size < 2:
            raise MetricError(f"{name}: num_subsets must be >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}")
        self.name, self.model, self.dim = name, model, int(dim)
        self.num_subsets, self.subset_size, self.seed = int(num_subsets), int(subset_size), int(seed)
        self.real: list[np.ndarray] = []
        self.fake: list[np.ndarray] = []

    @classmethod
    def for_extractor(cls, extractor, **kw) -> KernelDistance:
        """Named and labelled for its feature extractor (`KID` for Inception, `KID-dlib` for dlib)."""
        return cls(extractor.dim, extractor.kid_name, extractor.model, **kw)

    def spec(self) -> tuple:
        return (type(self).__name__, self.name, self.model, self.dim, self.num_subsets, self.subset_size, self.seed)

    def update(self, features: np.ndarray, real: bool) -> None:
        """Add feature rows (N, dim) of real (reference) or generated frames."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise MetricError(f"{self.name}: features must have shape (N, {self.dim}), got {x.shape}")
        (self.real if real else self.fake).append(x.copy())

    def _merge_state(self, other: KernelDistance) -> None:
        self.real.extend(other.real)
        self.fake.extend(other.fake)

    def compute(self) -> dict[str, MetricResult]:
        x = np.concatenate(self.real) if self.real else np.zeros((0, self.dim), np.float32)
        y = np.concatenate(self.fake) if self.fake else np.zeros((0, self.dim), np.float32)
        m = min(len(x), len(y), self.subset_size)
        if m < 2:
            raise MetricError(f"{self.name}: needs at least 2 real and 2 generated feature vectors, "
                              f"got {len(x)} and {len(y)}")
        if m == len(x) == len(y):
            values = np.array([polynomial_mmd2(x, y)])
        else:
            rng = np.random.default_rng(self.seed)
            values = np.array([polynomial_mmd2(x[rng.choice(len(x), m, replace=False)],
                                               y[rng.choice(len(y), m, replace=False)])
                               for _ in range(self.num_subsets)])
        return {self.name: MetricResult(self.name, float(values.mean()), False, len(y), self.model,
                                        {"std": float(values.std()), "subset_size": float(m),
                                         "subsets": float(len(values))})}
