"""Default segmenter without weights: GrabCut colour models seeded by the face geometry.

Per frame, at a reduced working size (long side `work_size` px), a GrabCut label map is seeded
from the landmarks (and the rendered face silhouette when given):

- sure foreground: the landmark hull and the face silhouette (eroded), a neck strip below the
  chin and a wider chest patch below it (so clothes that share the background's colours keep a
  foreground colour model);
- probable foreground: a head ellipse (hair; reaching 1.0 jaw widths above the eye line, so a
  background band just above the hair does not seed the foreground colours — GrabCut still grows
  into hair beyond it) and a body region below the chin that widens into shoulders, all sized by
  the jaw width and rotated with the head's roll;
- sure background: everything outside a generous head envelope above shoulder height (the top
  corners and the sides beside the head), and thin side/bottom border strips more than two face
  widths beside the body (wide framings);
- probable background: the rest;
- sure background, whatever the above: everything outside `person_region` (the hair allowance
  around the face and the neck/shoulder band, see `parts.BodyBounds`; `bounds=None` turns it off).

The first frame of a clip runs `iterations` rounds initialised from the seed; later frames reuse
the previous frame's colour models (GrabCut's bgdModel/fgdModel) and its mask, shifted with the
head, as the probable labels, and run `propagate_iterations` rounds. The hard low-resolution
result is opened (5-px line openings, dropping thin threads), upsampled and snapped to the image edges with
a guided filter, giving a soft matte. With bounds, only foreground connected to the sure-foreground
seed is kept. GrabCut's k-means start is seeded (`seed`) for repeatability.
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import Segmentation, check_inputs, register_backend
from .parts import DEFAULT_BOUNDS, BodyBounds, HeadFrame, connected_to, head_frame, person_region


def box(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)² window (edges replicated)."""
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REPLICATE)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey guide (H, W) float32 in [0, 1] on src (H, W) float32."""
    mean_i = box(guide, radius)
    mean_p = box(src, radius)
    cov_ip = box(guide * src, radius) - mean_i * mean_p
    var_i = box(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a, radius) * guide + box(b, radius)


def seed_labels(hf: HeadFrame, h: int, w: int, scale: float, face_mask: np.ndarray | None = None,
                bounds: BodyBounds | None = DEFAULT_BOUNDS) -> np.ndarray:
    """GrabCut labels (h, w) uint8 (GC_BGD/FGD/PR_BGD/PR_FGD) from the head geometry at `scale`;
    outside `person_region(bounds)` (hair allowance, shoulder band) is sure background."""
    a, b = hf.coords(h, w, scale)
    c = hf.chin / hf.face_w
    labels = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    # probable foreground: head ellipse (face + hair) and a body widening into shoulders below the chin
    head = (a / 0.72) ** 2 + ((b + 0.1) / np.where(b < -0.1, 0.9, 1.0)) ** 2 <= 1.0
    d = b - c
    half = np.where(d < 0.5, 0.3 + d * (0.7 / 0.5), 1.0 + 0.25 * (d - 0.5))
    body = (d > -0.1) & (np.abs(a) < half)
    labels[head | body] = cv2.GC_PR_FGD
    # sure background: outside a generous head envelope, above shoulder height
    envelope = (a / 1.1) ** 2 + ((b + 0.1) / 1.45) ** 2 <= 1.0
    sure_bg = ~envelope & (d < 0.2)
    if not sure_bg.any():  # a close-up: keep at least the top corners outside the head ellipse
        corner = np.zeros((h, w), bool)
        k = max(2, min(h, w) // 10)
        corner[:k, :k] = corner[:k, -k:] = True
        sure_bg = corner & ~head
    labels[sure_bg] = cv2.GC_BGD
    # wide framings: thin side/bottom border strips far beside the body (> 2 face widths) are background
    k = max(1, min(h, w) // 80)
    border = np.zeros((h, w), bool)
    border[:, :k] = border[:, -k:] = border[-k:] = True
    labels[border & (d > 0.2) & (np.abs(a) > np.maximum(1.25 * half, 2.0))] = cv2.GC_BGD
    # the top border band above the head ellipse is background: in a face crop the head's top sits
    # well inside the frame, and without this a background band above the hair that shares its
    # colours with the person stays "probable foreground"
    top = np.zeros((h, w), bool)
    top[:max(2, h // 40)] = True
    labels[top & (b < -1.0)] = cv2.GC_BGD
    # nothing of the person lies outside what the face geometry supports (hair allowance, shoulders)
    if bounds is not None:
        labels[~person_region(hf, h, w, scale=scale, bounds=bounds)] = cv2.GC_BGD
    # sure foreground: landmark hull, face silhouette, neck strip
    fg = np.zeros((h, w), np.uint8)
    hull = cv2.convexHull(np.round(hf.landmarks * scale - 0.5).astype(np.int32))
    cv2.fillConvexPoly(fg, hull, 1)
    if face_mask is not None and face_mask.any():
        fm = cv2.resize(face_mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.9
        fg |= fm.astype(np.uint8)
    fg = cv2.erode(fg, np.ones((3, 3), np.uint8))
    neck = (np.abs(a) < np.where(d < 0.6, 0.14, 0.5)) & (d > 0.03) & (d < 1.1)  # neck, then the chest
    labels[(fg > 0) | neck] = cv2.GC_FGD
    return labels


class ColourSegmenter:
    """GrabCut person matte seeded by the face geometry, propagated through the clip."""

    name = "colour"

    def __init__(self, work_size: int = 160, iterations: int = 10, propagate_iterations: int = 1,
                 reinit_every: int = 0, guided_radius: float = 1.5, guided_eps: float = 1e-3,
                 seed: int = 0, bounds: BodyBounds | None = DEFAULT_BOUNDS) -> None:
        if work_size < 32:
            raise ValueError(f"work_size must be >= 32, got {work_size}")
        if iterations < 1 or propagate_iterations < 1:
            raise ValueError("iterations and propagate_iterations must be >= 1")
        self.work_size = int(work_size)
        self.iterations = int(iterations)
        self.propagate_iterations = int(propagate_iterations)
        self.reinit_every = int(reinit_every)
        self.guided_radius = float(guided_radius)
        self.guided_eps = float(guided_eps)
        self.seed = int(seed)
        self.bounds = bounds
        self.reset()

    def reset(self) -> None:
        """Start a new clip: forget the colour models and the previous mask."""
        self._models: tuple[np.ndarray, np.ndarray] | None = None
        self._prev: np.ndarray | None = None  # previous low-res foreground (bool)
        self._prev_hf: HeadFrame | None = None
        self._since_init = 0

    def segment(self, frames: np.ndarray, landmarks: np.ndarray,
                face_masks: np.ndarray | None = None) -> Segmentation:
        """Person matte (n, H, W) float32 for frames (n, H, W, 3) uint8 and landmarks (n, 68, 2)."""
        frames, landmarks, face_masks = check_inputs(frames, landmarks, face_masks)
        n, h, w = frames.shape[:3]
        frames_hf = [head_frame(lm) for lm in landmarks]
        out = np.zeros((n, h, w), np.float32)
        for i in range(n):
            hf = frames_hf[i] or self._prev_hf or next((f for f in frames_hf[i + 1:] if f is not None), None)
            if hf is None:
                continue  # no face anywhere yet: nothing to seed from, the matte stays empty
            out[i] = self._segment_frame(frames[i], hf, None if face_masks is None else face_masks[i])
        return Segmentation(person=out, classes=None)

    def _segment_frame(self, frame: np.ndarray, hf: HeadFrame, face_mask: np.ndarray | None) -> np.ndarray:
        h, w = frame.shape[:2]
        scale = min(1.0, self.work_size / max(h, w))
        hs, ws = max(int(round(h * scale)), 8), max(int(round(w * scale)), 8)
        sx, sy = ws / w, hs / h
        small = cv2.resize(frame, (ws, hs), interpolation=cv2.INTER_AREA) if scale < 1 else frame
        small_bgr = np.ascontiguousarray(small[..., ::-1])
        labels = seed_labels(hf, hs, ws, min(sx, sy), face_mask, self.bounds)
        fresh = self._models is None or (self.reinit_every and self._since_init >= self.reinit_every)
        if not fresh and self._prev is not None and self._prev.shape == (hs, ws):
            shift = (hf.origin - self._prev_hf.origin) * (sx, sy) if self._prev_hf is not None else np.zeros(2)
            m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
            prev = cv2.warpAffine(self._prev.astype(np.uint8), m, (ws, hs), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_REPLICATE) > 0
            pr = (labels == cv2.GC_PR_BGD) | (labels == cv2.GC_PR_FGD)
            labels[pr] = np.where(prev[pr], cv2.GC_PR_FGD, cv2.GC_PR_BGD)
        else:
            fresh = True
        if fresh:
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.setRNGSeed(self.seed)  # GrabCut's k-means initialisation draws from OpenCV's global RNG
            mode, iters = cv2.GC_INIT_WITH_MASK, self.iterations
            self._since_init = 0
        else:
            bgd, fgd = self._models
            mode, iters = cv2.GC_EVAL, self.propagate_iterations
        has_fg = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).any()
        has_bg = ((labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)).any()
        if has_fg and has_bg:
            cv2.grabCut(small_bgr, labels, None, bgd, fgd, iters, mode)
            self._models = (bgd, fgd)
        fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        # drop threads under 5 px (a shelf edge or cable of a person-like colour touching the head)
        f8 = fg.astype(np.uint8)
        fg = ((cv2.morphologyEx(f8, cv2.MORPH_OPEN, np.ones((5, 1), np.uint8)) > 0)
              & (cv2.morphologyEx(f8, cv2.MORPH_OPEN, np.ones((1, 5), np.uint8)) > 0))
        fg |= labels == cv2.GC_FGD
        if self.bounds is not None:  # only what is connected to the face (the sure-foreground seed)
            fg = connected_to(fg, labels == cv2.GC_FGD)
        self._prev, self._prev_hf = fg, hf
        self._since_init += 1
        return self._upsample(frame, fg, 1.0 / min(sx, sy))

    def _upsample(self, frame: np.ndarray, fg: np.ndarray, factor: float) -> np.ndarray:
        h, w = frame.shape[:2]
        soft = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        radius = int(round(self.guided_radius * factor))
        if radius < 1:
            return np.clip(soft, 0.0, 1.0)
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        alpha = guided_filter(grey, soft, radius, self.guided_eps)
        return np.clip(alpha, 0.0, 1.0).astype(np.float32)


register_backend("colour", ColourSegmenter)
