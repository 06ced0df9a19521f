"""Per-frame image fidelity against ground truth: PSNR and SSIM with scikit-image's definitions.

Both take RGB uint8 frames (N, H, W, 3), data range 255. PSNR per frame is capped at `max_db`
(100 dB by default): an identical frame has infinite PSNR, and one such frame (the source frame
itself in self-reenactment) would make the mean infinite; the count of identical frames is
reported in the details. SSIM is skimage's `structural_similarity(channel_axis=2, data_range=255)`
(7×7 uniform window).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from .base import MeanMetric, MetricError


def _frames(generated: np.ndarray, reference: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    g, r = np.asarray(generated), np.asarray(reference)
    if g.ndim != 4 or g.shape[-1] != 3 or g.shape != r.shape or g.dtype != np.uint8 or r.dtype != np.uint8:
        raise MetricError(f"{what}: generated {g.dtype} {g.shape} and reference {r.dtype} {r.shape} must both be "
                          "RGB uint8 frames (N, H, W, 3) of one size")
    return g, r


def psnr(generated: np.ndarray, reference: np.ndarray, max_db: float = 100.0) -> np.ndarray:
    """Per-frame PSNR in dB (N,), data range 255, capped at max_db (identical frames give max_db)."""
    g, r = _frames(generated, reference, "PSNR")
    mse = ((g.astype(np.float64) - r.astype(np.float64)) ** 2).reshape(len(g), -1).mean(axis=1)
    floor = 255.0 ** 2 * 10.0 ** (-max_db / 10.0)
    return 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, floor))


class PSNR(MeanMetric):
    """Mean per-frame PSNR (dB, capped at max_db), higher is better."""

    higher_is_better = True

    def __init__(self, name: str = "PSNR", model: str = "", max_db: float = 100.0):
        super().__init__(name, model)
        self.max_db = float(max_db)
        self.identical = 0

    def spec(self) -> tuple:
        return super().spec() + (self.max_db,)

    def update(self, generated: np.ndarray, reference: np.ndarray) -> None:
        """Add frames: RGB uint8 (N, H, W, 3) generated and true frames."""
        values = psnr(generated, reference, self.max_db)
        self.identical += int(np.sum(values >= self.max_db))
        self._add(values)

    def _merge_state(self, other: PSNR) -> None:
        super()._merge_state(other)
        self.identical += other.identical

    def _details(self) -> dict[str, float]:
        return {"identical_frames": float(self.identical), "max_db": self.max_db}


def ssim(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-frame SSIM (N,) with scikit-image's defaults for RGB uint8 (7×7 window, data range 255)."""
    g, r = _frames(generated, reference, "SSIM")
    return np.array([structural_similarity(a, b, channel_axis=2, data_range=255) for a, b in zip(g, r)])


class SSIM(MeanMetric):
    """Mean per-frame SSIM, higher is better."""

    higher_is_better = True

    def __init__(self, name: str = "SSIM", model: str = ""):
        super().__init__(name, model)

    def update(self, generated: np.ndarray, reference: np.ndarray) -> None:
        """Add frames: RGB uint8 (N, H, W, 3) generated and true frames."""
        self._add(ssim(generated, reference))
