"""Head / torso split of a person matte, bounded by the face geometry, and the "inpainted torso".

Geometry comes from the iBUG-68 landmarks (image pixels, x right, y down): the eye line gives the
head's roll, the jaw (points 0–16) and chin (8) give the neck cut, and the face size `s` (the jaw
width, or the eye–chin distance / 0.8 when the head is turned and the jaw looks narrow) scales
everything else (`BodyBounds`):

- the head lies above the neck cut, within a hair allowance of `hair_top` × s above the brows and
  `hair_side` × s beside the jaw ends (the temples), and is the part of the matte connected to the
  face (landmark hull / fitted face silhouette);
- the torso lies below the neck cut: under the head (neck, long hair), and beside it from
  `shoulder_rise` × s above the chin line within a band widening from the neck (`neck_half` × s each
  side) to the shoulders (`shoulder_half` × s) and arms; only parts of the matte connected to the
  neck or the head count.

With MediaPipe classes the reference grouping is used (Real3D-Portrait / GeneFace++): head = hair +
face skin (+ "others" above the neck cut), torso = body skin + clothes (+ "others" below it).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit

from .base import BODY_SKIN, CLOTHES, FACE_SKIN, HAIR, OTHERS


@dataclass(frozen=True)
class BodyBounds:
    """Where a head and a torso can be, in face sizes `s` (see the module doc)."""

    hair_top: float = 1.0  # head reaches this far above the brows
    hair_side: float = 0.4  # ... and this far beside the jaw ends (temples, ears, hair)
    neck_half: float = 0.5  # torso half-width at its top (the neck)
    shoulder_rise: float = 0.3  # the torso starts at most this far above the chin line (shrugs, a lowered chin)
    shoulder_half: float = 1.8  # torso half-width at shoulder height
    shoulder_depth: float = 0.3  # ... reached this far below the torso's top
    arm_spread: float = 0.35  # below that, the torso may widen this much per s further down

    def __post_init__(self) -> None:
        for name in ("hair_top", "hair_side", "neck_half", "shoulder_half", "shoulder_depth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BodyBounds.{name} must be > 0 (face sizes), got {getattr(self, name)}")
        for name in ("shoulder_rise", "arm_spread"):
            if getattr(self, name) < 0:
                raise ValueError(f"BodyBounds.{name} must be >= 0 (face sizes), got {getattr(self, name)}")
        if self.shoulder_half < self.neck_half:
            raise ValueError(f"BodyBounds.shoulder_half ({self.shoulder_half}) must be >= neck_half ({self.neck_half})")


DEFAULT_BOUNDS = BodyBounds()


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
    def size(self) -> float:
        """Face size s, px: the jaw width, or eye–chin / 0.8 when that is larger (a turned head)."""
        return float(max(self.face_w, self.chin / 0.8))

    @property
    def roll(self) -> float:
        """In-plane head rotation, radians (positive = clockwise in the image)."""
        return float(np.arctan2(self.right[1], self.right[0]))

    def coords(self, h: int, w: int, scale: float = 1.0, unit: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Head-frame coordinates (a along `right`, b along `down`) in `unit` px (default: face
        widths), of every pixel centre of an (h, w) image whose pixels are `scale` × the landmarks'."""
        unit = self.face_w if unit is None else float(unit)
        x = ((np.arange(w, dtype=np.float32) + 0.5) / scale - self.origin[0])[None, :]
        y = ((np.arange(h, dtype=np.float32) + 0.5) / scale - self.origin[1])[:, None]
        a = (x * np.float32(self.right[0] / unit) + y * np.float32(self.right[1] / unit)).astype(np.float32)
        b = (x * np.float32(self.down[0] / unit) + y * np.float32(self.down[1] / unit)).astype(np.float32)
        return a, b

    def points(self, pts: np.ndarray, unit: float | None = None) -> np.ndarray:
        """Head-frame coordinates (n, 2) = (a, b) of image points (n, 2), in `unit` px (default face widths)."""
        unit = self.face_w if unit is None else float(unit)
        d = np.asarray(pts, dtype=np.float64) - self.origin
        return np.stack([d @ self.right, d @ self.down], -1) / unit


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


def jaw_depth(hf: HeadFrame, a: np.ndarray, unit: float | None = None) -> np.ndarray:
    """Depth `b` of the jaw contour at lateral positions `a` (both in `unit` px, default face
    widths); +inf outside the jaw's lateral extent."""
    ja, jb = hf.points(hf.landmarks[0:17], unit).T
    order = np.argsort(ja)
    ja, jb = ja[order], jb[order]
    out = np.interp(a, ja, jb)
    return np.where((a < ja[0]) | (a > ja[-1]), np.inf, out)


