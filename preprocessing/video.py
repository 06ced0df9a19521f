"""Video and audio I/O: probe, decode resampled to a fixed frame rate, and 16 kHz mono audio.

Conventions (Real3D-Portrait / GeneFace++): video at 25 fps, audio mono float32 at 16 kHz, so one
video frame spans exactly 640 audio samples.

Frame-rate resampling is by presentation timestamps, which handles variable-frame-rate input:
source frame i is shown on [s_i, s_{i+1}) where s_i is its start time relative to the first
frame; output frame k samples time t_k = k / fps and takes the source frame whose interval
contains t_k (the last frame with s_i <= t_k + 1 ms; the millisecond absorbs container time-base
rounding and decord's float32 timestamps).

The video duration D is the span from the first frame's start to the last frame's end; the last
frame lasts as long as the median of the (up to 8) intervals before it, which for constant-rate
input is exactly 1 / source fps. D is rounded to 0.1 ms. The number of output frames is
``floor(D * fps + 1e-6)`` (`n_output_frames`), so every t_k lies inside the video.

Audio is decoded by the ffmpeg binary that ships with imageio-ffmpeg (``-ac 1 -ar 16000 -f f32le``)
and aligned to the frames by `align_audio`: shifted by the audio stream's start offset relative
to the video stream (zeros in front when the audio starts later, leading samples dropped when it
starts earlier), then zero-padded or trimmed at the end to ``round(n_frames * sample_rate / fps)``
samples (n_frames * 640 at 25 fps / 16 kHz).

Frames come from decord (`DecordDecoder`), behind the small `Decoder` interface. Every failure a
user can cause (missing, empty, truncated or non-video files, inputs outside `VideoLimits`) is
raised as `VideoError` with a machine-readable `reason`; decord/ffmpeg exceptions never escape.
Known decord 0.6 quirks handled here: rotated videos (display-matrix side data) decode to wrong
shapes and `get_batch` fails, so those are decoded through an ffmpeg pipe instead; `get_batch`
may return a torch/other tensor when a global `decord.bridge` is set; timestamps are float32.
"""

from __future__ import annotations

import itertools

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

TARGET_FPS = 25.0
TARGET_SAMPLE_RATE = 16000
TIMESTAMP_TOLERANCE_S = 1e-3
FFMPEG_PROBE_TIMEOUT_S = 60.0
FFMPEG_DECODE_TIMEOUT_S = 600.0

_HINTS = {
    "not_found": "check the path (and the corpus root it is relative to)",
    "empty_file": "re-download or re-export it",
    "unreadable": "the file is corrupt, truncated or not a video; re-download it or re-encode it "
    "with ffmpeg (e.g. `ffmpeg -i in.mp4 -c:v libx264 -c:a aac out.mp4`)",
    "no_video_stream": "the file holds no video stream (audio-only or another format); provide a "
    "video of the speaker",
    "no_audio": "this pipeline needs speech audio; provide a video with an audio track or set "
    "require_audio=false",
    "too_long": "cut it into shorter clips or raise max_duration_s",
    "too_large": "downscale it or raise max_side",
    "too_small": "provide a higher-resolution video or lower min_side",
    "too_few_frames": "provide a longer clip or lower min_frames",
}


class VideoError(Exception):
    """A video that cannot be used: `reason` is a short code, the message says what to do."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        hint = _HINTS.get(reason, "")
        msg = f"{self.path}: {detail or reason.replace('_', ' ')}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)

    def __reduce__(self):  # picklable across processes (Ray workers) with all attributes
        return (type(self), (self.path, self.reason, self.detail))


@dataclass(frozen=True)
class VideoLimits:
    """Acceptance limits for input videos (seconds, pixels, output frames)."""

    max_duration_s: float = 600.0
    max_side: int = 4096
    min_side: int = 64
    min_frames: int = 2
    require_audio: bool = True


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a video file; sizes are as displayed (after rotation)."""

    path: str
    duration_s: float  # first frame start to last frame end, rounded to 0.1 ms
    fps: float  # average source frame rate (frames per second)
    n_frames: int  # source frames
    width: int  # pixels
    height: int  # pixels
    has_audio: bool
    audio_sample_rate: int | None = None  # Hz, of the (first) audio stream
    codec: str | None = None  # video codec name as ffmpeg reports it, e.g. "h264"
    audio_codec: str | None = None
    audio_offset_s: float = 0.0  # audio stream start minus video stream start, seconds
    rotation_deg: int = 0  # display rotation (counter-clockwise degrees) applied when decoding


