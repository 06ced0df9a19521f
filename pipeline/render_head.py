"""`r3p render-head`: one source photo + a motion → a head-only talking mp4 (the motion stage's model).

The source photo goes through the preprocessing operators as a short still clip (`ClipProcessor`:
detect → track → fit the 3DMM → segment), so the aligned crop, head mask, identity, expression and
EG3D camera the model sees are exactly what preprocessing would have stored for that frame. Its
I2P tri-plane is computed once per source (cached in memory, and on disk with `cache_dir`).

The motion is an `r3p predict-motion` .npz (`exp` (T, 64), `fps`; optional `eg3d_cam` (T, 25), else
the source's camera every frame) or a driving video, fitted by the same operators (`track_and_fit`;
its per-frame expression and camera drive the source identity). Frames are rendered in chunks:
SECC maps → adapter → volume render → SR → uint8, streamed to ffmpeg, so memory does not grow with
the length. Output: the SR image as is (head only, on the black background the model was trained
on), at the model's image size; the driving video's audio (or `audio`) is muxed when there is one.

`HeadAnimator` is the lower-level object (loaded model + cached sources) that returns per-frame
arrays (SR image, opacity, raw render, the driving SECC map) without writing an mp4.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STILL_FRAMES = 4  # a photo becomes a still clip of this many frames (the fit needs >= 3 valid frames)
SAMPLE_RATE = 16000


class RenderHeadError(RuntimeError):
    """Bad input to render-head: the message names the input and the fix."""


@dataclass
class Source:
    """A source photo as the model sees it, with its plane (1, 3, C, R, R) computed once."""

    path: str
    key: str  # sha256 of the file bytes (or of the pixels, for an array)
    crop: np.ndarray  # (C, C, 3) uint8 aligned crop (what preprocessing makes)
    head_mask: np.ndarray  # (C, C) bool
    id_coeff: np.ndarray  # (80,) float32
    exp: np.ndarray  # (64,) float32
    eg3d_cam: np.ndarray  # (25,) float32
    input: np.ndarray  # (1, 3, S, S) float32 head-only I2P input in [-1, 1]
    planes: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Motion:
    """A driving sequence: exp (T, 64), cameras (T, 25) or None (source camera), fps, optional audio."""

    exp: np.ndarray
    cams: np.ndarray | None
    fps: float
    audio: np.ndarray | None = None
    kind: str = "npz"
    geometry: Any = None  # ClipGeometry of a driving video (its aligned crops, for side-by-side sheets)
    seconds: float = 0.0
    euler: np.ndarray | None = None  # (T, 3) fitted head pose per frame (None: the source's pose)
    trans: np.ndarray | None = None  # (T, 3)

    def __len__(self) -> int:
        return len(self.exp)


# ---------------------------------------------------------------------------------------------
# inputs


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def read_source_image(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """RGB uint8 (H, W, 3) and the sha256 of the file — a photo, or the first frame of a video (by suffix);
    RenderHeadError for a missing or unreadable file."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise RenderHeadError(f"--source {path}: no such file; give the path of a photo (PNG or JPEG) or a video "
                              "of one face")
    data = p.read_bytes()
    if p.suffix.lower() in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(str(p))
        ok, img = cap.read() if cap.isOpened() else (False, None)
        cap.release()
        if not ok or img is None:
            raise RenderHeadError(f"--source {path}: no frame could be decoded from this video; give a PNG or JPEG "
                                  "photo, or a readable video (its first frame is the source)")
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if img is None:
            raise RenderHeadError(f"--source {path}: not a readable image; give a PNG or JPEG photo (or a video) "
                                  "of one face")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), _sha(data)


