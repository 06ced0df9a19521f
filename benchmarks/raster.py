"""Benchmark: 512² SECC rendering of a BFM-sized face mesh on one CPU core.

Measures `preprocessing.raster.rasterize` + `interpolate` (numba) against a straightforward
vectorised-numpy z-buffer written below, on the same mesh and poses, checks that they agree, and
prints ms/frame, the speed-up and whether the targets (<= 5 ms/frame, >= 20x) are met.

    python benchmarks/raster.py [--frames N] [--repeats R] [--numpy-frames M] [--mesh synthetic|grid]

Each frame is timed in R passes and its fastest pass counts ("best", the usual way to time code
on a machine other processes share); the median over all calls is printed beside it. Exit status
0 when both targets are met on the best times and the two renderers agree.

`--mesh synthetic` (default) renders `synthetic_face_model(seed=0, size="bfm")` (35,709 vertices,
70,789 faces); `--mesh grid` renders a stand-in height-field grid with the same counts.
Camera (ARCHITECTURE.md): R = Rz·Ry·Rx, camera on +z at distance 10, focal 1015 and centre 112
for 224 px scaled to the image size, v up (image row = H - v).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_VERTICES, N_FACES = 35_709, 70_789
TARGET_MS, TARGET_SPEEDUP = 5.0, 20.0


# --------------------------------------------------------------------------------------------
# meshes and poses


def grid_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A face-sized height-field (decimetres) with exactly 35,709 vertices and 70,789 faces.

    A 189 x 189 grid keeps its first 35,709 vertices (the last row is partial); the 125 faces
    still missing to reach 70,789 are copies, with reversed winding, of evenly spaced faces.
    Returns (verts (V, 3) float32, tri (F, 3) int64, colours (V, 3) float32 in [0, 1]).
    """
    n = 189
    xs = np.linspace(-0.8, 0.8, n)
    ys = np.linspace(-1.0, 1.0, n)
    gx, gy = np.meshgrid(xs, ys)
    gz = 0.9 * np.sqrt(np.clip(1.0 - (gx / 0.95) ** 2 - (gy / 1.2) ** 2, 0.0, None))
    gz += 0.25 * np.exp(-((gx / 0.12) ** 2 + ((gy + 0.05) / 0.3) ** 2))  # a nose
    verts = np.stack([gx, gy, gz], -1).reshape(-1, 3)[:N_VERTICES].astype(np.float32)
    r, c = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (r * n + c).ravel()
    b, d, e = a + 1, a + n, a + n + 1
    tri = np.concatenate([np.stack([a, b, e], 1), np.stack([a, e, d], 1)], 0)
    tri = tri[(tri < N_VERTICES).all(1)]
    extra = tri[np.linspace(0, len(tri) - 1, N_FACES - len(tri)).astype(int)][:, ::-1]
    tri = np.concatenate([tri, extra], 0).astype(np.int64)
    lo, hi = verts.min(0), verts.max(0)
    colours = ((verts - lo) / (hi - lo)).astype(np.float32)
    return verts, tri, colours


def synthetic_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The synthetic BFM-layout face model's mean shape, triangles and NCC colours."""
    from preprocessing.synthetic_bfm import synthetic_face_model

    model = synthetic_face_model(seed=0, size="bfm")
    return model.mean_shape.astype(np.float32), np.asarray(model.tri, np.int64), model.ncc()


