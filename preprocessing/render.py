"""Rendering the morphable model: SECC/PNCC, depth, face mask and SH-shaded albedo.

Conventions (Real3D-Portrait): the SECC of a frame is the identity + expression shape drawn in
canonical pose (euler = trans = 0) with the NCC of the mean shape as vertex colours, eye triangles
removed, mapped to 2c − 1 with background −1. The posed PNCC is the same colouring in the frame's
pose (for visualisation). Arrays are (B, H, W, C) float32, images in the camera of `face3d`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from preprocessing.face3d import Face3D, coeffs_tensor, join_coeffs
from preprocessing.raster import Fragments, interpolate, rasterize


@dataclass
class FaceRender:
    """One batch of renders at `size`², all (B, H, W, ·) float32 numpy arrays."""

    shaded: np.ndarray  # (B, H, W, 3) SH-lit albedo in 0..1 (clipped), background 0
    pncc: np.ndarray  # (B, H, W, 3) posed PNCC in [-1, 1], background −1, eyes removed
    depth: np.ndarray  # (B, H, W) camera depth in decimetres, +inf for background
    mask: np.ndarray  # (B, H, W) bool, any face triangle (eyes included)


def _raster(image_xyz: torch.Tensor, tri: np.ndarray, size: int) -> Fragments:
    verts = image_xyz.detach().cpu().numpy().astype(np.float32)
    return rasterize(verts, tri, size, size)


def render_secc(face3d: Face3D, id_coeff, exp_coeff, size: int = 512, remove_eyes: bool = True,
                shape: torch.Tensor | None = None) -> np.ndarray:
    """Canonical-pose SECC (B, H, W, 3) in [-1, 1], background −1, for id (B, 80) and exp (B, 64).
    `shape`: their canonical shape (B, N, 3) when already computed (e.g. for the posed PNCC)."""
    id_t = torch.as_tensor(np.asarray(id_coeff), dtype=torch.float32).reshape(-1, 80)
    exp_t = torch.as_tensor(np.asarray(exp_coeff), dtype=torch.float32).reshape(-1, 64)
    coeffs = join_coeffs(id=id_t, exp=exp_t)
    with torch.no_grad():
        xyz = face3d.image_xyz(coeffs, size, shape=shape)
    model = face3d.model
    tri = model.tri_without_eyes() if remove_eyes else model.tri
    frags = _raster(xyz, tri, size)
    return _ncc_code(frags, tri, model.ncc())


def _ncc_code(frags: Fragments, tri: np.ndarray, ncc: np.ndarray) -> np.ndarray:
    """2·NCC − 1 where a triangle covers the pixel, −1 elsewhere (interpolating straight to [-1, 1])."""
    return interpolate(frags, tri, 2.0 * ncc - 1.0, background=-1.0)


def render_pncc(face3d: Face3D, coeffs, size: int = 512, remove_eyes: bool = True,
                shape: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Posed PNCC (B, H, W, 3) in [-1, 1] and the face mask (B, H, W) bool, geometry only (no shading).

    One rasterisation of all triangles: the mask includes the eyes (as `render_face`); with
    `remove_eyes` the PNCC is −1 where an eye triangle is in front — the same image as rasterising
    without them, since the mesh has nothing behind its eyes.
    """
    with torch.no_grad():
        xyz = face3d.image_xyz(coeffs_tensor(coeffs), size, shape=shape)
    model = face3d.model
    frags = _raster(xyz, model.tri, size)
    pncc = _ncc_code(frags, model.tri, model.ncc())
    if remove_eyes and len(model.eye_faces):
        eye = np.zeros(model.n_faces + 1, dtype=bool)
        eye[model.eye_faces] = True
        pncc[eye[frags.face_id]] = -1.0  # face_id −1 (background) reads the extra False entry
    return pncc, frags.mask


