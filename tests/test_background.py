"""Background plate (bounded temporal median + inpainting), composite and the inpainted torso."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from preprocessing.background import BackgroundPlate, PlateResult, composite, sample_indices
from preprocessing.segmentation import inpaint_torso, make_segmenter


def test_composite_known_answer():
    frame = np.array([[[200, 100, 0], [200, 100, 0], [200, 100, 0]]], np.uint8)
    plate = np.array([[[100, 50, 255], [100, 50, 255], [100, 50, 255]]], np.uint8)
    alpha = np.array([[0.0, 1.0, 0.5]], np.float32)
    out = composite(frame, alpha, plate)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [100, 50, 255])
    np.testing.assert_array_equal(out[0, 1], [200, 100, 0])
    np.testing.assert_array_equal(out[0, 2], [150, 75, 128])  # 127.5 rounds half up
    with pytest.raises(ValueError, match="plate_image"):
        composite(frame, alpha, plate[:, :2])
    with pytest.raises(ValueError, match="person_alpha"):
        composite(frame, alpha[:, :2], plate)


def test_inpaint_torso_fills_behind_the_head():
    h, w = 60, 60
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:] = (0, 0, 255)  # background: blue
    head = np.zeros((h, w), bool)
    head[5:30, 20:40] = True
    frame[head] = (230, 180, 150)  # face
    torso = np.zeros((h, w), bool)
    torso[30:45, 25:35] = True  # neck
    torso[45:60, 5:55] = True  # shoulders
    frame[30:45, 25:35] = (120, 80, 60)  # neck colour
    frame[45:60, 5:55] = (40, 120, 40)  # shirt
    out = inpaint_torso(frame, head, torso, max_extend=0.25)
    np.testing.assert_array_equal(out[torso], frame[torso])  # the torso is kept as it is
    filled = out.any(-1) & ~torso
    # the band above the neck, up to 15 px (0.25 × 60), gets the neck's colour; the rest stays black
    assert filled[15:30, 25:35].all() and not filled[:15].any()
    assert not filled[:, :25].any() and not filled[:, 35:].any()
    np.testing.assert_allclose(out[15:30, 27:33].reshape(-1, 3).mean(0), (120, 80, 60), atol=2)
    assert not out[~(torso | head)].any()  # background stays 0
    # no head above the torso: nothing to fill
    assert (inpaint_torso(frame, np.zeros_like(head), torso).any(-1) == torso).all()
    with pytest.raises(ValueError, match="torso"):
        inpaint_torso(frame, head, torso[:10])


def test_plate_exact_on_a_static_scene_and_bounded():
    rng = np.random.default_rng(0)
    h, w, n = 40, 50, 20
    bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    frames = np.repeat(bg[None], n, 0)
    person = np.zeros((n, h, w), np.float32)
    for i in range(n):  # a square walking left to right; columns 20–24 are covered in every frame
        x0 = min(5 + i, 20)
        person[i, 10:30, x0:x0 + 20] = 1.0
        frames[i, 10:30, x0:x0 + 20] = (255, 0, 255)
    plate = BackgroundPlate(h, w, max_samples=7, dilate=0)
    for s in range(0, n, 6):
        plate.add(frames[s:s + 6], person[s:s + 6], s, n)
    assert len(plate._frames) == 7 and sorted(plate._frames) == list(sample_indices(n, 7))
    res = plate.finish()
    assert isinstance(res, PlateResult)
    seen = res.visible_fraction > 0
    np.testing.assert_array_equal(res.image[seen], bg[seen])
    always = np.zeros((h, w), bool)
    always[10:30, 20:25] = True
    assert (res.inpainted == always).all() and (res.visible_fraction[always] == 0).all()
    assert not (res.image[always] == (255, 0, 255)).all(-1).any()  # the person is not in the plate
    with pytest.raises(ValueError, match="person"):
        plate.add(frames[:2], person[:1], 0, n)
    with pytest.raises(ValueError, match="no frames"):
        BackgroundPlate(h, w).finish()


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model
    from preprocessing.video import load_clip

    out = tmp_path_factory.mktemp("platesynth")
    generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=1, clips=1, seconds=1.2, size=256, seed=7),
                    out)
    stem = out / "synth007_id000" / "clip000"
    return load_clip(stem.with_suffix(".mp4")).frames(), dict(np.load(stem.with_suffix(".npz")))


def test_plate_on_synthetic_clip(small_clip):
    frames, gt = small_clip
    n, h, w = frames.shape[:3]
    seg = make_segmenter("colour")
    plate = BackgroundPlate(h, w, max_samples=16)
    for s in range(0, n, 8):
        out = seg.segment(frames[s:s + 8], gt["landmarks"][s:s + 8])
        plate.add(frames[s:s + 8], out.person, s, n)
    res = plate.finish()
    gp = gt["head_mask"] | gt["torso_mask"]
    visible = cv2.dilate(gp.any(0).astype(np.uint8), np.ones((7, 7), np.uint8)) == 0
    err = np.abs(res.image.astype(np.int32) - gt["background"].astype(np.int32)).mean(-1)
    assert err[visible].mean() < 2.5  # measured 1.3 (H.264 at crf 18)
    always = gp.all(0)
    iou = (res.inpainted & always).sum() / (res.inpainted | always).sum()
    assert iou > 0.85, iou  # measured 0.93
    assert err[res.inpainted].mean() < 25  # the hole is filled from its surroundings, not left black