def euler_to_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R = Rz(roll) · Ry(yaw) · Rx(pitch), angles in radians."""
    cx, sx, cy, sy, cz, sz = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def project(shape: np.ndarray, angles: tuple[float, float, float], size: int) -> np.ndarray:
    """(V, 3) image-space (x, y down, view depth) of `shape` rotated by `angles`, for a size² image."""
    rotated = shape.astype(np.float64) @ euler_to_matrix(*angles).T
    focal, centre = 1015.0 * size / 224.0, 112.0 * size / 224.0
    z_cam = 10.0 - rotated[:, 2]
    u = focal * rotated[:, 0] / z_cam + centre
    v = focal * rotated[:, 1] / z_cam + centre
    return np.stack([u, size - v, z_cam], 1).astype(np.float32)


def poses(n: int) -> list[tuple[float, float, float]]:
    """n (pitch, yaw, roll) poses: yaw sweeps [-0.5, 0.5] rad, small pitch and roll."""
    t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    return [(0.15 * np.sin(6.0 * s), -0.5 + 1.0 * s, 0.1 * np.cos(4.0 * s)) for s in t]


# --------------------------------------------------------------------------------------------
# vectorised-numpy baseline


def numpy_render(verts: np.ndarray, tri: np.ndarray, colours: np.ndarray, size: int,
                 background: float = -1.0, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Perspective z-buffer of one (V, 3) frame in numpy: (face_id (H, W), image (H, W, C)).

    Per chunk of triangles, every pixel centre of each triangle's clamped bounding box becomes a
    candidate; inside ones (all barycentrics >= 0) keep their depth; a lexsort by (pixel, depth,
    face) picks the nearest per pixel; colours are interpolated with perspective-correct weights.
    """
    v = verts.astype(np.float64)
    p = v[tri]  # (F, 3, 3)
    x, y, w = p[..., 0], p[..., 1], p[..., 2]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    c0 = np.clip(np.ceil(x.min(1) - 0.5), 0, size).astype(np.int64)
    c1 = np.clip(np.floor(x.max(1) - 0.5), -1, size - 1).astype(np.int64)
    r0 = np.clip(np.ceil(y.min(1) - 0.5), 0, size).astype(np.int64)
    r1 = np.clip(np.floor(y.max(1) - 0.5), -1, size - 1).astype(np.int64)
    ok = (area != 0) & (w > 0).all(1) & (c1 >= c0) & (r1 >= r0)
    pix_all, depth_all, face_all = [], [], []
    for start in range(0, len(tri), chunk):
        f = np.flatnonzero(ok[start:start + chunk]) + start
        bw, bh = c1[f] - c0[f] + 1, r1[f] - r0[f] + 1
        count = bw * bh
        face = np.repeat(f, count)
        k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        col = c0[face] + k % bw.repeat(count)
        row = r0[face] + k // bw.repeat(count)
        px, py = col + 0.5, row + 0.5
        xf, yf = x[face], y[face]
        e0 = (xf[:, 2] - xf[:, 1]) * (py - yf[:, 1]) - (yf[:, 2] - yf[:, 1]) * (px - xf[:, 1])
        e1 = (xf[:, 0] - xf[:, 2]) * (py - yf[:, 2]) - (yf[:, 0] - yf[:, 2]) * (px - xf[:, 2])
        e2 = (xf[:, 1] - xf[:, 0]) * (py - yf[:, 0]) - (yf[:, 1] - yf[:, 0]) * (px - xf[:, 0])
        s = np.sign(area[face])
        inside = (e0 * s >= 0) & (e1 * s >= 0) & (e2 * s >= 0)
        e = np.stack([e0, e1, e2], 1)[inside] / area[face][inside, None]
        inv_depth = (e / w[face[inside]]).sum(1)
        pix_all.append(row[inside] * size + col[inside])
        depth_all.append(1.0 / inv_depth)
        face_all.append(face[inside])
    pix, depth, face = np.concatenate(pix_all), np.concatenate(depth_all), np.concatenate(face_all)
    order = np.lexsort((face, depth, pix))
    pix, face = pix[order], face[order]
    first = np.ones(len(pix), bool)
    first[1:] = pix[1:] != pix[:-1]
    pix, face = pix[first], face[first]
    face_id = np.full(size * size, -1, np.int64)
    face_id[pix] = face
    # perspective-correct barycentrics of the winners, then colours
    px, py = pix % size + 0.5, pix // size + 0.5
    xf, yf, wf = x[face], y[face], w[face]
    e0 = (xf[:, 2] - xf[:, 1]) * (py - yf[:, 1]) - (yf[:, 2] - yf[:, 1]) * (px - xf[:, 1])
    e1 = (xf[:, 0] - xf[:, 2]) * (py - yf[:, 2]) - (yf[:, 0] - yf[:, 2]) * (px - xf[:, 2])
    e2 = (xf[:, 1] - xf[:, 0]) * (py - yf[:, 0]) - (yf[:, 1] - yf[:, 0]) * (px - xf[:, 0])
    q = np.stack([e0, e1, e2], 1) / wf
    q /= q.sum(1, keepdims=True)
    image = np.full((size * size, colours.shape[1]), background, np.float32)
    image[pix] = np.einsum("pk,pkc->pc", q, colours[tri[face]])
    return face_id.reshape(size, size), image.reshape(size, size, -1)


# --------------------------------------------------------------------------------------------


