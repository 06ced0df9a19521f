"""r3p animate: tiny (random-init) motion + a2m checkpoints in a runs folder + a synthetic photo + audio → mp4.

Known answers: one output frame per 40 ms of audio (T = round(seconds · 25)) with the audio stream; with
--bg the pixels outside the composed person alpha are the given image (within codec error); the peak
traced memory of a 600-frame run is within 10% of a 60-frame one; a failure mid-stream leaves neither
OUT.mp4 nor a temporary file; each bad input raises AnimateError (exit code 2 in the CLI) naming it."""

from __future__ import annotations

import dataclasses
import time
import tracemalloc

import cv2
import numpy as np
import pytest
import soundfile
import torch

from pipeline import animate as animate_mod
from pipeline.animate import AnimateError, Animator, animate, compose, composed_alpha, read_driving_audio
from pipeline.cli import main
from pipeline.config import load_config
from preprocessing.synthetic import SynthSpec, generate_corpus, speech_like_audio
from preprocessing.synthetic_bfm import synthetic_face_model
from training import a2m, motion
from training.checkpoint import save_checkpoint
from training.keypoints import KeypointBasis

SMALL = dict(image_size=32, render_resolution=16, plane_resolution=32, samples_coarse=8, samples_fine=8, width=16,
             adapter_width=8)
OVERRIDES = ["tracking.crop_size=128"]  # the photo's aligned crop = the output size; the model sees it at 32²
SR = 16000


def _save(folder, net, meta):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return str(save_checkpoint(folder, net, opt, sched, 0, meta))


