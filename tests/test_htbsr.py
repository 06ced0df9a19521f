"""HTB-SR stage: the keypoint-driven torso warp learns a rigid torso shift (torso-region L1 below the
static-torso baseline), the head lies over everything by its opacity, losses are per-example (a batch
split over two workers gives the same loss), and bad inputs / a non-motion start checkpoint fail clearly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from preprocessing.multiview import conditioning_camera
from preprocessing.process import encode_jpeg, encode_png
from preprocessing.record import SEG_BACKGROUND, SEG_HEAD, SEG_TORSO
from training import htbsr, motion
from training.stage import ClipArrays, StageError

SIZE = 32
SMALL = dict(render_resolution=16, image_size=SIZE, plane_resolution=32, samples_coarse=8, samples_fine=8,
             width=16, adapter_width=16, work_size=SIZE, out_size=SIZE, batch_size=8, torso_width=24,
             bg_width=12, fuse_width=24)
STEPS = 300
PAD = 8


def _smooth_noise(rng, shape, sigma):
    x = rng.normal(0, 1, shape).astype(np.float32)
    x = cv2.GaussianBlur(x, (0, 0), sigma)
    return x / (x.std() + 1e-6)


PLATE = np.clip(128 + 60 * _smooth_noise(np.random.default_rng(123), (SIZE, SIZE, 3), 3), 0, 255).astype(np.uint8)


def _synthetic(n, seed, p, raw=False):
    """n pairs: a textured shoulders blob (random place, colour, texture) and the same blob moved rigidly by
    (dx, dy) ∈ [-4, 4]² px; the 4 keypoints sit on the neck/shoulders and move with it; the plate is fixed;
    no head (opacity 0)."""
    rng = np.random.default_rng(seed)
    big = SIZE + 2 * PAD
    yy, xx = np.mgrid[:big, :big].astype(np.float32)
    out = {k: [] for k in ("src", "src_seg", "tgt", "tgt_seg", "kp_s", "kp_t")}
    for _ in range(n):
        cx, top = rng.uniform(PAD + 10, PAD + 22), rng.uniform(PAD + 14, PAD + 22)
        mask = yy >= top + 0.06 * (xx - cx) ** 2 - 0.5 * (np.abs(xx - cx) < 4) * 6  # shoulders + neck bump
        colour = rng.uniform(70, 200, 3)
        tex = colour + 45 * _smooth_noise(rng, (big, big, 3), 1.2)
        canvas = np.where(mask[..., None], np.clip(tex, 30, 255), 0).astype(np.uint8)
        dx, dy = rng.integers(-4, 5, 2)
        s = (slice(PAD, PAD + SIZE), slice(PAD, PAD + SIZE))
        t = (slice(PAD - dy, PAD - dy + SIZE), slice(PAD - dx, PAD - dx + SIZE))
        for key, sl in (("src", s), ("tgt", t)):
            out[key].append(canvas[sl])
            out[key + "_seg"].append(np.where(mask[sl], SEG_TORSO, SEG_BACKGROUND).astype(np.uint8))
        kp = np.array([[cx - 9, top + 5], [cx + 9, top + 5], [cx, top - 1], [cx, top - 6]]) - PAD
        out["kp_s"].append(kp / SIZE)
        out["kp_t"].append((kp + [dx, dy]) / SIZE)
    a = {k: np.stack(v) for k, v in out.items()}
    comp = np.where((a["tgt_seg"] == SEG_TORSO)[..., None], a["tgt"], PLATE[None]).astype(np.uint8)
    ex = htbsr.pair_examples(a["src"], a["src_seg"], a["src"], comp, a["tgt_seg"], PLATE,
                             -np.ones((n, 3, SIZE, SIZE, 3), np.float32), np.zeros((n, 25)), a["kp_s"], a["kp_t"],
                             np.tile([[0.4, 0.6, 0.6, 0.7]], (n, 1)), p)
    ex = {k: torch.as_tensor(v) for k, v in ex.items()}
    ex["head_sr"] = -torch.ones(n, 3, SIZE, SIZE)
    ex["head_opacity"] = torch.zeros(n, 1, p.render_resolution, p.render_resolution)
    if raw:
        return ex, {**a, "composite": comp}
    return ex


def _fit(stage, model, data, p, steps, seed=0):
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=p.lr)
    g = torch.Generator().manual_seed(seed)
    n = len(next(iter(data.values())))
    for step in range(steps):
        idx = torch.randint(0, n, (p.batch_size,), generator=g)
        loss, _ = stage.loss(model, {k: v[idx] for k, v in data.items()}, step, p, {})
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.clip_grad)
        opt.step()


def _torso_l1(img, ex):
    """Mean |img − target| over the union of the source and target torso masks."""
    m = torch.maximum(ex["torso_mask"], htbsr._resize(ex["torso"][:, 3:4], SIZE))
    return float(((img - ex["target"]).abs() * m).sum() / (3 * m.sum()))


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    p = htbsr.STAGE.params("tiny", SMALL)
    model = htbsr.STAGE.build(p, {})
    _fit(htbsr.STAGE, model, _synthetic(192, 0, p), p, STEPS)
    return p, model.eval()


def test_torso_warp_beats_static_torso(trained):
    p, model = trained
    held = _synthetic(64, 1, p)
    with torch.no_grad():
        out = htbsr.STAGE.run_model(model, held, {})
        static = htbsr.static_composite(held["head_sr"], held["head_opacity"], held["torso"], held["bg"], SIZE)
    l_model, l_static = _torso_l1(out["image"], held), _torso_l1(static, held)
    torch.manual_seed(0)
    with torch.no_grad():  # the untrained module (its flow starts as a mix of the keypoint shifts and identity)
        l_init = _torso_l1(htbsr.STAGE.run_model(htbsr.STAGE.build(p, {}).eval(), held, {})["image"], held)
    val = htbsr.STAGE.validate(model, [held], p, {})
    print("torso-region L1 model", l_model, "untrained", l_init, "static", l_static, "validate", val)
    # measured 0.022 vs 0.115 untrained and 0.365 static
    assert l_model < 0.25 * l_static
    assert l_model < 0.5 * l_init
    assert val["val_l1_torso"] < val["val_l1_torso_static"]
    # the person alpha follows the moved torso
    a, m = out["alpha"] > 0.5, held["person_mask"] > 0.5
    assert float((a & m).sum() / (a | m).sum()) > 0.8


def test_head_over_everything_by_opacity(trained):
    p, model = trained
    ex = {k: v[:4] for k, v in _synthetic(4, 2, p).items()}
    r = p.render_resolution
    yy, xx = np.mgrid[:r, :r]
    disc = torch.as_tensor(((yy - 6.5) ** 2 + (xx - 8.5) ** 2 <= 20).astype(np.float32))
    ex["head_opacity"] = disc.expand(4, 1, r, r).clone()
    ex["head_sr"] = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        out = htbsr.STAGE.run_model(model, ex, {})
    inside = htbsr._resize(ex["head_opacity"], SIZE) >= 0.999
    assert inside.sum() > 4 * 40
    diff = (out["image"] - ex["head_sr"]).abs()
    assert float(diff[inside.expand_as(diff)].max()) < 1e-5
    assert bool((out["alpha"][inside] > 0.999).all())


def test_loss_is_per_example_mean():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    p = htbsr.STAGE.params("tiny", SMALL)
    model = htbsr.STAGE.build(p, {})
    ex = _synthetic(4, 5, p)
    ex["lip"][2] = 0  # an example without a lip box must not change the others' weights
    full, _ = htbsr.STAGE.loss(model, ex, 0, p, {})
    halves = [htbsr.STAGE.loss(model, {k: v[i:i + 2] for k, v in ex.items()}, 0, p, {})[0] for i in (0, 2)]
    assert abs(float(full.detach()) - float(sum(halves).detach() / 2)) < 1e-5
    b = htbsr.STAGE.prepare(ex, 0, torch.Generator().manual_seed(0), p)
    assert b["render_seed"].shape == (4,)


def _fake_checkpoint(d, stage, params):
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(d / "model.safetensors"))
    (d / "meta.json").write_text(json.dumps({"stage": stage, "params": params, "step": 1}))
    return str(d)


def test_motion_checkpoint_frozen_head_and_bad_start(tmp_path):
    torch.set_num_threads(1)
    p = htbsr.STAGE.params("tiny", SMALL)
    model = htbsr.STAGE.build(p, {})
    assert htbsr.STAGE.required_checkpoints(p) == {"motion": None}
    with pytest.raises(StageError, match=r"training\.htbsr\.motion=RUN"):
        htbsr.STAGE.init_weights(model, p)
    bad = _fake_checkpoint(tmp_path / "i2p", "i2p", {})
    pb = htbsr.STAGE.params("tiny", {**SMALL, "motion": bad})
    for call in (lambda: htbsr.STAGE.init_weights(model, pb), lambda: htbsr.STAGE.frozen(pb, {})):
        with pytest.raises(StageError, match=r"training\.htbsr\.motion=.*'i2p' checkpoint; give a motion run"):
            call()

    # a real (random) motion head saved as a motion checkpoint: frozen loads it, loss renders with it
    from safetensors.torch import save_file

    mp = motion.STAGE.params("tiny", {k: v for k, v in SMALL.items() if k in vars(motion.MotionParams())})
    head = motion.STAGE.build(mp, {})
    d = tmp_path / "motion"
    _fake_checkpoint(d, "motion", vars(mp))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(d / "model.safetensors"))
    pm = htbsr.STAGE.params("tiny", {**SMALL, "motion": str(d)})
    htbsr.STAGE.init_weights(model, pm)
    frozen = htbsr.STAGE.frozen(pm, {})
    assert not frozen["head"].training and not any(q.requires_grad for q in frozen["head"].parameters())
    with pytest.raises(StageError, match=r"training\.htbsr\.image_size=64 differs"):
        htbsr.STAGE.frozen(htbsr.STAGE.params("tiny", {**SMALL, "motion": str(d), "image_size": 64,
                                                       "work_size": 64, "out_size": 64}), {})
    ex = {k: v for k, v in _synthetic(2, 7, p).items() if k not in ("head_sr", "head_opacity")}
    with pytest.raises(ValueError, match="head render is not finite"):  # zero cameras: NaN render
        htbsr.STAGE.loss(model, ex, 0, pm, frozen)
    ex["cam"] = torch.as_tensor(np.stack([conditioning_camera(np.random.default_rng(i)) for i in range(2)]),
                                dtype=torch.float32)
    loss, terms = htbsr.STAGE.loss(model, ex, 0, pm, frozen)
    loss.backward()
    assert torch.isfinite(loss) and set(terms) == {"l1_torso", "l1", "l1_lip", "alpha_entropy", "l1_alpha"}
    assert all(q.grad is None for q in frozen["head"].parameters())
    assert model.to_rgb.weight.grad is not None


def test_params_shapes_and_bad_inputs():
    with pytest.raises(StageError, match=r"training\.htbsr\.out_size' must be work_size"):
        htbsr.STAGE.params("tiny", {"out_size": 96})
    with pytest.raises(StageError, match=r"training\.htbsr\.work_size' must be a multiple of 8"):
        htbsr.STAGE.params("tiny", {"work_size": 60, "out_size": 60})
    with pytest.raises(StageError, match=r"training\.htbsr\.w_outside' must be in \[0, 1\]"):
        htbsr.STAGE.params("tiny", {"w_outside": 2.0})
    with pytest.raises(StageError, match=r"training\.htbsr\.image_size' must be a multiple of 8"):
        htbsr.STAGE.params("tiny", {"image_size": 30})
    p = htbsr.STAGE.params("tiny", {**SMALL, "out_size": 2 * SIZE})  # the ×2 upsampler
    model = htbsr.STAGE.build(p, {})
    ex = _synthetic(2, 3, htbsr.STAGE.params("tiny", SMALL))
    out = model(ex["head_sr"], ex["head_opacity"], ex["torso"], ex["kp_src"], ex["kp_drv"], ex["bg"])
    assert out["image"].shape == (2, 3, 64, 64) and out["alpha"].shape == (2, 1, 64, 64)
    assert out["flow"].shape == (2, SIZE, SIZE, 2)
    with pytest.raises(ValueError, match="keypoints must be"):
        model(ex["head_sr"], ex["head_opacity"], ex["torso"], ex["kp_src"][:, :3], ex["kp_drv"][:, :3], ex["bg"])
    with pytest.raises(ValueError, match="torso must be"):
        model(ex["head_sr"], ex["head_opacity"], ex["torso"][:, :3], ex["kp_src"], ex["kp_drv"], ex["bg"])
    n = 2
    img = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    seg = np.zeros((n, SIZE, SIZE), np.uint8)
    args = [img, seg, img, img, seg, img[0], -np.ones((n, 3, SIZE, SIZE, 3), np.float32), np.zeros((n, 25)),
            np.zeros((n, 4, 2)), np.zeros((n, 4, 2)), np.zeros((n, 4)), p]
    with pytest.raises(StageError, match="kp_src must be"):
        htbsr.pair_examples(*args[:8], np.zeros((n, 3, 2)), *args[9:])
    with pytest.raises(StageError, match="background must be"):
        htbsr.pair_examples(*args[:5], img[0, :, :, :2], *args[6:])


def test_examples_from_clip_arrays():
    from preprocessing.synthetic_bfm import synthetic_face_model

    p = htbsr.STAGE.params("tiny", {**SMALL, "pairs_per_clip": 3, "min_gap": 2})
    rng = np.random.default_rng(0)
    t, crop = 8, 48
    seg = np.zeros((crop, crop), np.uint8)
    seg[30:, :] = SEG_TORSO
    seg[8:30, 14:34] = SEG_HEAD
    frame = rng.integers(0, 255, (crop, crop, 3), np.uint8)
    lm = np.tile(rng.uniform(5, 40, (1, 68, 2)).astype(np.float32), (t, 1, 1))
    lm[3] = np.nan  # an untracked frame is never used
    frames = {"valid": np.ones(t, np.float32), "exp": np.zeros((t, 64), np.float32),
              "eg3d_cam": np.zeros((t, 25), np.float32), "mouth_box": np.tile([[18, 24, 30, 28]], (t, 1)).astype(
                  np.float32), "landmarks": lm}
    for c, data in (("frame_jpeg", encode_jpeg(frame)), ("seg_png", encode_png(seg)),
                    ("torso_jpeg", encode_jpeg(frame * (seg == SEG_TORSO)[..., None])),
                    ("composite_jpeg", encode_jpeg(frame))):
        frames[c] = np.array([data] * t, object)
    clip = ClipArrays("c0", "s0", np.zeros((2 * t, 1), np.float32), np.zeros(2 * t, np.float32),
                      np.zeros(80, np.float32), frames, {"face_model": synthetic_face_model(0, "small")})
    with pytest.raises(StageError, match="no background_jpeg"):
        htbsr.STAGE.examples(clip, p)
    clip.columns = {"background_jpeg": encode_jpeg(frame)}  # what the runner's clip_arrays is to fill
    ex = htbsr.STAGE.examples(clip, p)
    n = len(ex["target"])
    assert n == 3
    shapes = {k: v.shape[1:] for k, v in ex.items()}
    assert shapes == {"input": (3, SIZE, SIZE), "secc": (9, SIZE, SIZE), "cam": (25,), "torso": (4, SIZE, SIZE),
                      "kp_src": (4, 2), "kp_drv": (4, 2), "bg": (3, SIZE, SIZE), "target": (3, SIZE, SIZE),
                      "torso_mask": (1, SIZE, SIZE), "person_mask": (1, SIZE, SIZE), "lip": (1, SIZE, SIZE)}
    assert all(v.dtype == np.float32 for v in ex.values())
    np.testing.assert_allclose(ex["kp_src"][0], lm[0][list(htbsr.KP_INDICES)] / crop, atol=1e-6)
    assert abs(ex["torso"][0, 3].mean() - (crop - 30) / crop) < 0.05  # torso mask channel
    assert abs(ex["person_mask"][0].mean() - ((crop - 30) * crop + 22 * 20) / crop**2) < 0.02
    assert ex["lip"][0].sum() > 0


def test_animate_compositor_runs_the_trained_module_on_frames(trained, tmp_path):
    """`r3p animate`'s learned compositor (uint8 frames in, uint8 frames out, output at a larger size) on the
    held-out rigid-shift pairs: the torso-region error against the true composites is well below the static
    compositor's, and pixels with person alpha 0 are the background image itself."""
    import dataclasses

    from pipeline.animate import compose
    from pipeline.htbsr_compose import HTBSRCompositor
    from training.checkpoint import save_checkpoint

    p, model = trained
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = save_checkpoint(tmp_path / "htbsr" / "final", model, opt,
                           torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), STEPS,
                           {"stage": "htbsr", "params": dataclasses.asdict(p)})
    comp = HTBSRCompositor(ckpt, device="cpu")
    ex, a = _synthetic(24, 1, p, raw=True)
    big = 2 * SIZE  # animate's output size may exceed the module's: resized, then matted over the full-size plate
    plate = cv2.resize(PLATE, (big, big), interpolation=cv2.INTER_LINEAR)
    head = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    opacity = np.zeros((1, p.render_resolution, p.render_resolution), np.float32)
    errs = {"htbsr": [], "static": []}
    for i in range(len(a["src"])):
        torso = np.where((a["src_seg"][i] == SEG_TORSO)[..., None], a["src"][i], 0).astype(np.uint8)
        mask = (a["src_seg"][i] == SEG_TORSO).astype(np.float32)
        torso_b = cv2.resize(torso, (big, big), interpolation=cv2.INTER_LINEAR)
        mask_b = cv2.resize(mask, (big, big), interpolation=cv2.INTER_LINEAR)
        frames, alpha = comp(head, opacity, torso_b, mask_b, plate, a["kp_s"][i], a["kp_t"][i][None])
        assert frames.shape == (1, big, big, 3) and frames.dtype == np.uint8 and alpha.shape == (1, big, big)
        static = compose(head[0], opacity[0], torso_b, plate, mask_b)
        target = cv2.resize(a["composite"][i], (big, big), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        region = cv2.resize(np.maximum(a["tgt_seg"][i] == SEG_TORSO, a["src_seg"][i] == SEG_TORSO).astype(np.uint8),
                            (big, big), interpolation=cv2.INTER_NEAREST) > 0
        errs["htbsr"].append(np.abs(frames[0].astype(np.float32) - target)[region].mean())
        errs["static"].append(np.abs(static.astype(np.float32) - target)[region].mean())
        bg_only = alpha[0] < 1e-3
        if bg_only.any():
            assert np.abs(frames[0].astype(np.int16) - plate.astype(np.int16))[bg_only].max() <= 1
    m = {k: float(np.mean(v)) for k, v in errs.items()}
    print("animate compositor torso-region error (0-255):", m)
    assert m["htbsr"] < 0.5 * m["static"], m
