"""r3p configuration: validated pydantic models from presets, YAML files and `--set` overrides.

Precedence (later wins): built-in defaults < preset (`tiny`, `paper`) < YAML file < `--set key=value`.
Unknown keys and bad values fail before any work starts, with the dotted key named.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRESETS = ("tiny", "paper")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it and what would be valid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FaceModelConfig(_Section):
    """Which morphable model to use."""

    path: Path | None = Field(None, description="BFM_model_front.mat; default $R3P_HOME/bfm/BFM_model_front.mat")
    allow_synthetic: bool = Field(True, description="fall back to the synthetic model when no BFM is found")
    synthetic_seed: int = Field(0, ge=0)
    synthetic_size: Union[Literal["bfm", "small"], int] = Field(
        "bfm", description="'bfm' = 35,709 vertices / 70,789 faces; 'small' for tests; or a vertex count")

    @field_validator("synthetic_size")
    @classmethod
    def _size_range(cls, v: Any) -> Any:
        if isinstance(v, int) and not 500 <= v <= 200_000:
            raise ValueError("a vertex count must be between 500 and 200000")
        return v


class RenderConfig(_Section):
    """Rasterisation of PNCC/SECC, depth, masks and shaded renders."""

    size: int = Field(512, ge=16, le=4096, description="square output size in pixels")
    remove_eyes: bool = Field(True, description="drop eye triangles from PNCC/SECC, as the reference")


class VideoConfig(_Section):
    """Decoding limits; inputs outside them fail with a VideoError naming the file."""

    max_duration_s: float = Field(600.0, gt=0)
    max_side: int = Field(4096, ge=16)
    min_side: int = Field(64, ge=16)
    min_frames: int = Field(2, ge=1)
    require_audio: bool = True


class LandmarksConfig(_Section):
    """Face detection and 68-point landmarks."""

    backend: Literal["dlib", "insightface"] = "dlib"
    detector: Literal["hog", "cnn"] = Field("hog", description="dlib detector")
    upsample: int = Field(1, ge=0, le=3, description="dlib: upsample the image this many times to find small faces")
    min_score: float = Field(0.3, description="dlib: drop detections scoring below this")
    detect_max_side: int | None = Field(320, ge=64, description="dlib: detect on a copy downscaled to this "
                                        "longer side (landmarks stay full resolution); null = full size")
    model_dir: Path | None = Field(None, description="insightface: buffalo_l folder (default $R3P_HOME/insightface/...)")
    detect_every: int = Field(10, ge=1, le=100, description="run the face detector every this many frames and "
                              "carry the faces between by their landmarks (re-detected at once when a face jumps "
                              "or is lost); 1 = detect on every frame")


class TrackingConfig(_Section):
    """Main-face tracking, gap filling, smoothing and the per-clip crop."""

    max_gap: int = Field(5, ge=0, description="interpolate missing faces over at most this many frames")
    min_face_fraction: float = Field(0.5, ge=0.0, le=1.0)
    smooth_window: int = Field(15, ge=3, description="Savitzky-Golay window in frames (odd)")
    crop_scale: float = Field(3.0, gt=1.0, description="crop side / face width")
    crop_size: int = Field(512, ge=64, le=2048, description="aligned crop size in pixels")
    min_face_px: float = Field(24.0, ge=0.0, description="refuse clips whose main face is narrower (landmark "
                               "width, source pixels; reason face_too_small)")


class FittingConfig(_Section):
    """3DMM video fitting."""

    solver: Literal["gn", "adam"] = Field("gn", description="gn: batched Gauss-Newton/LM; adam: reference schedule")
    window: int = Field(50, ge=4)
    overlap: int = Field(10, ge=0)


class SegmentationConfig(_Section):
    """Person matte and head/torso/background split."""

    backend: Literal["colour", "rembg", "mediapipe"] = Field(
        "colour", description="colour: GrabCut seeded by the fitted face (no weights); rembg: U²-Net ONNX; "
        "mediapipe: multiclass selfie segmenter (optional extra)")
    rembg_model: str = Field("u2net_human_seg", description="rembg session: u2net_human_seg, u2net, "
                             "isnet-general-use, or u2net_custom with model_path")
    model_path: Path | None = Field(None, description="custom ONNX (rembg) or .tflite (mediapipe); default: the asset")


class OutputConfig(_Section):
    """How per-frame images are stored."""

    jpeg_quality: int = Field(90, ge=50, le=100, description="frames, torso, composite, background plate")
    png_level: int = Field(3, ge=0, le=9, description="zlib level for SECC/PNCC/mask PNGs")
    plate_samples: int = Field(32, ge=3, le=512, description="frames kept for the background-plate median")
    chunk: int = Field(32, ge=1, le=512, description="frames decoded/rendered/segmented at a time")


class AudioConfig(_Section):
    """Audio features beyond log-mel/f0/RMS."""

    hubert: Literal["auto", "always", "never"] = Field(
        "auto", description="HuBERT features: auto = when the model folder exists (`r3p assets`), always = required")
    hubert_window_s: float = Field(20.0, ge=2.0, le=120.0, description="HuBERT runs on windows of this length")


class DemoConfig(_Section):
    samples: int = Field(4, ge=1, le=64, description="random faces in the demo contact sheet")
    seed: int = Field(0, ge=0)
    synth_identities: int = Field(2, ge=1, le=50, description="identities in the demo's synthetic corpus")
    synth_seconds: float = Field(3.0, ge=1.0, le=60.0, description="length of each demo clip")


class PreprocessConfig(_Section):
    """`r3p preprocess`: manifest (windows, splits, shards) and the Ray actors that process clips."""

    extensions: list[str] = Field([".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"],
                                  description="video file extensions picked up from an input directory")
    window_s: float = Field(20.0, ge=1.0, le=600.0, description="long videos are cut into windows of this length")
    min_window_s: float = Field(2.0, ge=0.0, description="a last window shorter than this joins the one before")
    speaker_from_path: Literal["first_dir", "parent_dir", "none"] = Field(
        "first_dir", description="speaker id when the input gives none: first folder of the relative path, "
        "the file's folder, or none (the video is its own speaker)")
    split_key: Literal["speaker", "video"] = Field("speaker", description="what the split hash is taken of")
    val_fraction: float = Field(0.05, ge=0.0, le=1.0)
    test_fraction: float = Field(0.05, ge=0.0, le=1.0)
    split_salt: str = Field("r3p", description="changing it reshuffles the splits")
    shard_size: int = Field(16, ge=1, le=100_000, description="clips per shard")
    actors: int = Field(1, ge=1, le=4096, description="processor actors (each loads the models once)")
    actor_num_cpus: float = Field(1.0, gt=0.0)
    actor_num_gpus: float = Field(0.0, ge=0.0)
    actor_memory_gb: float | None = Field(None, gt=0.0, description="memory Ray reserves per actor")
    batch_size: int = Field(1, ge=1, le=64, description="clips per operator call (keep small: bounded memory)")
    max_retries: int = Field(2, ge=0, le=10, description="retries per clip for transient (non-input) errors")
    max_job_attempts: int = Field(3, ge=1, le=20, description="re-runs of the remaining clips after lost "
                                  "workers or nodes")
    crash_limit: int = Field(8, ge=1, le=1000, description="until one clip has come back, stop an attempt after "
                             "this many clips lost with their workers (a broken environment kills them all)")
    probe_threads: int = Field(4, ge=1, le=64, description="threads probing durations in the manifest step")

    @field_validator("test_fraction")
    @classmethod
    def _fractions(cls, v: float, info: Any) -> float:
        if v + info.data.get("val_fraction", 0.0) >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 (train gets the rest)")
        return v

    @field_validator("extensions")
    @classmethod
    def _dotted(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one extension, e.g. ['.mp4']")
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in v]


class TriplaneConfig(_Section):
    """The tri-plane volume renderer (paper: planes 3×32×256², 128² rays, 48 + 48 samples, box 1)."""

    plane_channels: int = Field(32, ge=1, le=256, description="feature channels per plane")
    plane_resolution: int = Field(256, ge=8, le=1024, description="plane side in texels")
    render_resolution: int = Field(128, ge=4, le=1024, description="rays per image side")
    samples_coarse: int = Field(48, ge=2, le=1024, description="stratified samples per ray")
    samples_fine: int = Field(48, ge=0, le=1024, description="importance samples per ray")
    box_warp: float = Field(1.0, gt=0.0, description="side of the rendered box [-b/2, b/2]³ (world units)")

    def options(self):
        """The renderer's RenderOptions (near/far from the box)."""
        from preprocessing.triplane import RenderOptions

        return RenderOptions(resolution=self.render_resolution, samples_coarse=self.samples_coarse,
                             samples_fine=self.samples_fine, box_warp=self.box_warp)


