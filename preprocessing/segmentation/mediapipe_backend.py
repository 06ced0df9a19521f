"""MediaPipe backend (optional extra): the reference's six-class selfie segmenter.

Runs the Tasks `ImageSegmenter` on a user-provided `selfie_multiclass_256x256.tflite` (default
`<home>/mediapipe/selfie_multiclass_256x256.tflite`, home = $R3P_HOME). Classes: 0 background,
1 hair, 2 body skin, 3 face skin, 4 clothes, 5 others; person = 1 − P(background) (the soft
complement of class 0). mediapipe is imported lazily; it needs numpy < 2
(`pip install 'r3p[mediapipe]'`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Segmentation, SegmentationError, check_inputs, r3p_home, register_backend

MODEL_FILE = "selfie_multiclass_256x256.tflite"
MODEL_URL = ("https://storage.googleapis.com/mediapipe-models/image_segmenter/selfie_multiclass_256x256/"
             "float32/latest/selfie_multiclass_256x256.tflite")


def default_model_path(home: str | os.PathLike | None = None) -> Path:
    """Where the segmenter model is looked for by default."""
    return r3p_home(home) / "mediapipe" / MODEL_FILE


class MediapipeSegmenter:
    """Six-class segmentation with MediaPipe Tasks' ImageSegmenter."""

    name = "mediapipe"

    def __init__(self, model_path: str | os.PathLike | None = None, home: str | os.PathLike | None = None) -> None:
        path = Path(model_path).expanduser() if model_path else default_model_path(home)
        where = (f"the model file {MODEL_FILE} goes at {path} (download it from {MODEL_URL} and save it there, "
                 f"or pass model_path=)")
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as e:
            raise SegmentationError(
                f"the mediapipe segmentation backend needs the optional extra: pip install 'r3p[mediapipe]' "
                f"(mediapipe needs numpy<2); {where}. ({type(e).__name__}: {e})", "library_missing") from e
        if not path.is_file():
            raise SegmentationError(f"MediaPipe segmenter model not found: {path}; {where}", "model_missing")
        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(path)), running_mode=vision.RunningMode.IMAGE,
            output_category_mask=True, output_confidence_masks=True)
        try:
            self._segmenter = vision.ImageSegmenter.create_from_options(options)
        except Exception as e:
            raise SegmentationError(f"MediaPipe could not load {path}: {type(e).__name__}: {e}",
                                    "model_unreadable") from e
        self._mp = mp
        self.model_path = path

    def reset(self) -> None:
        """Nothing is propagated between frames."""

    def segment(self, frames: np.ndarray, landmarks: np.ndarray,
                face_masks: np.ndarray | None = None) -> Segmentation:
        """Classes (n, H, W) uint8 and person = 1 − P(background) for frames (n, H, W, 3) uint8."""
        frames, landmarks, face_masks = check_inputs(frames, landmarks, face_masks)
        n, h, w = frames.shape[:3]
        person = np.zeros((n, h, w), np.float32)
        classes = np.zeros((n, h, w), np.uint8)
        mp = self._mp
        for i, frame in enumerate(frames):
            res = self._segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=frame))
            classes[i] = np.asarray(res.category_mask.numpy_view()).reshape(h, w)
            if res.confidence_masks:
                bg = np.asarray(res.confidence_masks[0].numpy_view(), dtype=np.float32).reshape(h, w)
                person[i] = np.clip(1.0 - bg, 0.0, 1.0)
            else:
                person[i] = (classes[i] != 0).astype(np.float32)
        return Segmentation(person=person, classes=classes)


register_backend("mediapipe", MediapipeSegmenter)
