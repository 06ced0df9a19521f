"""A readable picture of one `ClipRecord`: sampled frames with their PNCC, masks, inpainted torso
and composite; the background plate; the mel spectrogram with the mouth-opening curve."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.sheet import contact_sheet
from preprocessing.process import decode_image
from preprocessing.record import SEG_HEAD, SEG_TORSO, ClipRecord

SEG_COLOURS = {SEG_HEAD: (230, 80, 60), SEG_TORSO: (60, 120, 230)}


def seg_overlay(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Frame darkened where background, tinted red (head) and blue (torso)."""
    out = (frame.astype(np.float32) * 0.35).astype(np.uint8)
    for value, colour in SEG_COLOURS.items():
        m = labels == value
        out[m] = (0.5 * frame[m] + 0.5 * np.array(colour)).astype(np.uint8)
    return out


def mel_panel(mel: np.ndarray, curve: np.ndarray, width: int, height: int) -> np.ndarray:
    """Log-mel (2T, 80) as an image (low frequencies at the bottom) with `curve` (T,) drawn over it."""
    m = np.asarray(mel, np.float32).T[::-1]
    lo, hi = np.percentile(m, 2), np.percentile(m, 99.5)
    img = np.clip((m - lo) / max(hi - lo, 1e-6), 0, 1)
    img = cv2.resize((img * 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_AREA)
    img = cv2.cvtColor(cv2.applyColorMap(img, cv2.COLORMAP_MAGMA), cv2.COLOR_BGR2RGB)
    c = np.nan_to_num(np.asarray(curve, np.float64))
    if c.size >= 2 and c.max() > c.min():
        y = height - 4 - (c - c.min()) / (c.max() - c.min()) * (height - 8)
        x = np.linspace(0, width - 1, c.size)
        cv2.polylines(img, [np.stack([x, y], 1).round().astype(np.int32)], False, (80, 255, 120), 2, cv2.LINE_AA)
    return img


def record_sheet(rec: ClipRecord, samples: int = 4, tile: int = 192) -> Image.Image:
    """Rows = frames spread over the clip; below, the background plate and the audio panel."""
    picks = np.linspace(0, rec.n_frames - 1, min(samples, rec.n_frames)).round().astype(int)

    def t(img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)

    rows, labels = [], []
    for k in picks:
        frame = decode_image(rec.frame_jpeg[k])
        seg = decode_image(rec.seg_png[k])
        rows.append([t(frame), t(decode_image(rec.secc_png[k])), t(decode_image(rec.pncc_png[k])),
                     t(seg_overlay(frame, seg)), t(decode_image(rec.person_png[k])), t(decode_image(rec.torso_jpeg[k])),
                     t(decode_image(rec.composite_jpeg[k]))])
        labels.append(f"frame {k}\nt {rec.timestamps[k]:.2f} s\nyaw {np.degrees(rec.euler[k, 1]):+.0f} deg\n"
                      f"mouth {rec.mouth_opening[k]:.2f}")
    grid = contact_sheet(rows, ["frame", "canonical SECC", "posed PNCC", "head (red) / torso (blue)",
                                "person matte", "inpainted torso", "composite on plate"], labels)
    font = ImageFont.load_default()
    pad, left = 4, 120
    width = grid.width - left - 2 * pad
    plate = t(decode_image(rec.background_jpeg))
    audio_w = width - tile - pad
    if rec.mel is not None and audio_w > 32:
        audio = mel_panel(rec.mel, rec.mouth_opening, audio_w, tile)
    else:
        audio = np.full((tile, max(audio_w, 1), 3), 40, np.uint8)
    strip = Image.new("RGB", (grid.width, tile + 20 + pad), (32, 32, 32))
    draw = ImageDraw.Draw(strip)
    draw.text((left + pad, 2), f"background plate ({rec.background_inpainted_fraction:.0%} inpainted)",
              fill=(230, 230, 230), font=font)
    draw.text((left + 2 * pad + tile, 2), "log-mel 50 Hz, green: mouth opening from landmarks"
              if rec.mel is not None else "no audio", fill=(230, 230, 230), font=font)
    strip.paste(Image.fromarray(plate), (left + pad, 18))
    strip.paste(Image.fromarray(audio), (left + 2 * pad + tile, 18))
    out = Image.new("RGB", (grid.width, grid.height + strip.height), (32, 32, 32))
    out.paste(grid, (0, 0))
    out.paste(strip, (0, grid.height))
    return out
