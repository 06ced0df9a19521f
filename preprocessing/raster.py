"""CPU z-buffer triangle rasteriser for batches of meshes (numba, one core, releases the GIL).

Conventions
-----------
- ``verts`` (V, 3) or (B, V, 3): columns x, y in image pixel coordinates (x right, y *down*; the
  image spans [0, W] x [0, H]; pixel (row r, col c) has its centre at (c + 0.5, r + 0.5)) and the
  view depth w > 0 (distance along the camera axis, smaller = nearer).
- ``tris`` (F, 3): 0-based vertex indices. Either winding is drawn unless ``cull_backfaces``.
- A pixel is covered by a triangle when its centre lies inside or on an edge of it (inclusive
  edges). Edge functions are float64, evaluated from a canonical endpoint order (lower vertex
  number first) and stepped along rows; for vertices on a binary grid (multiples of 1/256 px,
  say, within +-4096 px) all of it is exact, so a centre on an edge shared by two triangles is
  covered by both and there are no cracks. Otherwise a miss needs a centre within ~1e-12 px of
  a shared edge.
- The nearest surface wins; at equal depth the triangle drawn first (lower face index) is kept.
- ``perspective=True``: barycentrics are perspective-correct (screen weights l_i / w_i,
  renormalised) and depth = 1 / sum(l_i / w_i). ``perspective=False``: both linear in screen space
  (depth = sum l_i w_i).
- Triangles with a vertex of w <= 0 or a non-finite coordinate are skipped; zero-area triangles
  draw nothing; triangles reaching outside the image are clipped to it (bounding-box clamp).
- Back faces: a triangle that is counter-clockwise seen by the camera in a y-UP frame is
  front-facing. In the y-down pixel frame that is a *negative* signed area
  (x1 - x0)(y2 - y0) - (y1 - y0)(x2 - x0) < 0, so ``cull_backfaces`` drops triangles whose signed
  area in pixel coordinates is positive.

Design
------
Vertices are first renumbered in the order the triangles use them, so the triangle pass reads
vertex data almost sequentially. One pass per triangle over its clamped bounding box, with edge
functions stepped along each row, keeps per pixel the depth key (1/w, or -w orthographic) in a
float64 scratch z-buffer, the face id, and the two un-normalised weights of the winning triangle;
a streaming pass then normalises the weights and writes depth. (Recomputing the barycentrics
afterwards from the face ids alone, a "visibility buffer", measured about 1 ms/frame slower at
512² on a 70k-face mesh: the per-pixel gathers of triangle and vertex data cost more than the two
extra stores per depth-test win.) `interpolate` gathers attributes for covered pixels only. Batch
loops run inside numba; kernels are compiled with ``cache=True`` and ``nogil=True``, so batches
can also be rasterised from several threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["Fragments", "rasterize", "interpolate"]


@dataclass
class Fragments:
    """Per-pixel result of `rasterize` for a batch of B images of H x W pixels."""

    face_id: np.ndarray  # (B, H, W) int32, -1 where no triangle covers the pixel
    bary: np.ndarray  # (B, H, W, 3) float32 barycentrics of the covering triangle, 0 for background
    depth: np.ndarray  # (B, H, W) float32 view depth w of the nearest surface, +inf for background

    @property
    def mask(self) -> np.ndarray:
        """(B, H, W) bool, True where a triangle covers the pixel."""
        return self.face_id >= 0


# --------------------------------------------------------------------------------------------
# numba kernels. Flat 1-D arrays throughout: vertex v is vb[3v : 3v + 3], triangle f is
# tris[3f : 3f + 3], pixel p = r * W + c.


@njit(cache=True, nogil=True)
def _renumber_by_first_use(tris: np.ndarray, slot: np.ndarray, tris_out: np.ndarray) -> None:
    """Number vertices in the order triangles first use them: slot[v] (-1 if unused), tris_out = slot[tris].

    Rasterising in face order then reads vertex data almost sequentially, whatever the mesh's
    vertex numbering (measured 15-20% faster on a BFM-layout face, including this pass).
    """
    slot[:] = -1
    n_used = 0
    for j in range(tris.shape[0]):
        v = tris[j]
        s = slot[v]
        if s < 0:
            s = n_used
            slot[v] = s
            n_used += 1
        tris_out[j] = s


@njit(cache=True, nogil=True)
def _prepare_vertices(verts: np.ndarray, slot: np.ndarray, perspective: bool, vb: np.ndarray) -> None:
    """Write used vertex v of (V, 3) `verts` to vb[3 slot[v]:] as (x, y, k): k = 1/w or w, -1 if unusable."""
    for v in range(verts.shape[0]):
        s = slot[v]
        if s < 0:
            continue
        x = verts[v, 0]
        y = verts[v, 1]
        w = verts[v, 2]
        vb[3 * s] = x
        vb[3 * s + 1] = y
        if w > 0.0 and math.isfinite(w) and math.isfinite(x) and math.isfinite(y):
            vb[3 * s + 2] = 1.0 / w if perspective else w
        else:
            vb[3 * s + 2] = -1.0


@njit(cache=True, nogil=True)
def _raster_item(vb: np.ndarray, tris: np.ndarray, height: int, width: int, perspective: bool,
                 cull: bool, zbuf: np.ndarray, fid: np.ndarray, bary: np.ndarray) -> None:
    """Depth-test every triangle into zbuf (H*W,) keys, fid (H*W,) and weights bary[3p+1], bary[3p+2].

    The key is larger for nearer surfaces: 1/w (perspective) or -w (orthographic). The stored
    weights are the un-normalised l_i / w_i (perspective) or l_i (orthographic), for i = 1, 2.
    """
    xlim = width - 0.5
    ylim = height - 0.5
    for f in range(tris.shape[0] // 3):
        i0 = 3 * tris[3 * f]
        i1 = 3 * tris[3 * f + 1]
        i2 = 3 * tris[3 * f + 2]
        k0 = vb[i0 + 2]
        k1 = vb[i1 + 2]
        k2 = vb[i2 + 2]
        if not (k0 > 0.0 and k1 > 0.0 and k2 > 0.0):
            continue
        x0 = vb[i0]
        y0 = vb[i0 + 1]
        x1 = vb[i1]
        y1 = vb[i1 + 1]
        x2 = vb[i2]
        y2 = vb[i2 + 1]
        xmin = min(x0, min(x1, x2))
        xmax = max(x0, max(x1, x2))
        ymin = min(y0, min(y1, y2))
        ymax = max(y0, max(y1, y2))
        # pixel centres c + 0.5 in [xmin, xmax], clamped to the image
        if xmax < 0.5 or xmin > xlim or ymax < 0.5 or ymin > ylim:
            continue
        c0 = 0 if xmin <= 0.5 else int(math.ceil(xmin - 0.5))
        c1 = width - 1 if xmax >= xlim else int(math.floor(xmax - 0.5))
        if c0 > c1:
            continue
        r0 = 0 if ymin <= 0.5 else int(math.ceil(ymin - 0.5))
        r1 = height - 1 if ymax >= ylim else int(math.floor(ymax - 0.5))
        if r0 > r1:
            continue
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        if area == 0.0:
            continue
        if cull and area > 0.0:
            continue
        sgn = 1.0 if area > 0.0 else -1.0
        inv_area = sgn / area  # 1 / |area|
        # Edge i (opposite vertex i) from a to b: e = dx (py - ay) - dy (px - ax), with a the endpoint
        # of lower vertex index and the sign chosen so that the inside is e >= 0.
        if i1 < i2:
            ax0, ay0 = x1, y1
        else:
            ax0, ay0 = x2, y2
        if i2 < i0:
            ax1, ay1 = x2, y2
        else:
            ax1, ay1 = x0, y0
        if i0 < i1:
            ax2, ay2 = x0, y0
        else:
            ax2, ay2 = x1, y1
        dx0 = sgn * (x2 - x1)
        dy0 = sgn * (y2 - y1)
        dx1 = sgn * (x0 - x2)
        dy1 = sgn * (y0 - y2)
        dx2 = sgn * (x1 - x0)
        dy2 = sgn * (y1 - y0)
        if perspective:
            m0 = k0 * inv_area
            m1 = k1 * inv_area
            m2 = k2 * inv_area
            n1 = m1
            n2 = m2
        else:
            m0 = -k0 * inv_area
            m1 = -k1 * inv_area
            m2 = -k2 * inv_area
            n1 = inv_area
            n2 = inv_area
        px0 = c0 + 0.5
        u0 = dy0 * (px0 - ax0)
        u1 = dy1 * (px0 - ax1)
        u2 = dy2 * (px0 - ax2)
        ncol = c1 - c0 + 1
        for r in range(r0, r1 + 1):
            py = r + 0.5
            e0 = dx0 * (py - ay0) - u0
            e1 = dx1 * (py - ay1) - u1
            e2 = dx2 * (py - ay2) - u2
            p = r * width + c0
            for _ in range(ncol):
                if e0 >= 0.0 and e1 >= 0.0 and e2 >= 0.0:
                    key = e0 * m0 + e1 * m1 + e2 * m2
                    if key > zbuf[p]:
                        zbuf[p] = key
                        fid[p] = f
                        bary[3 * p + 1] = e1 * n1
                        bary[3 * p + 2] = e2 * n2
                e0 -= dy0
                e1 -= dy1
                e2 -= dy2
                p += 1


@njit(cache=True, nogil=True)
def _finish_item(perspective: bool, zbuf: np.ndarray, fid: np.ndarray, bary: np.ndarray,
                 depth: np.ndarray) -> None:
    """Normalise the stored weights into barycentrics and write depth; background 0 / +inf."""
    for p in range(fid.shape[0]):
        if fid[p] < 0:
            bary[3 * p] = 0.0
            bary[3 * p + 1] = 0.0
            bary[3 * p + 2] = 0.0
            depth[p] = np.inf
        elif perspective:
            inv = 1.0 / zbuf[p]  # the view depth w
            b1 = bary[3 * p + 1] * inv
            b2 = bary[3 * p + 2] * inv
            bary[3 * p] = 1.0 - b1 - b2
            bary[3 * p + 1] = b1
            bary[3 * p + 2] = b2
            depth[p] = inv
        else:
            bary[3 * p] = 1.0 - bary[3 * p + 1] - bary[3 * p + 2]
            depth[p] = -zbuf[p]


@njit(cache=True, nogil=True)
def _rasterize_batch(verts: np.ndarray, tris: np.ndarray, height: int, width: int,
                     perspective: bool, cull: bool, fid: np.ndarray, bary: np.ndarray,
                     depth: np.ndarray) -> None:
    """Rasterise (B, V, 3) float64 vertices into fid (B, H*W), bary (B, 3*H*W), depth (B, H*W)."""
    slot = np.empty(verts.shape[1], dtype=np.int32)
    tris_local = np.empty_like(tris)
    _renumber_by_first_use(tris, slot, tris_local)
    vb = np.empty(3 * verts.shape[1], dtype=np.float64)
    zbuf = np.empty(height * width, dtype=np.float64)
    for b in range(verts.shape[0]):
        _prepare_vertices(verts[b], slot, perspective, vb)
        fid_b = fid[b]
        for p in range(zbuf.shape[0]):
            zbuf[p] = -np.inf
            fid_b[p] = -1
        _raster_item(vb, tris_local, height, width, perspective, cull, zbuf, fid_b, bary[b])
        _finish_item(perspective, zbuf, fid_b, bary[b], depth[b])


@njit(cache=True, nogil=True)
def _interpolate_batch(fid: np.ndarray, bary: np.ndarray, tris: np.ndarray, attrs: np.ndarray,
                       background: np.ndarray, out: np.ndarray) -> int:
    """out (B, C*H*W) = weighted attrs (A, C*V) of each pixel's face; A is 1 or B.

    Returns the number of pixels whose face id is not a row of `tris` (left as background).
    """
    n_ch = background.shape[0]
    n_faces = tris.shape[0] // 3
    bad = 0
    for b in range(fid.shape[0]):
        a = attrs[0] if attrs.shape[0] == 1 else attrs[b]
        fid_b = fid[b]
        w = bary[b]
        o = out[b]
        if n_ch == 3:
            bg0 = background[0]
            bg1 = background[1]
            bg2 = background[2]
            for p in range(fid_b.shape[0]):
                f = fid_b[p]
                if f < 0 or f >= n_faces:
                    bad += f >= n_faces
                    o[3 * p] = bg0
                    o[3 * p + 1] = bg1
                    o[3 * p + 2] = bg2
                    continue
                j0 = 3 * tris[3 * f]
                j1 = 3 * tris[3 * f + 1]
                j2 = 3 * tris[3 * f + 2]
                w0 = w[3 * p]
                w1 = w[3 * p + 1]
                w2 = w[3 * p + 2]
                o[3 * p] = w0 * a[j0] + w1 * a[j1] + w2 * a[j2]
                o[3 * p + 1] = w0 * a[j0 + 1] + w1 * a[j1 + 1] + w2 * a[j2 + 1]
                o[3 * p + 2] = w0 * a[j0 + 2] + w1 * a[j1 + 2] + w2 * a[j2 + 2]
        else:
            for p in range(fid_b.shape[0]):
                f = fid_b[p]
                q = n_ch * p
                if f < 0 or f >= n_faces:
                    bad += f >= n_faces
                    for ch in range(n_ch):
                        o[q + ch] = background[ch]
                    continue
                j0 = n_ch * tris[3 * f]
                j1 = n_ch * tris[3 * f + 1]
                j2 = n_ch * tris[3 * f + 2]
                w0 = w[3 * p]
                w1 = w[3 * p + 1]
                w2 = w[3 * p + 2]
                for ch in range(n_ch):
                    o[q + ch] = w0 * a[j0 + ch] + w1 * a[j1 + ch] + w2 * a[j2 + ch]
    return bad


# --------------------------------------------------------------------------------------------
# argument checks and the public API


@njit(cache=True, nogil=True)
def _copy_indices(src: np.ndarray, dst: np.ndarray) -> tuple[int, int]:
    """Copy 1-D int64 `src` into int32 `dst`, returning src's (min, max)."""
    lo = src[0]
    hi = src[0]
    for i in range(src.shape[0]):
        v = src[i]
        lo = min(lo, v)
        hi = max(hi, v)
        dst[i] = v
    return lo, hi


