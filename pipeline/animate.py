"""`r3p animate`: one source photo + audio (or a driving video) → a talking-portrait mp4.

Chains the stages: the source photo goes through the preprocessing operators once (crop, 3DMM fit,
segmentation, inpainted torso, background plate; I2P plane) via `pipeline.render_head.HeadAnimator`;
the motion is the A2M expression sequence of the audio (features by the preprocessing code, the
source's camera every frame) or a driving video's fitted expressions and cameras; per chunk of
frames the motion model renders the head (SECC → adapter → volume render → SR), the compositor
puts it over the source's torso and the background (the source's plate or `--bg`), and the frames
are streamed to an H.264 mp4 at 25 fps with the audio muxed.

Compositor: a trained `htbsr` run over the same motion run (`--htbsr auto`, the default, takes the
latest such run under `--model`; `--htbsr RUN` names one and implies its motion run) — the learned
torso warp and head/torso/background fusion of `pipeline.htbsr_compose`; without one (or with
`--htbsr none`) the static-torso `compose` below, and the summary says which ran.

Output size: the source's aligned crop size (`tracking.crop_size`; the head render is upsampled to
it), or `size`. The file is written under a temporary name in the output folder and renamed at the
end: an error leaves neither a half-written OUT.mp4 nor the temporary file.

Memory: frames, SECC maps and composites exist one chunk at a time; the audio front-end computes its
features in overlapping windows, so what grows with the length is the audio samples themselves
(64 KB per second) and the per-frame expression/feature rows (~1 KB per frame).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.render_head import (SAMPLE_RATE, HeadAnimator, Motion, RenderHeadError, Source, fit_audio,
                                  read_source_image)

FPS = 25.0
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
SILENCE_RMS = 1e-3  # −60 dBFS: an audio file quieter than this overall is "silent"
BLINK_PERIOD, BLINK_FRAMES, BLINK_FIRST = 100, 4, 40  # --blink period: a 4-frame blink every 4 s
FEATURE_WINDOW, FEATURE_MARGIN = 100, 8  # audio features in 4 s windows with 0.32 s context each side


class AnimateError(RuntimeError):
    """Bad input to animate: the message names the input and the fix (exit code 2 in the CLI)."""


# ---------------------------------------------------------------------------------------------
# the compositing seam


def compose(head_sr: np.ndarray, head_opacity: np.ndarray, source_torso: np.ndarray, background: np.ndarray,
            person_alpha: np.ndarray) -> np.ndarray:
    """The default "static torso" compositor: one output frame (H, W, 3) uint8, or (n, H, W, 3) for a batch.

    head_sr (S, S, 3) uint8 — the motion model's SR head (on black), aligned with the source crop;
    head_opacity (r, r) float in [0, 1] — its rendered opacity; both upsampled (bilinear) to H × W.
    source_torso (H, W, 3) uint8 — the source's inpainted torso (black elsewhere);
    background (H, W, 3) uint8 — the plate or the user's image;
    person_alpha (H, W) float in [0, 1] — the alpha of the source's static person layer *without its
    head* (`SourceLayers.torso_alpha`: torso matte + the inpainted neck behind the head).

    Head over torso by the head opacity, then the person over the background by the combined alpha
    A = a_head + (1 − a_head)·a_torso:  out = a_head·head + (1 − a_head)·(a_torso·torso + (1 − a_torso)·bg),
    so where A = 0 the output is the background exactly.

    The fallback when no htbsr run fits the motion run: the learned compositor
    (`pipeline.htbsr_compose.HTBSRCompositor`) warps the torso with the head and fuses in feature space."""
    import cv2

    head_sr, head_opacity = np.asarray(head_sr), np.asarray(head_opacity, np.float32)
    if head_sr.ndim == 4:
        return np.stack([compose(h, o, source_torso, background, person_alpha)
                         for h, o in zip(head_sr, head_opacity)])
    h, w = background.shape[:2]
    if source_torso.shape != background.shape or np.shape(person_alpha) != (h, w):
        raise ValueError(f"source_torso {source_torso.shape}, background {background.shape} and person_alpha "
                         f"{np.shape(person_alpha)} must share the output size ({h}, {w})")
    head = cv2.resize(head_sr, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    a_h = np.clip(cv2.resize(head_opacity, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)[..., None]
    a_t = np.clip(np.asarray(person_alpha, np.float32), 0.0, 1.0)[..., None]
    out = a_h * head + (1.0 - a_h) * (a_t * source_torso.astype(np.float32) + (1.0 - a_t) * background)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def composed_alpha(head_opacity: np.ndarray, person_alpha: np.ndarray) -> np.ndarray:
    """The combined person alpha A (…, H, W) that `compose` uses (for checks and mattes)."""
    import cv2

    h, w = np.shape(person_alpha)
    ops = np.asarray(head_opacity, np.float32).reshape(-1, *np.shape(head_opacity)[-2:])
    a_h = np.clip(np.stack([cv2.resize(o, (w, h), interpolation=cv2.INTER_LINEAR) for o in ops]), 0, 1)
    a = a_h + (1 - a_h) * np.clip(person_alpha, 0, 1)[None]
    return a.reshape(*np.shape(head_opacity)[:-2], h, w)


@dataclass
class SourceLayers:
    """The source's static layers at the output size: torso (H, W, 3) uint8, torso_alpha (H, W) float32,
    plate (H, W, 3) uint8 background, person (H, W) float32 full matte (head included)."""

    torso: np.ndarray
    torso_alpha: np.ndarray
    plate: np.ndarray
    person: np.ndarray
    kp: np.ndarray | None = None  # (4, 2) torso-driving tracked keypoints (fractions of the crop)
    euler: np.ndarray | None = None  # (3,) the source frame's fitted pose
    trans: np.ndarray | None = None  # (3,)

    @property
    def size(self) -> int:
        return int(self.plate.shape[0])

    def resized(self, size: int) -> SourceLayers:
        import cv2

        if size == self.size:
            return self
        r = lambda x, interp=cv2.INTER_LINEAR: cv2.resize(x, (size, size), interpolation=interp)  # noqa: E731
        return dataclasses.replace(self, torso=r(self.torso), torso_alpha=r(self.torso_alpha), plate=r(self.plate),
                                   person=r(self.person))


def layers_from_record(rec: Any) -> SourceLayers:
    """Static torso, its alpha, the plate and the matte of the middle frame of a still's ClipRecord."""
    from preprocessing.process import decode_image
    from preprocessing.record import SEG_HEAD, SEG_TORSO
    from training.htbsr import KP_INDICES

    k = rec.n_frames // 2
    torso = decode_image(rec.torso_jpeg[k])
    person = decode_image(rec.person_png[k]).astype(np.float32) / 255.0
    seg = decode_image(rec.seg_png[k])
    filled = (seg == SEG_HEAD) & (torso.astype(np.int16).sum(-1) > 48)  # the neck inpainted behind the head
    alpha = np.where(seg == SEG_TORSO, person, 0.0).astype(np.float32)
    alpha[filled] = 1.0
    torso = np.where(alpha[..., None] > 0, torso, 0).astype(np.uint8)
    kp = np.asarray(rec.landmarks[k], np.float32).reshape(68, 2)[list(KP_INDICES)] / float(seg.shape[0])
    return SourceLayers(torso=torso, torso_alpha=alpha, plate=decode_image(rec.background_jpeg), person=person,
                        kp=kp, euler=np.asarray(rec.euler[k], np.float32), trans=np.asarray(rec.trans[k], np.float32))


