"""r3p's own numba cache: redirected away from site-packages, checked in a child process, wiped when bad."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import jit_cache

# a child that crashes (SIGSEGV) while the cache folder holds a "bad entry", as a poisoned numba cache does
POISONED = ("import ctypes, os, pathlib; "
            "ctypes.string_at(0) if (pathlib.Path(os.environ['NUMBA_CACHE_DIR']) / 'bad.nbi').exists() else None")
ALWAYS = "import ctypes; ctypes.string_at(0)"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv(jit_cache.ENV_DIR, str(tmp_path / "jit"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    yield tmp_path / "jit"
    jit_cache.configure()  # back to the session's folder for the other tests


def test_a_crashing_cache_is_wiped_and_rebuilt(folder):
    folder.mkdir(parents=True)
    (folder / "bad.nbi").write_bytes(b"\x00" * 64)
    (folder / "sub").mkdir()
    (folder / "sub" / "x.nbc").write_bytes(b"\x01")
    out = jit_cache.check_and_warm(code=POISONED)
    assert out["wiped"] and "SIGSEGV" in out["first_failure"] and out["folder"] == str(folder)
    assert not (folder / "bad.nbi").exists() and not (folder / "sub").exists()


def test_a_crash_with_an_empty_cache_is_an_environment_error(folder):
    with pytest.raises(jit_cache.JitCacheError, match=r"failed twice.*empty cache folder.*SIGSEGV.*reinstall"):
        jit_cache.check_and_warm(code=ALWAYS)


def test_the_data_path_compiles_into_r3ps_folder_not_site_packages(folder):
    """The real warm-up: the rasteriser's and librosa's JIT functions land in r3p's folder."""
    import time

    import librosa

    site = Path(librosa.__file__).parent
    t0 = time.time()
    out = jit_cache.check_and_warm()
    assert not out["wiped"]
    index = {p.name.split("-")[0] for p in Path(folder).rglob("*.nbi")}
    assert {"raster._rasterize_batch", "raster._interpolate_batch"} <= index
    assert any(name.startswith("pitch.") for name in index)  # librosa's YIN helpers
    assert not [p for p in site.rglob("*.nb[ic]") if p.stat().st_mtime >= t0]  # nothing written into site-packages
    # and a second process just loads them (the cache works): the check passes again without wiping
    assert not jit_cache.check_and_warm()["wiped"]


def test_importing_preprocessing_reaches_numba_already_imported(folder):
    code = ("import numba.core.config as c; before = c.CACHE_DIR; import preprocessing; "
            "print(before != c.CACHE_DIR, c.CACHE_DIR)")
    env_out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert env_out == ["True", str(folder)]
