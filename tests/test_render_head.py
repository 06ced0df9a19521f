"""r3p render-head: a tiny (random-init) motion checkpoint + a synthetic photo + a motion → mp4.

Known answers: one output frame per exp row at the model's size; with a zero adapter every frame is
the I2P-only render of the source plane; with a non-zero adapter equal expressions give equal frames
and different ones differ; the plane is computed once per source; memory does not grow with length;
each bad input raises RenderHeadError (exit code 2 in the CLI) naming the input."""

from __future__ import annotations

import dataclasses
import tracemalloc

import cv2
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.render_head import HeadAnimator, Motion, RenderHeadError, render_head, to_uint8
from preprocessing.process import code_to_uint8
from preprocessing.render import render_secc
from preprocessing.synthetic import SynthSpec, generate_corpus
from preprocessing.synthetic_bfm import synthetic_face_model
from training import i2p, motion
from training.checkpoint import save_checkpoint

SMALL = dict(image_size=32, render_resolution=16, plane_resolution=32, samples_coarse=8, samples_fine=8, width=16,
             adapter_width=8)
OVERRIDES = ["tracking.crop_size=128"]  # the photo's aligned crop; the model sees it at 32²


def _save(folder, net, stage, p):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return str(save_checkpoint(folder, net, opt, sched, 0, {"stage": stage, "params": dataclasses.asdict(p)}))


def _npz(path, exp, **extra):
    np.savez(path, exp=np.asarray(exp, np.float32), fps=np.float32(25.0), **extra)
    return str(path)


