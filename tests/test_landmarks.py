"""Landmark backends: dlib on a real photo, insightface's real loading/decoding on stand-in ONNX files."""

from __future__ import annotations

import time

import numpy as np
import pytest

from preprocessing.landmarks import (
    Face,
    LandmarkDetector,
    LandmarkModelError,
    available_detectors,
    make_detector,
)


@pytest.fixture(scope="module")
def dlib_hog():
    return make_detector("dlib")


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


def _check_face_layout(lm: np.ndarray) -> None:
    """iBUG-68 anatomy in an upright frontal face (x right, y down)."""
    # her face in the 512² astronaut image: dlib box ≈ (175, 76)-(266, 167), points x 179–273, y 87–179
    assert lm[:, 0].min() > 160 and lm[:, 0].max() < 290
    assert lm[:, 1].min() > 70 and lm[:, 1].max() < 195
    right_eye, left_eye = lm[36:42].mean(0), lm[42:48].mean(0)  # 36–41 on the image left
    nose_tip, mouth, chin = lm[30], lm[48:68].mean(0), lm[8]
    assert right_eye[0] + 20 < left_eye[0]
    eyes_y = max(right_eye[1], left_eye[1])
    assert eyes_y < nose_tip[1] < mouth[1] < chin[1]
    assert right_eye[0] < nose_tip[0] < left_eye[0]
    assert lm[48, 0] < lm[54, 0]  # mouth corners left → right
    assert lm[0, 0] < lm[16, 0]  # jaw runs left → right


def test_factory_and_protocol(dlib_hog):
    assert set(available_detectors()) >= {"dlib", "insightface"}
    assert isinstance(dlib_hog, LandmarkDetector)
    with pytest.raises(ValueError, match="unknown landmark backend"):
        make_detector("nope")


def test_dlib_finds_one_face_with_68_points(dlib_hog, astronaut):
    faces = dlib_hog.detect(astronaut)
    assert len(faces) == 1  # the 0.12-margin false positive on her hand is below min_score 0.3
    face = faces[0]
    assert isinstance(face, Face) and face.landmarks.shape == (68, 2) and face.score > 0.5
    x0, y0, x1, y1 = face.box
    assert 160 < x0 < x1 < 290 and 60 < y0 < y1 < 195
    _check_face_layout(face.landmarks)
    # +0.5 convention: dlib's integer indices become pixel centres
    assert np.allclose(face.landmarks % 1.0, 0.5)


def test_dlib_hog_finds_nothing_on_flat_gray(dlib_hog):
    assert dlib_hog.detect(np.full((240, 320, 3), 128, dtype=np.uint8)) == []


def test_dlib_rejects_bad_image(dlib_hog):
    with pytest.raises(ValueError, match="RGB uint8"):
        dlib_hog.detect(np.zeros((10, 10), dtype=np.uint8))


def test_dlib_missing_model_file_is_named(tmp_path):
    with pytest.raises(LandmarkModelError, match="shape_predictor_68_face_landmarks.dat"):
        make_detector("dlib", models_dir=tmp_path)
    with pytest.raises(ValueError, match="'hog' or 'cnn'"):
        make_detector("dlib", detector="svm")


@pytest.mark.slow
def test_dlib_cnn_agrees_with_hog(dlib_hog, astronaut):
    cnn = make_detector("dlib", detector="cnn", upsample=0)
    faces = cnn.detect(astronaut)
    assert len(faces) == 1
    _check_face_layout(faces[0].landmarks)
    hog = dlib_hog.detect(astronaut)[0]
    assert np.abs(faces[0].landmarks - hog.landmarks).max() < 4.0


# ---------------------------------------------------------------------------------------------
# insightface: stand-in ONNX files with buffalo_l's input/output signatures


