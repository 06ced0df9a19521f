"""Deterministic synthetic talking-face corpus with ground truth (tests, demo, benchmarks).

Each identity is a 3DMM face (identity, albedo, hair and clothes colours, voice pitch). Each clip
is that face rendered with smooth talking-head motion and expression over a procedural
background, with a head (face + hair) and a torso (neck + shoulders), encoded as H.264 mp4 at
25 fps with an AAC track of speech-like audio: a band-limited glottal pulse train with intonation,
two formant resonances and syllable-rate amplitude bumps. The audio envelope drives the jaw
(expression 0 of the synthetic model: the inner-lip gap), so audio-visual sync is learnable and
measurable; a clip may carry a known audio offset for sync tests.

Beside each `clip.mp4`, `clip.npz` holds the ground truth: coeffs (T, 257) in the r3p camera at the
video size (see `face3d`), landmarks (T, 68, 2) in video pixels (x right, y down, centres at +0.5),
head and torso masks (T, H, W) bool, the per-frame mouth drive, and `clip.json` the metadata
(identity, seed, audio offset, face model).

Camera: the reference camera (focal 1015 at 224 px, scaled to the video size); the head is pushed
back along z so the face is about a third of the frame width (Real3D-Portrait framing), so the
ground-truth translation has a large negative z.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.signal import lfilter

from preprocessing.face3d import Face3D, join_coeffs, project, rotation_matrix, sh_light, uv_to_image
from preprocessing.face_model import FaceModel
from preprocessing.render import render_face, to_uint8
from preprocessing.video import encode_mp4

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
JAW_GAIN = 0.75  # expression-0 coefficient at full speech loudness
EXP_JAW, EXP_SMILE, EXP_EYE_R, EXP_EYE_L = 0, 1, 2, 3


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: counts, durations, frame size, seed and audio offsets (in frames)."""

    identities: int = 2
    clips: int = 2
    seconds: float = 4.0
    size: int = 512
    seed: int = 0
    audio_offsets: tuple[int, ...] = (0,)  # cycled over clips; + = audio later than video

    def __post_init__(self) -> None:
        if self.identities < 1 or self.clips < 1:
            raise ValueError("identities and clips must be >= 1")
        if not 0.2 <= self.seconds <= 600:
            raise ValueError(f"seconds must be in [0.2, 600], got {self.seconds}")
        if self.size % 2 or not 64 <= self.size <= 2048:
            raise ValueError(f"size must be even and in [64, 2048], got {self.size}")


@dataclass
class Identity:
    """One synthetic speaker."""

    speaker_id: str
    id_coeff: np.ndarray  # (80,)
    tex_coeff: np.ndarray  # (80,)
    hair_rgb: tuple[int, int, int]
    clothes_rgb: tuple[int, int, int]
    f0_hz: float
    formants_hz: tuple[float, float]
    extra: dict = field(default_factory=dict)


def make_identity(index: int, seed: int) -> Identity:
    """Deterministic identity `index` of a corpus seed."""
    rng = np.random.default_rng([seed, index, 1])
    hair = [(30, 22, 18), (60, 40, 25), (110, 80, 45), (20, 20, 24), (150, 110, 60)][rng.integers(5)]
    clothes = tuple(int(c) for c in rng.integers(30, 220, 3))
    return Identity(
        speaker_id=f"synth{seed:03d}_id{index:03d}",
        id_coeff=rng.normal(0, 0.5, 80).astype(np.float32),
        tex_coeff=rng.normal(0, 0.4, 80).astype(np.float32),
        hair_rgb=hair, clothes_rgb=clothes,
        f0_hz=float(rng.uniform(100, 210)),
        formants_hz=(float(rng.uniform(550, 750)), float(rng.uniform(1200, 1700))),
    )


