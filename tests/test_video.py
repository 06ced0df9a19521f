"""Video/audio I/O: probe, timestamp resampling to 25 fps, chunking, 16 kHz audio, typed errors.

Every test video is written here with the ffmpeg binary from imageio-ffmpeg. Each frame carries
its source index as a 4×3 grid of black/white blocks (12 bits), so a test can read back which
source frame the decoder picked.
"""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from preprocessing.video import (
    Decoder,
    DecordDecoder,
    FrameChunk,
    VideoError,
    VideoLimits,
    align_audio,
    check_limits,
    ffmpeg_exe,
    load_clip,
    n_output_frames,
    read_audio,
    resample_indices,
    stream_duration,
)

W, H = 64, 48
GRID = (3, 4)  # rows, cols of code blocks → 12 bits


def code_frames(n: int, w: int = W, h: int = H) -> np.ndarray:
    """(n, h, w, 3) uint8 frames whose block pattern encodes the frame index."""
    rows, cols = GRID
    bh, bw = h // rows, w // cols
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        for b in range(rows * cols):
            if (i >> b) & 1:
                r, c = divmod(b, cols)
                frames[i, r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = 255
    return frames


def read_codes(frames: np.ndarray) -> np.ndarray:
    """Frame indices encoded by `code_frames`, read from decoded (n, h, w, 3) frames."""
    rows, cols = GRID
    n, h, w = frames.shape[:3]
    bh, bw = h // rows, w // cols
    gray = frames.astype(np.float32).mean(axis=3)
    codes = np.zeros(n, np.int64)
    for b in range(rows * cols):
        r, c = divmod(b, cols)
        # sample the block centre, away from edges blurred by chroma subsampling and scaling
        patch = gray[:, r * bh + bh // 4 : (r + 1) * bh - bh // 4, c * bw + bw // 4 : (c + 1) * bw - bw // 4]
        codes |= (patch.mean(axis=(1, 2)) > 127).astype(np.int64) << b
    return codes


def pts_expr(segments: list[tuple[int, int]]) -> str:
    """setpts expression (time base 1 ms) for segments of (n_frames, interval_ms)."""
    start_n, start_ms, parts = 0, 0, []
    for n, step in segments:
        parts.append((start_n + n, f"{start_ms}+(N-{start_n})*{step}"))
        start_n, start_ms = start_n + n, start_ms + n * step
    expr = parts[-1][1]
    for end_n, e in reversed(parts[:-1]):
        expr = f"if(lt(N,{end_n}),{e},{expr})"
    return expr


def make_video(
    path: Path,
    n: int,
    fps: float = 25.0,
    audio_hz: float | None = 440.0,
    size: tuple[int, int] = (W, H),
    vfr_segments: list[tuple[int, int]] | None = None,
    audio_offset_s: float = 0.0,
    stereo: bool = False,
    pre_input: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> Path:
    """Encode n coded frames as H.264/yuv420p (+ an AAC sine tone) with the ffmpeg binary."""
    w, h = size
    frames = code_frames(n, w, h)
    duration = n / fps if vfr_segments is None else sum(k * ms for k, ms in vfr_segments) / 1000
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-nostdin", *pre_input,
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    if audio_hz is not None:
        if audio_offset_s:
            cmd += ["-itsoffset", str(audio_offset_s)]
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={audio_hz}:sample_rate=44100:duration={duration}"]
    if vfr_segments is not None:
        cmd += ["-vf", f"settb=1/1000,setpts='{pts_expr(vfr_segments)}'", "-fps_mode", "vfr",
                "-enc_time_base", "1:1000"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "12", "-pix_fmt", "yuv420p", *extra]
    if audio_hz is not None:
        cmd += ["-c:a", "aac", "-ac", "2" if stereo else "1"]
    cmd.append(str(path))
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    return path


def decode_all(path, **kw) -> FrameChunk:
    chunks = list(DecordDecoder().iter_frames(path, chunk=10_000, **kw))
    assert len(chunks) == 1
    return chunks[0]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        "v25": make_video(d / "v25.mp4", 50, 25),
        "v30": make_video(d / "v30.mp4", 60, 30),
        "v50": make_video(d / "v50.mp4", 100, 50),
        "noaudio": make_video(d / "noaudio.mp4", 25, 25, audio_hz=None),
    }


# --------------------------------------------------------------------------------------------
# pure helpers


def test_output_frame_count_rule():
    assert n_output_frames(2.0, 25) == 50
    assert n_output_frames(0.04, 25) == 1
    assert n_output_frames(0.0399, 25) == 0
    assert n_output_frames(1.99, 25) == 49
    # float32 timestamps of a 30 fps, 60-frame video still give exactly 2 s
    starts = (np.arange(60) / 30).astype(np.float32)
    assert stream_duration(starts) == 2.0
    assert stream_duration(np.array([0.0]), 0.04) == 0.04


def test_resample_indices_by_timestamps():
    starts = np.arange(60) / 30
    idx = resample_indices(starts, 50, 25)
    np.testing.assert_array_equal(idx, np.floor(np.arange(50) * 30 / 25 + 1e-9).astype(int))
    # irregular: frames at 0, 0.1, 0.11, 0.3 s; output times 0, 0.04, 0.08, ..., 0.32
    idx = resample_indices(np.array([0.0, 0.1, 0.11, 0.3]), 9, 25)
    np.testing.assert_array_equal(idx, [0, 0, 0, 2, 2, 2, 2, 2, 3])
    # upsampling repeats frames
    np.testing.assert_array_equal(resample_indices(np.arange(5) / 10, 12, 25), [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4])


def test_align_audio_lengths_and_offset():
    a = np.ones(1000, np.float32)
    assert align_audio(a, 10).shape == (6400,)
    assert align_audio(np.ones(9000, np.float32), 10).shape == (6400,)
    out = align_audio(a, 10)
    assert out.dtype == np.float32 and out[:1000].min() == 1 and out[1000:].max() == 0
    shifted = align_audio(a, 10, offset_s=0.01)  # audio starts 160 samples after the video
    assert shifted[:160].max() == 0 and shifted[160:1160].min() == 1
    early = align_audio(np.arange(1000, dtype=np.float32), 1, offset_s=-0.01)
    assert early[0] == 160 and len(early) == 640
    assert align_audio(a, 3, fps=30, sample_rate=16000).shape == (1600,)


def test_video_error_pickles_with_attributes():
    e = VideoError("/data/a.mp4", "no_audio", "no audio stream")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.reason, str(e2)) == (e.path, e.reason, str(e))
    assert "a.mp4" in str(e) and "require_audio=false" in str(e)


def test_decord_decoder_implements_protocol():
    assert isinstance(DecordDecoder(), Decoder)


# --------------------------------------------------------------------------------------------
# probe and frames


def test_probe(videos):
    d = DecordDecoder()
    info = d.probe(videos["v25"])
    assert info.duration_s == pytest.approx(2.0, abs=1e-3)
    assert info.fps == pytest.approx(25.0)
    assert (info.n_frames, info.width, info.height) == (50, W, H)
    assert info.has_audio and info.audio_sample_rate == 44100
    assert info.codec == "h264" and info.audio_codec == "aac"
    assert info.rotation_deg == 0 and abs(info.audio_offset_s) < 1e-3
    info30 = d.probe(videos["v30"])
    assert info30.fps == pytest.approx(30.0) and info30.n_frames == 60
    assert info30.duration_s == pytest.approx(2.0, abs=1e-3)
    silent = d.probe(videos["noaudio"])
    assert not silent.has_audio and silent.audio_sample_rate is None
    assert silent.duration_s == pytest.approx(1.0, abs=1e-3)


def test_25fps_decodes_every_frame(videos):
    c = decode_all(videos["v25"])
    assert c.frames.shape == (50, H, W, 3) and c.frames.dtype == np.uint8
    np.testing.assert_array_equal(c.source_indices, np.arange(50))
    np.testing.assert_array_equal(read_codes(c.frames), np.arange(50))
    np.testing.assert_allclose(c.timestamps, np.arange(50) / 25)
    assert c.timestamps.dtype == np.float64 and c.start_index == 0


@pytest.mark.parametrize("name,src_fps,n_src", [("v30", 30, 60), ("v50", 50, 100)])
def test_resample_to_25fps_by_timestamps(videos, name, src_fps, n_src):
    c = decode_all(videos[name])
    n_out = n_output_frames(n_src / src_fps, 25)
    assert len(c) == n_out == 50
    expected = np.floor(np.arange(n_out) * src_fps / 25 + 1e-9).astype(np.int64)
    np.testing.assert_array_equal(c.source_indices, expected)
    np.testing.assert_array_equal(read_codes(c.frames), expected)


def test_variable_frame_rate_picks_by_timestamp(tmp_path):
    # 1 s at 25 fps, 1 s at 50 fps, 1 s at 10 fps: 85 frames, 3 s
    segments = [(25, 40), (50, 20), (10, 100)]
    path = make_video(tmp_path / "vfr.mp4", 85, 25, audio_hz=None, vfr_segments=segments)
    starts_ms = np.concatenate([np.arange(25) * 40, 1000 + np.arange(50) * 20, 2000 + np.arange(10) * 100])
    info = DecordDecoder().probe(path)
    assert info.n_frames == 85 and info.duration_s == pytest.approx(3.0, abs=1e-3)
    c = decode_all(path)
    assert len(c) == 75
    t_ms = np.arange(75) * 40
    expected = np.searchsorted(starts_ms, t_ms, side="right") - 1
    np.testing.assert_array_equal(c.source_indices, expected)
    np.testing.assert_array_equal(read_codes(c.frames), expected)
    # the 50 fps part skips every other frame, the 10 fps part repeats each frame 2-3 times
    assert list(expected[25:30]) == [25, 27, 29, 31, 33] and list(expected[50:56]) == [75, 75, 75, 76, 76, 77]


def test_chunks_concatenate_to_single_decode(videos):
    d = DecordDecoder()
    chunks = list(d.iter_frames(videos["v30"], chunk=7))
    assert all(1 <= len(c) <= 7 for c in chunks)
    assert [c.start_index for c in chunks] == list(range(0, 50, 7))
    whole = decode_all(videos["v30"])
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), whole.frames)
    np.testing.assert_array_equal(np.concatenate([c.source_indices for c in chunks]), whole.source_indices)
    np.testing.assert_allclose(np.concatenate([c.timestamps for c in chunks]), whole.timestamps)


