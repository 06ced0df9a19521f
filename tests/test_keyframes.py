"""Key-frame detection: the full detector every k frames, the detector near the known faces between them.

Known answers on a synthetic talking-face clip with ground-truth landmarks: the carried frames' landmarks
are as accurate as detecting on every frame; a face that jumps is re-detected at once; k = 1 is plain
detection; a backend without `detect_near` is detected on every frame; bad k is refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.config import ConfigError, geometry_params, load_config
from preprocessing.landmarks import make_detector
from preprocessing.landmarks.keyframes import KeyframeDetector
from preprocessing.synthetic import SynthSpec, generate_corpus
from preprocessing.synthetic_bfm import synthetic_face_model


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("keyframes")
    corpus = generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=1, clips=1, seconds=1.2, size=512,
                                                                     seed=7), root)
    video = next(corpus.glob("*/clip000.mp4"))
    cap, frames = cv2.VideoCapture(str(video)), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    truth = np.load(video.with_suffix(".npz"))["landmarks"]
    return np.stack(frames), truth


@pytest.fixture(scope="module")
def dlib_hog():
    return make_detector("dlib", detect_max_side=320)


def _main(faces):
    return faces[0].landmarks if faces else np.full((68, 2), np.nan)


def test_carried_frames_are_as_accurate_as_detecting_every_frame(clip, dlib_hog):
    frames, truth = clip
    full = np.stack([_main(dlib_hog.detect(f)) for f in frames])
    keyed = KeyframeDetector(dlib_hog, every=5)
    carried = np.stack([_main(keyed.detect(f)) for f in frames])
    n = len(frames)
    assert keyed.key_frames == -(-n // 5) and keyed.carried_frames == n - keyed.key_frames
    err_full = np.linalg.norm(full - truth, axis=-1).mean()
    err_keyed = np.linalg.norm(carried - truth, axis=-1).mean()
    print(f"landmark error vs truth: every frame {err_full:.3f} px, key frames every 5 {err_keyed:.3f} px")
    assert err_keyed < 1.1 * err_full
    assert np.linalg.norm(carried - full, axis=-1).mean() < 0.5 * err_full
    # key frames are the detector's own result
    np.testing.assert_array_equal(carried[::5], full[::5])


def test_a_face_that_jumps_is_detected_again_at_once(clip, dlib_hog):
    frames, _ = clip
    moved = np.roll(frames[6], 120, axis=1)  # the face 120 px to the right: a cut
    seq = [frames[0], frames[1], moved, frames[3]]
    keyed = KeyframeDetector(dlib_hog, every=10)
    got = [_main(keyed.detect(f)) for f in seq]
    assert keyed.key_frames == 3 and keyed.carried_frames == 1  # 0 detected, 1 carried, 2 and 3 jumps
    np.testing.assert_array_equal(got[2], _main(dlib_hog.detect(moved)))
    np.testing.assert_array_equal(got[3], _main(dlib_hog.detect(frames[3])))
    # what the full detector found, the window around its box finds again (same face, same place)
    near = dlib_hog.detect_near(frames[1], dlib_hog.detect(frames[0])[0].box)
    full = _main(dlib_hog.detect(frames[1]))
    assert len(near) == 1 and np.linalg.norm(near[0].landmarks - full, axis=-1).mean() < 2.0


def test_no_face_then_a_face_and_reset(clip, dlib_hog):
    frames, _ = clip
    grey = np.full_like(frames[0], 128)
    keyed = KeyframeDetector(dlib_hog, every=5)
    assert keyed.detect(grey) == [] and keyed.key_frames == 1
    assert keyed.detect(frames[0]) and keyed.key_frames == 2  # nothing carried: detected in full
    keyed.reset()
    assert keyed.key_frames == 0 and keyed.detect(frames[1]) and keyed.key_frames == 1


def test_every_one_is_plain_detection_and_other_backends_detect_every_frame(clip, dlib_hog):
    frames, _ = clip
    keyed = KeyframeDetector(dlib_hog, every=1)
    for f in frames[:3]:
        np.testing.assert_array_equal(_main(keyed.detect(f)), _main(dlib_hog.detect(f)))
    assert keyed.carried_frames == 0

    class DetectOnly:
        name = "detect-only"
        calls = 0

        def detect(self, image):
            DetectOnly.calls += 1
            return dlib_hog.detect(image)

    other = KeyframeDetector(DetectOnly(), every=5)
    for f in frames[:4]:
        other.detect(f)
    assert other.every == 1 and DetectOnly.calls == 4


def test_bad_every_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="detect_every must be >= 1"):
        KeyframeDetector(object(), every=0)
    with pytest.raises(ConfigError, match="detect_every"):
        load_config(None, overrides=["landmarks.detect_every=0"])
    assert geometry_params(load_config(None, overrides=["landmarks.detect_every=3"])).detect_every == 3
