"""Person segmentation: the colour backend against synthetic ground truth and a real photo, the
head/torso split, rembg's real loading on a stand-in ONNX (no network), error paths."""

from __future__ import annotations

import importlib.util
import socket

import numpy as np
import pytest

from preprocessing.segmentation import (
    BODY_SKIN,
    CLOTHES,
    FACE_SKIN,
    HAIR,
    OTHERS,
    Segmentation,
    SegmentationError,
    available_segmenters,
    head_frame,
    make_segmenter,
    person_region,
    split_parts,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1 identity × 1 clip × 1.2 s at 512² with ground truth, decoded, plus GT face silhouettes
    (rendered at 256² and upsampled, to keep the fixture fast)."""
    import cv2
    import torch

    from preprocessing.face3d import Face3D
    from preprocessing.render import render_face
    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model
    from preprocessing.video import load_clip

    out = tmp_path_factory.mktemp("segsynth")
    model = synthetic_face_model(0, "bfm")
    generate_corpus(model, SynthSpec(identities=1, clips=1, seconds=1.2, size=512, seed=5), out)
    stem = out / "synth005_id000" / "clip000"
    gt = dict(np.load(stem.with_suffix(".npz")))
    frames = load_clip(stem.with_suffix(".mp4")).frames()
    small = render_face(Face3D(model), torch.as_tensor(gt["coeffs"]), 256).mask
    face_masks = np.stack([cv2.resize(m.astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST) > 0
                           for m in small])
    return frames, gt, face_masks


def _run(frames, landmarks, face_masks=None, chunk=16):
    seg = make_segmenter("colour")
    seg.reset()
    parts = [seg.segment(frames[s:s + chunk], landmarks[s:s + chunk],
                         None if face_masks is None else face_masks[s:s + chunk]).person
             for s in range(0, len(frames), chunk)]
    return np.concatenate(parts)


def _ious(person, gt, landmarks, face_masks=None):
    gp = gt["head_mask"] | gt["torso_mask"]
    out = {"person": [], "head": [], "torso": []}
    for i in range(len(person)):
        head, torso = split_parts(person[i], landmarks[i], face_mask=None if face_masks is None else face_masks[i])
        assert not (head & torso).any()
        out["person"].append(_iou(person[i] >= 0.5, gp[i]))
        out["head"].append(_iou(head, gt["head_mask"][i]))
        out["torso"].append(_iou(torso, gt["torso_mask"][i]))
    return {k: float(np.min(v)) for k, v in out.items()}


def test_colour_matches_synthetic_ground_truth(clip):
    frames, gt, _ = clip
    lm = gt["landmarks"].astype(np.float32)
    person = _run(frames, lm)
    assert person.dtype == np.float32 and person.shape == frames.shape[:3]
    assert 0.0 <= person.min() and person.max() <= 1.0
    # measured (worst frame): person 0.997, head 0.964, torso 0.968
    ious = _ious(person, gt, lm)
    assert ious["person"] > 0.97 and ious["head"] > 0.94 and ious["torso"] > 0.95, ious


def test_colour_with_face_masks_and_missing_landmarks(clip):
    frames, gt, face_masks = clip
    lm = gt["landmarks"].astype(np.float32).copy()
    person = _run(frames, lm, face_masks)
    # measured (worst frame): person 0.997, head 0.996, torso 0.993
    ious = _ious(person, gt, lm, face_masks)
    assert ious["person"] > 0.97 and ious["head"] > 0.97 and ious["torso"] > 0.97, ious
    # a frame without a face reuses the previous geometry; a chunk with no face at all stays empty
    lm[10] = np.nan
    p2 = _run(frames[:16], lm[:16])
    gp = gt["head_mask"][10] | gt["torso_mask"][10]
    assert _iou(p2[10] >= 0.5, gp) > 0.95
    empty = make_segmenter("colour").segment(frames[:2], np.full((2, 68, 2), np.nan, np.float32))
    assert isinstance(empty, Segmentation) and empty.classes is None and not empty.person.any()


def _camouflage(frames, gt, kind):
    """Background painted in the person's colours (ground truth unchanged): a hair-coloured band from
    the top edge down to the hair, or clothes-coloured curtains beside the head and neck."""
    frames = frames.copy()
    person = gt["head_mask"] | gt["torso_mask"]
    rows = np.arange(frames.shape[1])[:, None]
    for i, f in enumerate(frames):
        lm = gt["landmarks"][i]
        region = np.zeros(person.shape[1:], bool)
        if kind == "band":
            colour = np.median(f[gt["head_mask"][i] & (rows < lm[19, 1] - 10)], 0)
            ys, xs = np.nonzero(gt["head_mask"][i])
            region[:ys.min() + 15, xs.min() - 40:xs.max() + 40] = True
        else:
            colour = np.median(f[gt["torso_mask"][i] & (rows > 450)], 0)
            c = int(lm[8, 1])
            region[c - 80:c + 60, :100] = region[c - 80:c + 60, -100:] = True
        f[region & ~person[i]] = colour
    return frames


def test_colour_with_person_coloured_background(clip):
    frames, gt, _ = clip
    gt = {k: gt[k][:8] for k in ("head_mask", "torso_mask", "landmarks")}
    lm = gt["landmarks"].astype(np.float32)
    # curtains in the clothes' colour beside the head: the chest seed keeps a foreground model of
    # that colour. Worst frame measured: person 0.998, head 0.975, torso 0.977 (before the face-geometry
    # bounds, chest seed and 10 first-frame iterations: 0.55 / 0.98 / 0.17, the torso lost)
    ious = _ious(_run(_camouflage(frames[:8], gt, "curtains"), lm), gt, lm)
    assert ious["person"] > 0.97 and ious["head"] > 0.94 and ious["torso"] > 0.95, ious
    # a band in the hair's exact colour from the top edge down to the hair: the band never becomes head;
    # the colour model drops part of the hair instead (a known weakness: head 0.80, before 0.59)
    person = _run(_camouflage(frames[:8], gt, "band"), lm)
    ious = _ious(person, gt, lm)
    assert ious["head"] > 0.7 and ious["torso"] > 0.95, ious
    for i in range(8):
        head, _ = split_parts(person[i], lm[i])
        assert not (head & ~gt["head_mask"][i])[:60].any()


def test_colour_on_a_real_photo():
    from skimage import data

    from preprocessing.landmarks import make_detector

    img = data.astronaut()
    lm = make_detector("dlib").detect(img)[0].landmarks.astype(np.float32)
    person = make_segmenter("colour").segment(img[None], lm[None]).person[0]
    ij = np.clip(np.floor(lm).astype(int), 0, 511)
    assert (person[ij[:, 1], ij[:, 0]] >= 0.5).mean() >= 0.95  # measured 0.985
    corners = {"top-left": person[:20, :20], "top-right": person[:20, -20:], "bottom-right": person[-20:, -20:]}
    for name, patch in corners.items():
        assert (patch < 0.5).mean() > 0.9, name
    # known failure, kept visible: the bottom-left corner is the flag's red/white stripes right beside
    # the orange sleeve, which the colour models cannot tell from the suit (measured alpha 1.0 there)
    head, torso = split_parts(person, lm)
    assert head[ij[:, 1], ij[:, 0]].mean() > 0.9
    # any frame size: a non-square crop of the same photo
    crop = np.ascontiguousarray(img[:400, 50:350])
    p2 = make_segmenter("colour").segment(crop[None], (lm - [50, 0])[None]).person[0]
    assert p2.shape == (400, 300) and (p2[ij[:, 1], ij[:, 0] - 50] >= 0.5).mean() >= 0.95
    assert (p2[:20, :20] < 0.5).mean() > 0.9 and (p2[:20, -20:] < 0.5).mean() > 0.9
    assert torso[260:500, 80:260].mean() > 0.95  # the suit below her face
    assert not head[250:].any()


def test_split_parts_geometry_and_roll():
    h = w = 200
    alpha = np.zeros((h, w), np.float32)
    alpha[40:200, 60:140] = 1.0  # a person column
    # an upright face: jaw from (70, 90) to (130, 90) curving to the chin at (100, 120)
    lm = np.zeros((68, 2), np.float32)
    t = np.linspace(0, np.pi, 17)
    lm[0:17] = np.stack([100 - 30 * np.cos(t), 90 + 30 * np.sin(t)], 1)
    lm[36:42] = (85, 75)
    lm[42:48] = (115, 75)
    lm[17:36] = (100, 85)
    lm[48:68] = (100, 105)
    head, torso = split_parts(alpha, lm)
    assert head[60, 100] and head[115, 100] and torso[130, 100] and torso[180, 70]
    assert not head[150:].any() and not (head & torso).any() and not ((head | torso) & (alpha < 0.5)).any()
    # matte left out of both lies outside what the face geometry supports (the column's top corners)
    left_out = (alpha >= 0.5) & ~head & ~torso
    assert left_out.any() and not (left_out & person_region(head_frame(lm), h, w)).any()
    assert left_out[40:60].sum() == left_out.sum()
    # rotating the image and the landmarks by 90° rotates the split with them
    rot = lambda a: np.rot90(a, -1)  # noqa: E731  (clockwise: (x, y) → (h − 1 − y, x) in pixel indices)
    lm_r = np.stack([h - lm[:, 1], lm[:, 0]], 1)
    head_r, torso_r = split_parts(np.ascontiguousarray(rot(alpha)), lm_r)
    assert _iou(head_r, rot(head)) > 0.97 and _iou(torso_r, rot(torso)) > 0.97


def test_split_parts_with_classes():
    h = w = 100
    cls = np.zeros((h, w), np.uint8)
    cls[10:30, 30:70] = HAIR
    cls[30:60, 35:65] = FACE_SKIN
    cls[60:70, 45:55] = BODY_SKIN
    cls[70:100, 20:80] = CLOTHES
    cls[20:25, 70:75] = OTHERS  # a hat brim above the neck cut → head
    cls[90:95, 10:15] = OTHERS  # something held below it → torso
    lm = np.zeros((68, 2), np.float32)
    t = np.linspace(0, np.pi, 17)
    lm[0:17] = np.stack([50 - 15 * np.cos(t), 45 + 15 * np.sin(t)], 1)
    lm[36:42], lm[42:48] = (43, 40), (57, 40)
    alpha = (cls != 0).astype(np.float32)
    head, torso = split_parts(alpha, lm, classes=cls)
    expect_head = np.isin(cls, (HAIR, FACE_SKIN))
    expect_head[20:25, 70:75] = True
    assert (head == expect_head).all()
    assert (torso == ((cls != 0) & ~expect_head)).all()
    with pytest.raises(ValueError, match="classes"):
        split_parts(alpha, lm, classes=cls[:50])


def test_bad_inputs_and_unknown_backend():
    assert set(available_segmenters()) >= {"colour", "rembg", "mediapipe"}
    with pytest.raises(ValueError, match=r"unknown segmentation backend 'nope'.*colour.*rembg"):
        make_segmenter("nope")
    seg = make_segmenter("colour")
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    lm = np.zeros((2, 68, 2), np.float32)
    with pytest.raises(ValueError, match="frames"):
        seg.segment(frames[..., 0], lm)
    with pytest.raises(ValueError, match="frames"):
        seg.segment(frames.astype(np.float32), lm)
    with pytest.raises(ValueError, match="landmarks"):
        seg.segment(frames, lm[:1])
    with pytest.raises(ValueError, match="face_masks"):
        seg.segment(frames, lm, face_masks=np.zeros((2, 16, 16), bool))
    with pytest.raises(ValueError, match="person_alpha"):
        split_parts(np.zeros((2, 32, 32), np.float32), lm[0])
    with pytest.raises(ValueError, match="landmarks"):
        split_parts(np.zeros((32, 32), np.float32), lm[0, :10])


# ---------------------------------------------------------------------------------------------
# rembg: the real session code on a stand-in ONNX with U²-Net's signature


def _prior(size: int = 320) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (((xx - 160) ** 2 + (yy - 180) ** 2) < 100 ** 2).astype(np.float32)


def _stand_in_u2net(path):
    """input.1 (1, 3, 320, 320) → out = disc prior × channel mean of the input, (1, 1, 320, 320)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    prior = numpy_helper.from_array(_prior()[None, None], name="prior")
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["m", "prior"], ["d0"])]
    graph = helper.make_graph(nodes, "standin_u2net",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
                              [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [1, 1, 320, 320])],
                              initializer=[prior])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    import pooch

    monkeypatch.setattr(pooch, "retrieve", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    try:
        import requests

        monkeypatch.setattr(requests.Session, "request", refuse)
    except ImportError:  # pragma: no cover
        pass


def test_rembg_stand_in_known_answer(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("U2NET_HOME", raising=False)
    _stand_in_u2net(tmp_path / "u2net" / "u2net_human_seg.onnx")
    seg = make_segmenter("rembg", home=str(tmp_path))
    import os

    assert os.environ["U2NET_HOME"] == str(tmp_path / "u2net")
    # a uniform frame: the output is the disc prior (min–max normalised), resized to the frame
    frames = np.full((2, 240, 200, 3), 180, np.uint8)
    frames[1] = np.interp(np.arange(200), [80, 120], [180, 40]).round().astype(np.uint8)[None, :, None]
    out = seg.segment(frames, np.full((2, 68, 2), np.nan, np.float32))
    assert out.classes is None and out.person.shape == (2, 240, 200) and out.person.dtype == np.float32
    import cv2

    expect = cv2.resize(_prior(), (200, 240), interpolation=cv2.INTER_LINEAR) >= 0.5
    assert _iou(out.person[0] >= 0.5, expect) > 0.97
    far = cv2.erode((~expect).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0  # away from the resampled rim
    assert out.person[0][far].max() < 0.05
    # a frame with a darker right half (a smooth ramp, so resampling does not overshoot): rembg
    # scales by the max (180) and normalises with ImageNet's mean/std, so the stand-in's raw output is
    # prior × m with m_left > 0 > m_right; after rembg's min–max: inside-left → 1, inside-right → 0,
    # outside the disc → −m_right / (m_left − m_right)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    m_left, m_right = ((1.0 - mean) / std).mean(), ((40 / 180 - mean) / std).mean()
    inside = cv2.erode(expect.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    cols = np.arange(200)[None]
    p1 = out.person[1]
    assert p1[inside & (cols < 75)].mean() > 0.97 and p1[inside & (cols > 125)].mean() < 0.03
    np.testing.assert_allclose(p1[far & (np.abs(cols - 100) > 25)].mean(), -m_right / (m_left - m_right), atol=0.02)
    # the same file through u2net_custom with an explicit path
    custom = make_segmenter("rembg", model_name="u2net_custom",
                            model_path=str(tmp_path / "u2net" / "u2net_human_seg.onnx"))
    np.testing.assert_allclose(custom.segment(frames[:1], np.zeros((1, 68, 2), np.float32)).person[0],
                               out.person[0], atol=1e-6)


def test_rembg_missing_model(tmp_path, no_network):
    with pytest.raises(SegmentationError) as e:
        make_segmenter("rembg", home=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "u2net" / "u2net_human_seg.onnx") in msg and "rembg" in msg and "releases" in msg
    # default home is $R3P_HOME (set per test by conftest)
    with pytest.raises(SegmentationError, match="r3p_home/u2net/u2net.onnx"):
        make_segmenter("rembg", model_name="u2net")
    with pytest.raises(ValueError, match="unknown rembg model"):
        make_segmenter("rembg", model_name="nope", home=str(tmp_path))
    with pytest.raises(ValueError, match="model_path"):
        make_segmenter("rembg", model_name="u2net_custom", home=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None, reason="mediapipe is installed")
def test_mediapipe_absent_says_how_to_install(tmp_path):
    with pytest.raises(SegmentationError) as e:
        make_segmenter("mediapipe", home=str(tmp_path))
    msg = str(e.value)
    assert "pip install 'r3p[mediapipe]'" in msg and "numpy<2" in msg
    assert str(tmp_path / "mediapipe" / "selfie_multiclass_256x256.tflite") in msg
