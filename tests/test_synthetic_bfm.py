"""The synthetic morphable model: exact BFM layout, geometry, landmark semantics and bases."""

import time

import numpy as np
import pytest
from scipy.io import loadmat

from preprocessing import synthetic_bfm as sb
from preprocessing.face_model import LEFT_EYE, RIGHT_EYE, face_model_from_arrays, load_face_model

N_BFM, F_BFM = 35709, 70789


@pytest.fixture(scope="module")
def small_arrays():
    return sb.synthetic_bfm_arrays(seed=0, size="small")


@pytest.fixture(scope="module")
def small():
    return sb.synthetic_face_model(seed=0, size="small")


def _shape(model, exp=None, idc=None):
    """(N, 3) float64 shape for sparse coefficient dicts {index: value}."""
    flat = model.mean_shape.reshape(-1).astype(np.float64)
    for basis, coeffs in ((model.exp_base, exp or {}), (model.id_base, idc or {})):
        for k, value in coeffs.items():
            flat = flat + value * basis[:, k].astype(np.float64)
    return flat.reshape(-1, 3)


def _ear(lm, first):
    """Eye aspect ratio of the six landmarks starting at `first` (iBUG order)."""
    p = lm[first:first + 6]
    return (np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2.0 * np.linalg.norm(p[0] - p[3]))


def _check_layout(arrays, n, f=None):
    n3 = 3 * n
    assert arrays["meanshape"].shape == (1, n3)
    assert arrays["idBase"].shape == (n3, 80) and arrays["texBase"].shape == (n3, 80)
    assert arrays["exBase"].shape == (n3, 64) and arrays["exBase"].dtype == np.float64
    assert arrays["meantex"].shape == (1, n3)
    tri = arrays["tri"]
    if f is not None:
        assert tri.shape == (f, 3)
    f = tri.shape[0]
    assert arrays["point_buf"].shape == (n, 8)
    assert arrays["keypoints"].shape == (1, 68)
    assert arrays["skinmask"].shape == (1, n)
    assert arrays["frontmask2_idx"].ndim == 2 and arrays["frontmask2_idx"].shape[1] == 1
    assert arrays["tri_mask2"].ndim == 2 and arrays["tri_mask2"].shape[1] == 3
    for key, upper in (("tri", n), ("keypoints", n), ("frontmask2_idx", n), ("tri_mask2", n), ("point_buf", f + 1)):
        values = arrays[key]
        assert np.array_equal(values, np.round(values)), key
        assert values.min() >= 1 and values.max() <= upper, key  # 1-based
    used = np.zeros(n, dtype=bool)
    used[tri.astype(np.int64).ravel() - 1] = True
    assert used.all(), "every vertex belongs to a triangle"
    assert isinstance(arrays["r3p_synthetic"], str) and "seed=" in arrays["r3p_synthetic"]


def test_bfm_size_is_exact_and_fast():
    start = time.perf_counter()
    arrays = sb.synthetic_bfm_arrays(seed=0, size="bfm")
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"size 'bfm' took {elapsed:.1f} s"
    _check_layout(arrays, N_BFM, F_BFM)
    assert arrays["meanshape"].dtype == np.float32 and arrays["idBase"].dtype == np.float32
    model = face_model_from_arrays(arrays, source="synthetic:bfm")
    assert model.n_vertices == N_BFM and model.n_faces == F_BFM
    assert len(np.unique(model.keypoints)) == 68
    assert len(model.eye_faces) > 100


def test_small_layout(small_arrays):
    n = small_arrays["meanshape"].size // 3
    assert 3000 <= n <= 6000
    _check_layout(small_arrays, n)


def test_vertex_count_argument_and_validation():
    arrays = sb.synthetic_bfm_arrays(seed=0, size=1500)
    _check_layout(arrays, 1500)
    model = face_model_from_arrays(arrays)
    assert len(np.unique(model.keypoints)) == 68
    for bad in ("huge", 100, True, 2.5):
        with pytest.raises(ValueError, match="size"):
            sb.synthetic_bfm_arrays(size=bad)


