"""`r3p train` refuses bad input before any training starts (no Ray is started for these), naming the fix."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.shards import SchemaVersionError
from pipeline.train import TrainError, run_train
from train_corpus import write_truth_dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from preprocessing.synthetic_bfm import synthetic_face_model

    base = tmp_path_factory.mktemp("train_err")
    model = synthetic_face_model(0, "small")
    ok = write_truth_dataset(base / "ok", model, splits={"train": [0], "val": [1]}, clips=1, seconds=1.6)
    failed = write_truth_dataset(base / "failed", model, splits={"train": [0]}, clips=1, seconds=1.0,
                                 status_failed=True)
    return base, ok, failed


def _train(stage, data, sets=()):
    return run_train(stage, str(data), "r", load_config("tiny", overrides=["face_model.synthetic_size=small", *sets]),
                     say=lambda s: None)


def _no_ray():
    import ray

    assert not ray.is_initialized()


def test_not_a_dataset_version(small, tmp_path, capsys):
    assert main(["train", "--stage", "syncnet", "--data", str(tmp_path), "--run", "r", "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "holds no r3p dataset" in err and "r3p preprocess" in err
    _no_ray()


def test_no_ok_clips_in_the_split(small):
    base, ok, failed = small
    with pytest.raises(TrainError, match="no clips with status ok in split 'train'"):
        _train("syncnet", failed.root)
    with pytest.raises(TrainError, match="no clips with status ok in split 'test'"):
        _train("syncnet", ok.root, ["training.split=test"])
    _no_ray()


def test_schema_version_it_cannot_read(small, tmp_path):
    import shutil

    base, ok, _ = small
    old = tmp_path / "old"
    shutil.copytree(ok.root, old)
    run = json.loads((old / "v001" / "run.json").read_text())
    (old / "v001" / "run.json").write_text(json.dumps({**run, "schema_version": 1}))
    with pytest.raises(SchemaVersionError, match="schema version 1.*--force"):
        _train("syncnet", old / "v001")
    assert main(["train", "--stage", "syncnet", "--data", str(old), "--run", "r", "--preset", "tiny"]) == 2
    _no_ray()


def test_stage_needing_a_checkpoint_it_was_not_given(small):
    _, ok, _ = small
    with pytest.raises(TrainError, match=r"needs a checkpoint for training\.a2m\.syncnet.*--set training\.a2m\.syncnet="):
        _train("a2m", ok.root)
    with pytest.raises(TrainError, match="no checkpoint at 'nope'"):
        _train("a2m", ok.root, ["training.a2m.syncnet=nope"])
    _no_ray()


def test_stage_given_the_wrong_kind_of_dataset(small):
    _, ok, _ = small
    with pytest.raises(TrainError, match=r"stage i2p reads a views dataset \(`r3p multiview OUTPUT`\).*is a clips"):
        _train("i2p", ok.root)
    with pytest.raises(TrainError, match=r"needs a checkpoint for training\.motion\.i2p"):
        _train("motion", ok.root)
    with pytest.raises(TrainError, match=r"training\.motion\.min_gap' must be >= 1"):
        _train("motion", ok.root, ["training.motion.min_gap=0"])
    with pytest.raises(TrainError, match=r"training\.motion\.image_size' must be a multiple of 8"):
        _train("motion", ok.root, ["training.motion.image_size=30"])
    _no_ray()


def test_unknown_stage_and_bad_stage_keys(small):
    _, ok, _ = small
    with pytest.raises(TrainError, match="unknown stage 'nosuch'; known stages: a2m, htbsr, i2p, motion, syncnet"):
        _train("nosuch", ok.root)
    with pytest.raises(TrainError, match=r"training\.syncnet\.widht.*valid keys"):
        _train("syncnet", ok.root, ["training.syncnet.widht=3"])
    with pytest.raises(TrainError, match=r"training\.syncnet\.lr' must be a positive number"):
        _train("syncnet", ok.root, ["training.syncnet.lr=-1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'training\.sycnnet'"):
        load_config("tiny", overrides=["training.sycnnet.steps=3"])
    with pytest.raises(TrainError, match="fewer than one batch"):
        _train_with_ray_guard(ok.root)
    _no_ray()


def _train_with_ray_guard(root):
    """Too few examples for one batch is found when the data is built; it must still stop before training."""
    import ray

    try:
        return _train("syncnet", root, ["training.syncnet.batch_size=4096", "training.cpus_per_worker=0.5"])
    finally:
        if ray.is_initialized():
            ray.shutdown()
