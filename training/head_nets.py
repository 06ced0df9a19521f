"""Networks of the 3D head: image → tri-plane (I2P), SECC → residual plane (motion adapter), and the
super-resolution that turns a raw render into the output image.

Conventions: images are (B, 3, H, W) in [-1, 1]; tri-planes are (B, 3, C, R, R) in the order and
world box of `preprocessing.triplane`; SECC inputs are three SECC maps (canonical, source,
driving) stacked to (B, 9, H, W) in [-1, 1]. `tiny` nets are small CNNs for CPU tests and the demo;
`paper` sizes follow the fact sheet (section 2) and are instantiable on CPU for parameter counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from preprocessing.triplane import RenderOptions, TriplaneDecoder, render


def with_coordinates(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) image → (B, 5, H, W): the image plus pixel-coordinate channels x/H and y/H in [0, 1)."""
    b, _, h, w = image.shape
    ys = torch.arange(h, dtype=image.dtype, device=image.device) / h
    xs = torch.arange(w, dtype=image.dtype, device=image.device) / h
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.cat([image, xx.expand(b, 1, h, w), yy.expand(b, 1, h, w)], 1)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2))


class TinyI2P(nn.Module):
    """Small CNN image → tri-plane: strided encoder, a global bottleneck (so the xz/zx planes, which
    are not aligned with the image, can be laid out), and an upsampling decoder with an image skip."""

    def __init__(self, in_size: int = 64, plane_channels: int = 16, plane_resolution: int = 64,
                 width: int = 32, latent: int = 256):
        super().__init__()
        if in_size % 8 or plane_resolution % 8:
            raise ValueError(f"TinyI2P needs in_size and plane_resolution divisible by 8, got {in_size}, "
                             f"{plane_resolution}")
        self.in_size, self.c, self.r = in_size, plane_channels, plane_resolution
        w = width
        self.enc = nn.Sequential(_conv(5, w, 2), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 2))  # → in/8
        g = in_size // 8
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * g * g, latent), nn.LeakyReLU(0.2))
        self.s0 = 8
        self.from_latent = nn.Linear(latent, 2 * w * self.s0 * self.s0)
        ups, ch, s = [], 2 * w, self.s0
        while s < plane_resolution:
            ups += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(ch, w)]
            ch, s = w, s * 2
        self.dec = nn.Sequential(*ups)
        self.skip = _conv(2 * w, w)
        self.out = nn.Conv2d(w + w, 3 * plane_channels, 3, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) image in [-1, 1] → tri-plane (B, 3, C, R, R)."""
        x = F.interpolate(image, size=(self.in_size, self.in_size), mode="bilinear", align_corners=False,
                          antialias=image.shape[-1] > self.in_size)
        f = self.enc(with_coordinates(x))
        z = self.from_latent(self.to_latent(f)).reshape(f.shape[0], -1, self.s0, self.s0)
        d = self.dec(z)
        sk = F.interpolate(self.skip(f), size=d.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(torch.cat([d, sk], 1)).reshape(-1, 3, self.c, self.r, self.r)


class TinySR(nn.Module):
    """Small upsampler: raw render (rgb + features at r²) → rgb at `out_size`², residual on the
    bilinearly upsampled raw rgb."""

    def __init__(self, feature_channels: int = 16, out_size: int = 64, width: int = 32):
        super().__init__()
        self.out_size = out_size
        self.net = nn.Sequential(_conv(feature_channels, width), _conv(width, width), nn.Conv2d(width, 3, 3, 1, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, rgb: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Raw rgb (B, 3, r, r) in [-1, 1] and features (B, C, r, r) → (B, 3, S, S) in [-1, 1]."""
        size = (self.out_size, self.out_size)
        up = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        base = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        return (base + self.net(up)).clamp(-1, 1)


class TinyAdapter(nn.Module):
    """Small CNN motion adapter: 9-channel SECC (B, 9, H, W) → residual tri-plane (B, 3, C, R, R),
    zero at initialisation (the head starts as the I2P plane)."""

    def __init__(self, in_size: int = 64, plane_channels: int = 16, plane_resolution: int = 64, width: int = 32):
        super().__init__()
        self.in_size, self.c, self.r = in_size, plane_channels, plane_resolution
        self.pre = nn.Conv2d(9, 3, 1)
        self.body = nn.Sequential(_conv(3, width, 2), _conv(width, 2 * width, 2), _conv(2 * width, 2 * width),
                                  nn.Upsample(size=(plane_resolution, plane_resolution), mode="bilinear",
                                              align_corners=False),
                                  _conv(2 * width, width))
        self.out = nn.Conv2d(width, 3 * plane_channels, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, secc: torch.Tensor) -> torch.Tensor:
        """(B, 9, H, W) SECC maps in [-1, 1] → residual plane (B, 3, C, R, R)."""
        if secc.ndim != 4 or secc.shape[1] != 9:
            raise ValueError(f"the motion adapter takes (B, 9, H, W) SECC maps, got {tuple(secc.shape)}")
        x = F.interpolate(secc, size=(self.in_size, self.in_size), mode="bilinear", align_corners=False)
        return self.out(self.body(self.pre(x))).reshape(-1, 3, self.c, self.r, self.r)


