"""Checkpoints: one folder per checkpoint, loadable without pickle.

```
model.safetensors   the trainable model's state (weights and its buffers: norm statistics, keypoint basis)
state.pt            optimizer, scheduler and RNG state (tensors and numbers: torch.load(weights_only=True))
meta.json           stage, step, stage parameters, what the job found (audio feature and width),
                    the resolved r3p config, the dataset version, validation metrics at this step
```
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WEIGHTS, STATE, META = "model.safetensors", "state.pt", "meta.json"


class CheckpointError(FileNotFoundError):
    """A checkpoint folder is missing or incomplete; the message names the folder and the file."""


def save_checkpoint(directory: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, step: int, meta: dict[str, Any]) -> Path:
    """Write the three checkpoint files into `directory` (created); returns it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(d / WEIGHTS))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": int(step),
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()[1].tolist()}, d / STATE)
    (d / META).write_text(json.dumps({**meta, "step": int(step)}, indent=2, default=str))
    return d


def check_checkpoint(directory: str | os.PathLike, need_state: bool = False) -> Path:
    """`directory` if it holds a checkpoint; CheckpointError naming the missing file otherwise."""
    d = Path(directory)
    for name in (WEIGHTS, META) + ((STATE,) if need_state else ()):
        if not (d / name).is_file():
            raise CheckpointError(f"{d} is not an r3p checkpoint ({name} missing); give a checkpoint folder "
                                  "(…/final or …/checkpoint_*) or the name of a finished `r3p train` run")
    return d


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    return json.loads((check_checkpoint(directory) / META).read_text())


def load_weights(directory: str | os.PathLike, model: torch.nn.Module, strict: bool = True) -> None:
    """Load model.safetensors into `model`."""
    model.load_state_dict(load_file(str(check_checkpoint(directory) / WEIGHTS)), strict=strict)


def load_state(directory: str | os.PathLike, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    """Restore optimizer, scheduler and RNG state; returns the step."""
    s = torch.load(check_checkpoint(directory, need_state=True) / STATE, weights_only=True)
    optimizer.load_state_dict(s["optimizer"])
    scheduler.load_state_dict(s["scheduler"])
    torch.set_rng_state(s["torch_rng"])
    return int(s["step"])


def stub_info(meta: dict[str, Any]) -> dict[str, Any]:
    """Shapes-only `info` to rebuild a checkpoint's model before its state (basis, statistics) is loaded."""
    d = int(meta["info"]["audio_dim"])
    return {**meta["info"], "audio_mean": np.zeros(d, np.float32), "audio_std": np.ones(d, np.float32),
            "keypoints": {"mean": np.zeros((68, 3)), "id_base": np.zeros((68, 3, 80)),
                          "exp_base": np.zeros((68, 3, 64)) + 1e-3}}


def load_model(directory: str | os.PathLike) -> tuple[Any, Any, torch.nn.Module, dict[str, Any]]:
    """(stage, params, model in eval mode, meta) of a checkpoint folder."""
    from training.registry import get_stage

    meta = read_meta(directory)
    stage = get_stage(meta["stage"])
    params = stage.params_from_dict(meta["params"])
    model = stage.build(params, stub_info(meta))
    load_weights(directory, model)
    return stage, params, model.eval(), meta
