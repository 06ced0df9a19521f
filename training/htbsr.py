"""HTB-SR stage (head, torso, background → final image): the frozen motion head fused with a
keypoint-warped torso and the clip's background plate, then upsampled to the output size.

An example is (source frame, target frame) of one clip of a `r3p preprocess` dataset, drawn like the
motion stage (`motion.draw_pairs`, seeded by the clip id). Per example (all images in [-1, 1]):

- head inputs, as motion: `input` (3, S, S) the head-only source at S = image_size, `secc` (9, S, S)
  (canonical, source, driving SECC), `cam` (25,) the target camera. `loss`/`validate` render the
  target head with the FROZEN motion model under no_grad (`frozen(p, info)["head"]`, eval mode: no
  render jitter): SR image (3, S, S) and opacity (1, r, r). A batch may instead carry `head_sr` and
  `head_opacity` directly (tests, or a cached render); then no head model is needed.
- `torso` (4, W, W): the source's inpainted torso RGB (stored `torso_jpeg`, -1 outside) and its mask
  (seg == torso, or a non-black inpainted pixel); W = work_size.
- `kp_src`, `kp_drv` (4, 2): landmarks 0, 16 (jaw ends), 8 (chin), 27 (nose bridge) of the stored 68
  tracked `landmarks` of the source and target frames, x/y as fractions of the crop.
- `bg` (3, W, W): the clip's background plate (clip column `background_jpeg`).
- targets at O = out_size: `target` (3, O, O) the target's stored composite (person over the plate),
  `torso_mask` (seg == torso) and `person_mask` (seg > 0) (1, O, O), `lip` (1, O, O) the mouth box.

Model (`HTBSR`, tiny = a 2D version of the paper's interface; `paper` sizes are the same nets wider,
about 2M parameters, not the published 3D motion-field estimator of about 48M):
torso warper: per keypoint a translation flow (source kp − driving kp), soft-selected per pixel (with an
identity flow) by a small CNN on keypoint heatmaps, the torso warped by each candidate flow and the
head opacity, plus a residual flow (zero at init) → dense flow; the torso and its features are warped
by `grid_sample`, the features gated by a predicted occlusion map, and a decoder outputs torso RGB
(residual on the warped torso) and the torso alpha (a residual on the warped source torso mask).
Background: a small CNN encoder on the plate. Fusion at W: head over torso by the head opacity,
person over background by alpha = clamp(torso alpha + head alpha (1 above `head_threshold`)), in
image and feature space; a refiner and a ×2ⁿ upsampler give a residual on the bilinearly upsampled
fused RGB at O; last, the head SR image is laid over the result by its (upsampled) opacity, so where
the head opacity is 1 the output is the head SR image.

Losses (each per example, then the mean over examples, so a batch split over DDP workers gives the
same loss as one worker): torso-masked L1 (weight `w_outside` outside the dilated target torso mask),
whole-image L1, lip-box L1, entropy of the torso alpha, L1 of the person alpha to the person mask.
Only the HTB-SR module trains; a run must name a motion run (`training.htbsr.motion`). Not implemented:
perceptual and adversarial terms, the reference's source→source steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from preprocessing.record import SEG_BACKGROUND, SEG_HEAD, SEG_TORSO
from training.i2p import _image, _mask, psnr, with_render_seeds
from training.motion import (I2P_CHECK, MotionParams, _decode, _face3d, _weighted_l1, draw_pairs, lip_box_mask,
                             secc_maps, source_input, stack_secc)
from training.stage import Stage, StageError

#: the stored 68-landmark indices that drive the torso: jaw ends, chin, nose bridge
KP_INDICES = (0, 16, 8, 27)


@dataclass
class HTBSRParams(MotionParams):
    motion: str | None = None  # the motion run (name under the runs folder, or a checkpoint folder) to start from
    work_size: int = 64  # resolution of the torso warp and the fusion (paper 256)
    out_size: int = 64  # output size: work_size × 2^k (paper 512)
    torso_width: int = 32
    bg_width: int = 16
    fuse_width: int = 32
    heat_sigma: float = 0.05  # keypoint heatmap σ, fraction of the image
    head_threshold: float = 0.9  # head opacity above this counts as fully opaque in the person alpha
    motion_grad_scale: float = 1.0  # gradient factor into the flow estimator (paper 0.1)
    w_torso: float = 1.0
    w_outside: float = 0.5  # torso-masked L1 weight outside the dilated torso mask
    w_full: float = 0.1
    w_lip: float = 0.2
    w_entropy: float = 0.01
    w_alpha: float = 0.1
    dilate: int = 5  # torso mask dilation kernel at out_size


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2))


def _zero(conv: nn.Conv2d, bias: float = 0.0) -> nn.Conv2d:
    nn.init.zeros_(conv.weight)
    nn.init.constant_(conv.bias, bias)
    return conv


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def _identity_grid(b: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(B, size, size, 2) grid_sample coordinates (x, y) in [-1, 1] of pixel centres (align_corners=False)."""
    c = (torch.arange(size, dtype=like.dtype, device=like.device) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx, yy], -1).expand(b, size, size, 2)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s):
        ctx.s = s
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.s, None