def test_point_buf_matches_tri(small_arrays):
    tri = small_arrays["tri"].astype(np.int64) - 1
    buf = small_arrays["point_buf"].astype(np.int64) - 1
    f = len(tri)
    expected = [set() for _ in range(len(buf))]
    for fi, (a, b, c) in enumerate(tri.tolist()):
        for v in (a, b, c):
            expected[v].add(fi)
    for v, row in enumerate(buf.tolist()):
        listed = [x for x in row if x != f]
        assert len(listed) == len(set(listed)) and set(listed) == expected[v], v
        assert row[len(listed):] == [f] * (8 - len(listed)), "padding with F+1 (1-based) at the end"


def test_deterministic_per_seed_and_different_across_seeds(small_arrays):
    again = sb.synthetic_bfm_arrays(seed=0, size="small")
    other = sb.synthetic_bfm_arrays(seed=1, size="small")
    for key in small_arrays:
        assert np.array_equal(small_arrays[key], again[key]), key
    assert not np.allclose(small_arrays["idBase"], other["idBase"])
    assert not np.allclose(small_arrays["exBase"], other["exBase"])
    assert not np.allclose(small_arrays["texBase"], other["texBase"])
    assert "seed=1" in other["r3p_synthetic"]


def test_write_and_load_round_trip(tmp_path, small_arrays):
    path = sb.write_bfm_mat(tmp_path / "nested" / "dir" / "BFM_model_front.mat", small_arrays)
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["BFM_model_front.mat"]
    raw = loadmat(str(path))
    assert raw["exBase"].dtype == np.float64 and raw["idBase"].dtype == np.float32
    model = load_face_model(path)
    assert model.synthetic and "seed=0" in model.description and model.metadata()["face_model"] == "synthetic"
    direct = face_model_from_arrays(small_arrays)
    np.testing.assert_array_equal(model.mean_shape, direct.mean_shape)
    np.testing.assert_array_equal(model.tri, direct.tri)
    np.testing.assert_array_equal(model.exp_base, direct.exp_base)
    np.testing.assert_array_equal(model.eye_faces, direct.eye_faces)


def test_face_model_is_memoised_and_marked(small):
    assert sb.synthetic_face_model(seed=0, size="small") is small
    assert small.synthetic and small.source == "synthetic:seed=0,size=small"
    assert "seed=0" in small.description


def test_keypoint_semantics(small):
    lm = small.mean_shape[small.keypoints].astype(np.float64)
    x, y, z = lm.T
    assert len(np.unique(small.keypoints)) == 68
    # jaw 0..16 from the subject's right (x < 0) to the left, down to the chin and up again
    assert np.all(np.diff(x[0:17]) > 0) and x[0] < 0 < x[16]
    assert np.all(np.diff(y[0:9]) < 0) and np.all(np.diff(y[8:17]) > 0)
    assert abs(x[8]) < 0.02 and y[8] == y.min()
    # eyes: right eye at x < 0 with 36 the outer corner, left eye mirrored; lids ordered
    assert x[36] < x[37] < x[38] < x[39] < 0 < x[42] < x[43] < x[44] < x[45]
    assert y[37] > y[41] and y[38] > y[40] and y[43] > y[47] and y[44] > y[46]
    for first in (36, 42):
        assert 0.08 <= y[first + 1] - y[first + 5] <= 0.1  # eye opening
    # brows above the eyes: 17 outer right .. 21 inner right, 22 inner left .. 26 outer left
    assert x[17] < x[21] < 0 < x[22] < x[26]
    assert y[17:27].min() > y[36:48].max()
    # nose: 27..30 down the ridge at x = 0, the tip nearest the camera; 31..35 its base
    assert np.all(np.diff(y[27:31]) < 0) and np.allclose(x[27:31], 0.0, atol=0.02)
    assert np.argmax(z) == 30
    assert np.all(np.diff(x[31:36]) > 0) and y[31:36].max() < y[30]
    # mouth: corners 48 (right) and 54 (left), upper lip above lower lip, inner lips distinct
    assert x[48] < 0 < x[54] and x[60] < 0 < x[64]
    assert y[51] > y[62] > y[66] > y[57]
    assert np.all(y[[61, 62, 63]] > y[[67, 66, 65]])
    # vertical order: brows > eyes > nose tip > nose base > mouth > chin
    assert y[17:27].mean() > y[36:48].mean() > y[30] > y[33] > y[48:68].mean() > y[8]


