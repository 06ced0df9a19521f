"""Differentiable, batched 3DMM in torch with the Deep3DFaceRecon conventions.

Coefficients (257): id 0:80, exp 80:144, tex 144:224, euler 224:227 (radians; x = pitch,
y = yaw, z = roll), gamma 227:254 (9 SH bands × RGB, stored channel-major: R's 9, G's 9, B's 9),
trans 254:257 (decimetres).

Rotation R = Rz·Ry·Rx acting on column vectors; posed = R·shape + trans.
Camera on +z at distance 10 looking at the origin: z_cam = 10 − z. Pinhole with focal 1015 and
principal point 112 for a 224² image, both scaled by size/224; (u, v) with v pointing up.
Image pixel coordinates (x right, y down, pixel centres at +0.5) are x = u, y = size − v.
Lighting: 9 real SH bands (Lambertian-convolved constants), 0.8 added to each DC term; the
lit colour is albedo/255 times the per-channel irradiance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from preprocessing.face_model import FaceModel

N_COEFF = 257
SLICES = {
    "id": slice(0, 80),
    "exp": slice(80, 144),
    "tex": slice(144, 224),
    "euler": slice(224, 227),
    "gamma": slice(227, 254),
    "trans": slice(254, 257),
}
CAMERA_DISTANCE = 10.0
FOCAL_224 = 1015.0
CENTER_224 = 112.0
SH_DC_INIT = 0.8

# SH constants: Lambertian attenuation a_l times the real SH normalisation c_l.
_A = (math.pi, 2.0 * math.pi / math.sqrt(3.0), 2.0 * math.pi / math.sqrt(8.0))
_C = (1.0 / math.sqrt(4.0 * math.pi), math.sqrt(3.0) / math.sqrt(4.0 * math.pi),
      3.0 * math.sqrt(5.0) / math.sqrt(12.0 * math.pi))


def split_coeffs(coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split (B, 257) coefficients into id/exp/tex/euler/gamma/trans views."""
    if coeffs.shape[-1] != N_COEFF:
        raise ValueError(f"coefficients must have {N_COEFF} values in the last axis, got {tuple(coeffs.shape)}")
    return {name: coeffs[..., s] for name, s in SLICES.items()}


def join_coeffs(**parts: torch.Tensor) -> torch.Tensor:
    """Inverse of `split_coeffs`; missing parts are zeros. All parts share the batch shape."""
    unknown = set(parts) - set(SLICES)
    if unknown:
        raise ValueError(f"unknown coefficient parts {sorted(unknown)}; expected {list(SLICES)}")
    ref = next(iter(parts.values()))
    out = ref.new_zeros((*ref.shape[:-1], N_COEFF))
    for name, value in parts.items():
        out[..., SLICES[name]] = value
    return out


def rotation_matrix(euler: torch.Tensor) -> torch.Tensor:
    """R = Rz(roll)·Ry(yaw)·Rx(pitch) for (..., 3) euler angles in radians -> (..., 3, 3)."""
    x, y, z = euler.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx


def intrinsics(size: int) -> tuple[float, float]:
    """(focal, centre) in pixels for a square image of `size` px (1015 and 112 at 224)."""
    scale = size / 224.0
    return FOCAL_224 * scale, CENTER_224 * scale


def project(points: torch.Tensor, size: int) -> torch.Tensor:
    """Posed points (..., 3) -> (..., 3): u, v (v up, pixels) and camera depth z_cam = 10 − z."""
    focal, centre = intrinsics(size)
    z_cam = CAMERA_DISTANCE - points[..., 2]
    u = focal * points[..., 0] / z_cam + centre
    v = focal * points[..., 1] / z_cam + centre
    return torch.stack([u, v, z_cam], dim=-1)


