"""Benchmark: training throughput per stage, the data path against the training step, 1 vs 2 workers.

On a ground-truth synthetic dataset (`tests/train_corpus.py`: 6 speakers x 2 clips x 6 s, written
through the dataset schema) and this machine's CPUs:

- step: samples/s of forward + backward + Adam step per stage at `tiny` and `paper` model sizes
  (in-process, one torch thread, random batches of the real example shapes; the paper batch is
  cut to `--paper-batch` so a few steps fit on a CPU; the A2M step includes the frozen SyncNet's
  sync loss);
- data: the job's Ray Dataset of the stage's examples (materialised), iterated as the workers do
  (`iter_torch_batches`, tiny batch size): decoded samples/s, against the tiny step rate (target:
  the loader at least 3x the step, so it is never the bottleneck);
- workers: the whole `r3p train` job for SyncNet (tiny, 600 steps) with 1 and with 2 Ray Train
  workers (DDP, gloo), samples/s over the fit (Ray start-up excluded, checkpoint reports included).

- head: the 3D-head stages (`benchmarks/head.py`): `i2p` and `motion` samples/s (forward + backward
  + Adam, paper batch 1) at both sizes, as ratios to the tiny SyncNet step measured in the same run
  and tiny/paper; the render head's per-frame throughput with a cached plane, split per part (I2P
  once per source, SECC maps, adapter, volume render, SR) with shares of the frame time; parameter
  counts of I2P / decoder / adapter / SR. `--quick` renders the paper size at 32² rays × 12+12
  samples (not 128² × 48+48; the model and the 512² SR are unchanged), times one paper step
  instead of two, and skips the workers section. `--device cuda` (default when available) runs
  the head section on the GPU.

    python benchmarks/train.py [--out out/bench/train] [--paper-batch 16] [--skip-workers]
                               [--only step,data,workers,head] [--quick] [--device cpu|cuda]

Exit status 0 when the data path is >= 3x the training step for every stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
SECTIONS = ("step", "data", "workers", "head")


def _info(basis, audio_dim: int = 80) -> dict:
    return {"audio": "mel", "audio_dim": audio_dim, "audio_mean": np.zeros(audio_dim), "audio_std": np.ones(audio_dim),
            "keypoints": basis.to_dict()}


def _fake_examples(stage, p, n: int, rng) -> dict[str, torch.Tensor]:
    from training.stage import ClipArrays

    t = max(n, 200)
    clip = ClipArrays("c", "s", rng.normal(size=(2 * t, 80)).astype(np.float32),
                      rng.uniform(80, 200, 2 * t).astype(np.float32), rng.normal(size=80).astype(np.float32),
                      {"exp": rng.normal(0, 0.2, (t, 64)).astype(np.float32),
                       "eye_aspect_ratio": rng.uniform(0.2, 0.3, t).astype(np.float32),
                       "mouth_opening": rng.uniform(0, 0.4, t).astype(np.float32)})
    ex = stage.examples(clip, p)
    idx = np.arange(n) % len(next(iter(ex.values())))
    return {k: torch.as_tensor(v[idx]) for k, v in ex.items()}


def step_rate(stage_name: str, size: str, batch: int | None, basis, steps: int = 4) -> dict:
    """Samples/s of forward + backward + step of one stage at one size, in-process."""
    from training.registry import get_stage

    stage = get_stage(stage_name)
    over = {"batch_size": batch} if batch else {}
    frozen = {}
    if stage_name == "a2m":
        sync = get_stage("syncnet")
        frozen = {"syncnet": sync.build(sync.params(size), _info(basis)).requires_grad_(False)}
        over["w_sync"] = 0.2
    p = stage.params(size, over)
    torch.manual_seed(0)
    model = stage.build(p, _info(basis))
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    batch_t = _fake_examples(stage, p, p.batch_size, np.random.default_rng(0))
    times = []
    for s in range(steps + 1):
        t0 = time.perf_counter()
        b = stage.prepare(dict(batch_t), s, torch.Generator().manual_seed(s), p)
        loss, _ = stage.loss(model, b, s, p, frozen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times[1:]))
    return {"stage": stage_name, "size": size, "batch": p.batch_size, "params_m": round(
        sum(q.numel() for q in model.parameters()) / 1e6, 3), "step_s": round(sec, 4),
        "samples_per_s": round(p.batch_size / sec, 1)}


def data_rate(root: Path, stage_name: str, batch: int) -> dict:
    """Decoded samples/s of the job's materialised dataset, iterated as the workers do."""
    from pipeline import shards
    from pipeline.train import build_dataset, select_clips
    from training.registry import get_stage

    stage = get_stage(stage_name)
    p = stage.params("tiny", {"syncnet": "x"} if stage_name == "a2m" else None)
    layout = shards.open_dataset(str(root))
    sel = select_clips(layout, "train")
    t0 = time.perf_counter()
    ds = build_dataset(layout, sel, stage, dict(vars(p)), "mel", 0)
    build_s = time.perf_counter() - t0
    n = ds.count()
    t0 = time.perf_counter()
    seen = 0
    for _pass in range(3):
        for b in ds.iterator().iter_torch_batches(batch_size=batch, drop_last=True, dtypes=torch.float32):
            seen += next(iter(b.values())).shape[0]
    sec = time.perf_counter() - t0
    return {"stage": stage_name, "examples": n, "build_s": round(build_s, 2), "samples_per_s": round(seen / sec, 1)}