class TorsoWarper(nn.Module):
    """2D keypoint-driven torso warper (see the module docstring).

    forward(torso (B, 4, W, W) RGB + mask in [-1, 1] / [0, 1], kp_src, kp_drv (B, K, 2) in [0, 1],
    head_alpha (B, 1, W, W)) → {"rgb" (B, 3, W, W), "alpha" (B, 1, W, W), "features" (B, C, W, W),
    "flow" (B, W, W, 2) grid_sample coordinates, "occlusion" (B, 1, W/2, W/2)}."""

    def __init__(self, n_kp: int = 4, size: int = 64, width: int = 32, sigma: float = 0.05,
                 grad_scale: float = 1.0, alpha_gain: float = 4.0):
        super().__init__()
        if size % 8:
            raise ValueError(f"TorsoWarper needs a size divisible by 8, got {size}")
        self.k, self.size, self.m = n_kp, size, size // 2
        self.sigma, self.grad_scale, self.alpha_gain = sigma, grad_scale, alpha_gain
        w = width
        cin = (n_kp + 1) * 5 + 1 + 2  # heatmaps, candidate-warped torso (rgba), head alpha, coordinates
        self.down = nn.Sequential(_conv(cin, w), _conv(w, w, 2), _conv(w, 2 * w, 2))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(2 * w, w),
                                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(w, w))
        self.masks = nn.Conv2d(w + cin, n_kp + 1, 3, 1, 1)
        self.residual = _zero(nn.Conv2d(w + cin, 2, 3, 1, 1))
        self.occlusion = _zero(nn.Conv2d(w + cin, 1, 3, 1, 1), bias=4.0)  # ≈ 1 (no occlusion) at init
        self.appearance = nn.Sequential(_conv(4, w), _conv(w, w))
        self.decoder = nn.Sequential(_conv(w + 4 + 1, w), _conv(w, w))
        self.to_rgb = _zero(nn.Conv2d(w, 3, 3, 1, 1))
        self.to_alpha = _zero(nn.Conv2d(w, 1, 3, 1, 1))

    def _heatmaps(self, kp: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        g = kp * 2 - 1  # (B, K, 2) → [-1, 1]
        d = (grid[:, None] - g[:, :, None, None]).pow(2).sum(-1)  # (B, K, m, m)
        return torch.exp(-d / (2 * (2 * self.sigma) ** 2))

    def forward(self, torso, kp_src, kp_drv, head_alpha):
        b, s, m = torso.shape[0], self.size, self.m
        if torso.shape[1:] != (4, s, s):
            raise ValueError(f"the torso warper takes (B, 4, {s}, {s}) torso RGB + mask, got {tuple(torso.shape)}")
        if kp_src.shape != (b, self.k, 2) or kp_drv.shape != (b, self.k, 2):
            raise ValueError(f"keypoints must be (B, {self.k}, 2) fractions of the image, got "
                             f"{tuple(kp_src.shape)} and {tuple(kp_drv.shape)}")
        small = _resize(torso, m)
        grid = _identity_grid(b, m, torso)
        heat = self._heatmaps(kp_drv, grid) - self._heatmaps(kp_src, grid)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], 1)  # (B, K+1, m, m); 0 = identity
        shift = (kp_src - kp_drv) * 2  # target pixel x samples the source at x + (src − drv)
        shift = torch.cat([torch.zeros_like(shift[:, :1]), shift], 1)  # (B, K+1, 2)
        cand = grid[:, None] + shift[:, :, None, None]  # (B, K+1, m, m, 2)
        warped = F.grid_sample(small.repeat_interleave(self.k + 1, 0), cand.reshape(-1, m, m, 2),
                               mode="bilinear", padding_mode="border", align_corners=False)
        x = torch.cat([heat, warped.reshape(b, -1, m, m), _resize(head_alpha, m),
                       grid.permute(0, 3, 1, 2)], 1)
        h = torch.cat([self.up(self.down(x)), x], 1)
        h = _ScaleGrad.apply(h, self.grad_scale) if self.grad_scale != 1.0 else h
        mask = torch.softmax(self.masks(h), 1)  # (B, K+1, m, m)
        disp = (mask[..., None] * shift[:, :, None, None]).sum(1) + 0.1 * self.residual(h).permute(0, 2, 3, 1)
        occ = torch.sigmoid(self.occlusion(h))
        disp = F.interpolate(disp.permute(0, 3, 1, 2), size=(s, s), mode="bilinear", align_corners=False)
        flow = _identity_grid(b, s, torso) + disp.permute(0, 2, 3, 1)
        warp = F.grid_sample(torso, flow, mode="bilinear", padding_mode="border", align_corners=False)
        feat = F.grid_sample(self.appearance(torso), flow, mode="bilinear", padding_mode="border",
                             align_corners=False) * F.interpolate(occ, size=(s, s), mode="bilinear",
                                                                  align_corners=False)
        feat = self.decoder(torch.cat([feat, warp, head_alpha], 1))
        rgb = (warp[:, :3] + self.to_rgb(feat)).clamp(-1, 1)
        alpha = torch.sigmoid(self.to_alpha(feat) + self.alpha_gain * (2 * warp[:, 3:4] - 1))
        return {"rgb": rgb, "alpha": alpha, "features": feat, "flow": flow, "occlusion": occ}


