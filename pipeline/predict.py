"""`r3p predict-motion`: audio file → A2M expression sequence (T, 64) at 25 fps, as an .npz.

The audio features come from the same code as preprocessing (`preprocessing.audio.audio_features`,
and `preprocessing.hubert` when the model was trained on HuBERT features), on the file's audio
decoded by ffmpeg at 16 kHz mono and cut to whole 40 ms video frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ConfigError, R3PConfig

SAMPLES_PER_FRAME = 640


def resolve_model(value: str, runs: str | None) -> str:
    """A checkpoint folder from a folder, a run folder, or a run name under `runs`."""
    from pipeline.train import TrainError, resolve_checkpoint

    try:
        return resolve_checkpoint(value, runs or ".")
    except TrainError as exc:
        raise FileNotFoundError(f"{exc}; with a run name, pass --runs <dataset root>/runs") from None


def predict_motion_file(cfg: R3PConfig, model: str, audio_path: str, out: str, *, runs: str | None = None,
                        mouth_amp: float | None = None, temperature: float | None = None,
                        seed: int = 0) -> dict[str, Any]:
    """Run a trained A2M on an audio file and write `out` (.npz: exp (T, 64) float32, fps); returns a summary."""
    from preprocessing.audio import audio_features
    from preprocessing.video import read_audio
    from training.a2m import predict_motion
    from training.checkpoint import load_model

    ckpt = resolve_model(model, runs or cfg.training.storage_path)
    stage, params, net, meta = load_model(ckpt)
    if stage.name != "a2m":
        raise ConfigError(f"--model {model}: {ckpt} is a {stage.name} checkpoint; predict-motion needs an a2m one")
    audio = read_audio(audio_path)
    t = len(audio) // SAMPLES_PER_FRAME  # 640 samples per 40 ms frame at 16 kHz
    if t < 1:
        raise ConfigError(f"--audio {audio_path}: shorter than one video frame (40 ms)")
    audio = audio[:t * SAMPLES_PER_FRAME]
    feats = audio_features(audio, t)
    kind = meta["info"]["audio"]
    if kind == "hubert":
        from pipeline.process import hubert_dir
        from preprocessing.hubert import load_hubert

        folder = hubert_dir(cfg)
        if folder is None:
            raise ConfigError(f"{ckpt} was trained on HuBERT features but no HuBERT model is configured; see "
                              "`r3p assets` (assets.hubert=PATH)")
        x = load_hubert(folder).features(audio, t)
    else:
        x = feats.mel
    exp = predict_motion(net, x, feats.f0, mouth_amp=mouth_amp,
                         temperature=params.temperature if temperature is None else temperature, seed=seed)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, exp=exp.astype(np.float32), fps=np.float32(25.0))
    return {"frames": int(t), "seconds": t / 25.0, "audio": kind, "checkpoint": ckpt, "out": str(path.resolve())}
