"""Every external asset r3p can use: where it is looked for, what it enables, how to obtain it.

Nothing here downloads. Assets live under `R3P_HOME` (default `~/.r3p`) at the relative paths
below, or at an explicit path in config (`assets.<key>: /path`). `r3p assets` prints the table.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from preprocessing.landmarks.base import dlib_models_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Asset:
    """One external file or folder: where it is looked for and what it is for."""

    key: str
    name: str
    relpath: str  # under R3P_HOME
    enables: str
    obtain: str
    contents: tuple[str, ...] = ()  # for folders: files that must be inside


@dataclass(frozen=True)
class AssetStatus:
    key: str
    name: str
    found: bool
    path: str
    enables: str
    obtain: str
    detail: str = ""


_BFM_OBTAIN = ("BFM09 '01_MorphableModel.mat' from the University of Basel (registration, licence), "
               "'Exp_Pca.bin' from Guo et al.'s 3DFace CoarseData, and 'BFM_front_idx.mat', "
               "'BFM_exp_idx.mat', 'facemodel_info.mat', 'std_exp.txt' from Deep3DFaceRecon_pytorch's "
               "BFM folder; put them in $R3P_HOME/bfm and run `r3p assets convert-bfm $R3P_HOME/bfm`")

ASSETS: dict[str, Asset] = {a.key: a for a in [
    Asset("bfm", "Basel Face Model (Deep3DFaceRecon front)", "bfm/BFM_model_front.mat",
          "3DMM fitting, PNCC/SECC and renders with the real BFM (else a synthetic model in the same "
          "layout is used and outputs are marked synthetic)", _BFM_OBTAIN),
    Asset("bfm_originals", "BFM09 originals for conversion", "bfm",
          "building BFM_model_front.mat with `r3p assets convert-bfm`", _BFM_OBTAIN,
          contents=("01_MorphableModel.mat", "Exp_Pca.bin", "std_exp.txt", "BFM_front_idx.mat",
                    "BFM_exp_idx.mat", "facemodel_info.mat")),
    Asset("bfm_eye_faces", "BFM eye-triangle lists", "bfm",
          "the reference's exact eye triangles for SECC (else derived from the eye landmark contours)",
          "'bfm_right_eye_faces.npy' and 'bfm_left_eye_faces.npy' from Real3D-Portrait's deep_3drecon "
          "folder, copied next to BFM_model_front.mat",
          contents=("bfm_right_eye_faces.npy", "bfm_left_eye_faces.npy")),
    Asset("dlib", "dlib face models", "(python package face_recognition_models)",
          "default face detector (HOG/CNN), 68-point landmarks, 128-d identity embedding",
          "installed with r3p (pip package face_recognition_models)",
          contents=("shape_predictor_68_face_landmarks.dat", "mmod_human_face_detector.dat",
                    "dlib_face_recognition_resnet_model_v1.dat")),
    Asset("insightface", "insightface buffalo_l", "insightface/models/buffalo_l",
          "SCRFD detection, 68/106-point landmarks, ArcFace embeddings (CSIM)",
          "buffalo_l.zip from the insightface model zoo (deepinsight/insightface releases), unzipped here",
          contents=("det_10g.onnx", "1k3d68.onnx", "2d106det.onnx", "w600k_r50.onnx")),
    Asset("rembg", "rembg U²-Net models", "u2net",
          "person matte for head/torso/background segmentation (rembg backend)",
          "u2net_human_seg.onnx (and optionally u2net.onnx, isnet-general-use.onnx) from the rembg "
          "releases (danielgatis/rembg), saved here",
          contents=("u2net_human_seg.onnx",)),
    Asset("mediapipe_segmenter", "MediaPipe multiclass selfie segmenter",
          "mediapipe/selfie_multiclass_256x256.tflite",
          "the reference's six-class segmentation (optional extra: pip install 'r3p[mediapipe]')",
          "selfie_multiclass_256x256.tflite from Google's MediaPipe model card page"),
    Asset("mediapipe_landmarker", "MediaPipe face landmarker", "mediapipe/face_landmarker.task",
          "optional MediaPipe landmark backend (optional extra)",
          "face_landmarker.task from Google's MediaPipe model card page"),
    Asset("fid_inception", "FID Inception-v3 weights", "fid/pt_inception-2015-12-05-6726825d.pth",
          "FID in `r3p evaluate` (the pytorch-fid port of the TF Inception weights)",
          "pt_inception-2015-12-05-6726825d.pth from the pytorch-fid releases (mseitzer/pytorch-fid)"),
    Asset("syncnet", "SyncNet weights", "syncnet/syncnet_v2.model",
          "lip-sync metrics LSE-C / LSE-D in `r3p evaluate`",
          "syncnet_v2.model from joonson/syncnet_python (its download_model.sh names the file)"),
    Asset("lpips", "LPIPS (AlexNet trunk + v0.1 heads)", "lpips",
          "LPIPS in `r3p evaluate` (left out of the results when missing)",
          "alexnet-owt-7be5be79.pth (torchvision's ImageNet AlexNet, download.pytorch.org/models) and "
          "alex.pth from the lpips package's weights/v0.1 folder (pip download lpips), both saved here",
          contents=("alexnet-owt-7be5be79.pth", "alex.pth")),
    Asset("eg3d", "EG3D FFHQ checkpoint", "eg3d/ffhqrebalanced512-128.pkl",
          "GAN-sampled multi-view data for I2P pre-training (`r3p multiview`)",
          "ffhqrebalanced512-128.pkl from NVIDIA's EG3D model page (NGC), saved here"),
    Asset("hubert", "HuBERT large (transformers)", "hubert/hubert-large-ls960-ft",
          "1024-d HuBERT audio features at 50 Hz for A2M",
          "the facebook/hubert-large-ls960-ft model folder (config.json + weights), saved here",
          contents=("config.json",)),
]}


def asset_path(key: str, home: Path, overrides: dict[str, Path] | None = None) -> Path:
    """Where asset `key` is looked for: the config override, else $R3P_HOME/<relpath>."""
    if key not in ASSETS:
        raise KeyError(f"unknown asset {key!r}; known: {sorted(ASSETS)}")
    if overrides and key in overrides:
        return Path(overrides[key]).expanduser()
    if key == "dlib":
        found = dlib_models_dir()
        return found if found is not None else Path("<face_recognition_models not installed>")
    return Path(home).expanduser() / ASSETS[key].relpath


def check_asset(key: str, home: Path, overrides: dict[str, Path] | None = None) -> AssetStatus:
    """Found/missing status of one asset, with what is missing inside a folder."""
    asset = ASSETS[key]
    path = asset_path(key, home, overrides)
    detail = ""
    if asset.contents:
        missing = [name for name in asset.contents if not (path / name).is_file()]
        found = path.is_dir() and not missing
        if path.is_dir() and missing:
            detail = "missing: " + ", ".join(missing)
    else:
        found = path.is_file() or (path.is_dir() and any(path.iterdir()))
    return AssetStatus(key, asset.name, found, str(path), asset.enables, asset.obtain, detail)


def asset_table(home: Path, overrides: dict[str, Path] | None = None) -> list[AssetStatus]:
    """Status of every asset r3p knows."""
    return [check_asset(key, home, overrides) for key in ASSETS]


def format_table(rows: list[AssetStatus]) -> str:
    """Human-readable table: status, key, path, then what it enables and how to get it."""
    lines = []
    width = max(len(r.key) for r in rows)
    for r in rows:
        mark = "found  " if r.found else "MISSING"
        lines.append(f"{mark}  {r.key:<{width}}  {r.path}")
        lines.append(f"{'':9}{'':<{width}}  enables: {r.enables}")
        if r.detail:
            lines.append(f"{'':9}{'':<{width}}  {r.detail}")
        if not r.found:
            lines.append(f"{'':9}{'':<{width}}  obtain:  {r.obtain}")
    n_found = sum(r.found for r in rows)
    lines.append(f"\n{n_found}/{len(rows)} assets found. Nothing is downloaded at run time; "
                 "set R3P_HOME or `assets.<key>` in config to point at your copies.")
    return "\n".join(lines)


def rows_as_dicts(rows: list[AssetStatus]) -> list[dict]:
    return [asdict(r) for r in rows]


def resolve_face_model(cfg):
    """The configured morphable model: an explicit path, $R3P_HOME's BFM, or the synthetic one.

    Raises FaceModelError when an explicitly configured file is missing, or when no BFM is found
    and `face_model.allow_synthetic` is false.
    """
    from preprocessing.face_model import FaceModelError, load_face_model

    fm = cfg.face_model
    if fm.path is not None:
        return load_face_model(fm.path)
    default = asset_path("bfm", cfg.home, cfg.assets)
    if default.is_file():
        return load_face_model(default)
    if not fm.allow_synthetic:
        raise FaceModelError(
            f"no Basel Face Model at {default} and face_model.allow_synthetic is false. "
            f"Obtain it: {_BFM_OBTAIN}; or allow the synthetic model with --set face_model.allow_synthetic=true")
    from preprocessing.synthetic_bfm import synthetic_face_model

    log.warning("no BFM at %s: using the synthetic morphable model (seed %d, size %s); outputs are marked "
                "synthetic", default, fm.synthetic_seed, fm.synthetic_size)
    return synthetic_face_model(seed=fm.synthetic_seed, size=fm.synthetic_size)
