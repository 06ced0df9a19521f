"""r3p's own numba cache: one folder per machine and environment, checked in a child process first.

numba keeps compiled code on disk (`cache=True`) next to the source by default — for librosa that is
inside site-packages, shared by every process of the environment. One bad entry there (seen once
after several r3p processes compiled librosa's YIN at about the same time) made every process that
loaded it die with SIGSEGV, and so every Ray actor, every clip. r3p therefore:

1. points numba at its own folder (`preprocessing.jit`: importing `preprocessing` sets
   `NUMBA_CACHE_DIR`; default `~/.cache/r3p/numba-<numba>-py<X.Y>-<arch>`, `R3P_JIT_CACHE` to choose
   another, an explicit `NUMBA_CACHE_DIR` is respected), so nothing is read from or written to
   site-packages by r3p's processes, its actors or its tests;
2. before any actor starts, compiles (or loads) every JIT function of the data path in a *child*
   process (`check_and_warm`): if that child dies on a signal, the folder is wiped and the child run
   once more; if it dies again the job stops with the child's crash report instead of losing actors;
3. lets one process at a time compile into the folder (`warm_here` under an exclusive file lock),
   so actors starting together on a node load the entries the first one wrote instead of racing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from preprocessing.jit import ENV_DIR, cache_dir, configure

__all__ = ["ENV_DIR", "JitCacheError", "cache_dir", "check_and_warm", "configure", "warm_here"]

#: the child process that compiles or loads the data path's JIT functions
WARM_CODE = "from pipeline.jit_cache import warm_here; warm_here()"


class JitCacheError(RuntimeError):
    """The JIT functions of the data path crash even with an empty cache: the environment is broken."""


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _compile_data_path() -> None:
    """Call every JIT-compiled function of the data path once on tiny inputs (compiles or loads them)."""
    import numpy as np

    from preprocessing import audio, raster, render
    from preprocessing.segmentation import parts

    verts = np.array([[[1.0, 1.0, 2.0], [6.0, 1.0, 2.0], [1.0, 6.0, 3.0]]])
    tris = np.array([[0, 1, 2]])
    frags = raster.rasterize(verts, tris, 8, 8)
    raster.interpolate(frags, tris, np.ones((3, 3), np.float32))
    t = np.arange(audio.SAMPLE_RATE // 5) / audio.SAMPLE_RATE
    audio.audio_features((0.1 * np.sin(2 * np.pi * 150.0 * t)).astype(np.float32), 5)
    jaw = np.stack([np.linspace(10.0, 30.0, 17), 30.0 - 0.05 * (np.linspace(-10.0, 10.0, 17) ** 2)], -1)
    lm = np.concatenate([jaw, np.tile([[20.0, 20.0]], (51, 1))])
    lm[36:42], lm[42:48] = [15.0, 15.0], [25.0, 15.0]
    parts.body_regions(parts.head_frame(lm), 8, 8)
    render.to_uint8(np.zeros((2, 2, 3), np.float32), -1.0)


def warm_here() -> None:
    """Compile or load the data path's JIT functions in this process, one process per folder at a time."""
    folder = configure()
    with _locked(folder):
        _compile_data_path()


def _wipe(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.name == ".lock":
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _describe(rc: int) -> str:
    if rc < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def check_and_warm(timeout_s: float = 600.0, code: str = WARM_CODE) -> dict:
    """Warm the cache in a child process; a child that crashes gets the folder wiped and one more try.

    Returns {"folder", "seconds", "wiped", "first_failure"}; raises JitCacheError with the child's
    report when it fails on an empty folder too."""
    folder = configure()
    t0 = time.perf_counter()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(folder), "PYTHONFAULTHANDLER": "1"}
    first_failure = None
    for attempt in (1, 2):
        try:
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, err = -9, f"timed out after {timeout_s:.0f} s\n{exc.stderr or ''}"
        if rc == 0:
            return {"folder": str(folder), "seconds": round(time.perf_counter() - t0, 3), "wiped": attempt > 1,
                    "first_failure": first_failure}
        tail = "\n".join(err.strip().splitlines()[-15:])
        if attempt == 1:
            first_failure = f"{_describe(rc)}: {tail[-600:]}"
            with _locked(folder):
                _wipe(folder)
            continue
        raise JitCacheError(
            f"compiling the data path's JIT functions (numba: the rasteriser, librosa's YIN) failed twice, the "
            f"second time with an empty cache folder {folder} ({_describe(rc)}). The environment is broken, not "
            f"the inputs: reinstall numba/llvmlite/librosa (`make clean-venv && make test`) and check "
            f"`python -c \"{code}\"`. Child's report:\n{tail}")
    raise AssertionError("unreachable")  # pragma: no cover