class HTBSR(nn.Module):
    """Head–torso–background fusion and upsampling (see the module docstring).

    forward(head_sr (B, 3, S, S) in [-1, 1], head_opacity (B, 1, r, r) in [0, 1], torso (B, 4, W, W),
    kp_src, kp_drv (B, 4, 2), background (B, 3, W, W)) → {"image" (B, 3, O, O) in [-1, 1], "alpha"
    (B, 1, O, O) the person alpha, "torso" (B, 3, W, W), "torso_alpha" (B, 1, W, W), "flow" (B, W, W, 2),
    "occlusion"}. Inputs of another square size are resized to W (head, torso, plate)."""

    def __init__(self, work_size: int = 64, out_size: int = 64, torso_width: int = 32, bg_width: int = 16,
                 fuse_width: int = 32, heat_sigma: float = 0.05, head_threshold: float = 0.9,
                 motion_grad_scale: float = 1.0, n_kp: int = len(KP_INDICES)):
        super().__init__()
        k = out_size // work_size
        if out_size % work_size or k & (k - 1):
            raise ValueError(f"out_size must be work_size × 2^k, got {out_size} and {work_size}")
        self.work, self.out, self.threshold = work_size, out_size, head_threshold
        fw = fuse_width
        self.torso = TorsoWarper(n_kp, work_size, torso_width, heat_sigma, motion_grad_scale)
        self.bg_enc = nn.Sequential(_conv(3, bg_width), _conv(bg_width, bg_width))
        self.head_enc = nn.Sequential(_conv(4, fw))
        self.torso_proj = nn.Conv2d(torso_width, fw, 1)
        self.bg_proj = nn.Conv2d(bg_width, fw, 1)
        self.fuse = nn.Sequential(_conv(fw + 5, fw), _conv(fw, fw))
        ups = []
        for _ in range(int(math.log2(k))):
            ups += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(fw, fw)]
        self.upsample = nn.Sequential(*ups)
        self.to_rgb = _zero(nn.Conv2d(fw, 3, 3, 1, 1))

    def forward(self, head_sr, head_opacity, torso, kp_src, kp_drv, background):
        b, w, o = head_sr.shape[0], self.work, self.out
        for name, t, c in (("head_sr", head_sr, 3), ("head_opacity", head_opacity, 1), ("torso", torso, 4),
                           ("background", background, 3)):
            if t.ndim != 4 or t.shape[0] != b or t.shape[1] != c or t.shape[2] != t.shape[3]:
                raise ValueError(f"HTB-SR input {name} must be (B={b}, {c}, N, N), got {tuple(t.shape)}")
        if not (torch.isfinite(head_opacity).all() and torch.isfinite(head_sr).all()):
            raise ValueError("HTB-SR: the head render is not finite (NaN/inf; a bad target camera?)")
        a_h = _resize(head_opacity, w).clamp(0, 1)
        h = _resize(head_sr, w)
        t = self.torso(_resize(torso, w), kp_src, kp_drv, a_h)
        bg = _resize(background, w)
        a_hard = torch.where(a_h > self.threshold, torch.ones_like(a_h), a_h)
        alpha = (t["alpha"] + a_hard).clamp(0, 1)  # person over background
        rgb = alpha * (a_h * h + (1 - a_h) * t["rgb"]) + (1 - alpha) * bg
        f_person = a_h * self.head_enc(torch.cat([h, a_h], 1)) + (1 - a_h) * self.torso_proj(t["features"])
        feat = alpha * f_person + (1 - alpha) * self.bg_proj(self.bg_enc(bg))
        feat = self.upsample(self.fuse(torch.cat([feat, rgb, alpha, a_h], 1)))
        img = (_resize(rgb, o) + self.to_rgb(feat)).clamp(-1, 1)
        a_o = _resize(head_opacity, o).clamp(0, 1)
        img = a_o * _resize(head_sr, o) + (1 - a_o) * img  # head over everything by its opacity
        return {"image": img, "alpha": _resize(alpha, o), "torso": t["rgb"], "torso_alpha": t["alpha"],
                "flow": t["flow"], "occlusion": t["occlusion"]}


