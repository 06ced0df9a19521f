"""Benchmark `process_clip`: frames/s per core for each stage and in total, and peak memory.

Synthesises a talking-face clip (default 10 s at 512²) with ground truth, makes a long clip
(default 2 min) by looping it with ffmpeg (stream copy, no re-encode), and processes each in a fresh
single-threaded child process (OMP/MKL/numba/OpenCV threads = 1, so figures are per core). Reports
per stage: seconds, frames/s and share of the total; the child's peak RSS; and the encoded bytes
the record holds. The short clip is the baseline the long one is compared with: equal frames/s and a
peak-RSS difference close to the extra encoded bytes mean memory does not grow with length beyond
the record's own (encoded) payload.

    python benchmarks/clip.py [--seconds 10] [--long-seconds 120] [--skip-long] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                 "NUMBA_NUM_THREADS": "1"}


def child(path: str, preset: str | None) -> None:
    import resource

    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    from pipeline.config import load_config
    from pipeline.process import make_processor

    cfg = load_config(preset)
    t = time.perf_counter()
    proc = make_processor(cfg)
    load_s = time.perf_counter() - t
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec = proc(path)
    print(json.dumps({"n_frames": rec.n_frames, "timings": rec.timings, "load_s": load_s,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_after_load_mb": rss_before, "encoded_mb": rec.encoded_bytes() / 2**20,
                      "face_fraction": rec.face_fraction}))


def run_child(path: Path, preset: str | None) -> dict:
    env = {**os.environ, **SINGLE_THREAD}
    cmd = [sys.executable, __file__, "--child", str(path)] + (["--preset", preset] if preset else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed on {path}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_clips(work: Path, seconds: float, long_seconds: float | None) -> tuple[Path, Path | None]:
    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model
    from preprocessing.video import ffmpeg_exe

    found = sorted((work / "corpus").glob("*/clip000.mp4"))
    if not found:
        generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=1, clips=1, seconds=seconds, size=512),
                        work / "corpus")
        found = sorted((work / "corpus").glob("*/clip000.mp4"))
    short = found[0]
    if not long_seconds:
        return short, None
    long = work / f"long_{int(long_seconds)}s.mp4"
    if not long.is_file():
        loops = max(0, int(round(long_seconds / seconds)) - 1)
        subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-stream_loop", str(loops), "-i", str(short),
                        "-c", "copy", str(long)], check=True)
    return short, long


def report(name: str, r: dict) -> None:
    n, tm = r["n_frames"], r["timings"]
    total = tm["total"]
    print(f"\n{name}: {n} frames ({n / 25:.0f} s), face found in {r['face_fraction']:.0%} of frames")
    print(f"  {'stage':<12}{'seconds':>9}{'frames/s':>10}{'share':>8}")
    for stage, s in sorted(((k, v) for k, v in tm.items() if k != "total"), key=lambda kv: -kv[1]):
        print(f"  {stage:<12}{s:>9.2f}{n / max(s, 1e-9):>10.1f}{s / total:>8.1%}")
    print(f"  {'total':<12}{total:>9.2f}{n / total:>10.2f}{1:>8.0%}")
    print(f"  model loading {r['load_s']:.1f} s; peak RSS {r['peak_rss_mb']:.0f} MiB "
          f"(after loading {r['rss_after_load_mb']:.0f} MiB); encoded images in the record {r['encoded_mb']:.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--long-seconds", type=float, default=120.0)
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--keep", type=Path, help="keep the synthetic clips here (reused by later runs)")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.preset)
        return
    with tempfile.TemporaryDirectory() as td:
        work = args.keep or Path(td)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        short, long = make_clips(work, args.seconds, None if args.skip_long else args.long_seconds)
        print(f"process_clip benchmark, one core per clip (clips ready in {time.perf_counter() - t:.0f} s)")
        r_short = run_child(short, args.preset)
        report(f"short clip {short.name}", r_short)
        if long is not None:
            r_long = run_child(long, args.preset)
            report(f"long clip {long.name}", r_long)
            fps_s = r_short["n_frames"] / r_short["timings"]["total"]
            fps_l = r_long["n_frames"] / r_long["timings"]["total"]
            extra = r_long["encoded_mb"] - r_short["encoded_mb"]
            print(f"\nlong vs short: frames/s ratio {fps_l / fps_s:.2f}; peak RSS +{r_long['peak_rss_mb'] - r_short['peak_rss_mb']:.0f}"
                  f" MiB for {r_long['n_frames'] / r_short['n_frames']:.0f}x the frames, of which encoded "
                  f"images account for {extra:.0f} MiB")


if __name__ == "__main__":
    main()