STRIDES = (8, 16, 32)
# distances (left, top, right, bottom) in stride units and 5 key-point offsets, decoded by SCRFD
BOX_DIST = np.array([1.5, 1.5, 2.5, 2.5], dtype=np.float32)
KPS_DIST = np.array([0.5, 0.5, 1.5, 0.5, 1.0, 1.0, 0.6, 1.5, 1.4, 1.5], dtype=np.float32)


def _landmark_template() -> np.ndarray:
    """(68, 3) normalised crop coordinates in [-0.45, 0.45] (x, y) with some depth."""
    rng = np.random.default_rng(7)
    return np.concatenate([rng.uniform(-0.45, 0.45, (68, 2)), rng.uniform(-0.3, 0.3, (68, 1))],
                          axis=1).astype(np.float32)


def _write_det_10g(path) -> None:
    """SCRFD-shaped stand-in: input 'input.1' 1×3×?×?, 9 outputs (scores, boxes, kps × strides 8/16/32).

    The score of each anchor is relu(mean brightness of its stride cell) × w_s (blob units, white ≈ 1),
    with w = 0.4, 0.4, 0.9: only a white stride-32 cell passes the 0.5 threshold. Box and key-point
    outputs are constant distances broadcast to the input-dependent anchor count.
    """
    import onnx
    from onnx import TensorProto, helper

    nodes, inits = [], []
    inits.append(helper.make_tensor("flat", TensorProto.INT64, [2], [-1, 1]))
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["gray"], axes=[1], keepdims=1))
    scores, boxes, kpss = [], [], []
    for s, weight in zip(STRIDES, (0.4, 0.4, 0.9)):
        nodes += [
            helper.make_node("AveragePool", ["gray"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Reshape", [f"pool{s}", "flat"], [f"cell{s}"]),
            helper.make_node("Concat", [f"cell{s}", f"cell{s}"], [f"pair{s}"], axis=1),  # 2 anchors
            helper.make_node("Reshape", [f"pair{s}", "flat"], [f"anchor{s}"]),
            helper.make_node("Relu", [f"anchor{s}"], [f"pos{s}"]),
            helper.make_node("Mul", [f"pos{s}", f"w{s}"], [f"score{s}"]),
            helper.make_node("Mul", [f"anchor{s}", "zero"], [f"z{s}"]),
            helper.make_node("Add", [f"z{s}", "box_dist"], [f"bbox{s}"]),
            helper.make_node("Add", [f"z{s}", "kps_dist"], [f"kps{s}"]),
        ]
        inits.append(helper.make_tensor(f"w{s}", TensorProto.FLOAT, [1], [weight]))
        scores.append(helper.make_tensor_value_info(f"score{s}", TensorProto.FLOAT, ["n", 1]))
        boxes.append(helper.make_tensor_value_info(f"bbox{s}", TensorProto.FLOAT, ["n", 4]))
        kpss.append(helper.make_tensor_value_info(f"kps{s}", TensorProto.FLOAT, ["n", 10]))
    inits += [helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
              helper.make_tensor("box_dist", TensorProto.FLOAT, [1, 4], BOX_DIST.tolist()),
              helper.make_tensor("kps_dist", TensorProto.FLOAT, [1, 10], KPS_DIST.tolist())]
    graph = helper.make_graph(
        nodes, "scrfd_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        scores + boxes + kpss, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_1k3d68(path) -> None:
    """3D-68 landmark stand-in: input 'data' 1×3×192×192, output 1×3309 (1103 × xyz, last 68 used)."""
    import onnx
    from onnx import TensorProto, helper

    values = np.zeros((1103, 3), dtype=np.float32)
    values[-68:] = _landmark_template()
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["level"], axes=[1, 2, 3], keepdims=0),  # (1,)
        helper.make_node("Unsqueeze", ["level", "axis1"], ["level2"]),  # (1, 1)
        helper.make_node("Mul", ["level2", "zero"], ["nil"]),
        helper.make_node("Add", ["nil", "template"], ["fc1"]),  # (1, 3309)
    ]
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
             helper.make_tensor("template", TensorProto.FLOAT, [1, 3309], values.ravel().tolist())]
    graph = helper.make_graph(
        nodes, "lmk3d68_standin",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3309])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def buffalo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("r3p_home")
    folder = home / "insightface" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    _write_det_10g(folder / "det_10g.onnx")
    _write_1k3d68(folder / "1k3d68.onnx")
    return home