@njit(cache=True, nogil=True)
def _index_range(idx: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty 1-D int32 array."""
    lo = idx[0]
    hi = idx[0]
    for i in range(idx.shape[0]):
        lo = min(lo, idx[i])
        hi = max(hi, idx[i])
    return lo, hi


def _writable(arr: np.ndarray) -> np.ndarray:
    """`arr`, copied when read-only (numba would otherwise compile a separate read-only variant)."""
    return arr if arr.flags.writeable else arr.copy()


def _flat_tris(tris, n_vertices: int) -> np.ndarray:
    """`tris` (F, 3) as a flat (3F,) int32 array of indices in [0, n_vertices); ValueError if not."""
    arr = np.asarray(tris)
    if arr.ndim != 2 or arr.shape[1] != 3 or not (arr.dtype.kind in "iu" or arr.size == 0):
        raise ValueError(f"tris must be an (F, 3) integer array of vertex indices, got {arr.dtype} {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    if arr.dtype == np.int32:
        flat = _writable(np.ascontiguousarray(arr).reshape(-1))  # no copy for contiguous int32 input
        lo, hi = _index_range(flat)
    else:
        src = _writable(np.ascontiguousarray(arr, dtype=np.int64).reshape(-1))
        flat = np.empty(src.shape[0], dtype=np.int32)
        lo, hi = _copy_indices(src, flat)
    if lo < 0 or hi >= n_vertices:
        raise ValueError(f"tris holds vertex indices in [{lo}, {hi}], outside [0, {n_vertices}) (V = {n_vertices})")
    return flat


def rasterize(verts, tris, height: int, width: int, *, perspective: bool = True,
              cull_backfaces: bool = False) -> Fragments:
    """Z-buffer (V, 3) or (B, V, 3) vertices (x, y in pixels, y down; view depth w > 0) to H x W."""
    v = np.asarray(verts)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3 or v.shape[2] != 3 or v.dtype.kind not in "fiu":
        raise ValueError(f"verts must be a (V, 3) or (B, V, 3) float array of (x, y, w), got {v.dtype} {v.shape}")
    v = _writable(np.ascontiguousarray(v, dtype=np.float64))  # one compiled specialisation
    t = _flat_tris(tris, v.shape[1])
    if int(height) != height or int(width) != width or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive integers, got height={height}, width={width}")
    height, width = int(height), int(width)
    n_batch, n_pix = v.shape[0], height * width
    fid = np.empty((n_batch, n_pix), dtype=np.int32)
    bary = np.empty((n_batch, 3 * n_pix), dtype=np.float32)
    depth = np.empty((n_batch, n_pix), dtype=np.float32)
    _rasterize_batch(v, t, height, width, bool(perspective), bool(cull_backfaces), fid, bary, depth)
    return Fragments(
        face_id=fid.reshape(n_batch, height, width),
        bary=bary.reshape(n_batch, height, width, 3),
        depth=depth.reshape(n_batch, height, width),
    )


def interpolate(frags: Fragments, tris, attrs, background=0.0) -> np.ndarray:
    """Per-pixel attributes (B, H, W, C) float32 from vertex attrs (V, C) or (B, V, C); background elsewhere."""
    fid = np.asarray(frags.face_id)
    bary = np.asarray(frags.bary)
    if fid.ndim != 3 or bary.shape != fid.shape + (3,):
        raise ValueError(f"frags must hold face_id (B, H, W) and bary (B, H, W, 3), got {fid.shape} and {bary.shape}")
    n_batch, height, width = fid.shape
    a = np.asarray(attrs)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.dtype.kind not in "fiub":
        raise ValueError(f"attrs must be a (V, C) or (B, V, C) numeric array, got {a.dtype} {a.shape}")
    if a.shape[0] not in (1, n_batch):
        raise ValueError(f"attrs has batch size {a.shape[0]}, but frags has B = {n_batch}")
    n_ch = a.shape[2]
    if n_ch == 0:
        raise ValueError("attrs must have at least one channel (C >= 1)")
    t = _flat_tris(tris, a.shape[1])
    bg = np.asarray(background, dtype=np.float32)
    if bg.ndim > 1 or (bg.ndim == 1 and bg.shape[0] not in (1, n_ch)):
        raise ValueError(f"background must be a scalar or a ({n_ch},) sequence, got shape {bg.shape}")
    bg = np.array(np.broadcast_to(bg.reshape(-1), (n_ch,)))  # a writable copy
    out = np.empty((n_batch, n_ch * height * width), dtype=np.float32)
    bad = _interpolate_batch(
        _writable(np.ascontiguousarray(fid, dtype=np.int32).reshape(n_batch, -1)),
        _writable(np.ascontiguousarray(bary, dtype=np.float32).reshape(n_batch, -1)),
        t,
        _writable(np.ascontiguousarray(a, dtype=np.float32).reshape(a.shape[0], -1)),
        bg,
        out,
    )
    if bad:
        raise ValueError(f"frags.face_id refers to faces beyond the {t.shape[0] // 3} rows of tris ({bad} pixels); "
                         "pass the tris that were rasterised")
    return out.reshape(n_batch, height, width, n_ch)
