"""Person segmentation: a soft matte per frame, its head / torso split, the inpainted torso.

`make_segmenter("colour" | "rembg" | "mediapipe", **params)` loads a backend once; `reset()` starts
a clip; `segment(frames (n, H, W, 3) uint8, landmarks (n, 68, 2), face_masks=None)` gives a
`Segmentation` (person (n, H, W) float32 in [0, 1], classes (n, H, W) uint8 or None).
`split_parts(alpha, landmarks, face_mask, classes)` → head, torso bool masks, bounded by the face
geometry (`BodyBounds`: hair allowance, shoulder band; `head_region`, `torso_region`);
`inpaint_torso(frame, head, torso)` → the torso image with the region behind the head filled.
The default `colour` backend needs no weights (GrabCut seeded by the face); `rembg` runs a local
U²-Net ONNX; `mediapipe` (optional extra) gives the reference's six classes.
"""

from __future__ import annotations

from .base import (
    BACKGROUND,
    BODY_SKIN,
    CLASS_NAMES,
    CLOTHES,
    FACE_SKIN,
    HAIR,
    OTHERS,
    Segmentation,
    SegmentationError,
    Segmenter,
    available_segmenters,
    check_inputs,
    make_segmenter,
)
from . import colour as _colour  # noqa: F401  (registers "colour")
from . import mediapipe_backend as _mediapipe_backend  # noqa: F401  (registers "mediapipe")
from . import rembg_backend as _rembg_backend  # noqa: F401  (registers "rembg")
from .colour import ColourSegmenter
from .parts import (
    DEFAULT_BOUNDS,
    BodyBounds,
    bounded_matte,
    HeadFrame,
    connected_to,
    head_frame,
    head_region,
    inpaint_torso,
    person_region,
    split_parts,
    torso_region,
)

__all__ = [
    "BACKGROUND", "BODY_SKIN", "CLASS_NAMES", "CLOTHES", "FACE_SKIN", "HAIR", "OTHERS", "Segmentation",
    "SegmentationError", "Segmenter", "available_segmenters", "check_inputs", "make_segmenter",
    "ColourSegmenter", "BodyBounds", "bounded_matte", "DEFAULT_BOUNDS", "HeadFrame", "connected_to", "head_frame", "head_region",
    "inpaint_torso", "person_region", "split_parts", "torso_region",
]
