"""The z-buffer rasteriser against known answers and a slow, independent per-pixel reference."""

from __future__ import annotations

import numpy as np
import pytest

from preprocessing.raster import Fragments, interpolate, rasterize

# --------------------------------------------------------------------------------------------
# helpers


def _centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (H, W)."""
    return np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)


def _project(points: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    """Camera-space (X right, Y up, D depth along the view axis) to (x, y down, w) image vertices."""
    X, Y, D = points[:, 0], points[:, 1], points[:, 2]
    return np.stack([cx + focal * X / D, cy - focal * Y / D, D], axis=1)


# --------------------------------------------------------------------------------------------
# one triangle


@pytest.mark.parametrize("perspective", [False, True])
def test_right_triangle_covers_centres_with_x_plus_y_at_most_8(perspective):
    verts = np.array([[0, 0, 2.5], [8, 0, 2.5], [0, 8, 2.5]], dtype=np.float32)
    tris = np.array([[0, 1, 2]])
    frags = rasterize(verts, tris, 10, 12, perspective=perspective)
    x, y = _centres(10, 12)
    expect = x + y <= 8  # inclusive: the centres on the hypotenuse count
    assert frags.face_id.shape == (1, 10, 12) and frags.face_id.dtype == np.int32
    assert frags.bary.shape == (1, 10, 12, 3) and frags.bary.dtype == np.float32
    assert frags.depth.dtype == np.float32
    np.testing.assert_array_equal(frags.mask[0], expect)
    assert expect.sum() == 36
    np.testing.assert_array_equal(frags.face_id[0][~expect], -1)
    # attributes = the vertex coordinates come back as the pixel centres
    xy = interpolate(frags, tris, verts[:, :2])[0]
    np.testing.assert_allclose(xy[..., 0][expect], x[expect], atol=1e-5)
    np.testing.assert_allclose(xy[..., 1][expect], y[expect], atol=1e-5)
    np.testing.assert_array_equal(xy[~expect], 0.0)
    # constant depth, barycentrics sum to one, background conventions
    np.testing.assert_allclose(frags.depth[0][expect], 2.5, rtol=1e-6)
    assert np.isposinf(frags.depth[0][~expect]).all()
    np.testing.assert_allclose(frags.bary[0][expect].sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(frags.bary[0][~expect], 0.0)


def test_triangle_partly_outside_the_image_is_clipped():
    verts = np.array([[-20, -20, 1], [30, -20, 1], [-20, 30, 1]], dtype=np.float64)
    frags = rasterize(verts, [[0, 1, 2]], 6, 7)
    x, y = _centres(6, 7)
    np.testing.assert_array_equal(frags.mask[0], x + y <= 10)


def test_degenerate_behind_camera_and_non_finite_triangles_draw_nothing():
    verts = np.array(
        [[1, 1, 1], [5, 5, 1], [9, 9, 1],  # collinear: zero area
         [0, 0, 1], [9, 0, 1], [0, 9, -1],  # one vertex behind the camera (w < 0)
         [0, 0, 1], [9, 0, 1], [np.nan, 9, 1]],  # non-finite
        dtype=np.float64,
    )
    tris = np.arange(9).reshape(3, 3)
    for perspective in (True, False):
        frags = rasterize(verts, tris, 10, 10, perspective=perspective)
        assert not frags.mask.any()
    empty = rasterize(verts, np.zeros((0, 3), int), 4, 5)
    assert not empty.mask.any() and np.isposinf(empty.depth).all()


# --------------------------------------------------------------------------------------------
# visibility


@pytest.mark.parametrize("perspective", [False, True])
def test_nearer_triangle_wins_in_either_drawing_order(perspective):
    near = [[1, 1, 2.0], [15, 1, 2.0], [1, 15, 2.0]]
    far = [[3, 3, 5.0], [16, 3, 5.0], [3, 16, 5.0]]
    x, y = _centres(16, 16)
    in_near = (x >= 1) & (y >= 1) & (x + y <= 16)
    in_far = (x >= 3) & (y >= 3) & (x + y <= 19)
    for order in ([near, far], [far, near]):
        verts = np.array(order[0] + order[1], dtype=np.float32)
        tris = np.array([[0, 1, 2], [3, 4, 5]])
        frags = rasterize(verts, tris, 16, 16, perspective=perspective)
        near_id = 0 if order[0] is near else 1
        fid = frags.face_id[0]
        np.testing.assert_array_equal(fid[in_near], near_id)
        np.testing.assert_array_equal(fid[in_far & ~in_near], 1 - near_id)
        np.testing.assert_array_equal(fid[~in_near & ~in_far], -1)
        np.testing.assert_allclose(frags.depth[0][in_near], 2.0, rtol=1e-6)
        np.testing.assert_allclose(frags.depth[0][in_far & ~in_near], 5.0, rtol=1e-6)


def test_equal_depth_keeps_the_first_drawn_triangle():
    # exactly representable weights and depth, so the three copies compute identical depths
    verts = np.array([[0, 0, 4], [8, 0, 4], [0, 8, 4]], dtype=np.float32)
    frags = rasterize(verts, [[0, 1, 2], [2, 0, 1], [0, 2, 1]], 8, 8)
    covered = frags.mask[0]
    assert covered.sum() > 30
    np.testing.assert_array_equal(frags.face_id[0][covered], 0)


def test_interpenetrating_triangles_split_where_their_depths_cross():
    # two triangles covering the whole 20 x 8 image; depth a = 1 + 0.2 x, depth b = 5 - 0.1 x (linear
    # in screen space with perspective=False), crossing at x = 40/3
    corners = np.array([[-1.0, -1.0], [30.0, -1.0], [-1.0, 30.0]])
    verts = np.concatenate([
        np.column_stack([corners, 1 + 0.2 * corners[:, 0]]),
        np.column_stack([corners, 5 - 0.1 * corners[:, 0]]),
    ])
    frags = rasterize(verts, [[0, 1, 2], [3, 4, 5]], 8, 20, perspective=False)
    x, _ = _centres(8, 20)
    np.testing.assert_array_equal(frags.face_id[0], np.where(x < 40 / 3, 0, 1))
    np.testing.assert_allclose(frags.depth[0], np.minimum(1 + 0.2 * x, 5 - 0.1 * x), rtol=1e-6)
    assert frags.face_id[0, 3, 12] == 0 and frags.face_id[0, 3, 13] == 1  # centres x = 12.5 and 13.5


def test_shared_edges_leave_no_cracks():
    # a jittered grid mesh over more than the image, all vertices at random float positions
    rng = np.random.default_rng(3)
    n = 9
    gx, gy = np.meshgrid(np.linspace(-3, 35, n), np.linspace(-3, 27, n))
    xy = np.stack([gx, gy], -1).reshape(-1, 2) + rng.uniform(-1.5, 1.5, (n * n, 2))
    verts = np.column_stack([xy, rng.uniform(1, 2, n * n)])
    a = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None]).ravel()
    tris = np.concatenate([np.stack([a, a + 1, a + n + 1], 1), np.stack([a, a + n + 1, a + n], 1)])
    for perspective in (True, False):
        frags = rasterize(verts, tris, 24, 32, perspective=perspective)
        assert frags.mask.all()


# --------------------------------------------------------------------------------------------
# a cube under a known rotation and perspective projection

_CUBE_VERTS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
# each face as a quad counter-clockwise seen from outside, with its outward normal
_CUBE_FACES = [
    ((0, 1, 3, 2), (-1, 0, 0)), ((4, 6, 7, 5), (1, 0, 0)),
    ((0, 4, 5, 1), (0, -1, 0)), ((2, 3, 7, 6), (0, 1, 0)),
    ((0, 2, 6, 4), (0, 0, -1)), ((1, 5, 7, 3), (0, 0, 1)),
]


def _cube_in_view(angles=(0.5, 0.7, 0.2), size: int = 64):
    """(image vertices, tris (12, 3), normals per quad (6, 3), quad centres) of a rotated cube."""
    pitch, yaw, roll = angles
    c, s = np.cos, np.sin
    rx = np.array([[1, 0, 0], [0, c(pitch), -s(pitch)], [0, s(pitch), c(pitch)]])
    ry = np.array([[c(yaw), 0, s(yaw)], [0, 1, 0], [-s(yaw), 0, c(yaw)]])
    rz = np.array([[c(roll), -s(roll), 0], [s(roll), c(roll), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    world = _CUBE_VERTS @ rot.T
    tris = np.array([t for quad, _ in _CUBE_FACES for t in ((quad[0], quad[1], quad[2]), (quad[0], quad[2], quad[3]))])
    normals = np.array([n for _, n in _CUBE_FACES], dtype=np.float64) @ rot.T
    centres = np.array([world[list(quad)].mean(0) for quad, _ in _CUBE_FACES])
    # camera on +z at distance 6 looking at the origin: view depth = 6 - z
    cam = np.column_stack([world[:, 0], world[:, 1], 6.0 - world[:, 2]])
    return _project(cam, focal=1.0 * size, cx=size / 2, cy=size / 2), tris, normals, centres


def test_cube_shows_exactly_its_front_faces():
    verts, tris, normals, centres = _cube_in_view()
    camera = np.array([0.0, 0.0, 6.0])
    visible_quads = np.flatnonzero(np.einsum("ij,ij->i", normals, centres - camera) < 0)
    assert len(visible_quads) == 3
    expect_ids = set((2 * visible_quads).tolist()) | set((2 * visible_quads + 1).tolist())
    frags = rasterize(verts, tris, 64, 64)
    ids, counts = np.unique(frags.face_id[frags.mask], return_counts=True)
    assert set(ids.tolist()) == expect_ids
    assert (counts > 0).all()
    culled = rasterize(verts, tris, 64, 64, cull_backfaces=True)
    for name in ("face_id", "bary", "depth"):
        np.testing.assert_array_equal(getattr(culled, name), getattr(frags, name))
    # with cull_backfaces the back faces alone draw nothing; reversed winding draws only them
    back = tris[np.isin(np.arange(12) // 2, visible_quads, invert=True)]
    assert not rasterize(verts, back, 64, 64, cull_backfaces=True).mask.any()
    assert rasterize(verts, back[:, ::-1], 64, 64, cull_backfaces=True).mask.any()


# --------------------------------------------------------------------------------------------
# perspective-correct interpolation


def test_perspective_correct_depth_of_a_tilted_plane():
    size, focal = 48, 60.0
    cx = cy = size / 2
    a, b, d0 = 0.8, 0.3, 4.0  # plane: D = d0 + a X + b Y (camera space)
    X, Y = np.meshgrid([-2.0, 2.0], [-2.0, 2.0])
    X, Y = X.ravel(), Y.ravel()
    cam = np.column_stack([X, Y, d0 + a * X + b * Y])
    verts = _project(cam, focal, cx, cy)
    tris = np.array([[0, 1, 3], [0, 3, 2]])
    frags = rasterize(verts, tris, size, size)
    x, y = _centres(size, size)
    analytic = d0 / (1 - a * (x - cx) / focal - b * (cy - y) / focal)  # the ray's hit on the plane
    m = frags.mask[0]
    assert m.mean() > 0.5
    z = interpolate(frags, tris, cam[:, 2:])[0, ..., 0]
    np.testing.assert_allclose(z[m], analytic[m], rtol=1e-5)
    np.testing.assert_allclose(frags.depth[0][m], analytic[m], rtol=1e-5)
    # camera-space X, Y come back as the ray's too
    xy = interpolate(frags, tris, cam[:, :2])[0]
    np.testing.assert_allclose(xy[..., 0][m], ((x - cx) * analytic / focal)[m], atol=1e-5)
    np.testing.assert_allclose(xy[..., 1][m], ((cy - y) * analytic / focal)[m], atol=1e-5)
    # screen-linear interpolation is measurably wrong here, so the test above has teeth
    linear = rasterize(verts, tris, size, size, perspective=False)
    z_lin = interpolate(linear, tris, cam[:, 2:])[0, ..., 0]
    assert np.abs(z_lin - analytic)[m].max() > 1e-2


# --------------------------------------------------------------------------------------------
# against a slow, independent reference


def _reference(verts, tris, height, width, perspective, cull):
    """Per pixel x triangle brute force: (face_id, depth, bary, two-nearest depth gap, edge distance)."""
    x, y = _centres(height, width)
    px, py = x.reshape(-1, 1), y.reshape(-1, 1)  # (P, 1)
    v = verts[tris]  # (F, 3, 3)
    x0, y0, x1, y1, x2, y2 = (v[None, :, i, j] for i in range(3) for j in range(2))
    w = v[:, :, 2]
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)  # (1, F)
    e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)  # (P, F), proportional to l0
    e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    e2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.stack([e0, e1, e2], -1) / area[..., None]  # (P, F, 3)
        usable = (area != 0) & np.all(w > 0, axis=1)[None] & np.isfinite(area)
        if cull:
            usable &= area < 0
        inside = usable & np.all(lam >= 0, axis=-1)
        if perspective:
            q = lam / w[None]
            depth = 1.0 / q.sum(-1)
            bary = q * depth[..., None]
        else:
            depth = (lam * w[None]).sum(-1)
            bary = lam
        depth = np.where(inside, depth, np.inf)
        # distance of the pixel centre to each edge line, in pixels
        lengths = np.stack([np.hypot(x2 - x1, y2 - y1), np.hypot(x0 - x2, y0 - y2), np.hypot(x1 - x0, y1 - y0)], -1)
        edge_dist = np.abs(np.stack([e0, e1, e2], -1)) / lengths
    order = np.argsort(depth, axis=1, kind="stable")
    first = order[:, 0]
    rows = np.arange(len(first))
    d_sorted = np.take_along_axis(depth, order[:, :2], axis=1)
    fid = np.where(np.isfinite(d_sorted[:, 0]), first, -1)
    with np.errstate(invalid="ignore"):
        gap = d_sorted[:, 1] - d_sorted[:, 0]
    near_edge = edge_dist.min(-1) < 1e-9  # (P, F)
    shape = (height, width)
    return (fid.reshape(shape), d_sorted[:, 0].reshape(shape), bary[rows, first].reshape(shape + (3,)),
            np.nan_to_num(gap, nan=np.inf).reshape(shape), near_edge.reshape(shape + (-1,)))


def _random_mesh(rng, n_tris=30, height=32, width=40):
    """Random triangles of mixed sizes and windings, some reaching outside the image, a few unusable."""
    n_v = 3 * n_tris
    centre = rng.uniform([-4, -4], [width + 4, height + 4], (n_tris, 1, 2))
    spread = rng.choice([2.0, 8.0, 25.0], (n_tris, 1, 1))
    xy = (centre + rng.normal(0, 1, (n_tris, 3, 2)) * spread).reshape(n_v, 2)
    w = rng.uniform(1.0, 6.0, n_v)
    w[rng.random(n_v) < 0.03] = -1.0
    verts = np.column_stack([xy, w])
    tris = rng.permutation(n_v).reshape(n_tris, 3)
    return verts, tris


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("perspective", [True, False])
@pytest.mark.parametrize("cull", [False, True])
def test_matches_the_brute_force_reference(seed, perspective, cull):
    rng = np.random.default_rng(seed)
    height, width = 32, 40
    verts, tris = _random_mesh(rng, 30, height, width)
    frags = rasterize(verts, tris, height, width, perspective=perspective, cull_backfaces=cull)
    fid_ref, depth_ref, bary_ref, gap, near_edge = _reference(verts, tris, height, width, perspective, cull)
    fid = frags.face_id[0]
    assert (fid_ref >= 0).sum() > 200  # the case is not trivial
    differ = fid != fid_ref
    if differ.any():
        r, c = np.nonzero(differ)
        excused = gap[r, c] < 1e-6
        for k in range(len(r)):  # a centre on an edge of either candidate triangle
            cands = [f for f in (fid[r[k], c[k]], fid_ref[r[k], c[k]]) if f >= 0]
            excused[k] |= any(near_edge[r[k], c[k], f] for f in cands)
        assert excused.all(), f"face ids differ at pixels {list(zip(r[~excused], c[~excused]))}"
    same = ~differ & (fid >= 0)
    np.testing.assert_allclose(frags.depth[0][same], depth_ref[same], rtol=1e-5)
    np.testing.assert_allclose(frags.bary[0][same], bary_ref[same], atol=1e-5)
    attrs = rng.normal(0, 1, (len(verts), 4))
    got = interpolate(frags, tris, attrs, background=7.0)[0]
    want = np.einsum("pk,pkc->pc", bary_ref[same], attrs[tris[fid_ref[same]]])
    np.testing.assert_allclose(got[same], want, atol=1e-4)
    np.testing.assert_array_equal(got[fid < 0], 7.0)


# --------------------------------------------------------------------------------------------
# batching and argument checks


def test_batch_equals_single_calls_and_attrs_shared_or_per_item():
    rng = np.random.default_rng(11)
    meshes = [_random_mesh(rng, 25, 24, 28)[0] for _ in range(3)]
    tris = _random_mesh(rng, 25, 24, 28)[1]
    batch = rasterize(np.stack(meshes), tris, 24, 28)
    assert batch.face_id.shape == (3, 24, 28)
    attrs = rng.normal(0, 1, (3, len(meshes[0]), 2)).astype(np.float32)
    per_item = interpolate(batch, tris, attrs, background=[-1.0, -2.0])
    shared = interpolate(batch, tris, attrs[0])
    for i, verts in enumerate(meshes):
        single = rasterize(verts, tris, 24, 28)
        for name in ("face_id", "bary", "depth"):
            np.testing.assert_array_equal(getattr(batch, name)[i], getattr(single, name)[0])
        np.testing.assert_array_equal(per_item[i], interpolate(single, tris, attrs[i], background=[-1.0, -2.0])[0])
        np.testing.assert_array_equal(shared[i], interpolate(single, tris, attrs[0])[0])
    assert not np.array_equal(per_item[1], per_item[2])
    bg = per_item[~batch.mask]
    np.testing.assert_array_equal(bg, np.broadcast_to([-1.0, -2.0], bg.shape))
    assert isinstance(batch, Fragments) and batch.mask.dtype == bool


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda v, t, f: rasterize(v[:, :2], t, 8, 8), "verts"),
        (lambda v, t, f: rasterize(v[None, None], t, 8, 8), "verts"),
        (lambda v, t, f: rasterize(v, t[:, :2], 8, 8), "tris"),
        (lambda v, t, f: rasterize(v, t.astype(float), 8, 8), "tris"),
        (lambda v, t, f: rasterize(v, t + 10, 8, 8), "tris"),
        (lambda v, t, f: rasterize(v, t - 1, 8, 8), "tris"),
        (lambda v, t, f: rasterize(v, t, 0, 8), "height"),
        (lambda v, t, f: interpolate(f, t, np.zeros((2, 3, 1))), "attrs"),
        (lambda v, t, f: interpolate(f, t, np.zeros(3)), "attrs"),
        (lambda v, t, f: interpolate(f, t, np.zeros((2, 1))), "tris"),
        (lambda v, t, f: interpolate(f, t, np.zeros((3, 2)), background=[1, 2, 3]), "background"),
        (lambda v, t, f: interpolate(Fragments(f.face_id, f.bary[..., :2], f.depth), t, np.zeros((3, 1))), "frags"),
        (lambda v, t, f: interpolate(f, np.zeros((0, 3), int), np.zeros((3, 1))), "tris"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, name):
    verts = np.array([[0, 0, 1], [6, 0, 1], [0, 6, 1]], dtype=np.float32)
    tris = np.array([[0, 1, 2]])
    frags = rasterize(verts, tris, 8, 8)
    with pytest.raises(ValueError, match=name):
        call(verts, tris, frags)
