"""Where numba keeps compiled code for r3p processes: r3p's own folder, never site-packages.

numba caches compiled functions (`cache=True`) next to their source by default — for librosa that
is inside site-packages, shared and written by every process of the environment; one bad entry
there once made every process that loaded it die with SIGSEGV. Importing `preprocessing` points
numba at `cache_dir()` instead (`NUMBA_CACHE_DIR`; an explicit one is respected), for this process
and the processes it starts. `pipeline.jit_cache` checks and warms that folder before a job.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ENV_DIR = "R3P_JIT_CACHE"


def cache_dir() -> Path:
    """The numba cache folder r3p uses in this environment (not created): `$R3P_JIT_CACHE`, else an
    explicit `$NUMBA_CACHE_DIR`, else `~/.cache/r3p/numba-<numba>-py<XY>-<arch>`."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]).expanduser()
    try:
        numba_version = metadata.version("numba")
    except metadata.PackageNotFoundError:  # pragma: no cover - numba is a dependency
        numba_version = "none"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "r3p" / f"numba-{numba_version}-py{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}"


def configure() -> Path:
    """Use r3p's cache folder in this process (also when numba is already imported) and its children."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: numba then compiles without caching to disk
        return folder
    if os.environ.get("NUMBA_CACHE_DIR") != str(folder):
        os.environ["NUMBA_CACHE_DIR"] = str(folder)
        if "numba" in sys.modules:
            from numba.core import config

            config.reload_config()
    return folder