def uv_to_image(uvz: torch.Tensor, size: int) -> torch.Tensor:
    """(u, v up, z_cam) -> image pixel coordinates (x, y down, z_cam): y = size − v."""
    return torch.stack([uvz[..., 0], size - uvz[..., 1], uvz[..., 2]], dim=-1)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """The 9 Lambertian-weighted real SH values for unit normals (..., 3) -> (..., 9)."""
    nx, ny, nz = normals.unbind(-1)
    a, c = _A, _C
    return torch.stack([
        torch.full_like(nx, a[0] * c[0]),
        -a[1] * c[1] * ny,
        a[1] * c[1] * nz,
        -a[1] * c[1] * nx,
        a[2] * c[2] * nx * ny,
        -a[2] * c[2] * ny * nz,
        0.5 * a[2] * c[2] / math.sqrt(3.0) * (3.0 * nz ** 2 - 1.0),
        -a[2] * c[2] * nx * nz,
        0.5 * a[2] * c[2] * (nx ** 2 - ny ** 2),
    ], dim=-1)


def sh_light(direction: np.ndarray, ambient: np.ndarray | float) -> np.ndarray:
    """Gamma (n, 27) for a white light: first-order SH bands `direction` (n, 3) in every channel,
    DC offset `ambient` ((n,), (n, 3) per channel, or a scalar) on top of the +0.8 default."""
    d = np.asarray(direction, dtype=np.float32).reshape(-1, 3)
    amb = np.broadcast_to(np.asarray(ambient, dtype=np.float32).reshape(-1, 1) if np.ndim(ambient) == 1
                          else np.asarray(ambient, dtype=np.float32), (d.shape[0], 3))
    gamma = np.zeros((d.shape[0], 3, 9), np.float32)
    gamma[:, :, 1:4] = d[:, None, :]
    gamma[:, :, 0] = amb
    return gamma.reshape(-1, 27)


