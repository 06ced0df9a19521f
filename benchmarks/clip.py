"""Benchmark `process_clip`: frames/s per core for each stage and in total, peak memory, accuracy.

Synthesises a talking-face clip (default 10 s at 512²) with ground truth, makes a long clip
(default 2 min) by looping it with ffmpeg (stream copy, no re-encode), and processes each in a fresh
single-threaded child process (OMP/MKL/numba/OpenCV threads = 1, so figures are per core; the JIT
cache is warmed first, as a Ray actor does at start). Reports per stage: seconds, frames/s and share
of the total; the child's peak RSS; the encoded bytes the record holds; and, on the short clip,
accuracy against the generator's ground truth (landmark error in crop pixels, head-pose error,
mouth-opening correlation, person/head/torso IoU of the labels).

`--baseline REF` runs the same clips through the code of git revision REF (a temporary worktree,
same environment, same child) in the same invocation, and prints before/after per stage with the
speed-up ratio and the accuracy of both. The short clip is the baseline the long one is compared
with: equal frames/s and a peak-RSS difference close to the extra encoded bytes mean memory does
not grow with length beyond the record's own (encoded) payload.

    python benchmarks/clip.py [--seconds 10] [--long-seconds 120] [--skip-long] [--keep DIR]
                              [--baseline REF]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                 "NUMBA_NUM_THREADS": "1"}


def child(path: str, preset: str | None, code_root: str | None) -> None:
    if code_root:
        sys.path.insert(0, code_root)
    import resource

    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    import pipeline
    from pipeline.config import load_config
    from pipeline.jit_cache import warm_here
    from pipeline.process import make_processor

    cfg = load_config(preset)
    t = time.perf_counter()
    warm_here()
    proc = make_processor(cfg)
    load_s = time.perf_counter() - t
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec = proc(path)
    out = {"n_frames": rec.n_frames, "timings": rec.timings, "load_s": load_s,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_after_load_mb": rss_before, "encoded_mb": rec.encoded_bytes() / 2**20,
           "face_fraction": rec.face_fraction, "code": str(Path(pipeline.__file__).resolve().parents[1])}
    truth = Path(path).with_suffix(".npz")
    if truth.is_file():
        out["accuracy"] = accuracy(rec, dict(np.load(truth)))
    print(json.dumps(out))


def accuracy(rec, gt: dict) -> dict:
    """The record against the synthetic generator's ground truth (valid frames)."""
    from pipeline.demo import crop_truth_masks, iou
    from preprocessing.landmarks.tracking import CropBox, landmarks_to_crop
    from preprocessing.process import decode_image
    from preprocessing.record import SEG_HEAD, SEG_TORSO

    ok = np.asarray(rec.valid, bool)
    lm_true = landmarks_to_crop(gt["landmarks"], CropBox.from_array(rec.crop_box), rec.crop_size)
    lm_err = np.linalg.norm(rec.landmarks[ok] - lm_true[ok], axis=-1).mean()
    euler_err = np.degrees(np.abs(rec.euler[ok] - gt["coeffs"][ok, 224:227])).mean(0)
    labels = np.stack([decode_image(b) for b in rec.seg_png])
    head_t = crop_truth_masks(gt["head_mask"], rec.crop_box, rec.crop_size)
    torso_t = crop_truth_masks(gt["torso_mask"], rec.crop_box, rec.crop_size)
    return {"landmark_err_px": float(lm_err), "yaw_err_deg": float(euler_err[1]),
            "pitch_err_deg": float(euler_err[0]), "roll_err_deg": float(euler_err[2]),
            "mouth_r": float(np.corrcoef(rec.mouth_opening[ok], gt["mouth"][ok])[0, 1]),
            "person_iou": iou(labels > 0, head_t | torso_t), "head_iou": iou(labels == SEG_HEAD, head_t),
            "torso_iou": iou(labels == SEG_TORSO, torso_t)}


def run_child(path: Path, preset: str | None, code_root: Path | None = None) -> dict:
    env = {**os.environ, **SINGLE_THREAD}
    cmd = [sys.executable, __file__, "--child", str(path)] + (["--preset", preset] if preset else [])
    cmd += ["--code-root", str(code_root)] if code_root else []
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


