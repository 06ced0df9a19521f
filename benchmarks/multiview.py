"""Benchmark: multi-view teacher throughput.

- Morphable teacher: samples/s per core at 512² (`--views` views per sample, one torch thread,
  the numba rasteriser single-threaded): sample a head, render every view (image, exact depth,
  mask) and the antialiased 128² raw image. Uses the BFM when installed, else the BFM-sized
  synthetic model (printed).
- EG3D generator at the paper size (`EG3DConfig.paper()`: 256² planes, 128² rays with 48 + 48
  samples, ×4 SR to 512²) with random weights of the official shapes: seconds per sample (mapping,
  synthesis, rendering and SR of one view), on the CPU with `--threads` threads, and on CUDA when a
  GPU is present.

    python benchmarks/multiview.py [--samples N] [--views V] [--eg3d-samples M] [--threads T] [--json OUT]

Times are the best of the repeated runs (the machine is shared) with the median beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_morphable(samples: int, views: int, size: int) -> dict:
    import torch

    from preprocessing.multiview import CameraDistribution, MorphableTeacher, downsample, view_camera
    from pipeline.assets import resolve_face_model
    from pipeline.config import load_config

    torch.set_num_threads(1)
    model = resolve_face_model(load_config())
    teacher = MorphableTeacher(model, size=size)
    rng = np.random.default_rng(0)
    dist = CameraDistribution()
    cams = [np.stack([view_camera(rng, dist)[0] for _ in range(views)]) for _ in range(samples + 1)]
    teacher.render(teacher.sample(0), cams[0])  # numba compile / warm-up
    times = []
    for i in range(samples):
        t0 = time.perf_counter()
        v = teacher.render(teacher.sample(i + 1), cams[i + 1])
        downsample(v.image, 128)
        times.append(time.perf_counter() - t0)
    best, med = min(times), statistics.median(times)
    return {"teacher": "morphable", "size": size, "views": views,
            "face_model": "synthetic" if model.synthetic else "bfm",
            "s_per_sample_best": best, "s_per_sample_median": med, "samples_per_s_per_core": 1.0 / med,
            "samples_per_s_per_core_best": 1.0 / best}


def bench_eg3d(samples: int, threads: int, device: str) -> dict:
    import torch

    from preprocessing.eg3d.generator import EG3DConfig, TriPlaneGenerator
    from preprocessing.multiview import look_at_camera

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = TriPlaneGenerator(EG3DConfig.paper()).eval().to(device)
    cam = torch.as_tensor(look_at_camera(0.0, 0.2, 2.7))[None].to(device)
    times, stages = [], []
    with torch.no_grad():
        for i in range(samples + 1):
            z = torch.randn(1, 512, generator=torch.Generator().manual_seed(i)).to(device)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            ws = gen.mapping(z, cam, truncation_psi=0.7)
            planes = gen.planes(ws)
            sync()
            t1 = time.perf_counter()
            out = gen.synthesis(ws, cam, planes=planes)
            sync()
            t2 = time.perf_counter()
            if i > 0:  # the first run warms up
                times.append(t2 - t0)
                stages.append((t1 - t0, t2 - t1))
    assert out["image"].shape == (1, 3, 512, 512)
    k = int(np.argmin(times))
    return {"teacher": "eg3d", "device": device, "threads": threads if device == "cpu" else None,
            "params": int(sum(p.numel() for p in gen.parameters())), "s_per_sample_best": min(times),
            "s_per_sample_median": statistics.median(times), "backbone_s": stages[k][0],
            "render_and_sr_s": stages[k][1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8, help="morphable samples timed")
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--eg3d-samples", type=int, default=2, help="EG3D samples timed (0 = skip)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for EG3D on the CPU")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results = [bench_morphable(args.samples, args.views, args.size)]
    r = results[-1]
    print(f"morphable teacher, {r['face_model']} model, {r['views']} views at {r['size']}²: "
          f"{r['samples_per_s_per_core']:.2f} samples/s per core (median {r['s_per_sample_median'] * 1e3:.0f} ms, "
          f"best {r['s_per_sample_best'] * 1e3:.0f} ms per sample)")
    if args.eg3d_samples > 0:
        import torch
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for dev in devices:
            n = args.eg3d_samples if dev == "cpu" else max(args.eg3d_samples, 5)
            results.append(bench_eg3d(n, args.threads, dev))
            r = results[-1]
            where = f"CPU, {r['threads']} threads" if dev == "cpu" else torch.cuda.get_device_name(0)
            print(f"EG3D generator, paper size ({r['params'] / 1e6:.1f}M params, random weights), {where}: "
                  f"{r['s_per_sample_best']:.2f} s per sample (median {r['s_per_sample_median']:.2f} s; "
                  f"mapping + planes {r['backbone_s']:.2f} s, render + SR {r['render_and_sr_s']:.2f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