def test_bad_arguments(videos):
    d = DecordDecoder()
    for kw in ({"chunk": 0}, {"fps": 0.0}, {"size": (0, 10)}):
        with pytest.raises(ValueError):
            d.iter_frames(videos["v25"], **kw)


def test_long_video_decodes_in_bounded_chunks(tmp_path):
    path = make_video(tmp_path / "long.mp4", 1500, 25, audio_hz=None)  # 60 s
    sizes, n_seen, codes_ok = [], 0, True
    for c in DecordDecoder().iter_frames(path, chunk=64):
        sizes.append(len(c))
        codes_ok &= bool(np.array_equal(read_codes(c.frames), np.arange(n_seen, n_seen + len(c))))
        n_seen += len(c)
    assert n_seen == 1500 and max(sizes) <= 64 and len(sizes) == 24 and codes_ok


def test_resize(videos):
    c = decode_all(videos["v30"], size=(32, 24))
    assert c.frames.shape == (50, 24, 32, 3)
    np.testing.assert_array_equal(read_codes(c.frames), c.source_indices)


def test_rotated_video_decodes_upright(tmp_path, videos):
    # decord 0.6 mis-decodes streams with a display matrix; those go through ffmpeg
    rot = tmp_path / "rot.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", "90", "-i",
                    str(videos["v25"]), "-c", "copy", str(rot)], check=True, capture_output=True)
    info = DecordDecoder().probe(rot)
    assert info.rotation_deg == 90 and (info.width, info.height) == (H, W)
    up = decode_all(rot)
    ref = decode_all(videos["v25"])
    assert up.frames.shape == (50, W, H, 3)
    np.testing.assert_array_equal(up.frames, np.rot90(ref.frames, 1, axes=(1, 2)))
    chunks = list(DecordDecoder().iter_frames(rot, chunk=16, size=(24, 32)))
    assert [len(c) for c in chunks] == [16, 16, 16, 2] and chunks[0].frames.shape[1:] == (32, 24, 3)


