"""Audio features aligned to video frames, and the blink / mouth controls from landmarks.

Audio: mono float32 at 16 kHz, already aligned to the clip (`video.align_audio`: exactly
n_frames · 640 samples at 25 fps). Features come at 50 Hz, two per video frame: feature row j
is centred at j · 20 ms (librosa's `center=True` framing, hop 320); librosa yields 2T + 1 rows
for 2T · 320 samples and the last one (centred past the clip's end) is dropped, so every feature
has exactly 2 · n_frames rows, and rows 2k, 2k+1 belong to video frame k.

- mel: 80-bin log-mel (natural log of power, floor 1e-5), n_fft 1024, 80–7600 Hz.
- f0: librosa's YIN in Hz (65–400 Hz, speech); voicing from the normalised autocorrelation at the
  YIN period (`voiced_prob` in 0..1) gated by energy; f0 = 0 where unvoiced. (librosa's pYIN gives
  voicing directly but costs ~4 s per second of audio here; YIN + NACF costs ~10 ms.)
- rms: RMS energy per 640-sample window.

Controls for the audio-to-motion stage, per video frame, from 68 iBUG landmarks:
- eye aspect ratio (EAR, mean of both eyes): (|p2 − p6| + |p3 − p5|) / (2 |p1 − p4|); ≈ 0 closed.
- mouth opening: mean inner-lip gap (61↔67, 62↔66, 63↔65) / inner mouth width (60↔64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
HOP = 320  # 20 ms: 50 Hz, two feature rows per 25 fps video frame
N_MELS = 80
N_FFT = 1024
F0_MIN, F0_MAX = 65.0, 400.0


@dataclass
class AudioFeatures:
    """50 Hz features of one clip; every array has 2 · n_frames rows."""

    mel: np.ndarray  # (2T, 80) float32 log power
    f0: np.ndarray  # (2T,) float32 Hz, 0 where unvoiced
    voiced: np.ndarray  # (2T,) bool
    voiced_prob: np.ndarray  # (2T,) float32 in 0..1
    rms: np.ndarray  # (2T,) float32

    @property
    def n_rows(self) -> int:
        return int(self.mel.shape[0])


def _check_audio(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate != SAMPLE_RATE or fps != 25:
        raise ValueError(f"audio features expect 16 kHz audio and 25 fps video, got {sample_rate} Hz, {fps} fps")
    need = n_frames * 2 * HOP
    if a.size != need:
        raise ValueError(f"audio has {a.size} samples but {n_frames} frames need {need}; align it first "
                         "with preprocessing.video.align_audio")
    if not np.isfinite(a).all():
        raise ValueError("audio contains NaN or inf samples")
    return a


def _fit_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Drop librosa's trailing centred frame (or pad by edge repetition) to exactly `rows`."""
    if x.shape[0] >= rows:
        return x[:rows]
    return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)]) if x.shape[0] else \
        np.zeros((rows,) + x.shape[1:], x.dtype)


def _voicing(audio: np.ndarray, f0: np.ndarray, rows: int) -> np.ndarray:
    """Normalised autocorrelation at the YIN period for each 50 Hz row (0..1)."""
    import librosa

    frame = 2 * int(SAMPLE_RATE / F0_MIN) + 2  # two periods of the lowest pitch
    padded = np.pad(audio, (frame // 2, frame // 2 + HOP), mode="constant")
    frames = librosa.util.frame(padded, frame_length=frame, hop_length=HOP)[:, :rows].T  # (rows, frame)
    lag = np.clip(np.round(SAMPLE_RATE / np.maximum(f0, 1e-3)).astype(int), 1, frame // 2)
    half = frame // 2
    a = frames[:, :half]
    b = np.take_along_axis(frames, np.arange(half)[None] + lag[:, None], axis=1)
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1)) + 1e-12
    return np.clip(num / den, 0.0, 1.0).astype(np.float32)


def audio_features(audio: np.ndarray, n_frames: int, fps: float = 25.0,
                   sample_rate: int = SAMPLE_RATE) -> AudioFeatures:
    """Log-mel, f0/voicing and RMS at 50 Hz for `n_frames` video frames of aligned 16 kHz audio."""
    import librosa

    a = _check_audio(audio, n_frames, fps, sample_rate)
    rows = 2 * n_frames
    mel = librosa.feature.melspectrogram(y=a, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS,
                                         fmin=80.0, fmax=7600.0, center=True)
    log_mel = _fit_rows(np.log(np.maximum(mel, 1e-5)).T.astype(np.float32), rows)
    rms = _fit_rows(librosa.feature.rms(y=a, frame_length=2 * HOP, hop_length=HOP, center=True)[0], rows)
    f0 = _fit_rows(librosa.yin(a, fmin=F0_MIN, fmax=F0_MAX, sr=SAMPLE_RATE, frame_length=2048, hop_length=HOP,
                               center=True), rows).astype(np.float32)
    prob = _voicing(a, f0, rows)
    loud = rms > max(0.02 * float(rms.max(initial=0.0)), 1e-4)
    voiced = (prob > 0.6) & loud
    return AudioFeatures(mel=log_mel, f0=np.where(voiced, f0, 0.0).astype(np.float32), voiced=voiced,
                         voiced_prob=prob, rms=rms.astype(np.float32))


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Mean eye aspect ratio of both eyes for (..., 68, 2) landmarks; ~0.25–0.35 open, ~0 closed."""
    lm = np.asarray(landmarks, dtype=np.float64)
    out = []
    for s in (36, 42):
        p = [lm[..., s + i, :] for i in range(6)]
        vert = np.linalg.norm(p[1] - p[5], axis=-1) + np.linalg.norm(p[2] - p[4], axis=-1)
        out.append(vert / (2.0 * np.linalg.norm(p[0] - p[3], axis=-1) + 1e-9))
    return ((out[0] + out[1]) / 2.0).astype(np.float32)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Mean inner-lip gap over the inner mouth width for (..., 68, 2) landmarks (0 = closed)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    gap = sum(np.linalg.norm(lm[..., a, :] - lm[..., b, :], axis=-1) for a, b in ((61, 67), (62, 66), (63, 65))) / 3
    width = np.linalg.norm(lm[..., 60, :] - lm[..., 64, :], axis=-1) + 1e-9
    return (gap / width).astype(np.float32)
