"""Motion-adapter stage: SECC maps (canonical, source, driving) → a residual tri-plane added to the
I2P plane of the head-only source image, rendered at the target frame's camera.

An example is (source frame, target frame) of one speaker: the I2P input is the head-only source
image, the adapter input the three SECC maps (9 channels, [-1, 1], background -1), the camera the
target's EG3D 25-d camera; targets are the head-only target image, its head mask and its lip box
(x0, y0, x1, y1 as fractions of the image). Losses: head-masked L1 (mask dilated, weight
`w_outside` outside) on SR and raw, lip-box L1 on SR, opacity L1 towards the head mask; the density
regulariser is not applied here. Everything but the adapter is loaded from an i2p run
(`init_from_i2p`); the I2P image encoder stays frozen unless `train_i2p`, the decoder and SR train
with the adapter. The blink regulariser and the paper's freeze/unfreeze schedule are not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from training.head_nets import HeadRenderer, TinyAdapter
from training.i2p import I2PParams, _image, _mask, build_head
from training.stage import Stage, StageError


@dataclass
class MotionParams(I2PParams):
    adapter_width: int = 32
    w_lip: float = 1.0
    w_outside: float = 0.2
    dilate: int = 3  # mask dilation kernel at the render size (paper: 41 at 512²)
    train_i2p: bool = False


def lip_box_mask(boxes: np.ndarray, size: int) -> np.ndarray:
    """(N, 4) boxes (x0, y0, x1, y1 as image fractions) → (N, 1, size, size) float32 pixel masks."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    c = (np.arange(size) + 0.5) / size
    inx = (c[None] >= boxes[:, 0:1]) & (c[None] <= boxes[:, 2:3])
    iny = (c[None] >= boxes[:, 1:2]) & (c[None] <= boxes[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :])[:, None].astype(np.float32)


def pair_examples(source: np.ndarray, source_mask: np.ndarray, target: np.ndarray, target_mask: np.ndarray,
                  secc: np.ndarray, cameras: np.ndarray, lip_box: np.ndarray, p: MotionParams) -> dict[str, np.ndarray]:
    """Examples of N (source, target) pairs: images (N, H, W, 3) uint8, masks (N, H, W) bool, SECC
    (N, 3, h, w, 3) in [-1, 1] (canonical, source, driving), target cameras (N, 25), lip boxes (N, 4)."""
    n = len(source)
    secc = np.asarray(secc, np.float32)
    if secc.ndim != 5 or secc.shape[1] != 3 or secc.shape[-1] != 3:
        raise StageError(f"motion: SECC must be (N, 3 maps, H, W, 3) in [-1, 1], got {secc.shape}")
    for name, a, shape in (("cameras", cameras, (n, 25)), ("lip_box", lip_box, (n, 4))):
        if np.shape(a) != shape:
            raise StageError(f"motion: {name} must be {shape}, got {np.shape(a)}")
    src = _image(source, p.image_size)
    m_src = _mask(source_mask, p.image_size)
    hi, lo = _mask(target_mask, p.image_size), _mask(target_mask, p.render_resolution)
    s9 = torch.as_tensor(secc).permute(0, 1, 4, 2, 3).reshape(n, 9, secc.shape[2], secc.shape[3])
    return {"input": src * m_src + (m_src - 1), "secc": s9.numpy(), "cam": np.asarray(cameras, np.float32),
            "sr": _image(target, p.image_size) * hi + (hi - 1),
            "raw": _image(target, p.render_resolution) * lo + (lo - 1), "mask": lo, "mask_hi": hi,
            "lip": lip_box_mask(lip_box, p.image_size)}


def build_motion_head(p: MotionParams) -> HeadRenderer:
    """The I2P head of `p` with a tiny motion adapter."""
    return build_head(p, TinyAdapter(in_size=p.image_size, plane_channels=p.plane_channels,
                                     plane_resolution=p.plane_resolution, width=p.adapter_width))


def init_from_i2p(model: HeadRenderer, i2p_state: dict[str, torch.Tensor]) -> None:
    """Load an i2p run's weights into everything but the adapter; StageError naming missing keys."""
    own = {k for k in model.state_dict() if not k.startswith("adapter.")}
    missing = sorted(own - set(i2p_state))
    if missing:
        raise StageError(f"motion: the i2p checkpoint lacks {missing[:3]}... (was it made with the same sizes?)")
    model.load_state_dict({k: v for k, v in i2p_state.items() if k in own}, strict=False)


def _weighted_l1(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ((a - b).abs() * w).sum() / (w.sum() * a.shape[1]).clamp_min(1.0)


class MotionStage(Stage):
    """The motion adapter on talking-face pairs (see the module docstring)."""

    name = "motion"
    Params = MotionParams
    sizes = {"tiny": {"steps": 300, "batch_size": 4, "lr": 1e-3}, "paper": {"batch_size": 4, "lr": 1e-4}}

    def examples(self, clip, p):
        raise StageError("stage motion reads images and SECC maps the clip runner does not load yet: build its "
                         "examples with training.motion.pair_examples (see tests/test_motion_stage.py)")

    def build(self, p, info):
        return build_motion_head(p)

    def loss(self, model, batch, step, p, frozen):
        if p.train_i2p:
            planes = model.planes(batch["input"])
        else:
            with torch.no_grad():
                planes = model.planes(batch["input"])
        out = model.render(planes, batch["cam"], batch["secc"])
        k = 2 * (p.dilate // 2) + 1
        w_lo = p.w_outside + (1 - p.w_outside) * F.max_pool2d(batch["mask"], k, 1, k // 2)
        w_hi = F.interpolate(w_lo, size=out["sr"].shape[-2:], mode="nearest")
        l_sr = _weighted_l1(out["sr"], batch["sr"], w_hi)
        l_raw = _weighted_l1(out["rgb"], batch["raw"], w_lo)
        l_lip = _weighted_l1(out["sr"], batch["sr"], batch["lip"])
        l_op = (out["opacity"] - batch["mask"]).abs().mean()
        total = l_sr + l_raw + p.w_lip * l_lip + p.w_opacity * l_op
        return total, {"l1_sr": l_sr.item(), "l1_raw": l_raw.item(), "l1_lip": l_lip.item(), "opacity": l_op.item()}


STAGE = MotionStage()
