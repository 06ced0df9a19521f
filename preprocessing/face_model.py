"""Basel Face Model in the Deep3DFaceRecon layout (`BFM_model_front.mat`): loading and queries.

On disk (MATLAB v5 file, what `scipy.io.savemat` writes):

=================  ==========  ===================================================
key                shape       meaning
=================  ==========  ===================================================
meanshape          (1, 3N)     mean shape, xyz interleaved, decimetres
idBase             (3N, 80)    identity basis (PC * std / 1e5)
exBase             (3N, 64)    expression basis, float64 on disk
meantex            (1, 3N)     mean albedo, RGB interleaved, 0..255
texBase            (3N, 80)    albedo basis (PC * std)
tri                (F, 3)      triangles, 1-based vertex indices
point_buf          (N, 8)      faces around each vertex, 1-based, padded with F+1
keypoints          (1, 68)     iBUG-68 landmark vertices, 1-based
frontmask2_idx     (N2, 1)     front-region vertices, 1-based
tri_mask2          (F2, 3)     front-region triangles, 1-based
skinmask           (1, N)      1 for skin vertices
=================  ==========  ===================================================

`load_face_model` turns that into a `FaceModel` with 0-based indices, float32 bases and a
re-centred mean shape. A file written by r3p's synthetic generator also carries the key
`r3p_synthetic` (a description of the generator and seed); such a model reports
`synthetic=True`, and everything built from it must say so in its metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BFM_FILE = "BFM_model_front.mat"
EYE_FACE_FILES = ("bfm_right_eye_faces.npy", "bfm_left_eye_faces.npy")
REQUIRED_KEYS = (
    "meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf",
    "keypoints", "frontmask2_idx", "tri_mask2", "skinmask",
)
N_ID, N_EXP, N_TEX = 80, 64, 80

# iBUG-68 index groups (0-based landmark numbers)
RIGHT_EYE = tuple(range(36, 42))  # subject's right eye: image left, x < 0
LEFT_EYE = tuple(range(42, 48))
INNER_LIP = tuple(range(60, 68))
OUTER_LIP = tuple(range(48, 60))


class FaceModelError(ValueError):
    """A face-model file is missing, unreadable or not in the Deep3DFaceRecon layout."""


@dataclass(frozen=True, eq=False)
class FaceModel:
    """A 3D morphable model with 0-based indices; shapes in decimetres, albedo in 0..255."""

    mean_shape: np.ndarray  # (N, 3) float32, re-centred
    id_base: np.ndarray  # (3N, 80) float32
    exp_base: np.ndarray  # (3N, 64) float32
    mean_tex: np.ndarray  # (N, 3) float32, 0..255
    tex_base: np.ndarray  # (3N, 80) float32
    tri: np.ndarray  # (F, 3) int64
    point_buf: np.ndarray  # (N, 8) int64, padded with F (a dummy face of zero normal)
    keypoints: np.ndarray  # (68,) int64
    front_mask: np.ndarray  # (N2,) int64 vertex indices
    front_tri: np.ndarray  # (F2, 3) int64
    skin_mask: np.ndarray  # (N,) bool
    eye_faces: np.ndarray  # (E,) int64 face indices of both eyes' triangles
    synthetic: bool = False
    source: str = ""
    description: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.tri.shape[0])

    def ncc(self) -> np.ndarray:
        """Normalised coordinate code: per-axis min-max normalised mean shape, (N, 3) in [0, 1]."""
        if "ncc" not in self._cache:
            lo = self.mean_shape.min(axis=0)
            hi = self.mean_shape.max(axis=0)
            self._cache["ncc"] = ((self.mean_shape - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)
        return self._cache["ncc"]

    def tri_without_eyes(self) -> np.ndarray:
        """Triangles with both eyes' faces removed, as the reference SECC renderer draws them."""
        if "tri_no_eyes" not in self._cache:
            keep = np.ones(self.n_faces, dtype=bool)
            keep[self.eye_faces] = False
            self._cache["tri_no_eyes"] = np.ascontiguousarray(self.tri[keep])
        return self._cache["tri_no_eyes"]

    def metadata(self) -> dict[str, object]:
        """What any output built with this model must record about it."""
        return {
            "face_model": "synthetic" if self.synthetic else "bfm",
            "face_model_synthetic": self.synthetic,
            "face_model_source": self.source,
            "face_model_description": self.description,
            "n_vertices": self.n_vertices,
            "n_faces": self.n_faces,
        }

    def to_trimesh(self, shape: np.ndarray | None = None, with_texture: bool = True):
        """A `trimesh.Trimesh` of `shape` (N, 3) (default: the mean shape), coloured by mean albedo."""
        import trimesh

        verts = self.mean_shape if shape is None else np.asarray(shape, dtype=np.float32)
        colors = None
        if with_texture:
            rgb = np.clip(self.mean_tex, 0, 255).astype(np.uint8)
            colors = np.concatenate([rgb, np.full((rgb.shape[0], 1), 255, np.uint8)], axis=1)
        return trimesh.Trimesh(vertices=verts, faces=self.tri, vertex_colors=colors, process=False)


