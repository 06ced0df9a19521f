"""Build `BFM_model_front.mat` from the licence-restricted BFM09 originals (`transferBFM09` recipe).

Inputs, all in one folder:

====================  =======================================================================
01_MorphableModel.mat Basel Face Model 2009: shapeMU/shapePC/shapeEV, texMU/texPC/texEV
Exp_Pca.bin           Guo et al. expression PCA: int32 K, float32 mean (3n), float32 K x 3n basis
std_exp.txt           the K expression standard deviations (text)
BFM_front_idx.mat     'idx': 1-based front vertices among the expression model's n vertices
BFM_exp_idx.mat       'trimIndex': 1-based BFM09 vertex of each expression-model vertex
facemodel_info.mat    tri, point_buf, keypoints, frontmask2_idx, tri_mask2, skinmask (copied)
====================  =======================================================================

Recipe (Deep3DFaceRecon): idBase = shapePC * shapeEV / 1e5 (first 80), texBase = texPC * texEV
(first 80), exBase = expPC * expEV / 1e5 (first 64, float64); the front vertices are selected per
vertex (xyz rows together): shape and albedo through trimIndex[idx], expression through idx;
meanshape = shapeMU / 1e5 (decimetres); the expression mean is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from preprocessing.face_model import BFM_FILE, N_EXP, N_ID, N_TEX, FaceModelError, face_model_from_arrays

_DEEP3D = "the BFM folder of Deep3DFaceRecon_pytorch (https://github.com/sicxu/Deep3DFaceRecon_pytorch, BFM/)"
SOURCES: dict[str, tuple[str, str]] = {
    "01_MorphableModel.mat": (
        "the Basel Face Model 2009 (shape and albedo PCA)",
        "the University of Basel after registration (https://faces.dmi.unibas.ch/bfm/, 'BaselFaceModel.tgz')"),
    "Exp_Pca.bin": (
        "the expression PCA basis of Guo et al. (3DFace)",
        "the 'CoarseData' download of Guo et al.'s 3DFace project (https://github.com/Juyong/3DFace)"),
    "std_exp.txt": ("the expression standard deviations (one per Exp_Pca.bin component)", _DEEP3D),
    "BFM_front_idx.mat": ("the front-face vertex indices into the expression model ('idx')", _DEEP3D),
    "BFM_exp_idx.mat": ("the BFM09 vertex of each expression-model vertex ('trimIndex')", _DEEP3D),
    "facemodel_info.mat": ("triangles, landmarks and masks of the front model", _DEEP3D),
}
_INFO_KEYS = ("frontmask2_idx", "skinmask", "keypoints", "point_buf", "tri", "tri_mask2")
_BFM_KEYS = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV")


def _check_sources(src: Path) -> None:
    """One error naming every missing input file, what it is and where to get it."""
    if not src.is_dir():
        raise FaceModelError(f"BFM09 source folder not found: {src}. It must hold {', '.join(SOURCES)}.")
    missing = [name for name in SOURCES if not (src / name).is_file()]
    if missing:
        lines = [f"  - {name}: {SOURCES[name][0]}; get it from {SOURCES[name][1]}" for name in missing]
        raise FaceModelError(f"cannot build {BFM_FILE}: missing in {src}:\n" + "\n".join(lines))


def _load(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        raw = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise FaceModelError(f"cannot read {path}: {exc}. Is it the original MATLAB file?") from exc
    absent = [k for k in keys if k not in raw]
    if absent:
        raise FaceModelError(f"{path} lacks the keys {absent}; is it {SOURCES[path.name][0]}?")
    return {k: raw[k] for k in keys}


def read_exp_pca(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read Exp_Pca.bin: (mean (3n,), basis (3n, K)) float32; n follows from the file size."""
    path = Path(path)
    if not path.is_file():
        name = "Exp_Pca.bin"
        raise FaceModelError(f"{path} not found: {SOURCES[name][0]}; get it from {SOURCES[name][1]}")
    size = path.stat().st_size
    if size < 4:
        raise FaceModelError(f"{path} is {size} bytes: truncated or not Guo et al.'s Exp_Pca.bin")
    k = int(np.fromfile(path, dtype="<i4", count=1)[0])
    per_vertex = 12 * (k + 1)  # xyz float32 for the mean and for each of the K components
    if k <= 0 or (size - 4) % per_vertex or size == 4:
        raise FaceModelError(
            f"{path} is {size} bytes, which is not 4 + 12*n*(K+1) for its header K = {k}: the file is "
            "truncated or not Guo et al.'s Exp_Pca.bin (the real one has K = 79, n = 53215: 51086404 bytes)")
    n3 = 3 * ((size - 4) // per_vertex)
    data = np.fromfile(path, dtype="<f4", offset=4)
    mean = data[:n3]
    basis = np.ascontiguousarray(data[n3:].reshape(k, n3).T)  # stored component-major
    return mean, basis


def _vertex_rows(vertices: np.ndarray) -> np.ndarray:
    """Row indices of the x, y, z entries of each vertex in an xyz-interleaved (3n, ...) array."""
    return (3 * vertices[:, None] + np.arange(3)[None]).reshape(-1)


def _indices(raw: np.ndarray, upper: int, what: str) -> np.ndarray:
    """1-based index array -> 0-based int64, checked to lie in 0..upper-1."""
    idx = np.asarray(raw).reshape(-1).astype(np.int64) - 1
    if idx.size == 0:
        raise FaceModelError(f"{what} is empty; expected 1-based indices in 1..{upper}")
    if idx.min() < 0 or idx.max() >= upper:
        raise FaceModelError(f"{what} must be 1-based indices in 1..{upper}; "
                             f"found {idx.min() + 1}..{idx.max() + 1}")
    return idx


def _scaled(pc: np.ndarray, ev: np.ndarray, keep: int, divisor: float, rows: np.ndarray, name: str) -> np.ndarray:
    """pc * ev / divisor for the first `keep` components, on `rows` only (same per-element result)."""
    ev = np.asarray(ev).reshape(-1)
    if pc.shape[1] < keep or ev.size < keep:
        raise FaceModelError(f"{name}: need at least {keep} components, found {pc.shape[1]} (std: {ev.size})")
    return pc[rows, :keep] * ev[None, :keep] / divisor


def convert_bfm09(src_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Convert the BFM09 originals in `src_dir` to `BFM_model_front.mat` (default: in `src_dir`)."""
    from preprocessing.synthetic_bfm import write_bfm_mat

    src = Path(src_dir).expanduser()
    _check_sources(src)
    out = Path(out_path).expanduser() if out_path is not None else src / BFM_FILE
    bfm = _load(src / "01_MorphableModel.mat", _BFM_KEYS)
    _, exp_pc = read_exp_pca(src / "Exp_Pca.bin")
    exp_std = np.loadtxt(src / "std_exp.txt", dtype=np.float64).reshape(-1)
    if exp_std.size != exp_pc.shape[1]:
        raise FaceModelError(f"{src / 'std_exp.txt'} has {exp_std.size} values but Exp_Pca.bin has "
                             f"{exp_pc.shape[1]} components")
    n_exp = exp_pc.shape[0] // 3
    n_full = bfm["shapeMU"].size // 3
    trim_raw = _load(src / "BFM_exp_idx.mat", ("trimIndex",))["trimIndex"]
    trim = _indices(trim_raw, n_full, "BFM_exp_idx.mat trimIndex")
    if trim.size != n_exp:
        raise FaceModelError(f"BFM_exp_idx.mat has {trim.size} entries but Exp_Pca.bin has {n_exp} vertices")
    index_exp = _indices(_load(src / "BFM_front_idx.mat", ("idx",))["idx"], n_exp, "BFM_front_idx.mat idx")
    index_shape = trim[index_exp]
    rows_shape, rows_exp = _vertex_rows(index_shape), _vertex_rows(index_exp)

    arrays = {
        "meanshape": (np.asarray(bfm["shapeMU"]).reshape(-1)[rows_shape] / 1e5).reshape(1, -1),
        "meantex": np.asarray(bfm["texMU"]).reshape(-1)[rows_shape].reshape(1, -1),
        "idBase": _scaled(bfm["shapePC"], bfm["shapeEV"], N_ID, 1e5, rows_shape, "shapePC"),
        "exBase": _scaled(exp_pc.astype(np.float64), exp_std, N_EXP, 1e5, rows_exp, "Exp_Pca.bin"),
        "texBase": _scaled(bfm["texPC"], bfm["texEV"], N_TEX, 1.0, rows_shape, "texPC"),
    }
    arrays.update(_load(src / "facemodel_info.mat", _INFO_KEYS))
    face_model_from_arrays(arrays, source=str(out))  # validate the layout before writing anything
    return write_bfm_mat(out, arrays)