def load_background(path: str | os.PathLike, size: int) -> np.ndarray:
    """`--bg IMG`: centre-cropped to a square and resized to size² RGB uint8."""
    import cv2

    try:
        rgb, _ = read_source_image(path)
    except RenderHeadError:
        raise AnimateError(f"--bg {path}: not a readable image; give a PNG or JPEG background picture") from None
    h, w = rgb.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(rgb[y:y + s, x:x + s], (size, size), interpolation=interp))


# ---------------------------------------------------------------------------------------------
# models


def _final_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under `root`: itself, its final/, or <run>/final for each run in it."""
    from training.checkpoint import META

    if (root / META).is_file():
        return [root]
    if (root / "final" / META).is_file():
        return [root / "final"]
    return sorted(c / "final" for c in root.iterdir() if (c / "final" / META).is_file()) if root.is_dir() else []


def find_stage_checkpoints(model: str | os.PathLike | None, needed: dict[str, str | None]) -> dict[str, str]:
    """{stage: checkpoint folder} for each stage in `needed` (stage → explicit run or None = the latest finished
    run of that stage under `model`, by the time its final/meta.json was written); AnimateError otherwise."""
    from pipeline.train import TrainError, resolve_checkpoint
    from training.checkpoint import META, read_meta

    found: dict[str, list[tuple[float, Path]]] = {}
    root = Path(model) if model else None
    if root is not None and not root.exists():
        raise AnimateError(f"--model {model}: no such folder; give the runs folder of `r3p train` (or a run / "
                           "checkpoint folder)")
    if root is not None:
        for c in _final_checkpoints(root):
            try:
                stage = read_meta(c).get("stage")
            except Exception:  # noqa: BLE001 - an unreadable meta is just not a candidate
                continue
            found.setdefault(str(stage), []).append(((c / META).stat().st_mtime, c))
    out = {}
    flag = {"a2m": "--a2m", "motion": "--head", "htbsr": "--htbsr"}
    for stage, explicit in needed.items():
        if explicit:
            try:
                ckpt = resolve_checkpoint(str(explicit), str(root) if root is not None else ".")
            except TrainError as exc:
                raise AnimateError(f"{flag.get(stage, stage)} {explicit}: {exc}") from None
            got = read_meta(ckpt).get("stage")
            if got != stage:
                raise AnimateError(f"{flag.get(stage, stage)} {explicit}: {ckpt} is a {got!r} checkpoint; give a "
                                   f"{stage!r} run (`r3p train --stage {stage}`)")
            out[stage] = ckpt
        elif found.get(stage):
            out[stage] = str(max(found[stage])[1].resolve())
        else:
            have = ", ".join(f"{s}: {', '.join(p.parent.name for _, p in sorted(v))}" for s, v in sorted(found.items()))
            raise AnimateError(f"--model {model}: no finished {stage!r} run found (found {have or 'no finished runs'}"
                               f"); train one with `r3p train --stage {stage}` or name it with "
                               f"{flag.get(stage, '--' + stage)} RUN")
    return out


def htbsr_motion(ckpt: str, root: str | os.PathLike | None) -> str:
    """The motion checkpoint folder an htbsr checkpoint was trained over (resolved like `training.htbsr.motion`)."""
    from pipeline.train import TrainError, resolve_checkpoint
    from training.checkpoint import read_meta

    value = (read_meta(ckpt).get("params") or {}).get("motion")
    if not value:
        raise AnimateError(f"--htbsr {ckpt}: its params name no motion run (training.htbsr.motion)")
    try:
        return resolve_checkpoint(str(value), str(root) if root is not None else str(Path(ckpt).parent.parent))
    except TrainError as exc:
        raise AnimateError(f"--htbsr {ckpt}: its motion run is gone ({exc}); give --head RUN and --htbsr none, "
                           "or retrain htbsr") from None


def choose_htbsr(model: str | os.PathLike | None, htbsr: str | None, motion: str) -> str | None:
    """The htbsr checkpoint to composite with: `htbsr` "none" → None; "auto"/None → the latest finished htbsr run
    under `model` trained over the checkpoint `motion` (None when there is none); a run/folder → that one, which
    must have been trained over `motion`."""
    from training.checkpoint import META, read_meta

    if htbsr == "none":
        return None
    if htbsr not in (None, "auto"):
        ckpt = find_stage_checkpoints(model, {"htbsr": htbsr})["htbsr"]
        if Path(htbsr_motion(ckpt, model)).resolve() != Path(motion).resolve():
            raise AnimateError(f"--htbsr {htbsr} was trained over the motion run {htbsr_motion(ckpt, model)}, not "
                               f"{motion}; drop --head (the htbsr run picks its own) or give --htbsr none")
        return ckpt
    root = Path(model) if model else None
    if root is None or not root.is_dir():
        return None
    best: tuple[float, str] | None = None
    for c in _final_checkpoints(root):
        try:
            if read_meta(c).get("stage") != "htbsr":
                continue
            if Path(htbsr_motion(str(c), root)).resolve() != Path(motion).resolve():
                continue
        except Exception:  # noqa: BLE001 - an unreadable or orphaned htbsr run is just not a candidate
            continue
        key = ((c / META).stat().st_mtime, str(c.resolve()))
        best = key if best is None or key > best else best
    return None if best is None else best[1]


def blink_schedule(t: int, mode: str) -> np.ndarray | None:
    """A2M blink flags (T,): None for 'none'; 'period': a BLINK_FRAMES-frame blink every BLINK_PERIOD frames."""
    if mode == "none":
        return None
    if mode != "period":
        raise AnimateError(f"--blink {mode}: give 'none' or 'period'")
    b = np.zeros(t, np.float32)
    for s in range(BLINK_FIRST, t, BLINK_PERIOD):
        b[s:s + BLINK_FRAMES] = 1.0
    return b


def windowed_features(audio: np.ndarray, t: int, window: int = FEATURE_WINDOW, margin: int = FEATURE_MARGIN):
    """`preprocessing.audio.audio_features` of aligned audio (t·640 samples), computed `window` frames at a time
    with `margin` frames of context on each side (so its working memory does not grow with the length); the
    rows equal the whole-clip computation except the voicing gate, which is relative to the window's loudest
    row instead of the clip's. Returns (mel (2t, 80), f0 (2t,))."""
    from preprocessing.audio import audio_features

    if t <= window + 2 * margin:
        f = audio_features(audio, t)
        return f.mel, f.f0
    mel, f0 = np.empty((2 * t, 80), np.float32), np.empty(2 * t, np.float32)
    for s in range(0, t, window):
        e = min(s + window, t)
        a, b = max(s - margin, 0), min(e + margin, t)
        f = audio_features(audio[a * SAMPLES_PER_FRAME:b * SAMPLES_PER_FRAME], b - a)
        mel[2 * s:2 * e], f0[2 * s:2 * e] = f.mel[2 * (s - a):2 * (e - a)], f.f0[2 * (s - a):2 * (e - a)]
    return mel, f0


