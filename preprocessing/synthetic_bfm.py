"""Deterministic synthetic morphable model in the exact `BFM_model_front.mat` layout.

Used when no Basel Face Model is installed: everything downstream (fitting, PNCC/SECC, renders)
runs on it unchanged, and the file carries the key `r3p_synthetic` so outputs say so.

Geometry, in the units and axes of the real model: decimetres, y up, x toward the subject's LEFT
(image right), z toward the camera (which sits on +z at distance 10). The surface is a height
field z(x, y) over a square grid inside the face region (forehead to under the chin, cheek to
cheek; an elliptic top, a superellipse around the jaw, the rim smoothed): a rounded ellipsoidal
base with nose, nostrils, eye sockets, brow ridge, cheekbones, lips and chin, receding below the
jaw line. Triangles are counter-clockwise seen from +z. The 68 iBUG landmarks sit on distinct
vertices moved exactly onto their targets; the upper and lower inner lips are the two grid rows
either side of the mouth line, so the mouth opens by stretching the triangles between them, as
on the real BFM. Size "bfm" has exactly the real model's 35,709 vertices and 70,789 faces.

Bases are linear displacement / colour fields sampled at the vertices, xyz (or RGB) interleaved,
scaled so coefficients ~ N(0, 1) give plausible faces. The first bases are semantic (see the
`ID_*`, `EXP_*` and `TEX_*` constants), the rest are seeded smooth random fields. The geometry
and mean albedo do not depend on the seed; the random bases do.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from preprocessing.face_model import N_EXP, N_ID, N_TEX, FaceModel, face_model_from_arrays

GENERATOR = "r3p-synthetic-bfm v1"
BFM_N_VERTICES, BFM_N_FACES = 35709, 70789
SMALL_N_VERTICES = 4000
MIN_VERTICES = 500

# semantic expression bases (columns of exBase)
EXP_JAW_OPEN, EXP_SMILE, EXP_RIGHT_EYE_CLOSE, EXP_LEFT_EYE_CLOSE, EXP_BROW_RAISE = 0, 1, 2, 3, 4
# semantic identity bases (columns of idBase)
(ID_FACE_WIDTH, ID_FACE_LENGTH, ID_JAW_WIDTH, ID_NOSE_SIZE, ID_NOSE_LENGTH, ID_EYE_SPACING,
 ID_MOUTH_WIDTH, ID_FACE_DEPTH, ID_BROW_HEIGHT, ID_CHIN, ID_CHEEKS) = range(11)
# semantic albedo bases (columns of texBase)
TEX_SKIN_TONE, TEX_REDNESS, TEX_BROW_DARKNESS, TEX_LIP_COLOUR, TEX_IRIS = range(5)

# --- face region in the image plane: upper half an ellipse, lower half a superellipse ---------
REGION_AX, REGION_YC = 0.80, 0.24  # half width; y where the halves meet (the jaw's top ends)
REGION_AY_TOP, REGION_AY_BOTTOM, REGION_P = 0.71, 1.16, 2.6  # forehead top 0.95, under the chin -0.92
JAW_LEVEL = 0.9375  # landmarks 0..16 lie on this level of the region radius: chin at y = -0.85
FRONT_MASK_R = 0.93  # frontmask2: vertices inside the jaw contour and forehead (rim excluded)

# --- landmark layout (mean face, before re-centring) -----------------------------------------
Y_MOUTH = -0.38  # the mouth line lies midway between two grid rows
EYE_CX, EYE_CY = 0.32, 0.265  # eye centres at (+-EYE_CX, EYE_CY); corners at EYE_CY
EYE_HALF_W, EYE_LID_DX, EYE_UP, EYE_LO = 0.15, 0.05, 0.045, 0.040
BROW_X = (0.56, 0.46, 0.35, 0.24, 0.13)  # outer -> inner
BROW_Y = (0.43, 0.47, 0.485, 0.48, 0.46)
NOSE_Y = (0.31, 0.20, 0.09, -0.035)  # 27 nasion .. 30 tip
NOSTRIL = ((-0.12, -0.115), (-0.06, -0.135), (0.0, -0.145), (0.06, -0.135), (0.12, -0.115))
LIP_CORNER_X = 0.25
OUTER_UPPER = ((-0.16, -0.335), (-0.07, -0.312), (0.0, -0.322), (0.07, -0.312), (0.16, -0.335))  # 49..53
OUTER_LOWER = ((0.16, -0.43), (0.07, -0.46), (0.0, -0.465), (-0.07, -0.46), (-0.16, -0.43))  # 55..59
INNER_X = (0.20, 0.08)  # inner-lip corner |x|, and |x| of 61/63/65/67

# --- expression constants ---------------------------------------------------------------------
JAW_GAP_AT_1 = 0.25  # inner-lip gap opening at jaw coefficient 1
JAW_DROP = 0.08  # translation part of the jaw opening
JAW_HINGE_Y, JAW_HINGE_Z = 0.12, -0.10  # hinge axis (parallel to x) near the ears
JAW_SHARP_X, JAW_SPREAD = 0.12, 1.0  # lips separate sharply for |x| < JAW_SHARP_X


# ============================================================================================
# small helpers
# ============================================================================================

def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _pair(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    """A Gaussian mirrored to both sides of the face (centres at +-cx)."""
    return _gauss(x, y, cx, cy, sx, sy) + _gauss(x, y, -cx, cy, sx, sy)


def _soft_pos(d: np.ndarray, eps: float) -> np.ndarray:
    return 0.5 * (d + np.sqrt(d * d + eps * eps))


def _parse_size(size: str | int) -> tuple[int, int | None]:
    """(vertex count, exact face count or None) for a size argument."""
    if isinstance(size, str):
        if size == "bfm":
            return BFM_N_VERTICES, BFM_N_FACES
        if size == "small":
            return SMALL_N_VERTICES, None
    elif isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if int(size) < MIN_VERTICES:
            raise ValueError(f"synthetic model size {size}: a vertex count must be at least {MIN_VERTICES}")
        return int(size), None
    raise ValueError(f"synthetic model size {size!r}: expected 'bfm', 'small' or a vertex count")


# ============================================================================================
# region, grid and triangulation
# ============================================================================================

def _region_r(x: np.ndarray, y: np.ndarray, squash: float = 1.0) -> np.ndarray:
    """Region 'radius' about (0, REGION_YC), homogeneous of degree 1: < 1 inside the face region."""
    ax = REGION_AX * squash
    dy = y - REGION_YC
    top = np.hypot(x / ax, dy / (REGION_AY_TOP / squash))
    u, v = np.abs(x) / ax, np.maximum(-dy, 0.0) / (REGION_AY_BOTTOM / squash)
    bottom = (u ** REGION_P + v ** REGION_P) ** (1.0 / REGION_P)
    return np.where(dy >= 0.0, top, bottom)


def _grid_candidates(h: float, squash: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer grid coordinates (i, j) covering the region and their region radius.

    Columns sit at x = i*h (x = 0 is a column), rows at y = Y_MOUTH + h/2 + j*h.
    """
    ni = int(np.ceil(1.2 * REGION_AX * squash / h)) + 2
    j_lo = int(np.floor((REGION_YC - 1.2 * REGION_AY_BOTTOM / squash - Y_MOUTH) / h)) - 2
    j_hi = int(np.ceil((REGION_YC + 1.2 * REGION_AY_TOP / squash - Y_MOUTH) / h)) + 2
    gj, gi = np.meshgrid(np.arange(j_lo, j_hi + 1), np.arange(-ni, ni + 1), indexing="ij")
    ij = np.stack([gi.ravel(), gj.ravel()], axis=1)
    xy = _grid_xy(ij, h)
    return ij, _region_r(xy[:, 0], xy[:, 1], squash)