class MultiviewConfig(_Section):
    """`r3p multiview`: teacher, sample counts, image sizes and the paper's camera distributions."""

    teacher: Literal["morphable", "eg3d"] = Field("morphable", description="morphable (3DMM, any machine) or "
                                                  "eg3d (needs the converted FFHQ checkpoint, `r3p assets`)")
    samples: int = Field(1000, ge=1, description="heads sampled")
    views: int = Field(2, ge=1, le=16, description="rendered views per head")
    seed: int = Field(0, ge=0, description="sample i uses seed + i")
    image_size: int = Field(512, ge=16, le=2048, description="morphable teacher image side (EG3D: its own, 512)")
    raw_size: int = Field(128, ge=8, le=1024, description="antialiased downsample stored as the raw-resolution image")
    truncation_psi: float = Field(0.7, ge=0.0, le=1.0, description="EG3D truncation ψ")
    real_pose_fraction: float = Field(0.5, ge=0.0, le=1.0, description="chance a view takes a real frame's camera "
                                      "when --poses is given")
    cond_pitch_deg: float = Field(10.0, ge=0.0, le=89.0)
    cond_yaw_deg: float = Field(16.0, ge=0.0, le=180.0)
    cond_radius: tuple[float, float] = Field((2.7, 3.2), description="conditioning camera radius range")
    view_pitch_deg: float = Field(26.0, ge=0.0, le=89.0)
    view_yaw_deg: float = Field(38.0, ge=0.0, le=180.0)
    view_radius: tuple[float, float] = Field((2.7, 4.0), description="rendered view radius range")
    samples_per_shard: int = Field(64, ge=1, le=100_000)
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per teacher actor (EG3D)")

    def camera_distribution(self):
        """The preprocessing CameraDistribution of these settings."""
        from preprocessing.multiview import CameraDistribution

        return CameraDistribution(self.cond_pitch_deg, self.cond_yaw_deg, tuple(self.cond_radius), self.view_pitch_deg,
                                  self.view_yaw_deg, tuple(self.view_radius), self.real_pose_fraction)


