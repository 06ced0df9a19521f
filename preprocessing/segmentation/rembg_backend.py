"""rembg backend: a local U²-Net / IS-Net ONNX person matte (never downloads).

Model files live in `<home>/u2net/<model_name>.onnx` (home = $R3P_HOME, default ~/.r3p), e.g.
`u2net_human_seg.onnx` from the rembg GitHub releases (danielgatis/rembg). rembg is pointed at
that folder (U2NET_HOME) with checksums off, and the file is checked before a session is made, so
rembg's own downloader is never reached. The session's `predict` gives the matte (min–max
normalised by rembg), returned as float32 in [0, 1] at frame size; landmarks are not used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Segmentation, SegmentationError, check_inputs, r3p_home, register_backend

MODELS = ("u2net_human_seg", "u2net", "isnet-general-use", "u2net_custom")
RELEASES = "https://github.com/danielgatis/rembg/releases"


def model_dir(home: str | os.PathLike | None = None) -> Path:
    """The folder of rembg models: `home` itself if it is a `u2net` folder, else `<home>/u2net`."""
    root = r3p_home(home)
    return root if root.name == "u2net" else root / "u2net"


class RembgSegmenter:
    """Person matte from a rembg session on a local model file."""

    name = "rembg"

    def __init__(self, model_name: str = "u2net_human_seg", model_path: str | os.PathLike | None = None,
                 home: str | os.PathLike | None = None, threads: int | None = None) -> None:
        if model_name not in MODELS:
            raise ValueError(f"unknown rembg model {model_name!r}; choose one of {list(MODELS)}")
        if model_name == "u2net_custom":
            if model_path is None:
                raise ValueError("rembg model 'u2net_custom' needs model_path= (an ONNX file)")
            path = Path(model_path).expanduser().resolve()
            folder = path.parent
        else:
            folder = Path(model_path).expanduser().resolve().parent if model_path else model_dir(home)
            path = folder / f"{model_name}.onnx"
            if model_path is not None and Path(model_path).name != path.name:
                raise ValueError(f"rembg model {model_name!r} must be a file named {path.name}, got {model_path}")
        if not path.is_file():
            raise SegmentationError(
                f"rembg model file not found: {path}. Download {path.name} from {RELEASES} (the rembg GitHub "
                f"releases) and save it there, or set R3P_HOME / segmentation.model_path; nothing is downloaded "
                f"at run time.", "model_missing")
        os.environ["U2NET_HOME"] = str(folder)
        os.environ["MODEL_CHECKSUM_DISABLED"] = "1"
        try:
            import onnxruntime as ort
            from rembg.session_factory import new_session
        except ImportError as e:  # pragma: no cover - rembg is a core dependency
            raise SegmentationError(f"rembg is not installed ({e}); pip install rembg", "library_missing") from e
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = opts.inter_op_num_threads = int(threads)
        kwargs = {"model_path": str(path)} if model_name == "u2net_custom" else {}
        try:
            self.session = new_session(model_name, sess_opts=opts, providers=["CPUExecutionProvider"], **kwargs)
        except Exception as e:
            raise SegmentationError(f"rembg could not load {path}: {type(e).__name__}: {e}", "model_unreadable") from e
        self.model_name, self.model_path = model_name, path

    def reset(self) -> None:
        """Nothing is propagated between frames."""

    def segment(self, frames: np.ndarray, landmarks: np.ndarray,
                face_masks: np.ndarray | None = None) -> Segmentation:
        """Person matte (n, H, W) float32 in [0, 1] for frames (n, H, W, 3) uint8."""
        from PIL import Image

        frames, landmarks, face_masks = check_inputs(frames, landmarks, face_masks)
        out = np.zeros(frames.shape[:3], np.float32)
        for i, frame in enumerate(frames):
            mask = self.session.predict(Image.fromarray(frame))[0]
            out[i] = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        return Segmentation(person=out, classes=None)


register_backend("rembg", RembgSegmenter)