class HeadRenderer(nn.Module):
    """I2P + tri-plane decoder + volume renderer + SR; `adapter` (optional) adds the motion residual."""

    def __init__(self, i2p: nn.Module, decoder: TriplaneDecoder, sr: nn.Module, options: RenderOptions,
                 adapter: nn.Module | None = None):
        super().__init__()
        self.i2p, self.decoder, self.sr, self.adapter = i2p, decoder, sr, adapter
        self.options = options

    def planes(self, image: torch.Tensor) -> torch.Tensor:
        """The canonical tri-plane of (B, 3, H, W) source images in [-1, 1] (cache it per source)."""
        return self.i2p(image)

    def render(self, planes: torch.Tensor, cameras: torch.Tensor, secc: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Render planes (+ adapter(secc) when given) for (B, 25) cameras: raw rgb/features/depth/opacity
        at the render size and `sr` (B, 3, S, S) in [-1, 1]."""
        if secc is not None:
            if self.adapter is None:
                raise ValueError("SECC maps were given but this model has no motion adapter")
            planes = planes + self.adapter(secc)
        out = self._render_planes(planes, cameras, generator)
        out["planes"] = planes
        return out

    def forward(self, image: torch.Tensor, cameras: torch.Tensor, secc: torch.Tensor | None = None,
                seeds: torch.Tensor | None = None, train_i2p: bool = True, density: bool = False
                ) -> dict[str, torch.Tensor]:
        """Training entry (what DDP wraps): planes of `image`, rendered at K cameras per sample.

        cameras (B, K, 25) → "sr" (B, K, 3, S, S), "rgb" (B, K, 3, r, r), "opacity" (B, K, 1, r, r), and
        "density_reg" (B,) with `density`. With `seeds` (B,) every sample draws its render jitter and
        regulariser points from its own generator, so a batch split over workers renders exactly as
        the whole batch does on one (the runner draws the seeds for the global batch)."""
        if train_i2p:
            planes = self.planes(image)
        else:
            with torch.no_grad():
                planes = self.planes(image)
        b, k = cameras.shape[:2]
        if secc is not None:
            if self.adapter is None:
                raise ValueError("SECC maps were given but this model has no motion adapter")
            planes = planes + self.adapter(secc)
        keys = ("sr", "rgb", "opacity")
        if seeds is None:
            out = [self._render_planes(planes, cameras[:, j], None) for j in range(k)]
            res = {n: torch.stack([o[n] for o in out], 1) for n in keys}
            if density:
                res["density_reg"] = self.density_regulariser(planes, None, per_sample=True)
            return res
        rows, regs = [], []
        for i in range(b):
            s = int(seeds[i])
            outs = [self._render_planes(planes[i:i + 1], cameras[i:i + 1, j],
                                        torch.Generator(device=planes.device).manual_seed(s * 31 + j))
                    for j in range(k)]
            rows.append({n: torch.stack([o[n] for o in outs], 1) for n in keys})
            if density:
                regs.append(self.density_regulariser(planes[i:i + 1], torch.Generator().manual_seed(s * 31 + 29)))
        res = {n: torch.cat([r[n] for r in rows]) for n in keys}
        if density:
            res["density_reg"] = torch.stack(regs)
        return res

    def _render_planes(self, planes: torch.Tensor, cameras: torch.Tensor, generator) -> dict[str, torch.Tensor]:
        opt = self.options
        if not self.training and opt.perturb:
            opt = RenderOptions(**{**opt.__dict__, "perturb": False})
        out = render(planes, cameras, self.decoder, opt, generator)
        out["sr"] = self.sr(out["rgb"], out["features"])
        return out

    def density_regulariser(self, planes: torch.Tensor, gen: torch.Generator | None = None, n: int = 1000,
                            std: float = 5e-3, per_sample: bool = False) -> torch.Tensor:
        """L1 between σ at `n` random points in the box and at the points moved by N(0, std) (world units);
        a scalar, or (B,) with `per_sample`."""
        from preprocessing.triplane import triplane_field
        b = planes.shape[0]
        pts = (torch.rand(b, n, 3, generator=gen) - 0.5) * self.options.box_warp
        pts = pts.to(planes)
        field = triplane_field(planes, self.decoder, self.options.box_warp)
        s0, _ = field(pts)
        s1, _ = field(pts + torch.randn(pts.shape, generator=gen).to(planes) * std)
        d = (s0 - s1).abs()
        return d.reshape(b, -1).mean(1) if per_sample else d.mean()


# ---------------------------------------------------------------------------------------------
# paper sizes (for the parameter-count check and GPU runs; ImageNet initialisations are user files)
# ---------------------------------------------------------------------------------------------

class PaperSR(nn.Module):
    """EG3D's ×4 head SR with constant (all-ones) styles: `preprocessing.eg3d.generator.SuperResolution`."""

    def __init__(self, render_resolution: int = 128, out_size: int = 512, feature_channels: int = 32):
        super().__init__()
        from preprocessing.eg3d.generator import EG3DConfig, SuperResolution
        base = EG3DConfig.paper()
        cfg = base.replace(plane_channels=feature_channels, img_resolution=out_size,
                           render=RenderOptions(**{**base.render.__dict__, "resolution": render_resolution}))
        self.w_dim = cfg.w_dim
        self.net = SuperResolution(cfg)

    def forward(self, rgb: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Raw rgb (B, 3, r, r) and features (B, C, r, r) → (B, 3, 4r, 4r)."""
        ws = torch.ones(rgb.shape[0], 1, self.w_dim, dtype=rgb.dtype, device=rgb.device)
        return self.net(rgb, features, ws, noise_mode="none")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
