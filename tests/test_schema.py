"""Parquet schema: ClipRecord → clips/frames rows, failed rows, shard publishing, readers, content hashes."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clip_records import make_record
from PIL import Image

from pipeline import schema, shards, storage
from preprocessing.video import VideoError

CLIP = {"clip_id": "0123456789abcdef", "source": "/data/spk/a b.mp4", "rel_path": "spk/a b.mp4", "dataset": "d",
        "split": "train", "speaker_id": "spk", "start_s": 0.0, "end_s": None, "shard_id": "train-00000"}
RUN = {"pipeline_version": "r3p test", "config_hash": "cafe"}


def test_record_round_trip():
    rec = make_record(n_frames=4, seed=1)
    clips, frames = schema.record_tables(rec, CLIP, RUN, attempts=2, seconds=1.5)
    assert clips.schema == schema.CLIPS_SCHEMA and frames.schema == schema.FRAMES_SCHEMA
    assert clips.schema.metadata[b"r3p.schema_version"] == str(schema.SCHEMA_VERSION).encode()
    c = clips.to_pylist()[0]
    assert c["status"] == "ok" and c["error"] is None and c["attempts"] == 2 and c["n_frames"] == 4
    assert c["config_hash"] == "cafe" and c["schema_version"] == schema.SCHEMA_VERSION and c["synthetic_face_model"]
    np.testing.assert_array_equal(np.array(c["id_coeff"], np.float32), rec.id_coeff)
    np.testing.assert_array_equal(np.array(c["mel"], np.float32), rec.mel)
    assert c["voiced"] == rec.voiced.tolist() and c["hubert"] is None and c["has_audio"]
    assert {t["stage"]: t["seconds"] for t in c["timings"]} == rec.timings
    assert c["background_jpeg"] == rec.background_jpeg
    f = frames.to_pylist()
    assert [r["index"] for r in f] == [0, 1, 2, 3] and {r["clip_id"] for r in f} == {CLIP["clip_id"]}
    lm = np.array([r["landmarks"] for r in f], np.float32).reshape(4, 68, 2)
    np.testing.assert_array_equal(lm, rec.landmarks)  # NaN where not valid survives
    np.testing.assert_array_equal(np.array([r["eg3d_cam"] for r in f], np.float32), rec.eg3d_cam)
    assert [r["seg_png"] for r in f] == rec.seg_png and [r["frame_jpeg"] for r in f] == rec.frame_jpeg
    assert frames.schema.field("landmarks").type == pa.list_(pa.float32(), 136)


def test_no_audio_and_bad_record():
    clips, _ = schema.record_tables(make_record(n_frames=2, audio=False), CLIP, RUN)
    c = clips.to_pylist()[0]
    assert not c["has_audio"] and c["mel"] is None and c["f0"] is None
    rec = make_record(n_frames=3)
    rec.exp = rec.exp[:2]
    with pytest.raises(ValueError, match="exp has 2 rows"):
        schema.record_tables(rec, CLIP, RUN)


def test_failed_row_is_one_actionable_line():
    err = VideoError("/data/spk/a b.mp4", "empty_file", "empty file (0 bytes)")
    row = schema.failed_row(CLIP, err, RUN, attempts=1).to_pylist()[0]
    assert row["status"] == "failed" and row["error_type"] == "VideoError" and row["error_reason"] == "empty_file"
    assert row["error"].startswith("VideoError: /data/spk/a b.mp4: empty file") and "\n" not in row["error"]
    assert "re-download" in row["error"] and row["n_frames"] is None and row["clip_id"] == CLIP["clip_id"]
    multi = schema.failed_row(CLIP, RuntimeError("line one\nline two"), RUN).to_pylist()[0]
    assert multi["error"] == "RuntimeError: line one line two"


def test_content_hash_ignores_timings_only():
    a, fa = schema.record_tables(make_record(seed=3), CLIP, RUN, attempts=1, seconds=1.0)
    b, fb = schema.record_tables(make_record(seed=3), CLIP, RUN, attempts=3, seconds=9.0)
    assert schema.clip_hashes(a) == schema.clip_hashes(b) and schema.frame_hashes(fa) == schema.frame_hashes(fb)
    other = make_record(seed=3)
    other.exp[1, 2] += 1e-6
    _, fo = schema.record_tables(other, CLIP, RUN)
    assert schema.frame_hashes(fo) != schema.frame_hashes(fa)


def test_ipc_round_trip():
    c, f = schema.record_tables(make_record(), CLIP, RUN)
    c2, f2 = schema.from_ipc(schema.to_ipc(c)), schema.from_ipc(schema.to_ipc(f))
    assert c2.schema == c.schema and f2.schema == f.schema
    assert schema.clip_hashes(c2) == schema.clip_hashes(c) and schema.frame_hashes(f2) == schema.frame_hashes(f)


@pytest.fixture
def published(tmp_path):
    fs, root = storage.resolve(str(tmp_path / "out"))
    layout = shards.Layout(fs, root, 1)
    c1, f1 = schema.record_tables(make_record(n_frames=3, seed=1), CLIP, RUN)
    c2 = schema.failed_row({**CLIP, "clip_id": "fedcba9876543210"}, ValueError("no face"), RUN)
    clips, frames = pa.concat_tables([c1, c2]), pa.concat_tables([f1, schema.empty_frames()])
    shards.write_shard(layout, "train-00000", clips, frames, {"clips": 2, "ok": 1, "failed": 1})
    return layout, clips, frames


def test_publish_and_read_back(published):
    layout, clips, frames = published
    assert shards.published(layout)["train-00000"]["bytes_frames"] > 0
    c, f = shards.read_shard(layout, "train-00000")
    assert c.schema == schema.CLIPS_SCHEMA and f.schema == schema.FRAMES_SCHEMA
    assert schema.clip_hashes(c) == schema.clip_hashes(clips) and schema.frame_hashes(f) == schema.frame_hashes(frames)
    failed = c.to_pylist()[1]
    assert failed["status"] == "failed" and np.isnan(failed["id_coeff"]).all() and failed["mel"] is None
    # nothing temporary is left, and a leftover temporary is cleaned
    names = [p.name for p in (layout_dir(layout) / "clips").iterdir()]
    assert names == ["train-00000.parquet"]
    (layout_dir(layout) / "clips" / ".tmp-1234-x.parquet.tmp").write_bytes(b"partial")
    assert shards.clean_temporaries(layout) == 1


def layout_dir(layout):
    from pathlib import Path

    return Path(layout.dir)


def test_readable_by_pandas_and_duckdb(published):
    layout, clips, frames = published
    d = layout_dir(layout)
    (d / "clips" / ".tmp-1234-y.parquet.tmp").write_bytes(b"partial")  # a crashed writer's leftover
    df = pd.read_parquet(d / "clips")
    assert len(df) == 2 and set(df["status"]) == {"ok", "failed"}
    fr = pd.read_parquet(d / "frames")
    assert len(fr) == 3 and len(fr["landmarks"].iloc[0]) == 136
    Image.open(io.BytesIO(fr["frame_jpeg"].iloc[0])).verify()
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    got = con.execute(f"select status, count(*) from read_parquet('{d}/clips/*.parquet') group by status "
                      "order by status").fetchall()
    assert got == [("failed", 1), ("ok", 1)]
    n, width = con.execute(f"select count(*), max(len(landmarks)) from read_parquet('{d}/frames/*.parquet')").fetchone()
    assert (n, width) == (3, 136)
    assert pq.read_schema(d / "frames" / "train-00000.parquet").field("landmarks").type == pa.list_(pa.float32(), 136)


def test_every_failure_kind_has_a_machine_readable_reason():
    from preprocessing.face_model import FaceModelError
    from preprocessing.landmarks.tracking import TrackingError
    from preprocessing.segmentation import SegmentationError
    from preprocessing.video import VideoError

    run = {"pipeline_version": "t", "config_hash": "h"}
    clip = {"clip_id": "c1", "rel_path": "a/b.mp4"}
    cases = [
        (VideoError("a/b.mp4", "unreadable"), "VideoError", "unreadable"),
        (TrackingError("no face detected in any of the 9 frames"), "TrackingError", "no_face"),
        (TrackingError("tiny", "face_too_small"), "TrackingError", "face_too_small"),
        (SegmentationError("rembg model file not found", "model_missing"), "SegmentationError", "model_missing"),
        (FaceModelError("BFM_model_front.mat lacks keys"), "FaceModelError", "face_model"),
        (FileNotFoundError("a/b.mp4"), "FileNotFoundError", "not_found"),
        (PermissionError("a/b.mp4"), "PermissionError", "permission_denied"),
        (MemoryError(), "MemoryError", "out_of_memory"),
        (ValueError("audio contains NaN"), "ValueError", "invalid_input"),
        (OSError("I/O error"), "OSError", "io_error"),
        (RuntimeError("boom"), "RuntimeError", "internal_error"),
    ]
    for exc, etype, reason in cases:
        row = schema.failed_row(clip, exc, run).to_pylist()[0]
        assert (row["error_type"], row["error_reason"]) == (etype, reason), exc
        assert row["status"] == "failed" and row["error"].startswith(etype)
    text = schema.failed_row(clip, "WorkerCrash: died", run, error_type="WorkerCrash",
                             reason=schema.REASON_WORKER_CRASH).to_pylist()[0]
    assert (text["error_type"], text["error_reason"]) == ("WorkerCrash", "worker_crash")
