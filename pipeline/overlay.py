"""Overlay contact sheets: tracked landmarks and the fitted 3DMM over a clip's aligned frames."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image

from pipeline.sheet import contact_sheet
from preprocessing.face3d import Face3D
from preprocessing.geometry import ClipGeometry
from preprocessing.render import render_face, to_uint8


def geometry_sheet(geo: ClipGeometry, face3d: Face3D, samples: int = 6, tile: int = 256) -> Image.Image:
    """Columns = frames evenly spread over the valid ones; rows = crop with tracked (green) and fitted
    (red) landmarks, fitted mesh blended over the crop, and the fitted shaded render alone."""
    valid = np.flatnonzero(geo.track.valid)
    if valid.size == 0:
        raise ValueError("no valid frames to show")
    picks = valid[np.linspace(0, valid.size - 1, min(samples, valid.size)).round().astype(int)]
    crops: dict[int, np.ndarray] = {}
    for start, frames in geo.aligned_chunks(32):
        for k in picks[(picks >= start) & (picks < start + len(frames))]:
            crops[int(k)] = frames[k - start]
    coeffs = torch.as_tensor(geo.fit.coeffs()[picks], dtype=torch.float32)
    render = render_face(face3d, coeffs, geo.crop_size, remove_eyes=False)
    shaded = to_uint8(render.shaded)
    rows: list[list[np.ndarray]] = [[], [], []]
    scale = tile / geo.crop_size
    for j, k in enumerate(picks):
        crop = crops[int(k)]
        marks = crop.copy()
        for pts, colour in ((geo.track.crop_landmarks[k], (0, 255, 0)), (geo.fit.landmarks_fit[k], (255, 0, 0))):
            for x, y in pts:
                if np.isfinite(x):
                    cv2.circle(marks, (int(x), int(y)), 3, colour, -1)
        blend = crop.copy()
        m = render.mask[j]
        blend[m] = (0.45 * crop[m] + 0.55 * shaded[j][m]).astype(np.uint8)
        for row, img in zip(rows, (marks, blend, shaded[j])):
            row.append(cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    labels = [f"frame {k}  rmse {geo.fit.rmse_px[k]:.1f}px" for k in picks]
    sheet = contact_sheet([list(col) for col in zip(*rows)], ["landmarks (green tracked, red fit)",
                                                             "fitted mesh over frame", "fitted render"],
                          [f"{label}" for label in labels])
    return sheet
