"""EG3D's tri-plane generator (`TriPlaneGenerator`) in plain torch.

z (B, 512) and the conditioning camera (B, 25) → ws through the camera-conditioned mapping network
→ a StyleGAN2 synthesis of 3 × 32 feature planes at 256² → the tri-plane decoder and volume
renderer (`preprocessing.triplane`) at 128² → the ×4 super-resolution (EG3D's
`SuperresolutionHybrid8XDC`: two upsampling StyleGAN2 blocks, 32 → 256 → 128 channels, styled by
the last w) → a 512² image in [-1, 1]. Sizes come from `EG3DConfig` (`paper()` = the official
FFHQ 512-128 architecture, `tiny()` for CPU tests), or from the architecture JSON written by
`r3p assets convert-eg3d`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from preprocessing.eg3d.networks import MappingNetwork, SynthesisBlock, SynthesisNetwork
from preprocessing.triplane import RenderOptions, TriplaneDecoder, render


@dataclass(frozen=True)
class EG3DConfig:
    """Architecture and rendering sizes of the tri-plane generator."""

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 25
    mapping_layers: int = 2
    plane_resolution: int = 256
    plane_channels: int = 32  # per plane; the backbone outputs 3 × this
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    img_resolution: int = 512
    sr_channels: tuple[int, int] = (256, 128)
    sr_conv_clamp: float | None = 256.0  # the official SR runs its blocks in fp16 with clamp 256
    sr_antialias: bool = True
    decoder_hidden: int = 64
    decoder_lr_mul: float = 1.0
    c_scale: float = 1.0
    c_gen_conditioning_zero: bool = False
    render: RenderOptions = field(default_factory=lambda: RenderOptions(
        resolution=128, samples_coarse=48, samples_fine=48, box_warp=1.0, ray_start=2.25, ray_end=3.3))

    @classmethod
    def paper(cls) -> "EG3DConfig":
        """The official `ffhqrebalanced512-128` architecture."""
        return cls()

    @classmethod
    def tiny(cls) -> "EG3DConfig":
        """A CPU-sized generator with the same structure (planes 3 × 8 at 32², 16² rays, ×4 SR to 64²)."""
        return cls(z_dim=32, w_dim=32, plane_resolution=32, plane_channels=8, channel_base=512, channel_max=32,
                   img_resolution=64, sr_channels=(16, 8), decoder_hidden=16,
                   render=RenderOptions(resolution=16, samples_coarse=12, samples_fine=12, ray_start=2.25, ray_end=3.3))

    @classmethod
    def from_init_kwargs(cls, kw: dict, shapes: dict[str, tuple] | None = None,
                         neural_rendering_resolution: int = 128) -> "EG3DConfig":
        """The config of a converted checkpoint: its `TriPlaneGenerator` constructor arguments, plus the
        sizes EG3D fixes in code (planes, decoder, SR channels) read from the weight shapes when given."""
        rk = dict(kw.get("rendering_kwargs", {}))
        mk = dict(kw.get("mapping_kwargs", {}))
        start, end = rk.get("ray_start", 2.25), rk.get("ray_end", 3.3)
        auto = start == "auto" or end == "auto"
        module = str(rk.get("superresolution_module", "SuperresolutionHybrid8XDC"))
        if not module.endswith("SuperresolutionHybrid8XDC"):
            raise ValueError(f"superresolution_module {module!r} is not supported; r3p implements "
                             "SuperresolutionHybrid8XDC (the 512² FFHQ checkpoints)")
        sizes = {}
        if shapes:
            res = max(int(k.split(".")[2][1:]) for k in shapes if k.startswith("backbone.synthesis.b"))
            sizes = dict(plane_resolution=res,
                         plane_channels=shapes[f"backbone.synthesis.b{res}.torgb.weight"][0] // 3,
                         decoder_hidden=shapes["decoder.net.0.weight"][0],
                         sr_channels=(shapes["superresolution.block0.conv1.weight"][0],
                                      shapes["superresolution.block1.conv1.weight"][0]))
        sr_fp16 = int(kw.get("sr_num_fp16_res", 0) or 0)
        return cls(z_dim=int(kw["z_dim"]), w_dim=int(kw["w_dim"]), c_dim=25,
                   mapping_layers=int(mk.get("num_layers", 8)),
                   channel_base=int(kw.get("channel_base", 32768)), channel_max=int(kw.get("channel_max", 512)),
                   conv_clamp=kw.get("conv_clamp"), img_resolution=int(kw["img_resolution"]),
                   sr_conv_clamp=256.0 if sr_fp16 > 0 else None, sr_antialias=bool(rk.get("sr_antialias", True)),
                   decoder_lr_mul=float(rk.get("decoder_lr_mul", 1.0)), c_scale=float(rk.get("c_scale", 1.0)),
                   c_gen_conditioning_zero=bool(rk.get("c_gen_conditioning_zero", False)),
                   render=RenderOptions(resolution=int(neural_rendering_resolution),
                                        samples_coarse=int(rk.get("depth_resolution", 48)),
                                        samples_fine=int(rk.get("depth_resolution_importance", 48)),
                                        box_warp=float(rk.get("box_warp", 1.0)),
                                        ray_start=None if auto else float(start), ray_end=None if auto else float(end)),
                   **sizes)

    def to_dict(self) -> dict:
        """JSON-able fields (render options nested)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EG3DConfig":
        """Inverse of `to_dict`."""
        d = dict(d)
        d["render"] = RenderOptions(**d.get("render", {}))
        if "sr_channels" in d:
            d["sr_channels"] = tuple(d["sr_channels"])
        return cls(**d)

    def replace(self, **changes) -> "EG3DConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class StyleGAN2Backbone(torch.nn.Module):
    """The mapping + synthesis pair (`backbone.mapping`, `backbone.synthesis`) producing the planes."""

    def __init__(self, cfg: EG3DConfig):
        super().__init__()
        self.synthesis = SynthesisNetwork(cfg.w_dim, cfg.plane_resolution, 3 * cfg.plane_channels,
                                          cfg.channel_base, cfg.channel_max, cfg.conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg.z_dim, cfg.c_dim, cfg.w_dim, self.num_ws, cfg.mapping_layers)


