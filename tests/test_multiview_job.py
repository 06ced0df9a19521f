"""`r3p multiview` on Ray Data: rows, resume, byte-identical reruns, settings checks, poses, sheet."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import shards
from pipeline.config import load_config
from pipeline.multiview import MultiviewError, decode_depth, decode_image, read_views, run_multiview
from preprocessing.multiview import look_at_camera

SETS = ["face_model.synthetic_size=small", "multiview.image_size=64", "multiview.raw_size=16",
        "multiview.samples_per_shard=2"]


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    from pipeline.preprocess import use_loopback

    use_loopback()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _cfg(*extra):
    return load_config("tiny", overrides=SETS + list(extra))


def test_job_writes_views_resumes_and_reruns_byte_identically(tmp_path, ray_address):
    out = tmp_path / "views"
    s = run_multiview(str(out), _cfg(), samples=3, views=2, say=lambda *_: None)
    assert s["samples"] == 3 and s["rows"] == 6 and s["failed_samples"] == 0 and s["face_model"] == "synthetic"
    layout = shards.open_dataset(str(out), check_schema=False)
    t = read_views(layout)
    assert sorted(shards.published(layout)) == ["morphable-00000000", "morphable-00000002"]
    assert t["sample_id"].to_pylist() == [f"morphable-0000000{i}" for i in (0, 0, 1, 1, 2, 2)]
    assert t["view"].to_pylist() == [0, 1] * 3 and t["seed"].to_pylist() == [0, 0, 1, 1, 2, 2]
    img = decode_image(t["image"][0].as_py())
    assert img.shape == (64, 64, 3) and decode_image(t["image_raw"][0].as_py()).shape == (16, 16, 3)
    depth, mask = decode_depth(t["depth"][0].as_py()), decode_image(t["mask"][0].as_py()) > 0
    assert np.array_equal(np.isfinite(depth), mask) and mask.any()
    assert 2.0 < float(np.median(depth[mask])) < 4.5  # the head is ~camera radius away
    assert np.asarray(t["camera"][0].as_py()).shape == (25,)
    assert (out / "v001" / "views_sheet.png").is_file()
    from pipeline.cli import main
    assert main(["inspect", str(out)]) == 0
    from pipeline.multiview import inspect_views
    rep = inspect_views(str(out), str(tmp_path / "sheet.png"))
    assert rep["samples"] == 3 and rep["status"] == {"ok": 6} and rep["face_model"] == ["synthetic"]
    from PIL import Image
    assert Image.open(tmp_path / "sheet.png").size[0] > 4 * 64  # two views + two depths per row
    # resume: nothing to do
    again = run_multiview(str(out), _cfg(), samples=3, views=2, say=lambda *_: None)
    assert again["published_now"] == 0 and again["rows"] == 6
    # same seed and config, another output: byte-identical rows
    other = tmp_path / "views2"
    run_multiview(str(other), _cfg(), samples=3, views=2, say=lambda *_: None)
    for sid in ("morphable-00000000", "morphable-00000002"):
        a = (out / "v001" / "views" / f"{sid}.parquet").read_bytes()
        assert a == (other / "v001" / "views" / f"{sid}.parquet").read_bytes()
    # other settings: refused with the difference named; --force makes v002
    with pytest.raises(MultiviewError, match="multiview.views"):
        run_multiview(str(out), _cfg(), samples=3, views=3, say=lambda *_: None)
    s3 = run_multiview(str(out), _cfg(), samples=2, views=3, force=True, say=lambda *_: None)
    assert s3["dataset"].endswith("v002") and s3["rows"] == 6


def _pose_dataset(root) -> np.ndarray:
    """A preprocessed-dataset version with one clip of 3 frames (stand-in record); returns its cameras."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from clip_records import make_record

    from pipeline import schema, storage
    fs, path = storage.resolve(str(root))
    layout = shards.Layout(fs, path, 1)
    clip = {"clip_id": "0123456789abcdef", "source": "/d/a.mp4", "rel_path": "a.mp4", "dataset": "d", "split": "train",
            "speaker_id": "s", "start_s": 0.0, "end_s": None, "shard_id": "train-00000"}
    run = {"pipeline_version": "r3p test", "config_hash": "cafe"}
    rec = make_record(n_frames=3, seed=1)
    rec.eg3d_cam = np.stack([look_at_camera(0.1 * i, -0.2 + 0.2 * i, 2.8) for i in range(3)])
    clips, frames = schema.record_tables(rec, clip, run)
    shards.write_shard(layout, "train-00000", clips, frames, {"clips": 1, "ok": 1, "failed": 0})
    shards.write_json(fs, layout.run_path, {"schema_version": schema.SCHEMA_VERSION, "config_hash": "cafe"})
    return rec.eg3d_cam


def test_poses_from_a_dataset(tmp_path, ray_address):
    """With --poses DATASET and real_pose_fraction 1, every view takes one of its frames' eg3d_cam."""
    bank = _pose_dataset(tmp_path / "ds")
    s = run_multiview(str(tmp_path / "v"), _cfg("multiview.real_pose_fraction=1.0"), samples=2, views=2,
                      poses=str(tmp_path / "ds"), say=lambda *_: None)
    t = read_views(shards.open_dataset(s["dataset"], check_schema=False))
    assert set(t["camera_source"].to_pylist()) == {"real"} and len(t) == 4
    for cam in t["camera"].to_pylist():
        assert any(np.allclose(cam, b) for b in bank)
    with pytest.raises(FileNotFoundError, match="no r3p dataset"):
        run_multiview(str(tmp_path / "v2"), _cfg(), samples=1, poses=str(tmp_path / "missing"), say=lambda *_: None)


def test_eg3d_teacher_through_the_job(tmp_path, ray_address):
    """The EG3D path end to end: a stand-in checkpoint converted into R3P_HOME, rendered by the job."""
    import os
    from pathlib import Path

    from test_eg3d import _randomised_tiny, write_stand_in

    from pipeline.eg3d_convert import convert_eg3d
    home = Path(os.environ["R3P_HOME"])
    (home / "eg3d").mkdir(parents=True)
    pkl = home / "eg3d" / "ffhqrebalanced512-128.pkl"
    write_stand_in(pkl, _randomised_tiny(2), tmp_path / "ran")
    convert_eg3d(pkl)
    s = run_multiview(str(tmp_path / "v"), _cfg(), teacher="eg3d", samples=2, views=2, say=lambda *_: None)
    assert s["failed_samples"] == 0 and s["rows"] == 4 and s["face_model"] == "eg3d"
    t = read_views(shards.open_dataset(s["dataset"], check_schema=False))
    assert decode_image(t["image"][0].as_py()).shape == (64, 64, 3)  # the stand-in's SR size
    assert decode_image(t["opacity"][0].as_py()).shape == (16, 16)
    assert np.isfinite(np.asarray(t["cond_camera"][0].as_py())).all()
    assert not (tmp_path / "ran").exists()
