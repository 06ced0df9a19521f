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
    np.testing.assert_allclose(secc[..., 2][inside], -1.0, atol=1e-6)
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


def test_secc_frames_match_one_batch():
    from preprocessing.render import secc_frames
    from preprocessing.synthetic_bfm import synthetic_face_model

    face = Face3D(synthetic_face_model(0, "small"))
    rng = np.random.default_rng(0)
    ident, exp = rng.normal(0, 1, 80), rng.normal(0, 0.5, (5, 64))
    whole = render_secc(face, np.repeat(ident[None], 5, 0), exp, 64)
    parts = list(secc_frames(face, ident, exp, 64, chunk=2))
    assert [s for s, _ in parts] == [0, 2, 4] and [len(p) for _, p in parts] == [2, 2, 1]
    joined = np.concatenate([p for _, p in parts])
    # same coverage; values equal up to float32 rounding (torch batches matrix products differently)
    np.testing.assert_array_equal(joined == -1, whole == -1)
    np.testing.assert_allclose(joined, whole, atol=1e-5)


def test_mouth_box_is_a_square_around_the_lips():
    from preprocessing.render import mouth_box

    lm = np.zeros((2, 68, 2))
    lm[:, 48:68] = np.random.default_rng(1).uniform([200, 300], [260, 330], (2, 20, 2))
    lm[1, 50] = np.nan
    box = mouth_box(lm, margin=0.25)
    b = box[0]
    assert b[2] - b[0] == pytest.approx(b[3] - b[1])  # square
    lips = lm[0, 48:68]
    assert (lips[:, 0] >= b[0]).all() and (lips[:, 0] <= b[2]).all()
    assert (lips[:, 1] >= b[1]).all() and (lips[:, 1] <= b[3]).all()
    width = lips[:, 0].max() - lips[:, 0].min()
    assert b[2] - b[0] == pytest.approx(1.5 * width, rel=1e-5)  # width is the larger extent here
    np.testing.assert_allclose((b[:2] + b[2:]) / 2, (lips.min(0) + lips.max(0)) / 2, atol=1e-4)
    assert np.isnan(box[1]).all()  # a frame without a face has no box
    edge = np.zeros((1, 68, 2))
    edge[0, 48:68] = [[2, 2], [40, 10]] * 10
    inside = mouth_box(edge, image_size=64)[0]
    assert inside[0] == 0 and inside[1] == 0 and inside[2] - inside[0] == pytest.approx(57.0)


def test_geometry_only_pncc_equals_the_full_render():
    """render_pncc (one rasterisation, no shading) gives render_face's PNCC and mask exactly."""
    from pipeline.demo import random_coeffs
    from preprocessing.render import render_pncc
    from preprocessing.synthetic_bfm import synthetic_face_model

    face = Face3D(synthetic_face_model(seed=1, size="small"))
    coeffs = random_coeffs(np.random.default_rng(3), 3)
    full = render_face(face, coeffs, 96, remove_eyes=True)
    pncc, mask = render_pncc(face, coeffs, 96, remove_eyes=True)
    np.testing.assert_array_equal(mask, full.mask)
    np.testing.assert_allclose(pncc, full.pncc, atol=1e-6)
    assert (pncc[mask] == -1).all(-1).any()  # the eye holes are there
    pncc_eyes, _ = render_pncc(face, coeffs, 96, remove_eyes=False)
    assert not (pncc_eyes[mask] == -1).all(-1).any()