def speech_like_audio(rng: np.random.Generator, n_frames: int, f0_hz: float,
                      formants_hz: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(audio (n_frames·640,) float32 at 16 kHz, loudness envelope per video frame in [0, 1])."""
    n = n_frames * SAMPLES_PER_FRAME
    t = np.arange(n) / SAMPLE_RATE
    env = np.zeros(n)
    pos = rng.uniform(0.05, 0.25)
    while pos < t[-1] if n else False:
        if rng.random() < 0.12:
            pos += rng.uniform(0.3, 0.6)  # a pause
            continue
        dur = rng.uniform(0.12, 0.28)  # one syllable: ~4 per second
        i0, i1 = int(pos * SAMPLE_RATE), min(n, int((pos + dur) * SAMPLE_RATE))
        if i1 > i0:
            env[i0:i1] = np.maximum(env[i0:i1], rng.uniform(0.5, 1.0) * np.hanning(i1 - i0 + 2)[1:-1])
        pos += dur + rng.uniform(0.03, 0.12)
    # intonation: slow drift plus a rise/fall per phrase; the phase integrates the frequency
    f0 = f0_hz * (1 + 0.12 * np.sin(2 * np.pi * 0.35 * t + rng.uniform(0, 6.3))
                  + 0.05 * np.sin(2 * np.pi * 2.1 * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = np.zeros(n)
    for k in range(1, int(3800 // f0_hz) + 1):  # band-limited sawtooth (glottal pulse train)
        voiced += np.sin(k * phase) / k
    for fc, bw in zip(formants_hz, (90.0, 120.0)):  # two resonances (vowel-like)
        r = np.exp(-np.pi * bw / SAMPLE_RATE)
        a = [1.0, -2 * r * np.cos(2 * np.pi * fc / SAMPLE_RATE), r * r]
        voiced = voiced + 0.6 * lfilter([1 - r], a, voiced)
    voiced /= np.abs(voiced).max() + 1e-9
    audio = 0.45 * voiced * env + 0.004 * rng.normal(size=n) * (0.3 + env)
    frame_env = env.reshape(n_frames, SAMPLES_PER_FRAME).mean(axis=1) if n else np.zeros(0)
    frame_env = frame_env / max(frame_env.max(initial=0.0), 1e-9)
    return audio.astype(np.float32), frame_env.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, amp: float, fmax: float, k: int = 3) -> np.ndarray:
    """A sum of `k` sinusoids below `fmax` Hz with amplitudes summing to ~`amp`."""
    out = np.zeros_like(t)
    for _ in range(k):
        out += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(0.05, fmax) * t + rng.uniform(0, 2 * np.pi))
    return amp * out / k


def clip_coefficients(rng: np.random.Generator, ident: Identity, n_frames: int, mouth: np.ndarray,
                      model: FaceModel) -> np.ndarray:
    """(T, 257) coefficients: identity, jaw from `mouth`, smile, blinks, talking-head pose."""
    t = np.arange(n_frames) / FPS
    exp = np.zeros((n_frames, 64), np.float32)
    jaw = np.convolve(mouth, np.array([0.25, 0.5, 0.25]), mode="same")  # lips lag a touch; stays in sync
    exp[:, EXP_JAW] = JAW_GAIN * jaw
    exp[:, EXP_SMILE] = np.clip(0.25 + _smooth_noise(rng, t, 0.35, 0.15), -0.1, 0.7)
    blink = np.zeros(n_frames, np.float32)
    pos = rng.uniform(0.5, 2.0)
    profile = np.array([0.35, 0.8, 1.0, 0.7, 0.3])
    while pos < t[-1]:
        i = int(pos * FPS)
        blink[i:i + len(profile)] = profile[: max(0, min(len(profile), n_frames - i))]
        pos += rng.uniform(2.0, 4.5)
    exp[:, EXP_EYE_R] = exp[:, EXP_EYE_L] = blink
    for j in range(5, 64):
        exp[:, j] = _smooth_noise(rng, t, 0.12, 0.4)
    euler = np.stack([_smooth_noise(rng, t, np.radians(8), 0.5),  # pitch
                      _smooth_noise(rng, t, np.radians(20), 0.4),  # yaw
                      _smooth_noise(rng, t, np.radians(5), 0.4)], 1)  # roll
    width = float(np.ptp(model.mean_shape[:, 0]))
    z0 = 10.0 - width * 1015.0 * 3.0 / 224.0  # face ≈ a third of the frame width
    trans = np.stack([_smooth_noise(rng, t, 0.25, 0.3), 0.35 + _smooth_noise(rng, t, 0.15, 0.3),
                      z0 + _smooth_noise(rng, t, 0.6, 0.2)], 1)
    gamma = sh_light(np.repeat(rng.normal(0, 0.12, 3)[None], n_frames, 0), 0.1)
    rep = lambda a: torch.as_tensor(np.repeat(a[None], n_frames, 0))  # noqa: E731
    return join_coeffs(id=rep(ident.id_coeff), exp=torch.as_tensor(exp), tex=rep(ident.tex_coeff),
                       euler=torch.as_tensor(euler, dtype=torch.float32), gamma=torch.as_tensor(gamma),
                       trans=torch.as_tensor(trans, dtype=torch.float32)).numpy()


def shift_audio(audio: np.ndarray, offset: int) -> np.ndarray:
    """Audio shifted by `offset` video frames relative to the mouth (+ = audio later), zero-filled."""
    if not offset:
        return audio
    shift = offset * SAMPLES_PER_FRAME
    audio = np.roll(audio, shift)
    if shift > 0:
        audio[:shift] = 0
    else:
        audio[shift:] = 0
    return audio


def background_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural indoor-looking background: a colour gradient with soft blobs and a shelf line."""
    y, x = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    img = c0[None, None] * (1 - y[..., None]) + c1[None, None] * y[..., None]
    for _ in range(6):
        cx, cy, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.25)]
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-60, 60, 3)[None, None]
    img[(np.abs(y - rng.uniform(0.15, 0.4)) < 0.01)] *= 0.6
    return np.clip(img, 0, 255).astype(np.uint8)


