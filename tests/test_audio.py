"""Audio features against known signals, and the blink / mouth controls from landmarks."""

import numpy as np
import pytest
import torch

from preprocessing.audio import audio_features, eye_aspect_ratio, mouth_opening

SR = 16000


def _tone(freq, seconds, amp=0.3):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _voice(f0, seconds, amp=0.3):
    t = np.arange(int(seconds * SR)) / SR
    y = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 15))
    return (amp * y / np.abs(y).max()).astype(np.float32)


def test_shapes_and_alignment():
    for n in (1, 2, 7, 50):
        f = audio_features(np.zeros(n * 640, np.float32), n)
        assert f.mel.shape == (2 * n, 80) and f.f0.shape == f.rms.shape == f.voiced.shape == (2 * n,)
        assert f.mel.dtype == np.float32 and not f.voiced.any()
    with pytest.raises(ValueError, match="align_audio"):
        audio_features(np.zeros(1000, np.float32), 2)
    with pytest.raises(ValueError, match="16 kHz"):
        audio_features(np.zeros(1280, np.float32), 1, sample_rate=22050)


def test_mel_peak_of_a_tone():
    import librosa

    f = audio_features(_tone(1000.0, 1.0), 25)
    centres = librosa.mel_frequencies(82, fmin=80.0, fmax=7600.0)[1:-1]
    peak = centres[int(np.median(f.mel[5:-5].argmax(axis=1)))]
    assert abs(peak - 1000.0) < 60.0


def test_f0_and_voicing():
    voiced = _voice(150.0, 1.0)
    audio = np.concatenate([voiced, np.zeros(SR, np.float32)])  # 1 s voice, 1 s silence
    f = audio_features(audio, 50)
    first, second = slice(4, 46), slice(56, 96)
    assert f.voiced[first].mean() > 0.9 and not f.voiced[second].any()
    assert abs(np.median(f.f0[first][f.voiced[first]]) - 150.0) < 3.0
    assert np.all(f.f0[~f.voiced] == 0)
    noise = np.random.default_rng(0).normal(0, 0.1, SR).astype(np.float32)
    assert audio_features(noise, 25).voiced.mean() < 0.1


def test_rms_of_a_sine():
    f1 = audio_features(_tone(440.0, 1.0, amp=0.2), 25)
    f2 = audio_features(_tone(440.0, 1.0, amp=0.4), 25)
    assert np.allclose(f1.rms[5:-5], 0.2 / np.sqrt(2), rtol=0.03)
    assert np.allclose(f2.rms[5:-5] / f1.rms[5:-5], 2.0, rtol=1e-3)


def _eye_landmarks(open_height):
    lm = np.zeros((68, 2))
    for s, cx in ((36, 10.0), (42, 30.0)):
        lm[s] = (cx - 2, 0)
        lm[s + 3] = (cx + 2, 0)
        lm[s + 1], lm[s + 2] = (cx - 1, -open_height / 2), (cx + 1, -open_height / 2)
        lm[s + 5], lm[s + 4] = (cx - 1, open_height / 2), (cx + 1, open_height / 2)
    lm[60], lm[64] = (10, 40), (30, 40)
    for a, b, x in ((61, 67, 15), (62, 66, 20), (63, 65, 25)):
        lm[a], lm[b] = (x, 38), (x, 43)
    return lm


def test_ear_and_mouth_opening_known_values():
    assert eye_aspect_ratio(_eye_landmarks(1.2)) == pytest.approx(0.3, abs=1e-6)  # (1.2 + 1.2) / (2 · 4)
    assert eye_aspect_ratio(_eye_landmarks(0.0)) == pytest.approx(0.0, abs=1e-6)
    assert mouth_opening(_eye_landmarks(1.0)) == pytest.approx(5.0 / 20.0, abs=1e-6)
    batch = np.stack([_eye_landmarks(1.2), _eye_landmarks(0.6)])
    assert eye_aspect_ratio(batch).shape == (2,)


def test_controls_follow_the_synthetic_jaw_and_blinks():
    from preprocessing.face3d import Face3D
    from preprocessing.synthetic import clip_coefficients, make_identity, speech_like_audio
    from preprocessing.synthetic_bfm import synthetic_face_model

    model = synthetic_face_model(0, "small")
    rng = np.random.default_rng(4)
    ident = make_identity(0, 4)
    audio, mouth = speech_like_audio(rng, 150, ident.f0_hz, ident.formants_hz)
    coeffs = clip_coefficients(rng, ident, 150, mouth, model)
    coeffs[:, 224:227] = 0  # frontal, so the 2D ratios measure the expression alone
    lm = Face3D(model).landmarks(torch.as_tensor(coeffs), 512).numpy()
    assert np.corrcoef(mouth_opening(lm), coeffs[:, 80])[0, 1] > 0.95
    ear = eye_aspect_ratio(lm)
    blink = coeffs[:, 82] > 0.9
    assert blink.any() and ear[blink].max() < 0.5 * np.median(ear[coeffs[:, 82] == 0])
    f = audio_features(audio, 150)
    frame_rms = f.rms.reshape(150, 2).mean(1)
    assert np.corrcoef(frame_rms, mouth)[0, 1] > 0.8  # the audio energy is what drives the jaw
    assert abs(np.median(f.f0[f.voiced]) - ident.f0_hz) < 0.15 * ident.f0_hz
