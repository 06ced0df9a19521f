"""Detect faces on the whole frame on key frames only, and near the known faces between them.

The face detector on the whole frame (dlib HOG on a 320-px copy, upsampled once) was ~25 % of
`process_clip`. `KeyframeDetector` runs it every `every` frames; on the frames between, each face
of the previous frame is looked for by the same detector in a window around its previous box,
scaled so the face is about 90 px (`detect_near`): a small fraction of the pixels. The landmarks
then come from the landmark model in the detector's own box, as on a key frame.

A face not found again near its box (a cut, an occlusion, a face leaving, a jump), or a frame with
no face carried, sends the frame to the full detector at once. A face that enters between key
frames is found at the next key frame. Backends without `detect_near` are detected on every frame.
"""

from __future__ import annotations

import numpy as np

from .base import Face
from .tracking import box_iou


class KeyframeDetector:
    """`detect(frame)` per frame of ONE clip, in order (call `reset()` before the next clip)."""

    def __init__(self, detector, every: int = 5, min_iou: float = 0.3) -> None:
        if every < 1:
            raise ValueError(f"detect_every must be >= 1 (1 = detect on every frame), got {every}")
        self.detector = detector
        self.every = int(every) if hasattr(detector, "detect_near") else 1
        self.min_iou = float(min_iou)
        self.reset()

    @property
    def name(self) -> str:
        return self.detector.name

    def reset(self) -> None:
        self._faces: list[Face] = []
        self._since_key = 0
        self.key_frames = 0
        self.carried_frames = 0

    def _near(self, frame: np.ndarray) -> list[Face] | None:
        """Every previous face found again near its box (the best-overlapping detection), else None."""
        found = []
        for prev in self._faces:
            cands = self.detector.detect_near(frame, prev.box)
            if not cands:
                return None
            overlap = box_iou([f.box for f in cands], prev.box)[:, 0]
            best = int(np.argmax(overlap))
            if overlap[best] < self.min_iou:
                return None
            found.append(cands[best])
        return found

    def detect(self, frame: np.ndarray) -> list[Face]:
        faces = self._near(frame) if self._faces and self._since_key < self.every else None
        if faces is None:
            faces = self.detector.detect(frame)
            self._since_key = 1
            self.key_frames += 1
        else:
            self._since_key += 1
            self.carried_frames += 1
        self._faces = faces
        return faces