@dataclass
class FrameChunk:
    """Consecutive output frames: index of the first, sample times, source frames and RGB pixels."""

    start_index: int  # output index of frames[0]
    timestamps: np.ndarray  # (n,) float64 seconds, output sample times k / fps
    source_indices: np.ndarray  # (n,) int64 source frame picked for each output frame
    frames: np.ndarray  # (n, H, W, 3) uint8 RGB

    def __len__(self) -> int:
        return len(self.frames)


@runtime_checkable
class Decoder(Protocol):
    """Decoding backend: probe a file, stream frames resampled to `fps`, read mono audio."""

    def probe(self, path: str | os.PathLike) -> VideoInfo:
        """Stream facts of a video file; raises VideoError for unusable files."""
        ...

    def iter_frames(
        self,
        path: str | os.PathLike,
        fps: float = TARGET_FPS,
        chunk: int = 64,
        size: tuple[int, int] | None = None,
        *,
        info: VideoInfo | None = None,
        frame_range: tuple[int, int] | None = None,
    ) -> Iterator[FrameChunk]:
        """Frames resampled by timestamp to `fps`, in chunks of at most `chunk` frames; `frame_range`
        = (first, stop) output indices restricts them to a window (chunk indices count from `first`)."""
        ...

    def read_audio(self, path: str | os.PathLike, sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
        """Mono float32 audio in [-1, 1] at `sample_rate` Hz."""
        ...


# ---------------------------------------------------------------------------------------------
# Pure helpers (no I/O)


def n_output_frames(duration_s: float, fps: float = TARGET_FPS) -> int:
    """Number of output frames for a video of `duration_s` seconds at `fps`: floor(D·fps + 1e-6)."""
    return max(0, int(np.floor(duration_s * fps + 1e-6)))


def samples_per_video(n_frames: int, fps: float = TARGET_FPS, sample_rate: int = TARGET_SAMPLE_RATE) -> int:
    """Audio samples covering `n_frames` video frames: round(n_frames · sample_rate / fps)."""
    return int(round(n_frames * sample_rate / fps))


def stream_duration(starts: np.ndarray, last_frame_s: float | None = None) -> float:
    """Video duration in seconds from frame start times (s): span plus the last frame's length."""
    starts = np.asarray(starts, dtype=np.float64)
    if len(starts) == 0:
        return 0.0
    if len(starts) >= 2:
        last = float(np.median(np.diff(starts[-9:])))
    else:
        last = float(last_frame_s) if last_frame_s and last_frame_s > 0 else 1.0 / TARGET_FPS
    return round(float(starts[-1] - starts[0]) + last, 4)


def resample_indices(
    starts: np.ndarray, n_out: int, fps: float = TARGET_FPS, tol_s: float = TIMESTAMP_TOLERANCE_S
) -> np.ndarray:
    """Source frame index (n_out,) int64 for output times k / fps, from source start times (s)."""
    starts = np.maximum.accumulate(np.asarray(starts, dtype=np.float64))
    t = np.arange(n_out, dtype=np.float64) / fps
    idx = np.searchsorted(starts, t + tol_s, side="right") - 1
    return np.clip(idx, 0, max(len(starts) - 1, 0)).astype(np.int64)


def align_audio(
    audio: np.ndarray,
    n_frames: int,
    fps: float = TARGET_FPS,
    sample_rate: int = TARGET_SAMPLE_RATE,
    offset_s: float = 0.0,
) -> np.ndarray:
    """Audio (float32) matched to `n_frames` video frames: shifted by `offset_s`, padded/trimmed at the end.

    `offset_s` is when the audio starts relative to the first video frame (seconds): positive puts
    that many seconds of zeros in front, negative drops leading samples. Then the end is
    zero-padded or trimmed to round(n_frames · sample_rate / fps) samples (640 per frame at
    25 fps, 16 kHz).
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    shift = int(round(offset_s * sample_rate))
    if shift > 0:
        audio = np.concatenate([np.zeros(shift, np.float32), audio])
    elif shift < 0:
        audio = audio[-shift:]
    n = samples_per_video(n_frames, fps, sample_rate)
    if len(audio) >= n:
        return np.ascontiguousarray(audio[:n])
    return np.concatenate([audio, np.zeros(n - len(audio), np.float32)])


def check_limits(info: VideoInfo, limits: VideoLimits, fps: float = TARGET_FPS,
                 window: tuple[int, int] | None = None) -> int:
    """Raise VideoError if `info` is outside `limits`; return the number of output frames at `fps`.

    With `window` = (first, stop) output frames, the duration and frame-count limits apply to the
    window (so a long video can be processed window by window) and its length is returned."""
    n_out = n_output_frames(info.duration_s, fps)
    duration = info.duration_s
    if window is not None:
        first, stop = window
        if not 0 <= first < n_out:
            raise VideoError(info.path, "bad_window", f"window starts at {first / fps:.2f} s but the video lasts "
                             f"{info.duration_s:.2f} s; check clip_start/clip_end")
        n_out = min(stop, n_out) - first
        duration = n_out / fps
    if duration > limits.max_duration_s:
        raise VideoError(
            info.path, "too_long", f"duration {duration:.2f} s exceeds max_duration_s={limits.max_duration_s:g}; "
            "split it into windows (clip_start/clip_end)"
        )
    if max(info.width, info.height) > limits.max_side:
        raise VideoError(
            info.path, "too_large", f"resolution {info.width}x{info.height} exceeds max_side={limits.max_side}"
        )
    if min(info.width, info.height) < limits.min_side:
        raise VideoError(
            info.path, "too_small", f"resolution {info.width}x{info.height} is below min_side={limits.min_side}"
        )
    if min(n_out, info.n_frames) < limits.min_frames:
        raise VideoError(
            info.path,
            "too_few_frames",
            f"{info.n_frames} source frame(s), {n_out} at {fps:g} fps; min_frames={limits.min_frames}",
        )
    if limits.require_audio and not info.has_audio:
        raise VideoError(info.path, "no_audio", "no audio stream")
    return n_out


# ---------------------------------------------------------------------------------------------
# ffmpeg (the binary shipped with imageio-ffmpeg)


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: imageio-ffmpeg's, else one on PATH."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001 - fall back to a system ffmpeg
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise RuntimeError("no ffmpeg binary: install imageio-ffmpeg (pip install imageio-ffmpeg)") from None
        return exe


def _ffmpeg_input(path: Path) -> str:
    # "file:" stops ffmpeg from reading "a:b" in a file name as a protocol.
    return "file:" + str(path.resolve())


@dataclass
class _Streams:
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_sample_rate: int | None = None
    video_start: float | None = None
    audio_start: float | None = None
    container_start: float = 0.0
    rotation_deg: int = 0
    has_video: bool = False
    has_audio: bool = False


_STREAM_RE = re.compile(r"^\s*Stream #0:\d+\S*: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_START_RE = re.compile(r"start:? (-?\d+(?:\.\d+)?)")
_ROT_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)


def _parse_ffmpeg_listing(text: str) -> _Streams:
    s = _Streams()
    current = None  # kind of the stream whose indented block we are in
    for line in text.splitlines():
        if line.lstrip().startswith("Duration:"):
            m = _START_RE.search(line)
            if m:
                s.container_start = float(m.group(1))
            continue
        m = _STREAM_RE.match(line)
        if m:
            kind, rest = m.groups()
            current = None
            codec = rest.split(",")[0].split(" ")[0].strip() or None
            start = _START_RE.search(rest)
            if kind == "Video" and "attached pic" not in rest and not s.has_video:
                s.has_video, s.video_codec, current = True, codec, "Video"
                s.video_start = float(start.group(1)) if start else None
            elif kind == "Audio" and not s.has_audio:
                s.has_audio, s.audio_codec = True, codec
                hz = re.search(r"(\d+) Hz", rest)
                s.audio_sample_rate = int(hz.group(1)) if hz else None
                s.audio_start = float(start.group(1)) if start else None
            continue
        if current == "Video":
            r = _ROT_RE.search(line)
            if r:
                s.rotation_deg = int(round(float(r.group(1)))) % 360
    return s


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoError(p, "not_found", "file not found")
    if not p.is_file():
        raise VideoError(p, "not_found", "not a regular file")
    if p.stat().st_size == 0:
        raise VideoError(p, "empty_file", "empty file (0 bytes)")
    return p


def _ffmpeg_streams(path: Path) -> _Streams:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", _ffmpeg_input(path)]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise VideoError(path, "unreadable", f"ffmpeg probe timed out after {FFMPEG_PROBE_TIMEOUT_S:g} s") from None
    text = res.stderr.decode("utf-8", errors="replace")
    if "Input #0" not in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        raise VideoError(path, "unreadable", f"not a readable media file ({lines[-1] if lines else 'ffmpeg failed'})")
    s = _parse_ffmpeg_listing(text)
    if not s.has_video:
        what = f"audio only ({s.audio_codec})" if s.has_audio else "no streams ffmpeg can use"
        raise VideoError(path, "no_video_stream", f"no video stream: {what}")
    return s


def read_audio(
    path: str | os.PathLike, sample_rate: int = TARGET_SAMPLE_RATE, timeout_s: float = FFMPEG_DECODE_TIMEOUT_S
) -> np.ndarray:
    """Mono float32 audio in [-1, 1] at `sample_rate` Hz from the first audio stream (ffmpeg)."""
    p = _check_path(path)
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", _ffmpeg_input(p),
        "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(int(sample_rate)), "-f", "f32le", "-",
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise VideoError(p, "unreadable", f"audio decoding timed out after {timeout_s:g} s") from None
    err = res.stderr.decode("utf-8", errors="replace")
    if res.returncode != 0:
        if "matches no streams" in err:
            raise VideoError(p, "no_audio", "no audio stream")
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        raise VideoError(p, "unreadable", f"audio decoding failed ({lines[-1] if lines else 'ffmpeg failed'})")
    audio = np.frombuffer(res.stdout, dtype="<f4")
    if audio.size == 0:
        raise VideoError(p, "no_audio", "the audio stream decodes to 0 samples")
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _ffmpeg_frame_pipe(path: Path, width: int, height: int, size: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """Every source frame in presentation order, auto-rotated (and scaled), as (H, W, 3) uint8."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", _ffmpeg_input(path),
           "-map", "0:v:0", "-an", "-sn", "-fps_mode", "passthrough"]
    if size is not None:
        cmd += ["-vf", f"scale={width}:{height}"]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    nbytes = width * height * 3
    # stderr is discarded: an unread pipe could fill up on a damaged stream and block ffmpeg
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        while True:
            buf = proc.stdout.read(nbytes)
            if len(buf) < nbytes:
                return
            yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
    finally:
        proc.kill()
        proc.communicate()