def report_accuracy(runs: dict[str, dict]) -> None:
    names = [n for n, r in runs.items() if "accuracy" in r]
    if not names:
        return
    print(f"\n  accuracy vs ground truth  " + "".join(f"{n:>12}" for n in names))
    for key in runs[names[0]]["accuracy"]:
        print(f"  {key:<26}" + "".join(f"{runs[n]['accuracy'][key]:>12.4f}" for n in names))


def compare(before: dict, after: dict) -> None:
    """Per stage before/after seconds per frame and the speed-up ratio."""
    n0, n1 = before["n_frames"], after["n_frames"]
    t0, t1 = before["timings"], after["timings"]
    print(f"\n  {'stage':<12}{'ms/frame before':>17}{'after':>9}{'speed-up':>10}")
    for stage in sorted(set(t0) | set(t1), key=lambda k: -t0.get(k, 0.0)):
        if stage == "total":
            continue
        b, a = 1000 * t0.get(stage, 0.0) / n0, 1000 * t1.get(stage, 0.0) / n1
        print(f"  {stage:<12}{b:>17.1f}{a:>9.1f}{(b / a if a > 0 else float('inf')):>9.2f}x")
    b, a = 1000 * t0["total"] / n0, 1000 * t1["total"] / n1
    print(f"  {'total':<12}{b:>17.1f}{a:>9.1f}{b / a:>9.2f}x   ({n0 / t0['total']:.2f} -> {n1 / t1['total']:.2f} frames/s)")
    print(f"  peak RSS {before['peak_rss_mb']:.0f} -> {after['peak_rss_mb']:.0f} MiB; encoded images "
          f"{before['encoded_mb']:.1f} -> {after['encoded_mb']:.1f} MiB")


def baseline_tree(ref: str, work: Path) -> Path:
    """A git worktree of `ref` under `work` (reused when it is already there at that revision)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True, check=True).stdout.strip()
    tree = work / f"baseline-{sha[:12]}"
    if not (tree / "pipeline").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), sha], check=True,
                       capture_output=True)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child")
    ap.add_argument("--code-root")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--long-seconds", type=float, default=120.0)
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--keep", type=Path, help="keep the synthetic clips here (reused by later runs)")
    ap.add_argument("--baseline", metavar="REF", help="also run git revision REF's code on the same clips")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.preset, args.code_root)
        return
    with tempfile.TemporaryDirectory() as td:
        work = args.keep or Path(td)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        short, long = make_clips(work, args.seconds, None if args.skip_long else args.long_seconds)
        print(f"process_clip benchmark, one core per clip (clips ready in {time.perf_counter() - t:.0f} s)")
        tree = baseline_tree(args.baseline, work) if args.baseline else None

        def run(label: str, clip: Path) -> tuple[dict, dict | None]:
            """This tree (and the baseline's code) on `clip`, reported and compared."""
            base = run_child(clip, args.preset, tree) if tree else None
            ours = run_child(clip, args.preset)
            report(f"{label} clip {clip.name}", ours)
            if base:
                report(f"{label} clip {clip.name}, baseline {args.baseline}", base)
                print(f"\n{label} clip, baseline {args.baseline} -> this tree:")
                compare(base, ours)
            return ours, base

        try:
            r_short, base_short = run("short", short)
            report_accuracy({**({f"{args.baseline}": base_short} if base_short else {}), "this tree": r_short})
            if long is not None:
                r_long, _ = run("long", long)
                fps_s = r_short["n_frames"] / r_short["timings"]["total"]
                fps_l = r_long["n_frames"] / r_long["timings"]["total"]
                extra = r_long["encoded_mb"] - r_short["encoded_mb"]
                print(f"\nlong vs short: frames/s ratio {fps_l / fps_s:.2f}; peak RSS {r_long['peak_rss_mb']:.0f} vs "
                      f"{r_short['peak_rss_mb']:.0f} MiB ({r_long['peak_rss_mb'] / r_short['peak_rss_mb']:.2f}x) for "
                      f"{r_long['n_frames'] / r_short['n_frames']:.0f}x the frames, of which encoded images account "
                      f"for {extra:.0f} MiB")
        finally:
            if tree is not None and not args.keep:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


if __name__ == "__main__":
    main()
