"""Batched 3DMM video fitting to tracked 68-point landmarks (one identity per clip).

Conventions are those of `preprocessing.face3d` (Deep3DFaceRecon): R = Rz·Ry·Rx, camera on +z at
distance 10, focal 1015 / centre 112 at 224 px scaled to the image size, landmarks in image pixels
(x right, y down). Only the 68 keypoint rows of the bases are evaluated.

Objective (the reference video fitter's, written as means over the T frames of the problem):

    E = 1/T Σ_t valid_t · Σ_{i,c} a_i (s·(x̂_tic − x_tic))²          landmarks
      + 0.2 · mean(id²) + 0.6 · mean_{t,k}(exp_tk²)                   priors
      + 1.0 · mean_{t,k}((L exp)_tk²) + 0.3 · [mean((L euler)²) + mean((L trans)²)]   temporal

* Landmark units: s = 224 / image_size, i.e. residuals in pixels of a 224² image — the reference
  divides landmarks by image_size/224 before its loss, so the prior weights keep their meaning at
  any resolution. 1 px at 512² is 0.4375 "224-px".
* Landmark weights: 20 on the eyes (36-47) and on the outer and inner lips (48-67), 1 elsewhere,
  normalised to mean 1 over the 68 points; a_i = w_i / 136, so the landmark term is the weighted mean
  of squared coordinate residuals over the 136 coordinates.
* L is the reference's temporal Laplacian: (L x)_t = x_t − (x_{t−1} + x_{t+1}) / 2 with the ends
  replicated (x_{−1} = x_0, x_T = x_{T−1}); half the second difference.
* Frames with valid = False have no landmark term; the temporal terms carry them (the minimiser of
  the Laplacian energy is a smooth, discrete-spline interpolation across the gap). Their exp prior
  is weakened to `w_exp_invalid` (0.006, 1 % of 0.6): with the full prior the expression would sag
  to neutral inside every gap (a mouth closing for the frames a detector missed).

Solver ("gn", the default):

1. Pose initialisation: per frame, translation from the landmarks' centroid and spread, then a
   batched Levenberg–Marquardt on (euler, trans) with id = exp = 0 (6×6 systems per frame).
2. Identity: joint LM over id (80, shared) and exp/euler/trans (70 per frame) on a subset of valid
   frames spread over the clip (`id_frames`), no temporal terms; the normal equations are solved
   with a Schur complement on the id block (70×70 per-frame blocks, batched Cholesky).
3. Windows: id fixed, windows of `window` frames overlapping by `overlap`; per window an LM on all
   per-frame parameters with the temporal terms. The normal matrix is per-frame blocks plus the
   (constant) Laplacian coupling; each LM step is solved by conjugate gradients preconditioned
   with the exact per-frame blocks (batched Cholesky). Overlaps are blended with linear ramps.
   Memory is bounded by the window, never by the clip length.

Both solvers compute in float32 by default (`FitConfig.dtype`), as the reference does; float64
gives the same fits to ~1e-6 and is used by the Jacobian tests.

Solver "adam" re-implements the reference schedule on the same objective: Adam lr 0.1, 200 pose-only
iterations (landmark term only), 200 joint iterations over the whole clip, then 50 iterations
(lr 0.005) per 50-frame window — keeping the windowed results, which the reference discards.

Not done here: photometric refinement of texture and lighting (tex/gamma are returned as zeros by
`FitResult.coeffs`); it needs a renderer-in-the-loop loss and is left for a later change.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from preprocessing.face3d import (CAMERA_DISTANCE, Face3D, intrinsics, join_coeffs, rotation_matrix)
from preprocessing.face_model import INNER_LIP, LEFT_EYE, OUTER_LIP, RIGHT_EYE, FaceModel

EYES = tuple(RIGHT_EYE) + tuple(LEFT_EYE)
LIPS = tuple(OUTER_LIP) + tuple(INNER_LIP)
N_EXP, N_ID, N_Q = 64, 80, 70  # per-frame unknowns q = [exp 64, euler 3, trans 3]
EG3D_SCALE = 0.27  # Deep3D units (decimetres) -> EG3D world units
EG3D_OFFSET = np.array([0.0, 0.006, 0.161])  # EG3D's head centre in its world
EG3D_FOCAL = 4.2647
# Deep3D camera orientation in OpenCV convention (columns: camera x right, y down, z forward) in world
DEEP3D_CAM_ROT = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class FitConfig:
    """Weights, schedule and solver for `fit_clip`; validated on construction (errors name the key)."""

    weight_eyes: float = 20.0
    weight_lips: float = 20.0
    w_id: float = 0.2
    w_exp: float = 0.6
    # exp prior on frames without a face: weak, so the temporal terms interpolate expression
    # across gaps instead of the prior pulling it to neutral (0 would leave a constant mode free)
    w_exp_invalid: float = 0.006
    w_lap_exp: float = 1.0
    w_lap_pose: float = 0.3
    solver: str = "gn"  # "gn" (Gauss–Newton/LM, default) or "adam" (reference schedule)
    window: int = 50
    overlap: int = 10
    min_valid_frames: int = 3
    # gn
    pose_iters: int = 8
    id_frames: int = 32
    id_iters: int = 3
    window_iters: int = 3
    cg_iters: int = 30
    cg_tol: float = 1e-2  # relative residual of the inner CG solve (inexact LM steps)
    dtype: str = "float32"  # compute precision of both solvers ("float64" for checks)
    # adam
    adam_pose_iters: int = 200
    adam_joint_iters: int = 200
    adam_window_iters: int = 50
    adam_lr: float = 0.1
    adam_window_lr: float = 0.005

    def __post_init__(self) -> None:
        if self.solver not in ("gn", "adam"):
            raise ValueError(f"FitConfig.solver must be 'gn' or 'adam', got {self.solver!r}")
        for key in ("weight_eyes", "weight_lips", "w_id", "w_exp", "w_exp_invalid", "w_lap_exp", "w_lap_pose", "cg_tol",
                    "adam_lr", "adam_window_lr"):
            if not (getattr(self, key) >= 0 and math.isfinite(getattr(self, key))):
                raise ValueError(f"FitConfig.{key} must be a finite number >= 0, got {getattr(self, key)!r}")
        for key in ("window", "min_valid_frames", "pose_iters", "id_frames", "id_iters", "window_iters",
                    "cg_iters"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"FitConfig.{key} must be >= 1, got {getattr(self, key)!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"FitConfig.dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not 0 <= self.overlap < self.window:
            raise ValueError(f"FitConfig.overlap must be in [0, window={self.window}), got {self.overlap!r}")


@dataclass
class FitResult:
    """Per-clip fit: one identity, per-frame exp/pose, fitted landmarks, errors and EG3D cameras."""

    id: np.ndarray  # (80,)
    exp: np.ndarray  # (T, 64)
    euler: np.ndarray  # (T, 3) radians, x = pitch, y = yaw, z = roll
    trans: np.ndarray  # (T, 3) decimetres
    landmarks_fit: np.ndarray  # (T, 68, 2) projected keypoints, image px (x right, y down)
    rmse_px: np.ndarray  # (T,) sqrt(mean over points of squared distance to the input), NaN if invalid
    valid: np.ndarray  # (T,) bool; False = no face: parameters interpolated by the temporal terms
    eg3d_cam: np.ndarray  # (T, 25) cam2world (16, row-major) + normalised intrinsics (9)
    iterations: dict = field(default_factory=dict)  # outer iterations per stage
    seconds: float = 0.0
    energy: float = float("nan")  # final objective (see module docstring)
    solver: str = "gn"
    image_size: int = 512
    meta: dict = field(default_factory=dict)  # face-model metadata (synthetic or not) and config

    def coeffs(self) -> np.ndarray:
        """(T, 257) Deep3DFaceRecon coefficients; tex and gamma are zeros (no photometric fit)."""
        t = self.exp.shape[0]
        out = join_coeffs(id=torch.as_tensor(np.broadcast_to(self.id, (t, N_ID)).copy()),
                          exp=torch.as_tensor(self.exp), euler=torch.as_tensor(self.euler),
                          trans=torch.as_tensor(self.trans))
        return out.numpy().astype(np.float32)


# ============================================================================================
# EG3D camera
# ============================================================================================

def eg3d_camera(euler: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """(T, 25) EG3D cameras of the head poses in the reference *training* form: cam2world (4×4
    row-major, EG3D world units) + normalised intrinsics (fx = fy = 4.2647, cx = cy = 0.5).

    This is the form the released Real3D-Portrait models (and the tri-plane renderer) were trained
    with. With Rd = (Rz·Ry·Rx)ᵀ (Deep3DFaceRecon's row-vector rotation) and t' = trans − (0, 0, 10):
    centre c = 0.27·(−Rd·t') + (0, 0.006, 0.161), rotation Rd·diag(1, −1, −1), not renormalised
    (the radius is about 2.7 only because of the 0.27 scale). Geometrically: the head posed as R·p + t
    seen by the Deep3D camera at (0, 0, 10) equals the static head seen by a camera with rotation
    Rᵀ·diag(1, −1, −1) and centre Rᵀ·((0, 0, 10) − t), scaled by 0.27 and offset to EG3D's head
    centre. Neutral pose: centre (0, 0.006, 2.861), rotation diag(1, −1, −1).
    """
    euler = np.asarray(euler, dtype=np.float64).reshape(-1, 3)
    trans = np.asarray(trans, dtype=np.float64).reshape(-1, 3)
    rot = rotation_matrix(torch.as_tensor(euler)).numpy()  # (T, 3, 3) column-vector R = Rz·Ry·Rx
    rd = np.transpose(rot, (0, 2, 1))  # Deep3DFaceRecon's form
    t_prime = trans - np.array([0.0, 0.0, CAMERA_DISTANCE])
    centre = EG3D_SCALE * -np.einsum("tij,tj->ti", rd, t_prime) + EG3D_OFFSET
    c2w = np.zeros((len(euler), 4, 4))
    c2w[:, :3, :3] = rd @ DEEP3D_CAM_ROT
    c2w[:, :3, 3] = centre
    c2w[:, 3, 3] = 1.0
    k = np.array([EG3D_FOCAL, 0.0, 0.5, 0.0, EG3D_FOCAL, 0.5, 0.0, 0.0, 1.0])
    return np.concatenate([c2w.reshape(-1, 16), np.broadcast_to(k, (len(euler), 9))], axis=1).astype(np.float32)


# ============================================================================================
# model evaluation and analytic Jacobians (keypoint rows only)
# ============================================================================================

class _Keypoints:
    """Keypoint rows of the bases (float64) and the camera for one image size."""

    def __init__(self, face: Face3D, size: int, dtype=torch.float64):
        rows = (face.keypoints[:, None] * 3 + torch.arange(3)).reshape(-1)
        self.mean = face.mean_shape[0, rows].to(dtype).reshape(68, 3)
        self.bid = face.id_base[rows].to(dtype).reshape(68, 3, N_ID)
        self.bexp = face.exp_base[rows].to(dtype).reshape(68, 3, N_EXP)
        self.focal, self.centre = intrinsics(size)
        self.size = size
        self.dtype = dtype

    def shape(self, idc: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        """(T, 68, 3) canonical keypoints."""
        base = self.mean + (self.bid.reshape(204, N_ID) @ idc).reshape(68, 3)
        return base + (exp @ self.bexp.reshape(204, N_EXP).T).reshape(-1, 68, 3)

    def project(self, posed: torch.Tensor) -> torch.Tensor:
        """Posed points -> image px (x right, y down)."""
        zc = CAMERA_DISTANCE - posed[..., 2]
        x = self.focal * posed[..., 0] / zc + self.centre
        y = self.size - (self.focal * posed[..., 1] / zc + self.centre)
        return torch.stack([x, y], -1)

    def landmarks(self, idc, exp, euler, trans) -> torch.Tensor:
        """(T, 68, 2) projected keypoints in image px; differentiable (used by the Adam solver)."""
        s = self.shape(idc, exp)
        posed = s @ rotation_matrix(euler).transpose(-1, -2) + trans[:, None, :]
        return self.project(posed)

    def jacobian(self, idc, exp, euler, trans, with_id: bool = False, with_exp: bool = True):
        """Landmarks (T,68,2) and d landmarks / d[exp, euler, trans] (T,136,70 or 6), optional d/d id."""
        s = self.shape(idc, exp)
        rot, drot = _rotation_and_derivatives(euler)  # (T,3,3), (T,3,3,3)
        posed = s @ rot.transpose(-1, -2) + trans[:, None, :]
        zc = CAMERA_DISTANCE - posed[..., 2]
        f = self.focal
        x = f * posed[..., 0] / zc + self.centre
        y = self.size - (f * posed[..., 1] / zc + self.centre)
        pred = torch.stack([x, y], -1)
        zero = torch.zeros_like(zc)
        dpx = torch.stack([f / zc, zero, f * posed[..., 0] / zc ** 2], -1)
        dpy = torch.stack([zero, -f / zc, -f * posed[..., 1] / zc ** 2], -1)
        dp = torch.stack([dpx, dpy], -2)  # (T, 68, 2, 3) d image / d posed
        t = s.shape[0]
        jt = dp  # d/d trans
        # d posed / d euler_a = dR_a · s   -> (T, 68, 3, 3[a])
        dpos_de = (s @ drot.reshape(t, 9, 3).transpose(1, 2)).reshape(t, 68, 3, 3).transpose(-1, -2)
        je = dp @ dpos_de  # (T, 68, 2, 3)
        parts = []
        a = dp @ rot[:, None]  # (T, 68, 2, 3) d image / d canonical
        if with_exp:
            parts.append(_point_contract(a, self.bexp))
        parts += [je, jt]
        jq = torch.cat(parts, -1).reshape(t, 136, -1)
        jid = _point_contract(a, self.bid).reshape(t, 136, N_ID) if with_id else None
        return pred, jq, jid


def _point_contract(a: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(T,68,2,3) per-point 2×3 blocks times (68,3,K) basis rows -> (T,68,2,K)."""
    out = a[..., 0, None] * basis[None, :, None, 0]
    for j in (1, 2):
        out = out + a[..., j, None] * basis[None, :, None, j]
    return out


def _rotation_and_derivatives(euler: torch.Tensor):
    """R = Rz·Ry·Rx (T,3,3) and dR/d(pitch, yaw, roll) stacked as (T,3,3,3) [a, i, j]."""
    x, y, z = euler.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()

    def m(*v):
        return torch.stack(v, -1).unflatten(-1, (3, 3))

    rx = m(one, zero, zero, zero, cx, -sx, zero, sx, cx)
    ry = m(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    rz = m(cz, -sz, zero, sz, cz, zero, zero, zero, one)
    drx = m(zero, zero, zero, zero, -sx, -cx, zero, cx, -sx)
    dry = m(-sy, zero, cy, zero, zero, zero, -cy, zero, -sy)
    drz = m(-sz, -cz, zero, cz, -sz, zero, zero, zero, zero)
    rzy = rz @ ry
    rot = rzy @ rx
    d = torch.stack([rzy @ drx, rz @ dry @ rx, drz @ ry @ rx], 1)
    return rot, d


# ============================================================================================
# objective pieces
# ============================================================================================

def landmark_weights(cfg: FitConfig) -> np.ndarray:
    """(68,) landmark weights: eyes and lips up-weighted, normalised to mean 1."""
    w = np.ones(68)
    w[list(EYES)] = cfg.weight_eyes
    w[list(LIPS)] = cfg.weight_lips
    return w * 68.0 / w.sum()


def apply_laplacian(x: torch.Tensor) -> torch.Tensor:
    """L x along axis 0 in O(T): x_t − (x_{t−1} + x_{t+1})/2, ends replicated."""
    prev = torch.cat([x[:1], x[:-1]])
    nxt = torch.cat([x[1:], x[-1:]])
    return x - 0.5 * (prev + nxt)


def laplacian_matrix(t: int, dtype=torch.float64) -> torch.Tensor:
    """(T, T) reference temporal Laplacian: x_t − (x_{t−1} + x_{t+1})/2, ends replicated."""
    lap = torch.eye(t, dtype=dtype)
    for i in range(t):
        lap[i, max(i - 1, 0)] -= 0.5
        lap[i, min(i + 1, t - 1)] -= 0.5
    return lap


class _Problem:
    """One (sub)problem: observations, scaled weights, and energy/gradient pieces."""

    def __init__(self, kp: _Keypoints, obs: torch.Tensor, valid: torch.Tensor, cfg: FitConfig):
        self.kp, self.cfg = kp, cfg
        self.obs = obs
        self.t = obs.shape[0]
        s = 224.0 / kp.size
        w = torch.as_tensor(landmark_weights(cfg), dtype=kp.dtype)
        # sqrt of per-coordinate weight a_i s² (landmark residual -> least-squares residual)
        self.sw = (torch.sqrt(w / 136.0) * s).repeat_interleave(2)[None] * valid.to(kp.dtype)[:, None]  # (T,136)
        self.c_exp = cfg.w_exp / N_EXP
        # per-frame exp prior: frames without a face keep only a weak one (see FitConfig)
        c_t = torch.where(valid, torch.tensor(cfg.w_exp), torch.tensor(cfg.w_exp_invalid)) / N_EXP
        self.prior_q = torch.cat([c_t[:, None].expand(-1, N_EXP), torch.zeros(self.t, 6)], 1).to(kp.dtype)
        self.c_id = cfg.w_id / N_ID
        self.c_lap = torch.cat([torch.full((N_EXP,), cfg.w_lap_exp / N_EXP), torch.full((6,), cfg.w_lap_pose / 3)]
                               ).to(kp.dtype)
        self._ltl = None

    @property
    def ltl(self) -> torch.Tensor:
        """Dense LᵀL (T, T); only built for windows (T <= window), never for a whole clip."""
        if self._ltl is None:
            lap = laplacian_matrix(self.t, self.kp.dtype)
            self._ltl = lap.T @ lap
        return self._ltl

    def residual(self, pred: torch.Tensor) -> torch.Tensor:
        return (pred - self.obs).reshape(self.t, 136) * self.sw

    def energy_terms(self, idc, q, temporal: bool = True) -> torch.Tensor:
        """Per-frame-summed energy × T (a scalar), for the GN acceptance tests."""
        pred = self.kp.landmarks(idc, q[:, :N_EXP], q[:, 64:67], q[:, 67:70])
        e = self.residual(pred).square().sum() + (self.prior_q * q.square()).sum()
        e = e + self.t * self.c_id * idc.square().sum()
        if temporal:
            e = e + (apply_laplacian(q).square() * self.c_lap).sum()
        return e


# ============================================================================================
# Gauss–Newton / Levenberg–Marquardt stages
# ============================================================================================

def _init_pose(kp: _Keypoints, obs: np.ndarray, valid: np.ndarray, cfg: FitConfig) -> tuple[np.ndarray, int]:
    """(T, 6) euler+trans for every frame: batched per-frame LM with id = exp = 0; gaps interpolated."""
    idx = np.flatnonzero(valid)
    o = torch.as_tensor(obs[idx], dtype=kp.dtype)
    n = len(idx)
    mean2d = kp.project(kp.mean[None].clone())[0]  # neutral projection
    spread_m = (mean2d - mean2d.mean(0)).norm(dim=-1).mean()
    spread_o = (o - o.mean(1, keepdim=True)).norm(dim=-1).mean(1)
    zc = CAMERA_DISTANCE * spread_m / spread_o  # (n,) camera depth of the head centre
    cen = o.mean(1)
    q = torch.zeros(n, 6, dtype=kp.dtype)
    q[:, 5] = CAMERA_DISTANCE - zc
    kmean = kp.mean.mean(0)
    q[:, 3] = (cen[:, 0] - kp.centre) * zc / kp.focal - kmean[0]
    q[:, 4] = (kp.size - kp.centre - cen[:, 1]) * zc / kp.focal - kmean[1]
    prob = _Problem(kp, o, torch.ones(n, dtype=torch.bool), cfg)
    idc = torch.zeros(N_ID, dtype=kp.dtype)
    exp0 = torch.zeros(n, N_EXP, dtype=kp.dtype)

    def frame_energy(qq):
        pred = kp.landmarks(idc, exp0, qq[:, :3], qq[:, 3:])
        return prob.residual(pred).square().sum(1)

    mu = torch.full((n,), 1e-3, dtype=kp.dtype)
    e = frame_energy(q)
    eye = torch.eye(6, dtype=kp.dtype)
    it = 0
    for it in range(1, cfg.pose_iters + 1):
        pred, j, _ = kp.jacobian(idc, exp0, q[:, :3], q[:, 3:], with_exp=False)
        j = j * prob.sw[:, :, None]
        r = prob.residual(pred)
        h = j.transpose(1, 2) @ j
        g = (j.transpose(1, 2) @ r[:, :, None])[..., 0]
        dh = torch.diagonal(h, dim1=1, dim2=2)
        step, _ = torch.linalg.solve_ex(h + mu[:, None, None] * (dh[:, :, None] * eye + 1e-6 * eye), -g)
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        qn = q + step
        en = frame_energy(qn)
        ok = en < e
        q = torch.where(ok[:, None], qn, q)
        rel = (e - torch.where(ok, en, e)) / e.clamp_min(1e-30)
        e = torch.where(ok, en, e)
        mu = torch.where(ok, mu / 3, mu * 4).clamp(1e-9, 1e9)
        if bool((rel < 1e-9).all()) and bool(ok.all()):
            break
    out = np.zeros((len(valid), 6))
    qn = q.numpy()
    for k in range(6):
        out[:, k] = np.interp(np.arange(len(valid)), idx, qn[:, k])
    return out, it


def _fit_identity(kp, obs, valid, pose0, cfg):
    """Shared id from a subset of valid frames: LM with a Schur complement on the id block."""
    idx = np.flatnonzero(valid)
    k = min(cfg.id_frames, len(idx))
    sel = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, k)).astype(int))]
    o = torch.as_tensor(obs[sel], dtype=kp.dtype)
    n = len(sel)
    prob = _Problem(kp, o, torch.ones(n, dtype=torch.bool), cfg)
    q = torch.zeros(n, N_Q, dtype=kp.dtype)
    q[:, 64:] = torch.as_tensor(pose0[sel])
    idc = torch.zeros(N_ID, dtype=kp.dtype)
    prior_q = prob.prior_q
    prior_id = n * prob.c_id
    e = prob.energy_terms(idc, q, temporal=False)
    mu = 1e-4
    eye_q = torch.eye(N_Q, dtype=kp.dtype)
    it = 0
    for it in range(1, cfg.id_iters + 1):
        pred, jq, jid = kp.jacobian(idc, q[:, :64], q[:, 64:67], q[:, 67:], with_id=True)
        jq = jq * prob.sw[:, :, None]
        jid = jid * prob.sw[:, :, None]
        r = prob.residual(pred)
        hqq = jq.transpose(1, 2) @ jq + torch.diag_embed(prior_q)
        hqi = jq.transpose(1, 2) @ jid  # (n, 70, 80)
        jid2 = jid.reshape(-1, N_ID)
        hii = jid2.T @ jid2 + prior_id * torch.eye(N_ID, dtype=kp.dtype)
        gq = (jq.transpose(1, 2) @ r[:, :, None])[..., 0] + prior_q * q
        gi = jid2.T @ r.reshape(-1) + prior_id * idc
        dq = torch.diagonal(hqq, dim1=1, dim2=2)
        di = torch.diagonal(hii)
        for _ in range(6):
            hqq_d = hqq + mu * (dq[:, :, None] * eye_q + 1e-9 * eye_q)
            chol, info = torch.linalg.cholesky_ex(hqq_d)
            if bool(info.any()):
                mu *= 4
                continue
            a = torch.cholesky_solve(torch.cat([hqi, gq[:, :, None]], -1), chol)  # H_qq⁻¹ [H_qi, g_q]
            hqi2 = hqi.reshape(-1, N_ID)
            prod = hqi2.T @ a.reshape(-1, N_ID + 1)
            schur = hii + mu * torch.diag(di + 1e-9) - prod[:, :N_ID]
            rhs = -gi + prod[:, N_ID]
            d_id = torch.linalg.solve(schur, rhs)
            d_q = -(a[..., N_ID] + (a[..., :N_ID] @ d_id[:, None])[..., 0])
            en = prob.energy_terms(idc + d_id, q + d_q, temporal=False)
            if en < e:
                idc, q = idc + d_id, q + d_q
                rel = float((e - en) / e)
                e, mu = en, max(mu / 3, 1e-9)
                break
            mu *= 4
        else:
            break
        if rel < 1e-7:
            break
    return idc, it


