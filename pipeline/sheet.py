"""Contact sheets: a labelled grid of images saved as one PNG (Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype != np.uint8:
        raise TypeError(f"contact sheet tiles must be uint8 images, got {img.dtype}")
    return img


def contact_sheet(rows: list[list[np.ndarray]], col_labels: list[str] | None = None,
                  row_labels: list[str] | None = None, pad: int = 4) -> Image.Image:
    """Grid of uint8 tiles (H, W) or (H, W, 3), all the same size, with optional labels."""
    if not rows or not rows[0]:
        raise ValueError("contact sheet needs at least one tile")
    tiles = [[_as_rgb(t) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    font = ImageFont.load_default()
    top = 16 if col_labels else 0
    left = 120 if row_labels else 0
    ncols = max(len(r) for r in tiles)
    sheet = Image.new("RGB", (left + ncols * (w + pad) + pad, top + len(tiles) * (h + pad) + pad), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(col_labels or []):
        draw.text((left + pad + j * (w + pad), 2), label, fill=(230, 230, 230), font=font)
    for i, row in enumerate(tiles):
        y = top + pad + i * (h + pad)
        if row_labels:
            for k, line in enumerate(row_labels[i].split("\n")):
                draw.text((4, y + 4 + 12 * k), line, fill=(230, 230, 230), font=font)
        for j, tile in enumerate(row):
            if tile.shape[:2] != (h, w):
                raise ValueError(f"tile ({i}, {j}) is {tile.shape[:2]}, expected {(h, w)}")
            sheet.paste(Image.fromarray(tile), (left + pad + j * (w + pad), y))
    return sheet


def save_png(image: Image.Image, path: Path) -> Path:
    """Write atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path
