"""`r3p retrain` as a cluster runs it: a Ray cluster of a head and a worker node started with `ray start`
(separate processes, loopback, Ray's token authentication as it comes), an `mlflow server` on a SQLite
backend, and the retrain submitted with `ray job submit`.

Round 1 (a gate the challenger can pass): new synthetic speakers → a2m fine-tuned from the champion,
challenger and champion evaluated, promoted: `champion` moves, the old version is `previous`. A second
submission while round 1 runs is refused by ROOT's lock. Round 2 (a gate no model can pass): rejected,
`champion` unchanged, the reasons recorded in the decision and on the version.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if proc is not None and proc.poll() is not None:
            said = proc.stdout.read()[-4000:] if proc.stdout is not None else ""
            raise AssertionError(f"{what}: the process exited with {proc.returncode}\n{said}")
        assert time.monotonic() < deadline, f"{what}: not up after {timeout:.0f} s"
        time.sleep(0.5)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def servers(tmp_path):
    """A two-node Ray cluster (`ray start --block`, each its own process group) and an MLflow server."""
    import secrets

    # Ray's token authentication, on as it is by default for local clusters since 2.59: one token for the
    # nodes, the job client and the drivers (a file here, never the user's ~/.ray/auth_token)
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    # an earlier test in this process may have switched Ray's single-machine mode on (pipeline.preprocess.
    # use_loopback); a second `ray start` node needs it off
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    gcs, dash, mlf = _free_port(), _free_port(), _free_port()
    import shutil
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="r3p-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    procs = []
    try:
        procs.append(_start([str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--temp-dir={ray_tmp}"], tmp_path / "head.log", env))
        _wait("ray head", lambda: _port_open(dash), proc=procs[-1])
        procs.append(_start([str(BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{gcs}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=1"], tmp_path / "worker.log", env))
        procs.append(_start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "mlartifacts"), "--host", "127.0.0.1",
                             "--port", str(mlf), "--workers", "1"], tmp_path / "mlflow.log", env))
        _wait("mlflow server", lambda: _port_open(mlf), proc=procs[-1])
        _wait("worker node", lambda: _nodes(gcs, env) >= 2, proc=procs[1])
        yield {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "mlflow": f"http://127.0.0.1:{mlf}",
               "env": env, "logs": tmp_path}
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _nodes(gcs: int, env: dict) -> int:
    out = subprocess.run([str(BIN / "ray"), "status", f"--address=127.0.0.1:{gcs}"], capture_output=True, text=True,
                         env=env, timeout=60)
    return out.stdout.count("node_")


def _job(srv: dict, args: list[str], env_vars: dict) -> list[str]:
    """`ray job submit` of `r3p ARGS` (the CLI shell-quotes the words after --)."""
    return [str(BIN / "ray"), "job", "submit", "--address", srv["dashboard"],
            "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", str(BIN / "r3p"), *args]


def _submit(srv: dict, args: list[str], env_vars: dict) -> subprocess.CompletedProcess:
    return subprocess.run(_job(srv, args, env_vars), capture_output=True, text=True, env=srv["env"], timeout=900)


def _register_champion(uri: str, runs: Path, dataset: Path) -> None:
    from pipeline import tracking
    from pipeline.lifecycle.models import set_alias

    for run in ("motion-t", "a2m-t"):
        rid, _ = tracking.open_run(uri, "r3p-train", run, None, params={}, config_yaml="{}", tags={},
                                   dataset={"uri": str(dataset), "name": "seed/v000", "digest": "d", "counts": {}})
        tracking.finish_run(uri, rid, run.split("-")[0], str(runs / run / "final"), {"steps": 0, "run": run})
    set_alias(uri, "champion", [], latest=True)


def _batch(root: Path, cfg) -> Path:
    """Two synthetic speakers: the first hashes into test (the frozen test set), the second into train."""
    from pipeline.manifest import assign_split
    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model

    p = cfg.preprocess

    def split(seed: int, i: int) -> str:
        return assign_split(f"synth{seed:03d}_id{i:03d}", p.val_fraction, p.test_fraction, p.split_salt)

    seed = next(s for s in range(1, 5000) if split(s, 0) == "test" and split(s, 1) == "train")
    return generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=2, clips=1, seconds=2.0, size=256,
                                                                     seed=seed), root)


def test_retrain_on_a_two_node_cluster_promotes_refuses_a_concurrent_round_and_rejects(servers, tmp_path):
    from pipeline.config import load_config
    from pipeline.lifecycle.registry import ModelRegistry
    from model_runs import random_runs

    sets = ["tracking.crop_size=128", "render.size=64", "evaluate.max_frames=8", "retrain.protocols=self,audio",
            "training.cpus_per_worker=0.5", "training.val_split=none", "preprocess.actors=2",
            'retrain.fine_tune={"a2m": {"steps": 3, "batch_size": 2}}']
    cfg = load_config("tiny", overrides=sets)
    new = _batch(tmp_path / "incoming", cfg)
    root = tmp_path / "root"
    uri = servers["mlflow"]
    _register_champion(uri, random_runs(tmp_path / "seed"), root)
    reg = ModelRegistry(uri)
    before = {s: v.version for s, v in reg.by_alias("champion").items()}
    assert before == {"a2m": 1, "motion": 1}

    passable = tmp_path / "pass.yaml"
    passable.write_text("min_test_clips: 1\nrules:\n  - {metric: CSIM-dlib, protocol: self, max_drop: 0.5}\n")
    impossible = tmp_path / "never.yaml"
    impossible.write_text("min_test_clips: 1\nrules:\n  - {metric: PSNR, protocol: self, min: 1000}\n")
    env_vars = {"R3P_HOME": str(tmp_path / "r3p_home"), "MLFLOW_TRACKING_URI": uri}
    common = ["--root", str(root), "--stages", "a2m", "--tracking-uri", uri, "--preset", "tiny",
              *[a for s in sets for a in ("--set", s)]]

    # round 1, and a second submission while it runs (the lock refuses it)
    first = subprocess.Popen(_job(servers, ["retrain", "--new", str(new), "--gate", str(passable), "--batch", "w1",
                                            *common], env_vars),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=servers["env"])
    _wait("round 1 holds the lock", lambda: (root / "retrain.lock").exists(), timeout=300, proc=first)
    second = _submit(servers, ["retrain", "--new", str(new), "--gate", str(passable), "--batch", "w1", *common],
                     env_vars)
    assert second.returncode != 0 and "refused" in second.stdout + second.stderr, second.stdout[-2000:]
    out, _ = first.communicate(timeout=900)
    assert first.returncode == 0, out[-4000:]
    assert "PROMOTED" in out, out[-4000:]
    after = {s: v.version for s, v in reg.by_alias("champion").items()}
    assert after == {"a2m": 2, "motion": 1} and reg.by_alias("previous")["a2m"].version == 1
    (rec1,) = [json.loads(p.read_text()) for p in (root / "decisions").glob("*.json")]
    assert rec1["decision"] == "promoted" and rec1["dataset"]["new_clips"] == 2 and rec1["test_clips"] == 1
    assert not (root / "retrain.lock").exists()

    # round 2: a gate no model passes → rejected, the champion stays
    third = _submit(servers, ["retrain", "--new", str(new), "--gate", str(impossible), "--batch", "w1", *common],
                    env_vars)
    assert third.returncode != 0 and "REJECTED" in third.stdout, third.stdout[-4000:]
    assert {s: v.version for s, v in reg.by_alias("champion").items()} == after
    rejected = reg.by_alias("rejected")["a2m"]
    assert rejected.version == 3 and "PSNR@self" in rejected.tags["r3p.decision_reasons"]
    recs = sorted((json.loads(p.read_text()) for p in (root / "decisions").glob("*.json")),
                  key=lambda r: r["decided_utc"])
    assert [r["decision"] for r in recs] == ["promoted", "rejected"] and "1000" in recs[1]["reasons"][0]