# --------------------------------------------------------------------------------------------
# audio


def test_audio_is_mono_16k_with_the_tone(tmp_path):
    path = make_video(tmp_path / "tone.mp4", 50, 25, audio_hz=440.0, stereo=True)
    audio = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 32000) < 0.05 * 16000
    assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.05
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak_hz = np.argmax(spec) * 16000 / len(audio)
    assert abs(peak_hz - 440.0) < 2.0
    assert DecordDecoder().read_audio(path, 8000).shape[0] == pytest.approx(16000, abs=800)


def test_load_clip_aligns_audio_to_frames(videos):
    clip = load_clip(videos["v30"], VideoLimits(min_side=32))
    assert clip.n_frames == 50 and clip.fps == 25.0
    assert clip.audio is not None and clip.audio.shape == (50 * 640,) and clip.audio.dtype == np.float32
    frames = clip.frames()
    assert frames.shape == (50, H, W, 3)
    np.testing.assert_array_equal(read_codes(frames), np.floor(np.arange(50) * 1.2 + 1e-9).astype(int))
    assert sum(len(c) for c in clip.chunks(16)) == 50  # re-iterable


def test_audio_start_offset_is_compensated(tmp_path):
    path = make_video(tmp_path / "late_audio.mp4", 50, 25, audio_hz=1000.0, audio_offset_s=0.3)
    clip = load_clip(path, VideoLimits(min_side=32))
    assert 0.25 < clip.info.audio_offset_s < 0.31  # AAC priming makes it slightly earlier than 0.3
    assert clip.audio.shape == (32000,)
    lead = int(0.25 * 16000)
    assert np.abs(clip.audio[:lead]).max() == 0.0
    assert np.abs(clip.audio[int(0.32 * 16000) : int(0.4 * 16000)]).max() > 0.05


