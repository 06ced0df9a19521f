"""AED, APD, LMD, PSNR, SSIM: identical inputs, known offsets, scikit-image's definitions, merge == single pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from evaluation.metrics import AED, APD, LMD, PSNR, SSIM, MetricError, expression_and_angles, merge_all


def test_identical_videos_give_zero_distances_and_capped_psnr():
    rng = np.random.default_rng(0)
    coeffs = rng.standard_normal((10, 257))
    exp, ang = expression_and_angles(coeffs)
    lms = rng.uniform(0, 512, (10, 68, 2))
    frames = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    aed, apd, lmd, p, s = AED(), APD(), LMD(), PSNR(), SSIM()
    aed.update(exp, exp)
    apd.update(ang, ang)
    lmd.update(lms, lms)
    p.update(frames, frames)
    s.update(frames, frames)
    assert aed.compute()["AED"].value == 0.0 and apd.compute()["APD"].value == 0.0
    assert lmd.compute()["LMD"].value == 0.0
    r = p.compute()["PSNR"]
    assert r.value == 100.0 and r.details["identical_frames"] == 4.0 and math.isfinite(r.value)
    assert s.compute()["SSIM"].value == pytest.approx(1.0)


def test_aed_apd_known_offsets_and_layout():
    rng = np.random.default_rng(1)
    gen = rng.standard_normal((6, 257))
    drv = gen.copy()
    drv[:, 80:144] += 0.25  # every expression coefficient off by 0.25
    drv[:, 224] -= 0.3  # pitch off by 0.3 rad; yaw, roll exact
    drv[:, :80] += 5.0  # identity, texture, lighting, translation do not count
    drv[:, 144:224] += 5.0
    drv[:, 227:] += 5.0
    ge, ga = expression_and_angles(gen)
    de, da = expression_and_angles(drv)
    aed, apd = AED(), APD()
    aed.update(ge, de)
    apd.update(ga, da)
    assert aed.compute()["AED"].value == pytest.approx(0.25)
    r = apd.compute()["APD"]
    assert r.value == pytest.approx(0.1) and r.details["degrees"] == pytest.approx(math.degrees(0.1))
    assert not r.higher_is_better and r.count == 6
    with pytest.raises(MetricError, match=r"\(frames, 64\)"):
        aed.update(ge[:, :10], de[:, :10])
    with pytest.raises(MetricError, match="257"):
        expression_and_angles(gen[:, :200])


def test_lmd_is_translation_invariant_and_measures_mouth_shape():
    rng = np.random.default_rng(2)
    ref = rng.uniform(100, 400, (5, 68, 2))
    moved = ref + np.array([13.0, -7.0])  # translation: removed by mean-centring
    moved[:, :48] += rng.uniform(-50, 50, (5, 48, 2))  # non-mouth points do not count
    m = LMD()
    m.update(moved, ref)
    assert m.compute()["LMD"].value == pytest.approx(0.0, abs=1e-9)
    opened = ref.copy()
    opened[:, 57, 1] += 4.0  # lower-lip point down 4 px: centred shift is 4·(19/20) for it, 4/20 for the others
    m2 = LMD()
    m2.update(opened, ref)
    expected = (4 * 19 / 20 + 19 * math.hypot(0, 4 / 20)) / 20
    assert m2.compute()["LMD"].value == pytest.approx(expected)


def test_psnr_ssim_match_scikit_image_and_merge():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)
    gen = np.clip(ref.astype(int) + rng.integers(-20, 21, ref.shape), 0, 255).astype(np.uint8)
    gen[0] = ref[0]  # one identical frame (the source frame in self-reenactment)
    p, s = PSNR(), SSIM()
    p.update(gen, ref)
    s.update(gen, ref)
    expected_p = [100.0] + [peak_signal_noise_ratio(r, g, data_range=255) for r, g in zip(ref[1:], gen[1:])]
    expected_s = [structural_similarity(r, g, channel_axis=2, data_range=255) for r, g in zip(ref, gen)]
    assert p.compute()["PSNR"].value == pytest.approx(np.mean(expected_p), rel=1e-12)
    assert p.compute()["PSNR"].details["identical_frames"] == 1.0
    assert s.compute()["SSIM"].value == pytest.approx(np.mean(expected_s), rel=1e-12)
    parts = []
    for idx in np.array_split(np.arange(6), 3):
        q = PSNR()
        q.update(gen[idx], ref[idx])
        parts.append(q)
    merged = merge_all(parts).compute()["PSNR"]
    assert merged.value == pytest.approx(p.compute()["PSNR"].value, rel=1e-12)
    assert merged.details["identical_frames"] == 1.0 and merged.count == 6
    with pytest.raises(MetricError, match="different specs"):
        PSNR(max_db=60).merge(PSNR())
    with pytest.raises(MetricError, match="RGB uint8"):
        p.update(gen.astype(np.float32), ref)


@pytest.mark.parametrize("make, shape", [
    (AED, (9, 64)), (APD, (9, 3)), (LMD, (9, 68, 2)), (SSIM, (9, 24, 24, 3)),
])
def test_worker_states_merge_to_the_single_pass(make, shape):
    rng = np.random.default_rng(5)
    if make is SSIM:
        gen = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = np.clip(gen.astype(int) + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)
    else:
        gen, ref = rng.standard_normal(shape), rng.standard_normal(shape)
    single = make()
    single.update(gen, ref)
    parts = []
    for idx in np.array_split(np.arange(shape[0]), 3):
        p = make()
        p.update(gen[idx], ref[idx])
        parts.append(p)
    (name, a), = single.compute().items()
    b = merge_all(parts).compute()[name]
    assert b.value == pytest.approx(a.value, rel=1e-12) and b.count == a.count == shape[0]
    assert b.details["std"] == pytest.approx(a.details["std"], rel=1e-9)
