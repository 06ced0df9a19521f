"""Hand-built ClipRecords and a stand-in processor for unit tests of the schema and the job mechanics.

`FakeProcessor` validates the input with the real decoder (`load_clip`, so bad files raise the
real VideoError) and then builds a small deterministic record instead of tracking and fitting.
Integration tests use the real processor (`pipeline.process.make_processor`).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from preprocessing.record import ClipRecord


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_record(source: str = "clip.mp4", n_frames: int = 3, seed: int = 0, audio: bool = True, size: int = 16,
                start_s: float = 0.0) -> ClipRecord:
    """A small, fully populated, deterministic ClipRecord (images `size`² pixels)."""
    rng = np.random.default_rng(seed)
    t = n_frames
    img = lambda: rng.integers(0, 255, (size, size, 3), dtype=np.uint8)  # noqa: E731
    grey = lambda: rng.integers(0, 255, (size, size), dtype=np.uint8)  # noqa: E731
    lm = rng.normal(size, 3, (t, 68, 2)).astype(np.float32)
    lm[0, 0, 0] = np.nan
    return ClipRecord(
        source=source, start_s=start_s, fps=25.0, n_frames=t, width=64, height=48,
        crop_box=np.array([1.0, 2.0, 33.0, 34.0]), crop_size=size, render_size=size, synthetic_face_model=True,
        face_fraction=1.0, id_coeff=rng.normal(0, 1, 80).astype(np.float32), background_jpeg=_jpeg(img()),
        background_inpainted_fraction=0.25, timestamps=start_s + np.arange(t) / 25.0, valid=np.ones(t, bool),
        landmarks=lm, exp=rng.normal(0, 1, (t, 64)).astype(np.float32),
        euler=rng.normal(0, 0.1, (t, 3)).astype(np.float32), trans=rng.normal(0, 1, (t, 3)).astype(np.float32),
        eg3d_cam=rng.normal(0, 1, (t, 25)).astype(np.float32), fit_rmse_px=rng.random(t).astype(np.float32),
        mouth_box=rng.random((t, 4)).astype(np.float32), eye_aspect_ratio=rng.random(t).astype(np.float32),
        mouth_opening=rng.random(t).astype(np.float32),
        frame_jpeg=[_jpeg(img()) for _ in range(t)], secc_png=[_png(img()) for _ in range(t)],
        pncc_png=[_png(img()) for _ in range(t)], person_png=[_png(grey()) for _ in range(t)],
        seg_png=[_png((grey() % 3).astype(np.uint8)) for _ in range(t)],
        torso_jpeg=[_jpeg(img()) for _ in range(t)], composite_jpeg=[_jpeg(img()) for _ in range(t)],
        mel=rng.normal(0, 1, (2 * t, 80)).astype(np.float32) if audio else None,
        f0=rng.random(2 * t).astype(np.float32) if audio else None,
        voiced=(rng.random(2 * t) > 0.5) if audio else None,
        rms=rng.random(2 * t).astype(np.float32) if audio else None, hubert=None,
        timings={"decode": 0.01, "fit": 0.02},
    )


class FakeProcessor:
    """`proc(path, start_s, end_s) -> ClipRecord`: real input validation, synthetic content."""

    def __init__(self, cfg=None) -> None:
        from preprocessing.video import VideoLimits

        self.limits = VideoLimits(**cfg.video.model_dump()) if cfg is not None else VideoLimits()

    def __call__(self, path, start_s: float = 0.0, end_s: float | None = None) -> ClipRecord:
        from preprocessing.video import load_clip

        if os.environ.get("R3P_FAKE_CRASH") and Path(path).name == os.environ["R3P_FAKE_CRASH"]:
            segfault()  # a native crash in a decoder
        clip = load_clip(path, self.limits, start_s=start_s, end_s=end_s)
        seed = int(hashlib.sha1(f"{Path(path).name}|{start_s}".encode()).hexdigest()[:8], 16)
        return make_record(str(path), n_frames=min(clip.n_frames, 8), seed=seed, audio=clip.audio is not None,
                           start_s=start_s)


def make_fake_processor(cfg) -> FakeProcessor:
    return FakeProcessor(cfg)


def segfault() -> None:
    """Crash this process the way a bug in native code does: SIGSEGV (a read of address 0)."""
    import ctypes

    ctypes.string_at(0)


def fake_audio_stage() -> None:
    """Stands for a processing stage that crashes in native code (as librosa's JIT'd YIN did)."""
    segfault()


class SegfaultingProcessor(FakeProcessor):
    """A processor whose every clip crashes its worker (a broken environment)."""

    def __call__(self, path, start_s: float = 0.0, end_s: float | None = None) -> ClipRecord:
        fake_audio_stage()
        raise AssertionError("unreachable")


def make_segfaulting_processor(cfg) -> SegfaultingProcessor:
    return SegfaultingProcessor(cfg)


class MarkingProcessor:
    """The real processor, plus marker files for tests that must act while a clip is in flight.

    In `$R3P_TEST_MARKS`: `start-<node id>-<clip name>` when a clip starts; while a file
    `hold-<node id>` exists, clips on that node wait (up to 10 minutes) before processing, so a test
    can kill that node with a clip certainly unfinished."""

    def __init__(self, cfg) -> None:
        from pipeline.process import make_processor

        self.inner = make_processor(cfg)

    def __call__(self, path, start_s: float = 0.0, end_s: float | None = None) -> ClipRecord:
        import time

        import ray

        marks = Path(os.environ["R3P_TEST_MARKS"])
        node = ray.get_runtime_context().get_node_id()
        (marks / f"start-{node}-{Path(path).stem}").touch()
        deadline = time.monotonic() + 600
        while (marks / f"hold-{node}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.inner(path, start_s, end_s)


def make_marking_processor(cfg) -> MarkingProcessor:
    return MarkingProcessor(cfg)
