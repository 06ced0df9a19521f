"""Benchmark parts for the 3D head (I2P and motion stages), run by `benchmarks/train.py --only head`.

- `head_step_rate`: samples/s of forward + backward + Adam step of the `i2p` or `motion` stage at
  `tiny` or `paper` size, on batches from the stage's own example builders
  (`training.i2p.view_pair_examples`, `training.motion.pair_examples`) fed with random but correctly
  shaped inputs (noise images, an elliptic head mask, cameras from the multiview distributions,
  random SECC maps);
- `render_head_rate`: per-frame throughput of the render head with a cached tri-plane, split per part
  (I2P once per source, SECC maps, adapter, volume render, SR), in eval mode under `no_grad`;
- `parameter_counts`: trainable parameters of I2P / decoder / adapter / SR at both sizes.

`quick` lowers only the render resolution and the ray samples of the paper size (the model, its
plane and its SR input/output sizes stay as published; the paper SR resizes the smaller raw render to
its 128² input). Everything takes a `device` ("cpu" or "cuda").
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

#: `--quick` paper render: rays per side and coarse + fine samples per ray (paper: 128, 48 + 48)
QUICK_RENDER = {"render_resolution": 32, "samples_coarse": 12, "samples_fine": 12}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _stage(name: str):
    if name == "i2p":
        from training.i2p import STAGE
    elif name == "motion":
        from training.motion import STAGE
    else:
        raise ValueError(f"no 3D-head stage {name!r} (i2p | motion)")
    return STAGE


def head_params(name: str, size: str, overrides: dict | None = None):
    """The stage's parameters at `size` with `overrides`."""
    return _stage(name).params(size, overrides)


def _render_params(p, quick: bool, size: str):
    """`p` with the quick render sizes (paper only), bypassing check_params (the SR keeps its 128² input)."""
    if not (quick and size == "paper"):
        return p
    return dataclasses.replace(p, **QUICK_RENDER)


def _ellipse(n: int, size: int) -> np.ndarray:
    y, x = np.mgrid[:size, :size] / size
    m = ((x - 0.5) / 0.32) ** 2 + ((y - 0.55) / 0.4) ** 2 < 1
    return np.repeat(m[None], n, 0)


def head_batch(name: str, p, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n examples of the stage from its example builder, on random inputs of the right shapes."""
    from preprocessing.multiview import conditioning_camera, view_camera

    rng = np.random.default_rng(seed)
    s = p.image_size

    def images(k):
        return rng.integers(0, 256, (k, s, s, 3), dtype=np.uint8)

    if name == "i2p":
        from training.i2p import view_pair_examples

        parts = []
        while sum(len(e["input"]) for e in parts) < n:  # 2 views → 2 ordered pairs per sample
            cams = np.stack([view_camera(rng)[0] for _ in range(2)])
            parts.append(view_pair_examples(images(2), _ellipse(2, s), cams, p))
        ex = {k: np.concatenate([e[k] for e in parts])[:n] for k in parts[0]}
    else:
        from training.motion import pair_examples

        cams = np.stack([conditioning_camera(rng) for _ in range(n)])
        secc = rng.uniform(-1, 1, (n, 3, s, s, 3)).astype(np.float32)
        lip = np.tile(np.array([[0.35, 0.62, 0.65, 0.82]], np.float32), (n, 1))
        ex = pair_examples(images(n), _ellipse(n, s), images(n), _ellipse(n, s), secc, cams, lip, p)
    return {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in ex.items()}


def head_step_rate(name: str, size: str, *, batch: int | None = None, steps: int = 3, quick: bool = False,
                   device: str = "cpu") -> dict:
    """Samples/s of forward + backward + Adam step of `i2p` / `motion` at `size` (median of `steps` after
    one warm-up step; step index s = 0 (warm-up), 1, ... as in the training loop, so the i2p reference
    view (every `ref_every` steps) and density regulariser (every `density_every`) follow their schedule;
    the timed step includes `stage.prepare`, the batch's copy to the device, gradient clipping)."""
    stage = _stage(name)
    p = head_params(name, size, {"batch_size": batch} if batch else None)
    torch.manual_seed(0)
    model = stage.build(p, {})
    pr = _render_params(p, quick, size)
    if pr is not p:
        from training.i2p import render_options
        model.options = render_options(pr)
    model = model.to(device).train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=p.lr)
    batch = head_batch(name, pr, p.batch_size)
    on_cpu = str(device) == "cpu"
    times = []
    for s in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        b = stage.prepare(dict(batch), s, torch.Generator().manual_seed(s), pr)
        if not on_cpu:  # per-sample render seeds make CPU generators, which torch.rand on a GPU refuses
            b.pop("render_seed", None)
        b = {k: v.to(device) for k, v in b.items()}
        loss, _ = stage.loss(model, b, s, pr, {})
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, p.clip_grad)
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times[1:]))
    return {"stage": name, "size": size, "device": str(device), "batch": p.batch_size,
            "render": f"{pr.render_resolution}²×{pr.samples_coarse}+{pr.samples_fine}",
            "image": p.image_size, "plane": f"{p.plane_channels}×{p.plane_resolution}²",
            "quick": pr is not p, "render_seeds": on_cpu, "params_m": round(sum(q.numel() for q in params) / 1e6, 3),
            "step_s": round(sec, 4), "samples_per_s": float(f"{p.batch_size / sec:.4g}")}


