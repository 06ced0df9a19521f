"""The compiled head/torso region pass and the vectorised torso inpainting against their plain references.

`body_regions` (one numba pass per pixel) against `_body_regions_numpy` (whole-image arrays, the original
formulation) over random head poses and two image scales: the same masks but for pixels whose geometry
lands on a boundary to within float rounding. `inpaint_torso` against a column-by-column loop written from
its docstring: identical images."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from preprocessing.face3d import Face3D, join_coeffs
from preprocessing.segmentation.parts import _body_regions_numpy, body_regions, head_frame, inpaint_torso
from preprocessing.synthetic_bfm import synthetic_face_model


def test_compiled_regions_equal_the_array_formulation():
    f3 = Face3D(synthetic_face_model(0, "small"))
    rng = np.random.default_rng(0)
    differ = total = 0
    for _ in range(25):
        c = join_coeffs(id=torch.randn(1, 80) * 0.5, exp=torch.randn(1, 64) * 0.5,
                        euler=torch.tensor([[rng.normal(0, .2), rng.normal(0, .4), rng.normal(0, .15)]]).float(),
                        trans=torch.tensor([[rng.normal(0, .3), rng.normal(0, .3), 0.0]]).float())
        hf = head_frame(f3.landmarks(c, 512)[0].numpy().astype(np.float64))
        for size, scale in ((512, 1.0), (190, 0.37)):
            fast, ref = body_regions(hf, size, size, scale=scale), _body_regions_numpy(hf, size, size, scale=scale)
            for x, y in zip(fast, ref):
                assert x.dtype == bool and x.shape == (size, size)
                differ += int((x != y).sum())
                total += x.size
            assert fast[0].any() and fast[1].any()  # both regions in view (the neck strip may be cut off)
    assert differ <= 1e-5 * total, (differ, total)


def _inpaint_loop(frame, head, torso, max_extend=0.15, probe=6, tolerance=3):
    h, w = frame.shape[:2]
    torso = torso & ~head
    out = np.zeros_like(frame)
    out[torso] = frame[torso]
    has = torso.any(0)
    if not has.any() or not head.any():
        return out
    top = np.where(has, torso.argmax(0), h)
    rows = np.arange(h)[:, None]
    near = head & (rows < top[None]) & (rows >= top[None] - tolerance)
    cols = np.flatnonzero(has & near.any(0))
    if cols.size == 0:
        return out
    ext = int(round(max_extend * h))
    fill, colour = np.zeros((h, w), bool), np.zeros((h, w, 3), np.float32)
    for x in cols:
        t = top[x]
        ys = np.flatnonzero(torso[t:t + probe, x]) + t
        y0 = max(t - ext, 0)
        fill[y0:t, x] = head[y0:t, x]
        colour[y0:t, x] = np.median(frame[ys, x].astype(np.float32), axis=0)
    if not fill.any():
        return out
    weight = cv2.blur(fill.astype(np.float32), (7, 1))
    smooth = cv2.blur(colour * fill[..., None], (7, 1)) / np.maximum(weight, 1e-6)[..., None]
    out[fill] = np.clip(smooth[fill] + 0.5, 0, 255).astype(np.uint8)
    return out


def test_vectorised_inpainting_equals_the_column_loop():
    rng = np.random.default_rng(1)
    filled = 0
    for trial in range(30):
        h = w = 512 if trial < 3 else int(rng.integers(20, 200))
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        cx, cy, r = w / 2 + rng.normal(0, w / 10), h * 0.4, h * 0.25
        head = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
        torso = (yy > cy + r * 0.8 + rng.normal(0, 3, (1, w))) & (np.abs(xx - cx) < w * 0.4)
        torso |= rng.random((h, w)) < 0.05  # speckle: columns with 1..probe torso pixels under their top
        if trial % 7 == 3:  # the torso only in the last rows, the head everywhere above
            torso[:] = False
            torso[h - 3:] = True
            head[:h - 2] = True
        got, want = inpaint_torso(frame, head, torso), _inpaint_loop(frame, head, torso)
        np.testing.assert_array_equal(got, want)
        filled += int((got.any(-1) & head).sum())
    assert filled > 0  # the cases did exercise the fill behind the head
