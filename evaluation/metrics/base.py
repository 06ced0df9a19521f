"""The common metric API: mergeable state, `update` / `merge` / `compute`, named results.

A metric object holds only sums, counts, feature moments or feature lists (picklable numpy
arrays), so Ray workers each fill one, ship it to the driver, and the driver merges them:
`merge_all([...]).compute()` equals one pass over all the data. Per-clip numbers come from a
fresh metric per clip, computed, then merged into the total.

Every result carries its own name (`FID` vs `FID-dlib`, `CSIM` vs `CSIM-dlib`, `LSE-D` vs
`Sync-lm-D`) and the model that produced it, so a fallback is never reported as the original.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Iterable, TypeVar

import numpy as np

M = TypeVar("M", bound="Metric")


class MetricError(ValueError):
    """A metric got input it cannot use, or was computed before any update; the message says which."""


@dataclass(frozen=True)
class MetricResult:
    """One reported number: its name, value, the model that produced it, and how many items it covers."""

    name: str
    value: float
    higher_is_better: bool
    count: int
    model: str = ""  # network + weights that produced the features ("" for pure formulas)
    details: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain dict (JSON/MLflow friendly)."""
        return asdict(self)


class Metric(ABC):
    """Base of every metric: a mergeable state; subclasses define `update`, `_merge_state`, `compute`.

    `spec()` says what must agree for two states to merge (name, model, parameters).
    """

    def spec(self) -> tuple:
        """What two states must share to be merged (type, result names, model, parameters)."""
        return (type(self).__name__,)

    @abstractmethod
    def _merge_state(self, other: Metric) -> None:
        """Fold `other`'s state into this one (same spec checked already)."""

    @abstractmethod
    def compute(self) -> dict[str, MetricResult]:
        """The metric's results, keyed by result name."""

    def merge(self: M, other: M) -> M:
        """Fold another partial state (e.g. from a Ray worker) into this one, in place; returns self."""
        if not isinstance(other, Metric) or self.spec() != other.spec():
            other_spec = other.spec() if isinstance(other, Metric) else type(other).__name__
            raise MetricError(f"cannot merge metric states with different specs: {self.spec()} vs {other_spec}; "
                              "merge only states made with the same metric, model and parameters")
        self._merge_state(other)
        return self

    def copy(self: M) -> M:
        """An independent copy of this state."""
        return copy.deepcopy(self)


def merge_all(metrics: Iterable[M]) -> M:
    """Merge partial states in order into a copy of the first (the inputs are not modified)."""
    items = list(metrics)
    if not items:
        raise MetricError("merge_all got no metric states")
    total = items[0].copy()
    for m in items[1:]:
        total.merge(m)
    return total


class MeanMetric(Metric):
    """A metric that is the mean of per-item values: state = sum, count (and sum of squares for the std)."""

    higher_is_better: bool = False

    def __init__(self, name: str, model: str = ""):
        self.name = name
        self.model = model
        self.total = 0.0
        self.total_sq = 0.0
        self.n = 0

    def spec(self) -> tuple:
        return (type(self).__name__, self.name, self.model)

    def _add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(v)):
            raise MetricError(f"{self.name}: got non-finite per-item values")
        self.total += float(v.sum())
        self.total_sq += float((v * v).sum())
        self.n += int(v.size)

    def _merge_state(self, other: MeanMetric) -> None:
        self.total += other.total
        self.total_sq += other.total_sq
        self.n += other.n

    def _details(self) -> dict[str, float]:
        return {}

    def compute(self) -> dict[str, MetricResult]:
        if self.n == 0:
            raise MetricError(f"{self.name}: compute() before any update")
        mean = self.total / self.n
        std = math.sqrt(max(self.total_sq / self.n - mean * mean, 0.0))
        return {self.name: MetricResult(self.name, mean, self.higher_is_better, self.n, self.model,
                                        {"std": std, **self._details()})}
