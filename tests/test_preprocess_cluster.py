"""Multi-node: the preprocess job on a real two-node Ray cluster on loopback, worker node killed mid-clip.

The head and the worker are separate raylet processes with their own CPUs
(`ray.cluster_utils.Cluster`); the job runs in a subprocess driver that joins the cluster, one actor
per node. The test makes the situation it checks: the processor (`clip_records.MarkingProcessor`,
the real processor plus marker files) writes a marker when a clip starts and, on the worker node,
holds that clip until the node is gone — so the node is killed (no graceful shutdown) with a clip
certainly unfinished. The job must run that clip again elsewhere, say so, and finish with a
dataset identical to an uninterrupted run on the same cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import schema, shards
from pipeline.config import load_config
from pipeline.preprocess import run_preprocess

TESTS = Path(__file__).parent
SET = ["tracking.crop_size=128", "render.size=64", "preprocess.actors=2", "preprocess.shard_size=1"]
MARKING = "clip_records:make_marking_processor"
DRIVER = ("import json, sys; from pipeline.config import load_config; from pipeline.preprocess import run_preprocess; "
          "s = run_preprocess(sys.argv[1], sys.argv[2], load_config('tiny', overrides=json.loads(sys.argv[4])), "
          "address=sys.argv[3], factory=sys.argv[5]); sys.exit(0 if s['complete'] else 1)")


def _hashes(location):
    layout = shards.open_dataset(str(location))
    clips, frames = shards.read_table(layout, "clips"), shards.read_table(layout, "frames")
    fh = schema.frame_hashes(frames)
    return {cid: (h, fh.get(cid)) for cid, h in schema.clip_hashes(clips).items()}


@pytest.mark.slow
def test_worker_node_killed_with_a_clip_in_flight(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model

    corpus = tmp_path / "corpus"
    generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=3, clips=1, seconds=1.2, size=512, seed=1),
                    corpus)
    marks = tmp_path / "marks"
    marks.mkdir()
    # the raylets (and so the actors) inherit these: markers folder, and clip_records importable
    monkeypatch.setenv("R3P_TEST_MARKS", str(marks))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    from pipeline.preprocess import use_loopback

    use_loopback()  # nodes, this driver and the subprocess driver on 127.0.0.1 only
    node = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **node})
    try:
        worker = cluster.add_node(num_cpus=1, **node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        ref = run_preprocess(str(corpus), str(tmp_path / "ref"), load_config("tiny", overrides=SET), factory=MARKING)
        assert ref["complete"] and ref["ok"] == 3
        assert len(ref["peak_rss_mb_per_worker"]) == 2  # both nodes' actors did work
        for p in marks.glob("start-*"):
            p.unlink()

        hold = marks / f"hold-{worker.node_id}"
        hold.touch()  # clips that start on the worker node wait there until the node is killed
        out = tmp_path / "out"
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(corpus), str(out), cluster.address, json.dumps(SET),
                                 MARKING], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while not (held := list(marks.glob(f"start-{worker.node_id}-*"))):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no clip started on the worker node"
            time.sleep(0.1)
        cluster.remove_node(worker, allow_graceful=False)  # with that clip in flight, for certain
        hold.unlink()
        text, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, text[-3000:]
        assert "done: 3 ok, 0 failed" in text, text[-4000:]
        assert _hashes(out) == _hashes(tmp_path / "ref")  # the full, correct dataset
        # the held clip (and any other the node loss cost) was run again, on the head node
        retried = [line for line in text.splitlines() if "did not come back" in line]
        assert retried and "attempt 2/" in retried[0], text[-3000:]
        name = held[0].name.split("-", 2)[2]
        assert len(list(marks.glob(f"start-*-{name}"))) == 2  # started on the worker node, then on the head
    finally:
        ray.shutdown()
        cluster.shutdown()
