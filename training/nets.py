"""Small building blocks shared by the stage models (1-D conv encoders, gated WaveNet-style stacks)."""

from __future__ import annotations

import torch
from torch import nn


class ConvEncoder(nn.Module):
    """(B, L, C_in) sequence → (B, E) L2-normalised embedding: conv stack (optional ×2 downsampling), linear."""

    def __init__(self, in_dim: int, width: int, layers: int, length: int, embed: int, downsample: bool = False):
        super().__init__()
        self.inp = nn.Conv1d(in_dim, width, 3, padding=1)
        self.down = nn.Conv1d(width, width, 2, stride=2) if downsample else None
        self.blocks = nn.ModuleList(nn.Conv1d(width, width, 3, padding=1) for _ in range(max(0, layers - 1)))
        out_len = length // 2 if downsample else length
        self.out = nn.Linear(width * out_len, embed)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x.transpose(1, 2)))
        if self.down is not None:
            h = self.act(self.down(h))
        for conv in self.blocks:
            h = h + self.act(conv(h))
        return nn.functional.normalize(self.out(h.flatten(1)), dim=-1)


class WN(nn.Module):
    """Gated dilated residual conv stack conditioned on a per-step signal g (WaveNet style); (B, H, L) → same."""

    def __init__(self, hidden: int, kernel: int, layers: int, cond: int, dilation_rate: int = 1):
        super().__init__()
        self.convs = nn.ModuleList()
        self.conds = nn.ModuleList()
        self.outs = nn.ModuleList()
        for i in range(layers):
            d = dilation_rate ** i
            self.convs.append(nn.Conv1d(hidden, 2 * hidden, kernel, dilation=d, padding=d * (kernel - 1) // 2))
            self.conds.append(nn.Conv1d(cond, 2 * hidden, 1))
            self.outs.append(nn.Conv1d(hidden, hidden, 1))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        skip = torch.zeros_like(x)
        for conv, cond, out in zip(self.convs, self.conds, self.outs):
            a, b = (conv(x) + cond(g)).chunk(2, dim=1)
            h = out(torch.tanh(a) * torch.sigmoid(b))
            x = x + h
            skip = skip + h
        return skip


class Standardize(nn.Module):
    """x → (x − mean) / std per feature, with the statistics stored as buffers (saved with the weights)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
