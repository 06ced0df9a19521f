"""The training runner on Ray Train: 2 workers equal 1, exact resume after SIGKILL, NaN stops the run.

A small ground-truth dataset (`train_corpus.write_truth_dataset`: 3 train + 1 val speakers, 3 s
clips) and a small SyncNet (`training.syncnet.width=32` …) keep each run to seconds of training;
the time is Ray start-up. One local Ray (2 CPUs, loopback) per module; the SIGKILL test runs the
CLI as a subprocess that joins it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_corpus import ray_session, write_truth_dataset

pytestmark = pytest.mark.slow
SMALL = ["face_model.synthetic_size=small", "training.syncnet.width=32", "training.syncnet.layers=2",
         "training.syncnet.embed=16", "training.syncnet.batch_size=32", "training.log_every=10"]


@pytest.fixture(scope="module")
def ray_address():
    yield from ray_session()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from preprocessing.synthetic_bfm import synthetic_face_model

    root = tmp_path_factory.mktemp("train_runner") / "ds"
    write_truth_dataset(root, synthetic_face_model(0, "small"), splits={"train": [0, 1, 2], "val": [3]}, clips=1,
                        seconds=3.0)
    return root


def _train(data, run, sets):
    from pipeline.config import load_config
    from pipeline.train import run_train

    return run_train("syncnet", str(data), run, load_config("tiny", overrides=SMALL + list(sets)), say=lambda s: None)


def _weights(data, run) -> dict[str, torch.Tensor]:
    return load_file(str(Path(data) / "runs" / run / "final" / "model.safetensors"))


def test_two_workers_equal_one_for_the_same_global_batch(data, ray_address):
    sets = ["training.syncnet.steps=30", "training.checkpoint_every=30"]
    s1 = _train(data, "w1", sets + ["training.workers=1"])
    s2 = _train(data, "w2", sets + ["training.workers=2"])
    assert s1["steps"] == s2["steps"] == 30
    w1, w2 = _weights(data, "w1"), _weights(data, "w2")
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    scale = max(float(w1[k].abs().max()) for k in w1)
    print(f"1 vs 2 workers after 30 steps: max |Δw| = {worst:.2e} (max |w| = {scale:.2f})")
    # DDP averages the two half-batch gradients with gloo: the same sums in another order (float32)
    assert worst < 1e-4
    changed = max(float((w1[k] - load_file(str(Path(data) / "runs" / "w1" / "final" / "model.safetensors"))[k]).abs()
                        .max()) for k in w1)
    assert changed == 0.0


def test_resume_after_sigkill_is_exact(data, ray_address):
    sets = ["training.syncnet.steps=600", "training.checkpoint_every=200"]
    _train(data, "rs-a", sets)  # uninterrupted
    run_dir = Path(data) / "runs" / "rs-b"
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--stage", "syncnet", "--data", str(data), "--run", "rs-b",
           "--preset", "tiny", "--address", ray_address] + [a for s in SMALL + sets for a in ("--set", s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 240
    try:
        while not list(run_dir.glob("checkpoint_*/meta.json")):
            assert proc.poll() is None, "the training subprocess ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "final").exists(), "the run finished before it was killed; nothing was tested"
    s = _train(data, "rs-b", sets)  # the same command again: resumes from its last checkpoint
    assert s["steps"] == 600
    a, b = _weights(data, "rs-a"), _weights(data, "rs-b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{Path(data).resolve() / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("r3p-train").experiment_id],
                         filter_string="tags.`r3p.run` = 'rs-b'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and s["resumed"]


def test_non_finite_loss_stops_naming_the_step_and_the_checkpoint_resumes(data, ray_address):
    from pipeline.train import TrainError
    from training.checkpoint import load_model

    sets = ["training.syncnet.steps=40", "training.checkpoint_every=20"]
    with pytest.raises(TrainError, match=r"loss is nan at step 30.*Last good checkpoint: step 20"):
        _train(data, "nan", sets + ["training.inject_nan_step=30"])
    run_dir = Path(data) / "runs" / "nan"
    assert not (run_dir / "final").exists()
    ckpts = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert ckpts and load_model(ckpts[-1])[3]["step"] == 20
    s = _train(data, "nan", sets)  # resumable: the same run again, without the fault
    assert s["steps"] == 40 and s["resumed"]
