"""Stage names → stage modules. Adding a stage = adding a module with a `STAGE` and a line here."""

from __future__ import annotations

import importlib

from training.stage import Stage, StageError

STAGES: dict[str, str] = {
    "syncnet": "training.syncnet",
    "a2m": "training.a2m",
    "i2p": "training.i2p",
    "motion": "training.motion",
    "htbsr": "training.htbsr",
}


def get_stage(name: str) -> Stage:
    """The stage object registered as `name`; StageError listing the known names otherwise."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; known stages: {', '.join(sorted(STAGES))}")
    return importlib.import_module(STAGES[name]).STAGE