def workers_rate(root: Path, workers: int) -> dict:
    from pipeline.config import load_config
    from pipeline.train import run_train

    cfg = load_config("tiny", overrides=[f"training.workers={workers}", "training.syncnet.steps=600",
                                         "training.checkpoint_every=600", "training.syncnet.batch_size=64"])
    s = run_train("syncnet", str(root), f"bench-w{workers}-{int(time.time())}", cfg, say=lambda m: None)
    return {"workers": workers, "fit_s": s["fit_seconds"], "samples_per_s": s["samples_per_s"]}


def head_section(baseline: dict, quick: bool, device: str) -> dict:
    """The 3D-head figures (see `benchmarks/head.py`), with ratios against `baseline` (a step_rate row)."""
    import head

    paper_steps = 1 if quick else 2
    rows = []
    for stage in ("i2p", "motion"):
        rows.append(head.head_step_rate(stage, "tiny", steps=3, device=device))
        rows.append(head.head_step_rate(stage, "paper", batch=1, steps=paper_steps, quick=quick, device=device))
    for r in rows:
        tiny = next(t for t in rows if t["stage"] == r["stage"] and t["size"] == "tiny")
        r["vs_baseline"] = float(f"{r['samples_per_s'] / baseline['samples_per_s']:.3g}")
        r["vs_tiny"] = float(f"{r['samples_per_s'] / tiny['samples_per_s']:.3g}")
    render = [head.render_head_rate("tiny", frames=8, device=device),
              head.render_head_rate("paper", frames=2, quick=quick, device=device)]
    counts = [head.parameter_counts("tiny"), head.parameter_counts("paper")]
    return {"baseline": {k: baseline[k] for k in ("stage", "size", "batch", "samples_per_s")}, "quick": quick,
            "quick_render": head.QUICK_RENDER if quick else None, "step": rows, "render": render, "params": counts}


