"""Fréchet distance, KID and mergeable moments: closed forms, a direct KID formula, merge == single pass."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.linalg

from evaluation.metrics import FrechetDistance, KernelDistance, MetricError, frechet_distance, merge_all
from evaluation.metrics.moments import GaussianMoments


def random_spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.linspace(1.0, cond, d)) @ q.T


def scipy_frechet(mu1, s1, mu2, s2):
    """pytorch-fid's formula with scipy's sqrtm (reference on well-conditioned inputs)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_frechet_closed_form_diagonal_and_commuting():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # same eigenvectors (commuting covariances): the same closed form on the eigenvalues
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    assert frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T) == pytest.approx(expected, rel=1e-10)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == \
        pytest.approx(9.0 + 1.0)


def test_frechet_matches_scipy_sqrtm_on_well_conditioned_cases():
    rng = np.random.default_rng(1)
    for d in (3, 16, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_spd(rng, d), random_spd(rng, d, cond=5.0)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-9)


def test_frechet_of_singular_covariances_is_finite_and_zero_for_itself():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 64))  # fewer samples than dimensions: singular covariance
    m = FrechetDistance(64, "FID-test")
    m.update(x, real=True)
    m.update(x, real=False)
    value = m.compute()["FID-test"].value
    assert 0.0 <= value < 1e-8


def test_fid_of_sampled_gaussians_approaches_closed_form():
    rng = np.random.default_rng(3)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = random_spd(rng, d, 3.0), random_spd(rng, d, 2.0)
    m = FrechetDistance(d, "FID-test")
    m.update(rng.multivariate_normal(mu1, s1, 40000), real=True)
    m.update(rng.multivariate_normal(mu2, s2, 40000), real=False)
    expected = frechet_distance(mu1, s1, mu2, s2)
    assert m.compute()["FID-test"].value == pytest.approx(expected, rel=0.05)


def test_moments_match_numpy_and_merge_in_any_split():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((101, 5)) * 3 + 7
    whole = GaussianMoments(5)
    whole.update(x)
    np.testing.assert_allclose(whole.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.covariance(), np.cov(x, rowvar=False), rtol=1e-10)
    parts = []
    for chunk in np.array_split(x, [1, 30, 31, 77]):
        p = GaussianMoments(5)
        p.update(chunk)
        parts.append(p)
    merged = GaussianMoments(5)
    for p in parts:
        merged.merge(p)
    assert merged.n == 101
    np.testing.assert_allclose(merged.covariance(), whole.covariance(), rtol=1e-10)


def test_fid_merge_of_worker_states_equals_single_pass_and_survives_pickle():
    rng = np.random.default_rng(5)
    real, fake = rng.standard_normal((90, 8)), rng.standard_normal((70, 8)) + 0.3
    single = FrechetDistance(8, "FID-dlib", model="dlib")
    single.update(real, real=True)
    single.update(fake, real=False)
    workers = []
    for r, f in zip(np.array_split(real, 3), np.array_split(fake, 3)):
        w = FrechetDistance(8, "FID-dlib", model="dlib")
        w.update(r, real=True)
        w.update(f, real=False)
        workers.append(pickle.loads(pickle.dumps(w)))  # what Ray does between worker and driver
    merged = merge_all(workers)
    a, b = single.compute()["FID-dlib"], merged.compute()["FID-dlib"]
    assert b.value == pytest.approx(a.value, rel=1e-10)
    assert (b.name, b.model, b.count, b.higher_is_better) == ("FID-dlib", "dlib", 70, False)
    assert workers[0].fake.n == 24  # merge_all left its inputs alone
    with pytest.raises(MetricError, match="different specs"):
        FrechetDistance(8, "FID").merge(FrechetDistance(8, "FID-dlib"))


def direct_kid(x, y):
    """Unbiased MMD² written out pair by pair."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_direct_formula_and_merges():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((24, 5)), rng.standard_normal((24, 5)) * 1.3 + 0.2
    single = KernelDistance(5, "KID-test")
    single.update(x, real=True)
    single.update(y, real=False)
    res = single.compute()["KID-test"]
    # the state keeps float32 features (as torchmetrics does); the sums are float64
    x32, y32 = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    assert res.value == pytest.approx(direct_kid(x32, y32), rel=1e-9)
    assert res.details["subsets"] == 1.0
    parts = []
    for xs, ys in zip(np.array_split(x, 2), np.array_split(y, 2)):
        p = KernelDistance(5, "KID-test")
        p.update(xs, real=True)
        p.update(ys, real=False)
        parts.append(p)
    assert merge_all(parts).compute()["KID-test"].value == pytest.approx(res.value, rel=1e-6)


def test_kid_subsets_separate_distributions():
    rng = np.random.default_rng(7)
    same, shifted = KernelDistance(16, "KID", subset_size=50, num_subsets=20), KernelDistance(16, "KID", subset_size=50,
                                                                                          num_subsets=20)
    ref = rng.standard_normal((200, 16))
    for m, other in ((same, rng.standard_normal((150, 16))), (shifted, rng.standard_normal((150, 16)) + 0.5)):
        m.update(ref, real=True)
        m.update(other, real=False)
    a, b = same.compute()["KID"], shifted.compute()["KID"]
    assert abs(a.value) < 0.01 and b.value > 0.1
    assert a.details["subset_size"] == 50 and a.details["subsets"] == 20


def test_empty_states_say_what_is_missing():
    with pytest.raises(MetricError, match="at least 2 real"):
        FrechetDistance(4, "FID").compute()
    with pytest.raises(MetricError, match=r"\(N, 4\)"):
        FrechetDistance(4, "FID").update(np.zeros((3, 5)), real=True)
