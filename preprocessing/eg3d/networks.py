"""StyleGAN2 mapping and synthesis networks (the EG3D backbone), plain torch.

Names follow the published `training.networks_stylegan2` modules: `mapping.embed`, `mapping.fc{i}`,
`mapping.w_avg`, `synthesis.b{res}.{const,conv0,conv1,torgb,resample_filter}`; block b4 has a
learned constant and one conv, every other block a ×2 upsampling conv0 and a conv1, each block a
ToRGB whose outputs are summed with the upsampled image of the previous block ("skip").
"""

from __future__ import annotations

import math

import torch

from preprocessing.eg3d.layers import (FullyConnectedLayer, SynthesisLayer, ToRGBLayer, normalize_2nd_moment,
                                       setup_filter, upsample2d)


class MappingNetwork(torch.nn.Module):
    """z (B, z_dim) and camera c (B, c_dim) → ws (B, num_ws, w_dim), with truncation towards w_avg."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        embed = w_dim if c_dim > 0 else 0
        features = [z_dim + embed] + [w_dim] * num_layers
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                                        lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, 1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cut], truncation_psi), x[:, cut:]], 1)
        return x


class SynthesisBlock(torch.nn.Module):
    """One resolution of the skip-architecture synthesis network: (x, img, ws) → (x, img) at `resolution`."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, resample_filter=(1, 3, 3, 1), conv_clamp: float | None = None, **_ignored):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.img_channels, self.is_last = resolution, img_channels, is_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_torgb = 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str = "const",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if ws.shape[1] != self.num_conv + self.num_torgb:
            raise ValueError(f"block b{self.resolution} takes {self.num_conv + self.num_torgb} ws, got {ws.shape[1]}")
        w = iter(ws.unbind(1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = self.conv0(x, next(w), noise_mode=noise_mode, generator=generator)
        x = self.conv1(x, next(w), noise_mode=noise_mode, generator=generator)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w)).to(torch.float32)
        return x, (img + y if img is not None else y)


def block_channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature channels of the block at `resolution`: min(channel_base // resolution, channel_max)."""
    return min(channel_base // resolution, channel_max)


class SynthesisNetwork(torch.nn.Module):
    """ws (B, num_ws, w_dim) → image (B, img_channels, R, R) through blocks b4 … bR."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: float | None = None, **_ignored):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if 2 ** log2 != img_resolution or img_resolution < 4:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        self.num_ws = 0
        for res in self.block_resolutions:
            cin = block_channels(res // 2, channel_base, channel_max) if res > 4 else 0
            block = SynthesisBlock(cin, block_channels(res, channel_base, channel_max), w_dim, res, img_channels,
                                   is_last=res == img_resolution, conv_clamp=conv_clamp)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, noise_mode: str = "const",
                generator: torch.Generator | None = None) -> torch.Tensor:
        ws = ws.to(torch.float32)
        x = img = None
        idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, idx, block.num_conv + block.num_torgb), noise_mode, generator)
            idx += block.num_conv
        return img