# ---------------------------------------------------------------------------------------------
# decord


def _to_numpy(x) -> np.ndarray:
    """decord NDArray (or a tensor when a global decord.bridge is set) → numpy."""
    if hasattr(x, "asnumpy"):
        return x.asnumpy()
    if hasattr(x, "numpy"):
        return x.cpu().numpy() if hasattr(x, "cpu") else x.numpy()
    return np.asarray(x)


class DecordDecoder:
    """Decoder on decord's VideoReader (frames, timestamps) and the ffmpeg binary (probe, audio)."""

    def __init__(self, num_threads: int = 0) -> None:
        import decord  # noqa: F401 - fail at construction if missing

        self.num_threads = int(num_threads)

    def _open(self, path: Path, size: tuple[int, int] | None = None):
        import decord

        kwargs = {"num_threads": self.num_threads}
        if size is not None:
            kwargs["width"], kwargs["height"] = int(size[0]), int(size[1])
        try:
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), **kwargs)
        except Exception as e:  # noqa: BLE001 - decord raises DECORDError/RuntimeError on bad input
            raise VideoError(path, "unreadable", f"decord cannot open it ({_short(e)})") from None
        if len(vr) == 0:
            raise VideoError(path, "unreadable", "the video stream has no decodable frames")
        return vr

    @staticmethod
    def _starts(path: Path, vr) -> tuple[np.ndarray, float]:
        try:
            ts = np.asarray(vr.get_frame_timestamp(np.arange(len(vr))), dtype=np.float64).reshape(-1, 2)
        except Exception as e:  # noqa: BLE001
            raise VideoError(path, "unreadable", f"cannot read frame timestamps ({_short(e)})") from None
        starts = ts[:, 0] - ts[0, 0]
        return starts, float(ts[-1, 1] - ts[-1, 0])

    def probe(self, path: str | os.PathLike) -> VideoInfo:
        """Stream facts (seconds, fps, pixels, Hz) of a video file; raises VideoError if unusable."""
        p = _check_path(path)
        s = _ffmpeg_streams(p)
        vr = self._open(p)
        starts, last = self._starts(p, vr)
        duration = stream_duration(starts, last)
        n = len(vr)
        try:
            fps = float(vr.get_avg_fps())
        except Exception:  # noqa: BLE001
            fps = float("nan")
        if not np.isfinite(fps) or fps <= 0:
            fps = n / duration if duration > 0 else 0.0
        if s.rotation_deg:
            # decord mis-decodes rotated streams; ask ffmpeg for the displayed size.
            h, w = _ffmpeg_display_size(p)
        else:
            h, w = _decord_size(p, vr)
        del vr
        v0 = s.video_start if s.video_start is not None else s.container_start
        a0 = s.audio_start if s.audio_start is not None else s.container_start
        return VideoInfo(
            path=str(p),
            duration_s=duration,
            fps=fps,
            n_frames=n,
            width=w,
            height=h,
            has_audio=s.has_audio,
            audio_sample_rate=s.audio_sample_rate,
            codec=s.video_codec,
            audio_codec=s.audio_codec,
            audio_offset_s=round(a0 - v0, 6) if s.has_audio else 0.0,
            rotation_deg=s.rotation_deg,
        )

    def iter_frames(
        self,
        path: str | os.PathLike,
        fps: float = TARGET_FPS,
        chunk: int = 64,
        size: tuple[int, int] | None = None,
        *,
        info: VideoInfo | None = None,
        frame_range: tuple[int, int] | None = None,
    ) -> Iterator[FrameChunk]:
        """RGB uint8 frames resampled by timestamp to `fps`, ≤ `chunk` at a time; `size` = (width, height) px.

        `frame_range` = (first, stop): only output frames first..stop-1 (a window of the video);
        `start_index` then counts from `first` and `timestamps` stay in source seconds."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (width, height) in pixels, got {size}")
        p = _check_path(path)
        if info is None:
            info = self.probe(p)
        # open and index now, so a bad file fails at the call rather than at the first next()
        vr = self._open(p, None if info.rotation_deg else size)
        starts, last = self._starts(p, vr)
        n_out = n_output_frames(stream_duration(starts, last), fps)
        idx = resample_indices(starts, n_out, fps)
        first = 0
        if frame_range is not None:
            first, stop = int(frame_range[0]), int(frame_range[1])
            if not 0 <= first < stop:
                raise ValueError(f"frame_range must be (first, stop) with 0 <= first < stop, got {frame_range}")
            idx = idx[first:stop]
        if info.rotation_deg:
            del vr
            w, h = (int(size[0]), int(size[1])) if size is not None else (info.width, info.height)
            return self._chunks_ffmpeg(p, idx, len(starts), fps, chunk, w, h, size is not None, first)
        return self._chunks_decord(p, vr, idx, fps, chunk, first)

    @staticmethod
    def _chunks_decord(p: Path, vr, idx: np.ndarray, fps: float, chunk: int, first: int = 0) -> Iterator[FrameChunk]:
        for c0 in range(0, len(idx), chunk):
            sel = idx[c0 : c0 + chunk]
            uniq, inv = np.unique(sel, return_inverse=True)
            try:
                batch = _to_numpy(vr.get_batch(uniq.tolist()))
            except Exception as e:  # noqa: BLE001
                raise VideoError(
                    p, "unreadable", f"decoding source frames {uniq[0]}..{uniq[-1]} failed ({_short(e)})"
                ) from None
            yield FrameChunk(
                start_index=c0,
                timestamps=np.arange(first + c0, first + c0 + len(sel), dtype=np.float64) / fps,
                source_indices=sel.copy(),
                frames=np.ascontiguousarray(batch[inv.reshape(-1)], dtype=np.uint8),
            )

    @staticmethod
    def _chunks_ffmpeg(
        p: Path, idx: np.ndarray, n_src: int, fps: float, chunk: int, w: int, h: int, scale: bool, first: int = 0
    ) -> Iterator[FrameChunk]:
        # Rotated streams: timestamps from decord's index (no decoding needed), pixels from ffmpeg.
        frames_in = _ffmpeg_frame_pipe(p, w, h, (w, h) if scale else None)
        try:
            pos, frame = -1, None
            for c0 in range(0, len(idx), chunk):
                sel = idx[c0 : c0 + chunk]
                out = np.empty((len(sel), h, w, 3), np.uint8)
                for j, want in enumerate(sel):
                    while pos < want:
                        frame = next(frames_in, None)
                        if frame is None:
                            raise VideoError(p, "unreadable", f"ffmpeg stopped after {pos + 1} of {n_src} frames")
                        pos += 1
                    out[j] = frame
                yield FrameChunk(c0, np.arange(first + c0, first + c0 + len(sel), dtype=np.float64) / fps,
                                 sel.copy(), out)
        finally:
            frames_in.close()

    def read_audio(self, path: str | os.PathLike, sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
        """Mono float32 audio in [-1, 1] at `sample_rate` Hz (ffmpeg); VideoError 'no_audio' if none."""
        return read_audio(path, sample_rate)


def _ffmpeg_display_size(path: Path) -> tuple[int, int]:
    """(height, width) of the first displayed frame via ffmpeg, for rotated streams decord mis-sizes."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", _ffmpeg_input(path),
           "-map", "0:v:0", "-frames:v", "1", "-f", "image2pipe", "-c:v", "ppm", "-"]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise VideoError(path, "unreadable", "ffmpeg timed out decoding the first frame") from None
    m = re.match(rb"P6\s+(\d+)\s+(\d+)\s", res.stdout)
    if res.returncode != 0 or not m:
        raise VideoError(path, "unreadable", "ffmpeg cannot decode the first frame")
    return int(m.group(2)), int(m.group(1))


