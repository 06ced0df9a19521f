"""Lip-sync definitions (syncnet_python): offset search on synthetic embeddings with a known offset,
LSE-D / LSE-C against a direct formula, merge == single pass, and the MFCC against python_speech_features."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import LipSync, MetricError, merge_all, sync_scores
from evaluation.metrics.mfcc import mfcc


def direct_mean_distances(v, a, vshift):
    """mdist[k] for shift s = k - vshift: mean_i ||v_i - a_{i+s} + 1e-6||, audio zero outside its range."""
    n = len(v)
    out = []
    for s in range(-vshift, vshift + 1):
        d = []
        for i in range(n):
            j = i + s
            other = a[j] if 0 <= j < n else np.zeros_like(a[0])
            d.append(np.linalg.norm(v[i] - other + 1e-6))
        out.append(np.mean(d))
    return np.array(out)


def synthetic_clip(rng, n=60, dim=32, delay=4, noise=0.3):
    """Audio embeddings a, video v_i = a_{i - delay} + noise: video window i matches audio window i - delay."""
    a = rng.standard_normal((n, dim)).astype(np.float32)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    for i in range(n):
        if 0 <= i - delay < n:
            v[i] = a[i - delay] + noise * rng.standard_normal(dim)
    return v, a


@pytest.mark.parametrize("delay", [-7, 0, 3, 12])
def test_offset_search_recovers_a_known_offset(delay):
    rng = np.random.default_rng(10 + delay)
    v, a = synthetic_clip(rng, delay=delay)
    s = sync_scores(v, a, vshift=15)
    assert s.offset == delay
    expected = direct_mean_distances(v.astype(np.float64), a.astype(np.float64), 15)
    np.testing.assert_allclose(s.mean_dists, expected, rtol=1e-5)
    assert s.min_dist == pytest.approx(expected.min(), rel=1e-5)
    assert s.confidence == pytest.approx(np.sort(expected)[15] - expected.min(), rel=1e-4)  # median of 31
    assert s.confidence > 1.0  # a clear minimum


def test_unsynchronised_clip_has_low_confidence_and_even_count_uses_lower_median():
    rng = np.random.default_rng(3)
    v, a = rng.standard_normal((50, 32)), rng.standard_normal((50, 32))
    s = sync_scores(v, a, vshift=15)
    synced = sync_scores(*synthetic_clip(rng, n=50, delay=0), vshift=15)
    assert s.confidence < 0.3 * synced.confidence
    # vshift=0 has one shift: confidence 0; an even number of shifts never occurs (2·vshift + 1)
    assert sync_scores(v, a, vshift=0).confidence == 0.0


def test_lipsync_metric_names_merge_and_results():
    rng = np.random.default_rng(4)
    clips = [synthetic_clip(rng, n=40, delay=d) for d in (0, 2, -3, 5)]
    single = LipSync("LSE", model="syncnet_v2.model")
    per_clip = [single.update(v, a) for v, a in clips]
    workers = []
    for part in (clips[:1], clips[1:3], clips[3:]):
        w = LipSync("LSE", model="syncnet_v2.model")
        for v, a in part:
            w.update(v, a)
        workers.append(w)
    res, merged = single.compute(), merge_all(workers).compute()
    assert set(res) == {"LSE-D", "LSE-C"}
    assert res["LSE-D"].value == pytest.approx(np.mean([s.min_dist for s in per_clip]))
    assert res["LSE-C"].value == pytest.approx(np.mean([s.confidence for s in per_clip]))
    assert res["LSE-D"].details["mean_abs_offset_frames"] == pytest.approx(2.5)
    assert not res["LSE-D"].higher_is_better and res["LSE-C"].higher_is_better
    for k in res:
        assert merged[k].value == pytest.approx(res[k].value, rel=1e-12)
        assert merged[k].count == 4 and merged[k].model == "syncnet_v2.model"

    class LandmarkSync:  # the hook for the project's own landmark SyncNet
        prefix, model = "Sync-lm", "r3p syncnet stage run 42"

    lm = LipSync.for_embedder(LandmarkSync())
    lm.update(*clips[0])
    assert set(lm.compute()) == {"Sync-lm-D", "Sync-lm-C"}
    with pytest.raises(MetricError, match="different specs"):
        lm.merge(single)
    with pytest.raises(MetricError, match="compute"):
        LipSync().compute()


def test_mfcc_equals_python_speech_features():
    import python_speech_features

    rng = np.random.default_rng(5)
    t = np.arange(16000 * 2 + 77) / 16000
    pcm = (8000 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 500 * rng.standard_normal(t.size))
    pcm = pcm.astype(np.int16)
    pcm[:2000] = 0  # silence: exercises the log(eps) floor
    for signal in (pcm, pcm[:399], pcm[:401]):
        ref = python_speech_features.mfcc(signal, 16000)
        np.testing.assert_allclose(mfcc(signal, 16000), ref, rtol=1e-10, atol=1e-9)


class EnvelopeSync:
    """A stand-in for the landmark SyncNet hook: z-scored 5-frame windows of mouth opening vs audio RMS."""

    prefix, model = "Sync-lm", "envelope stand-in"

    def embed(self, video, audio):
        def z(w):
            w = w - w.mean(-1, keepdims=True)
            return w / (w.std(-1, keepdims=True) + 1e-6)

        n = min(len(video), len(audio) // 640)
        rms = np.sqrt((audio[:n * 640].astype(np.float64).reshape(n, 640) ** 2).mean(1))
        windows = range(n - 5)
        return (z(np.stack([video[k:k + 5] for k in windows])), z(np.stack([rms[k:k + 5] for k in windows])))


def test_known_audio_offsets_of_synthetic_clips_are_recovered():
    from preprocessing.synthetic import speech_like_audio

    metric = LipSync.for_embedder(EnvelopeSync())
    for i, delay in enumerate((-4, 0, 2, 5)):  # audio later than the mouth by `delay` frames (the corpus' convention)
        audio, mouth = speech_like_audio(np.random.default_rng([0, i]), 100, 150.0, (650.0, 1400.0))
        shift = delay * 640
        audio = np.roll(audio, shift)
        if shift > 0:
            audio[:shift] = 0
        elif shift < 0:
            audio[shift:] = 0
        scores = metric.update(*EnvelopeSync().embed(mouth, audio))
        assert scores.offset == -delay  # syncnet_python's sign: audio later → negative AV offset
        assert scores.confidence > 1.0
    res = metric.compute()
    assert set(res) == {"Sync-lm-D", "Sync-lm-C"} and res["Sync-lm-C"].model == "envelope stand-in"
    assert res["Sync-lm-D"].details["mean_abs_offset_frames"] == pytest.approx(11 / 4)