def _decode(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def _set_adapter(net, scale: float, seed: int = 0) -> None:
    """Last adapter layer zero (scale 0: the head is the I2P plane) or random N(0, scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = net.adapter.out.weight
        w.copy_(torch.randn(w.shape, generator=g) * scale)
        net.adapter.out.bias.zero_()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("render_head")
    fm = synthetic_face_model(0, "bfm")  # what the tiny config resolves without a BFM
    corpus = generate_corpus(fm, SynthSpec(identities=1, clips=1, seconds=0.4, size=256, seed=3), root / "corpus")
    video = next(corpus.glob("*/clip000.mp4"))
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok
    photo = root / "source.png"
    cv2.imwrite(str(photo), frame)
    p = motion.STAGE.params("tiny", SMALL)
    torch.manual_seed(0)
    net = motion.build_motion_head(p)
    ckpt = _save(root / "motion_ckpt", net, "motion", p)
    cfg = load_config("tiny", overrides=OVERRIDES)
    anim = HeadAnimator.from_checkpoint(ckpt, cfg, face_model=fm, device="cpu")
    src = anim.source(photo)
    return dict(root=root, fm=fm, video=video, photo=photo, p=p, ckpt=ckpt, cfg=cfg, anim=anim, src=src)


def test_source_is_processed_like_preprocessing(world):
    src, p = world["src"], world["p"]
    assert src.crop.shape == (128, 128, 3) and src.head_mask.shape == (128, 128)
    assert 0.05 < src.head_mask.mean() < 0.6  # a head, not the whole crop
    assert src.input.shape == (1, 3, 32, 32) and src.input.min() == -1.0
    assert src.id_coeff.shape == (80,) and src.exp.shape == (64,) and src.eg3d_cam.shape == (25,)
    assert tuple(src.planes.shape) == (1, 3, p.plane_channels, p.plane_resolution, p.plane_resolution)
    # cam2world of a roughly frontal face: a rotation, the camera in front of the head (+z)
    c2w = src.eg3d_cam[:16].reshape(4, 4)
    np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-4)
    assert c2w[2, 3] > 1.0 and abs(c2w[0, 3]) < 0.5 * c2w[2, 3]


@pytest.mark.slow
def test_cli_writes_one_frame_per_exp_row(world, capsys):
    t = 7
    exp = np.random.default_rng(1).normal(0, 1, (t, 64))
    out = world["root"] / "cli.mp4"
    rc = main(["render-head", "--model", world["ckpt"], "--source", str(world["photo"]), "--motion",
               _npz(world["root"] / "m7.npz", exp), "--out", str(out), "--preset", "tiny",
               *sum((["--set", o] for o in OVERRIDES), [])])
    assert rc == 0, capsys.readouterr().err
    line = capsys.readouterr().out
    assert f"{t} frames" in line and "frames/s" in line and str(out) in line
    frames = _decode(out)
    assert frames.shape == (t, 32, 32, 3)
    # --max-frames cuts the motion
    s = render_head(world["anim"], world["photo"], world["root"] / "max.mp4",
                    motion=_npz(world["root"] / "m7b.npz", exp), max_frames=3)
    assert s["frames"] == 3 and _decode(s["out"]).shape[0] == 3 and s["audio"] is False


def test_zero_adapter_every_frame_is_the_i2p_render(world):
    anim, src = world["anim"], world["src"]
    _set_adapter(anim.model, 0.0)
    exp = np.random.default_rng(2).normal(0, 2, (6, 64)).astype(np.float32)
    with torch.inference_mode():
        ref = anim.model.render(src.planes, torch.as_tensor(src.eg3d_cam[None]))  # I2P only, no SECC
    ref_u8 = to_uint8(ref["sr"])[0]
    assert ref_u8.std() > 1.0  # not a flat image: the comparison can fail
    arrays = anim.render(src, exp)
    assert arrays["sr"].shape == (6, 32, 32, 3) and arrays["opacity"].shape == (6, 16, 16)
    for f in arrays["sr"]:
        np.testing.assert_array_equal(f, ref_u8)
    np.testing.assert_allclose(arrays["opacity"], np.repeat(ref["opacity"][:, 0].numpy(), 6, 0), atol=1e-6)
    s = render_head(anim, world["photo"], world["root"] / "zero.mp4", motion=_npz(world["root"] / "m6.npz", exp))
    frames = _decode(s["out"]).astype(np.float32)
    assert frames.shape == (6, 32, 32, 3)
    assert np.abs(frames - frames[0]).max() <= 2  # identical inputs → (near-)identical decoded frames
    assert np.abs(frames - ref_u8).mean() < 4.0  # the I2P render, to within H.264 + yuv420p


def test_nonzero_adapter_follows_the_driving_expression(world):
    anim, src = world["anim"], world["src"]
    try:
        _set_adapter(anim.model, 20.0, seed=1)  # strong: the random-init layers before it attenuate the SECC
        rng = np.random.default_rng(3)
        a, b = rng.normal(0, 2, 64), rng.normal(0, 2, 64)
        exp = np.stack([a, b, a, b, a]).astype(np.float32)
        arrays = anim.render(src, exp)
        for key in ("sr", "opacity", "depth"):
            np.testing.assert_array_equal(arrays[key][0], arrays[key][2])
            np.testing.assert_array_equal(arrays[key][1], arrays[key][3])
        assert np.abs(arrays["opacity"][0] - arrays["opacity"][1]).max() > 1e-3
        assert np.abs(arrays["sr"][0].astype(np.float32) - arrays["sr"][1]).mean() > 0.5
        # the driving SECC map returned per frame is the canonical render of the source id + driving exp
        want = code_to_uint8(render_secc(anim.face3d, src.id_coeff[None], exp[1:2], 32))[0]
        np.testing.assert_array_equal(arrays["secc"][1], want)
        s = render_head(anim, world["photo"], world["root"] / "ab.mp4", motion=_npz(world["root"] / "ab.npz", exp))
        fr = _decode(s["out"]).astype(np.float32)
        same, diff = np.abs(fr[0] - fr[2]).mean(), np.abs(fr[0] - fr[1]).mean()
        assert same < 0.5 * diff, (same, diff)
    finally:
        _set_adapter(anim.model, 0.0)


def test_plane_is_computed_once_per_source(world, tmp_path):
    w = world
    anim = HeadAnimator(w["anim"].model, w["p"], w["fm"], processor=w["anim"].processor, device="cpu",
                        checkpoint=w["ckpt"], cache_dir=tmp_path / "cache")
    calls = []
    real = anim.model.planes

    def counting(image):
        calls.append(tuple(image.shape))
        return real(image)

    anim.model.planes = counting
    try:
        exp = np.zeros((4, 64), np.float32)
        for i in range(2):
            s = render_head(anim, w["photo"], tmp_path / f"o{i}.mp4", motion=_npz(tmp_path / f"m{i}.npz", exp))
            assert s["frames"] == 4
        anim.render(anim.source(w["photo"]), exp)
        assert calls == [(1, 3, 32, 32)]
        # a fresh animator with the same on-disk cache reuses the plane: no I2P call, same values
        again = HeadAnimator(anim.model, w["p"], w["fm"], processor=w["anim"].processor, device="cpu",
                             checkpoint=w["ckpt"], cache_dir=tmp_path / "cache")
        src = again.source(w["photo"])
        assert calls == [(1, 3, 32, 32)] and "cached" in src.seconds
        torch.testing.assert_close(src.planes, anim.source(w["photo"]).planes)
        np.testing.assert_array_equal(src.eg3d_cam, anim.source(w["photo"]).eg3d_cam)
    finally:
        del anim.model.planes  # back to the class method


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_length(world, tmp_path):
    anim = world["anim"]
    rng = np.random.default_rng(4)
    peaks = {}
    for t in (20, 200):
        path = _npz(tmp_path / f"m{t}.npz", rng.normal(0, 1, (t, 64)))
        tracemalloc.start()
        try:
            s = render_head(anim, world["photo"], tmp_path / f"o{t}.mp4", motion=path, chunk=8)
            peaks[t] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert s["frames"] == t and _decode(s["out"]).shape[0] == t
    # holding every frame (200 × 3 KiB) or every SECC stack (200 × 36 KiB) would add ≥ 0.5 MiB
    assert peaks[200] - peaks[20] < 200_000, peaks


@pytest.mark.slow
def test_driving_video_gives_its_frames_audio_and_crops(world):
    anim, video = world["anim"], world["video"]
    s = render_head(anim, world["photo"], world["root"] / "drv.mp4", video=video)
    assert s["frames"] == 10 and s["motion"] == "video" and s["audio"] is True
    assert _decode(s["out"]).shape == (10, 32, 32, 3)
    from preprocessing.video import DecordDecoder

    assert DecordDecoder().probe(s["out"]).has_audio
    mot = anim.drive_video(video, max_frames=6)
    assert isinstance(mot, Motion) and mot.exp.shape == (6, 64) and mot.cams.shape == (6, 25)
    parts = list(anim.iter_render(world["src"], mot, chunk=4))
    assert [len(p["sr"]) for p in parts] == [4, 2] and parts[0]["driving"].shape == (4, 128, 128, 3)


def test_bad_inputs_name_the_input_and_the_fix(world, tmp_path, capsys):
    w = world
    exp = np.zeros((3, 64), np.float32)
    good = _npz(tmp_path / "good.npz", exp)

    def err(**kw):
        args = dict(model=w["anim"], source=w["photo"], out=tmp_path / "x.mp4", motion=good)
        args.update(kw)
        with pytest.raises(RenderHeadError) as e:
            render_head(**args)
        return str(e.value)

    assert "--source" in err(source=tmp_path / "missing.png") and "no such file" in err(source=tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    assert "not a readable image" in err(source=tmp_path / "text.png")
    grey = np.full((256, 256, 3), 127, np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    msg = err(source=tmp_path / "grey.png")
    assert "--source" in msg and "no usable face" in msg
    np.savez(tmp_path / "noexp.npz", expression=exp)
    assert "no 'exp' array" in err(motion=tmp_path / "noexp.npz")
    assert "(T, 64)" in err(motion=_npz(tmp_path / "bad.npz", np.zeros((3, 63))))
    assert "eg3d_cam" in err(motion=_npz(tmp_path / "cam.npz", exp, eg3d_cam=np.zeros((2, 25), np.float32)))
    assert "neither" in err(motion=None)
    assert "both" in err(video=w["video"])
    # an i2p checkpoint is refused, naming its stage
    pi = i2p.STAGE.params("tiny", {k: v for k, v in SMALL.items() if k != "adapter_width"})
    i2p_ckpt = _save(tmp_path / "i2p_ckpt", i2p.STAGE.build(pi, {}), "i2p", pi)
    msg = err(model=i2p_ckpt)
    assert "'i2p' checkpoint" in msg and "motion" in msg
    assert "no checkpoint" in err(model=str(tmp_path / "no_run"))
    # the CLI turns them into exit code 2 with the message on stderr
    base = ["render-head", "--model", i2p_ckpt, "--source", str(w["photo"]), "--out", str(tmp_path / "y.mp4")]
    assert main(base + ["--motion", good]) == 2
    assert "'i2p' checkpoint" in capsys.readouterr().err
    assert main(base) == 2
    assert "exactly one of --motion" in capsys.readouterr().err
