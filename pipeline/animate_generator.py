"""`r3p animate` as an evaluation generator: a trained model for `r3p evaluate --model RUNS_DIR|RUN`.

`make_generator(name, cfg)` gives the baselines of `evaluation.generators` for their names and an
`AnimateGenerator` for anything else: the runs folder (the latest finished run of each stage, as
`r3p animate --model`) or a run / checkpoint folder.

Per evaluation item (`evaluation.generators.GenerationInput`):
- the source frame (the dataset's aligned crop) is processed as a photo by the animate pipeline (detect,
  fit, segment, inpainted torso, plate, I2P; once per distinct source frame); crops under 320² are
  upsampled first and the detector runs without its own upsampling (the face is a third of the crop);
- video items (self / cross reenactment): driven by the driving clip's stored expressions, EG3D cameras
  and fitted pose (the torso keypoints) — what `r3p animate --video` does after fitting the video;
- audio items: A2M on the clip's stored audio features (log-mel or HuBERT, as the A2M run was trained,
  and f0) over the span of the driving frames; the source's pose;
- the frames come out at the driving frames' size over the source's plate, with the htbsr compositor
  when the runs hold one over the motion run (`--htbsr auto`), else the static torso.

The generated frames' geometry is measured, never assumed: `refit` runs the project's own tracker and 3DMM fit
on them (as `r3p animate --video` fits a driving video: written to a temporary mp4, upsampled to 320² when
smaller, landmarks mapped back to the frames' pixels), so AED/APD/LMD/Sync-lm compare what the model made with
the driving clip. When no face is tracked in the generated frames, those metrics are recorded as not computed
with that reason (`evaluate.refit: false` skips the re-fit, with its own reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.generators import (BASELINES, GenerationInput, Generated, Generator, GeneratorNotAvailable,
                                   Geometry, load_generator)
from pipeline.animate import A2MModel, AnimateError, Animator, find_stage_checkpoints
from pipeline.render_head import Motion

FPS = 25.0
MIN_SOURCE = 320  # source crops smaller than this are upsampled before detection (face ≈ 1/3 of the crop ≈ 107 px)


class AnimateGenerator:
    """A loaded animate pipeline (motion run, optional a2m and htbsr runs) behind the `Generator` interface."""

    def __init__(self, model: str, cfg: Any, *, face_model: Any = None, device: str | None = None,
                 chunk: int = 16) -> None:
        self.name, self.chunk = model, chunk
        self.refit_frames = bool(getattr(cfg.evaluate, "refit", True))
        self.refit_error: str | None = None  # why the last item's frames have no geometry
        if not Path(model).exists():
            raise GeneratorNotAvailable(f"--model {model!r}: not a baseline ({'|'.join(BASELINES)}) and no such "
                                        "folder; give the runs folder of `r3p train` (or a run folder)")
        # a dataset crop's face spans about a third of it (≥ 107 px once upsampled to MIN_SOURCE): the detector
        # needs no image upsampling, which on such large faces lowers dlib's scores below its threshold
        cfg = cfg.model_copy(deep=True)
        cfg.landmarks.upsample = 0
        try:
            self.anim = Animator.load(model, cfg, need_a2m=False, face_model=face_model, device=device)
        except AnimateError as exc:
            raise GeneratorNotAvailable(f"--model {model}: {exc}") from None
        self.no_a2m: str | None = None
        try:
            self.anim.a2m = A2MModel(find_stage_checkpoints(model, {"a2m": None})["a2m"], cfg)
        except AnimateError as exc:  # video protocols still run; audio items say why they cannot
            self.no_a2m = str(exc)
        a2m = "none" if self.anim.a2m is None else self.anim.a2m.checkpoint
        comp = "static torso" if self.anim.htbsr is None else f"htbsr {self.anim.htbsr.checkpoint}"
        self.identity = f"r3p animate: motion {self.anim.head.checkpoint}; a2m {a2m}; compositor {comp}"

    def _audio_exp(self, item: GenerationInput, t: int) -> np.ndarray:
        a2m = self.anim.a2m
        if a2m is None:
            raise ValueError(f"model {self.name} has no a2m run for the audio protocol ({self.no_a2m})")
        kind = "hubert" if a2m.kind == "hubert" else "mel"
        if kind not in item.audio or "f0" not in item.audio:
            raise ValueError(f"the a2m run was trained on {kind} features; this clip has {sorted(item.audio)}")
        index = np.arange(t) if item.driving_index is None else np.asarray(item.driving_index, np.int64)
        i0, i1 = int(index[0]), int(index[-1]) + 1
        x, f0 = item.audio[kind][2 * i0:2 * i1], item.audio["f0"][2 * i0:2 * i1]
        if len(x) < 2 * (i1 - i0) or len(f0) < 2 * (i1 - i0):
            raise ValueError(f"the clip's {kind} features have {len(x) // 2} frames; the driving frames reach {i1}")
        exp = a2m.from_features(np.asarray(x, np.float32), np.asarray(f0, np.float32))
        return exp[index - i0]

    def motion(self, item: GenerationInput) -> Motion:
        """The driving sequence of one item: A2M expressions (audio) or the clip's stored geometry (video)."""
        t = len(item.driving_frames)
        if item.mode == "audio":
            return Motion(exp=self._audio_exp(item, t), cams=None, fps=FPS, kind="audio")
        g = item.driving_geometry
        pose = g.trans is not None and g.cams is not None
        return Motion(exp=np.asarray(g.exp, np.float32), cams=None if g.cams is None else np.asarray(g.cams, np.float32),
                      fps=FPS, kind="video", euler=np.asarray(g.euler, np.float32) if pose else None,
                      trans=np.asarray(g.trans, np.float32) if pose else None)

    def __call__(self, item: GenerationInput) -> Generated:
        t, h, w = item.driving_frames.shape[:3]
        if h != w:
            raise ValueError(f"driving frames are {h}×{w}; the animate pipeline makes square crops")
        photo = item.source_frame
        if min(photo.shape[:2]) < MIN_SOURCE:  # the face detector needs ~80 px faces: a small crop is upsampled
            import cv2

            k = MIN_SOURCE / min(photo.shape[:2])
            photo = cv2.resize(photo, (round(photo.shape[1] * k), round(photo.shape[0] * k)),
                               interpolation=cv2.INTER_CUBIC)
        try:
            src, layers = self.anim.source(photo)
        except AnimateError as exc:
            raise ValueError(f"the source frame: {exc}") from None
        mot = self.motion(item)
        frames = np.concatenate([p["frames"] for p in self.anim.iter_frames(src, layers.resized(h), mot,
                                                                            chunk=self.chunk)])[:t]
        geometry = None
        if self.refit_frames:
            geometry, self.refit_error = self.refit(frames)
        else:
            self.refit_error = "evaluate.refit is off"
        return Generated(frames, geometry)

    def refit(self, frames: np.ndarray) -> tuple[Geometry | None, str | None]:
        """(Geometry of `frames` (T, H, W, 3) uint8 by the project's tracker and fit, None) or (None, why)."""
        import tempfile

        import cv2

        from pipeline.render_head import RenderHeadError
        from preprocessing.video import encode_mp4

        t, h, w = frames.shape[:3]
        k = max(1.0, MIN_SOURCE / min(h, w))  # the detector needs ~80 px faces
        up = frames if k == 1.0 else np.stack([cv2.resize(f, (round(w * k), round(h * k)),
                                                          interpolation=cv2.INTER_CUBIC) for f in frames])
        with tempfile.TemporaryDirectory(prefix="r3p-refit-") as d:
            path = Path(d) / "generated.mp4"
            encode_mp4(path, up, FPS, np.zeros(int(round(t / FPS * 16000)), np.float32), crf=12)
            try:
                mot = self.anim.head.drive_video(path, t)
            except RenderHeadError as exc:
                return None, f"no face tracked in the generated frames ({str(exc).split(': ', 1)[-1][:160]})"
        track = mot.geometry.track
        n = min(t, len(mot.exp))
        lm = np.asarray(track.landmarks[:n], np.float64)
        ok = np.isfinite(lm).all(axis=(1, 2))
        if n < t or not ok.all():
            return None, (f"the face was tracked in {int(ok.sum())} of {t} generated frames; geometry metrics need "
                          "every scored frame")
        return Geometry(lm * (np.array([w / up.shape[2], h / up.shape[1]])), np.asarray(mot.exp[:n], np.float64),
                        np.asarray(mot.euler[:n], np.float64)), None


def make_generator(name: str, cfg: Any, **kw: Any) -> Generator:
    """A baseline by name, else the animate pipeline of the runs/run folder `name`."""
    if name in BASELINES:
        return load_generator(name)
    return AnimateGenerator(name, cfg, **kw)


__all__ = ["AnimateGenerator", "make_generator"]