def _grid_xy(ij: np.ndarray, h: float) -> np.ndarray:
    return np.stack([ij[:, 0] * h, Y_MOUTH + 0.5 * h + ij[:, 1] * h], axis=1)


def _grid_spacing(n: int, squash: float) -> float:
    """Grid spacing h such that about n grid points fall inside the region."""
    h = float(np.sqrt(2.7 / n))  # the region's area is about 2.7 dm^2
    for _ in range(4):
        _, r = _grid_candidates(h, squash)
        h *= float(np.sqrt(np.count_nonzero(r < 1.0) / n))
    return h


def _triangulate(ij: np.ndarray) -> np.ndarray:
    """Triangles (F, 3) of grid cells: two per full cell, one per 3-corner cell; CCW from +z.

    Cells left of x = 0 use the other diagonal, so the mesh is mirror-symmetric.
    """
    lo = ij.min(axis=0)
    shape = tuple(ij.max(axis=0) - lo + 1)
    lut = np.full(shape, -1, dtype=np.int64)
    lut[ij[:, 0] - lo[0], ij[:, 1] - lo[1]] = np.arange(len(ij))
    a, b, d, e = lut[:-1, :-1], lut[1:, :-1], lut[:-1, 1:], lut[1:, 1:]  # (i,j) (i+1,j) (i,j+1) (i+1,j+1)
    cols = np.arange(shape[0] - 1)[:, None] + lo[0]
    left = np.broadcast_to(cols + 1 <= 0, a.shape)
    has = [c >= 0 for c in (a, b, d, e)]
    count = sum(m.astype(np.int8) for m in has)
    full = count == 4
    three = count == 3
    cell_id = np.arange(a.size).reshape(a.shape)
    groups = [  # (cell mask, triangle corner arrays, sub-order)
        (full & ~left, (a, b, e), 0), (full & ~left, (a, e, d), 1),
        (full & left, (a, b, d), 0), (full & left, (b, e, d), 1),
        (three & ~has[0], (b, e, d), 0), (three & ~has[1], (a, e, d), 0),
        (three & ~has[2], (a, b, e), 0), (three & ~has[3], (a, b, d), 0),
    ]
    tris, keys = [], []
    for mask, corners, sub in groups:
        tris.append(np.stack([c[mask] for c in corners], axis=1))
        keys.append(cell_id[mask] * 2 + sub)
    tri = np.concatenate(tris)
    return tri[np.argsort(np.concatenate(keys), kind="stable")]


