"""LPIPS (v0.1, AlexNet trunk) from the user's weight files; lower is better.

Needs two files (nothing ships them offline): torchvision's ImageNet AlexNet
`alexnet-owt-7be5be79.pth` (the trunk) and the LPIPS v0.1 linear heads `alex.pth` (from the
`lpips` package's weights/v0.1 folder). Definition (Zhang et al. 2018, the lpips package):
inputs in [-1, 1], shifted by (−0.030, −0.088, −0.188) and divided by (0.458, 0.448, 0.450); the
five ReLU outputs of AlexNet's features (conv1…conv5, 64/192/384/256/256 channels) are unit-
normalised over channels (eps 1e-10), squared differences weighted by the 1×1 heads, averaged
over space and summed over layers. One value per frame; the metric is the mean over frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import MeanMetric, MetricError
from .inception import file_digest, read_torch_state

TRUNK_FILE = "alexnet-owt-7be5be79.pth"
HEADS_FILE = "alex.pth"
CHANNELS = (64, 192, 384, 256, 256)


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet's `features` (same indices, so `features.N.weight` loads by name) → 5 ReLU outputs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (1, 4, 7, 9, 11):
                outs.append(x)
        return outs


class LPIPSNet(nn.Module):
    """LPIPS distance (N,) between image batches in [-1, 1], (N, 3, H, W)."""

    def __init__(self):
        super().__init__()
        self.trunk = AlexNetFeatures()
        self.heads = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.trunk((a - self.shift) / self.scale)
        fb = self.trunk((b - self.shift) / self.scale)
        total = 0.0
        for head, x, y in zip(self.heads, fa, fb):
            x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + head((x - y) ** 2).mean((2, 3))
        return total.reshape(-1)


def load_lpips(folder: str | Path) -> LPIPSNet:
    """LPIPS with the AlexNet trunk and v0.1 heads from `folder` (alexnet-owt-7be5be79.pth, alex.pth)."""
    folder = Path(folder).expanduser()
    net = LPIPSNet()
    trunk = read_torch_state(folder / TRUNK_FILE, "LPIPS AlexNet trunk")
    trunk = {k: v for k, v in trunk.items() if k.startswith("features.")}  # the classifier is not used
    heads_raw = read_torch_state(folder / HEADS_FILE, "LPIPS v0.1 heads")
    heads = {}
    for i in range(len(CHANNELS)):
        key = next((k for k in (f"lin{i}.model.1.weight", f"lin{i}.model.0.weight") if k in heads_raw), None)
        if key is None:
            raise MetricError(f"{folder / HEADS_FILE} has no lin{i}.model.1.weight: not the LPIPS v0.1 alex heads")
        heads[f"{i}.weight"] = heads_raw[key]
    from .inception import load_state_dict_checked

    load_state_dict_checked(net.trunk, trunk, folder / TRUNK_FILE, "torchvision AlexNet")
    load_state_dict_checked(net.heads, heads, folder / HEADS_FILE, "LPIPS v0.1 alex heads")
    return net.eval()


class LPIPS(MeanMetric):
    """Mean per-frame LPIPS (AlexNet, v0.1) of generated vs true frames, lower is better."""

    def __init__(self, folder: str | Path, batch_size: int = 16, device: str = "cpu"):
        folder = Path(folder).expanduser()
        self.net = load_lpips(folder).to(device)
        self.device, self.batch_size = device, int(batch_size)
        super().__init__("LPIPS", f"lpips v0.1 alex + {TRUNK_FILE} (sha256 {file_digest(folder / TRUNK_FILE)})")

    def __getstate__(self):  # ship only the state between workers, not the network
        state = dict(self.__dict__)
        state["net"] = None
        return state

    @torch.no_grad()
    def distances(self, generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Per-frame LPIPS (N,) of RGB uint8 frames (N, H, W, 3)."""
        g, r = np.asarray(generated), np.asarray(reference)
        if g.ndim != 4 or g.shape[-1] != 3 or g.shape != r.shape or g.dtype != np.uint8 or r.dtype != np.uint8:
            raise MetricError(f"LPIPS: generated {g.dtype} {g.shape} and reference {r.dtype} {r.shape} must both be "
                              "RGB uint8 frames (N, H, W, 3) of one size")
        if self.net is None:
            raise MetricError("LPIPS: this state was shipped without its network; update on the worker that loaded it")
        out = []
        for i in range(0, len(g), self.batch_size):
            a = torch.from_numpy(g[i:i + self.batch_size]).permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1
            b = torch.from_numpy(r[i:i + self.batch_size]).permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1
            out.append(self.net(a, b).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def update(self, generated: np.ndarray, reference: np.ndarray) -> None:
        """Add frames: RGB uint8 (N, H, W, 3) generated and true frames."""
        self._add(self.distances(generated, reference))