def _timed(fn, *args) -> float:
    """Seconds one call of fn(*args) takes."""
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 0 when both targets are met, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50, help="poses rendered (numba, one call per frame)")
    parser.add_argument("--repeats", type=int, default=7, help="passes over all frames; per frame the fastest counts")
    parser.add_argument("--numpy-frames", type=int, default=5, help="poses rendered by the numpy baseline")
    parser.add_argument("--numpy-repeats", type=int, default=3, help="passes of the numpy baseline")
    parser.add_argument("--batch", type=int, default=8, help="frames per call for the batched timing")
    parser.add_argument("--mesh", choices=("synthetic", "grid"), default="synthetic")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    args = parser.parse_args(argv)

    import numba

    numba.set_num_threads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    from preprocessing.raster import interpolate, rasterize

    size = args.size
    if args.mesh == "synthetic":
        shape, tri, ncc = synthetic_mesh()
        mesh_name = 'synthetic_face_model(seed=0, size="bfm") mean shape, all faces (eyes included)'
    else:
        shape, tri, ncc = grid_mesh()
        mesh_name = "stand-in height-field grid (--mesh grid)"
    secc_attrs = (2.0 * ncc - 1.0).astype(np.float32)  # SECC colours; background -1
    frames = np.stack([project(shape, a, size) for a in poses(args.frames)])
    n_np = max(1, min(args.numpy_frames, args.frames))
    np_idx = np.linspace(0, args.frames - 1, n_np).round().astype(int)

    print(f"mesh: {mesh_name}: {shape.shape[0]:,} vertices, {tri.shape[0]:,} faces")
    print(f"image: {size}x{size}, SECC (3 channels), perspective, {args.frames} poses (yaw -0.5..0.5 rad); "
          f"numba threads = {numba.get_num_threads()}")

    def render(verts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frags = rasterize(verts, tri, size, size)
        return frags.face_id, interpolate(frags, tri, secc_attrs, background=-1.0)

    t0 = time.perf_counter()
    render(frames[0])  # compile (or load the cache) outside the timing
    print(f"warm-up (compile or cache load): {time.perf_counter() - t0:.2f} s, not timed")
    render(frames[0])

    # numba: one call per frame (rasterize + interpolate), `repeats` passes
    t_nb = np.array([[_timed(render, v) for v in frames] for _ in range(args.repeats)])
    best_nb = 1e3 * float(t_nb.min(0).mean())
    median_nb = 1e3 * float(np.median(t_nb))
    # numba: `batch` frames per call
    n_b = max(1, min(args.batch, len(frames)))
    t_batch = [min(_timed(render, frames[i:i + n_b]) for _ in range(3)) for i in range(0, len(frames) - n_b + 1, n_b)]
    ms_batch = 1e3 * float(np.mean(t_batch)) / n_b
    fid_batch, img_batch = render(frames)

    # numpy baseline on a subset of the same poses
    t_np = np.array([[_timed(numpy_render, frames[i], tri, secc_attrs, size) for i in np_idx]
                     for _ in range(args.numpy_repeats)])
    best_np = 1e3 * float(t_np.min(0).mean())
    median_np = 1e3 * float(np.median(t_np))
    agree, mask_same, max_diff = [], [], []
    for i in np_idx:
        fid_np, img_np = numpy_render(frames[i], tri, secc_attrs, size)
        both = (fid_np >= 0) & (fid_batch[i] >= 0)
        agree.append(float((fid_np == fid_batch[i]).mean()))
        mask_same.append(bool(((fid_np >= 0) == (fid_batch[i] >= 0)).all()))
        max_diff.append(float(np.abs(img_np - img_batch[i])[both].max(initial=0.0)))
    speedup = best_np / best_nb
    coverage = float((fid_batch >= 0).mean())

    print(f"face covers {100 * coverage:.1f}% of the pixels on average")
    print("ms/frame, rasterize + interpolate (best = fastest of the passes per frame, averaged over frames; "
          "median = over all calls)")
    print(f"numba : best {best_nb:7.2f}   median {median_nb:7.2f}   "
          f"({len(frames)} frames x {args.repeats} passes, one frame per call; batched B={n_b}: "
          f"best {ms_batch:.2f})")
    print(f"numpy : best {best_np:7.2f}   median {median_np:7.2f}   ({n_np} frames x {args.numpy_repeats} passes)")
    print(f"speed-up: {speedup:.1f}x (best), {median_np / median_nb:.1f}x (median)")
    print(f"agreement: face id equal on >= {100 * min(agree):.3f}% of pixels, same mask on all frames: "
          f"{all(mask_same)}, max |SECC difference| where both cover: {max(max_diff):.2e}")
    agreed = min(agree) > 0.99 and all(mask_same)
    fast, ratio = best_nb <= TARGET_MS, speedup >= TARGET_SPEEDUP
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} CPUs, 1-min load average {load:.2f} at the end (other processes slow the median)")
    print(f"target <= {TARGET_MS:g} ms/frame (best): {'MET' if fast else 'NOT MET'}; "
          f"target >= {TARGET_SPEEDUP:g}x: {'MET' if ratio else 'NOT MET'}; "
          f"agreement > 99% and same mask: {'OK' if agreed else 'FAILED'}")
    return 0 if (fast and ratio and agreed) else 1


if __name__ == "__main__":
    sys.exit(main())
