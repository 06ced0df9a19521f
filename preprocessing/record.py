"""`ClipRecord`: everything the training stages read about one clip, as arrays and encoded images.

`preprocessing.process.process_clip` fills it; `pipeline.schema` maps it to the `clips/` and
`frames/` Parquet tables. Per-frame fields have T = `n_frames` rows; audio fields have 2·T rows
(50 Hz). Images are encoded bytes (JPEG for photographs, PNG for masks and coordinate codes), so a
record holds no raw frame arrays. Coordinates are in the aligned crop (`crop_size`² pixels) unless
noted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

#: Values of the per-frame segmentation label map (`seg_png`).
SEG_BACKGROUND, SEG_HEAD, SEG_TORSO = 0, 1, 2


@dataclass
class ClipRecord:
    # --- source and geometry of the crop
    source: str  # path of the video file
    start_s: float  # window start in the source, seconds
    fps: float  # output frame rate (25)
    n_frames: int  # T
    width: int  # source video width, pixels
    height: int  # source video height, pixels
    crop_box: np.ndarray  # (4,) float64 x0, y0, x1, y1 of the square crop in source pixels
    crop_size: int  # aligned crop side, pixels (frames, masks, composite, plate)
    render_size: int  # SECC / PNCC side, pixels
    synthetic_face_model: bool  # fitted with the synthetic morphable model, not a real BFM
    face_fraction: float  # fraction of frames where the face was detected
    # --- per clip
    id_coeff: np.ndarray  # (80,) float32 identity coefficients
    background_jpeg: bytes  # background plate, crop_size² RGB
    background_inpainted_fraction: float  # share of the plate the person always covered (inpainted)
    # --- per frame (T rows)
    timestamps: np.ndarray  # (T,) float64 seconds in the source
    valid: np.ndarray  # (T,) bool: face detected or interpolated over a short gap
    landmarks: np.ndarray  # (T, 68, 2) float32 tracked landmarks, crop px; NaN where not valid
    exp: np.ndarray  # (T, 64) float32
    euler: np.ndarray  # (T, 3) float32 pitch, yaw, roll (radians)
    trans: np.ndarray  # (T, 3) float32
    eg3d_cam: np.ndarray  # (T, 25) float32: 16 cam2world + 9 normalised intrinsics
    fit_rmse_px: np.ndarray  # (T,) float32 landmark fit error, crop px (NaN where not valid)
    mouth_box: np.ndarray  # (T, 4) float32 x0, y0, x1, y1 around the lips, crop px
    eye_aspect_ratio: np.ndarray  # (T,) float32 blink signal
    mouth_opening: np.ndarray  # (T,) float32 inner-lip gap / mouth width
    frame_jpeg: list[bytes]  # aligned crop frames
    secc_png: list[bytes]  # canonical-pose SECC (identity + expression), render_size², RGB
    pncc_png: list[bytes]  # posed PNCC over the crop, render_size², RGB (visualisation)
    person_png: list[bytes]  # person alpha, crop_size², 8-bit grey
    seg_png: list[bytes]  # labels SEG_BACKGROUND / SEG_HEAD / SEG_TORSO, crop_size², 8-bit
    torso_jpeg: list[bytes]  # inpainted torso (torso with the region the head hides filled), black elsewhere
    composite_jpeg: list[bytes]  # person over the background plate (what HTB-SR trains on)
    # --- audio at 50 Hz (2T rows); None when the clip has no audio track
    mel: np.ndarray | None  # (2T, 80) float32 log-mel
    f0: np.ndarray | None  # (2T,) float32 Hz, 0 where unvoiced
    voiced: np.ndarray | None  # (2T,) bool
    rms: np.ndarray | None  # (2T,) float32
    hubert: np.ndarray | None  # (2T, 1024) float32, None unless a HuBERT model is configured
    # --- bookkeeping
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    PER_FRAME = ("timestamps", "valid", "landmarks", "exp", "euler", "trans", "eg3d_cam", "fit_rmse_px",
                 "mouth_box", "eye_aspect_ratio", "mouth_opening", "frame_jpeg", "secc_png", "pncc_png",
                 "person_png", "seg_png", "torso_jpeg", "composite_jpeg")
    PER_AUDIO_ROW = ("mel", "f0", "voiced", "rms", "hubert")

    def check(self) -> ClipRecord:
        """Raise ValueError if any per-frame or audio field has the wrong number of rows."""
        t = self.n_frames
        for name in self.PER_FRAME:
            if len(getattr(self, name)) != t:
                raise ValueError(f"ClipRecord.{name} has {len(getattr(self, name))} rows, expected {t}")
        for name in self.PER_AUDIO_ROW:
            v = getattr(self, name)
            if v is not None and len(v) != 2 * t:
                raise ValueError(f"ClipRecord.{name} has {len(v)} rows, expected {2 * t} (2 per frame)")
        return self

    def encoded_bytes(self) -> int:
        """Total size of the encoded images, bytes."""
        n = len(self.background_jpeg)
        for name in ("frame_jpeg", "secc_png", "pncc_png", "person_png", "seg_png", "torso_jpeg", "composite_jpeg"):
            n += sum(len(b) for b in getattr(self, name))
        return n

    def field_names(self) -> list[str]:
        return [f.name for f in fields(self)]
