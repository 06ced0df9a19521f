"""I2P stage: one image → tri-plane, pre-trained on multi-view renders (`r3p multiview` views sets).

An example is (reference view, other view) of one sample: the reference image is the I2P input; the
model renders the tri-plane at both cameras and is supervised there. Targets are head-only images
(pixels outside the teacher's mask black = -1) because the renderer composites on black, and the
teacher's mask supervises the opacity. Losses: L1 on the SR image and the raw render (each at its
size), opacity L1 towards the mask, density regulariser. The perceptual and adversarial terms of
the paper are not implemented: the stage trains with L1 only. Render jitter and regulariser points come
from per-example seeds drawn for the global batch (`with_render_seeds`), so DDP and resume are exact.
Images are (3, H, W) float32 in [-1, 1]; cameras EG3D 25-d; depth distance along the ray (EG3D world
units, +inf background).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from preprocessing.triplane import RenderOptions, TriplaneDecoder
from training.head_nets import HeadRenderer, PaperSR, TinyI2P, TinySR
from training.stage import Stage, StageError, StageParams


@dataclass
class I2PParams(StageParams):
    plane_channels: int = 16
    plane_resolution: int = 64
    render_resolution: int = 32
    samples_coarse: int = 16
    samples_fine: int = 16
    image_size: int = 64  # SR output and I2P input size
    width: int = 32
    sr: str = "tiny"  # tiny | paper (EG3D ×4 SR)
    w_sr: float = 1.0
    w_raw: float = 1.0
    w_opacity: float = 1.0
    w_density: float = 0.25
    density_every: int = 4
    ref_every: int = 1  # supervise the reference view every this many steps (paper: 5 early on)


def _image(a: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, 3, size, size) float32 in [-1, 1] (antialiased bilinear)."""
    x = torch.as_tensor(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return x.numpy()


def _mask(m: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) bool → (N, 1, size, size) float32 coverage in [0, 1]."""
    x = torch.as_tensor(np.asarray(m, np.float32))[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "nearest")
    return x.numpy()


def view_pair_examples(image: np.ndarray, mask: np.ndarray, cameras: np.ndarray, p: I2PParams) -> dict[str, np.ndarray]:
    """Examples of one sample's V >= 2 views (image (V, H, W, 3) uint8, mask (V, H, W), cameras (V, 25)):
    every ordered (reference, other) pair, with head-only targets at the SR and the render size."""
    image, mask, cameras = np.asarray(image), np.asarray(mask, bool), np.asarray(cameras, np.float32)
    v = image.shape[0]
    if image.ndim != 4 or image.shape[-1] != 3 or mask.shape[:1] != (v,) or cameras.shape != (v, 25):
        raise StageError(f"i2p: a sample needs image (V, H, W, 3), mask (V, H, W) and cameras (V, 25); got "
                         f"{image.shape}, {mask.shape}, {cameras.shape}")
    if v < 2:
        raise StageError("i2p: a sample needs at least 2 views (reference + other); make the views set with "
                         "multiview.views >= 2")
    full = _image(image, p.image_size)
    m_hi, m_lo = _mask(mask, p.image_size), _mask(mask, p.render_resolution)
    head_hi = full * m_hi + (m_hi - 1)  # outside the mask → -1
    raw = _image(image, p.render_resolution) * m_lo + (m_lo - 1)
    pairs = [(i, j) for i in range(v) for j in range(v) if i != j]
    ri, oj = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    return {"input": full[ri], "cam_ref": cameras[ri], "cam_mv": cameras[oj],
            "sr_ref": head_hi[ri], "sr_mv": head_hi[oj], "raw_ref": raw[ri], "raw_mv": raw[oj],
            "mask_ref": m_lo[ri], "mask_mv": m_lo[oj]}


def render_options(p: I2PParams, perturb: bool = True) -> RenderOptions:
    """The renderer's sizes for these parameters."""
    return RenderOptions(resolution=p.render_resolution, samples_coarse=p.samples_coarse,
                         samples_fine=p.samples_fine, perturb=perturb)


def build_head(p: I2PParams, adapter: torch.nn.Module | None = None) -> HeadRenderer:
    """I2P + decoder + SR at the sizes of `p` (`adapter` added for the motion stage)."""
    i2p = TinyI2P(in_size=p.image_size, plane_channels=p.plane_channels, plane_resolution=p.plane_resolution,
                  width=p.width)
    decoder = TriplaneDecoder(n_features=p.plane_channels, hidden=64, out_features=p.plane_channels)
    if p.sr == "paper":
        sr = PaperSR(render_resolution=p.render_resolution, out_size=p.image_size, feature_channels=p.plane_channels)
    else:
        sr = TinySR(feature_channels=p.plane_channels, out_size=p.image_size, width=p.width)
    return HeadRenderer(i2p, decoder, sr, render_options(p), adapter)


def with_render_seeds(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The batch plus one render seed per example, drawn for the global batch (exact under DDP and resume)."""
    b = next(iter(batch.values())).shape[0]
    return {**batch, "render_seed": torch.randint(0, 2**24, (b,), generator=gen).float()}


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1]: (B, ...) → (B,)."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


class I2PStage(Stage):
    """Image → tri-plane pre-training on a views set (see the module docstring)."""

    name = "i2p"
    dataset_kind = "views"
    Params = I2PParams
    sizes = {
        "tiny": {"steps": 400, "batch_size": 8, "lr": 1e-3},
        "paper": {"steps": 25_000_000, "batch_size": 4, "lr": 1e-4, "warmup": 4000, "lr_decay": 0.95,
                  "lr_decay_every": 5000, "lr_min": 1e-5, "plane_channels": 32, "plane_resolution": 256,
                  "render_resolution": 128, "samples_coarse": 48, "samples_fine": 48, "image_size": 512,
                  "sr": "paper", "ref_every": 5},
    }
    best_metric = ("val_psnr_mv", True)

    def check_params(self, p: I2PParams) -> None:
        super().check_params(p)
        if p.sr not in ("tiny", "paper"):
            raise StageError(f"config key 'training.i2p.sr' must be tiny or paper (got {p.sr!r})")
        if p.sr == "paper" and p.image_size != 4 * p.render_resolution:
            raise StageError("config key 'training.i2p.image_size' must be 4 × render_resolution with the paper SR "
                             f"(got {p.image_size} and {p.render_resolution})")
        for k in ("plane_resolution", "image_size"):
            if getattr(p, k) % 8:
                raise StageError(f"config key 'training.i2p.{k}' must be a multiple of 8 (got {getattr(p, k)})")

    def views_examples(self, image, mask, cameras, p: I2PParams) -> dict[str, np.ndarray]:
        """Examples of one views-set sample (see `view_pair_examples`)."""
        return view_pair_examples(image, mask, cameras, p)

    def build(self, p: I2PParams, info: dict[str, Any]) -> HeadRenderer:
        return build_head(p)

    def prepare(self, batch, step, gen, p):
        return with_render_seeds(batch, gen)

    def loss(self, model, batch, step, p, frozen):
        views = ["mv", "ref"] if step % max(1, p.ref_every) == 0 else ["mv"]
        density = p.w_density > 0 and step % max(1, p.density_every) == 0
        cams = torch.stack([batch[f"cam_{v}"] for v in views], 1)
        out = model(batch["input"], cams, seeds=batch.get("render_seed"), density=density)
        total, terms = 0.0, {}
        for j, v in enumerate(views):
            l_sr = (out["sr"][:, j] - batch[f"sr_{v}"]).abs().mean()
            l_raw = (out["rgb"][:, j] - batch[f"raw_{v}"]).abs().mean()
            l_op = (out["opacity"][:, j] - batch[f"mask_{v}"]).abs().mean()
            total = total + p.w_sr * l_sr + p.w_raw * l_raw + p.w_opacity * l_op
            terms.update({f"l1_sr_{v}": l_sr.item(), f"l1_raw_{v}": l_raw.item(), f"opacity_{v}": l_op.item()})
        if density:
            reg = out["density_reg"].mean()
            total = total + p.w_density * reg
            terms["density_reg"] = reg.item()
        return total, terms

    @torch.no_grad()
    def validate(self, model, batches, p, frozen):
        ps_mv, ps_base = [], []
        for b in batches:
            out = model.render(model.planes(b["input"]), b["cam_mv"])
            ps_mv.append(psnr(out["sr"], b["sr_mv"]))
            ps_base.append(psnr(b["sr_ref"], b["sr_mv"]))
        return {"val_psnr_mv": float(torch.cat(ps_mv).mean()), "val_psnr_input_view": float(torch.cat(ps_base).mean())}


STAGE = I2PStage()
