"""Face renders against analytic answers: a planar grid facing the camera, and the synthetic face."""

import math

import numpy as np
import pytest
import torch

from preprocessing.face3d import Face3D, intrinsics
from preprocessing.render import render_face, render_secc


def _backproject(size):
    """World (X, Y) on the plane z = 0 seen through each pixel centre."""
    focal, centre = intrinsics(size)
    cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    u, v = cols, size - rows
    return (u - centre) * 10.0 / focal, (v - centre) * 10.0 / focal


def test_secc_of_a_plane_is_its_coordinates(grid_model):
    size = 96
    face = Face3D(grid_model)
    secc = render_secc(face, np.zeros((1, 80)), np.zeros((1, 64)), size, remove_eyes=False)[0]
    X, Y = _backproject(size)
    inside = (np.abs(X) < 0.98) & (np.abs(Y) < 0.98)
    outside = (np.abs(X) > 1.02) | (np.abs(Y) > 1.02)
    # NCC of the grid: x, y map [-1, 1] -> [0, 1], so 2c - 1 gives back X and Y; z is constant -> -1
    np.testing.assert_allclose(secc[..., 0][inside], X[inside], atol=1e-4)
    np.testing.assert_allclose(secc[..., 1][inside], Y[inside], atol=1e-4)
    np.testing.assert_allclose(secc[..., 2][inside], -1.0)
    assert np.all(secc[outside] == -1.0)


def test_face_render_depth_mask_and_constant_shading(grid_model):
    size = 64
    face = Face3D(grid_model)
    r = render_face(face, torch.zeros(1, 257), size, remove_eyes=False)
    X, Y = _backproject(size)
    inside = (np.abs(X) < 0.98) & (np.abs(Y) < 0.98)
    outside = (np.abs(X) > 1.02) | (np.abs(Y) > 1.02)
    assert r.mask[0][inside].all() and not r.mask[0][outside].any()
    np.testing.assert_allclose(r.depth[0][inside], 10.0, atol=1e-4)
    assert np.isinf(r.depth[0][outside]).all()
    expect = 128 / 255 * 0.8 * math.sqrt(math.pi) / 2  # SH of a constant on a flat albedo
    np.testing.assert_allclose(r.shaded[0][inside], expect, atol=1e-5)
    assert np.all(r.shaded[0][outside] == 0.0)
    np.testing.assert_allclose(r.pncc[0][inside][:, :2], np.stack([X[inside], Y[inside]], 1), atol=1e-4)


def test_pose_moves_the_render(grid_model):
    size = 96
    face = Face3D(grid_model)
    c = torch.zeros(1, 257)
    c[0, 254] = 0.05  # +x translation: the plane moves right in the image
    r = render_face(face, c, size, remove_eyes=False)
    cols = np.nonzero(r.mask[0].any(axis=0))[0]
    focal, centre = intrinsics(size)
    assert cols.min() == pytest.approx(centre + focal * (-0.95) / 10.0, abs=1.0)
    assert cols.max() == pytest.approx(centre + focal * 1.05 / 10.0, abs=1.0)
