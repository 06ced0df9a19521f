"""Multi-node: `r3p preprocess --address` on a real two-node Ray cluster on loopback, worker killed mid-run.

The head and the worker are separate raylet processes with their own CPUs
(`ray.cluster_utils.Cluster`); the job runs as a subprocess driver, one actor per node. Once a shard
is published the worker node is killed (no graceful shutdown); the job must still finish with every
clip, identical to an uninterrupted run on the same cluster.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline import schema, shards
from pipeline.config import load_config
from pipeline.preprocess import run_preprocess

SET = ["tracking.crop_size=128", "render.size=64", "preprocess.actors=2", "preprocess.shard_size=1"]


def _hashes(location):
    layout = shards.open_dataset(str(location))
    clips, frames = shards.read_table(layout, "clips"), shards.read_table(layout, "frames")
    fh = schema.frame_hashes(frames)
    return {cid: (h, fh.get(cid)) for cid, h in schema.clip_hashes(clips).items()}


@pytest.mark.slow
def test_worker_node_killed_mid_run(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model

    corpus = tmp_path / "corpus"
    generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=3, clips=1, seconds=1.2, size=512, seed=1),
                    corpus)
    from pipeline.preprocess import use_loopback

    use_loopback()  # nodes, this driver and the CLI subprocess on 127.0.0.1 only
    node = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **node})
    try:
        worker = cluster.add_node(num_cpus=1, **node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        ref = run_preprocess(str(corpus), str(tmp_path / "ref"), load_config("tiny", overrides=SET))
        assert ref["complete"] and ref["ok"] == 3
        assert len(ref["peak_rss_mb_per_worker"]) == 2  # both nodes' actors did work

        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "pipeline.cli", "preprocess", str(corpus), str(out), "--preset", "tiny",
               "--address", cluster.address] + [a for s in SET for a in ("--set", s)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stats = out / "v001" / "stats"
        deadline = time.monotonic() + 300
        while not (stats.is_dir() and any(p.suffix == ".json" for p in stats.iterdir())):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        published_at_kill = len(list(stats.glob("*.json")))
        cluster.remove_node(worker, allow_graceful=False)
        text, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, text[-3000:]
        assert published_at_kill < 3
        assert _hashes(out) == _hashes(tmp_path / "ref")  # the full, correct dataset
        assert "done: 3 ok, 0 failed" in text
        assert "did not come back" in text  # the clip(s) lost with the worker were run again
    finally:
        ray.shutdown()
        cluster.shutdown()