class TrainingConfig(_Section):
    """`r3p train`: Ray Train resources, checkpoints, MLflow; per-stage parameters under `training.<stage>`.

    Each stage's own keys (`training.syncnet.steps`, `training.a2m.syncnet`, …) are checked against
    that stage's parameters (`training/<stage>.py`) before any work starts."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    size: Literal["tiny", "paper"] = Field("paper", description="stage sizes: tiny (CPU, minutes) or paper")
    split: Literal["train", "val", "test", "all"] = Field("train", description="clips trained on")
    val_split: Literal["train", "val", "test", "none"] = Field("val", description="clips validated on")
    workers: int = Field(1, ge=1, le=4096, description="Ray Train workers (DDP: gloo on CPU, NCCL on GPU)")
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    threads: int = Field(1, ge=1, le=256, description="torch threads per worker")
    seed: int = Field(0, ge=0)
    log_every: int = Field(50, ge=1, description="progress line and MLflow metrics every N steps")
    checkpoint_every: int = Field(1000, ge=1, description="checkpoint + validation every N steps (and at the end)")
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept (the latest)")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint (-1: no limit)")
    val_batches: int = Field(8, ge=1, description="validation batches per checkpoint")
    views_val_every: int = Field(8, ge=2, description="views datasets: every N-th sample is held out for "
                                 "validation (none with val_split=none)")
    storage_path: str | None = Field(None, description="runs folder or URI (default: <dataset root>/runs)")
    tracking_uri: str | None = Field(None, description="MLflow (default: sqlite:///<dataset root>/mlflow.db)")
    experiment: str = Field("r3p-train", description="MLflow experiment")
    inject_nan_step: int | None = Field(None, ge=0, description="fault injection for tests: NaN loss at this step")

    @model_validator(mode="after")
    def _stage_sections(self) -> "TrainingConfig":
        from training.registry import STAGES

        for key, value in (self.model_extra or {}).items():
            if key not in STAGES:
                fields = sorted(type(self).model_fields)
                raise ValueError(f"unknown config key 'training.{key}'; valid keys here: "
                                 + ", ".join(f"training.{k}" for k in fields + sorted(STAGES)))
            if not isinstance(value, dict):
                raise ValueError(f"config key 'training.{key}' must be a mapping of stage parameters, "
                                 f"e.g. --set training.{key}.steps=100")
        return self


class EvaluateConfig(_Section):
    """`r3p evaluate`: split, protocols, models, Ray actors and MLflow of the evaluation job."""

    split: Literal["train", "val", "test", "all"] = Field("test", description="clips evaluated")
    protocols: str = Field("self,cross,audio", description="comma-separated: self, cross, audio")
    models: list[str] = Field(["static", "ground_truth"], description="models evaluated side by side (baselines: "
                              "static, ground_truth; both always run)")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N clips (sorted by id)")
    max_frames: int = Field(50, ge=2, le=100_000, description="valid frames per clip scored (from the start)")
    actors: int = Field(1, ge=1, le=4096, description="metric actors (each loads the metric networks once)")
    actor_num_cpus: float = Field(1.0, gt=0.0)
    actor_num_gpus: float = Field(0.0, ge=0.0)
    threads: int = Field(1, ge=1, le=256, description="torch threads per actor")
    strip_clips: int = Field(3, ge=0, le=50, description="clips with frame strips in the report (per protocol)")
    strip_frames: int = Field(4, ge=1, le=16, description="frames per strip")
    tracking_uri: str | None = Field(None, description="MLflow (default: sqlite:///<dataset root>/mlflow.db)")
    experiment: str = Field("r3p-evaluate", description="MLflow experiment")
    refit: bool = Field(True, description="fit the trained models' generated frames with the project's tracker and "
                        "3DMM fit, so AED/APD/LMD/Sync-lm can be computed for them")
    champion_baseline: bool = Field(True, description="add the registry's current champion (alias `champion` at the "
                                    "tracking URI) beside the baselines when there is one")
    sync_model: str | None = Field(None, description="landmark SyncNet for Sync-lm-D/C: `r3p train --stage syncnet` "
                                   "run name (under the runs folder) or checkpoint folder")


class RetrainConfig(_Section):
    """`r3p retrain`: which stages are fine-tuned from the champion, how, and how the challenger is evaluated."""

    stages: str = Field("a2m,motion,htbsr", description="comma-separated stages fine-tuned from the champion, in "
                        "dependency order")
    fine_tune: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per stage, training keys for the fine-tune (e.g. {a2m: {steps: 2000, "
        "lr: 1e-4}}); unset keys keep the training config's values")
    gate: str | None = Field(None, description="gate YAML (default: the built-in gate of pipeline.lifecycle.gate)")
    protocols: str = Field("self,audio", description="evaluation protocols of challenger and champion")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N test clips (sorted by id)")
    stale_lock_s: float = Field(6 * 3600.0, gt=0, description="a lock older than this, or whose process is gone "
                                "on this host, is stale and taken over")


class R3PConfig(_Section):
    """The whole configuration."""

    preset: str | None = None
    home: Path = Field(default_factory=lambda: Path(os.environ.get("R3P_HOME", "~/.r3p")).expanduser(),
                       description="where assets live ($R3P_HOME, default ~/.r3p)")
    assets: dict[str, Path] = Field(default_factory=dict, description="explicit paths per asset key (`r3p assets`)")
    face_model: FaceModelConfig = Field(default_factory=FaceModelConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    landmarks: LandmarksConfig = Field(default_factory=LandmarksConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    fitting: FittingConfig = Field(default_factory=FittingConfig)
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    triplane: TriplaneConfig = Field(default_factory=TriplaneConfig)
    multiview: MultiviewConfig = Field(default_factory=MultiviewConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

    @field_validator("assets")
    @classmethod
    def _known_assets(cls, v: dict[str, Path]) -> dict[str, Path]:
        from pipeline.assets import ASSETS

        unknown = sorted(set(v) - set(ASSETS))
        if unknown:
            raise ValueError(f"unknown asset key(s) {unknown}; known: {sorted(ASSETS)}")
        return v


def _preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    text = resources.files("pipeline").joinpath("presets", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def parse_override(item: str) -> dict[str, Any]:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set render.size=256")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            section = key.rsplit(".", 1)[0] if "." in key else ""
            near = [k for k in _known_keys(R3PConfig) if k.startswith(section + ".")] if section else \
                sorted({k.split(".")[0] for k in _known_keys(R3PConfig)})
            lines.append(f"unknown config key {key!r}; valid keys here: {', '.join(near)}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"config key {key!r}: {e['msg']}{shown}")
    return "; ".join(lines)


def load_config(preset: str | None = None, path: str | os.PathLike | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> R3PConfig:
    """Build the validated configuration from a preset, a YAML file and KEY=VALUE overrides."""
    data: dict[str, Any] = {}
    if preset:
        data = _deep_merge(data, _preset_dict(preset))
        data["preset"] = preset
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys, got {type(loaded).__name__}")
        if loaded.get("preset") and not preset:
            data = _deep_merge(_preset_dict(loaded["preset"]), data)
        data = _deep_merge(data, loaded)
    for item in overrides:
        data = _deep_merge(data, parse_override(item))
    try:
        return R3PConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def config_to_yaml(cfg: R3PConfig) -> str:
    """The full resolved configuration as YAML (what runs log as an artifact)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flat_params(cfg: R3PConfig) -> dict[str, Any]:
    """Flat dotted scalar params (for MLflow `log_params`)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(cfg.model_dump(mode="json"), "")
    return out


def geometry_params(cfg: R3PConfig):
    """The validated settings as `preprocessing.geometry.GeometryParams` for `track_and_fit`."""
    from preprocessing.fitting import FitConfig
    from preprocessing.geometry import GeometryParams
    from preprocessing.landmarks.tracking import TrackingParams
    from preprocessing.video import VideoLimits

    lm = cfg.landmarks
    if lm.backend == "dlib":
        detector_params = (("detector", lm.detector), ("upsample", lm.upsample), ("min_score", lm.min_score),
                           ("detect_max_side", lm.detect_max_side))
    else:
        detector_params = (("home", str(cfg.home)),) + ((("model_dir", str(lm.model_dir)),) if lm.model_dir else ())
    t, f = cfg.tracking, cfg.fitting
    if f.overlap >= f.window:
        raise ConfigError(f"config key 'fitting.overlap' ({f.overlap}) must be smaller than fitting.window ({f.window})")
    try:
        tracking = TrackingParams(max_gap=t.max_gap, min_face_fraction=t.min_face_fraction, window=t.smooth_window,
                                  crop_scale=t.crop_scale, min_face_px=t.min_face_px)
    except ValueError as exc:
        raise ConfigError(f"config section 'tracking': {exc}") from None
    return GeometryParams(
        limits=VideoLimits(**cfg.video.model_dump()), detector=lm.backend, detector_params=detector_params,
        detect_every=lm.detect_every,
        tracking=tracking, fitting=FitConfig(solver=f.solver, window=f.window, overlap=f.overlap),
        crop_size=t.crop_size)