def _project_points(points: np.ndarray, size: int) -> np.ndarray:
    return uv_to_image(project(torch.as_tensor(points, dtype=torch.float32), size), size)[..., :2].numpy()


def _head_and_torso(coeffs: np.ndarray, face_mask: np.ndarray,
                    size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head (face + hair), torso (neck + shoulders) and neck masks for one frame."""
    euler = torch.as_tensor(coeffs[224:227])[None]
    trans = coeffs[254:257]
    rot = rotation_matrix(euler)[0].numpy()
    # hair: an ellipse of points around the top and back of the head, rotating with it
    ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    cap = np.stack([0.92 * np.cos(ang), 0.35 + 0.95 * np.sin(ang), -0.45 + 0.0 * ang], 1)
    hair_pts = _project_points(cap @ rot.T + trans, size)
    neck_top = _project_points(np.array([[0.0, -0.6, -0.5]]) @ rot.T + trans, size)[0]
    base = _project_points(trans[None] + np.array([[0.0, -1.55, -0.5]]), size)[0]  # torso ignores head pose
    scale = size / 3.0 / 1.6  # px per dm near the head
    neck_w, sh_w = 0.38 * scale, 1.9 * scale
    torso_poly = np.array([
        [neck_top[0] - neck_w, neck_top[1]], [neck_top[0] + neck_w, neck_top[1]],
        [base[0] + neck_w * 1.05, base[1]], [base[0] + sh_w * 0.8, base[1] + 0.35 * scale],
        [base[0] + sh_w, base[1] + 1.2 * scale], [base[0] + sh_w * 1.05, size + 10],
        [base[0] - sh_w * 1.05, size + 10], [base[0] - sh_w, base[1] + 1.2 * scale],
        [base[0] - sh_w * 0.8, base[1] + 0.35 * scale], [base[0] - neck_w * 1.05, base[1]]])
    hair = np.zeros((size, size), np.uint8)
    torso = np.zeros((size, size), np.uint8)
    neck = np.zeros((size, size), np.uint8)
    cv2.fillPoly(hair, [np.round(hair_pts).astype(np.int32)], 1)
    cv2.fillPoly(torso, [np.round(torso_poly).astype(np.int32)], 1)
    cv2.fillPoly(neck, [np.round(torso_poly[[0, 1, 2, 9]]).astype(np.int32)], 1)
    head = (hair > 0) | face_mask
    torso_m = (torso > 0) & ~head
    return head, torso_m, (neck > 0) & torso_m


def render_clip(face3d: Face3D, ident: Identity, coeffs: np.ndarray, background: np.ndarray,
                size: int, chunk: int = 16):
    """Yield (frames (n, H, W, 3) uint8, head masks, torso masks) chunk by chunk."""
    skin = np.clip(face3d.model.mean_tex.mean(0) * 0.55, 0, 255)  # the neck sits in the chin's shadow
    for s in range(0, len(coeffs), chunk):
        c = coeffs[s:s + chunk]
        r = render_face(face3d, torch.as_tensor(c), size, remove_eyes=False)
        shaded = to_uint8(r.shaded)
        frames, heads, torsos = [], [], []
        for i in range(len(c)):
            head, torso, neck = _head_and_torso(c[i], r.mask[i], size)
            img = background.copy()
            img[torso] = ident.clothes_rgb
            img[neck] = skin.astype(np.uint8)
            img[head & ~r.mask[i]] = ident.hair_rgb
            img[r.mask[i]] = shaded[i][r.mask[i]]
            frames.append(img)
            heads.append(head)
            torsos.append(torso)
        yield np.stack(frames), np.stack(heads), np.stack(torsos)


def generate_clip(face3d: Face3D, spec: SynthSpec, identity_index: int, clip_index: int,
                  out_dir: Path) -> dict:
    """Render, encode and write one clip with its ground truth; returns its manifest row."""
    ident = make_identity(identity_index, spec.seed)
    rng = np.random.default_rng([spec.seed, identity_index, clip_index, 2])
    n_frames = int(round(spec.seconds * FPS))
    offset = spec.audio_offsets[(identity_index * spec.clips + clip_index) % len(spec.audio_offsets)]
    audio, mouth = speech_like_audio(rng, n_frames, ident.f0_hz, ident.formants_hz)
    coeffs = clip_coefficients(rng, ident, n_frames, mouth, face3d.model)
    audio = shift_audio(audio, offset)
    background = background_image(rng, spec.size)
    heads, torsos = [], []

    def frames():
        for f, h, t in render_clip(face3d, ident, coeffs, background, spec.size):
            heads.append(h)
            torsos.append(t)
            yield f

    stem = out_dir / ident.speaker_id / f"clip{clip_index:03d}"
    video = encode_mp4(stem.with_suffix(".mp4"), frames(), FPS, audio, SAMPLE_RATE)
    landmarks = face3d.landmarks(torch.as_tensor(coeffs), spec.size).numpy()
    np.savez_compressed(stem.with_suffix(".npz"), coeffs=coeffs, landmarks=landmarks,
                        head_mask=np.concatenate(heads), torso_mask=np.concatenate(torsos), mouth=mouth,
                        background=background)
    meta = {
        "clip": str(video.relative_to(out_dir)), "speaker_id": ident.speaker_id, "identity_index": identity_index,
        "clip_index": clip_index, "frames": n_frames, "fps": FPS, "size": spec.size, "sample_rate": SAMPLE_RATE,
        "audio_offset_frames": int(offset), "audio_offset_s": offset / FPS, "seed": spec.seed,
        "f0_hz": ident.f0_hz, **face3d.model.metadata(),
    }
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return {"path": meta["clip"], "speaker_id": ident.speaker_id, "frames": n_frames,
            "audio_offset_frames": int(offset), "dataset": "synthetic"}


def generate_corpus(model: FaceModel, spec: SynthSpec, out_dir: str | Path, progress=None) -> Path:
    """Generate the whole corpus under `out_dir`; writes `manifest.csv` and `corpus.json` last."""
    import csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    face3d = Face3D(model)
    rows = []
    for i in range(spec.identities):
        for j in range(spec.clips):
            rows.append(generate_clip(face3d, spec, i, j, out))
            if progress:
                progress(rows[-1])
    with open(out / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    spec_d = asdict(spec)
    (out / "corpus.json").write_text(json.dumps({"spec": spec_d, "clips": len(rows), **model.metadata()}, indent=2))
    return out