def _decord_size(path: Path, vr) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in vr[0].shape[:2])
    except Exception as e:  # noqa: BLE001
        raise VideoError(path, "unreadable", f"cannot decode the first frame ({_short(e)})") from None
    return h, w


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (type(e).__name__ + (": " + text if text else ""))[:200]


# ---------------------------------------------------------------------------------------------
# Convenience


@dataclass
class Clip:
    """A validated video: its info, output frame count at `fps`, aligned audio and a frame source."""

    info: VideoInfo
    fps: float
    n_frames: int  # output frames at fps
    audio: np.ndarray | None  # (n_frames · sample_rate / fps,) float32, None if the file has no audio
    sample_rate: int
    size: tuple[int, int] | None
    decoder: Decoder
    first_frame: int = 0  # output index in the whole video of this clip's frame 0 (windows)

    @property
    def start_s(self) -> float:
        """Source time of frame 0, seconds."""
        return self.first_frame / self.fps

    def chunks(self, chunk: int = 64) -> Iterator[FrameChunk]:
        """Frames at `fps` in chunks of at most `chunk` (can be iterated again)."""
        window = (self.first_frame, self.first_frame + self.n_frames)
        return self.decoder.iter_frames(self.info.path, self.fps, chunk, self.size, info=self.info,
                                        frame_range=window)

    def frames(self, max_bytes: int = 2 << 30) -> np.ndarray:
        """All frames (n_frames, H, W, 3) uint8; for short clips (refuses more than `max_bytes`)."""
        w, h = self.size if self.size is not None else (self.info.width, self.info.height)
        need = self.n_frames * w * h * 3
        if need > max_bytes:
            raise ValueError(f"{self.info.path}: {need / 2**20:.0f} MiB of frames exceeds max_bytes; iterate chunks()")
        parts = [c.frames for c in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros((0, h, w, 3), np.uint8)


def load_clip(
    path: str | os.PathLike,
    limits: VideoLimits | None = None,
    fps: float = TARGET_FPS,
    sample_rate: int = TARGET_SAMPLE_RATE,
    size: tuple[int, int] | None = None,
    decoder: Decoder | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> Clip:
    """Probe, check `limits`, read aligned audio (sample_rate Hz); frames decode lazily at `fps`.

    `start_s`/`end_s` select a window of the video (output frames round(start_s·fps) up to
    round(end_s·fps), clamped to the video's end); frames and audio then cover only the window."""
    limits = limits or VideoLimits()
    decoder = decoder or DecordDecoder()
    info = decoder.probe(path)
    window = None
    if start_s or end_s is not None:
        if start_s < 0 or (end_s is not None and end_s <= start_s):
            raise VideoError(info.path, "bad_window", f"window {start_s}..{end_s} s is empty or negative; "
                             "clip_end must be greater than clip_start >= 0")
        first = int(round(start_s * fps))
        window = (first, int(round(end_s * fps)) if end_s is not None else 1 << 62)
    n_out = check_limits(info, limits, fps, window)
    first = window[0] if window else 0
    audio = None
    if info.has_audio:
        try:
            raw = decoder.read_audio(info.path, sample_rate)
        except VideoError as e:
            if e.reason != "no_audio" or limits.require_audio:
                raise
        else:
            audio = align_audio(raw, first + n_out, fps, sample_rate, offset_s=info.audio_offset_s)
            audio = np.ascontiguousarray(audio[samples_per_video(first, fps, sample_rate):])
    return Clip(info=info, fps=fps, n_frames=n_out, audio=audio, sample_rate=sample_rate, size=size, decoder=decoder,
                first_frame=first)


def encode_mp4(path: str | os.PathLike, frames, fps: float, audio: np.ndarray | None = None,
               sample_rate: int = TARGET_SAMPLE_RATE, crf: int = 18) -> Path:
    """Encode RGB uint8 frames (an iterable of (H, W, 3) or (n, H, W, 3) arrays) as H.264 yuv420p
    mp4 at `fps`, with `audio` (mono float32 in [-1, 1]) as AAC; frames are streamed to ffmpeg, so
    memory does not grow with length. Written to a temporary name, then renamed."""
    import tempfile

    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    it = iter(frames)
    first = np.asarray(next(it))
    if first.ndim == 3:
        first = first[None]
    if first.dtype != np.uint8 or first.shape[-1] != 3 or first.shape[1] % 2 or first.shape[2] % 2:
        raise ValueError(f"frames must be uint8 (n, H, W, 3) with even H and W, got {first.dtype} {first.shape}")
    h, w = first.shape[1:3]
    with tempfile.TemporaryDirectory() as td:
        cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-"]
        if audio is not None:
            wav = Path(td) / "audio.wav"
            soundfile.write(wav, np.clip(np.asarray(audio, np.float32), -1, 1), sample_rate, subtype="FLOAT")
            cmd += ["-i", str(wav), "-c:a", "aac", "-b:a", "96k"]
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for chunk in itertools.chain([first], (np.asarray(f) for f in it)):  # streamed
                chunk = chunk[None] if chunk.ndim == 3 else chunk
                if chunk.shape[1:] != (h, w, 3) or chunk.dtype != np.uint8:
                    raise ValueError(f"all frames must be uint8 ({h}, {w}, 3), got {chunk.dtype} {chunk.shape[1:]}")
                proc.stdin.write(np.ascontiguousarray(chunk).tobytes())
        finally:
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            rc = proc.wait()
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed to encode {path}: {err.strip()[-500:]}")
    tmp.replace(path)
    return path
