"""Loading BFM_model_front.mat: layout conversion, validation errors, eye faces, trimesh."""

import numpy as np
import pytest
from scipy.io import savemat

from conftest import grid_model_arrays
from preprocessing.face_model import FaceModelError, eye_faces_from_landmarks, load_face_model


def _write(tmp_path, arrays, name="BFM_model_front.mat"):
    path = tmp_path / name
    savemat(path, arrays)
    return path


def test_round_trip_layout_conversion(tmp_path):
    arrays = grid_model_arrays(n=10)
    arrays["meanshape"] = arrays["meanshape"] + np.tile([0.5, -0.2, 0.3], 100)[None]
    model = load_face_model(_write(tmp_path, arrays))
    assert model.n_vertices == 100 and model.n_faces == 162
    assert model.exp_base.dtype == np.float32 and model.id_base.dtype == np.float32
    np.testing.assert_allclose(model.mean_shape.mean(axis=0), 0.0, atol=1e-6)  # re-centred
    assert model.tri.min() == 0 and model.tri.max() == 99  # 1-based -> 0-based
    assert model.keypoints[0] == 0 and model.keypoints[-1] == 67
    assert model.point_buf.max() == model.n_faces  # the padding value points at the dummy face F
    assert model.front_tri.shape == model.tri.shape and model.skin_mask.dtype == bool
    assert not model.synthetic and model.metadata()["face_model"] == "bfm"
    raw_uncentred = load_face_model(_write(tmp_path, arrays), recenter=False).mean_shape
    np.testing.assert_allclose(raw_uncentred[0], [-0.5, -1.2, 0.3], atol=1e-6)
    mesh = model.to_trimesh()
    assert mesh.vertices.shape == (100, 3) and mesh.faces.shape == (162, 3)


def test_synthetic_marker_is_reported(tmp_path):
    arrays = grid_model_arrays()
    arrays["r3p_synthetic"] = "r3p synthetic test seed=7"
    model = load_face_model(_write(tmp_path, arrays))
    assert model.synthetic and "seed=7" in model.description
    assert model.metadata()["face_model"] == "synthetic"


def test_missing_file_and_bad_layouts(tmp_path):
    with pytest.raises(FaceModelError, match="not found.*convert-bfm"):
        load_face_model(tmp_path / "nope.mat")
    (tmp_path / "junk.mat").write_bytes(b"this is not a mat file")
    with pytest.raises(FaceModelError, match="cannot read"):
        load_face_model(tmp_path / "junk.mat")
    arrays = grid_model_arrays()
    del arrays["point_buf"]
    with pytest.raises(FaceModelError, match="missing keys \\['point_buf'\\]"):
        load_face_model(_write(tmp_path, arrays, "a.mat"))
    arrays = grid_model_arrays()
    arrays["exBase"] = arrays["exBase"][:, :10]
    with pytest.raises(FaceModelError, match="exBase has shape"):
        load_face_model(_write(tmp_path, arrays, "b.mat"))
    arrays = grid_model_arrays()
    arrays["tri"] = arrays["tri"] - 1  # 0-based on disk is wrong
    with pytest.raises(FaceModelError, match="1-based"):
        load_face_model(_write(tmp_path, arrays, "c.mat"))


def test_eye_faces_from_files_and_from_landmarks(tmp_path):
    arrays = grid_model_arrays(n=12)
    # put the right-eye landmarks (36..41) on a hexagon around vertex (row 8, col 3)
    n = 12
    xs = np.linspace(-1, 1, n)
    centre = np.array([xs[3], xs[8]])
    ring = [0, 1, 2, 3, 4, 5]
    kp = arrays["keypoints"].astype(np.int64).ravel() - 1
    verts = arrays["meanshape"].reshape(-1, 3)
    for k, lm in zip(ring, range(36, 42)):
        ang = np.pi - k * np.pi / 3  # clockwise from the outer corner, as iBUG
        target = centre + 0.3 * np.array([np.cos(ang), np.sin(ang)])
        vid = 100 + k
        verts[vid, :2] = target
        kp[lm] = vid
    arrays["keypoints"] = (kp + 1).reshape(1, 68)
    arrays["meanshape"] = verts.reshape(1, -1)
    model = load_face_model(_write(tmp_path, arrays), recenter=False)
    faces = eye_faces_from_landmarks(model.mean_shape, model.tri, model.keypoints)
    cent = model.mean_shape[model.tri[faces]].mean(axis=1)[:, :2]
    assert len(faces) > 0 and np.all(np.linalg.norm(cent - centre, axis=1) < 0.3)
    assert np.array_equal(np.sort(model.eye_faces), np.sort(faces))
    assert len(model.tri_without_eyes()) == model.n_faces - len(faces)
    # the reference's explicit lists (1-based .npy) take precedence
    np.save(tmp_path / "bfm_right_eye_faces.npy", np.array([1, 2, 3]))
    np.save(tmp_path / "bfm_left_eye_faces.npy", np.array([10]))
    model = load_face_model(tmp_path / "BFM_model_front.mat")
    assert model.eye_faces.tolist() == [0, 1, 2, 9]
    np.save(tmp_path / "bfm_left_eye_faces.npy", np.array([100000]))
    with pytest.raises(FaceModelError, match="eye face lists"):
        load_face_model(tmp_path / "BFM_model_front.mat")


def test_ncc_is_minmax_normalised_mean_shape(grid_model):
    ncc = grid_model.ncc()
    assert ncc.shape == (100, 3)
    np.testing.assert_allclose(ncc[:, :2].min(axis=0), 0.0)
    np.testing.assert_allclose(ncc[:, :2].max(axis=0), 1.0)
    np.testing.assert_allclose(ncc[0, :2], [0.0, 0.0])  # vertex 0 is at (-1, -1)
