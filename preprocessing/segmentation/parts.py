"""Head / torso split of a person matte, and the reference's "inpainted torso" image.

Geometry comes from the iBUG-68 landmarks (image pixels, x right, y down): the eye line gives the
head's roll, the jaw (points 0–16) and chin (8) give the neck cut. With MediaPipe classes the
reference grouping is used (Real3D-Portrait / GeneFace++): head = hair + face skin (+ "others"
above the neck cut), torso = body skin + clothes (+ "others" below it).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .base import BODY_SKIN, CLOTHES, FACE_SKIN, HAIR, OTHERS


@dataclass(frozen=True)
class HeadFrame:
    """A head-aligned frame: origin between the eyes, `down` from the eyes towards the chin."""

    origin: np.ndarray  # (2,) eye midpoint, px
    right: np.ndarray  # (2,) unit vector along the eye line (image right for an upright face)
    down: np.ndarray  # (2,) unit vector perpendicular to it, towards the chin
    face_w: float  # jaw width |lm16 − lm0|, px
    chin: float  # distance eyes → chin along `down`, px
    landmarks: np.ndarray  # (68, 2) float64

    @property
    def roll(self) -> float:
        """In-plane head rotation, radians (positive = clockwise in the image)."""
        return float(np.arctan2(self.right[1], self.right[0]))

    def coords(self, h: int, w: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Head-frame coordinates (a along `right`, b along `down`) in face widths, of every pixel
        centre of an (h, w) image whose pixels are `scale` × the landmarks' pixels."""
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        x = (xs + 0.5) / scale - self.origin[0]
        y = (ys + 0.5) / scale - self.origin[1]
        a = (x * self.right[0] + y * self.right[1]) / self.face_w
        b = (x * self.down[0] + y * self.down[1]) / self.face_w
        return a, b


def head_frame(landmarks: np.ndarray) -> HeadFrame | None:
    """The head frame of one face's landmarks (68, 2), or None for missing (NaN) or degenerate ones."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must have shape (68, 2), got {lm.shape}")
    if not np.isfinite(lm).all():
        return None
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)  # image left, image right
    v = eye_l - eye_r
    iod = float(np.hypot(*v))
    face_w = float(np.hypot(*(lm[16] - lm[0])))
    if iod < 1e-3 or face_w < 1e-3:
        return None
    right = v / iod
    down = np.array([-right[1], right[0]])
    origin = (eye_r + eye_l) / 2
    chin = float(np.dot(lm[8] - origin, down))
    if chin <= 0:
        chin = 0.8 * face_w
    return HeadFrame(origin=origin, right=right, down=down, face_w=max(face_w, 1.5 * iod), chin=chin, landmarks=lm)


def jaw_depth(hf: HeadFrame, a: np.ndarray) -> np.ndarray:
    """Depth `b` (face widths) of the jaw contour at lateral positions `a` (face widths); +inf
    outside the jaw's lateral extent."""
    jaw = hf.landmarks[0:17] - hf.origin
    ja = jaw @ hf.right / hf.face_w
    jb = jaw @ hf.down / hf.face_w
    order = np.argsort(ja)
    ja, jb = ja[order], jb[order]
    out = np.interp(a, ja, jb)
    return np.where((a < ja[0]) | (a > ja[-1]), np.inf, out)


def head_region(hf: HeadFrame, h: int, w: int, margin: float = 0.03, reach: tuple[float, float] = (1.45, 1.6),
                scale: float = 1.0) -> np.ndarray:
    """Where the head may be: above the neck cut and within a generous ellipse around the face.

    The neck cut is the jaw contour pushed `margin` face widths down between the jaw's ends, and
    the line through the chin (perpendicular to the head's up axis) beside it; `reach` are the
    ellipse's semi-axes (across, along) in face widths, centred a little above the eyes.
    """
    a, b = hf.coords(h, w, scale)
    chin_b = hf.chin / hf.face_w
    jaw_b = jaw_depth(hf, a) + margin
    above = (b <= np.minimum(jaw_b, chin_b + margin))
    ellipse = (a / reach[0]) ** 2 + ((b + 0.1) / reach[1]) ** 2 <= 1.0
    return above & ellipse