def _pcg(matvec, precond, b, iters, tol):
    """Preconditioned conjugate gradients on (T, 70) arrays."""
    x = torch.zeros_like(b)
    if not bool((b != 0).any()):
        return x
    r = b.clone()
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum()
    b2 = (b * b).sum().clamp_min(1e-300)
    for _ in range(iters):
        ap = matvec(p)
        alpha = rz / (p * ap).sum()
        x = x + alpha * p
        r = r - alpha * ap
        if (r * r).sum() < tol * tol * b2:
            break
        z = precond(r)
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def _fit_window(kp, obs, valid, idc, q0, cfg):
    """LM over one window's per-frame parameters with temporal terms (id fixed); returns (q, iters)."""
    prob = _Problem(kp, obs, valid, cfg)
    q = q0.clone()
    prior_q = prob.prior_q
    tdiag = torch.diagonal(prob.ltl)[:, None] * prob.c_lap  # (T, 70) temporal diagonal
    e = prob.energy_terms(idc, q)
    mu = 1e-4
    it = 0
    for it in range(1, cfg.window_iters + 1):
        pred, jq, _ = kp.jacobian(idc, q[:, :64], q[:, 64:67], q[:, 67:])
        jq = jq * prob.sw[:, :, None]
        r = prob.residual(pred)
        hb = jq.transpose(1, 2) @ jq + torch.diag_embed(prior_q)
        g = (jq.transpose(1, 2) @ r[:, :, None])[..., 0] + prior_q * q + (prob.ltl @ q) * prob.c_lap
        dfull = torch.diagonal(hb, dim1=1, dim2=2) + tdiag
        accepted = False
        for _ in range(6):
            damp = mu * dfull + 1e-9
            hb_d = hb + torch.diag_embed(damp)
            chol, info = torch.linalg.cholesky_ex(hb_d + torch.diag_embed(tdiag))
            if bool(info.any()):
                mu *= 4
                continue

            def matvec(x, hb_d=hb_d):
                return (hb_d @ x[:, :, None])[..., 0] + (prob.ltl @ x) * prob.c_lap

            def precond(x, chol=chol):
                return torch.cholesky_solve(x[:, :, None], chol)[..., 0]

            step = _pcg(matvec, precond, -g, cfg.cg_iters, cfg.cg_tol)
            en = prob.energy_terms(idc, q + step)
            if en < e:
                q = q + step
                rel = float((e - en) / e)
                e, mu = en, max(mu / 3, 1e-9)
                accepted = True
                break
            mu *= 4
        if not accepted or rel < 1e-7:
            break
    return q, it