def turn(hf: HeadFrame) -> float:
    """Where the nose tip sits between the jaw ends, 0 (at the image-left end) … 1 (image right);
    0.5 for a frontal face, towards 0 when the head turns to the image's left (yaw from landmarks)."""
    ja = hf.points(hf.landmarks[0:17])[:, 0]
    nose = float(hf.points(hf.landmarks[30:31])[0, 0])
    lo, hi = float(ja.min()), float(ja.max())
    return float(np.clip((nose - lo) / max(hi - lo, 1e-6), 0.0, 1.0))


def _lateral(hf: HeadFrame, u: float, bounds: BodyBounds) -> tuple[float, float, float]:
    """The hair allowance's half-widths (left, right) and the brow line's depth, in `u` px. The
    side the face turns towards (nose near that jaw end) gets less room beyond the jaw contour,
    the back of the head more (×0.3 … ×1.5 of `hair_side`)."""
    jaw = hf.points(hf.landmarks[0:17], u)
    r = turn(hf)
    left = max(-jaw[:, 0].min(), 0.2) + bounds.hair_side * float(np.clip(2 * r, 0.3, 1.5))
    right = max(jaw[:, 0].max(), 0.2) + bounds.hair_side * float(np.clip(2 * (1 - r), 0.3, 1.5))
    brow = float(hf.points(hf.landmarks[17:27], u)[:, 1].min())
    return left, right, brow


def body_regions(hf: HeadFrame, h: int, w: int, margin: float = 0.03, scale: float = 1.0,
                 bounds: BodyBounds = DEFAULT_BOUNDS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head, torso, neck) regions (h, w) bool of an image whose pixels are `scale` × the
    landmarks': see `head_region`, `torso_region`; neck is a strip just under the chin.

    Computed per pixel in one compiled pass (`_regions_kernel`); `_body_regions_numpy` is the same
    geometry written with whole-image arrays (the reference the tests compare it with)."""
    u = hf.size
    left, right, brow = _lateral(hf, u, bounds)
    ja, jb = hf.points(hf.landmarks[0:17], u).T
    order = np.argsort(ja, kind="stable")
    head = np.empty((h, w), np.bool_)
    torso = np.empty((h, w), np.bool_)
    neck = np.empty((h, w), np.bool_)
    _regions_kernel(float(scale), float(hf.origin[0]), float(hf.origin[1]), float(hf.right[0]), float(hf.right[1]),
                    float(hf.down[0]), float(hf.down[1]), float(u), np.ascontiguousarray(ja[order]),
                    np.ascontiguousarray(jb[order]), float(left), float(right), float(brow), float(hf.chin / u),
                    float(margin), float(bounds.hair_top), float(bounds.shoulder_rise), float(bounds.shoulder_depth),
                    float(bounds.neck_half), float(bounds.shoulder_half), float(bounds.arm_spread), head, torso, neck)
    return head, torso, neck


@njit(cache=True, nogil=True)
def _regions_kernel(scale, ox, oy, rx, ry, dx, dy, u, ja, jb, left, right, brow, chin, margin, hair_top,
                    shoulder_rise, shoulder_depth, neck_half, shoulder_half, arm_spread, head, torso, neck):
    h, w = head.shape
    n = ja.shape[0]
    low = min(jb.min(), chin) + margin  # above the cut wherever b <= low, below it wherever b > chin + margin
    inv_s, rxu, ryu, dxu, dyu = 1.0 / scale, rx / u, ry / u, dx / u, dy / u
    il2, ir2, ihair, idepth = 1.0 / (left * left), 1.0 / (right * right), 1.0 / hair_top, 1.0 / shoulder_depth
    for i in range(h):
        y = (i + 0.5) * inv_s - oy
        a0, b0 = y * ryu, y * dyu
        for j in range(w):
            x = (j + 0.5) * inv_s - ox
            a = x * rxu + a0
            b = x * dxu + b0
            # the jaw contour's depth at a (linear between the sorted jaw points), +inf beside it
            if b <= low or b > chin + margin:
                jaw = chin
            elif a < ja[0] or a > ja[n - 1]:
                jaw = np.inf
            else:
                k = np.searchsorted(ja, a, side="right") - 1
                if k >= n - 1:
                    jaw = jb[n - 1]
                else:
                    span = ja[k + 1] - ja[k]
                    jaw = jb[k] if span <= 0 else jb[k] + (jb[k + 1] - jb[k]) * (a - ja[k]) / span
            above = b <= min(jaw, chin) + margin
            rise = max((brow - b) * ihair, 0.0)
            head[i, j] = above and a * a * (il2 if a < 0 else ir2) + rise * rise <= 1.0
            d = b - chin + shoulder_rise
            grow = min(max(d * idepth, 0.0), 1.0)
            band = neck_half + (shoulder_half - neck_half) * grow + arm_spread * max(d - shoulder_depth, 0.0)
            aa = abs(a)
            torso[i, j] = ((not above) and a >= -left and a <= right) or (d >= 0 and aa <= band)
            neck[i, j] = aa < 0.2 and b > chin and b < chin + 0.3


def _body_regions_numpy(hf: HeadFrame, h: int, w: int, margin: float = 0.03, scale: float = 1.0,
                        bounds: BodyBounds = DEFAULT_BOUNDS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`body_regions` with whole-image numpy arrays (the reference for the compiled pass)."""
    u = hf.size
    a, b = hf.coords(h, w, scale, unit=u)
    left, right, brow = _lateral(hf, u, bounds)
    chin = hf.chin / u
    above = b <= np.minimum(jaw_depth(hf, a, unit=u), chin) + margin  # the neck cut
    # head: a half-ellipse over the brow line (0 at the brows, 1 at the allowance's top), a band below
    half = np.where(a < 0, left, right)
    rise = np.clip((brow - b) / bounds.hair_top, 0.0, None)
    head = above & ((a / half) ** 2 + rise ** 2 <= 1.0)
    # torso: under the head's allowance below the cut, and the neck/shoulder/arm band
    d = b - chin + bounds.shoulder_rise  # depth below the torso's top
    grow = np.clip(d / bounds.shoulder_depth, 0.0, 1.0)
    band = (bounds.neck_half + (bounds.shoulder_half - bounds.neck_half) * grow
            + bounds.arm_spread * np.clip(d - bounds.shoulder_depth, 0.0, None))
    aa = np.abs(a)
    torso = (~above & (a >= -left) & (a <= right)) | ((d >= 0) & (aa <= band))
    neck = (aa < 0.2) & (b > chin) & (b < chin + 0.3)
    return head, torso, neck