def print_head(h: dict) -> None:
    b = h["baseline"]
    quick = f"  [--quick: paper rendered at {h['quick_render']}]" if h["quick"] else ""
    print(f"\n3D head (baseline: {b['stage']} {b['size']} step, batch {b['batch']}, "
          f"{b['samples_per_s']:.1f} samples/s, same run){quick}")
    print("stage   size   dev   batch  render      image  plane     params(M)  step s    samples/s  x baseline  "
          "x tiny")
    for r in h["step"]:
        rend = r["render"] + ("*" if r["quick"] else "")
        print(f"{r['stage']:7s} {r['size']:6s} {r['device'][:4]:4s}  {r['batch']:5d}  {rend:11s} {r['image']:5d}  "
              f"{r['plane']:9s} {r['params_m']:9.3f}  {r['step_s']:8.3f}  {r['samples_per_s']:9.3f}  "
              f"{r['vs_baseline']:10.2e}  {r['vs_tiny']:.4f}")
    print("render head, cached plane, per frame (batch 1, eval, no_grad): seconds and share of the frame time")
    print("size   render      image  I2P once  SECC            adapter         render          SR              "
          "frame s  frames/s  I2P=frames")
    for r in h["render"]:
        parts = "  ".join(f"{r[k + '_s']:7.4f} {100 * r['share'][k]:5.1f}%"
                          for k in ("secc", "adapter", "render", "sr"))
        rend = r["render"] + ("*" if r["quick"] else "")
        print(f"{r['size']:6s} {rend:11s} {r['image']:5d}  {r['i2p_s']:8.4f}  {parts}  {r['frame_s']:7.4f}  "
              f"{r['frames_per_s']:8.3f}  {r['i2p_in_frames']:.2f}")
    print("parameters   I2P          decoder   adapter    SR          total")
    for c in h["params"]:
        print(f"{c['size']:11s}  {c['i2p']:11,d}  {c['decoder']:8,d}  {c['adapter']:9,d}  {c['sr']:10,d}  "
              f"{c['total']:12,d}")
    if h["quick"]:
        print("* --quick: paper rows rendered at the reduced ray grid/samples above (SR input resized to 128² inside, "
              "output 512²); not the published 128² × 48+48")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/bench/train")
    ap.add_argument("--paper-batch", type=int, default=16)
    ap.add_argument("--skip-workers", action="store_true")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections: " + ",".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="reduced paper render for the head; no workers section")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="device of the head section")
    args = ap.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if only - set(SECTIONS):
        ap.error(f"--only takes {','.join(SECTIONS)}; got {args.only}")
    if args.skip_workers or args.quick:
        only.discard("workers")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from preprocessing.synthetic_bfm import synthetic_face_model
    from train_corpus import ray_session, write_truth_dataset
    from training.keypoints import KeypointBasis

    model = synthetic_face_model(0, "bfm")
    basis = KeypointBasis.from_face_model(model)
    root = out / "truth"
    report: dict = {"step": [], "data": [], "workers": []}
    if "step" in only:
        for stage in ("syncnet", "a2m"):
            report["step"].append(step_rate(stage, "tiny", None, basis))
            report["step"].append(step_rate(stage, "paper", args.paper_batch, basis, steps=2))
    ray = None
    if only & {"data", "workers"}:
        if not (root / "v001" / "run.json").is_file():
            write_truth_dataset(root, model, splits={"train": list(range(6)), "val": [6]}, clips=2, seconds=6.0)
        ray = ray_session()
        next(ray)
    from training.registry import get_stage

    if "data" in only:
        for stage in ("syncnet", "a2m"):
            report["data"].append(data_rate(root, stage, get_stage(stage).params(
                "tiny", {"syncnet": "x"} if stage == "a2m" else None).batch_size))
    if "workers" in only:
        for w in (1, 2):
            report["workers"].append(workers_rate(root, w))
    if "head" in only:
        baseline = next((r for r in report["step"] if r["stage"] == "syncnet" and r["size"] == "tiny"), None)
        report["head"] = head_section(baseline or step_rate("syncnet", "tiny", None, basis), args.quick, args.device)
    ok = True
    if report["step"]:
        print("stage    size   batch  params(M)  step s   samples/s")
    for r in report["step"]:
        print(f"{r['stage']:8s} {r['size']:6s} {r['batch']:5d}  {r['params_m']:9.3f}  {r['step_s']:6.4f}  "
              f"{r['samples_per_s']:9.1f}")
    for d in report["data"]:
        tiny = next((r for r in report["step"] if r["stage"] == d["stage"] and r["size"] == "tiny"), None)
        if tiny is None:  # --only without step: measure the tiny step the ratio needs
            tiny = step_rate(d["stage"], "tiny", None, basis)
            report["step"].append(tiny)
        d["ratio_vs_tiny_step"] = round(d["samples_per_s"] / tiny["samples_per_s"], 2)
        ok &= d["ratio_vs_tiny_step"] >= 3
        print(f"data path {d['stage']}: {d['samples_per_s']:.0f} samples/s decoded ({d['examples']} examples, "
              f"built in {d['build_s']:.1f} s) = {d['ratio_vs_tiny_step']:.1f}x the tiny step (target >= 3x)")
    for w in report["workers"]:
        print(f"r3p train syncnet tiny, {w['workers']} worker(s): {w['samples_per_s']:.0f} samples/s over "
              f"{w['fit_s']:.1f} s of fit")
    if "head" in report:
        print_head(report["head"])
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"report: {out / 'report.json'}")
    if ray is not None:
        try:
            next(ray)
        except StopIteration:
            pass
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