def _boundary_edges(tri: np.ndarray) -> np.ndarray:
    """Sorted (E, 2) vertex pairs of edges used by exactly one triangle."""
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    n = int(tri.max()) + 1
    keys, counts = np.unique(edges[:, 0] * n + edges[:, 1], return_counts=True)
    once = keys[counts == 1]
    return np.stack([once // n, once % n], axis=1)


def _trim_faces(tri: np.ndarray, xy: np.ndarray, excess: int) -> np.ndarray:
    """Remove `excess` rim triangles, spread around the rim, keeping every vertex used.

    Only triangles with exactly one rim edge whose third vertex is interior are removed, and no
    two removed triangles share a vertex, so the mesh stays a manifold disk.
    """
    if excess == 0:
        return tri
    bnd = _boundary_edges(tri)
    n = len(xy)
    on_rim = np.zeros(n, dtype=bool)
    on_rim[bnd.ravel()] = True
    key = bnd[:, 0] * n + bnd[:, 1]
    rim_edges = np.zeros(len(tri), dtype=np.int64)
    for p, q in ((0, 1), (1, 2), (2, 0)):
        lo, hi = np.minimum(tri[:, p], tri[:, q]), np.maximum(tri[:, p], tri[:, q])
        rim_edges += np.isin(lo * n + hi, key)
    cand = np.flatnonzero((rim_edges == 1) & (on_rim[tri].sum(axis=1) == 2))
    centre = xy[tri[cand]].mean(axis=1)
    angle = np.mod(np.arctan2(centre[:, 1] + 0.1, centre[:, 0]) + 0.5 * np.pi, 2.0 * np.pi)
    cand = cand[np.argsort(angle, kind="stable")]  # starting under the chin
    if len(cand) < 2 * excess:
        raise RuntimeError(f"cannot trim {excess} faces: only {len(cand)} removable rim triangles")
    picks, used = [], set()
    for start in np.linspace(0, len(cand), excess, endpoint=False).astype(int):
        for k in range(start, start + len(cand)):  # next candidate sharing no vertex with the picks
            t = cand[k % len(cand)]
            if not used.intersection(tri[t].tolist()):
                picks.append(t)
                used.update(tri[t].tolist())
                break
    keep = np.ones(len(tri), dtype=bool)
    keep[picks] = False
    return tri[keep]


def _signed_areas(xy: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a, b, c = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def _round_rim(xy: np.ndarray, tri: np.ndarray, squash: float) -> np.ndarray:
    """Slide the rim vertices radially onto one level of the region, removing the grid staircase.

    A rim vertex whose full move would fold or flatten a triangle moves part of the way.
    """
    rim = np.unique(_boundary_edges(tri))
    centre = np.array([0.0, REGION_YC])
    level = _region_r(xy[rim, 0], xy[rim, 1], squash).max()
    target = xy.copy()
    p = xy[rim].copy()
    p = centre + (p - centre) * (level / _region_r(p[:, 0], p[:, 1], squash))[:, None]
    target[rim] = p
    min_area = 0.2 * np.median(np.abs(_signed_areas(xy, tri)))
    out, pending = xy.copy(), rim
    for frac in (1.0, 0.75, 0.5, 0.25):
        trial = out.copy()
        trial[pending] = xy[pending] + frac * (target[pending] - xy[pending])
        held = np.zeros(0, dtype=np.int64)
        for _ in range(20):
            bad = _signed_areas(trial, tri) < min_area
            hold = np.setdiff1d(np.intersect1d(np.unique(tri[bad]), pending), held)
            if hold.size == 0:
                break
            trial[hold] = xy[hold]
            held = np.union1d(held, hold)
        out, pending = trial, held
        if pending.size == 0:
            break
    return out


def _build_grid(n: int, n_faces: int | None) -> tuple[np.ndarray, np.ndarray, float]:
    """(xy (N, 2), tri (F, 3) 0-based, h): the N region grid points nearest the centre."""
    for squash in (1.0, 0.98, 1.02, 0.96, 1.04, 0.94, 1.06, 0.92, 1.08):
        h = _grid_spacing(n, squash)
        ij_all, r = _grid_candidates(h, squash)
        order = np.argsort(r, kind="stable")
        chosen = order[:n]
        nxt = n
        for _ in range(20):  # drop vertices no triangle uses, take the next ones in order
            tri = _triangulate(ij_all[chosen])
            used = np.zeros(n, dtype=bool)
            used[tri.ravel()] = True
            if used.all():
                break
            bad = np.count_nonzero(~used)
            chosen = np.concatenate([chosen[used], order[nxt:nxt + bad]])
            nxt += bad
        else:
            raise RuntimeError(f"could not build a synthetic grid of {n} vertices with every vertex used")
        xy = _grid_xy(ij_all[chosen], h)
        if n_faces is not None:
            excess = len(tri) - n_faces
            if not 0 <= excess <= 64:
                continue
            tri = _trim_faces(tri, xy, excess)
        return _round_rim(xy, tri, squash), tri, h
    raise RuntimeError(f"could not reach exactly {n_faces} faces with {n} vertices")


# ============================================================================================
# landmarks and the height field
# ============================================================================================

def _landmark_targets(h: float) -> np.ndarray:
    """(68, 2) iBUG landmark positions (x, y) of the mean face; inner lips on the rows +-h/2."""
    p = np.zeros((68, 2))
    p[0:17] = _jaw_landmarks()
    p[17:22] = np.stack([-np.array(BROW_X), BROW_Y], axis=1)
    p[22:27] = np.stack([np.array(BROW_X)[::-1], np.array(BROW_Y)[::-1]], axis=1)
    p[27:31] = np.stack([np.zeros(4), NOSE_Y], axis=1)
    p[31:36] = NOSTRIL
    cx, w, d = -EYE_CX, EYE_HALF_W, EYE_LID_DX  # right eye (x < 0), clockwise from its outer corner
    p[36:42] = [(cx - w, EYE_CY), (cx - d, EYE_CY + EYE_UP), (cx + d, EYE_CY + EYE_UP), (cx + w, EYE_CY),
                (cx + d, EYE_CY - EYE_LO), (cx - d, EYE_CY - EYE_LO)]
    p[42:48] = p[[39, 38, 37, 36, 41, 40]] * [-1.0, 1.0]  # left eye: the mirror image, from its inner corner
    p[48] = (-LIP_CORNER_X, Y_MOUTH)
    p[49:54] = OUTER_UPPER
    p[54] = (LIP_CORNER_X, Y_MOUTH)
    p[55:60] = OUTER_LOWER
    up, lo = Y_MOUTH + 0.5 * h, Y_MOUTH - 0.5 * h
    ci, mi = INNER_X
    p[60:68] = [(-ci, up), (-mi, up), (0.0, up), (mi, up), (ci, up), (mi, lo), (0.0, lo), (-mi, lo)]
    return p


# snapping priority: inner lips (exact rows), eyes, nose, mouth, brows, jaw
_SNAP_ORDER = np.r_[60:68, 36:48, 27:36, 48:60, 17:27, 0:17]


def _snap_landmarks(xy: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Move (in place) the nearest free vertex onto each landmark target; returns their indices (68,)."""
    from scipy.spatial import cKDTree

    k = min(16, len(xy))
    _, near = cKDTree(xy).query(targets, k=k)
    chosen = np.full(68, -1, dtype=np.int64)
    taken: set[int] = set()
    for lm in _SNAP_ORDER:  # 68 landmarks, not a loop over vertices
        free = [int(v) for v in near[lm] if int(v) not in taken]
        if not free:  # only on very coarse meshes: search all vertices
            dist = np.linalg.norm(xy - targets[lm], axis=1)
            dist[list(taken)] = np.inf
            free = [int(np.argmin(dist))]
        chosen[lm] = free[0]
        taken.add(free[0])
    xy[chosen] = targets
    return chosen


def _jaw_landmarks() -> np.ndarray:
    """(17, 2) landmarks 0..16: equal arc-length steps along the jaw contour, subject's right first."""
    theta = np.linspace(np.pi, 0.0, 4001)
    c, sn = np.cos(theta), np.sin(theta)
    ax, ay = JAW_LEVEL * REGION_AX, JAW_LEVEL * REGION_AY_BOTTOM
    e = 2.0 / REGION_P
    curve = np.stack([ax * np.sign(c) * np.abs(c) ** e, REGION_YC - ay * np.abs(sn) ** e], axis=1)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))]
    at = np.linspace(0.0, arc[-1], 17)
    return np.stack([np.interp(at, arc, curve[:, 0]), np.interp(at, arc, curve[:, 1])], axis=1)


def _below_jaw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far (about, in decimetres) a point lies outside the jaw contour; 0 above the cheeks."""
    u = np.abs(x) / REGION_AX
    v = np.maximum(REGION_YC - y, 0.0) / REGION_AY_BOTTOM
    r = (u ** REGION_P + v ** REGION_P) ** (1.0 / REGION_P)
    return 1.2 * (r - JAW_LEVEL) * _smoothstep((REGION_YC + 0.1 - y) / 0.4)


def _nose(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Nose ridge height: low at the nasion, highest at the tip (landmark 30), falling to the base."""
    top, tip = NOSE_Y[0] + 0.01, NOSE_Y[3]
    t = _smoothstep((top - y) / (top - tip))  # 0 at the nasion, 1 at the tip
    profile = np.where(y >= tip, 0.06 + 0.30 * t, 0.36 * np.exp(-0.5 * ((y - tip) / 0.055) ** 2))
    profile = np.where(y > top, 0.06 * np.exp(-0.5 * ((y - top) / 0.09) ** 2), profile)
    width = 0.045 + 0.05 * np.where(y < tip, 1.0, t)
    return profile * np.exp(-0.5 * (x / width) ** 2)


def _height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth z (decimetres, toward the camera) of the mean face surface over (x, y)."""
    base = 0.80 * np.sqrt(np.clip(1.0 - (x / 0.86) ** 2 - ((y + 0.05) / 1.45) ** 2, 0.01, None))
    jaw = -0.45 * (1.0 - np.exp(-(_soft_pos(_below_jaw(x, y), 0.02) / 0.1) ** 2))
    eyes = (-0.12 * _pair(x, y, EYE_CX, EYE_CY + 0.01, 0.16, 0.10)
            + 0.035 * _pair(x, y, EYE_CX, EYE_CY, 0.08, 0.05))
    lateral = np.exp(-0.5 * (np.maximum(np.abs(x) - 0.45, 0.0) / 0.1) ** 2)
    brow = 0.05 * np.exp(-0.5 * ((y - 0.45) / 0.05) ** 2) * lateral
    cheeks = 0.07 * _pair(x, y, 0.45, 0.05, 0.13, 0.10) - 0.04 * _pair(x, y, 0.62, 0.45, 0.1, 0.1)
    nose = (_nose(x, y) + 0.10 * _pair(x, y, 0.085, -0.085, 0.045, 0.04)
            - 0.04 * _pair(x, y, 0.05, -0.13, 0.022, 0.012))
    lips = (0.05 * _gauss(x, y, 0.0, -0.33, 0.17, 0.035) + 0.055 * _gauss(x, y, 0.0, -0.43, 0.15, 0.04)
            - 0.01 * _gauss(x, y, 0.0, Y_MOUTH, 0.2, 0.012))
    chin = 0.07 * _gauss(x, y, 0.0, -0.76, 0.14, 0.10) - 0.03 * _gauss(x, y, 0.0, -0.56, 0.15, 0.04)
    return base + jaw + eyes + brow + cheeks + nose + lips + chin


def _slide(x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """(N, 3) displacement that moves vertices by (dx, dy) along the mean surface."""
    return np.stack([dx, dy, _height(x + dx, y + dy) - _height(x, y)], axis=1)


# ============================================================================================
# regions of the mean face (texture and masks)
# ============================================================================================

_EYE_CURVES = {  # landmark numbers of the upper and lower lid polylines, by increasing x
    "right": ((36, 37, 38, 39), (36, 41, 40, 39)),
    "left": ((42, 43, 44, 45), (42, 47, 46, 45)),
}
_LIP_CURVES = ((48, 49, 50, 51, 52, 53, 54), (48, 59, 58, 57, 56, 55, 54))


def _curves(x: np.ndarray, lm: np.ndarray, upper: tuple, lower: tuple) -> tuple[np.ndarray, np.ndarray]:
    """y of the upper and lower landmark polylines above x (equal outside their x range)."""
    up, lo = lm[list(upper)], lm[list(lower)]
    return np.interp(x, up[:, 0], up[:, 1]), np.interp(x, lo[:, 0], lo[:, 1])


def _between(x: np.ndarray, y: np.ndarray, lm: np.ndarray, upper: tuple, lower: tuple,
             margin: float = 0.0) -> np.ndarray:
    """Points between the two polylines (inside an eye or lip contour seen from the front).

    margin < 0 excludes a band along the contour, margin > 0 includes one (the contour itself).
    """
    yu, yl = _curves(x, lm, upper, lower)
    x_lo, x_hi = lm[upper[0], 0], lm[upper[-1], 0]
    return (y > yl - margin) & (y < yu + margin) & (x > x_lo - margin) & (x < x_hi + margin)


def _segment_distance(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance of (N, 2) points to the open polyline (K, 2)."""
    a, b = poly[:-1], poly[1:]
    ab = b - a
    t = np.clip(((p[:, None, :] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1)[None], 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None, :] - closest, axis=-1).min(axis=1)


def _regions(xy: np.ndarray, lm: np.ndarray, h: float) -> dict[str, np.ndarray]:
    """Soft (0..1) or boolean masks of the facial parts over the vertices."""
    x, y = xy[:, 0], xy[:, 1]
    eye = np.zeros(len(x), dtype=bool)
    lash = np.zeros(len(x))
    for upper, lower in _EYE_CURVES.values():
        eye |= _between(x, y, lm, upper, lower)
        yu, yl = _curves(x, lm, upper, lower)
        in_x = (x > lm[upper[0], 0]) & (x < lm[upper[-1], 0])
        lash = np.maximum(lash, in_x * (1.0 - _smoothstep((y - yu) / 0.018)) * (y >= yu))
        lash = np.maximum(lash, 0.4 * in_x * (1.0 - _smoothstep((yl - y) / 0.008)) * (y <= yl))
    iris_d = np.minimum(np.hypot(np.abs(x) - EYE_CX, y - EYE_CY - 0.004), 1.0)
    brow_d = np.minimum(_segment_distance(xy, lm[17:22] - [0.0, 0.01]),  # the brow band sits a
                        _segment_distance(xy, lm[22:27] - [0.0, 0.01]))  # little below its landmarks
    brow_w = np.interp(np.abs(x), [min(BROW_X), max(BROW_X)], [0.034, 0.018])
    brow = 1.0 - _smoothstep((brow_d - brow_w + 0.006) / 0.012)
    lip = _between(x, y, lm, *_LIP_CURVES, margin=1e-6)
    mouth_seam = (np.abs(y - Y_MOUTH) < h) & (np.abs(x) < INNER_X[0] + 0.5 * h)
    nostril = _smoothstep((_pair(x, y, 0.055, -0.133, 0.022, 0.011) - 0.35) / 0.4)
    return {
        "eye": eye, "iris": eye & (iris_d < 0.042), "pupil": eye & (iris_d < 0.017), "lash": lash * ~eye,
        "brow": brow, "lip": lip, "mouth_seam": mouth_seam, "nostril": nostril,
        "skin": ~eye & ~lip & ~mouth_seam & (brow < 0.3) & (nostril < 0.5),
    }


def _blend(rgb: np.ndarray, alpha: np.ndarray, colour: tuple) -> np.ndarray:
    a = np.asarray(alpha, dtype=np.float64)[:, None]
    return rgb * (1.0 - a) + a * np.asarray(colour, dtype=np.float64)[None]


def _mean_albedo(xy: np.ndarray, reg: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 3) mean albedo in 0..255: skin with darker brows, red lips, white eyes, dark irises."""
    x, y = xy[:, 0], xy[:, 1]
    rgb = np.tile([[200.0, 150.0, 125.0]], (len(x), 1))
    rgb += 14.0 * _pair(x, y, 0.40, -0.12, 0.15, 0.13)[:, None] * [1.0, -0.2, -0.1]  # rosy cheeks
    rgb -= 18.0 * _smoothstep(_below_jaw(x, y) / 0.08)[:, None] * [1.0, 1.0, 0.9]  # shade under the jaw
    # eye sockets and lid creases read darker than the brows at low resolution, as on real faces
    # (face detectors and landmarkers rely on it; without it dlib takes the brows for eyes)
    rgb -= 70.0 * np.clip(_pair(x, y, EYE_CX, EYE_CY + 0.01, 0.11, 0.055), 0, 1)[:, None] * [1.0, 1.05, 1.0]
    rgb = _blend(rgb, reg["nostril"], (70, 40, 36))
    rgb = _blend(rgb, reg["brow"], (58, 40, 30))
    rgb = _blend(rgb, reg["lip"], (180, 86, 86))
    rgb = _blend(rgb, reg["mouth_seam"], (70, 22, 28))
    rgb = _blend(rgb, reg["eye"], (200, 192, 184))
    rgb = _blend(rgb, reg["iris"], (92, 60, 38))
    rgb = _blend(rgb, reg["pupil"], (16, 12, 10))
    rgb = _blend(rgb, 0.95 * reg["lash"], (30, 20, 18))
    return np.clip(rgb, 0.0, 255.0)


# ============================================================================================
# bases
# ============================================================================================

def _unit_rms(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.sqrt((f * f).mean(axis=0, keepdims=True)), 1e-12)


def _smooth_fields(xy: np.ndarray, rng: np.random.Generator, count: int, mirror: int = 0,
                   order: int = 8) -> np.ndarray:
    """(N, count) smooth random fields over the face, unit RMS over the vertices.

    Random combinations of cos(pi a x') cos(pi b y') (x', y' in 0..1 over a box around the face,
    a, b < order, the constant left out), weighted toward low frequencies, tapered at the rim.
    mirror = +1 keeps the terms symmetric under x -> -x (even a), -1 the antisymmetric ones
    (odd a), 0 all.
    """
    xs = (xy[:, 0] + 1.2) / 2.4  # a box well beyond the face: its corners (where all terms
    ys = (xy[:, 1] + 1.45) / 2.8  # agree in sign) stay away from the rim
    a, b = np.meshgrid(np.arange(order), np.arange(order), indexing="ij")
    a, b = a.ravel()[1:], b.ravel()[1:]
    keep = np.ones(a.shape, dtype=bool) if mirror == 0 else (a % 2 == (0 if mirror > 0 else 1))
    a, b = a[keep], b[keep]
    phi = np.cos(np.pi * np.outer(xs, a)) * np.cos(np.pi * np.outer(ys, b))  # (N, M)
    weights = rng.normal(size=(len(a), count)) / (1.0 + a * a + b * b)[:, None] ** 0.75
    taper = 1.0 - 0.5 * np.minimum(_region_r(xy[:, 0], xy[:, 1]), 1.0) ** 2
    return _unit_rms((phi @ weights) * taper[:, None])


def _identity_bases(xyz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3, 80) identity displacement fields in decimetres per unit coefficient."""
    x, y, z = xyz.T
    n = len(x)
    b = np.zeros((n, 3, N_ID))
    side = np.sign(x)
    lateral = np.exp(-0.5 * (np.maximum(np.abs(x) - 0.5, 0.0) / 0.1) ** 2)
    b[:, 0, ID_FACE_WIDTH] = 0.05 * x
    b[:, 1, ID_FACE_LENGTH] = 0.05 * (y + 0.1)
    b[:, 0, ID_JAW_WIDTH] = 0.07 * x * _smoothstep((-0.2 - y) / 0.5)
    b[:, 0, ID_NOSE_SIZE] = 0.15 * x * _gauss(x, y, 0.0, -0.07, 0.15, 0.08)
    b[:, 2, ID_NOSE_SIZE] = 0.2 * _nose(x, y)
    b[:, 1, ID_NOSE_LENGTH] = -0.03 * _gauss(x, y, 0.0, -0.06, 0.12, 0.08)
    b[:, 0, ID_EYE_SPACING] = 0.025 * side * _pair(x, y, EYE_CX, EYE_CY + 0.05, 0.14, 0.12)
    b[:, 0, ID_MOUTH_WIDTH] = 0.1 * x * _gauss(x, y, 0.0, Y_MOUTH, 0.25, 0.1)
    b[:, 2, ID_FACE_DEPTH] = 0.08 * z
    b[:, 1, ID_BROW_HEIGHT] = 0.025 * np.exp(-0.5 * ((y - 0.46) / 0.07) ** 2) * lateral
    chin = _gauss(x, y, 0.0, -0.88, 0.22, 0.15)
    b[:, 1, ID_CHIN], b[:, 2, ID_CHIN] = -0.04 * chin, 0.03 * chin
    cheeks = _pair(x, y, 0.42, -0.05, 0.14, 0.14)
    b[:, 0, ID_CHEEKS], b[:, 2, ID_CHEEKS] = 0.02 * side * cheeks, 0.04 * cheeks
    n_sem = ID_CHEEKS + 1
    n_rand = N_ID - n_sem
    # random fields: mostly mirror-symmetric (faces are), plus a smaller free part
    scale = 0.015 * 0.94 ** np.arange(n_rand)
    for axis, mirror in ((0, -1), (1, 1), (2, 1)):
        sym = _smooth_fields(xyz[:, :2], rng, n_rand, mirror=mirror)
        free = _smooth_fields(xyz[:, :2], rng, n_rand)
        b[:, axis, n_sem:] = (0.9 * sym + 0.3 * free) * scale
    return b


def _jaw_open(xyz: np.ndarray, h: float, z_lower_lip: float) -> np.ndarray:
    """Jaw opening: lower lip, chin and jaw rotate down about a hinge near the ears (N, 3)."""
    x, y, z = xyz.T
    spread = 0.5 * h + JAW_SPREAD * np.maximum(np.abs(x) - JAW_SHARP_X, 0.0)
    w = _smoothstep(0.5 + (Y_MOUTH - y) / (2.0 * spread))  # 1 from the lower inner lip down
    theta = (JAW_GAP_AT_1 - JAW_DROP) / (z_lower_lip - JAW_HINGE_Z)
    dy = -JAW_DROP - theta * (z - JAW_HINGE_Z)
    dz = theta * (y - JAW_HINGE_Y)
    return w[:, None] * np.stack([np.zeros_like(x), dy, dz], axis=1)


def _smile(xyz: np.ndarray) -> np.ndarray:
    """Smile: mouth corners up and outward, cheeks lifted (N, 3)."""
    x, y = xyz[:, 0], xyz[:, 1]
    g_left = _gauss(x, y, LIP_CORNER_X, Y_MOUTH, 0.09, 0.07)
    g_right = _gauss(x, y, -LIP_CORNER_X, Y_MOUTH, 0.09, 0.07)
    cheeks = _pair(x, y, 0.36, -0.15, 0.12, 0.10)
    dx = 0.045 * (g_left - g_right)
    dy = 0.05 * (g_left + g_right) + 0.03 * cheeks + 0.012 * _gauss(x, y, 0.0, -0.33, 0.2, 0.05)
    d = _slide(x, y, dx, dy)
    d[:, 2] += 0.025 * cheeks
    return d


def _eye_close(xyz: np.ndarray, lm: np.ndarray, upper: tuple, lower: tuple) -> np.ndarray:
    """Close one eye: the opening collapses onto the lower lid, the upper lid meets it (N, 3)."""
    x, y = xyz[:, 0], xyz[:, 1]
    yu, yl = _curves(x, lm, upper, lower)
    opening = yu - yl  # 0 outside the eye's x range
    above = -opening * (1.0 - _smoothstep((y - yu) / 0.10))
    dy = np.where(y <= yl, 0.0, np.where(y <= yu, yl - y, above))
    return _slide(x, y, np.zeros_like(x), dy)


def _brow_raise(xyz: np.ndarray) -> np.ndarray:
    """Raise both brows and the forehead skin above them (N, 3); the eyes do not move."""
    x, y = xyz[:, 0], xyz[:, 1]
    lateral = np.exp(-0.5 * (np.maximum(np.abs(x) - 0.55, 0.0) / 0.1) ** 2)
    dy = 0.05 * _smoothstep((y - 0.335) / 0.10) * lateral * (1.0 - 0.6 * _smoothstep((y - 0.6) / 0.35))
    return _slide(x, y, np.zeros_like(x), dy)


def _expression_bases(xyz: np.ndarray, lm: np.ndarray, h: float, keypoints: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """(N, 3, 64) expression displacement fields in decimetres per unit coefficient."""
    n = len(xyz)
    b = np.zeros((n, 3, N_EXP))
    b[:, :, EXP_JAW_OPEN] = _jaw_open(xyz, h, float(xyz[keypoints[66], 2]))
    b[:, :, EXP_SMILE] = _smile(xyz)
    b[:, :, EXP_RIGHT_EYE_CLOSE] = _eye_close(xyz, lm, *_EYE_CURVES["right"])
    b[:, :, EXP_LEFT_EYE_CLOSE] = _eye_close(xyz, lm, *_EYE_CURVES["left"])
    b[:, :, EXP_BROW_RAISE] = _brow_raise(xyz)
    n_sem = EXP_BROW_RAISE + 1
    n_rand = N_EXP - n_sem
    centre = np.stack([rng.uniform(-0.55, 0.55, n_rand), rng.uniform(-0.85, 0.55, n_rand)], axis=1)
    sigma = rng.uniform(0.08, 0.18, n_rand)
    direction = rng.normal(size=(n_rand, 3)) * [1.0, 1.0, 0.5]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    amp = 0.02 * 0.96 ** np.arange(n_rand)
    d2 = ((xyz[:, None, :2] - centre[None]) ** 2).sum(-1)  # (N, n_rand)
    bumps = np.exp(-0.5 * d2 / sigma[None] ** 2) * amp[None]
    b[:, :, n_sem:] = bumps[:, None, :] * direction.T[None]
    return b


def _texture_bases(xy: np.ndarray, reg: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """(N, 3, 80) albedo fields in 0..255 units per unit coefficient."""
    n = len(xy)
    b = np.zeros((n, 3, N_TEX))
    not_eye = (~reg["eye"]).astype(np.float64)
    b[:, :, TEX_SKIN_TONE] = 22.0 * not_eye[:, None] * [1.0, 0.92, 0.85]
    cheeks = 0.5 + _pair(xy[:, 0], xy[:, 1], 0.40, -0.12, 0.15, 0.13)
    b[:, :, TEX_REDNESS] = 9.0 * (reg["skin"] * cheeks)[:, None] * [1.0, -0.5, -0.4]
    b[:, :, TEX_BROW_DARKNESS] = -22.0 * reg["brow"][:, None] * [1.0, 0.85, 0.75]
    b[:, :, TEX_LIP_COLOUR] = 14.0 * reg["lip"][:, None] * [1.0, -0.6, -0.3]
    b[:, :, TEX_IRIS] = -20.0 * (reg["iris"] & ~reg["pupil"])[:, None] * [1.0, 0.8, 0.5]
    n_sem = TEX_IRIS + 1
    n_rand = N_TEX - n_sem
    fields = _smooth_fields(xy, rng, n_rand)  # (N, n_rand) scalar fields
    colour = 1.0 + 0.35 * rng.normal(size=(n_rand, 3))  # mostly brightness, some hue
    b[:, :, n_sem:] = fields[:, None, :] * colour.T[None] * (7.0 * 0.95 ** np.arange(n_rand))
    return b


# ============================================================================================
# assembly and API
# ============================================================================================

def _point_buf(tri: np.ndarray, n: int, width: int = 8) -> np.ndarray:
    """(N, width) 0-based faces around each vertex, padded with F (the dummy face)."""
    f = len(tri)
    v = tri.ravel()
    order = np.argsort(v, kind="stable")
    v, faces = v[order], np.repeat(np.arange(f), 3)[order]
    rank = np.arange(len(v)) - np.searchsorted(v, v, side="left")
    if rank.max() >= width:
        raise RuntimeError(f"a vertex has {rank.max() + 1} faces, more than point_buf's {width}")
    buf = np.full((n, width), f, dtype=np.int64)
    buf[v, rank] = faces
    return buf


def _one_based(a: np.ndarray) -> np.ndarray:
    """0-based indices -> 1-based, stored as doubles like the MATLAB-made reference files."""
    return (np.asarray(a, dtype=np.int64) + 1).astype(np.float64)


def _interleave(b: np.ndarray) -> np.ndarray:
    """(N, 3, K) -> (3N, K), xyz (or RGB) interleaved per vertex."""
    return b.reshape(-1, b.shape[2])


def synthetic_bfm_arrays(seed: int = 0, size: str | int = "bfm") -> dict[str, np.ndarray]:
    """The synthetic model as `BFM_model_front.mat` arrays: 1-based indices, decimetres, albedo 0..255."""
    n, n_faces = _parse_size(size)
    xy, tri, h = _build_grid(n, n_faces)
    lm = _landmark_targets(h)
    keypoints = _snap_landmarks(xy, lm)
    xyz = np.column_stack([xy, _height(xy[:, 0], xy[:, 1])])
    rng_id, rng_exp, rng_tex = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    reg = _regions(xy, lm, h)
    front = np.flatnonzero(_region_r(xy[:, 0], xy[:, 1]) < FRONT_MASK_R)
    in_front = np.zeros(n, dtype=bool)
    in_front[front] = True
    front_tri = tri[in_front[tri].all(axis=1)]
    one = _one_based
    return {
        "meanshape": xyz.reshape(1, -1).astype(np.float32),
        "idBase": _interleave(_identity_bases(xyz, rng_id)).astype(np.float32),
        "exBase": _interleave(_expression_bases(xyz, lm, h, keypoints, rng_exp)).astype(np.float64),
        "meantex": _mean_albedo(xy, reg).reshape(1, -1).astype(np.float32),
        "texBase": _interleave(_texture_bases(xy, reg, rng_tex)).astype(np.float32),
        "tri": one(tri),
        "point_buf": one(_point_buf(tri, n)),
        "keypoints": one(keypoints).reshape(1, 68),
        "frontmask2_idx": one(front).reshape(-1, 1),
        "tri_mask2": one(front_tri),
        "skinmask": reg["skin"].astype(np.float64).reshape(1, -1),
        "r3p_synthetic": f"{GENERATOR}: seed={seed} size={size} vertices={n} faces={len(tri)}",
    }


def write_bfm_mat(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write model arrays as a MATLAB v5 .mat (scipy.io.savemat) atomically: temp file, then rename."""
    from scipy.io import savemat

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:  # a file object: savemat appends no ".mat" to the temp name
            savemat(fh, arrays, do_compression=False, oned_as="row")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@functools.lru_cache(maxsize=8)
def synthetic_face_model(seed: int = 0, size: str | int = "bfm") -> FaceModel:
    """The synthetic model as a `FaceModel` (memoised per seed and size; marked synthetic)."""
    return face_model_from_arrays(synthetic_bfm_arrays(seed, size), source=f"synthetic:seed={seed},size={size}")
