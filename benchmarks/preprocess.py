"""Benchmark: `r3p preprocess` on Ray Data against a plain sequential loop over the processor.

On one synthetic corpus (3 identities x `--clips` clips of `--seconds` s at 512², `--preset tiny`):

- seq:  a plain loop `make_processor(cfg)` + `proc(path)` per clip, pinned to one core
        (`taskset`, torch/OpenMP threads 1); model loading counted, no Parquet written.
- ray1: the whole job (manifest, actor start, processing, Parquet shards, stats) on a local Ray
        with 1 CPU and 1 actor, every Ray process pinned to the same single core.
- ray1 free: 1 Ray CPU and 1 actor, but the driver and Ray's daemons may use the second core.
- ray2: the same on 2 CPUs (2 actors, both cores).

Each configuration runs in its own process after a warm-up run (numba/librosa caches on disk).
Ray start-up (`ray.init`, a one-off per cluster) is reported but not counted in the job time.
Reported: frames/s per core, Ray overhead at one CPU (ray1 / seq − 1; target ≤ 10 %; also for ray1
free), speed-up 1 → 2 cores (ray1 / ray2) and scaling efficiency (speed-up / 2; target ≥ 85 %), share of time per stage (from
the records' timings), peak RSS per actor, and the dataset size per minute of video.

    python benchmarks/preprocess.py [--clips 3] [--seconds 2.0] [--out out/bench/preprocess]

Exit status 0 when both targets are met.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # the sequential baseline counts its imports too, as an actor's start-up does

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_OVERHEAD = 0.10
TARGET_EFFICIENCY = 0.85


def _child(args: argparse.Namespace) -> None:
    """One measured configuration, in this (pinned) process; prints a JSON line."""
    from pipeline.config import load_config

    cfg = load_config("tiny", overrides=args.set)
    videos = sorted(str(p) for p in Path(args.corpus).glob("*/*.mp4"))
    if args.mode == "seq":
        import resource

        from pipeline.actor import limit_threads
        from pipeline.process import make_processor

        limit_threads(1)  # the same thread limits as an actor with num_cpus=1

        t0 = T_START
        proc = make_processor(cfg)
        frames, stages = 0, {}
        for v in videos[: args.limit or None]:
            try:
                rec = proc(v)
            except Exception as exc:  # noqa: BLE001 - a failed clip still costs its time
                print(f"seq: {v}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            frames += rec.n_frames
            for k, s in rec.timings.items():
                stages[k] = stages.get(k, 0.0) + s
        wall = time.perf_counter() - t0
        out = {"mode": "seq", "frames": frames, "wall_s": wall,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "stages": stages}
    else:
        import ray

        from pipeline.preprocess import run_preprocess

        from pipeline.preprocess import use_loopback

        use_loopback()
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        init_s = time.perf_counter() - t0
        cfg = load_config("tiny", overrides=args.set + [f"preprocess.actors={args.cpus}", "preprocess.shard_size=2",
                                                        "preprocess.actor_num_cpus=1"])
        import resource

        t1 = time.perf_counter()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        s = run_preprocess(args.corpus, args.out, cfg, progress=None)
        wall = time.perf_counter() - t1
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        ray.shutdown()
        out = {"mode": args.mode, "cpus": args.cpus, "frames": s["frames"], "wall_s": wall, "ray_init_s": init_s,
               "driver_cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
               "actor_work_s": s["work_seconds"],
               "ok": s["ok"], "failed": s["failed"], "stage_share": s["stage_share"],
               "peak_rss_mb_per_actor": s["peak_rss_mb_per_worker"], "mib_per_minute": s["mib_per_minute_of_video"],
               "bytes": s["bytes"], "video_seconds": s["video_seconds"]}
    print("RESULT " + json.dumps(out), flush=True)


def _run(mode: str, cores: str, corpus: Path, out: Path, extra: list[str], cpus: int = 1, limit: int = 0) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    if mode == "seq":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = ["taskset", "-c", cores, sys.executable, __file__, "--child", "--mode", mode, "--cpus", str(cpus),
           "--corpus", str(corpus), "--out", str(out), "--limit", str(limit)] + [a for s in extra for a in ("--set", s)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if res.returncode != 0 or line is None:
        raise SystemExit(f"{mode} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(line[7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=3, help="clips per identity (3 identities)")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--out", default="out/bench/preprocess")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--cpus", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return 0

    import shutil

    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model

    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores")
        return 1
    out = (ROOT / args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    corpus = out / "corpus"
    t0 = time.perf_counter()
    # seed 1: dlib finds every synthetic face of these identities
    generate_corpus(synthetic_face_model(0, "bfm"),
                    SynthSpec(identities=3, clips=args.clips, seconds=args.seconds, size=512, seed=1), corpus)
    print(f"corpus: {3 * args.clips} clips x {args.seconds:g} s at 512² in {time.perf_counter() - t0:.0f} s "
          f"({corpus})", flush=True)
    _run("seq", "0", corpus, out / "warm", args.set + [], limit=1)  # warm-up: numba/librosa caches on disk
    seq = _run("seq", "0", corpus, out / "seq", args.set)
    print(f"seq : {seq['frames']} frames in {seq['wall_s']:.1f} s (1 core, imports and model loading included)",
          flush=True)
    ray1 = _run("ray", "0", corpus, out / "ray1", args.set, cpus=1)
    print(f"ray1: {ray1['frames']} frames in {ray1['wall_s']:.1f} s (1 core for everything: actor, driver, Ray "
          f"daemons; actor busy {ray1['actor_work_s']:.1f} s, driver CPU {ray1['driver_cpu_s']:.1f} s; ray.init "
          f"{ray1['ray_init_s']:.1f} s not counted)", flush=True)
    ray1f = _run("ray", "0,1", corpus, out / "ray1f", args.set, cpus=1)
    print(f"ray1 (1 Ray CPU, driver and daemons free to use the other core): {ray1f['frames']} frames in "
          f"{ray1f['wall_s']:.1f} s (actor busy {ray1f['actor_work_s']:.1f} s)", flush=True)
    ray2 = _run("ray", "0,1", corpus, out / "ray2", args.set, cpus=2)
    print(f"ray2: {ray2['frames']} frames in {ray2['wall_s']:.1f} s (2 cores; actors busy {ray2['actor_work_s']:.1f} s,"
          f" driver CPU {ray2['driver_cpu_s']:.1f} s)", flush=True)
    if not (seq["frames"] == ray1["frames"] == ray1f["frames"] == ray2["frames"] > 0):
        print(f"frame counts differ: seq {seq['frames']}, ray1 {ray1['frames']}, ray2 {ray2['frames']}")
        return 1
    overhead = ray1["wall_s"] / seq["wall_s"] - 1
    overhead_f = ray1f["wall_s"] / seq["wall_s"] - 1
    speedup = ray1["wall_s"] / ray2["wall_s"]
    eff = speedup / 2
    report = {
        "frames": seq["frames"], "clips": 3 * args.clips, "seconds_per_clip": args.seconds,
        "seq_wall_s": seq["wall_s"], "ray1_wall_s": ray1["wall_s"], "ray1_free_wall_s": ray1f["wall_s"],
        "ray2_wall_s": ray2["wall_s"],
        "actor_work_s": {"ray1": ray1["actor_work_s"], "ray1_free": ray1f["actor_work_s"], "ray2": ray2["actor_work_s"]},
        "driver_cpu_s": {"ray1": ray1["driver_cpu_s"], "ray2": ray2["driver_cpu_s"]},
        "ray_init_s": {"ray1": ray1["ray_init_s"], "ray2": ray2["ray_init_s"]},
        "fps_per_core": {"seq": seq["frames"] / seq["wall_s"], "ray1": ray1["frames"] / ray1["wall_s"],
                         "ray2": ray2["frames"] / ray2["wall_s"] / 2},
        "ray_overhead_1cpu": overhead, "ray_overhead_1cpu_daemons_elsewhere": overhead_f,
        "speedup_1_to_2": speedup, "scaling_efficiency": eff,
        "stage_share": ray2["stage_share"], "peak_rss_mb_per_actor": {**ray1["peak_rss_mb_per_actor"],
                                                                        **ray2["peak_rss_mb_per_actor"]},
        "seq_peak_rss_mb": seq["peak_rss_mb"], "mib_per_minute_of_video": ray2["mib_per_minute"],
        "targets": {"overhead_max": TARGET_OVERHEAD, "efficiency_min": TARGET_EFFICIENCY},
    }
    (out / "preprocess.json").write_text(json.dumps(report, indent=2))
    fps = report["fps_per_core"]
    print(f"frames/s per core: seq {fps['seq']:.2f}, ray 1 CPU {fps['ray1']:.2f}, ray 2 CPUs {fps['ray2']:.2f}")
    print(f"Ray overhead at 1 CPU: {100 * overhead:+.1f} % with everything on one core, {100 * overhead_f:+.1f} % "
          f"with the driver and Ray's daemons on the other core (target <= {100 * TARGET_OVERHEAD:.0f} %)")
    print(f"speed-up 1 -> 2 CPUs: {speedup:.2f}x, scaling efficiency {100 * eff:.0f} % "
          f"(target >= {100 * TARGET_EFFICIENCY:.0f} %)")
    print("time per stage: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in report["stage_share"].items()
                                         if k != "total" and v >= 0.005))
    print("peak RSS per actor: " + ", ".join(f"{v:.0f} MiB" for v in report["peak_rss_mb_per_actor"].values())
          + f" (sequential loop {seq['peak_rss_mb']:.0f} MiB)")
    print(f"dataset size: {report['mib_per_minute_of_video']:.1f} MiB per minute of video; report {out}/preprocess.json")
    return 0 if overhead <= TARGET_OVERHEAD and eff >= TARGET_EFFICIENCY else 1


if __name__ == "__main__":
    sys.exit(main())