def render_face(face3d: Face3D, coeffs, size: int = 512, remove_eyes: bool = True) -> FaceRender:
    """Shaded albedo, posed PNCC, depth and mask for (B, 257) coefficients at `size`²."""
    c = coeffs_tensor(coeffs)
    with torch.no_grad():
        out = face3d(c, size)
    model = face3d.model
    frags = _raster(out.image_xyz, model.tri, size)
    color = out.color.cpu().numpy()
    shaded = np.clip(interpolate(frags, model.tri, color, background=0.0), 0.0, 1.0)
    tri_pncc = model.tri_without_eyes() if remove_eyes else model.tri
    frags_pncc = _raster(out.image_xyz, tri_pncc, size) if remove_eyes else frags
    pncc = _ncc_code(frags_pncc, tri_pncc, model.ncc())
    return FaceRender(shaded=shaded.astype(np.float32), pncc=pncc, depth=frags.depth, mask=frags.mask)


@njit(cache=True, nogil=True)
def _float32_to_uint8(x: np.ndarray, lo: np.float32, span: np.float32, out: np.ndarray) -> None:
    """out = uint8(clip((x − lo)/span, 0, 1)·255 + 0.5), every operation in float32 as numpy does it."""
    one, zero, k, half = np.float32(1.0), np.float32(0.0), np.float32(255.0), np.float32(0.5)
    for i in range(x.shape[0]):
        y = (x[i] - lo) / span
        y = min(max(y, zero), one)
        out[i] = np.uint8(y * k + half)


def to_uint8(image: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Map [lo, hi] floats to uint8 (for PNCC use lo = −1)."""
    image = np.asarray(image)
    if image.dtype == np.float32 and image.size and not np.isnan(lo + hi):
        out = np.empty(image.shape, np.uint8)
        _float32_to_uint8(np.ascontiguousarray(image).reshape(-1), np.float32(lo), np.float32(hi - lo),
                          out.reshape(-1))
        return out
    # in place, the same float operations in the same order as (clip((x − lo)/(hi − lo), 0, 1)·255 + 0.5)
    y = np.subtract(image, lo, dtype=np.result_type(np.asarray(image).dtype, np.float32))
    y /= hi - lo
    np.clip(y, 0.0, 1.0, out=y)
    y *= 255.0
    y += 0.5
    return y.astype(np.uint8)


def depth_to_uint8(depth: np.ndarray) -> np.ndarray:
    """Near = bright grey-level visualisation of a depth map, background black."""
    finite = np.isfinite(depth)
    if not finite.any():
        return np.zeros(depth.shape, np.uint8)
    lo, hi = depth[finite].min(), depth[finite].max()
    out = np.zeros(depth.shape, np.float32)
    out[finite] = 0.25 + 0.75 * (hi - depth[finite]) / max(hi - lo, 1e-6)
    return (out * 255).astype(np.uint8)


def secc_frames(face3d: Face3D, id_coeff, exp_coeff, size: int = 512, chunk: int = 32,
                remove_eyes: bool = True):
    """Canonical SECC for every frame of a clip, `chunk` frames at a time (bounded memory).

    `id_coeff` (80,) is the clip's identity, `exp_coeff` (T, 64) the per-frame expression;
    yields (start index, (n, size, size, 3) float32 in [-1, 1], background −1).
    """
    exp = np.asarray(exp_coeff, dtype=np.float32).reshape(-1, 64)
    ident = np.asarray(id_coeff, dtype=np.float32).reshape(1, 80)
    for s in range(0, len(exp), chunk):
        e = exp[s:s + chunk]
        yield s, render_secc(face3d, np.repeat(ident, len(e), 0), e, size, remove_eyes)


def mouth_box(landmarks: np.ndarray, margin: float = 0.25, image_size: int | None = None) -> np.ndarray:
    """Square box (x0, y0, x1, y1) around the lips (landmarks 48–67) per frame, in pixels.

    The side is the larger of the lips' width and height times (1 + 2·margin), centred on the lips;
    with `image_size` the box is shifted (not shrunk) to lie inside the image. NaN landmarks
    (frames without a face) give NaN boxes.
    """
    lips = np.asarray(landmarks, dtype=np.float64)[..., 48:68, :]
    lo, hi = lips.min(axis=-2), lips.max(axis=-2)
    centre = (lo + hi) / 2.0
    side = (hi - lo).max(axis=-1, keepdims=True) * (1.0 + 2.0 * margin)
    x0y0 = centre - side / 2.0
    if image_size is not None:
        side = np.minimum(side, image_size)
        x0y0 = np.clip(x0y0, 0.0, image_size - side)
    return np.concatenate([x0y0, x0y0 + side], axis=-1).astype(np.float32)