class SuperResolution(torch.nn.Module):
    """EG3D's SuperresolutionHybrid8XDC: raw RGB + features at the render size → image at ×4."""

    def __init__(self, cfg: EG3DConfig):
        super().__init__()
        self.input_resolution = cfg.render.resolution
        self.antialias = cfg.sr_antialias
        c0, c1 = cfg.sr_channels
        r = cfg.img_resolution
        self.block0 = SynthesisBlock(cfg.plane_channels, c0, cfg.w_dim, r // 2, 3, is_last=False,
                                     conv_clamp=cfg.sr_conv_clamp)
        self.block1 = SynthesisBlock(c0, c1, cfg.w_dim, r, 3, is_last=True, conv_clamp=cfg.sr_conv_clamp)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, noise_mode: str = "none") -> torch.Tensor:
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        if x.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
        x, rgb = self.block0(x, rgb, ws, noise_mode)
        _, rgb = self.block1(x, rgb, ws, noise_mode)
        return rgb


class TriPlaneGenerator(torch.nn.Module):
    """EG3D generator: `mapping(z, c)` → ws, `synthesis(ws, c)` → image, raw image, depth, opacity."""

    def __init__(self, cfg: EG3DConfig = EG3DConfig()):
        super().__init__()
        if cfg.img_resolution != 4 * cfg.render.resolution:
            raise ValueError(f"img_resolution ({cfg.img_resolution}) must be 4 × the render resolution "
                             f"({cfg.render.resolution}) for the ×4 super-resolution")
        self.cfg = cfg
        self.backbone = StyleGAN2Backbone(cfg)
        self.superresolution = SuperResolution(cfg)
        self.decoder = TriplaneDecoder(cfg.plane_channels, cfg.decoder_hidden, cfg.plane_channels, cfg.decoder_lr_mul)

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        """(B, z_dim) latents and (B, 25) conditioning cameras → ws (B, num_ws, w_dim)."""
        c = c[:, :25]
        if self.cfg.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.cfg.c_scale, truncation_psi, truncation_cutoff)

    def planes(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """ws → tri-plane (B, 3, C, H, W)."""
        p = self.backbone.synthesis(ws, noise_mode=noise_mode)
        return p.view(len(p), 3, self.cfg.plane_channels, p.shape[-2], p.shape[-1])

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, noise_mode: str = "const",
                  planes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Render ws from (B, 25) cameras: image (B, 3, 4R, 4R) and image_raw (B, 3, R, R) in [-1, 1],
        image_depth and opacity (B, 1, R, R), feature_image (B, 32, R, R), planes."""
        if planes is None:
            planes = self.planes(ws, noise_mode)
        out = render(planes, c[:, :25].to(planes.dtype), self.decoder, self.cfg.render)
        sr = self.superresolution(out["rgb"], out["features"], ws, noise_mode="none")
        return {"image": sr, "image_raw": out["rgb"], "image_depth": out["depth"], "opacity": out["opacity"],
                "feature_image": out["features"], "planes": planes}

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const") -> dict[str, torch.Tensor]:
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, c, noise_mode)


def load_generator(weights: str, arch: str | None = None, device: str = "cpu") -> TriPlaneGenerator:
    """A TriPlaneGenerator from converted safetensors weights and its architecture JSON (strict names)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    wpath = Path(weights)
    apath = Path(arch) if arch else wpath.with_suffix(".json")
    for p, what in ((wpath, "weights"), (apath, "architecture JSON")):
        if not p.is_file():
            raise FileNotFoundError(f"EG3D {what} not found at {p}; run `r3p assets convert-eg3d FILE.pkl` first")
    meta = json.loads(apath.read_text())
    cfg = EG3DConfig.from_dict(meta["config"])
    gen = TriPlaneGenerator(cfg)
    state = load_file(str(wpath), device=device)
    missing, unexpected = gen.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{wpath}: weights do not match the EG3D architecture: missing {sorted(missing)[:8]}, "
                         f"unexpected {sorted(unexpected)[:8]}")
    return gen.to(device).eval()
