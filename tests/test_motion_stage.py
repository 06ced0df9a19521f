"""Motion adapter: initialised from a tiny I2P run, trained on synthetic speakers (one morphable head,
different expressions), it lowers the lip-box L1 to the true target frame against the I2P-only render
of the same source, and its opacity matches the head mask."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from preprocessing.multiview import MorphableTeacher, conditioning_camera, view_camera
from preprocessing.render import render_secc
from preprocessing.synthetic_bfm import synthetic_face_model
from preprocessing.triplane import project_points
from training import i2p, motion
from training.stage import StageError

SMALL = dict(render_resolution=16, image_size=32, plane_resolution=32, samples_coarse=12, samples_fine=12,
             batch_size=4, width=24, adapter_width=24)
EXP_STD = 2.0
STEPS = 900
SPEAKERS = 32  # 16 speakers (128 pairs) overfitted: on held-out heads the adapter did no better than I2P alone
HELD_OUT = 8


def _fit(stage, model, data, p, steps, seed=0):
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=p.lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(next(iter(data.values()))), (p.batch_size,), generator=g)
        loss, _ = stage.loss(model, {k: v[idx] for k, v in data.items()}, step, p, {})
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.clip_grad)
        opt.step()


def _speaker_pairs(teacher, seed, n_pairs, p):
    """n_pairs (source, target) of one head: two random expressions each, one camera per pair."""
    rng = np.random.default_rng(5000 + seed)
    head = teacher.sample(seed)
    kp = teacher.model.keypoints[48:68]
    out = {k: [] for k in ("src", "src_m", "tgt", "tgt_m", "secc", "cam", "lip")}
    cano = render_secc(teacher.face3d, head.id[None], np.zeros((1, 64), np.float32), size=p.image_size)[0]
    for _ in range(n_pairs):
        cam = conditioning_camera(rng)[None]
        e_s, e_t = (rng.normal(0, EXP_STD, 64).astype(np.float32) for _ in range(2))
        hs, ht = dataclasses.replace(head, exp=e_s), dataclasses.replace(head, exp=e_t)
        vs, vt = teacher.render(hs, cam), teacher.render(ht, cam)
        secc = render_secc(teacher.face3d, np.stack([head.id] * 2), np.stack([e_s, e_t]), size=p.image_size)
        px = project_points(torch.as_tensor(teacher.vertices(ht)[kp])[None], torch.as_tensor(cam, dtype=torch.float64),
                            teacher.size)[0].numpy()
        box = np.array([px[:, 0].min(), px[:, 1].min(), px[:, 0].max(), px[:, 1].max()]) / teacher.size
        out["src"].append(vs.image[0]); out["src_m"].append(vs.mask[0])  # noqa: E702
        out["tgt"].append(vt.image[0]); out["tgt_m"].append(vt.mask[0])  # noqa: E702
        out["secc"].append(np.stack([cano, secc[0], secc[1]]))
        out["cam"].append(cam[0])
        out["lip"].append(box + np.array([-0.04, -0.04, 0.04, 0.04]))
    a = {k: np.stack(v) for k, v in out.items()}
    return motion.pair_examples(a["src"], a["src_m"], a["tgt"], a["tgt_m"], a["secc"], a["cam"], a["lip"], p)


def _cat(parts):
    return {k: torch.as_tensor(np.concatenate([e[k] for e in parts])) for k in parts[0]}


@pytest.mark.slow
def test_adapter_lowers_lip_l1_against_i2p_only():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fm = synthetic_face_model(0, "small")
    teacher = MorphableTeacher(fm, size=32)
    pi = i2p.STAGE.params("tiny", {k: v for k, v in SMALL.items() if k != "adapter_width"})
    views = []
    for s in range(16):
        rng = np.random.default_rng(1000 + s)
        cams = np.stack([view_camera(rng)[0] for _ in range(3)])
        v = teacher.render(teacher.sample(s), cams)
        views.append(i2p.STAGE.views_examples(v.image, v.mask, v.cameras, pi))
    pre = i2p.STAGE.build(pi, {})
    _fit(i2p.STAGE, pre, _cat(views), pi, 200)

    pm = motion.STAGE.params("tiny", SMALL)
    model = motion.STAGE.build(pm, {})
    motion.init_from_i2p(model, pre.state_dict())
    for mod in (model.i2p,):
        mod.requires_grad_(False)
    _fit(motion.STAGE, model, _cat([_speaker_pairs(teacher, s, 8, pm) for s in range(SPEAKERS)]), pm, STEPS, seed=1)

    model.eval()
    held = _cat([_speaker_pairs(teacher, s, 4, pm) for s in range(200, 200 + HELD_OUT)])
    with torch.no_grad():
        planes = model.planes(held["input"])
        with_ad = model.render(planes, held["cam"], held["secc"])
        only = model.render(planes, held["cam"])
    lip = held["lip"]
    l1 = lambda out: float(((out["sr"] - held["sr"]).abs() * lip).sum() / (3 * lip.sum()))  # noqa: E731
    print("lip L1 adapter", l1(with_ad), "i2p only", l1(only), "source", l1({"sr": held["input"]}))
    # measured 0.335 vs 0.383 (0.452 for the source unchanged); with 16 training speakers × 600 steps the
    # adapter came out at 0.377 vs 0.367 in one environment and 0.354 vs 0.374 in another
    assert l1(with_ad) < 0.95 * l1(only)
    op, m = with_ad["opacity"] > 0.5, held["mask"] > 0.5
    iou = float((op & m).sum() / (op | m).sum())
    print("opacity IoU", iou)
    assert iou > 0.7


def test_pairs_shapes_lip_mask_and_bad_inputs():
    p = motion.STAGE.params("tiny", SMALL)
    n = 2
    img = np.zeros((n, 32, 32, 3), np.uint8)
    m = np.ones((n, 32, 32), bool)
    secc = -np.ones((n, 3, 32, 32, 3), np.float32)
    ex = motion.pair_examples(img, m, img, m, secc, np.zeros((n, 25)), np.array([[0.25, 0.5, 0.75, 1.0]] * n), p)
    assert ex["secc"].shape == (n, 9, 32, 32) and ex["lip"].shape == (n, 1, 32, 32)
    assert ex["lip"][0, 0].sum() == 16 * 16 and ex["lip"][0, 0, 16:, 8:24].all()
    with pytest.raises(StageError, match="SECC must be"):
        motion.pair_examples(img, m, img, m, secc[:, :2], np.zeros((n, 25)), np.zeros((n, 4)), p)
    with pytest.raises(StageError, match="cameras must be"):
        motion.pair_examples(img, m, img, m, secc, np.zeros((n, 16)), np.zeros((n, 4)), p)
    model = motion.STAGE.build(p, {})
    with pytest.raises(StageError, match="i2p checkpoint lacks"):
        motion.init_from_i2p(model, {})
    out = model.render(model.planes(torch.zeros(1, 3, 32, 32)), torch.as_tensor(conditioning_camera(
        np.random.default_rng(0)))[None], torch.zeros(1, 9, 32, 32))
    assert out["sr"].shape == (1, 3, 32, 32)
