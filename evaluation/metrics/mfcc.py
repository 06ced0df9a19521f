"""MFCCs exactly as python_speech_features 0.6 computes them with its defaults (what SyncNet was trained on).

Defaults: 25 ms frames every 10 ms (rectangular window, last frame zero-padded, frame count
1 + ceil((len − 400)/160) at 16 kHz), pre-emphasis 0.97, 512-point FFT power spectrum /512,
26 triangular mel filters (HTK mel 2595·log10(1 + f/700), bins floor((nfft+1)·f/sr)) from 0 Hz to
sr/2, natural log, orthonormal DCT-II, 13 cepstra, sinusoidal lifter 22, and c0 replaced by the
log frame energy. Input is the raw sample scale (int16 values as floats, as scipy's wavfile gives).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.fft import dct

EPS = np.finfo(float).eps


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def hz_to_mel(hz):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    """Inverse of the HTK mel scale."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(nfilt: int = 26, nfft: int = 512, sample_rate: int = 16000,
                   low_hz: float = 0.0, high_hz: float | None = None) -> np.ndarray:
    """Triangular mel filters (nfilt, nfft//2 + 1) on integer FFT bins, python_speech_features' layout."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    mels = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), nfilt + 2)
    bins = np.floor((nfft + 1) * mel_to_hz(mels) / sample_rate).astype(int)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(lo, mid):
            fb[j, i] = (i - lo) / (mid - lo)
        for i in range(mid, hi):
            fb[j, i] = (hi - i) / (hi - mid)
    return fb


def frame_signal(signal: np.ndarray, frame_len: int, frame_step: int) -> np.ndarray:
    """Overlapping frames (n, frame_len); the tail is zero-padded to a whole frame."""
    n = len(signal)
    count = 1 if n <= frame_len else 1 + math.ceil((n - frame_len) / frame_step)
    padded = np.concatenate([signal, np.zeros((count - 1) * frame_step + frame_len - n)])
    idx = np.arange(frame_len)[None, :] + frame_step * np.arange(count)[:, None]
    return padded[idx]


def mfcc(signal: np.ndarray, sample_rate: int = 16000, numcep: int = 13, nfilt: int = 26, nfft: int = 512,
         winlen: float = 0.025, winstep: float = 0.01, preemph: float = 0.97, ceplifter: int = 22) -> np.ndarray:
    """MFCC matrix (frames, numcep) of a mono signal, 100 frames/s with the defaults."""
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("mfcc: empty signal")
    x = np.append(x[0], x[1:] - preemph * x[:-1])
    frames = frame_signal(x, _round_half_up(winlen * sample_rate), _round_half_up(winstep * sample_rate))
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, EPS, energy)
    feat = power @ mel_filterbank(nfilt, nfft, sample_rate).T
    feat = np.log(np.where(feat == 0, EPS, feat))
    feat = dct(feat, type=2, axis=1, norm="ortho")[:, :numcep]
    if ceplifter > 0:
        feat = feat * (1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter))
    feat[:, 0] = np.log(energy)
    return feat