def _windows(t: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Fewest windows of at most `window` frames covering 0..t with >= `overlap` shared, evenly sized."""
    if t <= window:
        return [(0, t)]
    n = math.ceil((t - overlap) / (window - overlap))
    length = min(window, math.ceil((t + (n - 1) * overlap) / n))
    starts = np.round(np.linspace(0, t - length, n)).astype(int)
    return [(int(s), int(s) + length) for s in starts]


def _blend_weights(length: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    j = np.arange(length, dtype=np.float64)
    w = np.ones(length)
    if overlap > 0:
        if not first:
            w = np.minimum(w, (j + 1) / (overlap + 1))
        if not last:
            w = np.minimum(w, (length - j) / (overlap + 1))
    return w


def _solve_gn(kp, obs, valid, cfg):
    pose0, it_pose = _init_pose(kp, obs, valid, cfg)
    idc, it_id = _fit_identity(kp, obs, valid, pose0, cfg)
    t = len(valid)
    acc = np.zeros((t, N_Q))
    wsum = np.zeros(t)
    it_win = 0
    wins = _windows(t, cfg.window, cfg.overlap)
    for n, (s, e) in enumerate(wins):
        q0 = torch.zeros(e - s, N_Q, dtype=kp.dtype)
        q0[:, 64:] = torch.as_tensor(pose0[s:e])
        o = torch.as_tensor(np.nan_to_num(obs[s:e]), dtype=kp.dtype)
        q, it = _fit_window(kp, o, torch.as_tensor(valid[s:e]), idc, q0, cfg)
        it_win += it
        w = _blend_weights(e - s, cfg.overlap, n == 0, n == len(wins) - 1)
        acc[s:e] += w[:, None] * q.numpy()
        wsum[s:e] += w
    q = acc / wsum[:, None]
    return idc.numpy(), q, {"pose": it_pose, "identity": it_id, "window": it_win, "windows": len(wins)}


# ============================================================================================
# reference schedule (Adam), same objective
# ============================================================================================

def _adam_energy(prob: _Problem, idc, exp, euler, trans, landmarks_only: bool = False):
    pred = prob.kp.landmarks(idc, exp, euler, trans)
    e = prob.residual(pred).square().sum() / prob.t
    if landmarks_only:
        return e
    q = torch.cat([exp, euler, trans], 1)
    e = e + prob.c_id * idc.square().sum() + (prob.prior_q[:, :N_EXP] * exp.square()).sum() / prob.t
    return e + (apply_laplacian(q).square() * prob.c_lap).sum() / prob.t


def _solve_adam(kp, obs, valid, cfg):
    t = len(valid)
    o = torch.as_tensor(np.nan_to_num(obs), dtype=kp.dtype)
    v = torch.as_tensor(valid)
    prob = _Problem(kp, o, v, cfg)
    idc = torch.zeros(N_ID, dtype=kp.dtype, requires_grad=True)
    exp = torch.zeros(t, N_EXP, dtype=kp.dtype, requires_grad=True)
    euler = torch.zeros(t, 3, dtype=kp.dtype, requires_grad=True)
    trans = torch.zeros(t, 3, dtype=kp.dtype, requires_grad=True)
    opt_pose = torch.optim.Adam([euler, trans], lr=cfg.adam_lr)
    for _ in range(cfg.adam_pose_iters):
        opt_pose.zero_grad()
        _adam_energy(prob, idc, exp, euler, trans, landmarks_only=True).backward()
        opt_pose.step()
    opt_shape = torch.optim.Adam([idc, exp], lr=cfg.adam_lr)
    for _ in range(cfg.adam_joint_iters):
        opt_pose.zero_grad()
        opt_shape.zero_grad()
        _adam_energy(prob, idc, exp, euler, trans).backward()
        opt_pose.step()
        opt_shape.step()
    idc = idc.detach()
    exp_all, euler_all, trans_all = exp.detach().clone(), euler.detach().clone(), trans.detach().clone()
    w = cfg.window
    n_win = 0
    for i in range((t - 1) // w + 1):
        s = min(i * w, max(t - w, 0))
        e = min(s + w, t)
        sub = _Problem(kp, o[s:e], v[s:e], cfg)
        pe = exp_all[s:e].clone().requires_grad_(True)
        pr = euler_all[s:e].clone().requires_grad_(True)
        pt = trans_all[s:e].clone().requires_grad_(True)
        opt = torch.optim.Adam([pe, pr, pt], lr=cfg.adam_window_lr)
        for _ in range(cfg.adam_window_iters):
            opt.zero_grad()
            _adam_energy(sub, idc, pe, pr, pt).backward()
            opt.step()
        # the intended behaviour: keep the refined window (the reference writes to a temporary copy)
        exp_all[s:e], euler_all[s:e], trans_all[s:e] = pe.detach(), pr.detach(), pt.detach()
        n_win += 1
    q = torch.cat([exp_all, euler_all, trans_all], 1).numpy()
    iters = {"pose": cfg.adam_pose_iters, "joint": cfg.adam_joint_iters,
             "window": cfg.adam_window_iters * n_win, "windows": n_win}
    return idc.numpy(), q, iters


# ============================================================================================
# API
# ============================================================================================

def _check_inputs(landmarks, valid, image_size, cfg) -> tuple[np.ndarray, np.ndarray]:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2) or lm.shape[0] < 1:
        raise ValueError(f"landmarks must have shape (T, 68, 2) in image pixels, got {lm.shape}")
    t = lm.shape[0]
    if valid is None:
        v = np.isfinite(lm).all(axis=(1, 2))
    else:
        v = np.asarray(valid)
        if v.shape != (t,):
            raise ValueError(f"valid must have shape (T,) = ({t},) matching landmarks, got {v.shape}")
        v = v.astype(bool)
    if not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(f"image_size must be a positive integer (pixels), got {image_size!r}")
    if not np.isfinite(lm[v]).all():
        bad = np.flatnonzero(v & ~np.isfinite(lm).all(axis=(1, 2)))
        raise ValueError(f"landmarks has non-finite values on frames marked valid (first: {bad[:5].tolist()}); "
                         "mark them invalid in `valid`")
    need = min(cfg.min_valid_frames, t)
    if v.sum() < need:
        raise ValueError(f"valid marks {int(v.sum())} frames with a face, need at least {need} "
                         "(FitConfig.min_valid_frames)")
    return lm, v


def fit_clip(landmarks: np.ndarray, valid: np.ndarray | None, model: FaceModel | Face3D,
             image_size: int = 512, config: FitConfig | None = None) -> FitResult:
    """Fit one id and per-frame exp/euler/trans to (T, 68, 2) landmarks (image px, y down) of a clip.

    `valid` (T,) marks frames with a face (None: frames whose landmarks are all finite); landmarks of
    invalid frames are never read. `model` is a FaceModel or a Face3D. Raises ValueError naming the
    argument for bad shapes, non-finite landmarks on valid frames or too few valid frames.
    """
    cfg = config or FitConfig()
    lm, v = _check_inputs(landmarks, valid, image_size, cfg)
    face = model if isinstance(model, Face3D) else Face3D(model)
    t0 = time.perf_counter()
    kp = _Keypoints(face, int(image_size), dtype=getattr(torch, cfg.dtype))
    with torch.no_grad() if cfg.solver == "gn" else torch.enable_grad():
        if cfg.solver == "gn":
            idc, q, iters = _solve_gn(kp, lm, v, cfg)
        else:
            idc, q, iters = _solve_adam(kp, lm, v, cfg)
    with torch.no_grad():
        qt = torch.as_tensor(q, dtype=kp.dtype)
        idt = torch.as_tensor(idc, dtype=kp.dtype)
        pred = kp.landmarks(idt, qt[:, :64], qt[:, 64:67], qt[:, 67:])
        prob = _Problem(kp, torch.as_tensor(np.nan_to_num(lm), dtype=kp.dtype), torch.as_tensor(v), cfg)
        energy = float(prob.energy_terms(idt, qt)) / len(v)
    seconds = time.perf_counter() - t0
    pred = pred.double().numpy()
    q = np.asarray(q, dtype=np.float64)
    rmse = np.sqrt(((pred - lm) ** 2).sum(-1).mean(-1))
    rmse[~v] = np.nan
    meta = dict(face.model.metadata())
    meta["fit_config"] = asdict(cfg)
    return FitResult(id=idc.astype(np.float32), exp=q[:, :64].astype(np.float32),
                     euler=q[:, 64:67].astype(np.float32), trans=q[:, 67:].astype(np.float32),
                     landmarks_fit=pred.astype(np.float32), rmse_px=rmse.astype(np.float32), valid=v.copy(),
                     eg3d_cam=eg3d_camera(q[:, 64:67], q[:, 67:]), iterations=iters, seconds=seconds,
                     energy=energy, solver=cfg.solver, image_size=int(image_size), meta=meta)


# ============================================================================================
# synthetic ground truth (tests, benchmarks)
# ============================================================================================

def synthetic_clip(face: Face3D, frames: int = 40, seed: int = 0, image_size: int = 512,
                   noise_px: float = 1.0) -> dict[str, np.ndarray]:
    """A smooth synthetic talking-head clip: known id, exp (jaw sine, smile, blinks), head motion.

    Returns id (80,), exp (T,64), euler (T,3) radians, trans (T,3), clean (T,68,2) and noisy
    (T,68,2) landmarks in image px; yaw ±25°, pitch ±10°, roll ±8°, small translations.
    """
    from preprocessing.synthetic_bfm import EXP_JAW_OPEN, EXP_LEFT_EYE_CLOSE, EXP_RIGHT_EYE_CLOSE, EXP_SMILE

    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float64)
    idc = rng.normal(0.0, 0.7, N_ID)
    exp = np.zeros((frames, N_EXP))
    ph = rng.uniform(0, 2 * np.pi, 8)
    exp[:, 5:] = 0.3 * np.sin(2 * np.pi * t[:, None] / rng.uniform(30, 80, N_EXP - 5) + rng.uniform(0, 6, N_EXP - 5))
    exp[:, EXP_JAW_OPEN] = 0.5 + 0.5 * np.sin(2 * np.pi * t / 17.0 + ph[0])
    exp[:, EXP_SMILE] = 0.5 * np.sin(2 * np.pi * t / 41.0 + ph[1])
    blink = np.zeros(frames)
    for c in np.arange(rng.uniform(5, 15), frames, 23.0):
        blink += np.exp(-0.5 * ((t - c) / 1.2) ** 2)
    exp[:, EXP_RIGHT_EYE_CLOSE] = exp[:, EXP_LEFT_EYE_CLOSE] = 0.9 * blink
    deg = np.pi / 180
    euler = np.stack([10 * deg * np.sin(2 * np.pi * t / 47.0 + ph[2]),
                      25 * deg * np.sin(2 * np.pi * t / 61.0 + ph[3]),
                      8 * deg * np.sin(2 * np.pi * t / 37.0 + ph[4])], 1)
    trans = np.stack([0.1 * np.sin(2 * np.pi * t / 53.0 + ph[5]), 0.08 * np.sin(2 * np.pi * t / 43.0 + ph[6]),
                      0.3 * np.sin(2 * np.pi * t / 71.0 + ph[7])], 1)
    coeffs = join_coeffs(id=torch.as_tensor(np.broadcast_to(idc, (frames, N_ID)).copy(), dtype=torch.float32),
                         exp=torch.as_tensor(exp, dtype=torch.float32),
                         euler=torch.as_tensor(euler, dtype=torch.float32),
                         trans=torch.as_tensor(trans, dtype=torch.float32))
    with torch.no_grad():
        clean = face.landmarks(coeffs, image_size).double().numpy()
    noisy = clean + rng.normal(0.0, noise_px, clean.shape)
    return {"id": idc, "exp": exp, "euler": euler, "trans": trans, "clean": clean, "landmarks": noisy}
