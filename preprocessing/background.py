"""Background plate of a clip (temporal median of visible background) and person-over-plate composite.

`BackgroundPlate` is fed the clip chunk by chunk and keeps at most `max_samples` frames, evenly
spread over the clip, so memory is bounded whatever the clip length. A pixel is visible in a
sample when the person matte, thresholded at 0.5 and dilated by `dilate` px, does not cover it;
the plate is the per-pixel median over the samples where it is visible, and OpenCV's Telea
inpainting fills the pixels the person covers in every sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class PlateResult:
    """The finished plate."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    visible_fraction: np.ndarray  # (H, W) float32: share of the kept samples where the pixel was background
    inpainted: np.ndarray  # (H, W) bool: never visible, filled by inpainting


def sample_indices(total_frames: int, max_samples: int) -> np.ndarray:
    """At most `max_samples` frame indices evenly spread over [0, total_frames)."""
    if total_frames <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.round(np.linspace(0, total_frames - 1, min(max_samples, total_frames))).astype(np.int64))


class BackgroundPlate:
    """Streams a clip's frames and person mattes; `finish()` gives the background plate."""

    def __init__(self, height: int, width: int, max_samples: int = 32, dilate: int | None = None,
                 inpaint_radius: int = 5) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be >= 1, got {height}×{width}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.height, self.width, self.max_samples = int(height), int(width), int(max_samples)
        self.dilate = max(2, round(0.01 * max(height, width))) if dilate is None else int(dilate)
        self.inpaint_radius = int(inpaint_radius)
        self._frames: dict[int, np.ndarray] = {}
        self._visible: dict[int, np.ndarray] = {}
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.dilate + 1,) * 2) if self.dilate else None

    def add(self, frames: np.ndarray, person: np.ndarray, start_index: int, total_frames: int) -> None:
        """Offer frames (n, H, W, 3) uint8 with mattes (n, H, W) float32, the clip's frames
        start_index … start_index + n − 1 of total_frames; only the evenly spread samples are kept."""
        frames = np.asarray(frames)
        person = np.asarray(person)
        h, w = self.height, self.width
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
            raise ValueError(f"frames must be uint8 of shape (n, {h}, {w}, 3), got {frames.dtype} {frames.shape}")
        if person.shape != frames.shape[:3]:
            raise ValueError(f"person must have shape {frames.shape[:3]} to match frames, got {person.shape}")
        if total_frames < 1 or start_index < 0 or start_index + len(frames) > total_frames:
            raise ValueError(f"start_index {start_index} + {len(frames)} frames exceeds total_frames {total_frames}")
        wanted = sample_indices(total_frames, self.max_samples)
        for idx in wanted[(wanted >= start_index) & (wanted < start_index + len(frames))]:
            i = int(idx) - start_index
            covered = (person[i] >= 0.5).astype(np.uint8)
            if self._kernel is not None:
                covered = cv2.dilate(covered, self._kernel)
            self._frames[int(idx)] = frames[i].copy()
            self._visible[int(idx)] = covered == 0

    def finish(self) -> PlateResult:
        """Median of the visible background per pixel; Telea inpainting where never visible."""
        if not self._frames:
            raise ValueError("BackgroundPlate.finish(): no frames were added")
        keys = sorted(self._frames)
        h, w = self.height, self.width
        vis = np.stack([self._visible[k] for k in keys]).reshape(len(keys), -1)  # (s, H·W)
        vals = np.stack([self._frames[k] for k in keys]).reshape(len(keys), -1, 3)  # (s, H·W, 3)
        count = vis.sum(0)
        med = np.zeros((h * w, 3), np.uint8)
        full = np.flatnonzero(count == len(keys))
        if full.size:
            med[full] = _median(vals[:, full], np.full(full.size, len(keys)))
        part = np.flatnonzero((count > 0) & (count < len(keys)))
        if part.size:
            # invisible samples sort last (value 256); the median is over the first `count` entries
            v = vals[:, part].astype(np.int16)
            v[~vis[:, part]] = 256
            med[part] = _median(v, count[part])
        med = med.reshape(h, w, 3)
        never = (count == 0).reshape(h, w)
        if never.all():
            raise ValueError("BackgroundPlate.finish(): the person covers every pixel in every sample")
        if never.any():
            med = _inpaint(med, never, self.inpaint_radius)
        count = count.reshape(h, w)
        return PlateResult(image=med, visible_fraction=(count / len(keys)).astype(np.float32), inpainted=never)


def _median(v: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Median (rounded half up) of the first `count[j]` of the sorted samples v[:, j] (s, N, 3)."""
    lo, hi = (count - 1) // 2, count // 2
    if len(np.unique(count)) == 1:  # all samples valid: partition is enough
        k = sorted({int(lo[0]), int(hi[0])})
        v = np.partition(v, k, axis=0)
    else:
        v = np.sort(v, axis=0)
    idx = lambda j: np.broadcast_to(j[None, :, None], (1, len(j), 3))  # noqa: E731
    a = np.take_along_axis(v, idx(lo), 0)[0].astype(np.int32)
    b = np.take_along_axis(v, idx(hi), 0)[0].astype(np.int32)
    return ((a + b + 1) // 2).clip(0, 255).astype(np.uint8)


def _inpaint(image: np.ndarray, hole: np.ndarray, radius: int, work: int = 256) -> np.ndarray:
    """Telea inpainting of `hole`; large images are inpainted at `work` px and pasted into the hole."""
    h, w = hole.shape
    scale = min(1.0, work / max(h, w))
    if scale >= 1.0:
        return cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small_hole = cv2.resize(hole.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    small_hole = cv2.dilate(small_hole, np.ones((3, 3), np.uint8))  # no hole-black bleeds in at the rim
    filled = cv2.inpaint(small, small_hole, max(1, int(round(radius * scale))), cv2.INPAINT_TELEA)
    up = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    out = image.copy()
    out[hole] = up[hole]
    return out


def composite(frame: np.ndarray, person_alpha: np.ndarray, plate_image: np.ndarray) -> np.ndarray:
    """The person (alpha in [0, 1]) of `frame` over `plate_image`: alpha·frame + (1 − alpha)·plate, uint8."""
    frame = np.asarray(frame)
    plate_image = np.asarray(plate_image)
    alpha = np.asarray(person_alpha, dtype=np.float32)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be an (H, W, 3) image, got shape {frame.shape}")
    if plate_image.shape != frame.shape:
        raise ValueError(f"plate_image must have the frame's shape {frame.shape}, got {plate_image.shape}")
    if alpha.shape != frame.shape[:2]:
        raise ValueError(f"person_alpha must have shape {frame.shape[:2]}, got {alpha.shape}")
    # plate + alpha·(frame − plate), in place in float32: the same blend with two temporaries instead of six
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    out = frame.astype(np.float32)
    base = plate_image.astype(np.float32)
    out -= base
    out *= a
    out += base
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