def _check_mask(name: str, m, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(m)
    if m.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {m.shape}")
    return m


def split_parts(person_alpha: np.ndarray, landmarks: np.ndarray, face_mask: np.ndarray | None = None,
                classes: np.ndarray | None = None, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Head and torso bool masks (H, W) of one frame's person matte (alpha ≥ `threshold`).

    head = face + hair above the neck cut (see `head_region`), torso = the rest of the person; with
    MediaPipe `classes` (H, W) the reference grouping. Without usable landmarks, head is the face
    mask (or hair + face skin with classes) and torso the rest of the person.
    """
    alpha = np.asarray(person_alpha, dtype=np.float32)
    if alpha.ndim != 2:
        raise ValueError(f"person_alpha must be a 2-D (H, W) matte, got shape {alpha.shape}")
    h, w = alpha.shape
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must have shape (68, 2), got {lm.shape}")
    person = alpha >= threshold
    hf = head_frame(lm)
    region = head_region(hf, h, w) if hf is not None else None
    if classes is not None:
        cls = _check_mask("classes", classes, (h, w)).astype(np.uint8)
        core = (cls == HAIR) | (cls == FACE_SKIN)
        others = cls == OTHERS
        head = core | (others & region) if region is not None else core | others
        torso = (cls == BODY_SKIN) | (cls == CLOTHES) | (others & ~head)
        return head, torso & ~head
    fm = None if face_mask is None else _check_mask("face_mask", face_mask, (h, w)).astype(bool)
    if region is None:
        head = person & fm if fm is not None else np.zeros((h, w), bool)
        return head, person & ~head
    head = person & region
    if fm is not None:
        head |= person & fm
    # the landmark hull is face even where the matte is unsure
    hull = cv2.convexHull(np.round(lm).astype(np.int32))
    face = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(face, hull, 1)
    head |= (face > 0) & (alpha > 0.25)
    return head, person & ~head


def inpaint_torso(frame: np.ndarray, head: np.ndarray, torso: np.ndarray, max_extend: float = 0.15,
                  probe: int = 6, tolerance: int = 3) -> np.ndarray:
    """The torso image with the part the head hides filled in: RGB uint8 (H, W, 3), background 0.

    In every column where the head sits on the torso (a head pixel within `tolerance` px above the
    torso's top), the head pixels above the torso top, up to `max_extend` × H, get the median colour
    of the top `probe` torso pixels of that column (the neck/shoulders continued upward behind the
    head); a light horizontal blur of the filled band evens out column noise.
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be RGB uint8 of shape (H, W, 3), got {frame.dtype} {frame.shape}")
    h, w = frame.shape[:2]
    head = _check_mask("head", head, (h, w)).astype(bool)
    torso = _check_mask("torso", torso, (h, w)).astype(bool) & ~head
    out = np.zeros_like(frame)
    out[torso] = frame[torso]
    has = torso.any(0)
    if not has.any() or not head.any():
        return out
    top = np.where(has, torso.argmax(0), h)  # first torso row per column
    rows = np.arange(h)[:, None]
    # head pixels within `tolerance` px above the torso top → the head occludes the torso there
    near = head & (rows < top[None]) & (rows >= top[None] - tolerance)
    cols = np.flatnonzero(has & near.any(0))
    if cols.size == 0:
        return out
    ext = int(round(max_extend * h))
    fill = np.zeros((h, w), bool)
    colour = np.zeros((h, w, 3), np.float32)
    for x in cols:
        t = top[x]
        ys = np.flatnonzero(torso[t:t + probe, x]) + t
        c = np.median(frame[ys, x].astype(np.float32), axis=0)
        y0 = max(t - ext, 0)
        sel = head[y0:t, x]
        fill[y0:t, x] = sel
        colour[y0:t, x] = c
    if not fill.any():
        return out
    # even out column-to-column noise within the filled band only
    weight = cv2.blur(fill.astype(np.float32), (7, 1))
    smooth = cv2.blur(colour * fill[..., None], (7, 1)) / np.maximum(weight, 1e-6)[..., None]
    out[fill] = np.clip(smooth[fill] + 0.5, 0, 255).astype(np.uint8)
    return out
