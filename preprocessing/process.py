"""`process_clip`: one video (or a window of it) → a `ClipRecord` with everything training reads.

Stages, each timed into `ClipRecord.timings` (seconds):

1. decode → detect → track → fit (`preprocessing.geometry.track_and_fit`; frames decoded in chunks,
   only landmarks kept);
2. a second pass over the aligned crops, chunk by chunk: posed render of the fitted face (its
   silhouette seeds the segmenter; its PNCC is kept for visualisation), canonical SECC at
   `render_size`, person matte, head/torso split, inpainted torso, background-plate samples, and
   JPEG/PNG encoding — no decoded frames outlive their chunk;
3. the background plate (temporal median where visible, inpainted where always covered);
4. a third pass that composites each frame's person over the plate;
5. audio features at 50 Hz (log-mel, f0/voicing, RMS; HuBERT when a model is loaded) and the
   landmark controls (eye aspect ratio, mouth opening).

`ClipProcessor` loads the models once (detector, face model, segmenter, HuBERT) and processes many
clips — what a Ray actor holds. Failures raise the stage's typed error (VideoError, TrackingError,
SegmentationError, ValueError) whose message names the file and the fix.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from preprocessing.audio import audio_features, eye_aspect_ratio, mouth_opening
from preprocessing.background import BackgroundPlate, composite
from preprocessing.face3d import Face3D
from preprocessing.face_model import FaceModel
from preprocessing.geometry import GeometryParams, track_and_fit
from preprocessing.landmarks import make_detector
from preprocessing.landmarks.tracking import crop_frames
from preprocessing.record import SEG_BACKGROUND, SEG_HEAD, SEG_TORSO, ClipRecord
from preprocessing.render import mouth_box, render_pncc, render_secc, to_uint8
from preprocessing.segmentation import bounded_matte, inpaint_torso, make_segmenter, split_parts


RENDER_BATCH = 8  # frames per rasterisation batch inside a chunk (bounds the float fragment buffers)


@dataclass(frozen=True)
class ProcessParams:
    """Everything `process_clip` needs beyond the models; the config layer builds it."""

    geometry: GeometryParams = field(default_factory=GeometryParams)
    render_size: int = 512  # SECC / PNCC side
    remove_eyes: bool = True
    segmenter: str = "colour"
    segmenter_params: tuple[tuple[str, object], ...] = ()
    plate_samples: int = 32  # frames kept (evenly spread) for the background median
    jpeg_quality: int = 90
    png_level: int = 3  # zlib level for PNG masks/codes (1 fast … 9 small)
    chunk: int = 32  # frames per decode/render/segment chunk
    hubert_dir: str | None = None  # local transformers HuBERT folder; None = no HuBERT features
    hubert_window_s: float = 20.0


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 (H, W, 3) → JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {rgb.shape}")
    return buf.tobytes()


def encode_png(image: np.ndarray, level: int = 3) -> bytes:
    """uint8 (H, W) grey or (H, W, 3) RGB → PNG bytes (lossless).

    zlib's RLE strategy with the "up" row filter: on a synthetic clip's 512² maps this encoded the four
    PNGs of a frame in 9 ms against 26 ms for zlib's default strategy with adaptive filters, for 6 %
    more bytes (SECC +14 %, PNCC +2 %; the matte and the labels got smaller)."""
    img = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, int(level),
                                         cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                                         cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes → uint8 RGB (H, W, 3) or grey (H, W), exactly as stored."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("bytes are not a decodable JPEG/PNG image")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr


def code_to_uint8(code: np.ndarray) -> np.ndarray:
    """SECC/PNCC in [-1, 1] (background −1) → uint8 RGB: round((x + 1) / 2 · 255); decode x = v / 127.5 − 1."""
    return to_uint8(code, -1.0)


def limit_heap_growth(mmap_threshold: int = 256 << 10) -> bool:
    """Make glibc serve allocations ≥ `mmap_threshold` bytes with mmap (returned to the OS on free).

    By default glibc raises its mmap threshold up to 32 MiB as large blocks are freed, so the
    per-chunk image temporaries land on the heap between the long-lived encoded JPEG/PNG bytes and
    the heap cannot shrink. Measured here (with renders in batches of 8), a 2-minute clip peaked at
    2.7 GiB with a fixed threshold against 5.9 GiB without; 10 s clips peak at 1.0 GiB. The
    remaining growth is more than the record's encoded images (0.44 GiB) and is not yet explained.
    Process-wide; a no-op (returns False) where glibc's `mallopt` is not available.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(mmap_threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _trim_heap() -> None:
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ClipProcessor:
    """Models loaded once; `processor(path, start_s, end_s)` → ClipRecord."""

    def __init__(self, model: FaceModel, params: ProcessParams | None = None, *, detector=None, segmenter=None,
                 hubert=None) -> None:
        self.params = p = params or ProcessParams()
        limit_heap_growth()
        self.model = model
        self.face3d = Face3D(model)
        self.detector = detector or make_detector(p.geometry.detector, **dict(p.geometry.detector_params))
        self.segmenter = segmenter or make_segmenter(p.segmenter, **dict(p.segmenter_params))
        self.hubert = hubert
        if self.hubert is None and p.hubert_dir:
            from preprocessing.hubert import load_hubert

            self.hubert = load_hubert(p.hubert_dir, window_s=p.hubert_window_s)

    def _render(self, coeffs: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posed PNCC (uint8, render_size²), face masks (crop size²) and canonical SECC (uint8, render_size²),
        rendered RENDER_BATCH frames at a time: float fragments of a whole chunk would need ~1 GiB."""
        p = self.params
        n, rs = len(coeffs), p.render_size
        pncc_u8 = np.empty((n, rs, rs, 3), np.uint8)
        secc_u8 = np.empty((n, rs, rs, 3), np.uint8)
        masks = np.empty((n, size, size), bool)
        # one canonical shape per frame for both renders, the identity's part once per clip
        identity = self.face3d.identity_shape(coeffs[:1, 0:80])
        for b in _render_batches(n):
            shape = self.face3d.shape_from_identity(identity, coeffs[b, 80:144])
            pncc, masks[b] = render_pncc(self.face3d, coeffs[b], size, remove_eyes=p.remove_eyes, shape=shape)
            pncc = code_to_uint8(pncc)
            if rs != size:
                pncc = np.stack([cv2.resize(x, (rs, rs), interpolation=cv2.INTER_AREA) for x in pncc])
            pncc_u8[b] = pncc
            secc_u8[b] = code_to_uint8(render_secc(self.face3d, coeffs[b, 0:80], coeffs[b, 80:144], rs,
                                                   remove_eyes=p.remove_eyes, shape=shape))
        return pncc_u8, masks, secc_u8

    def __call__(self, path, start_s: float = 0.0, end_s: float | None = None) -> ClipRecord:
        p = self.params
        timer = _Timer()
        t_all = time.perf_counter()
        with torch.inference_mode():
            geo = track_and_fit(path, self.face3d, p.geometry, detector=self.detector, start_s=start_s, end_s=end_s)
        timer.seconds.update(geo.timings)
        clip, fit, track = geo.clip, geo.fit, geo.track
        n, size = clip.n_frames, geo.crop_size
        coeffs = torch.as_tensor(fit.coeffs(), dtype=torch.float32)
        lms = track.crop_landmarks.astype(np.float32)

        out: dict[str, list[bytes]] = {k: [] for k in ("frame_jpeg", "secc_png", "pncc_png", "person_png", "seg_png",
                                                        "torso_jpeg", "composite_jpeg")}
        # crop pixels outside the source frame (black padding) are never person
        inside = crop_frames(np.full((clip.info.height, clip.info.width), 255, np.uint8)[None], track.crop,
                             size)[0] > 127
        plate = BackgroundPlate(size, size, max_samples=p.plate_samples)
        self.segmenter.reset()
        t = time.perf_counter()
        for start, frames in geo.aligned_chunks(p.chunk):
            timer.seconds["decode"] = timer.seconds.get("decode", 0.0) + time.perf_counter() - t
            sl = slice(start, start + len(frames))
            with timer("render"), torch.inference_mode():
                pncc, face_masks, secc = self._render(coeffs[sl], size)
            with timer("segment"):
                seg = self.segmenter.segment(frames, lms[sl], face_masks=face_masks)
                seg.person[:, ~inside] = 0.0
                if seg.classes is not None:
                    seg.classes[:, ~inside] = 0
            with timer("parts"):
                labels, torsos = [], []
                for i in range(len(frames)):
                    head, torso = split_parts(seg.person[i], lms[start + i], face_mask=face_masks[i],
                                              classes=None if seg.classes is None else seg.classes[i])
                    seg.person[i] = bounded_matte(seg.person[i], head, torso)  # what the split rejected is not person
                    lab = np.full((size, size), SEG_BACKGROUND, np.uint8)
                    lab[torso] = SEG_TORSO
                    lab[head] = SEG_HEAD
                    labels.append(lab)
                    torsos.append(inpaint_torso(frames[i], head, torso))
            with timer("plate"):
                plate.add(frames, seg.person, start, n)
            with timer("encode"):
                for i in range(len(frames)):
                    out["frame_jpeg"].append(encode_jpeg(frames[i], p.jpeg_quality))
                    out["secc_png"].append(encode_png(secc[i], p.png_level))
                    out["pncc_png"].append(encode_png(pncc[i], p.png_level))
                    out["person_png"].append(encode_png(np.round(seg.person[i] * 255).astype(np.uint8), p.png_level))
                    out["seg_png"].append(encode_png(labels[i], p.png_level))
                    out["torso_jpeg"].append(encode_jpeg(torsos[i], p.jpeg_quality))
            del frames, face_masks, secc, pncc, seg, labels, torsos
            t = time.perf_counter()
        with timer("plate"):
            result = plate.finish()
        t = time.perf_counter()
        for start, frames in geo.aligned_chunks(p.chunk):
            timer.seconds["decode"] += time.perf_counter() - t
            with timer("composite"):
                for i, frame in enumerate(frames):
                    alpha = decode_image(out["person_png"][start + i]).astype(np.float32) / 255.0
                    out["composite_jpeg"].append(encode_jpeg(composite(frame, alpha, result.image), p.jpeg_quality))
            t = time.perf_counter()

        with timer("audio"):
            feats = audio_features(clip.audio, n) if clip.audio is not None else None
        hub = None
        if self.hubert is not None and clip.audio is not None:
            with timer("hubert"):
                hub = self.hubert.features(clip.audio, n)
        with timer("controls"):
            ear = eye_aspect_ratio(lms).astype(np.float32)
            mouth = mouth_opening(lms).astype(np.float32)
            mbox = mouth_box(lms, image_size=size)
        _trim_heap()
        timer.seconds["total"] = time.perf_counter() - t_all
        f32 = np.float32
        record = ClipRecord(
            source=str(clip.info.path), start_s=clip.start_s, fps=clip.fps, n_frames=n,
            width=clip.info.width, height=clip.info.height, crop_box=track.crop.as_array(), crop_size=size,
            render_size=p.render_size, synthetic_face_model=bool(getattr(self.model, "synthetic", False)),
            face_fraction=float(track.face_fraction),
            id_coeff=np.asarray(fit.id, f32), background_jpeg=encode_jpeg(result.image, p.jpeg_quality),
            background_inpainted_fraction=float(np.mean(result.inpainted)),
            timestamps=clip.start_s + np.arange(n, dtype=np.float64) / clip.fps, valid=track.valid.copy(),
            landmarks=lms, exp=np.asarray(fit.exp, f32), euler=np.asarray(fit.euler, f32),
            trans=np.asarray(fit.trans, f32), eg3d_cam=np.asarray(fit.eg3d_cam, f32),
            fit_rmse_px=np.asarray(fit.rmse_px, f32), mouth_box=mbox, eye_aspect_ratio=ear, mouth_opening=mouth,
            mel=None if feats is None else feats.mel, f0=None if feats is None else feats.f0,
            voiced=None if feats is None else feats.voiced, rms=None if feats is None else feats.rms,
            hubert=hub, timings={k: round(v, 4) for k, v in timer.seconds.items()}, **out)
        return record.check()


def _render_batches(n: int, batch: int = RENDER_BATCH):
    return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


def process_clip(path, params: ProcessParams, model: FaceModel, start_s: float = 0.0,
                 end_s: float | None = None) -> ClipRecord:
    """One-off `ClipProcessor(model, params)(path, start_s, end_s)` (loads the models each call)."""
    return ClipProcessor(model, params)(Path(path), start_s, end_s)