def render_head_rate(size: str, *, frames: int = 4, quick: bool = False, device: str = "cpu") -> dict:
    """Per-frame throughput of the motion render head with a cached tri-plane, split per part (seconds
    per frame and shares of the frame time); I2P is timed once per source and reported apart."""
    from preprocessing.face3d import Face3D
    from preprocessing.multiview import MorphableTeacher, conditioning_camera
    from preprocessing.synthetic_bfm import synthetic_face_model
    from preprocessing.triplane import render
    from training.i2p import render_options
    from training.motion import secc_maps, stack_secc
    from training.motion import STAGE

    p = head_params("motion", size)
    pr = _render_params(p, quick, size)
    torch.manual_seed(0)
    model = STAGE.build(p, {}).to(device).eval()
    opts = render_options(pr, perturb=False)
    fm = synthetic_face_model(0, "small")
    face3d = Face3D(fm)
    head = MorphableTeacher(fm, size=p.image_size).sample(0)
    rng = np.random.default_rng(0)
    src_exp = rng.normal(0, 1, 64).astype(np.float32)
    drv = rng.normal(0, 1, (frames, 64)).astype(np.float32)
    src = head_batch("motion", pr, 1)["input"].to(device)
    cams = torch.as_tensor(np.stack([conditioning_camera(rng) for _ in range(frames)])).to(device)
    t = {"i2p": 0.0, "secc": 0.0, "adapter": 0.0, "render": 0.0, "sr": 0.0}

    def clock(part, fn):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        t[part] += time.perf_counter() - t0
        return out

    with torch.no_grad():
        # warm-up: one frame through every part
        s9 = torch.as_tensor(stack_secc(secc_maps(face3d, head.id, src_exp, drv[:1], p.image_size))).to(device)
        pl = model.planes(src)
        o = render(pl + model.adapter(s9), cams[:1], model.decoder, opts)
        model.sr(o["rgb"], o["features"])
        planes = clock("i2p", lambda: model.planes(src))
        s9 = clock("secc", lambda: torch.as_tensor(stack_secc(secc_maps(face3d, head.id, src_exp, drv,
                                                                        p.image_size))).to(device))
        for i in range(frames):
            res = clock("adapter", lambda: model.adapter(s9[i:i + 1]))
            o = clock("render", lambda: render(planes + res, cams[i:i + 1], model.decoder, opts))
            img = clock("sr", lambda: model.sr(o["rgb"], o["features"]))
    assert img.shape[-1] == p.image_size
    per = {k: t[k] / frames for k in ("secc", "adapter", "render", "sr")}
    frame_s = sum(per.values())
    return {"size": size, "device": str(device), "frames": frames, "quick": pr is not p,
            "render": f"{pr.render_resolution}²×{pr.samples_coarse}+{pr.samples_fine}", "image": p.image_size,
            "i2p_s": round(t["i2p"], 4), **{f"{k}_s": round(v, 4) for k, v in per.items()},
            "frame_s": round(frame_s, 4), "frames_per_s": round(1 / frame_s, 3),
            "share": {k: round(v / frame_s, 3) for k, v in per.items()},
            "i2p_in_frames": round(t["i2p"] / frame_s, 2)}


def parameter_counts(size: str) -> dict:
    """Trainable parameters of the motion render head's parts at `size` (I2P, decoder, adapter, SR)."""
    from training.head_nets import count_parameters
    from training.motion import STAGE

    m = STAGE.build(head_params("motion", size), {})
    parts = {"i2p": m.i2p, "decoder": m.decoder, "adapter": m.adapter, "sr": m.sr}
    out = {k: count_parameters(v) for k, v in parts.items()}
    return {"size": size, **out, "total": sum(out.values())}
