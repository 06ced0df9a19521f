"""Shared test fixtures: a tiny hand-built morphable model in the exact on-disk layout."""

from __future__ import annotations

import numpy as np
import pytest

import preprocessing  # noqa: F401  (first: numba compiles into r3p's cache folder, never into site-packages)


def pytest_configure(config):
    """Compile (or load) the data path's numba functions once, in a child process, before any test runs:
    with `pytest -n N` the N worker processes then load the cache instead of compiling into it at the
    same time (concurrent first compilation is how a cache entry went bad once; see pipeline.jit_cache)."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has warmed the cache already
        return
    from pipeline.jit_cache import check_and_warm

    check_and_warm()


def grid_model_arrays(n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """An n×n planar grid in z = 0 (x, y in [-1, 1]) as BFM_model_front arrays (1-based indices).

    Triangles are counter-clockwise seen from +z; bases are random but seeded.
    """
    rng = np.random.default_rng(seed)
    xs = np.linspace(-1.0, 1.0, n)
    gx, gy = np.meshgrid(xs, xs)  # row index = y
    verts = np.stack([gx.ravel(), gy.ravel(), np.zeros(n * n)], axis=1)
    tris = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            tris += [(a, b, e), (a, e, d)]  # CCW with x right, y up
    tri = np.array(tris, dtype=np.int64)
    f = len(tri)
    point_buf = np.full((n * n, 8), f, dtype=np.int64)
    fill = np.zeros(n * n, dtype=np.int64)
    for fi, t in enumerate(tri):
        for v in t:
            point_buf[v, fill[v]] = fi
            fill[v] += 1
    n3 = 3 * n * n
    return {
        "meanshape": verts.reshape(1, -1),
        "idBase": rng.normal(0, 0.01, (n3, 80)).astype(np.float32),
        "exBase": rng.normal(0, 0.01, (n3, 64)),
        "meantex": np.full((1, n3), 128.0, dtype=np.float32),
        "texBase": rng.normal(0, 1.0, (n3, 80)).astype(np.float32),
        "tri": tri + 1,
        "point_buf": point_buf + 1,
        "keypoints": (np.arange(68) + 1).reshape(1, 68).astype(np.float64),
        "frontmask2_idx": (np.arange(n * n) + 1).reshape(-1, 1),
        "tri_mask2": tri + 1,
        "skinmask": np.ones((1, n * n)),
    }


@pytest.fixture
def grid_model():
    from preprocessing.face_model import face_model_from_arrays

    return face_model_from_arrays(grid_model_arrays(), source="test-grid", recenter=False)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Never read the developer's real ~/.r3p in tests."""
    monkeypatch.setenv("R3P_HOME", str(tmp_path / "r3p_home"))


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_running():
    """Each test module starts with no Ray in this process and leaves none (a module that starts Ray
    shuts it down; this catches one that does not, so it cannot break the next module's ray.init)."""
    import sys

    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("a test module left Ray initialised in the test process")


#: the longest test files (about 3–9 min each here), run first: `make test` runs `pytest -n 2 --dist loadfile
#: --no-loadscope-reorder`, which hands files out in collection order (xdist's default reorder puts files with
#: many tests first, and these one-or-two-test files last, where they become the tail)
LONG_FIRST = ("test_demo.py", "test_retrain_cluster.py", "test_train_head.py", "test_a2m.py", "test_train.py",
              "test_preprocess.py", "test_evaluate.py", "test_motion_stage.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(LONG_FIRST)))  # stable: the rest keep their order