def _points_in_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd test of (P, 2) points against a closed (K, 2) polygon."""
    x, y = points[:, 0][:, None], points[:, 1][:, None]
    x0, y0 = poly[:, 0][None], poly[:, 1][None]
    x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < xint)).sum(axis=1) % 2 == 1


def eye_faces_from_landmarks(mean_shape: np.ndarray, tri: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Faces whose centroid, seen from the front, lies inside either eye's landmark contour."""
    centroids = mean_shape[tri].mean(axis=1)[:, :2]
    inside = np.zeros(len(tri), dtype=bool)
    for group in (RIGHT_EYE, LEFT_EYE):
        inside |= _points_in_polygon(centroids, mean_shape[keypoints[list(group)], :2])
    return np.flatnonzero(inside).astype(np.int64)


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    if not path.is_file():
        raise FaceModelError(
            f"face model file not found: {path}. Put BFM_model_front.mat under $R3P_HOME/bfm/ "
            "(see `r3p assets`), or build it with `r3p assets convert-bfm DIR`."
        )
    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise FaceModelError(f"cannot read face model {path}: {exc}. Is it a MATLAB v5 .mat file?") from exc


def _check_layout(raw: dict[str, np.ndarray], path: Path) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise FaceModelError(
            f"{path} is not in the Deep3DFaceRecon BFM_model_front layout: missing keys {missing}. "
            "Rebuild it from the BFM09 originals with `r3p assets convert-bfm DIR`."
        )
    n3 = raw["meanshape"].size
    if n3 % 3:
        raise FaceModelError(f"{path}: meanshape has {n3} values, not a multiple of 3")
    expect = {"idBase": N_ID, "exBase": N_EXP, "texBase": N_TEX}
    for key, cols in expect.items():
        if raw[key].shape != (n3, cols):
            raise FaceModelError(f"{path}: {key} has shape {raw[key].shape}, expected ({n3}, {cols})")
    if raw["meantex"].size != n3:
        raise FaceModelError(f"{path}: meantex has {raw['meantex'].size} values, expected {n3}")
    if raw["keypoints"].size != 68:
        raise FaceModelError(f"{path}: keypoints has {raw['keypoints'].size} entries, expected 68")
    n, f = n3 // 3, raw["tri"].shape[0]
    tri = raw["tri"]
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.min() < 1 or tri.max() > n:
        raise FaceModelError(f"{path}: tri must be (F, 3) 1-based vertex indices in 1..{n}")
    pb = raw["point_buf"]
    if pb.shape[0] != n or pb.min() < 1 or pb.max() > f + 1:
        raise FaceModelError(f"{path}: point_buf must be ({n}, K) 1-based face indices in 1..{f + 1}")


def _load_eye_faces(directory: Path, n_faces: int) -> np.ndarray | None:
    """The reference's eye face lists (1-based .npy files beside the model), when both exist."""
    paths = [directory / name for name in EYE_FACE_FILES]
    if not all(p.is_file() for p in paths):
        return None
    faces = np.concatenate([np.load(p, allow_pickle=False).reshape(-1) for p in paths]).astype(np.int64) - 1
    if faces.min() < 0 or faces.max() >= n_faces:
        raise FaceModelError(f"eye face lists in {directory} index outside 1..{n_faces}")
    return np.unique(faces)


def face_model_from_arrays(raw: dict[str, np.ndarray], source: str = "", recenter: bool = True,
                           eye_faces: np.ndarray | None = None) -> FaceModel:
    """Build a `FaceModel` from the on-disk arrays (1-based indices), validating the layout."""
    _check_layout(raw, Path(source or "<arrays>"))
    mean = np.asarray(raw["meanshape"], dtype=np.float64).reshape(-1, 3)
    if recenter:
        mean = mean - mean.mean(axis=0, keepdims=True)
    tri = np.asarray(raw["tri"]).astype(np.int64) - 1
    keypoints = np.asarray(raw["keypoints"]).reshape(-1).astype(np.int64) - 1
    mean32 = mean.astype(np.float32)
    if eye_faces is None:
        eye_faces = eye_faces_from_landmarks(mean32, tri, keypoints)
    synth = raw.get("r3p_synthetic")
    description = str(np.asarray(synth).reshape(-1)[0]) if synth is not None and np.asarray(synth).size else ""
    return FaceModel(
        mean_shape=mean32,
        id_base=np.ascontiguousarray(raw["idBase"], dtype=np.float32),
        exp_base=np.ascontiguousarray(raw["exBase"], dtype=np.float32),
        mean_tex=np.asarray(raw["meantex"], dtype=np.float32).reshape(-1, 3),
        tex_base=np.ascontiguousarray(raw["texBase"], dtype=np.float32),
        tri=tri,
        point_buf=np.asarray(raw["point_buf"]).astype(np.int64) - 1,
        keypoints=keypoints,
        front_mask=np.asarray(raw["frontmask2_idx"]).reshape(-1).astype(np.int64) - 1,
        front_tri=np.asarray(raw["tri_mask2"]).astype(np.int64) - 1,
        skin_mask=np.asarray(raw["skinmask"]).reshape(-1) > 0,
        eye_faces=np.asarray(eye_faces, dtype=np.int64),
        synthetic=synth is not None,
        source=source,
        description=description or ("synthetic" if synth is not None else "BFM09 front (Deep3DFaceRecon)"),
    )


def load_face_model(path: str | os.PathLike, recenter: bool = True) -> FaceModel:
    """Load `BFM_model_front.mat` (or a synthetic model in the same layout) from `path`."""
    path = Path(path).expanduser()
    raw = _read_mat(path)
    _check_layout(raw, path)
    eye = _load_eye_faces(path.parent, int(raw["tri"].shape[0]))
    return face_model_from_arrays(raw, source=str(path), recenter=recenter, eye_faces=eye)
