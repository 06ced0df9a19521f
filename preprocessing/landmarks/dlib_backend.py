"""dlib backend: HOG or CNN (MMOD) face detector + the 68-point iBUG shape predictor.

Model files come from the `models/` folder of the pip package face_recognition_models (found
without importing it) or from an explicit `models_dir`. Nothing is downloaded.

Pixel convention: dlib reports integer pixel indices (a landmark at index (x, y) means the centre
of that pixel) and inclusive rectangles. We return continuous coordinates with pixel centres at
+0.5: landmarks + 0.5, box = (left, top, right + 1, bottom + 1).

Scores: HOG gives the SVM margin (not a probability; real frontal faces are usually > 0.5),
CNN gives the MMOD confidence. Both are thresholded by `min_score`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .base import Face, LandmarkModelError, check_image, dlib_models_dir, register_backend

SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"

_cache: dict[tuple[str, str], object] = {}
_cache_lock = threading.Lock()


def _model_file(models_dir: Path | None, filename: str) -> Path:
    """The path of a dlib model file, or a LandmarkModelError saying how to get it."""
    folder = Path(models_dir).expanduser() if models_dir is not None else dlib_models_dir()
    if folder is None:
        raise LandmarkModelError(
            f"dlib model file {filename} not found: the package face_recognition_models is not "
            "installed. Install it (pip install face_recognition_models) or pass models_dir= a folder "
            f"holding {filename}")
    path = folder / filename
    if not path.is_file():
        raise LandmarkModelError(
            f"dlib model file {filename} not found at {path}. Reinstall face_recognition_models "
            f"(pip install --force-reinstall face_recognition_models) or pass models_dir= a folder "
            f"holding {filename}; `r3p assets` lists what is found")
    return path


def _load(kind: str, path: Path):
    """Load (once per process) a dlib model: kind 'shape' or 'cnn'."""
    import dlib

    key = (kind, str(path))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = (dlib.shape_predictor(str(path)) if kind == "shape"
                           else dlib.cnn_face_detection_model_v1(str(path)))
        return _cache[key]


class DlibDetector:
    """dlib HOG/CNN detector + 68-point landmarks; `detect(rgb uint8) -> list[Face]`."""

    name = "dlib"

    def __init__(self, detector: str = "hog", upsample: int = 1, min_score: float = 0.3,
                 models_dir: str | Path | None = None, detect_max_side: int | None = None):
        """`detect_max_side`: run the detector on a copy downscaled to at most this many pixels on
        its longer side (boxes are scaled back; landmarks are predicted on the full image)."""
        import dlib

        if detector not in ("hog", "cnn"):
            raise ValueError(f"dlib detector must be 'hog' or 'cnn', got {detector!r}")
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        if detect_max_side is not None and detect_max_side < 64:
            raise ValueError(f"detect_max_side must be >= 64 pixels, got {detect_max_side}")
        self.detect_max_side = detect_max_side
        self.detector_kind = detector
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self._predictor = _load("shape", _model_file(models_dir, SHAPE_PREDICTOR_68))
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = _load("cnn", _model_file(models_dir, CNN_DETECTOR))

    def _rects(self, image: np.ndarray) -> list[tuple[object, float]]:
        side = max(image.shape[:2])
        if self.detect_max_side is not None and side > self.detect_max_side:
            import cv2
            import dlib

            s = self.detect_max_side / side
            small = cv2.resize(image, (round(image.shape[1] * s), round(image.shape[0] * s)),
                               interpolation=cv2.INTER_AREA)
            return [(dlib.rectangle(round(r.left() / s), round(r.top() / s), round((r.right() + 1) / s) - 1,
                                    round((r.bottom() + 1) / s) - 1), score)
                    for r, score in self._detect_rects(small)]
        return self._detect_rects(image)

    def _detect_rects(self, image: np.ndarray, upsample: int | None = None) -> list[tuple[object, float]]:
        up = self.upsample if upsample is None else upsample
        if self.detector_kind == "hog":
            rects, scores, _ = self._detector.run(image, up, self.min_score)
            return list(zip(rects, scores))
        return [(d.rect, d.confidence) for d in self._detector(image, up) if d.confidence >= self.min_score]

    def _faces(self, image: np.ndarray, found) -> list[Face]:
        """Landmarks on `image` in each (dlib rectangle, score), best score first, in the +0.5 convention."""
        faces = []
        for rect, score in found:
            shape = self._predictor(image, rect)
            pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64) + 0.5
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)
            faces.append(Face(box=box, score=float(score), landmarks=pts))
        faces.sort(key=lambda f: -f.score)
        return faces

    def detect_near(self, image: np.ndarray, box, margin: float = 0.35, face_px: int = 90) -> list[Face]:
        """Faces found by the detector in a window around `box` (x0, y0, x1, y1; a face's box in the previous
        frame): the box grown by `margin` of its size on every side, scaled so the face is about `face_px`
        pixels (the HOG window is 80), without upsampling; landmarks on the full image. For the frames between
        key frames (`KeyframeDetector`): a fraction of a full detection's cost."""
        import cv2
        import dlib

        image = check_image(image)
        h, w = image.shape[:2]
        x0, y0, x1, y1 = (float(v) for v in box)
        side = max(x1 - x0, y1 - y0, 1.0)
        wx0, wy0 = max(int(x0 - margin * side), 0), max(int(y0 - margin * side), 0)
        wx1, wy1 = min(int(np.ceil(x1 + margin * side)), w), min(int(np.ceil(y1 + margin * side)), h)
        if wx1 - wx0 < 16 or wy1 - wy0 < 16:
            return []
        s = min(face_px / side, 1.0)
        window = image[wy0:wy1, wx0:wx1]
        if s < 1.0:
            window = cv2.resize(window, (max(round((wx1 - wx0) * s), 1), max(round((wy1 - wy0) * s), 1)),
                                interpolation=cv2.INTER_AREA)
        found = [(dlib.rectangle(round(r.left() / s) + wx0, round(r.top() / s) + wy0,
                                 round((r.right() + 1) / s) - 1 + wx0, round((r.bottom() + 1) / s) - 1 + wy0), score)
                 for r, score in self._detect_rects(np.ascontiguousarray(window), upsample=0)]
        return self._faces(image, found)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, best score first; landmarks in the +0.5 centre convention."""
        image = check_image(image)
        return self._faces(image, self._rects(image))


register_backend("dlib", DlibDetector)