def test_jaw_open_opens_the_mouth_and_lowers_the_chin(small):
    rest = small.mean_shape[small.keypoints].astype(np.float64)
    opened = _shape(small, exp={sb.EXP_JAW_OPEN: 1.0})[small.keypoints]
    gap_rest = np.linalg.norm(rest[62] - rest[66])
    gap_open = np.linalg.norm(opened[62] - opened[66])
    assert 0.2 <= gap_open - gap_rest <= 0.35
    assert opened[8, 1] < rest[8, 1] - 0.1
    assert np.linalg.norm(opened[[51, 62]] - rest[[51, 62]], axis=1).max() < 0.01  # upper lip stays
    np.testing.assert_allclose(opened[36:48], rest[36:48], atol=1e-4)  # eyes stay


@pytest.mark.parametrize("basis, closing, other", [
    (sb.EXP_RIGHT_EYE_CLOSE, RIGHT_EYE, LEFT_EYE),
    (sb.EXP_LEFT_EYE_CLOSE, LEFT_EYE, RIGHT_EYE),
])
def test_eye_close_closes_one_eye_only(small, basis, closing, other):
    rest = small.mean_shape[small.keypoints].astype(np.float64)
    closed = _shape(small, exp={basis: 1.0})[small.keypoints]
    assert _ear(rest, closing[0]) > 0.2
    assert _ear(closed, closing[0]) < 0.1
    np.testing.assert_allclose(closed[list(other)], rest[list(other)], atol=1e-6)
    np.testing.assert_allclose(closed[48:68], rest[48:68], atol=1e-6)
    half = _shape(small, exp={basis: 0.5})[small.keypoints]
    assert _ear(closed, closing[0]) < _ear(half, closing[0]) < _ear(rest, closing[0])


def test_smile_and_brow_raise(small):
    rest = small.mean_shape[small.keypoints].astype(np.float64)
    smile = _shape(small, exp={sb.EXP_SMILE: 1.0})[small.keypoints]
    assert smile[48, 1] > rest[48, 1] + 0.02 and smile[54, 1] > rest[54, 1] + 0.02
    assert smile[48, 0] < rest[48, 0] - 0.02 and smile[54, 0] > rest[54, 0] + 0.02
    raised = _shape(small, exp={sb.EXP_BROW_RAISE: 1.0})[small.keypoints]
    assert np.all(raised[17:27, 1] > rest[17:27, 1] + 0.02)
    np.testing.assert_allclose(raised[36:48], rest[36:48], atol=1e-6)


def test_identity_bases_change_the_face(small):
    rest = small.mean_shape[small.keypoints].astype(np.float64)
    wide = _shape(small, idc={sb.ID_FACE_WIDTH: 2.0})[small.keypoints]
    assert wide[16, 0] - wide[0, 0] > rest[16, 0] - rest[0, 0] + 0.1
    spaced = _shape(small, idc={sb.ID_EYE_SPACING: 1.0})[small.keypoints]
    assert spaced[42, 0] - spaced[39, 0] > rest[42, 0] - rest[39, 0] + 0.01
    # random plausible identities: a face of the same size whose features keep their order
    rng = np.random.default_rng(0)
    for _ in range(5):
        face = _shape(small, idc=dict(enumerate(rng.normal(size=80))))
        lm = face[small.keypoints]
        assert np.abs(face - small.mean_shape).max() < 0.4
        assert lm[17:27, 1].mean() > lm[36:48, 1].mean() > lm[30, 1] > lm[48:68, 1].mean() > lm[8, 1]
        assert _ear(lm, 36) > 0.15 and _ear(lm, 42) > 0.15
        assert lm[62, 1] > lm[66, 1]


def test_front_normals_point_to_the_camera(small):
    v = small.mean_shape.astype(np.float64)[small.tri]
    normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])  # right-hand normal of (v0, v1, v2)
    area = np.linalg.norm(normals, axis=1)
    assert area.min() > 0
    assert area[normals[:, 2] > 0].sum() / area.sum() > 0.9