def head_region(hf: HeadFrame, h: int, w: int, margin: float = 0.03, scale: float = 1.0,
                bounds: BodyBounds = DEFAULT_BOUNDS) -> np.ndarray:
    """Where the head may be (h, w) bool: above the neck cut and within the hair allowance.

    The neck cut is the jaw contour pushed `margin` face sizes down between the jaw's ends, and the
    line through the chin (perpendicular to the head's up axis) beside them. The allowance is a
    half-ellipse over the brow line reaching `hair_top` above the brows and `hair_side` beside the
    jaw ends (each side separately, so a turned head keeps its asymmetry), and a band of that width
    below the brows; all in face sizes s.
    """
    return body_regions(hf, h, w, margin, scale, bounds)[0]


def torso_region(hf: HeadFrame, h: int, w: int, margin: float = 0.03, scale: float = 1.0,
                 bounds: BodyBounds = DEFAULT_BOUNDS) -> np.ndarray:
    """Where the torso may be (h, w) bool: below the neck cut, within the neck/shoulder/arm band.

    In face sizes s, with d the depth below the chin line along the head's down axis and a across:
    below the neck cut under the head's hair allowance (neck, long hair), and from `shoulder_rise`
    above the chin line down, within a half-width growing from `neck_half` to `shoulder_half` over
    `shoulder_depth`, then by `arm_spread` per s further down (shoulders, arms; a raised shoulder
    beside the jaw included).
    """
    return body_regions(hf, h, w, margin, scale, bounds)[1]


def person_region(hf: HeadFrame, h: int, w: int, scale: float = 1.0,
                  bounds: BodyBounds = DEFAULT_BOUNDS) -> np.ndarray:
    """Where any part of the person may be (h, w) bool: the head region or the torso region."""
    head, torso, _ = body_regions(hf, h, w, scale=scale, bounds=bounds)
    return head | torso


def connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The 8-connected components of `mask` (H, W) bool that contain a pixel of `seed` (H, W) bool."""
    if not mask.any() or not (mask & seed).any():
        return np.zeros_like(mask, dtype=bool)
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    lut = np.zeros(n, bool)
    lut[lab[mask & seed]] = True
    lut[0] = False
    return lut[lab]


def _check_mask(name: str, m, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(m)
    if m.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {m.shape}")
    return m


def split_parts(person_alpha: np.ndarray, landmarks: np.ndarray, face_mask: np.ndarray | None = None,
                classes: np.ndarray | None = None, threshold: float = 0.5,
                bounds: BodyBounds = DEFAULT_BOUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Head and torso bool masks (H, W) of one frame's person matte (alpha ≥ `threshold`).

    head = the matte within `head_region` that is connected to the face (landmark hull, and the
    fitted face silhouette `face_mask` when given); torso = the rest of the matte within
    `torso_region` that is connected to the head or the neck. Matte outside both is neither (a
    background region the matte took for the person). With MediaPipe `classes` (H, W) the reference
    grouping. Without usable landmarks, head is the face mask (or hair + face skin with classes) and
    torso the rest of the person.
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
    region, torso_ok, neck = body_regions(hf, h, w, bounds=bounds) if hf is not None else (None, None, None)
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
    # the face itself: the landmark hull (face even where the matte is unsure) and the fitted silhouette
    hull = cv2.convexHull(np.round(lm).astype(np.int32))
    face8 = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(face8, hull, 1)
    face = (face8 > 0) & (alpha > 0.25)
    if fm is not None:
        face |= person & fm
    head = connected_to((person & region) | face, face) | face
    # the torso: below the chin within the shoulder band, connected to the neck or the head
    touch = cv2.dilate(head.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    torso = connected_to(person & ~head & torso_ok, touch | neck)
    return head, torso


def bounded_matte(person_alpha: np.ndarray, head: np.ndarray, torso: np.ndarray, grow: int = 3) -> np.ndarray:
    """The matte (H, W) float in [0, 1] limited to the labelled person: zero farther than `grow` px from
    head ∪ torso, so matte the split rejected (background outside the face-geometry bounds, blobs not
    connected to the face) is not person in the composite or the background plate either."""
    keep = (np.asarray(head, bool) | np.asarray(torso, bool)).astype(np.uint8)
    if grow > 0:
        keep = cv2.dilate(keep, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return np.where(keep.astype(bool), np.asarray(person_alpha, np.float32), np.float32(0.0))


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
    out = frame * torso[..., None].astype(np.uint8)
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
    # all occluded columns at once: the median colour of each column's first `probe` rows from its torso top
    t = top[cols]
    ys = t[:, None] + np.arange(probe)[None]  # (n, probe)
    ok = ys < h
    ys = np.minimum(ys, h - 1)
    ok &= torso[ys, cols[:, None]]
    vals = frame[ys, cols[:, None]].astype(np.float32)  # (n, probe, 3)
    vals[~ok] = np.inf  # sorted last; row `top` itself is torso, so every column has >= 1 value
    vals.sort(axis=1)
    k = ok.sum(1)  # values per column
    lo, hi = ((k - 1) // 2)[:, None, None], (k // 2)[:, None, None]
    c = (np.take_along_axis(vals, lo, 1)[:, 0] + np.take_along_axis(vals, hi, 1)[:, 0]) / 2  # (n, 3) medians
    # the head pixels from max(top − ext, 0) up to the torso top, per column; worked on the band's box only
    # (3 zero columns each side keep the 7-wide blur exact at the box's edges)
    y0 = np.maximum(t - ext, 0)
    r0, r1 = int(y0.min()), int(t.max())
    c0, c1 = max(int(cols[0]) - 3, 0), min(int(cols[-1]) + 4, w)
    rr = np.arange(r0, r1)[:, None]
    band = (rr >= y0[None]) & (rr < t[None]) & head[r0:r1, cols]  # (rows, n)
    if not band.any():
        return out
    fill = np.zeros((r1 - r0, c1 - c0), bool)
    fill[:, cols - c0] = band
    colour = np.zeros((r1 - r0, c1 - c0, 3), np.float32)
    colour[:, cols - c0] = band[..., None] * c[None]
    # even out column-to-column noise within the filled band only
    weight = cv2.blur(fill.astype(np.float32), (7, 1))
    smooth = cv2.blur(colour, (7, 1)) / np.maximum(weight, 1e-6)[..., None]
    roi = out[r0:r1, c0:c1]
    roi[fill] = np.clip(smooth[fill] + 0.5, 0, 255).astype(np.uint8)
    return out
