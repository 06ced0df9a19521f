"""BFM09 -> BFM_model_front.mat conversion on small stand-ins written in the real file formats."""

import struct

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from conftest import grid_model_arrays
from preprocessing.bfm09 import SOURCES, convert_bfm09, read_exp_pca
from preprocessing.face_model import FaceModelError, load_face_model

M_FULL = 120  # BFM09 vertices (real: 53490)
N_EXP_V = 100  # expression-model vertices (real: 53215)
GRID = 9  # front model: a 9 x 9 grid, 81 vertices (real: 35709)
K_EXP = 79


def _write_exp_pca(path, mean, basis):
    """Exp_Pca.bin by hand: int32 K, float32 mean (3n), float32 basis component-major (K, 3n)."""
    k = basis.shape[1]
    with open(path, "wb") as fh:
        fh.write(struct.pack("<i", k))
        fh.write(np.asarray(mean, dtype="<f4").tobytes())
        fh.write(np.asarray(basis.T, dtype="<f4").tobytes())


@pytest.fixture
def originals(tmp_path):
    """A folder with all six BFM09 inputs (small, real formats) and the arrays written into it."""
    rng = np.random.default_rng(7)
    src = tmp_path / "BFM"
    src.mkdir()
    n_front = GRID * GRID
    bfm = {
        "shapeMU": rng.normal(0, 5e4, (3 * M_FULL, 1)).astype(np.float32),  # micrometres, like BFM09
        "shapePC": rng.normal(0, 1e-2, (3 * M_FULL, 199)).astype(np.float32),
        "shapeEV": np.sort(rng.uniform(1e3, 1e5, (199, 1)), axis=0)[::-1].astype(np.float32),
        "texMU": rng.uniform(40, 220, (3 * M_FULL, 1)).astype(np.float32),
        "texPC": rng.normal(0, 1e-2, (3 * M_FULL, 199)).astype(np.float32),
        "texEV": np.sort(rng.uniform(100, 3e3, (199, 1)), axis=0)[::-1].astype(np.float32),
    }
    savemat(src / "01_MorphableModel.mat", bfm)
    exp_mean = rng.normal(0, 1e3, 3 * N_EXP_V).astype(np.float32)
    exp_pc = rng.normal(0, 1e-2, (3 * N_EXP_V, K_EXP)).astype(np.float32)
    _write_exp_pca(src / "Exp_Pca.bin", exp_mean, exp_pc)
    std_exp = rng.uniform(1e3, 5e4, K_EXP)
    np.savetxt(src / "std_exp.txt", std_exp)
    trim = rng.choice(M_FULL, N_EXP_V, replace=False) + 1  # 1-based BFM09 vertex per expression vertex
    idx = rng.choice(N_EXP_V, n_front, replace=False) + 1  # 1-based front vertices
    savemat(src / "BFM_exp_idx.mat", {"trimIndex": trim.reshape(-1, 1).astype(np.int32)})
    savemat(src / "BFM_front_idx.mat", {"idx": idx.reshape(-1, 1).astype(np.float64)})
    grid = grid_model_arrays(n=GRID)
    info = {k: grid[k] for k in ("frontmask2_idx", "skinmask", "keypoints", "point_buf", "tri", "tri_mask2")}
    savemat(src / "facemodel_info.mat", info)
    return {"src": src, "bfm": bfm, "exp_mean": exp_mean, "exp_pc": exp_pc, "std_exp": std_exp,
            "trim": trim, "idx": idx, "info": info}


def _expected(o):
    """The transferBFM09 recipe, written out vertex by vertex."""
    bfm, n_front = o["bfm"], len(o["idx"])
    out = {k: np.zeros((3 * n_front, w)) for k, w in (("idBase", 80), ("exBase", 64), ("texBase", 80))}
    mean = np.zeros(3 * n_front)
    tex = np.zeros(3 * n_front)
    for v, front in enumerate(o["idx"]):
        exp_vertex = int(front) - 1
        full_vertex = int(o["trim"][exp_vertex]) - 1
        for c in range(3):
            row, src_row, exp_row = 3 * v + c, 3 * full_vertex + c, 3 * exp_vertex + c
            mean[row] = float(bfm["shapeMU"][src_row, 0]) / 1e5
            tex[row] = float(bfm["texMU"][src_row, 0])
            for k in range(80):
                out["idBase"][row, k] = float(bfm["shapePC"][src_row, k]) * float(bfm["shapeEV"][k, 0]) / 1e5
                out["texBase"][row, k] = float(bfm["texPC"][src_row, k]) * float(bfm["texEV"][k, 0])
            for k in range(64):
                out["exBase"][row, k] = float(o["exp_pc"][exp_row, k]) * o["std_exp"][k] / 1e5
    out["meanshape"] = mean.reshape(1, -1)
    out["meantex"] = tex.reshape(1, -1)
    return out