def build_htbsr(p: HTBSRParams) -> HTBSR:
    return HTBSR(work_size=p.work_size, out_size=p.out_size, torso_width=p.torso_width, bg_width=p.bg_width,
                 fuse_width=p.fuse_width, heat_sigma=p.heat_sigma, head_threshold=p.head_threshold,
                 motion_grad_scale=p.motion_grad_scale)


def static_composite(head_sr: torch.Tensor, head_opacity: torch.Tensor, torso: torch.Tensor,
                     background: torch.Tensor, out_size: int) -> torch.Tensor:
    """The "static torso" baseline at out_size: the source torso unwarped over the plate, head over it."""
    t = _resize(torso, out_size)
    img = t[:, 3:4] * t[:, :3] + (1 - t[:, 3:4]) * _resize(background, out_size)
    a = _resize(head_opacity, out_size).clamp(0, 1)
    return a * _resize(head_sr, out_size) + (1 - a) * img


# ---------------------------------------------------------------------------------------------
# examples
# ---------------------------------------------------------------------------------------------

def torso_input(torso: np.ndarray, seg: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 inpainted torsos (black outside) and (N, H, W) labels → (N, 4, size, size): RGB in
    [-1, 1] (-1 outside) and the mask (seg == torso or an inpainted, non-black pixel) in [0, 1]."""
    torso = np.asarray(torso)
    m = (np.asarray(seg) == SEG_TORSO) | (torso.max(-1) > 24)
    mm = _mask(m, size)
    return np.concatenate([_image(torso, size) * mm + (mm - 1), mm], 1).astype(np.float32)


def pair_examples(source_frame: np.ndarray, source_seg: np.ndarray, source_torso: np.ndarray,
                  target_composite: np.ndarray, target_seg: np.ndarray, background: np.ndarray, secc: np.ndarray,
                  cameras: np.ndarray, kp_src: np.ndarray, kp_drv: np.ndarray, lip_box: np.ndarray,
                  p: HTBSRParams) -> dict[str, np.ndarray]:
    """Examples of N (source, target) pairs: frames/torsos/composites (N, H, W, 3) uint8, labels (N, H, W)
    uint8, background (H, W, 3) or (N, H, W, 3) uint8, SECC (N, 3, h, w, 3), cameras (N, 25), keypoints
    (N, 4, 2) and lip boxes (N, 4) as fractions of the crop."""
    n = len(source_frame)
    for name, a, shape in (("cameras", cameras, (n, 25)), ("kp_src", kp_src, (n, len(KP_INDICES), 2)),
                           ("kp_drv", kp_drv, (n, len(KP_INDICES), 2)), ("lip_box", lip_box, (n, 4))):
        if np.shape(a) != shape:
            raise StageError(f"htbsr: {name} must be {shape}, got {np.shape(a)}")
    for name, a in (("source_frame", source_frame), ("source_torso", source_torso),
                    ("target_composite", target_composite)):
        if np.ndim(a) != 4 or len(a) != n or np.shape(a)[-1] != 3:
            raise StageError(f"htbsr: {name} must be (N={n}, H, W, 3) uint8, got {np.shape(a)}")
    background = np.asarray(background)
    if background.ndim == 3:
        background = background[None]
    if background.ndim != 4 or background.shape[-1] != 3 or len(background) not in (1, n):
        raise StageError(f"htbsr: background must be (H, W, 3) or (N, H, W, 3) uint8, got {background.shape}")
    bg = np.broadcast_to(_image(background, p.work_size), (n, 3, p.work_size, p.work_size))
    src_seg, tgt_seg = np.asarray(source_seg), np.asarray(target_seg)
    return {"input": source_input(source_frame, src_seg == SEG_HEAD, p), "secc": stack_secc(secc),
            "cam": np.asarray(cameras, np.float32),
            "torso": torso_input(source_torso, src_seg, p.work_size),
            "kp_src": np.asarray(kp_src, np.float32), "kp_drv": np.asarray(kp_drv, np.float32),
            "bg": np.ascontiguousarray(bg, np.float32),
            "target": _image(target_composite, p.out_size),
            "torso_mask": _mask(tgt_seg == SEG_TORSO, p.out_size),
            "person_mask": _mask(tgt_seg != SEG_BACKGROUND, p.out_size),
            "lip": lip_box_mask(lip_box, p.out_size)}


def _clip_column(clip, name: str):
    """A clip-level column of `clip` (`clip.columns[name]`, which the runner fills from `clip_columns`)."""
    cols = getattr(clip, "columns", None) or {}
    if cols.get(name) is None:
        raise StageError(f"htbsr: clip {clip.clip_id} has no {name}; re-run `r3p preprocess` (the stage reads "
                         "the clip's background plate)")
    return cols[name]


# ---------------------------------------------------------------------------------------------
# stage
# ---------------------------------------------------------------------------------------------

def _check_motion_checkpoint(value: str | None) -> dict[str, Any]:
    if not value:
        raise StageError("stage htbsr starts from a motion run: set training.htbsr.motion=RUN_OR_CHECKPOINT")
    from training.checkpoint import read_meta

    meta = read_meta(value)
    if meta.get("stage") != "motion":
        raise StageError(f"training.htbsr.motion={value} is a {meta.get('stage')!r} checkpoint; give a motion run")
    return meta


class HTBSRStage(Stage):
    """Head–torso–background fusion and SR on talking-face pairs (see the module docstring)."""

    name = "htbsr"
    uses_audio = False
    Params = HTBSRParams
    clip_columns = ("background_jpeg",)
    frame_columns = ("index", "valid", "frame_jpeg", "seg_png", "torso_jpeg", "composite_jpeg", "exp",
                     "eg3d_cam", "mouth_box", "landmarks")
    sizes = {"tiny": {"steps": 300, "batch_size": 4, "lr": 1e-3},
             "paper": {"steps": 100_000, "batch_size": 4, "lr": 1e-5, "lr_decay": 0.5, "lr_decay_every": 50_000,
                       "plane_channels": 32, "plane_resolution": 256, "render_resolution": 128,
                       "samples_coarse": 48, "samples_fine": 48, "image_size": 512, "sr": "paper",
                       "adapter_width": 64, "work_size": 256, "out_size": 512, "torso_width": 128,
                       "bg_width": 64, "fuse_width": 128, "motion_grad_scale": 0.1, "dilate": 41,
                       "w_entropy": 0.001}}
    best_metric = ("val_psnr", True)

    def check_params(self, p: HTBSRParams) -> None:
        I2P_CHECK(self, p)
        for k in ("pairs_per_clip", "min_gap", "torso_width", "bg_width", "fuse_width", "dilate"):
            if getattr(p, k) < 1:
                raise StageError(f"config key 'training.htbsr.{k}' must be >= 1 (got {getattr(p, k)})")
        if p.work_size < 8 or p.work_size % 8:
            raise StageError(f"config key 'training.htbsr.work_size' must be a multiple of 8 (got {p.work_size})")
        k = p.out_size // p.work_size
        if p.out_size % p.work_size or k < 1 or k & (k - 1):
            raise StageError(f"config key 'training.htbsr.out_size' must be work_size × 2^k (got {p.out_size}, "
                             f"work_size {p.work_size})")
        for k in ("w_outside", "head_threshold"):
            if not 0 <= getattr(p, k) <= 1:
                raise StageError(f"config key 'training.htbsr.{k}' must be in [0, 1] (got {getattr(p, k)})")
        if not p.heat_sigma > 0:
            raise StageError(f"config key 'training.htbsr.heat_sigma' must be > 0 (got {p.heat_sigma})")

    def required_checkpoints(self, p: HTBSRParams) -> dict[str, str | None]:
        return {"motion": p.motion}

    def example_context(self, p, face_model):
        return {"face_model": face_model}

    def examples(self, clip, p: HTBSRParams) -> dict[str, np.ndarray]:
        f = clip.frames
        n = len(f["frame_jpeg"])
        if n == 0:
            return {}
        kp = np.asarray(f["landmarks"], np.float32).reshape(n, 68, 2)[:, list(KP_INDICES)]
        ok = (f["valid"] > 0.5) & np.isfinite(f["eg3d_cam"]).all(1) & np.isfinite(f["mouth_box"]).all(1)
        ok &= np.isfinite(kp).all((1, 2))
        ok &= np.array([all(f[c][i] is not None for c in ("frame_jpeg", "seg_png", "torso_jpeg", "composite_jpeg"))
                        for i in range(n)], bool)
        seed = int.from_bytes(clip.clip_id.encode()[:8].ljust(8, b"\0"), "little") % (2**63)
        pairs = draw_pairs(ok, p.pairs_per_clip, p.min_gap, np.random.default_rng(seed))
        if len(pairs) == 0:
            return {}
        bg = _decode(_clip_column(clip, "background_jpeg"))
        face3d = _face3d(clip.context["face_model"])
        src, tgt = pairs[:, 0], pairs[:, 1]
        seg = {i: _decode(f["seg_png"][i]) for i in np.unique(pairs)}
        frame = {i: _decode(f["frame_jpeg"][i]) for i in np.unique(src)}
        torso = {i: _decode(f["torso_jpeg"][i]) for i in np.unique(src)}
        comp = {i: _decode(f["composite_jpeg"][i]) for i in np.unique(tgt)}
        crop = float(bg.shape[0])
        secc = np.concatenate([secc_maps(face3d, clip.id_coeff, f["exp"][s], f["exp"][t][None], p.image_size)
                               for s, t in pairs])
        return pair_examples(np.stack([frame[i] for i in src]), np.stack([seg[i] for i in src]),
                             np.stack([torso[i] for i in src]), np.stack([comp[i] for i in tgt]),
                             np.stack([seg[i] for i in tgt]), bg, secc, f["eg3d_cam"][tgt],
                             kp[src] / crop, kp[tgt] / crop, f["mouth_box"][tgt] / crop, p)

    def build(self, p, info):
        return build_htbsr(p)

    def init_weights(self, model, p: HTBSRParams) -> None:
        """Nothing to load (the HTB-SR module starts fresh; the head is loaded by `frozen`): check the run."""
        _check_motion_checkpoint(p.motion)

    def frozen(self, p: HTBSRParams, info) -> dict[str, nn.Module]:
        """{"head": the motion run's HeadRenderer, eval, no gradients}."""
        meta = _check_motion_checkpoint(p.motion)
        from training.checkpoint import load_weights
        from training.motion import STAGE as MOTION

        mp = MOTION.params_from_dict(meta["params"])
        if mp.image_size != p.image_size:
            raise StageError(f"training.htbsr.image_size={p.image_size} differs from the motion run's "
                             f"{mp.image_size}; set training.htbsr.image_size={mp.image_size}")
        head = MOTION.build(mp, info)
        load_weights(p.motion, head)
        head.eval().requires_grad_(False)
        return {"head": head}

    def prepare(self, batch, step, gen, p):
        return with_render_seeds(batch, gen)

    @staticmethod
    def head_render(batch: dict[str, torch.Tensor], frozen: dict[str, nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
        """(head SR (B, 3, S, S), opacity (B, 1, r, r)) of the batch's targets: given in the batch, or rendered
        by the frozen motion model (no gradient, eval mode: no jitter)."""
        if "head_sr" in batch and "head_opacity" in batch:
            return batch["head_sr"], batch["head_opacity"]
        head = frozen.get("head")
        if head is None:
            raise StageError("htbsr: no frozen motion head (stage.frozen) and no head_sr/head_opacity in the batch")
        with torch.no_grad():
            head.eval()
            out = head.render(head.planes(batch["input"]), batch["cam"], batch["secc"])
        return out["sr"], out["opacity"]

    @classmethod
    def run_model(cls, model, batch, frozen) -> dict[str, torch.Tensor]:
        h, a = cls.head_render(batch, frozen)
        return model(h, a, batch["torso"], batch["kp_src"], batch["kp_drv"], batch["bg"])

    def loss(self, model, batch, step, p, frozen):
        out = self.run_model(model, batch, frozen)
        img, tgt = out["image"], batch["target"]
        k = 2 * (p.dilate // 2) + 1
        w = p.w_outside + (1 - p.w_outside) * F.max_pool2d(batch["torso_mask"], k, 1, k // 2)
        l_torso = _weighted_l1(img, tgt, w)
        l_full = (img - tgt).abs().flatten(1).mean(1).mean()
        l_lip = _weighted_l1(img, tgt, batch["lip"])
        a = out["torso_alpha"].clamp(1e-4, 1 - 1e-4)
        ent = (-(a * a.log() + (1 - a) * (1 - a).log())).flatten(1).mean(1).mean()
        l_alpha = (out["alpha"] - batch["person_mask"]).abs().flatten(1).mean(1).mean()
        total = p.w_torso * l_torso + p.w_full * l_full + p.w_lip * l_lip + p.w_entropy * ent + p.w_alpha * l_alpha
        return total, {"l1_torso": l_torso.item(), "l1": l_full.item(), "l1_lip": l_lip.item(),
                       "alpha_entropy": ent.item(), "l1_alpha": l_alpha.item()}

    @torch.no_grad()
    def validate(self, model, batches, p, frozen):
        ps, l1, lt, lt0 = [], [], [], []
        for b in batches:
            h, a = self.head_render(b, frozen)
            out = model(h, a, b["torso"], b["kp_src"], b["kp_drv"], b["bg"])["image"]
            static = static_composite(h, a, b["torso"], b["bg"], p.out_size)
            m = b["torso_mask"]
            ps.append(psnr(out, b["target"]))
            l1.append((out - b["target"]).abs().flatten(1).mean(1))
            for acc, im in ((lt, out), (lt0, static)):
                acc.append(((im - b["target"]).abs() * m).flatten(1).sum(1) / (3 * m.flatten(1).sum(1)).clamp_min(1))
        cat = lambda xs: float(torch.cat(xs).mean())  # noqa: E731
        return {"val_psnr": cat(ps), "val_l1": cat(l1), "val_l1_torso": cat(lt), "val_l1_torso_static": cat(lt0)}


STAGE = HTBSRStage()
