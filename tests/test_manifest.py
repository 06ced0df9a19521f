"""The manifest step: inputs (folders, CSV/JSONL/Parquet manifests), stable ids, windows, splits, shards."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import manifest as mf
from pipeline.config import PreprocessConfig
from preprocessing.video import encode_mp4


def _video(path, seconds: float = 1.0, audio: bool = True):
    n = int(round(seconds * 25))
    frames = np.full((n, 32, 32, 3), 90, np.uint8)
    return encode_mp4(path, frames, 25, np.zeros(n * 640, np.float32) if audio else None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcorpus") / "corpus"
    _video(root / "spk1" / "a.mp4", 1.0)
    _video(root / "spk1" / "sub" / "b.MP4", 2.6)
    _video(root / "spk2" / "c d é.mov", 0.6)
    (root / "spk2" / "notes.txt").write_text("not a video")
    (root / "spk2" / "broken.mp4").write_text("not a video either")
    (root / "spk2" / ".hidden.mp4").write_bytes(b"")
    return root


def test_clip_id_is_stable_and_window_specific():
    a = mf.clip_id("spk/a.mp4", 0.0, None)
    assert a == mf.clip_id("spk/a.mp4", 0.0, None) and len(a) == 16
    assert len({a, mf.clip_id("spk/a.mp4", 0.0, 20.0), mf.clip_id("spk/a.mp4", 20.0, None),
                mf.clip_id("spk/b.mp4", 0.0, None)}) == 4
    assert mf.clip_id("x.mp4", 1.0, 2.0) == mf.clip_id("x.mp4", 1.0004, 2.0)  # whole milliseconds


def test_windows():
    assert mf.windows(None, 20, 2) == [(0.0, None)]
    assert mf.windows(15.0, 20, 2) == [(0.0, None)]
    assert mf.windows(41.0, 20, 2) == [(0.0, 20.0), (20.0, None)]  # 1 s remainder joins the last window
    assert mf.windows(45.0, 20, 2) == [(0.0, 20.0), (20.0, 40.0), (40.0, None)]
    assert mf.windows(100.0, 20, 2, clip_start=10.0, clip_end=55.0) == [(10.0, 30.0), (30.0, 50.0), (50.0, 55.0)]
    assert mf.windows(None, 20, 2, clip_start=5.0, clip_end=9.0) == [(5.0, 9.0)]


def test_split_is_a_deterministic_hash_with_the_configured_fractions():
    splits = [mf.assign_split(f"speaker{i}", 0.1, 0.2) for i in range(4000)]
    share = {s: splits.count(s) / len(splits) for s in mf.SPLITS}
    assert abs(share["test"] - 0.2) < 0.03 and abs(share["val"] - 0.1) < 0.03
    assert splits == [mf.assign_split(f"speaker{i}", 0.1, 0.2) for i in range(4000)]
    assert mf.assign_split("speaker1", 0.1, 0.2, salt="other") in mf.SPLITS


def test_directory_input(corpus):
    cfg = PreprocessConfig(window_s=1.0, min_window_s=0.5, shard_size=2, val_fraction=0.0, test_fraction=0.0)
    clips = mf.build_manifest(str(corpus), cfg)
    rels = sorted({c.rel_path for c in clips})
    # extensions are matched case-insensitively; hidden files and non-videos are left out
    assert rels == ["spk1/a.mp4", "spk1/sub/b.MP4", "spk2/broken.mp4", "spk2/c d é.mov"]
    b = [c for c in clips if c.rel_path == "spk1/sub/b.MP4"]
    assert [(c.start_s, c.end_s) for c in b] == [(0.0, 1.0), (1.0, 2.0), (2.0, None)]  # 2.6 s: 0.6 s ≥ min
    broken = [c for c in clips if c.rel_path == "spk2/broken.mp4"]
    assert len(broken) == 1 and broken[0].duration_s is None and "VideoError" in broken[0].probe_error
    assert {c.speaker_id for c in clips} == {"spk1", "spk2"} and {c.dataset for c in clips} == {"corpus"}
    assert all(c.source.startswith(str(corpus)) for c in clips)
    # shards: fixed size per split, ids by position in (path, start) order
    assert [c.shard_id for c in clips] == ["train-00000"] * 2 + ["train-00001"] * 2 + ["train-00002"] * 2
    assert len({c.clip_id for c in clips}) == len(clips)
    # the same input gives the same manifest (and fingerprint), from cache too
    again = mf.build_manifest(str(corpus), cfg, mf.probe_cache_from(clips))
    assert [c.clip_id for c in again] == [c.clip_id for c in clips]
    assert mf.input_fingerprint(again) == mf.input_fingerprint(clips)


def test_speaker_disjoint_splits(corpus):
    cfg = PreprocessConfig(window_s=1.0, min_window_s=0.5, val_fraction=0.45, test_fraction=0.45)
    clips = mf.build_manifest(str(corpus), cfg)
    for spk in ("spk1", "spk2"):
        assert len({c.split for c in clips if c.speaker_id == spk}) == 1
    video = mf.build_manifest(str(corpus), cfg.model_copy(update={"speaker_from_path": "none"}))
    assert all(c.speaker_id is None for c in video)
    for rel in {c.rel_path for c in video}:  # no speaker: every window of a video in one split
        assert len({c.split for c in video if c.rel_path == rel}) == 1


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_files(corpus, fmt):
    rows = [{"path": "spk1/a.mp4", "speaker_id": "alice", "dataset": "hdtf", "clip_start": None, "clip_end": None},
            {"path": str(corpus / "spk1" / "sub" / "b.MP4"), "speaker_id": "bob", "dataset": None,
             "clip_start": 0.5, "clip_end": 2.0},
            {"path": "spk2/missing.mp4", "speaker_id": None, "dataset": None, "clip_start": None, "clip_end": None}]
    path = corpus / f"list.{fmt}"
    if fmt == "csv":
        lines = ["path,speaker_id,dataset,clip_start,clip_end"]
        lines += [",".join("" if r[k] is None else str(r[k]) for k in ("path", "speaker_id", "dataset", "clip_start",
                                                                      "clip_end")) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
            ("path", pa.string()), ("speaker_id", pa.string()), ("dataset", pa.string()),
            ("clip_start", pa.float64()), ("clip_end", pa.float64())])), path)
    cfg = PreprocessConfig(window_s=1.0, min_window_s=0.3, val_fraction=0.0, test_fraction=0.0)
    clips = mf.build_manifest(str(path), cfg)
    by = {}
    for c in clips:
        by.setdefault(c.rel_path, []).append(c)
    assert sorted(by) == ["spk1/a.mp4", "spk1/sub/b.MP4", "spk2/missing.mp4"]  # absolute path under the root → relative
    assert by["spk1/a.mp4"][0].speaker_id == "alice" and by["spk1/a.mp4"][0].dataset == "hdtf"
    assert [(c.start_s, c.end_s) for c in by["spk1/sub/b.MP4"]] == [(0.5, 1.5), (1.5, 2.0)]
    assert by["spk1/sub/b.MP4"][0].dataset == "corpus"  # default: the manifest's folder name
    missing = by["spk2/missing.mp4"][0]  # still a clip: it will be a failed row
    assert missing.speaker_id == "spk2" and missing.duration_s is None and missing.probe_error


def test_input_errors(tmp_path, corpus):
    cfg = PreprocessConfig()
    with pytest.raises(mf.ManifestError, match="does not exist"):
        mf.build_manifest(str(tmp_path / "nope"), cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(mf.ManifestError, match="holds no videos"):
        mf.build_manifest(str(tmp_path / "empty"), cfg)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,speaker\nx.mp4,a\n")
    with pytest.raises(mf.ManifestError, match="no 'path' column"):
        mf.build_manifest(str(bad), cfg)
    with pytest.raises(mf.ManifestError, match="not a manifest"):
        mf.build_manifest(str(corpus / "spk1" / "a.mp4"), cfg)


def test_manifest_table_round_trip(corpus):
    clips = mf.build_manifest(str(corpus), PreprocessConfig())
    back = mf.clips_from_table(mf.clips_to_table(clips))
    assert back == clips