def load_motion_npz(path: str | os.PathLike, max_frames: int | None = None) -> Motion:
    """An `r3p predict-motion` .npz: exp (T, 64), fps, optional eg3d_cam (T, 25) and audio (a file path)."""
    p = Path(path)
    if not p.is_file():
        raise RenderHeadError(f"--motion {path}: no such file; make one with `r3p predict-motion`")
    try:
        z = np.load(p, allow_pickle=False)
        keys = set(z.files)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise RenderHeadError(f"--motion {path}: not a readable .npz ({type(exc).__name__}); make one with "
                              "`r3p predict-motion`") from None
    if "exp" not in keys:
        raise RenderHeadError(f"--motion {path}: no 'exp' array (has {sorted(keys)}); it needs exp (T, 64) "
                              "float32 expression coefficients, as `r3p predict-motion` writes")
    exp = np.asarray(z["exp"])
    if exp.ndim != 2 or exp.shape[1] != 64 or len(exp) < 1 or not np.isfinite(exp).all():
        raise RenderHeadError(f"--motion {path}: 'exp' must be a finite (T, 64) array with T >= 1, got shape "
                              f"{exp.shape}; write exp (T, 64) (one row of 64 expression coefficients per frame)")
    cams = None
    if "eg3d_cam" in keys:
        cams = np.asarray(z["eg3d_cam"], np.float32)
        if cams.shape != (len(exp), 25) or not np.isfinite(cams).all():
            raise RenderHeadError(f"--motion {path}: 'eg3d_cam' must be finite ({len(exp)}, 25) (one EG3D camera "
                                  f"per exp row), got {cams.shape}; drop it to use the source's camera")
    fps = float(z["fps"]) if "fps" in keys else 25.0
    if not (np.isfinite(fps) and fps > 0):
        raise RenderHeadError(f"--motion {path}: fps must be > 0, got {fps}")
    audio = None
    if "audio" in keys and z["audio"].dtype.kind in "US":
        audio = str(z["audio"])
    n = len(exp) if max_frames is None else min(len(exp), int(max_frames))
    m = Motion(exp=exp[:n].astype(np.float32), cams=None if cams is None else cams[:n], fps=fps, kind="npz")
    if audio:
        m.audio = _read_audio_file(audio, n, fps, f"--motion {path} (its 'audio' entry)")
    return m


def _read_audio_file(path: str, n_frames: int, fps: float, what: str) -> np.ndarray:
    from preprocessing.video import VideoError, read_audio

    try:
        audio = read_audio(path, SAMPLE_RATE)
    except (VideoError, FileNotFoundError, OSError) as exc:
        raise RenderHeadError(f"{what}: cannot read audio from {path}: {exc}") from None
    return fit_audio(audio, n_frames, fps)


