"""insightface backend: SCRFD detection (det_10g) + 68 landmarks from the 3D-68 model (1k3d68).

Uses the real `insightface.app.FaceAnalysis` loading and decoding code on the buffalo_l folder
($R3P_HOME/insightface/models/buffalo_l, or an explicit `model_dir`). The folder is handed to
FaceAnalysis as a path, so insightface's own download path is never taken; a missing folder or
file raises LandmarkModelError naming the path.

Landmarks: the x, y columns of `face.landmark_3d_68` (iBUG 68 order). The 106-point model
(2d106det) is not used: its point layout is only published as a picture, and a 106→68 table we
cannot verify would silently corrupt the mouth/eye points downstream.

Pixel convention: insightface works in OpenCV pixel-index coordinates (warpAffine, integer
centres), so box and landmarks get + 0.5. The image is given to insightface as BGR (its
convention); `detect` takes RGB like every backend here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Face, LandmarkModelError, check_image, register_backend

DETECTION_FILE = "det_10g.onnx"
LANDMARK_FILE = "1k3d68.onnx"
BUFFALO_RELPATH = Path("insightface") / "models" / "buffalo_l"


def default_model_dir(home: str | Path | None = None) -> Path:
    """<home>/insightface/models/buffalo_l; home defaults to $R3P_HOME, else ~/.r3p."""
    if home is None:
        home = os.environ.get("R3P_HOME", "~/.r3p")
    return Path(home).expanduser() / BUFFALO_RELPATH


class InsightFaceDetector:
    """SCRFD + 1k3d68 through insightface.FaceAnalysis on CPU; `detect(rgb uint8) -> list[Face]`."""

    name = "insightface"

    def __init__(self, home: str | Path | None = None, model_dir: str | Path | None = None,
                 det_size: tuple[int, int] = (640, 640), det_thresh: float = 0.5,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        folder = Path(model_dir).expanduser() if model_dir is not None else default_model_dir(home)
        missing = [f for f in (DETECTION_FILE, LANDMARK_FILE) if not (folder / f).is_file()]
        if missing:
            raise LandmarkModelError(
                f"insightface buffalo_l models missing at {folder}: {', '.join(missing)}. Unzip "
                "buffalo_l.zip from the insightface model zoo there (or pass model_dir=); "
                "`r3p assets` shows what is found and how to obtain it")
        from insightface.app import FaceAnalysis

        self.model_dir = folder
        self._app = FaceAnalysis(name=str(folder), providers=list(providers),
                                 allowed_modules=["detection", "landmark_3d_68"])
        if "landmark_3d_68" not in self._app.models:
            raise LandmarkModelError(
                f"{folder / LANDMARK_FILE} was not recognised by insightface as a 3D-68 landmark model "
                "(expected input 1x3x192x192 and output 1x3309); replace it with buffalo_l's 1k3d68.onnx")
        self._app.prepare(ctx_id=0, det_thresh=float(det_thresh), det_size=tuple(det_size))

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, best score first; coordinates in the +0.5 centre convention."""
        image = check_image(image)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        faces = []
        for f in self._app.get(bgr):
            lm = np.asarray(f.landmark_3d_68, dtype=np.float64)[:, :2] + 0.5
            box = np.asarray(f.bbox, dtype=np.float64)[:4] + 0.5
            faces.append(Face(box=box, score=float(f.det_score), landmarks=lm))
        faces.sort(key=lambda f: -f.score)
        return faces


register_backend("insightface", InsightFaceDetector)