def read_driving_audio(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """(16 kHz mono audio cut/padded to whole 40 ms frames, T = round(seconds · 25)); AnimateError for a missing,
    non-audio, empty or silent file."""
    from preprocessing.video import VideoError, read_audio

    if not Path(path).is_file():
        raise AnimateError(f"--audio {path}: no such file; give a speech recording (WAV, MP3, or a video with sound)")
    try:
        audio = read_audio(path, SAMPLE_RATE)
    except VideoError as exc:
        if exc.reason == "no_audio":
            raise AnimateError(f"--audio {path}: empty — no audio samples ({exc}); give a recording of speech (or a "
                               "video with an audio track)") from None
        raise AnimateError(f"--audio {path}: not a readable audio file ({exc.reason}: {exc}); give a speech "
                           "recording (WAV, MP3, FLAC, or a video with an audio track)") from None
    t = int(round(len(audio) / SAMPLES_PER_FRAME))
    if t < 1:
        raise AnimateError(f"--audio {path}: empty ({len(audio)} samples, under one 40 ms video frame); give a "
                           "recording of speech")
    if max_frames is not None:
        t = min(t, int(max_frames))
    audio = fit_audio(audio, t, FPS)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if not np.isfinite(rms) or rms < SILENCE_RMS:
        raise AnimateError(f"--audio {path}: silent (RMS {rms:.2g} < {SILENCE_RMS:g}, i.e. below −60 dBFS over "
                           f"{t / FPS:.2f} s); give a recording of speech")
    return audio, t


class A2MModel:
    """A loaded a2m checkpoint: audio → expression (T, 64) at 25 fps (the `r3p predict-motion` computation)."""

    def __init__(self, ckpt: str, cfg: Any) -> None:
        from training.checkpoint import load_model

        self.checkpoint = ckpt
        stage, self.params, self.net, self.meta = load_model(ckpt)
        if stage.name != "a2m":
            raise AnimateError(f"--a2m: {ckpt} is a {stage.name!r} checkpoint, not an a2m one")
        self.kind = self.meta["info"]["audio"]
        self._hubert = None
        if self.kind == "hubert":
            from pipeline.process import hubert_dir
            from preprocessing.hubert import load_hubert

            folder = hubert_dir(cfg)
            if folder is None:
                raise AnimateError(f"{ckpt} was trained on HuBERT features but no HuBERT model is configured; see "
                                   "`r3p assets` (assets.hubert=PATH)")
            self._hubert = load_hubert(folder)

    def __call__(self, audio: np.ndarray, t: int, *, mouth_amp: float | None = None, temperature: float | None = None,
                 blink: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        mel, f0 = windowed_features(audio, t)
        x = mel if self._hubert is None else self._hubert.features(audio, t)
        return self.from_features(x, f0, mouth_amp=mouth_amp, temperature=temperature, blink=blink, seed=seed)

    def from_features(self, x: np.ndarray, f0: np.ndarray, *, mouth_amp: float | None = None,
                      temperature: float | None = None, blink: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """Expression (T, 64) from stored features: x (2T, D) of the kind this model was trained on (`self.kind`:
        "mel" or "hubert"), f0 (2T,) Hz — e.g. a dataset clip's own columns."""
        from training.a2m import predict_motion

        temp = self.params.temperature if temperature is None else temperature
        with torch.inference_mode():
            exp = predict_motion(self.net, x, f0, mouth_amp=mouth_amp, blink=blink, temperature=temp, seed=seed)
        return np.asarray(exp, np.float32)


class _RecordingProcessor:
    """Wraps the HeadAnimator's ClipProcessor to keep the last ClipRecord (its torso, matte and plate)."""

    def __init__(self, inner: Any) -> None:
        self._inner, self.last = inner, None

    def __call__(self, *a, **kw):
        self.last = self._inner(*a, **kw)
        return self.last

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class Animator:
    """The loaded models (HeadAnimator + optional A2M) and the processed sources with their static layers."""

    def __init__(self, head: HeadAnimator, a2m: A2MModel | None = None, htbsr: Any = None) -> None:
        self.head, self.a2m, self.htbsr = head, a2m, htbsr
        self._rec = _RecordingProcessor(head.processor)
        head._processor = self._rec
        self._layers: dict[str, SourceLayers] = {}

    @classmethod
    def load(cls, model: str | None, cfg: Any = None, *, a2m: str | None = None, head: str | None = None,
             htbsr: str | None = "auto", need_a2m: bool = True, face_model: Any = None,
             device: str | None = None) -> Animator:
        """Load the stages: `head` (motion run; default the latest under `model`, or the one a named `htbsr` run
        was trained over), `a2m` when `need_a2m`, and the compositor (`choose_htbsr`)."""
        from pipeline.config import load_config
        from pipeline.htbsr_compose import CompositorError, HTBSRCompositor

        cfg = cfg or load_config()
        named_htbsr = htbsr not in (None, "auto", "none")
        if model is None and not ((head or named_htbsr) and (a2m or not need_a2m)):
            model = cfg.training.storage_path
            if model is None:
                raise AnimateError("--model: give the runs folder holding the trained stages (or --head/--a2m runs)")
        if named_htbsr and not head:
            head = htbsr_motion(find_stage_checkpoints(model, {"htbsr": htbsr})["htbsr"], model)
        needed = {"motion": head, **({"a2m": a2m} if need_a2m else {})}
        ckpts = find_stage_checkpoints(model, needed)
        comp_ckpt = choose_htbsr(model, htbsr, ckpts["motion"])
        try:
            anim = HeadAnimator.from_checkpoint(ckpts["motion"], cfg, runs=".", face_model=face_model, device=device)
            comp = None if comp_ckpt is None else HTBSRCompositor(comp_ckpt, device=anim.device)
        except (RenderHeadError, CompositorError) as exc:
            raise AnimateError(str(exc)) from None
        if comp is not None and comp.params.image_size != anim.p.image_size:
            raise AnimateError(f"--htbsr {comp_ckpt}: trained on {comp.params.image_size}² heads, the motion run "
                               f"renders {anim.p.image_size}²; give --htbsr none or a matching run")
        return cls(anim, A2MModel(ckpts["a2m"], cfg) if need_a2m else None, comp)

    @property
    def compositor(self) -> str:
        """"htbsr" (the learned compositor) or "static" (`compose`)."""
        return "static" if self.htbsr is None else "htbsr"

    def source(self, image: str | os.PathLike | np.ndarray) -> tuple[Source, SourceLayers]:
        self._rec.last = None
        try:
            src = self.head.source(image)
        except RenderHeadError as exc:
            raise AnimateError(str(exc)) from None
        if src.key not in self._layers:
            if self._rec.last is None:  # processed earlier by the bare HeadAnimator: no record kept
                raise AnimateError(f"--source {src.path}: processed without its torso and plate (a source cache?); "
                                   "run without a source cache")
            self._layers[src.key] = layers_from_record(self._rec.last)
        return src, self._layers[src.key]

    def audio_motion(self, audio: np.ndarray, t: int, *, mouth_amp: float | None = None,
                     temperature: float | None = None, blink: str = "none", seed: int = 0) -> Motion:
        if self.a2m is None:
            raise AnimateError("--audio needs an a2m model; this animator was loaded without one")
        tm = time.perf_counter()
        exp = self.a2m(audio, t, mouth_amp=mouth_amp, temperature=temperature, blink=blink_schedule(t, blink),
                       seed=seed)
        return Motion(exp=exp[:t], cams=None, fps=FPS, audio=audio, kind="audio", seconds=time.perf_counter() - tm)

    def video_motion(self, video: str | os.PathLike, max_frames: int | None = None) -> Motion:
        try:
            return self.head.drive_video(video, max_frames)
        except RenderHeadError as exc:
            raise AnimateError(str(exc)) from None

    def with_pose(self, motion: Motion, pose_video: str | os.PathLike, layers: SourceLayers) -> Motion:
        """`motion` with the head pose of `pose_video` (fitted like a driving video), aligned so that its first
        frame is the source's pose (`align_pose`); its expressions are kept."""
        if layers.euler is None or layers.trans is None:
            raise AnimateError("--pose: the source's fitted pose is unknown (a source cache without it?); run "
                               "without a source cache")
        try:
            pm = self.head.drive_video(pose_video, len(motion))
        except RenderHeadError as exc:
            raise AnimateError(str(exc).replace("--video", "--pose")) from None
        euler, trans, cams = align_pose(layers.euler, layers.trans, pm.euler, pm.trans, len(motion))
        return dataclasses.replace(motion, cams=cams, euler=euler, trans=trans)

    def iter_frames(self, src: Source, layers: SourceLayers, motion: Motion, background: np.ndarray | None = None,
                    chunk: int = 16, compositor: Callable[..., np.ndarray] | None = None) -> Iterator[dict[str, Any]]:
        """Per chunk: "frames" (n, H, W, 3) uint8 composites, "opacity" (n, r, r), "start", and per-part
        seconds under "compose_s"."""
        bg = layers.plate if background is None else background
        learned = compositor is None and self.htbsr is not None
        fn = compositor or compose
        for part in self.head.iter_render(src, motion, chunk):
            t = time.perf_counter()
            if learned:
                sl = slice(part["start"], part["start"] + len(part["sr"]))
                kp = self.driving_keypoints(src, layers, motion.exp[sl],
                                            None if motion.euler is None else motion.euler[sl],
                                            None if motion.trans is None else motion.trans[sl])
                frames, alpha = self.htbsr(part["sr"], part["opacity"], layers.torso, layers.torso_alpha, bg,
                                           layers.kp, kp)
            else:
                frames = fn(part["sr"], part["opacity"], layers.torso, bg, layers.torso_alpha)
                alpha = None
            yield {"start": part["start"], "frames": frames, "opacity": part["opacity"], "alpha": alpha,
                   "compose_s": time.perf_counter() - t}

    def driving_keypoints(self, src: Source, layers: SourceLayers, exp: np.ndarray, euler: np.ndarray | None = None,
                          trans: np.ndarray | None = None) -> np.ndarray:
        """(n, 4, 2) torso-driving keypoints of frames with expressions `exp` and pose (euler, trans) (None = the
        source's pose): the source's tracked keypoints moved by the 3DMM (`pipeline.htbsr_compose`)."""
        from pipeline.htbsr_compose import driving_keypoints

        if layers.kp is None:
            raise AnimateError(f"--source {src.path}: its layers carry no keypoints (made without a record)")
        return driving_keypoints(self.head.face3d, layers.kp, src.id_coeff, src.exp, layers.euler, layers.trans,
                                 exp, euler, trans, int(src.crop.shape[0]))


# ---------------------------------------------------------------------------------------------
# the job


def _progress(stream) -> Callable[[int, int, float], None]:
    def say(done: int, total: int, elapsed: float) -> None:
        rate = done / elapsed if elapsed > 0 else float("nan")
        print(f"animate: {done}/{total} frames ({100 * done / max(total, 1):.0f}%), {rate:.1f} frames/s",
              file=stream, flush=True)
    return say


def align_pose(src_euler: np.ndarray, src_trans: np.ndarray, euler: np.ndarray, trans: np.ndarray,
               n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(euler (n, 3), trans (n, 3), EG3D cameras (n, 25)) of a pose sequence moved so its first frame is the source's
    pose: euler_t = src + (euler_t − euler_0) (angles added: exact for one axis, close for the few-degree
    turns of a talking head), the same for trans; a pose sequence shorter than n holds its last pose."""
    from preprocessing.fitting import eg3d_camera

    euler, trans = np.asarray(euler, np.float64), np.asarray(trans, np.float64)
    if len(euler) == 0:
        raise AnimateError("--pose: the pose video gave no frames")
    idx = np.minimum(np.arange(n), len(euler) - 1)
    e = np.asarray(src_euler, np.float64)[None] + euler[idx] - euler[0]
    t = np.asarray(src_trans, np.float64)[None] + trans[idx] - trans[0]
    return e.astype(np.float32), t.astype(np.float32), eg3d_camera(e, t).astype(np.float32)


def animate(model: str | os.PathLike | Animator | None, source: str | os.PathLike, out: str | os.PathLike, *,
            audio: str | os.PathLike | None = None, video: str | os.PathLike | None = None,
            bg: str | os.PathLike | None = None, pose: str | os.PathLike | None = None, cfg: Any = None,
            a2m: str | None = None, head: str | None = None,
            htbsr: str | None = "auto",
            mouth_amp: float | None = None, temperature: float | None = 0.2, blink: str = "none",
            max_frames: int | None = None, size: int | None = None, chunk: int = 16, seed: int = 0,
            face_model: Any = None, device: str | None = None, progress: Callable[[int, int, float], None] | None
            = None) -> dict[str, Any]:
    """Animate `source` with `audio` (A2M) or `video` (its fitted motion) into the mp4 `out`; returns a summary:
    frames, fps, size, motion, audio, seconds per part, frames_per_s, checkpoints, out."""
    from preprocessing.video import encode_mp4

    t_all = time.perf_counter()
    if (audio is None) == (video is None):
        raise AnimateError("give exactly one of --audio SPEECH.wav or --video DRIVING.mp4 "
                           f"(got {'both' if audio is not None else 'neither'})")
    if max_frames is not None and max_frames < 1:
        raise AnimateError(f"--max-frames must be >= 1, got {max_frames}")
    if size is not None and (size < 16 or size % 2):
        raise AnimateError(f"--size must be an even number of pixels >= 16, got {size}")
    if chunk < 1:
        raise AnimateError(f"--chunk must be >= 1, got {chunk}")
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise AnimateError(f"--out {out}: give a .mp4 file name")
    say = progress if progress is not None else _progress(sys.stderr)
    # cheap checks first: bad inputs fail before any model is loaded
    try:
        read_source_image(source)
    except RenderHeadError as exc:
        raise AnimateError(str(exc)) from None
    wav = t = None
    if audio is not None:
        wav, t = read_driving_audio(audio, max_frames)
    elif not Path(video).is_file():
        raise AnimateError(f"--video {video}: no such file; give a video of one talking face")
    if pose is not None and not Path(pose).is_file():
        raise AnimateError(f"--pose {pose}: no such file; give a video of one face whose head motion to follow")
    t0 = time.perf_counter()
    anim = model if isinstance(model, Animator) else Animator.load(
        None if model is None else str(model), cfg, a2m=a2m, head=head, htbsr=htbsr, need_a2m=audio is not None,
        face_model=face_model, device=device)
    t_load = time.perf_counter() - t0
    before = dict(anim.head.seconds)
    t0 = time.perf_counter()
    src, layers = anim.source(source)
    t_source = time.perf_counter() - t0
    if audio is not None:
        mot = anim.audio_motion(wav, t, mouth_amp=mouth_amp, temperature=temperature, blink=blink, seed=seed)
    else:
        mot = anim.video_motion(video, max_frames)
    if pose is not None:
        mot = anim.with_pose(mot, pose, layers)
    del wav
    out_size = int(size or layers.size)
    layers = layers.resized(out_size)
    background = layers.plate if bg is None else load_background(bg, out_size)
    total = len(mot)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.animate-{os.getpid()}.mp4")
    enc_tmp = tmp.with_name(f".{tmp.stem}.tmp.mp4")  # encode_mp4's own temporary name
    done, compose_s = [0], [0.0]
    t_loop = time.perf_counter()

    def frames():
        for part in anim.iter_frames(src, layers, mot, background, chunk):
            done[0] += len(part["frames"])
            compose_s[0] += part["compose_s"]
            say(done[0], total, time.perf_counter() - t_loop)
            yield part["frames"]

    try:
        encode_mp4(tmp, frames(), mot.fps, audio=mot.audio)
        if done[0] != total:
            raise AnimateError(f"rendered {done[0]} of {total} frames")
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        enc_tmp.unlink(missing_ok=True)
        raise
    loop = time.perf_counter() - t_loop
    sec = {k: round(anim.head.seconds[k] - before.get(k, 0.0), 4) for k in ("secc", "adapter", "render", "sr")}
    sec = {"load": round(t_load, 4), "source": round(t_source, 4), "motion": round(mot.seconds, 4), **sec,
           "compose": round(compose_s[0], 4)}
    sec["encode_and_other"] = round(max(loop - sum(sec[k] for k in ("secc", "adapter", "render", "sr", "compose")),
                                        0.0), 4)
    sec["total"] = round(time.perf_counter() - t_all, 4)
    return {"frames": done[0], "fps": mot.fps, "size": out_size, "motion": mot.kind, "audio": mot.audio is not None,
            "background": "plate" if bg is None else str(bg), "compositor": anim.compositor, "seconds": sec,
            "frames_per_s": round(done[0] / loop, 2) if loop > 0 else None,
            "checkpoints": {"motion": anim.head.checkpoint,
                            **({"htbsr": anim.htbsr.checkpoint} if anim.htbsr is not None else {}),
                            **({"a2m": anim.a2m.checkpoint} if anim.a2m is not None and audio is not None else {})},
            "out": str(out.resolve())}


def format_summary(s: dict[str, Any]) -> str:
    sec = s["seconds"]
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in sec.items() if k != "total")
    return (f"animate: {s['frames']} frames at {s['fps']:g} fps, {s['size']}² ({s['motion']} motion, audio "
            f"{'muxed' if s['audio'] else 'none'}, background {s['background']}, {s['compositor']} compositor) in {sec['total']:.2f} s "
            f"({parts}); {s['frames_per_s']} frames/s -> {s['out']}\n{json.dumps(s)}")


__all__ = ["AnimateError", "Animator", "A2MModel", "SourceLayers", "animate", "compose", "composed_alpha",
           "find_stage_checkpoints", "format_summary", "layers_from_record", "read_driving_audio"]
