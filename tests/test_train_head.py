"""The 3D-head stages on the runner: `i2p` on a `r3p multiview` views dataset, `motion` on a `r3p
preprocess` dataset (real frames, head labels, cameras) started from the i2p run, `htbsr` (torso,
background, fusion) on the same dataset over that motion run's frozen head. For each: 2 workers
equal 1 for the same global batch, and a run stopped after a checkpoint resumes to weights identical
to an uninterrupted run. Tiny sizes (32² images, 16² renders, 8+8 samples): each run is seconds of
training; the time is Ray Train start-up. Learning itself is shown by tests/test_i2p.py and
tests/test_motion_stage.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_corpus import ray_session

pytestmark = pytest.mark.slow
SIZES = ["image_size=32", "render_resolution=16", "plane_resolution=32", "samples_coarse=8", "samples_fine=8",
         "width=16", "batch_size=4"]
PREP = ["tracking.crop_size=128", "render.size=64", "preprocess.shard_size=1", "preprocess.val_fraction=0"]


@pytest.fixture(scope="module")
def ray_address():
    yield from ray_session()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, ray_address):
    from pipeline.config import load_config
    from pipeline.multiview import run_multiview
    from pipeline.preprocess import run_preprocess
    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model

    base = tmp_path_factory.mktemp("train_head")
    views = base / "views"
    run_multiview(str(views), load_config("tiny", overrides=["multiview.image_size=64", "multiview.raw_size=16",
                                                             "multiview.samples_per_shard=3"]),
                  samples=6, views=2, say=lambda *_: None)
    corpus = base / "corpus"
    generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=2, clips=1, seconds=1.2, size=256, seed=3),
                    corpus)
    s = run_preprocess(str(corpus), str(base / "clips"), load_config("tiny", overrides=PREP), progress=None)
    assert s["ok"] == 2, s
    return views, base / "clips"


def _sets(stage: str, extra=()) -> list[str]:
    own = SIZES + (["adapter_width=16", "pairs_per_clip=4", "min_gap=3"] if stage in ("motion", "htbsr") else [])
    own += ["work_size=32", "out_size=32", "torso_width=16", "bg_width=8", "fuse_width=16"] if stage == "htbsr" else []
    return [f"training.{stage}.{k}" for k in own] + ["training.log_every=100", *extra]


@pytest.fixture(scope="module")
def i2p_base(datasets):
    views, _ = datasets
    _train("i2p", views, "base", ["training.i2p.steps=3"])
    return views / "runs" / "base"


@pytest.fixture(scope="module")
def motion_base(datasets, i2p_base):
    _, clips = datasets
    _train("motion", clips, "base", ["training.motion.steps=3", f"training.motion.i2p={i2p_base}"])
    return clips / "runs" / "base"


def _train(stage, data, run, sets):
    from pipeline.config import load_config
    from pipeline.train import run_train

    return run_train(stage, str(data), run, load_config("tiny", overrides=_sets(stage, sets)), say=lambda s: None)


def _setup(stage, datasets, request):
    views, clips = datasets
    if stage == "i2p":
        return views, []
    if stage == "htbsr":
        return clips, [f"training.htbsr.motion={request.getfixturevalue('motion_base')}"]
    return clips, [f"training.motion.i2p={request.getfixturevalue('i2p_base')}"]


def _weights(data, run) -> dict[str, torch.Tensor]:
    return load_file(str(Path(data) / "runs" / run / "final" / "model.safetensors"))


@pytest.mark.parametrize("stage", ["i2p", "motion", "htbsr"])
def test_two_workers_equal_one(stage, datasets, request):
    data, extra = _setup(stage, datasets, request)
    sets = extra + [f"training.{stage}.steps=4", "training.checkpoint_every=4"]
    s1 = _train(stage, data, f"{stage}-w1", sets + ["training.workers=1"])
    s2 = _train(stage, data, f"{stage}-w2", sets + ["training.workers=2", "training.cpus_per_worker=0.5"])
    assert s1["steps"] == s2["steps"] == 4 and s1["examples"] >= 4
    w1, w2 = _weights(data, f"{stage}-w1"), _weights(data, f"{stage}-w2")
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    print(f"{stage}: 1 vs 2 workers after 4 steps: max |Δw| = {worst:.2e}")
    assert worst < 1e-4  # the same update up to float32 summation order (gloo's mean of two halves)
    if stage == "motion":  # started from the i2p run: the encoder (frozen) is the i2p run's, bit for bit
        base = load_file(str(request.getfixturevalue("i2p_base") / "final" / "model.safetensors"))
        enc = [k for k in w1 if k.startswith("i2p.")]
        assert enc and all(torch.equal(w1[k], base[k]) for k in enc)
        assert any(not torch.equal(w1[k], base[k]) for k in w1 if k.startswith("decoder."))


@pytest.mark.parametrize("stage", ["i2p", "motion", "htbsr"])
def test_resume_after_a_stop_is_exact(stage, datasets, request):
    from pipeline.train import TrainError

    data, extra = _setup(stage, datasets, request)
    sets = extra + [f"training.{stage}.steps=6", "training.checkpoint_every=3"]
    _train(stage, data, f"{stage}-a", sets)  # uninterrupted
    with pytest.raises(TrainError, match=r"loss is nan at step 4.*Last good checkpoint: step 3"):
        _train(stage, data, f"{stage}-b", sets + ["training.inject_nan_step=4"])
    s = _train(stage, data, f"{stage}-b", sets)  # the same run again: resumes from step 3
    assert s["steps"] == 6 and s["resumed"]
    a, b = _weights(data, f"{stage}-a"), _weights(data, f"{stage}-b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"{stage}: resumed weights differ from the uninterrupted run"
