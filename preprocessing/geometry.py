"""Per-clip geometry: decode → detect landmarks → track the main face → fit the 3DMM.

Faces are detected on the whole frame on key frames (every `detect_every` frames) and near their
previous box between them (`KeyframeDetector`).

`track_and_fit(path, model, params)` runs on any video file and returns a `ClipGeometry`:
the tracked 68 landmarks (video pixels), the per-clip square crop box, the landmarks in the
aligned crop, and the fitted coefficients and EG3D cameras in the reference camera of the crop
(`crop_size`², focal 1015 · crop_size / 224). Frames are decoded in bounded chunks; only
landmarks are kept, so memory does not grow with the clip length.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from preprocessing.face3d import Face3D
from preprocessing.face_model import FaceModel
from preprocessing.fitting import FitConfig, FitResult, fit_clip
from preprocessing.landmarks import make_detector
from preprocessing.landmarks.keyframes import KeyframeDetector
from preprocessing.landmarks.tracking import FaceTrack, TrackingParams, crop_frames, track_faces
from preprocessing.video import Clip, VideoLimits, load_clip


@dataclass(frozen=True)
class GeometryParams:
    """Everything `track_and_fit` needs; the config layer builds it from validated settings."""

    limits: VideoLimits = field(default_factory=VideoLimits)
    detector: str = "dlib"
    detector_params: tuple[tuple[str, object], ...] = ()  # e.g. (("upsample", 0),)
    detect_every: int = 1  # whole-frame detection every this many frames, near the previous box between
    tracking: TrackingParams = field(default_factory=TrackingParams)
    fitting: FitConfig = field(default_factory=FitConfig)
    crop_size: int = 512
    chunk: int = 32


@dataclass
class ClipGeometry:
    """Tracked and fitted geometry of one clip."""

    clip: Clip
    track: FaceTrack
    fit: FitResult
    crop_size: int
    timings: dict[str, float]

    @property
    def n_frames(self) -> int:
        return self.clip.n_frames

    def aligned_chunks(self, chunk: int = 32) -> Iterator[tuple[int, np.ndarray]]:
        """(start index, aligned crop frames (n, crop, crop, 3) uint8), decoded chunk by chunk."""
        for c in self.clip.chunks(chunk):
            yield c.start_index, crop_frames(c.frames, self.track.crop, self.crop_size)

    def summary(self) -> dict[str, float]:
        """Headline numbers: frames, face fraction, fit RMSE (crop px), seconds per stage."""
        rmse = self.fit.rmse_px[np.isfinite(self.fit.rmse_px)]
        return {"frames": self.n_frames, "face_fraction": round(self.track.face_fraction, 4),
                "valid_frames": int(self.track.valid.sum()),
                "fit_rmse_px": round(float(np.sqrt(np.mean(rmse ** 2))) if rmse.size else float("nan"), 3),
                **{f"seconds_{k}": round(v, 3) for k, v in self.timings.items()}}


def track_and_fit(path, model: FaceModel | Face3D, params: GeometryParams | None = None, *,
                  detector=None, start_s: float = 0.0, end_s: float | None = None) -> ClipGeometry:
    """Geometry of the video at `path` (or its window `start_s`..`end_s` seconds); raises
    VideoError / TrackingError / ValueError with the file named. Pass a `detector` from
    `make_detector` to reuse loaded models across clips."""
    p = params or GeometryParams()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    clip = load_clip(path, p.limits, start_s=start_s, end_s=end_s)
    if detector is None:
        detector = make_detector(p.detector, **dict(p.detector_params))
    timings["decode_probe"] = time.perf_counter() - t0
    detections, t_decode, t_detect = [], 0.0, 0.0
    keyed = KeyframeDetector(detector, p.detect_every)
    t = time.perf_counter()
    for chunk in clip.chunks(p.chunk):
        t_decode += time.perf_counter() - t
        t = time.perf_counter()
        detections.extend(keyed.detect(frame) for frame in chunk.frames)
        t_detect += time.perf_counter() - t
        t = time.perf_counter()
    timings["decode"], timings["detect"] = t_decode, t_detect
    t = time.perf_counter()
    width, height = clip.info.width, clip.info.height
    track = track_faces(detections, p.tracking, image_size=(width, height), crop_size=p.crop_size,
                        clip=str(clip.info.path))
    timings["track"] = time.perf_counter() - t
    t = time.perf_counter()
    fit = fit_clip(track.crop_landmarks, track.valid, model, image_size=p.crop_size, config=p.fitting)
    timings["fit"] = time.perf_counter() - t
    return ClipGeometry(clip=clip, track=track, fit=fit, crop_size=p.crop_size, timings=timings)