def test_missing_audio_required_or_not(videos):
    path = videos["noaudio"]
    with pytest.raises(VideoError) as ei:
        load_clip(path, VideoLimits(min_side=32))
    assert ei.value.reason == "no_audio" and "noaudio.mp4" in str(ei.value)
    assert "require_audio=false" in str(ei.value)
    clip = load_clip(path, VideoLimits(min_side=32, require_audio=False))
    assert clip.audio is None and clip.n_frames == 25
    with pytest.raises(VideoError) as ei:
        read_audio(path)
    assert ei.value.reason == "no_audio"


# --------------------------------------------------------------------------------------------
# bad inputs


def _bad_file(kind: str, d: Path, good: Path) -> Path:
    ff = ffmpeg_exe()
    if kind == "missing":
        return d / "missing_clip.mp4"
    if kind == "empty":
        p = d / "empty_clip.mp4"
        p.write_bytes(b"")
        return p
    if kind == "text":
        p = d / "text_clip.mp4"
        p.write_text("this is not a video\n" * 20)
        return p
    if kind in ("truncated", "truncated_faststart"):
        src = good
        if kind == "truncated_faststart":
            src = d / "faststart_src.mp4"
            subprocess.run([ff, "-y", "-loglevel", "error", "-i", str(good), "-c", "copy", "-movflags",
                            "+faststart", str(src)], check=True, capture_output=True)
        data = src.read_bytes()
        p = d / f"{kind}_clip.mp4"
        p.write_bytes(data[: len(data) // 2])
        return p
    if kind in ("m4a_as_mp4", "wav_as_mp4"):
        p = d / f"{kind}_clip.mp4"
        fmt = ["-c:a", "aac", "-f", "mp4"] if kind == "m4a_as_mp4" else ["-f", "wav"]
        subprocess.run([ff, "-y", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=1", *fmt, str(p)],
                       check=True, capture_output=True)
        return p
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("missing", "not_found"),
        ("empty", "empty_file"),
        ("text", "unreadable"),
        ("truncated", "unreadable"),
        ("truncated_faststart", "unreadable"),
        ("m4a_as_mp4", "no_video_stream"),
        ("wav_as_mp4", "no_video_stream"),
    ],
)
def test_bad_inputs_raise_video_error(tmp_path, videos, kind, reason):
    path = _bad_file(kind, tmp_path, videos["v25"])
    d = DecordDecoder()
    # iter_frames checks the file when called, before the first chunk is requested
    for call in (lambda: d.probe(path), lambda: load_clip(path), lambda: d.iter_frames(path)):
        with pytest.raises(VideoError) as ei:
            call()
        assert ei.value.reason == reason
        assert ei.value.path == str(path) and path.name in str(ei.value)


def test_corrupt_stream_raises_video_error(tmp_path, videos):
    data = bytearray(videos["v25"].read_bytes())
    start = len(data) // 3
    data[start : start + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt_clip.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(VideoError) as ei:
        d = DecordDecoder()
        d.probe(path)
        list(d.iter_frames(path))
    assert ei.value.reason == "unreadable" and "corrupt_clip.mp4" in str(ei.value)


def test_limits(tmp_path, videos):
    d = DecordDecoder()
    info = d.probe(videos["v25"])
    cases = [
        (VideoLimits(max_duration_s=1.5, min_side=32), "too_long"),
        (VideoLimits(max_side=60, min_side=32), "too_large"),
        (VideoLimits(min_side=49), "too_small"),
    ]
    for limits, reason in cases:
        with pytest.raises(VideoError) as ei:
            load_clip(videos["v25"], limits)
        assert ei.value.reason == reason and "v25.mp4" in str(ei.value)
    assert check_limits(info, VideoLimits(min_side=48)) == 50
    one = make_video(tmp_path / "one_frame.mp4", 1, 25, audio_hz=None)
    with pytest.raises(VideoError) as ei:
        load_clip(one, VideoLimits(min_side=32, require_audio=False))
    assert ei.value.reason == "too_few_frames" and "one_frame.mp4" in str(ei.value)
    assert load_clip(one, VideoLimits(min_side=32, min_frames=1, require_audio=False)).n_frames == 1


def test_global_decord_bridge_does_not_leak(videos):
    decord = pytest.importorskip("decord")
    pytest.importorskip("torch")
    decord.bridge.set_bridge("torch")
    try:
        c = decode_all(videos["v25"])
    finally:
        decord.bridge.set_bridge("native")
    assert isinstance(c.frames, np.ndarray) and c.frames.shape == (50, H, W, 3)


def test_window_selects_frames_and_audio(videos):
    whole = load_clip(videos["v30"], VideoLimits(min_side=32))
    clip = load_clip(videos["v30"], VideoLimits(min_side=32), start_s=0.4, end_s=1.2)
    assert clip.first_frame == 10 and clip.n_frames == 20 and clip.start_s == pytest.approx(0.4)
    frames = clip.frames()
    np.testing.assert_array_equal(read_codes(frames), read_codes(whole.frames())[10:30])
    np.testing.assert_array_equal(clip.audio, whole.audio[10 * 640:30 * 640])
    chunks = list(clip.chunks(8))
    assert [c.start_index for c in chunks] == [0, 8, 16]
    np.testing.assert_allclose(chunks[1].timestamps, np.arange(18, 26) / 25.0)
    tail = load_clip(videos["v30"], VideoLimits(min_side=32), start_s=1.6, end_s=99.0)
    assert tail.n_frames == 10  # clamped to the video's end
    for start, end in ((5.0, 6.0), (1.0, 0.5), (-1.0, 1.0)):
        with pytest.raises(VideoError) as ei:
            load_clip(videos["v30"], VideoLimits(min_side=32), start_s=start, end_s=end)
        assert ei.value.reason == "bad_window" and "v30" in str(ei.value)


def test_duration_limit_applies_to_the_window(videos):
    limits = VideoLimits(min_side=32, max_duration_s=1.0)
    with pytest.raises(VideoError) as ei:
        load_clip(videos["v30"], limits)
    assert ei.value.reason == "too_long" and "clip_start" in str(ei.value)
    assert load_clip(videos["v30"], limits, start_s=0.0, end_s=1.0).n_frames == 25
