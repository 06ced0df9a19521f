"""From the validated configuration to a per-clip processor (what each Ray actor holds).

`make_processor(cfg)` resolves the face model (BFM or the synthetic stand-in), the landmark
detector, the segmenter and — when its folder exists or `audio.hubert=always` — HuBERT, once; the
returned `ClipProcessor` turns a video path (and optional window) into a `ClipRecord`.
"""

from __future__ import annotations

from pipeline.assets import asset_path, resolve_face_model
from pipeline.config import ConfigError, R3PConfig, geometry_params
from preprocessing.process import ClipProcessor, ProcessParams


def hubert_dir(cfg: R3PConfig) -> str | None:
    """The HuBERT folder to use, None when off (or `auto` and missing); ConfigError if `always` and missing."""
    if cfg.audio.hubert == "never":
        return None
    path = asset_path("hubert", cfg.home, cfg.assets)
    if (path / "config.json").is_file():
        return str(path)
    if cfg.audio.hubert == "always":
        raise ConfigError(f"audio.hubert=always but no HuBERT model at {path} (config.json missing); put "
                          "facebook/hubert-large-ls960-ft there (see `r3p assets`) or set assets.hubert=PATH")
    return None


def segmenter_params(cfg: R3PConfig) -> tuple[tuple[str, object], ...]:
    """Keyword arguments for `preprocessing.segmentation.make_segmenter` from the config."""
    seg = cfg.segmentation
    if seg.backend == "rembg":
        params = {"model_name": seg.rembg_model, "home": str(asset_path("rembg", cfg.home, cfg.assets))}
        if seg.model_path is not None:
            params["model_path"] = str(seg.model_path)
        return tuple(params.items())
    if seg.backend == "mediapipe":
        path = seg.model_path or asset_path("mediapipe_segmenter", cfg.home, cfg.assets)
        return (("model_path", str(path)),)
    return ()


def process_params(cfg: R3PConfig) -> ProcessParams:
    """The validated settings as `preprocessing.process.ProcessParams`."""
    out = cfg.output
    return ProcessParams(
        geometry=geometry_params(cfg), render_size=cfg.render.size, remove_eyes=cfg.render.remove_eyes,
        segmenter=cfg.segmentation.backend, segmenter_params=segmenter_params(cfg),
        plate_samples=out.plate_samples, jpeg_quality=out.jpeg_quality, png_level=out.png_level, chunk=out.chunk,
        hubert_dir=hubert_dir(cfg), hubert_window_s=cfg.audio.hubert_window_s)


def make_processor(cfg: R3PConfig, model=None) -> ClipProcessor:
    """Load every model the configuration names, once; `processor(path, start_s, end_s)` → ClipRecord."""
    return ClipProcessor(model if model is not None else resolve_face_model(cfg), process_params(cfg))