def test_insightface_missing_models_named(tmp_path):
    with pytest.raises(LandmarkModelError, match=r"buffalo_l.*det_10g\.onnx.*r3p assets"):
        make_detector("insightface", home=tmp_path)


def test_insightface_standin_models_decode(buffalo_home):
    t0 = time.perf_counter()
    det = make_detector("insightface", home=buffalo_home, det_size=(640, 640))
    assert set(det._app.models) == {"detection", "landmark_3d_68"}  # routed by shapes, as for the real files
    # a white 32×32 square on the stride-32 cell with top-left (320, 224), in a 640² black frame
    image = np.zeros((640, 640, 3), dtype=np.uint8)
    image[224:256, 320:352] = 255
    faces = det.detect(image)
    assert len(faces) == 1
    face = faces[0]
    assert face.score == pytest.approx(0.9 * (255 - 127.5) / 128, abs=1e-3)
    # SCRFD decoding: anchor (320, 224) ± distances × 32, then our +0.5 pixel-centre shift
    expected_box = np.array([320 - 1.5 * 32, 224 - 1.5 * 32, 320 + 2.5 * 32, 224 + 2.5 * 32]) + 0.5
    assert np.allclose(face.box, expected_box, atol=1e-3)
    # landmark decoding: crop centred on the box centre (336, 240) at scale 192 / (1.5 × 128) = 1,
    # normalised (u, v) → centre + 96 · (u, v) in OpenCV index coordinates, + 0.5
    expected = np.array([336.0, 240.0]) + 96.0 * _landmark_template()[:, :2] + 0.5
    assert np.abs(face.landmarks - expected).max() < 1e-3
    # nothing on a black frame
    assert det.detect(np.zeros((480, 640, 3), dtype=np.uint8)) == []
    assert time.perf_counter() - t0 < 10.0


def test_dlib_detections_track_and_crop(dlib_hog, astronaut):
    from preprocessing.landmarks import crop_frames, track_faces

    padded = np.pad(astronaut, ((20, 20), (20, 20), (0, 0)), mode="edge")
    shifts = [(0, 0), (3, 1), (6, 2), (9, 4)]  # the camera pans: she moves left/up in the frame
    frames = np.stack([padded[20 + dy:20 + dy + 512, 20 + dx:20 + dx + 512] for dx, dy in shifts])
    track = track_faces([dlib_hog.detect(f) for f in frames], crop_size=256)
    assert track.valid.all() and track.n_tracks == 1
    crops = crop_frames(frames, track.crop, size=track.crop_size)
    assert crops.shape == (4, 256, 256, 3)
    lm = track.crop_landmarks
    assert np.median(np.ptp(lm[:, :, 0], axis=1)) == pytest.approx(256 / 3, rel=0.05)
    assert abs(np.median(lm[:, :, 0]) - 128) < 20
    assert (lm[:, 36:48, 1] < 128).all() and (lm[:, 8, 1] > 128).all()  # eyes above, chin below centre


def test_dlib_downscaled_detection_keeps_full_resolution_landmarks(dlib_hog, astronaut):
    from preprocessing.landmarks import make_detector

    full = dlib_hog.detect(astronaut)[0]
    fast = make_detector("dlib", detect_max_side=256).detect(astronaut)
    assert len(fast) == 1
    # the box comes from a half-size image (a few px coarser); the 68 points from the full image
    assert np.abs(fast[0].box - full.box).max() < 8
    assert np.linalg.norm(fast[0].landmarks - full.landmarks, axis=1).mean() < 3.0
    with pytest.raises(ValueError, match="detect_max_side"):
        make_detector("dlib", detect_max_side=10)