def test_mesh_sanity_and_trimesh(small):
    tri = small.tri
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert counts.max() <= 2  # no edge shared by three triangles
    assert len(np.unique(tri)) == small.n_vertices
    mesh = small.to_trimesh()
    assert mesh.vertices.shape == (small.n_vertices, 3) and mesh.faces.shape == (small.n_faces, 3)
    assert mesh.is_winding_consistent
    assert mesh.visual.vertex_colors.shape == (small.n_vertices, 4)


def test_eye_faces_cover_each_eye_opening_only(small):
    v = small.mean_shape.astype(np.float64)
    lm = v[small.keypoints]
    centroids = v[small.tri[small.eye_faces]].mean(axis=1)
    face_area = 0.5 * np.abs(np.cross(*(v[small.tri[:, k], :2] - v[small.tri[:, 0], :2] for k in (1, 2))))
    for group in (RIGHT_EYE, LEFT_EYE):
        ring = lm[list(group)]
        lo, hi = ring[:, :2].min(axis=0), ring[:, :2].max(axis=0)
        mine = np.all((centroids[:, :2] > lo) & (centroids[:, :2] < hi), axis=1)
        assert mine.sum() > 10
        xs, ys = ring[:, 0], ring[:, 1]
        opening = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
        covered = face_area[small.eye_faces[mine]].sum()
        assert 0.6 * opening < covered < 1.2 * opening
    # every eye face lies in one of the two eyes, none on the nose or mouth
    assert np.all(np.abs(centroids[:, 0]) > abs(lm[39, 0]) - 0.01)
    assert centroids[:, 1].min() > lm[[40, 41, 46, 47], 1].min() - 0.01
    nose_mouth = np.unique(np.concatenate([small.keypoints[27:36], small.keypoints[48:68]]))
    assert not np.isin(small.tri[small.eye_faces], nose_mouth).any()


def test_albedo_and_masks(small, small_arrays):
    tex = small.mean_tex.astype(np.float64)
    assert tex.min() >= 0 and tex.max() <= 255
    skin = small.skin_mask
    lm_v = small.keypoints
    brightness = tex.mean(axis=1)
    # vertices all of whose triangles are eye triangles: the inside of the eye openings
    all_count = np.bincount(small.tri.ravel(), minlength=small.n_vertices)
    eye_count = np.bincount(small.tri[small.eye_faces].ravel(), minlength=small.n_vertices)
    eye_inside = np.flatnonzero((eye_count == all_count) & (all_count > 0))
    assert len(eye_inside) >= 6
    assert brightness[eye_inside].max() > brightness[skin].mean() + 20  # eye whites
    assert brightness[eye_inside].min() < 100  # iris / pupil
    lips = lm_v[48:60]
    redness = tex[:, 0] / np.maximum(tex[:, 1], 1)
    assert redness[lips].mean() > redness[skin].mean() + 0.3
    assert not skin[lm_v[48:68]].any() and not skin[eye_inside].any()
    assert skin.mean() > 0.7
    front = small.front_mask
    assert np.isin(lm_v[17:68], front).all()  # everything but the jaw contour is in the front region
    assert len(front) < small.n_vertices
    assert np.isin(small.front_tri, front).all()
    assert small_arrays["tri_mask2"].shape[0] > 0.7 * small.n_faces


def test_texture_bases_are_semantic(small):
    tex = small.mean_tex.astype(np.float64)
    base = small.tex_base.reshape(small.n_vertices, 3, 80).astype(np.float64)
    skin = small.skin_mask
    assert np.all(base[skin, :, sb.TEX_SKIN_TONE] > 0)  # brighter skin
    redness = base[skin, 0, sb.TEX_REDNESS] - base[skin, 1, sb.TEX_REDNESS]
    assert np.all(redness >= 0) and redness.mean() > 1
    assert base[small.keypoints[48:60], 0, sb.TEX_LIP_COLOUR].mean() > 5
    darker_brows = tex + base[..., sb.TEX_BROW_DARKNESS]
    assert darker_brows[small.keypoints[17:27]].mean() < tex[small.keypoints[17:27]].mean() - 5
