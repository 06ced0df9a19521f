"""Video 3DMM fitting on synthetic ground truth, input checks and the EG3D camera conversion.

Ground truth: the "small" synthetic model (only its 68 keypoint rows matter), 40 frames with a
known id, a jaw-open sine, smile, blinks and small random exp, head motion yaw ±25°, pitch ±10°,
roll ±8°, landmarks projected at 512² plus N(0, 1 px) noise per coordinate.

Bounds: with σ = 1 px per coordinate the point-distance noise floor is √2 ≈ 1.41 px; the fit absorbs
part of it, so RMSE to the noisy input sits near 1.4-1.6 and RMSE to the clean landmarks near 1.
Full 64-d exp is not identifiable from 68 landmarks (bases overlap in landmark space and the priors
pick a compromise), so expression is checked on the semantic jaw coefficient only (correlation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from preprocessing.face3d import Face3D, join_coeffs, rotation_matrix
from preprocessing.fitting import (FitConfig, _Keypoints, apply_laplacian, eg3d_camera, fit_clip, landmark_weights,
                                   laplacian_matrix, synthetic_clip)
from preprocessing.synthetic_bfm import EXP_JAW_OPEN, synthetic_face_model

DEG = 180.0 / math.pi


@pytest.fixture(scope="module")
def face():
    return Face3D(synthetic_face_model(0, "small"))


@pytest.fixture(scope="module")
def clip(face):
    return synthetic_clip(face, frames=40, seed=3, image_size=512, noise_px=1.0)


@pytest.fixture(scope="module")
def fit(face, clip):
    return fit_clip(clip["landmarks"], np.ones(40, bool), face, image_size=512)


def _clean_rmse(result, clip, mask=None):
    d2 = ((result.landmarks_fit - clip["clean"]) ** 2).sum(-1).mean(-1)
    return float(np.sqrt(d2 if mask is None else d2[mask]).mean())


def test_fit_recovers_synthetic_clip(fit, clip):
    assert fit.exp.shape == (40, 64) and fit.id.shape == (80,) and fit.euler.shape == (40, 3)
    assert fit.landmarks_fit.shape == (40, 68, 2) and fit.eg3d_cam.shape == (40, 25)
    assert fit.valid.all() and np.isfinite(fit.rmse_px).all()
    assert fit.meta["face_model_synthetic"] is True
    rmse = float(fit.rmse_px.mean())
    assert rmse < 1.7, rmse  # input noise floor √2 px
    assert _clean_rmse(fit, clip) < 1.2
    euler_err = np.abs(fit.euler - clip["euler"]).mean() * DEG
    assert euler_err < 2.0, euler_err
    jaw = np.corrcoef(fit.exp[:, EXP_JAW_OPEN], clip["exp"][:, EXP_JAW_OPEN])[0, 1]
    assert jaw > 0.9, jaw
    assert fit.coeffs().shape == (40, 257)


def test_invalid_frames_are_interpolated(face, clip):
    lm = clip["landmarks"].copy()
    valid = np.ones(40, bool)
    gap = slice(18, 23)
    valid[gap] = False
    lm[gap] = np.nan  # no face: whatever the tracker left there must not be read
    res = fit_clip(lm, valid, face, image_size=512)
    assert not res.valid[gap].any() and res.valid[valid].all()
    assert np.isnan(res.rmse_px[gap]).all() and np.isfinite(res.rmse_px[valid]).all()
    assert np.isfinite(res.euler).all() and np.isfinite(res.exp).all()
    # pose across the gap follows the smooth ground truth within a few degrees
    assert np.abs(res.euler[gap] - clip["euler"][gap]).max() * DEG < 4.0
    # the gap's landmarks are as good as interpolating the true landmarks linearly across it
    # (no method sees the jaw move inside the gap)
    lerp = clip["clean"].copy()
    w = (np.arange(18, 23) - 17) / 6.0
    lerp[gap] = (1 - w)[:, None, None] * clip["clean"][17] + w[:, None, None] * clip["clean"][23]
    lerp_err = float(np.sqrt(((lerp[gap] - clip["clean"][gap]) ** 2).sum(-1).mean(-1)).mean())
    assert _clean_rmse(res, clip, ~valid) < 1.25 * lerp_err + 1.0
    # frames with a face are unaffected
    assert float(res.rmse_px[valid].mean()) < 1.7


def test_windows_agree_with_one_window(face, clip, fit):
    cfg = FitConfig(window=16, overlap=6)
    res = fit_clip(clip["landmarks"], None, face, image_size=512, config=cfg)
    assert res.iterations["windows"] >= 3
    assert res.energy < fit.energy * 1.02
    assert np.abs(res.euler - clip["euler"]).mean() * DEG < 2.0
    # blended trajectories have no seams: second differences stay at the ground truth's scale
    jump = np.abs(np.diff(res.euler, 2, axis=0)).max()
    assert jump < 1.5 * np.abs(np.diff(fit.euler, 2, axis=0)).max() + 0.005


def test_analytic_jacobian_matches_autograd(face):
    kp = _Keypoints(face, 512, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    idc = torch.randn(80, generator=g, dtype=torch.float64) * 0.5
    exp = torch.randn(3, 64, generator=g, dtype=torch.float64) * 0.5
    euler = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.3
    trans = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.2
    pred, jq, jid = kp.jacobian(idc, exp, euler, trans, with_id=True)
    ref = face.double().landmarks(join_coeffs(id=idc.expand(3, 80), exp=exp, euler=euler, trans=trans), 512)
    face.float()
    assert torch.allclose(pred, ref, atol=1e-8)
    for f in range(3):
        def frame(q, f=f):
            return kp.landmarks(idc, q[None, :64], q[None, 64:67], q[None, 67:])[0].reshape(-1)
        auto = torch.autograd.functional.jacobian(frame, torch.cat([exp[f], euler[f], trans[f]]))
        assert torch.allclose(jq[f], auto, atol=1e-8)
    auto_id = torch.autograd.functional.jacobian(
        lambda i: kp.landmarks(i, exp, euler, trans).reshape(3, 136), idc)
    assert torch.allclose(jid, auto_id, atol=1e-8)


def test_objective_pieces():
    w = landmark_weights(FitConfig())
    assert w.shape == (68,) and w.mean() == pytest.approx(1.0)
    assert w[40] == pytest.approx(20 * w[0]) and w[60] == pytest.approx(20 * w[30])
    lap = laplacian_matrix(5)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    assert torch.allclose(lap @ x, torch.tensor([-0.5, 0, 0, 0, 0.5], dtype=torch.float64))
    y = torch.randn(7, 4, dtype=torch.float64)
    assert torch.allclose(apply_laplacian(y), laplacian_matrix(7) @ y)


@pytest.mark.parametrize("kwargs, name", [
    (dict(landmarks=np.zeros((5, 67, 2))), "landmarks"),
    (dict(valid=np.ones(4, bool)), "valid"),
    (dict(valid=np.array([True, False, False, False, False])), "valid"),
    (dict(image_size=0), "image_size"),
])
def test_bad_inputs_name_the_argument(face, kwargs, name):
    args = dict(landmarks=np.full((5, 68, 2), 256.0), valid=np.ones(5, bool), image_size=512)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        fit_clip(args["landmarks"], args["valid"], face, image_size=args["image_size"])


def test_nan_on_a_valid_frame_is_rejected(face):
    lm = np.full((5, 68, 2), 256.0)
    lm[2, 3] = np.nan
    with pytest.raises(ValueError, match="landmarks"):
        fit_clip(lm, np.ones(5, bool), face)


@pytest.mark.parametrize("kwargs, key", [(dict(solver="sgd"), "solver"), (dict(overlap=50), "overlap"),
                                         (dict(w_exp=-1.0), "w_exp"), (dict(window=0), "window")])
def test_config_validation_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        FitConfig(**kwargs)


def test_reference_adam_schedule_keeps_window_results(face, clip):
    lm, valid = clip["landmarks"][:24], np.ones(24, bool)
    base = dict(solver="adam", adam_pose_iters=60, adam_joint_iters=60, window=12)
    without = fit_clip(lm, valid, face, config=FitConfig(**base, adam_window_iters=1, adam_window_lr=0.0))
    with_win = fit_clip(lm, valid, face, config=FitConfig(**base, adam_window_iters=40, adam_window_lr=0.01))
    assert with_win.iterations["windows"] == 2
    # the refinement is kept, not discarded: the result moves and fits the landmarks better
    assert np.abs(with_win.exp - without.exp).max() > 1e-3
    assert with_win.rmse_px.mean() < without.rmse_px.mean()


# ---------------------------------------------------------------------------------------------
# EG3D camera


def _reference_training_camera(pitch: float, yaw: float, roll: float, trans) -> np.ndarray:
    """The reference training-form EG3D camera written out from its formula, independently of the code:
    Rd = (Rz·Ry·Rx)ᵀ, t' = trans − (0, 0, 10), c = 0.27·(−Rd·t') + (0, 0.006, 0.161), rot = Rd·diag(1, −1, −1)."""
    cx, sx, cy, sy, cz, sz = (math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw), math.cos(roll),
                              math.sin(roll))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rd = (rz @ ry @ rx).T
    t = np.asarray(trans, float) - [0.0, 0.0, 10.0]
    c2w = np.eye(4)
    c2w[:3, :3] = rd @ np.diag([1.0, -1.0, -1.0])
    c2w[:3, 3] = 0.27 * -(rd @ t) + [0.0, 0.006, 0.161]
    return c2w


def test_eg3d_neutral_pose_is_the_reference_frontal_camera():
    cam = eg3d_camera(np.zeros((1, 3)), np.zeros((1, 3)))[0]
    c2w = cam[:16].reshape(4, 4)
    assert np.allclose(c2w[:3, 3], [0, 0.006, 2.861], atol=1e-6)
    assert np.allclose(c2w[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-6)  # x right, y down, z to origin
    assert np.allclose(c2w[3], [0, 0, 0, 1])
    assert np.allclose(cam[16:], [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("pose", [
    (0.0, 0.0, 0.0, (0.0, 0.0, 0.0)),
    (0.0, 0.26, 0.0, (0.0, 0.0, 0.0)),  # 15° yaw
    (-0.26, 0.0, 0.0, (0.0, 0.0, 0.0)),  # 15° pitch
    (0.0, 0.0, 0.2, (0.0, 0.0, 0.0)),
    (0.1, -0.25, 0.05, (0.12, -0.2, 0.3)),
    (-0.2, 0.3, -0.1, (-0.3, 0.25, -0.4)),
])
def test_eg3d_camera_matches_reference_training_form(pose):
    pitch, yaw, roll, trans = pose
    got = eg3d_camera(np.array([[pitch, yaw, roll]]), np.array([trans]))[0, :16].reshape(4, 4).astype(np.float64)
    assert np.allclose(got, _reference_training_camera(pitch, yaw, roll, trans), atol=1e-6)


def test_eg3d_rotation_orthonormal_and_radius():
    rng = np.random.default_rng(0)
    euler = rng.uniform(-0.6, 0.6, (20, 3))
    trans = rng.uniform(-0.3, 0.3, (20, 3))
    c2w = eg3d_camera(euler, trans)[:, :16].reshape(-1, 4, 4).astype(np.float64)
    rot = c2w[:, :3, :3]
    assert np.allclose(rot @ np.transpose(rot, (0, 2, 1)), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    # with no translation the camera sits at 0.27 × 10 from the offset head centre, looking at it
    c0 = eg3d_camera(euler, np.zeros_like(trans))[:, :16].reshape(-1, 4, 4).astype(np.float64)
    off = c0[:, :3, 3] - [0.0, 0.006, 0.161]
    assert np.allclose(np.linalg.norm(off, axis=1), 2.7, atol=1e-5)
    assert np.allclose(c0[:, :3, 2], -off / 2.7, atol=1e-5)


def test_eg3d_yaw_moves_camera_the_other_way():
    for yaw in (0.3, -0.3):
        pos = eg3d_camera(np.array([[0.0, yaw, 0.0]]), np.zeros((1, 3)))[0, :16].reshape(4, 4)[:3, 3]
        pos = pos - np.array([0.0, 0.006, 0.161])  # about the EG3D head centre
        assert pos[1] == pytest.approx(0.0, abs=1e-6)
        # head turns by +yaw about y (its nose toward +x for yaw > 0): camera goes round by -yaw
        assert math.atan2(pos[0], pos[2]) == pytest.approx(-yaw, abs=1e-5)
        nose = rotation_matrix(torch.tensor([0.0, yaw, 0.0], dtype=torch.float64)).numpy() @ [0, 0, 1]
        assert np.sign(nose[0]) == -np.sign(pos[0])


def test_eg3d_camera_sees_the_head_as_the_deep3d_camera():
    """Static head + moving camera == moving head + fixed camera (before the 0.27 scale and offset)."""
    rng = np.random.default_rng(1)
    euler, trans = rng.uniform(-0.5, 0.5, (1, 3)), rng.uniform(-0.3, 0.3, (1, 3))
    c2w = eg3d_camera(euler, trans)[0, :16].reshape(4, 4).astype(np.float64)
    r = rotation_matrix(torch.as_tensor(euler[0])).numpy()
    p = rng.normal(size=(10, 3))
    d3d = (np.diag([1.0, -1, -1]) @ ((p @ r.T + trans[0]) - [0, 0, 10]).T).T  # Deep3D camera, OpenCV axes
    centre = r.T @ ([0, 0, 10] - trans[0])
    eg = ((p - centre) @ c2w[:3, :3])  # world -> camera with the EG3D rotation, unscaled centre
    assert np.allclose(eg, d3d, atol=1e-5)
    assert np.allclose(c2w[:3, 3], 0.27 * centre + [0.0, 0.006, 0.161], atol=1e-5)
