"""LPIPS from stand-in weight files in the user's format: torchvision AlexNet names + lpips v0.1 head names."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation.metrics import MetricError, merge_all
from evaluation.metrics.lpips import LPIPS

torch.set_num_threads(1)  # the machine is shared; one thread avoids oversubscription

ALEXNET = {  # torchvision alexnet: features index -> (cout, cin, k, stride, pad); classifier is in the file too
    0: (64, 3, 11, 4, 2), 3: (192, 64, 5, 1, 2), 6: (384, 192, 3, 1, 1), 8: (256, 384, 3, 1, 1), 10: (256, 256, 3, 1, 1)}


def write_standins(folder, seed=0):
    g = torch.Generator().manual_seed(seed)
    trunk = {}
    for i, (co, ci, k, _, _) in ALEXNET.items():
        trunk[f"features.{i}.weight"] = torch.randn(co, ci, k, k, generator=g) * (2.0 / (ci * k * k)) ** 0.5
        trunk[f"features.{i}.bias"] = torch.randn(co, generator=g) * 0.01
    for i, (o, n) in {1: (4096, 9216), 4: (4096, 4096), 6: (1000, 4096)}.items():
        trunk[f"classifier.{i}.weight"] = torch.zeros(o, 1)  # shape irrelevant: not loaded
        trunk[f"classifier.{i}.bias"] = torch.zeros(o)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 0.1
             for i, c in enumerate((64, 192, 384, 256, 256))}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(trunk, folder / "alexnet-owt-7be5be79.pth")
    torch.save(heads, folder / "alex.pth")
    return trunk, heads


def direct_lpips(a, b, trunk, heads):
    """The published definition written out with functional ops: a, b uint8 (H, W, 3)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(img):
        x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 * 2 - 1 - shift) / scale
        outs = []
        for i, (_, _, _, s, p) in ALEXNET.items():
            if i in (3, 6):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(F.conv2d(x, trunk[f"features.{i}.weight"], trunk[f"features.{i}.bias"], s, p))
            outs.append(x)
        return outs

    total = 0.0
    for j, (x, y) in enumerate(zip(feats(a), feats(b))):
        x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
        y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
        total += float((((x - y) ** 2) * heads[f"lin{j}.model.1.weight"]).sum(1).mean())
    return total


def test_lpips_matches_the_definition_and_merges(tmp_path):
    trunk, heads = write_standins(tmp_path / "lpips")
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (4, 72, 64, 3), dtype=np.uint8)
    gen = np.clip(ref.astype(int) + rng.integers(-40, 41, ref.shape), 0, 255).astype(np.uint8)
    m = LPIPS(tmp_path / "lpips", batch_size=3)
    d = m.distances(gen, ref)
    expected = [direct_lpips(g, r, trunk, heads) for g, r in zip(gen, ref)]
    np.testing.assert_allclose(d, expected, rtol=1e-4)
    np.testing.assert_allclose(m.distances(ref, ref), 0.0, atol=1e-7)
    np.testing.assert_allclose(m.distances(ref, gen), d, rtol=1e-5)  # symmetric
    m.update(gen, ref)
    parts = []
    for idx in ([0], [1, 2, 3]):
        p = LPIPS(tmp_path / "lpips")
        p.update(gen[idx], ref[idx])
        parts.append(pickle.loads(pickle.dumps(p)))  # shipped without its network
    r = merge_all(parts).compute()["LPIPS"]
    assert r.value == pytest.approx(m.compute()["LPIPS"].value, rel=1e-5)  # float32 batches differ
    assert r.model.startswith("lpips v0.1 alex + alexnet-owt-7be5be79.pth") and not r.higher_is_better


def test_lpips_needs_both_files(tmp_path):
    write_standins(tmp_path / "lpips")
    (tmp_path / "lpips" / "alex.pth").unlink()
    with pytest.raises(MetricError, match="alex.pth"):
        LPIPS(tmp_path / "lpips")
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "lpips" / "alex.pth")
    with pytest.raises(MetricError, match="lin1"):
        LPIPS(tmp_path / "lpips")