def _wav(path, seconds, seed=0, scale=1.0):
    n = int(round(seconds * SR))
    audio, _ = speech_like_audio(np.random.default_rng(seed), -(-n // 640), 140.0, (700.0, 1200.0))
    soundfile.write(path, audio[:n] * scale, SR)
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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("animate")
    fm = synthetic_face_model(0, "bfm")  # what the tiny config resolves without a BFM
    corpus = generate_corpus(fm, SynthSpec(identities=1, clips=1, seconds=0.4, size=256, seed=3), root / "corpus")
    video = next(corpus.glob("*/clip000.mp4"))
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok
    photo = root / "source.png"
    cv2.imwrite(str(photo), frame)
    runs = root / "runs"
    pm = motion.STAGE.params("tiny", SMALL)
    _save(runs / "motion-tiny" / "final", motion.build_motion_head(pm), {"stage": "motion",
                                                                        "params": dataclasses.asdict(pm)})
    pa = a2m.A2MStage().params("tiny", {"w_sync": 0.0})
    info = {"audio": "mel", "audio_dim": 80, "audio_mean": np.zeros(80, np.float32),
            "audio_std": np.full(80, 3.0, np.float32), "keypoints": KeypointBasis.from_face_model(fm).to_dict()}
    _save(runs / "a2m-tiny" / "final", a2m.A2MStage().build(pa, info),
          {"stage": "a2m", "params": dataclasses.asdict(pa), "info": {"audio": "mel", "audio_dim": 80}})
    cfg = load_config("tiny", overrides=OVERRIDES)
    anim = Animator.load(str(runs), cfg, face_model=fm, device="cpu")
    bg = np.zeros((96, 160, 3), np.uint8)  # not square: centre-cropped to 96², resized to 128²
    yy, xx = np.mgrid[0:96, 0:160]
    bg[..., 0], bg[..., 1], bg[..., 2] = 40 + xx, 60 + 1.5 * yy, 200 - xx // 2
    cv2.imwrite(str(root / "bg.png"), cv2.cvtColor(bg, cv2.COLOR_RGB2BGR))
    return dict(root=root, fm=fm, video=video, photo=photo, runs=runs, cfg=cfg, anim=anim, bg=root / "bg.png")


def test_compose_known_answers():
    rng = np.random.default_rng(0)
    head = rng.integers(0, 256, (8, 8, 3), np.uint8)
    torso, bg = rng.integers(0, 256, (16, 16, 3), np.uint8), rng.integers(0, 256, (16, 16, 3), np.uint8)
    zero, one = np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32)
    ta = np.zeros((16, 16), np.float32)
    ta[10:] = 1.0
    out = compose(head, zero, torso, bg, ta)  # no head: torso where its alpha is 1, background elsewhere
    np.testing.assert_array_equal(out[10:], torso[10:])
    np.testing.assert_array_equal(out[:10], bg[:10])
    full = compose(head, one, torso, bg, ta)  # opaque head everywhere: the upsampled head
    np.testing.assert_array_equal(full, cv2.resize(head, (16, 16), interpolation=cv2.INTER_LINEAR))
    batch = compose(np.stack([head, head]), np.stack([zero, one]), torso, bg, ta)
    np.testing.assert_array_equal(batch[0], out)
    np.testing.assert_array_equal(batch[1], full)
    np.testing.assert_allclose(composed_alpha(np.stack([zero, one]), ta), np.stack([ta, np.ones_like(ta)]))


def _confine_opacity(monkeypatch, anim, src):
    """A random-init model's opacity is > 0 everywhere; a trained one's is confined to the head: zero it
    outside the source's (dilated) head mask so the frame has background to check."""
    head = anim.head
    real = head.render
    r = head.p.render_resolution
    mask = cv2.resize(cv2.dilate(src.head_mask.astype(np.uint8), np.ones((9, 9), np.uint8)), (r, r),
                      interpolation=cv2.INTER_NEAREST).astype(np.float32)

    def render(*a, **kw):
        res = real(*a, **kw)
        res["opacity"] = res["opacity"] * mask
        return res

    monkeypatch.setattr(head, "render", render)


def test_audio_gives_one_frame_per_40ms_with_audio_and_bg(world, capsys, monkeypatch):
    from preprocessing.video import DecordDecoder, read_audio

    w = world
    _confine_opacity(monkeypatch, w["anim"], w["anim"].source(w["photo"])[0])
    wav = _wav(w["root"] / "speech.wav", 0.61)  # 15.25 frames → T = 15
    out = w["root"] / "bg.mp4"
    s = animate(w["anim"], w["photo"], out, audio=wav, bg=w["bg"], chunk=4)
    frames = _decode(out)
    assert s["frames"] == 15 and frames.shape == (15, 128, 128, 3) and s["size"] == 128 and s["audio"] is True
    assert DecordDecoder().probe(out).has_audio
    assert abs(len(read_audio(out)) - 15 * 640) <= 2048  # the muxed audio lasts the video (AAC priming aside)
    err = capsys.readouterr().err
    assert "animate: 4/15 frames" in err and "animate: 15/15 frames" in err and "frames/s" in err
    assert set(s["seconds"]) >= {"source", "motion", "secc", "adapter", "render", "sr", "compose", "total"}
    # the same motion, rendered in memory: the combined alpha of every frame
    src, layers = w["anim"].source(w["photo"])
    audio, t = read_driving_audio(wav)
    mot = w["anim"].audio_motion(audio, t, temperature=0.2)
    alpha = np.concatenate([composed_alpha(p["opacity"], layers.torso_alpha)
                            for p in w["anim"].iter_frames(src, layers, mot, chunk=4)])
    outside = alpha < 1e-3
    outside = cv2.erode(outside.astype(np.uint8).transpose(1, 2, 0), np.ones((5, 5), np.uint8)).transpose(2, 0, 1)
    outside = outside.reshape(alpha.shape).astype(bool)  # away from edges: chroma subsampling blurs 2 px
    assert 0.2 < outside.mean() < 0.98, outside.mean()  # both person and background in the frame
    want = animate_mod.load_background(w["bg"], 128).astype(np.float32)
    diff = np.abs(frames.astype(np.float32) - want[None])[outside]
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 8, (diff.mean(), np.percentile(diff, 99))
    # and the person is not the background: inside the alpha the frames differ from it
    inside = alpha > 0.9
    assert np.abs(frames.astype(np.float32) - want[None])[inside].mean() > 10


def test_cli_latest_runs_and_summary(world, tmp_path, capsys):
    w = world
    wav = _wav(tmp_path / "s.wav", 0.4)
    out = tmp_path / "cli.mp4"
    rc = main(["animate", "--model", str(w["runs"]), "--source", str(w["photo"]), "--audio", wav, "--out", str(out),
               "--size", "64", "--blink", "period", "--preset", "tiny", *sum((["--set", o] for o in OVERRIDES), [])])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "10 frames" in captured.out and "frames/s" in captured.out and str(out) in captured.out
    assert _decode(out).shape == (10, 64, 64, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_driving_video_gives_its_frames_and_audio(world, tmp_path):
    from preprocessing.video import DecordDecoder

    s = animate(world["anim"], world["photo"], tmp_path / "v.mp4", video=world["video"], max_frames=6, chunk=4)
    assert s["frames"] == 6 and s["motion"] == "video" and s["audio"] is True
    assert _decode(s["out"]).shape == (6, 128, 128, 3) and DecordDecoder().probe(s["out"]).has_audio


def test_streaming_memory_is_flat_in_the_length(world, tmp_path):
    anim = world["anim"]
    # one-time costs (the source's processing, lazy imports and librosa's cached filter banks) outside the
    # measurement: what is measured is what grows with the length
    animate(anim, world["photo"], tmp_path / "warm.mp4", audio=_wav(tmp_path / "w.wav", 0.4), progress=lambda *a: None)
    peaks, rates = {}, {}
    for t in (60, 600):
        wav = _wav(tmp_path / f"a{t}.wav", t / 25.0, seed=t)
        tracemalloc.start()
        try:
            t0 = time.perf_counter()
            s = animate(anim, world["photo"], tmp_path / f"o{t}.mp4", audio=wav, chunk=16, progress=lambda *a: None)
            peaks[t] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        rates[t] = t / (time.perf_counter() - t0)
        assert s["frames"] == t
    assert _decode(tmp_path / "o600.mp4").shape[0] == 600
    print(f"animate peak traced memory: {peaks}; frames/s (traced): {rates}")
    assert abs(peaks[600] - peaks[60]) < 0.10 * peaks[60], peaks


def test_failure_mid_stream_leaves_no_file(world, tmp_path, monkeypatch):
    calls = []
    real = animate_mod.compose

    def failing(*a):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure at chunk 2")
        return real(*a)

    monkeypatch.setattr(animate_mod, "compose", failing)
    out = tmp_path / "half.mp4"
    with pytest.raises(RuntimeError, match="injected"):
        animate(world["anim"], world["photo"], out, audio=_wav(tmp_path / "a.wav", 0.8), chunk=4,
                progress=lambda *a: None)
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == [tmp_path / "a.wav"]  # no OUT.mp4, no temporary file


def test_bad_inputs_name_the_input_and_the_fix(world, tmp_path, capsys):
    w = world

    def err(**kw):
        args = dict(model=w["anim"], source=w["photo"], out=tmp_path / "x.mp4", audio=_wav(tmp_path / "ok.wav", 0.2))
        args.update(kw)
        with pytest.raises(AnimateError) as e:
            animate(**args)
        assert not (tmp_path / "x.mp4").exists()
        return str(e.value)

    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(SR, np.float32), SR)
    msg = err(audio=silent)
    assert "--audio" in msg and "silent" in msg
    msg = err(audio=_wav(tmp_path / "quiet.wav", 0.5, scale=1e-4))
    assert "silent" in msg
    (tmp_path / "text.wav").write_text("this is not audio at all\n" * 20)
    msg = err(audio=tmp_path / "text.wav")
    assert "--audio" in msg and "not a readable audio file" in msg
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    msg = err(audio=tmp_path / "empty.wav")
    assert "--audio" in msg and "empty" in msg
    assert "no such file" in err(audio=tmp_path / "missing.wav")
    grey = np.full((256, 256, 3), 127, np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    msg = err(source=tmp_path / "grey.png")
    assert "--source" in msg and "no usable face" in msg
    grey_video = tmp_path / "grey.mp4"
    from preprocessing.video import encode_mp4

    encode_mp4(grey_video, [grey] * 8, 25.0)
    msg = err(audio=None, video=grey_video)
    assert "--video" in msg and "no face" in msg
    assert "neither" in err(audio=None) and "both" in err(video=w["video"])
    # missing stage runs: the message lists what was found
    only_motion = tmp_path / "runs"
    (only_motion / "motion-x").mkdir(parents=True)
    import shutil

    shutil.copytree(w["runs"] / "motion-tiny" / "final", only_motion / "motion-x" / "final")
    msg = err(model=str(only_motion))
    assert "no finished 'a2m' run" in msg and "motion: motion-x" in msg and "--a2m" in msg
    assert "no such folder" in err(model=str(tmp_path / "nowhere"))
    msg = err(model=str(w["runs"]), a2m="motion-tiny")
    assert "--a2m motion-tiny" in msg and "'motion' checkpoint" in msg
    # the CLI: exit code 2, the message on stderr
    rc = main(["animate", "--model", str(only_motion), "--source", str(w["photo"]), "--audio", str(silent),
               "--out", str(tmp_path / "y.mp4")])
    assert rc == 2 and "silent" in capsys.readouterr().err
    rc = main(["animate", "--model", str(only_motion), "--source", str(w["photo"]),
               "--audio", _wav(tmp_path / "ok2.wav", 0.2), "--out", str(tmp_path / "y.mp4")])
    assert rc == 2 and "no finished 'a2m' run" in capsys.readouterr().err


def _htbsr_runs(world, tmp_path):
    """A copy of the world's runs folder plus a random-init htbsr run over its motion run (32² heads, 32² work
    size, 64² out: animate resizes to the 128² output)."""
    import shutil

    from training import htbsr

    runs = tmp_path / "runs"
    shutil.copytree(world["runs"], runs)
    p = htbsr.STAGE.params("tiny", {**SMALL, "work_size": 32, "out_size": 64, "motion": str(runs / "motion-tiny")})
    torch.manual_seed(1)
    _save(runs / "htbsr-tiny" / "final", htbsr.STAGE.build(p, {}), {"stage": "htbsr", "params": dataclasses.asdict(p)})
    return runs


def test_htbsr_compositor_chosen_and_bg_replaced(world, tmp_path, monkeypatch):
    w = world
    runs = _htbsr_runs(w, tmp_path)
    anim = Animator.load(str(runs), w["cfg"], face_model=w["fm"], device="cpu")  # auto: the htbsr run over motion
    assert anim.compositor == "htbsr" and anim.htbsr.checkpoint.endswith("htbsr-tiny/final")
    assert Animator.load(str(runs), w["cfg"], htbsr="none", face_model=w["fm"], device="cpu").compositor == "static"
    src, layers = anim.source(w["photo"])
    _confine_opacity(monkeypatch, anim, src)
    # the source's own expression and pose: the driving keypoints are the source's tracked ones
    np.testing.assert_allclose(anim.driving_keypoints(src, layers, src.exp[None]), layers.kp[None], atol=1e-6)
    wav = _wav(tmp_path / "s.wav", 0.4)
    s = animate(anim, w["photo"], tmp_path / "h.mp4", audio=wav, bg=w["bg"], chunk=4, progress=lambda *a: None)
    assert s["compositor"] == "htbsr" and s["checkpoints"]["htbsr"] == anim.htbsr.checkpoint and s["frames"] == 10
    frames = _decode(s["out"])
    assert frames.shape == (10, 128, 128, 3)
    # pixels outside the predicted person alpha are the --bg image (within codec error)
    audio, t = read_driving_audio(wav)
    mot = anim.audio_motion(audio, t, temperature=0.2)
    want = animate_mod.load_background(w["bg"], 128)
    alpha = np.concatenate([p["alpha"] for p in anim.iter_frames(src, layers.resized(128), mot, want, chunk=4)])
    outside = cv2.erode((alpha < 0.03).astype(np.uint8).transpose(1, 2, 0), np.ones((5, 5), np.uint8))
    outside = outside.reshape(alpha.shape[1], alpha.shape[2], -1).transpose(2, 0, 1).astype(bool)
    assert 0.1 < outside.mean() < 0.98, outside.mean()
    diff = np.abs(frames.astype(np.float32) - want[None].astype(np.float32))[outside]
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 10, (diff.mean(), np.percentile(diff, 99))


def test_htbsr_named_run_implies_its_motion_and_mismatches_fail(world, tmp_path):
    import shutil

    w = world
    runs = _htbsr_runs(w, tmp_path)
    anim = Animator.load(None, w["cfg"], a2m=str(runs / "a2m-tiny"), htbsr=str(runs / "htbsr-tiny"), face_model=w["fm"],
                         device="cpu")
    assert anim.compositor == "htbsr"
    assert anim.head.checkpoint == str((runs / "motion-tiny" / "final").resolve())
    shutil.copytree(runs / "motion-tiny", runs / "motion-other")
    with pytest.raises(AnimateError, match="trained over the motion run"):
        Animator.load(str(runs), w["cfg"], head="motion-other", htbsr="htbsr-tiny", face_model=w["fm"], device="cpu")
    # auto over another motion run: no htbsr run matches it → the static compositor
    assert Animator.load(str(runs), w["cfg"], head="motion-other", face_model=w["fm"], device="cpu").compositor \
        == "static"
    with pytest.raises(AnimateError, match="'a2m' checkpoint"):
        Animator.load(str(runs), w["cfg"], htbsr="a2m-tiny", face_model=w["fm"], device="cpu")


def test_driving_keypoints_follow_the_3dmm_translation(world):
    """Moving the head by d (3DMM units) along x moves each keypoint by focal·d / z_cam pixels (the pinhole)."""
    from preprocessing.face3d import CAMERA_DISTANCE, intrinsics, rotation_matrix
    from pipeline.htbsr_compose import driving_keypoints
    from training.htbsr import KP_INDICES

    anim = world["anim"]
    src, layers = anim.source(world["photo"])
    crop = int(src.crop.shape[0])
    d = 0.05
    trans = (layers.trans + np.array([d, 0, 0], np.float32))[None]
    kp = driving_keypoints(anim.head.face3d, layers.kp, src.id_coeff, src.exp, layers.euler, layers.trans,
                           src.exp[None], layers.euler[None], trans, crop)[0]
    f3 = anim.head.face3d
    with torch.no_grad():
        shape = f3.keypoint_shape(torch.as_tensor(src.id_coeff)[None], torch.as_tensor(src.exp)[None])[0]
        posed = shape @ rotation_matrix(torch.as_tensor(layers.euler)[None])[0].T + torch.as_tensor(layers.trans)
    z = CAMERA_DISTANCE - posed[list(KP_INDICES), 2].numpy()
    focal, _ = intrinsics(crop)
    np.testing.assert_allclose(kp[:, 0] - layers.kp[:, 0], focal * d / z / crop, rtol=1e-3)
    np.testing.assert_allclose(kp[:, 1], layers.kp[:, 1], atol=1e-5)


def test_align_pose_starts_at_the_source_pose_and_keeps_the_motion():
    from pipeline.animate import align_pose
    from preprocessing.fitting import eg3d_camera

    rng = np.random.default_rng(0)
    euler, trans = rng.normal(0, 0.1, (5, 3)), rng.normal(0, 0.2, (5, 3))
    src_e, src_t = np.array([0.05, -0.1, 0.02]), np.array([0.1, 0.0, 0.3])
    e, t, cams = align_pose(src_e, src_t, euler, trans, 8)
    np.testing.assert_allclose(e[0], src_e, atol=1e-6)
    np.testing.assert_allclose(t[0], src_t, atol=1e-6)
    np.testing.assert_allclose(np.diff(e[:5], axis=0), np.diff(euler, axis=0), atol=1e-6)  # the same motion
    np.testing.assert_allclose(e[5:], np.repeat(e[4:5], 3, axis=0))  # a shorter pose video holds its last pose
    np.testing.assert_allclose(cams, eg3d_camera(e, t), atol=1e-5)
    with pytest.raises(AnimateError, match="no frames"):
        align_pose(src_e, src_t, np.zeros((0, 3)), np.zeros((0, 3)), 3)


def test_pose_video_drives_the_head_pose_and_a_video_source_is_its_first_frame(world, tmp_path):
    anim = world["anim"]
    src, layers = anim.source(world["photo"])
    vsrc, vlayers = anim.source(world["video"])  # a video as the source: its first frame, processed the same
    np.testing.assert_array_equal(vlayers.torso, layers.torso)
    np.testing.assert_array_equal(vsrc.crop, src.crop)
    wav, t = read_driving_audio(_wav(tmp_path / "a.wav", 0.4), None)
    mot = anim.audio_motion(wav, t)
    assert mot.euler is None  # audio alone keeps the source's pose
    posed = anim.with_pose(mot, world["video"], layers)
    fitted = anim.head.drive_video(world["video"], t)
    np.testing.assert_allclose(posed.euler[0], layers.euler, atol=1e-6)
    np.testing.assert_allclose(np.diff(posed.euler, axis=0), np.diff(fitted.euler[:t], axis=0), atol=1e-5)
    np.testing.assert_array_equal(posed.exp, mot.exp)  # the expressions stay the audio's
    out = tmp_path / "posed.mp4"
    s = animate(anim, world["video"], out, audio=_wav(tmp_path / "b.wav", 0.4), pose=world["video"],
                progress=lambda *a: None)
    assert s["frames"] == _decode(out).shape[0] > 0
    with pytest.raises(AnimateError, match="--pose .*no such file"):
        animate(anim, world["photo"], tmp_path / "x.mp4", audio=_wav(tmp_path / "c.wav", 0.4),
                pose=tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(AnimateError, match="no frame could be decoded"):
        animate(anim, bad, tmp_path / "y.mp4", audio=_wav(tmp_path / "d.wav", 0.4))