def test_read_exp_pca_layout(originals):
    mean, pc = read_exp_pca(originals["src"] / "Exp_Pca.bin")
    assert mean.shape == (3 * N_EXP_V,) and pc.shape == (3 * N_EXP_V, K_EXP)
    np.testing.assert_array_equal(mean, originals["exp_mean"])
    np.testing.assert_array_equal(pc, originals["exp_pc"])


def test_convert_follows_the_recipe(originals):
    src = originals["src"]
    out = convert_bfm09(src)
    assert out == src / "BFM_model_front.mat" and out.is_file()
    assert not [p for p in src.iterdir() if p.name.endswith(".tmp")]  # written atomically
    raw = loadmat(str(out))
    assert raw["exBase"].dtype == np.float64
    expected = _expected(originals)
    n3 = 3 * GRID * GRID
    shapes = {"meanshape": (1, n3), "meantex": (1, n3), "idBase": (n3, 80), "exBase": (n3, 64), "texBase": (n3, 80)}
    for key, shape in shapes.items():
        assert raw[key].shape == shape, key
        np.testing.assert_allclose(raw[key], expected[key], rtol=2e-6, atol=1e-12, err_msg=key)
    for key, value in originals["info"].items():
        np.testing.assert_array_equal(raw[key], value, err_msg=key)  # copied through
    model = load_face_model(out)
    assert not model.synthetic and model.n_vertices == GRID * GRID
    assert model.metadata()["face_model"] == "bfm"


def test_explicit_output_path(originals, tmp_path):
    target = tmp_path / "elsewhere" / "model.mat"
    assert convert_bfm09(originals["src"], target) == target
    assert load_face_model(target).n_vertices == GRID * GRID


def test_missing_files_are_named_with_their_source(originals):
    src = originals["src"]
    (src / "std_exp.txt").unlink()
    with pytest.raises(FaceModelError, match=r"std_exp\.txt.*Deep3DFaceRecon"):
        convert_bfm09(src)
    (src / "Exp_Pca.bin").unlink()
    (src / "01_MorphableModel.mat").unlink()
    with pytest.raises(FaceModelError) as err:
        convert_bfm09(src)
    message = str(err.value)
    for name in ("std_exp.txt", "Exp_Pca.bin", "01_MorphableModel.mat"):
        assert name in message
    assert "University of Basel" in message and "CoarseData" in message
    assert "BFM_front_idx.mat" not in message  # present files are not reported
    assert not (src / "BFM_model_front.mat").exists()
    assert set(SOURCES) >= {"std_exp.txt", "Exp_Pca.bin", "01_MorphableModel.mat"}


def test_missing_folder(tmp_path):
    with pytest.raises(FaceModelError, match="not found"):
        convert_bfm09(tmp_path / "nope")


def test_truncated_exp_pca_gives_a_clear_error(originals):
    path = originals["src"] / "Exp_Pca.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(FaceModelError, match="truncated"):
        read_exp_pca(path)
    with pytest.raises(FaceModelError, match="truncated"):
        convert_bfm09(originals["src"])
    path.write_bytes(data[:2])
    with pytest.raises(FaceModelError, match="truncated"):
        read_exp_pca(path)
    assert not (originals["src"] / "BFM_model_front.mat").exists()


def test_inconsistent_inputs_are_reported(originals):
    src = originals["src"]
    np.savetxt(src / "std_exp.txt", originals["std_exp"][:50])
    with pytest.raises(FaceModelError, match="std_exp.txt has 50 values"):
        convert_bfm09(src)
    np.savetxt(src / "std_exp.txt", originals["std_exp"])
    savemat(src / "BFM_front_idx.mat", {"idx": np.array([[1], [N_EXP_V + 5]])})
    with pytest.raises(FaceModelError, match="BFM_front_idx.mat idx must be 1-based"):
        convert_bfm09(src)
    savemat(src / "BFM_exp_idx.mat", {"wrong": np.arange(3)})
    with pytest.raises(FaceModelError, match="lacks the keys"):
        convert_bfm09(src)