def fit_audio(audio: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """Cut or zero-pad mono audio to exactly `n_frames` video frames at `fps`."""
    n = int(round(n_frames * SAMPLE_RATE / fps))
    a = np.asarray(audio, np.float32)[:n]
    return np.pad(a, (0, n - len(a))) if len(a) < n else a


def resolve_motion_checkpoint(value: str, runs: str | None) -> tuple[str, dict[str, Any]]:
    """(checkpoint folder, meta) of a motion-stage checkpoint; RenderHeadError otherwise."""
    from pipeline.train import TrainError, resolve_checkpoint
    from training.checkpoint import CheckpointError, read_meta

    try:
        ckpt = resolve_checkpoint(str(value), runs or ".")
        meta = read_meta(ckpt)
    except (TrainError, CheckpointError) as exc:
        raise RenderHeadError(f"--model {value}: {exc}; with a run name, pass --runs <dataset root>/runs") from None
    stage = meta.get("stage")
    if stage != "motion":
        raise RenderHeadError(f"--model {value}: {ckpt} is a {stage!r} checkpoint; render-head needs a 'motion' "
                              "stage checkpoint (`r3p train --stage motion`)")
    return ckpt, meta


# ---------------------------------------------------------------------------------------------
# the animator


class _Clock:
    """Accumulates wall seconds of a module's forward passes (forward pre/post hooks)."""

    def __init__(self, module: torch.nn.Module, cuda: bool) -> None:
        self.seconds, self._t, self._cuda = 0.0, 0.0, cuda
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def _pre(self, *_):
        self._sync()
        self._t = time.perf_counter()

    def _post(self, *_):
        self._sync()
        self.seconds += time.perf_counter() - self._t


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] → (N, H, W, 3) uint8."""
    x = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    return np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


class HeadAnimator:
    """A loaded motion model + the face model + cached sources.

    `source(path)` → Source (processed and its plane computed once per file content);
    `render(source, exp, cams)` → per-frame arrays for one chunk; `iter_render` streams chunks;
    `drive_video(path)` → the Motion of a driving video. `seconds` accumulates per part:
    source (preprocessing the photo), i2p, secc, adapter, render (volume rendering), sr."""

    def __init__(self, model: torch.nn.Module, params: Any, face_model: Any, *, process_params: Any = None,
                 processor: Any = None, device: str | torch.device | None = None, checkpoint: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        from preprocessing.face3d import Face3D

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        if getattr(self.model, "adapter", None) is None:
            raise RenderHeadError("the model has no motion adapter: render-head needs a 'motion' stage model")
        self.p = params
        self.face_model = face_model
        self.face3d = Face3D(face_model)
        self._process_params = process_params
        self._processor = processor
        self.checkpoint = checkpoint
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._sources: dict[str, Source] = {}
        cuda = self.device.type == "cuda"
        self._sr_clock, self._adapter_clock = _Clock(self.model.sr, cuda), _Clock(self.model.adapter, cuda)
        self.seconds = {k: 0.0 for k in ("source", "i2p", "secc", "adapter", "render", "sr")}
        self.frames_rendered = 0

    @classmethod
    def from_checkpoint(cls, model: str, cfg: Any = None, *, runs: str | None = None, face_model: Any = None,
                        **kw) -> HeadAnimator:
        """Load a motion checkpoint (folder, run folder or run name under `runs`) with the config's face model."""
        from pipeline.assets import resolve_face_model
        from pipeline.config import load_config
        from training.checkpoint import load_weights
        from training.motion import STAGE, build_motion_head

        cfg = cfg or load_config()
        ckpt, meta = resolve_motion_checkpoint(model, runs if runs is not None else cfg.training.storage_path)
        try:
            p = STAGE.params_from_dict(meta["params"])
        except (KeyError, TypeError) as exc:
            raise RenderHeadError(f"--model {model}: {ckpt}/meta.json has no usable motion 'params' ({exc}); "
                                  "was it written by `r3p train --stage motion`?") from None
        net = build_motion_head(p)
        try:
            load_weights(ckpt, net)
        except RuntimeError as exc:
            raise RenderHeadError(f"--model {model}: the weights in {ckpt} do not fit its params ({str(exc)[:200]})"
                                  ) from None
        return cls(net, p, face_model if face_model is not None else resolve_face_model(cfg),
                   process_params=_still_process_params(cfg), checkpoint=ckpt, **kw)

    # ---- sources
    @property
    def processor(self):
        if self._processor is None:
            from preprocessing.process import ClipProcessor

            self._processor = ClipProcessor(self.face_model, self._process_params or _still_process_params(None))
        return self._processor

    def _geometry_params(self):
        return self.processor.params.geometry

    def source(self, image: str | os.PathLike | np.ndarray) -> Source:
        """The processed source photo (a path or an RGB uint8 array) with its plane; computed once per content."""
        if isinstance(image, np.ndarray):
            rgb, path = np.ascontiguousarray(image, np.uint8), "<array>"
            if rgb.ndim != 3 or rgb.shape[-1] != 3:
                raise RenderHeadError(f"source image must be RGB uint8 (H, W, 3), got {rgb.shape}")
            key = _sha(rgb.tobytes() + str(rgb.shape).encode())
        else:
            path = str(image)
            rgb, key = read_source_image(path)
        if key in self._sources:
            return self._sources[key]
        src = self._load_cached(key, path)
        if src is None:
            src = self._process_source(rgb, path, key)
            self._save_cached(src)
        self._sources[key] = src
        return src

    def _process_source(self, rgb: np.ndarray, path: str, key: str) -> Source:
        from preprocessing.landmarks.tracking import TrackingError
        from preprocessing.process import decode_image
        from preprocessing.record import SEG_HEAD
        from preprocessing.video import VideoError, encode_mp4
        from training.motion import source_input

        t0 = time.perf_counter()
        h, w = rgb.shape[:2]
        rgb = rgb[:h - h % 2, :w - w % 2]  # H.264 needs even sides
        with tempfile.TemporaryDirectory(prefix="r3p_source_") as td:
            still = Path(td) / "source.mp4"
            encode_mp4(still, [rgb] * STILL_FRAMES, 25.0, crf=10)
            try:
                rec = self.processor(still)
            except TrackingError as exc:
                raise RenderHeadError(f"--source {path}: no usable face found ({exc}); give a photo with one "
                                      "clearly visible, roughly frontal face at least ~100 px wide") from None
            except (VideoError, ValueError) as exc:
                raise RenderHeadError(f"--source {path}: preprocessing failed ({exc}); give a PNG or JPEG photo "
                                      "of one face, at least 64 px on each side") from None
        k = rec.n_frames // 2
        crop = decode_image(rec.frame_jpeg[k])
        head = decode_image(rec.seg_png[k]) == SEG_HEAD
        if not head.any():
            raise RenderHeadError(f"--source {path}: segmentation found no head in the photo; give a photo whose "
                                  "head stands out from the background")
        t1 = time.perf_counter()
        inp = source_input(crop[None], head[None], self.p)
        planes = self._planes(inp)
        t2 = time.perf_counter()
        self.seconds["source"] += t1 - t0
        return Source(path=path, key=key, crop=crop, head_mask=head, id_coeff=np.asarray(rec.id_coeff, np.float32),
                      exp=np.asarray(rec.exp[k], np.float32), eg3d_cam=np.asarray(rec.eg3d_cam[k], np.float32),
                      input=inp, planes=planes, seconds={"preprocess": t1 - t0, "i2p": t2 - t1})

    def _planes(self, inp: np.ndarray) -> torch.Tensor:
        t = time.perf_counter()
        with torch.inference_mode():
            planes = self.model.planes(torch.as_tensor(inp, device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds["i2p"] += time.perf_counter() - t
        return planes

    def _cache_file(self, key: str) -> Path | None:
        if self.cache_dir is None or self.checkpoint is None:
            return None
        w = Path(self.checkpoint) / "model.safetensors"
        st = w.stat()
        pp = self._process_params or self.processor.params  # preprocessing settings shape the crop and the fit
        fm = sorted(getattr(self.face_model, "metadata", dict)().items())
        tag = f"{w.resolve()}|{st.st_size}|{st.st_mtime_ns}|{key}|{self.p.image_size}|{pp!r}|{fm!r}"
        return self.cache_dir / f"source-{_sha(tag.encode())[:24]}.npz"

    def _load_cached(self, key: str, path: str) -> Source | None:
        f = self._cache_file(key)
        if f is None or not f.is_file():
            return None
        z = np.load(f, allow_pickle=False)
        return Source(path=path, key=key, crop=z["crop"], head_mask=z["head_mask"], id_coeff=z["id_coeff"],
                      exp=z["exp"], eg3d_cam=z["eg3d_cam"], input=z["input"],
                      planes=torch.as_tensor(z["planes"], device=self.device), seconds={"cached": 1.0})

    def _save_cached(self, src: Source) -> None:
        f = self._cache_file(src.key)
        if f is None:
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.stem}.tmp.npz")
        np.savez(tmp, crop=src.crop, head_mask=src.head_mask, id_coeff=src.id_coeff, exp=src.exp,
                 eg3d_cam=src.eg3d_cam, input=src.input, planes=src.planes.float().cpu().numpy())
        tmp.replace(f)

    # ---- motion
    def drive_video(self, path: str | os.PathLike, max_frames: int | None = None) -> Motion:
        """Per-frame expression and camera of a driving video (the preprocessing fit), with its audio."""
        from preprocessing.geometry import track_and_fit
        from preprocessing.landmarks.tracking import TrackingError
        from preprocessing.video import TARGET_FPS, VideoError

        if not Path(path).is_file():
            raise RenderHeadError(f"--video {path}: no such file; give a video of one talking face")
        t = time.perf_counter()
        end_s = None if max_frames is None else (int(max_frames) + 0.5) / TARGET_FPS
        try:
            with torch.inference_mode():
                geo = track_and_fit(path, self.face3d, self._geometry_params(), detector=self.processor.detector,
                                    end_s=end_s)
        except TrackingError as exc:
            raise RenderHeadError(f"--video {path}: no face tracked ({exc}); give a video of one visible face"
                                  ) from None
        except (VideoError, ValueError) as exc:
            raise RenderHeadError(f"--video {path}: {exc}") from None
        n = geo.n_frames if max_frames is None else min(geo.n_frames, int(max_frames))
        audio = None if geo.clip.audio is None else fit_audio(geo.clip.audio, n, geo.clip.fps)
        return Motion(exp=np.asarray(geo.fit.exp[:n], np.float32), cams=np.asarray(geo.fit.eg3d_cam[:n], np.float32),
                      fps=float(geo.clip.fps), audio=audio, kind="video", geometry=geo,
                      seconds=time.perf_counter() - t, euler=np.asarray(geo.fit.euler[:n], np.float32),
                      trans=np.asarray(geo.fit.trans[:n], np.float32))

    # ---- rendering
    def secc(self, source: Source, exp: np.ndarray) -> np.ndarray:
        """The adapter input for driving expressions `exp` (n, 64): (n, 3, S, S, 3) in [-1, 1]."""
        from training.motion import secc_maps

        t = time.perf_counter()
        maps = secc_maps(self.face3d, source.id_coeff, source.exp, exp, self.p.image_size)
        self.seconds["secc"] += time.perf_counter() - t
        return maps

    def render(self, source: Source, exp: np.ndarray, cams: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One chunk: exp (n, 64), cams (n, 25) or None (the source's camera) → "sr" (n, S, S, 3) uint8 (the
        output frames), "rgb" (n, r, r, 3) uint8 raw render, "opacity" (n, r, r) float32, "secc" (n, S, S, 3)
        uint8 driving SECC map, "depth" (n, r, r) float32."""
        from preprocessing.process import code_to_uint8
        from training.motion import stack_secc

        exp = np.asarray(exp, np.float32).reshape(-1, 64)
        n = len(exp)
        cams = np.repeat(source.eg3d_cam[None], n, 0) if cams is None else np.asarray(cams, np.float32).reshape(n, 25)
        maps = self.secc(source, exp)
        s9 = torch.as_tensor(stack_secc(maps), device=self.device)
        cam = torch.as_tensor(cams, device=self.device)
        sr0, ad0 = self._sr_clock.seconds, self._adapter_clock.seconds
        t = time.perf_counter()
        with torch.inference_mode():
            out = self.model.render(source.planes.expand(n, -1, -1, -1, -1), cam, s9)
            res = {"sr": to_uint8(out["sr"]), "rgb": to_uint8(out["rgb"]),
                   "opacity": out["opacity"][:, 0].float().cpu().numpy(),
                   "depth": out["depth"][:, 0].float().cpu().numpy()}
        total = time.perf_counter() - t
        d_sr, d_ad = self._sr_clock.seconds - sr0, self._adapter_clock.seconds - ad0
        self.seconds["sr"] += d_sr
        self.seconds["adapter"] += d_ad
        self.seconds["render"] += max(total - d_sr - d_ad, 0.0)
        res["secc"] = code_to_uint8(maps[:, 2])
        self.frames_rendered += n
        return res

    def iter_render(self, source: Source, motion: Motion, chunk: int = 16) -> Iterator[dict[str, np.ndarray]]:
        """`render` over `motion` chunk by chunk; each dict also has "start" (frame index) and, for a driving
        video, "driving" (n, C, C, 3) uint8 aligned crops (decoded chunk by chunk)."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        n = len(motion)
        if motion.geometry is not None:
            for start, frames in motion.geometry.aligned_chunks(chunk):
                if start >= n:
                    break
                sl = slice(start, min(start + len(frames), n))
                out = self.render(source, motion.exp[sl], motion.cams[sl])
                yield {"start": start, "driving": frames[:sl.stop - start], **out}
            return
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            cams = None if motion.cams is None else motion.cams[sl]
            yield {"start": start, **self.render(source, motion.exp[sl], cams)}


def _still_process_params(cfg: Any):
    """The config's preprocessing settings for a source photo / driving video: audio not required, no HuBERT."""
    from pipeline.config import load_config
    from pipeline.process import process_params

    pp = process_params(cfg or load_config())
    limits = dataclasses.replace(pp.geometry.limits, require_audio=False, min_frames=1)
    return dataclasses.replace(pp, geometry=dataclasses.replace(pp.geometry, limits=limits), hubert_dir=None)


# ---------------------------------------------------------------------------------------------
# the job


def render_head(model: str | HeadAnimator, source: str | os.PathLike | np.ndarray, out: str | os.PathLike,
                motion: str | os.PathLike | None = None, video: str | os.PathLike | None = None, cfg: Any = None, *,
                runs: str | None = None, audio: str | os.PathLike | None = None, max_frames: int | None = None,
                chunk: int = 16, mux_audio: bool = True, face_model: Any = None, device: str | None = None,
                cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Render `source` driven by `motion` (.npz) or `video` into the mp4 `out`; returns a summary:
    frames, fps, size, seconds per part, frames_per_s, out, audio (muxed or not)."""
    from preprocessing.video import encode_mp4

    if (motion is None) == (video is None):
        raise RenderHeadError("give exactly one of --motion motion.npz (from `r3p predict-motion`) or --video "
                              f"driving.mp4 (got {'both' if motion is not None else 'neither'})")
    if max_frames is not None and max_frames < 1:
        raise RenderHeadError(f"--max-frames must be >= 1, got {max_frames}")
    if chunk < 1:
        raise RenderHeadError(f"--chunk must be >= 1, got {chunk}")
    t_all = time.perf_counter()
    # cheap checks first: a bad motion file or source photo fails before any model is loaded
    mot = load_motion_npz(motion, max_frames) if motion is not None else None
    if video is not None and not Path(video).is_file():
        raise RenderHeadError(f"--video {video}: no such file; give a video of one talking face")
    if not isinstance(source, np.ndarray):
        read_source_image(source)
    if isinstance(model, HeadAnimator):
        anim = model
    else:
        anim = HeadAnimator.from_checkpoint(str(model), cfg, runs=runs, face_model=face_model, device=device,
                                            cache_dir=cache_dir)
    before = dict(anim.seconds)
    src = anim.source(source)
    if mot is None:
        mot = anim.drive_video(video, max_frames)
    if audio is not None:
        mot.audio = _read_audio_file(str(audio), len(mot), mot.fps, "--audio")
    t_loop = time.perf_counter()
    written = [0]

    def frames():
        for part in anim.iter_render(src, mot, chunk):
            written[0] += len(part["sr"])
            yield part["sr"]

    muxed = mot.audio is not None and mux_audio
    path = encode_mp4(out, frames(), mot.fps, audio=mot.audio if muxed else None)
    loop = time.perf_counter() - t_loop
    sec = {k: round(anim.seconds[k] - before.get(k, 0.0), 4) for k in anim.seconds}
    sec["motion"] = round(mot.seconds, 4)
    sec["encode_and_other"] = round(max(loop - sec["secc"] - sec["adapter"] - sec["render"] - sec["sr"], 0.0), 4)
    sec["total"] = round(time.perf_counter() - t_all, 4)
    return {"frames": written[0], "fps": mot.fps, "size": int(anim.p.image_size), "motion": mot.kind,
            "audio": muxed, "checkpoint": anim.checkpoint, "source_cached": "cached" in src.seconds,
            "seconds": sec, "frames_per_s": round(written[0] / loop, 2) if loop > 0 else None,
            "out": str(Path(path).resolve())}


def format_summary(s: dict[str, Any]) -> str:
    sec = s["seconds"]
    return (f"render-head: {s['frames']} frames at {s['fps']:g} fps, {s['size']}² ({s['motion']} motion, audio "
            f"{'muxed' if s['audio'] else 'none'}) in {sec['total']:.2f} s: source {sec['source']:.2f} s, motion "
            f"{sec['motion']:.2f} s, I2P once {sec['i2p']:.3f} s, SECC {sec['secc']:.2f} s, adapter "
            f"{sec['adapter']:.2f} s, render {sec['render']:.2f} s, SR {sec['sr']:.2f} s, encode+other "
            f"{sec['encode_and_other']:.2f} s{' (source from cache)' if s['source_cached'] else ''}; "
            f"{s['frames_per_s']} frames/s -> {s['out']}")
