"""Benchmark the evaluation metrics on one CPU core: per-frame / per-window cost and the Fréchet term.

Networks run with random weights of the real architectures (the same arithmetic as the real
files): FID Inception-v3 features per 512² frame, SyncNet v2 per 5-frame window (video + audio),
LPIPS (AlexNet) per 512² pair, dlib's face ResNet per face, PSNR and SSIM per 512² frame. It also
times the 2048-d Fréchet distance and KID (100 subsets of 1000) and compares the eigenvalue
Fréchet distance with pytorch-fid's scipy-sqrtm formula on a rank-deficient covariance (fewer
samples than dimensions, the usual case for per-clip FID).

    python benchmarks/metrics.py [--frames 8] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch


def timed(fn, repeat: int = 1) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8, help="frames per timed batch")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import cv2
    import scipy.linalg
    from skimage import data

    from evaluation.metrics import KernelDistance, frechet_distance
    from evaluation.metrics.identity import DlibFaceEmbedder
    from evaluation.metrics.image import psnr, ssim
    from evaluation.metrics.inception import FIDInceptionV3, InceptionFeatures
    from evaluation.metrics.lpips import LPIPS, AlexNetFeatures
    from evaluation.metrics.syncnet import SyncNetEmbedder, SyncNetV2
    from preprocessing.landmarks import make_detector

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    n = args.frames
    frames = rng.integers(0, 256, (n, 512, 512, 3), dtype=np.uint8)
    other = np.clip(frames.astype(int) + rng.integers(-20, 21, frames.shape), 0, 255).astype(np.uint8)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(FIDInceptionV3().state_dict(), tmp / "inc.pth")
        inc = InceptionFeatures(tmp / "inc.pth", batch_size=n)
        out["inception_ms_per_frame"] = 1000 * timed(lambda: inc(frames)) / n

        torch.save(SyncNetV2().state_dict(), tmp / "syncnet_v2.model")
        sync = SyncNetEmbedder(tmp / "syncnet_v2.model", batch_size=20)
        crops = rng.integers(0, 256, (25, 224, 224, 3), dtype=np.uint8)
        audio = (rng.standard_normal(25 * 640) * 3000).astype(np.int16)
        out["syncnet_ms_per_window"] = 1000 * timed(lambda: sync.embed(crops, audio)) / 20

        (tmp / "lpips").mkdir()
        torch.save(AlexNetFeatures().state_dict(), tmp / "lpips" / "alexnet-owt-7be5be79.pth")
        torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))},
                   tmp / "lpips" / "alex.pth")
        lp = LPIPS(tmp / "lpips", batch_size=n)
        out["lpips_ms_per_frame"] = 1000 * timed(lambda: lp.distances(frames, other)) / n

    img = data.astronaut()
    lm = make_detector("dlib").detect(img)[0].landmarks
    emb = DlibFaceEmbedder()
    out["dlib_embedding_ms_per_face"] = 1000 * timed(lambda: emb.embed_one(img, lm), repeat=5)
    out["psnr_ms_per_frame"] = 1000 * timed(lambda: psnr(frames, other)) / n
    out["ssim_ms_per_frame"] = 1000 * timed(lambda: ssim(frames, other)) / n

    d = 2048
    feats_a, feats_b = rng.standard_normal((500, d)), rng.standard_normal((500, d)) * 1.1 + 0.05
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    out["frechet_2048_s"] = timed(lambda: frechet_distance(mu_a, cov_a, mu_b, cov_b))
    ours = frechet_distance(mu_a, cov_a, mu_b, cov_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
        out["scipy_sqrtm_2048_s"] = time.perf_counter() - t
    diff = mu_a - mu_b
    ref = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean).real)
    out["frechet_rank_deficient_eig"] = ours
    out["frechet_rank_deficient_scipy"] = ref
    out["scipy_max_imag_diag"] = float(np.abs(np.diag(covmean).imag).max()) if np.iscomplexobj(covmean) else 0.0
    out["frechet_eig_vs_scipy_rel_diff"] = abs(ours - ref) / ref
    kid = KernelDistance(d, "KID")
    kid.update(rng.standard_normal((1200, d)).astype(np.float32), real=True)
    kid.update(rng.standard_normal((1200, d)).astype(np.float32), real=False)
    out["kid_100x1000_2048_s"] = timed(lambda: kid.compute(), repeat=1)

    width = max(map(len, out))
    for k, v in out.items():
        print(f"{k:<{width}}  {v:.4g}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