def sh_shade(albedo: torch.Tensor, normals: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Lit colour: albedo (B, N, 3) in 0..1 × SH irradiance of gamma (B, 27) (+0.8 on each DC)."""
    g = gamma.reshape(*gamma.shape[:-1], 3, 9).clone()
    g[..., 0] = g[..., 0] + SH_DC_INIT
    irradiance = torch.einsum("bnk,bck->bnc", sh_basis(normals), g)
    return albedo * irradiance


@dataclass
class FaceOutput:
    """Everything `Face3D.forward` computes for a batch, all torch tensors."""

    shape: torch.Tensor  # (B, N, 3) canonical shape (id + exp), decimetres
    posed: torch.Tensor  # (B, N, 3) after rotation and translation
    image_xyz: torch.Tensor  # (B, N, 3) image x, y (y down, px) and camera depth
    landmarks: torch.Tensor  # (B, 68, 2) projected keypoints, image x, y (y down, px)
    normals: torch.Tensor  # (B, N, 3) unit vertex normals of the posed shape
    albedo: torch.Tensor  # (B, N, 3) in 0..1
    color: torch.Tensor  # (B, N, 3) SH-lit colour


class Face3D(torch.nn.Module):
    """The morphable model as a differentiable torch module (buffers follow `.to(device)`)."""

    def __init__(self, model: FaceModel, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        self.register_buffer("mean_shape", torch.as_tensor(model.mean_shape, dtype=dtype).reshape(1, -1))
        self.register_buffer("id_base", torch.as_tensor(model.id_base, dtype=dtype))
        self.register_buffer("exp_base", torch.as_tensor(model.exp_base, dtype=dtype))
        self.register_buffer("mean_tex", torch.as_tensor(model.mean_tex, dtype=dtype).reshape(1, -1))
        self.register_buffer("tex_base", torch.as_tensor(model.tex_base, dtype=dtype))
        self.register_buffer("tri", torch.as_tensor(model.tri, dtype=torch.long))
        self.register_buffer("point_buf", torch.as_tensor(model.point_buf, dtype=torch.long))
        self.register_buffer("keypoints", torch.as_tensor(model.keypoints, dtype=torch.long))

    @property
    def n_vertices(self) -> int:
        return self.model.n_vertices

    def shape(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
        """Canonical shape (B, N, 3) = mean + idBase·id + exBase·exp, decimetres."""
        flat = self.mean_shape + id_coeff @ self.id_base.T + exp_coeff @ self.exp_base.T
        return flat.reshape(flat.shape[0], -1, 3)

    def identity_shape(self, id_coeff: torch.Tensor) -> torch.Tensor:
        """mean + idBase·id (B, 3N): the part of `shape` fixed for a clip (add `expression_offset`)."""
        return self.mean_shape + id_coeff @ self.id_base.T

    def shape_from_identity(self, identity: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
        """`shape` from a precomputed `identity_shape` (1 or B, 3N) and expressions (B, 64): (B, N, 3)."""
        flat = identity + exp_coeff @ self.exp_base.T
        return flat.reshape(flat.shape[0], -1, 3)

    def albedo(self, tex_coeff: torch.Tensor) -> torch.Tensor:
        """Albedo (B, N, 3) in 0..1 = (meantex + texBase·tex) / 255."""
        flat = self.mean_tex + tex_coeff @ self.tex_base.T
        return flat.reshape(flat.shape[0], -1, 3) / 255.0

    def keypoint_shape(self, id_coeff: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
        """The 68 keypoint vertices of the canonical shape (B, 68, 3), computed on those rows only."""
        rows = (self.keypoints[:, None] * 3 + torch.arange(3, device=self.keypoints.device)).reshape(-1)
        flat = (self.mean_shape[:, rows] + id_coeff @ self.id_base[rows].T + exp_coeff @ self.exp_base[rows].T)
        return flat.reshape(flat.shape[0], 68, 3)

    def normals(self, verts: torch.Tensor) -> torch.Tensor:
        """Unit vertex normals (B, N, 3): sum of unit face normals over `point_buf` (dummy face = 0)."""
        v0, v1, v2 = (verts[:, self.tri[:, k]] for k in range(3))
        face_n = torch.nn.functional.normalize(torch.cross(v0 - v1, v1 - v2, dim=-1), dim=-1)
        face_n = torch.cat([face_n, face_n.new_zeros(face_n.shape[0], 1, 3)], dim=1)
        return torch.nn.functional.normalize(face_n[:, self.point_buf].sum(dim=2), dim=-1)

    @staticmethod
    def pose(shape: torch.Tensor, euler: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """R·p + t for every point: shape (B, N, 3), euler (B, 3), trans (B, 3)."""
        return shape @ rotation_matrix(euler).transpose(-1, -2) + trans[:, None, :]

    def landmarks(self, coeffs: torch.Tensor, size: int = 224) -> torch.Tensor:
        """Projected 68 keypoints (B, 68, 2) in image pixels (x right, y down) — the cheap path."""
        c = split_coeffs(coeffs)
        posed = self.pose(self.keypoint_shape(c["id"], c["exp"]), c["euler"], c["trans"])
        return uv_to_image(project(posed, size), size)[..., :2]

    def image_xyz(self, coeffs: torch.Tensor, size: int = 224, shape: torch.Tensor | None = None) -> torch.Tensor:
        """Projected vertices (B, N, 3): x, y image pixels and view depth — geometry only, no shading.
        `shape`: the canonical shape (B, N, 3) of these coefficients when already computed."""
        c = split_coeffs(coeffs)
        posed = self.pose(self.shape(c["id"], c["exp"]) if shape is None else shape, c["euler"], c["trans"])
        return uv_to_image(project(posed, size), size)

    def forward(self, coeffs: torch.Tensor, size: int = 224) -> FaceOutput:
        """Full model for (B, 257) coefficients rendered at a `size`² image."""
        c = split_coeffs(coeffs)
        shape = self.shape(c["id"], c["exp"])
        posed = self.pose(shape, c["euler"], c["trans"])
        image_xyz = uv_to_image(project(posed, size), size)
        normals = self.normals(posed)
        albedo = self.albedo(c["tex"])
        color = sh_shade(albedo, normals, c["gamma"])
        return FaceOutput(shape=shape, posed=posed, image_xyz=image_xyz,
                          landmarks=image_xyz[:, self.keypoints, :2], normals=normals,
                          albedo=albedo, color=color)


def coeffs_tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Coerce (257,) or (B, 257) numbers to a float32 (B, 257) tensor."""
    t = torch.as_tensor(values, dtype=torch.float32)
    return t[None] if t.ndim == 1 else t
