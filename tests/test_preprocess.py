"""`r3p preprocess` on Ray: bad inputs mixed with good ones, SIGKILL and resume, re-runs, retries, versions.

One local Ray (2 CPUs, loopback) is shared by the module; the SIGKILL test runs the CLI as a
subprocess that joins it. The reliability tests run the real processor (`pipeline.process`) on a
synthetic corpus; the tests of the job's bookkeeping use `clip_records.FakeProcessor` (real input
validation, synthetic content) to stay fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import schema, shards
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.preprocess import PreprocessConflict, run_preprocess
from preprocessing.video import DecordDecoder, encode_mp4, ffmpeg_exe, n_output_frames

TESTS = Path(__file__).parent
FAKE = "clip_records:make_fake_processor"
# real processor, sized for a 2-core CI box: 128² crops, 64² renders, one clip per shard, two actors
REAL_SET = ["tracking.crop_size=128", "render.size=64", "preprocess.actors=2", "preprocess.shard_size=1"]


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "R3P_FAKE_CRASH": "crash_me.mp4"}
    from pipeline.preprocess import use_loopback

    use_loopback()  # this process, its Ray and the CLI subprocesses stay on 127.0.0.1
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def dataset_hashes(location) -> dict[str, tuple[str, str | None]]:
    """{clip_id: (clips-row hash, frames hash)} of a dataset (no timings, no attempts)."""
    layout = shards.open_dataset(str(location))
    clips, frames = shards.read_table(layout, "clips"), shards.read_table(layout, "frames")
    fh = schema.frame_hashes(frames)
    return {cid: (h, fh.get(cid)) for cid, h in schema.clip_hashes(clips).items()}


def rows_by_path(location) -> dict[str, dict]:
    layout = shards.open_dataset(str(location))
    return {r["rel_path"]: r for r in shards.read_table(layout, "clips").to_pylist()}


# ------------------------------------------------------------------------------------------------
# a synthetic corpus (real faces) plus every kind of bad input


def _ff(*args) -> None:
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-nostdin", *map(str, args)], check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model

    root = tmp_path_factory.mktemp("pp") / "corpus"
    # seed 1: dlib finds all three faces (not every synthetic identity is detectable)
    generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=3, clips=1, seconds=1.2, size=512, seed=1),
                    root)
    good = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.mp4"))
    (root / "good.csv").write_text("path\n" + "\n".join(good) + "\n")
    src = root / good[0]
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    data = src.read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (bad / "text.mp4").write_text("this is not a video\n" * 50)
    _ff("-i", src, "-c:v", "copy", "-an", bad / "no_audio.mp4")
    rng = np.random.default_rng(0)
    encode_mp4(bad / "no_face.mp4", rng.integers(0, 255, (20, 128, 128, 3), dtype=np.uint8), 25,
               0.1 * np.sin(np.arange(20 * 640) / 7).astype(np.float32))
    encode_mp4(bad / "one_frame.mp4", np.full((1, 128, 128, 3), 120, np.uint8), 25, np.zeros(640, np.float32))
    # odd resolution (4:4:4 allows odd sizes) and variable frame rate, both with a face, 0.6 s
    _ff("-i", src, "-t", "0.6", "-vf", "format=yuv444p,crop=511:509", "-c:v", "libx264", "-pix_fmt", "yuv444p", "-c:a", "aac",
        bad / "odd_511x509.mp4")
    _ff("-i", src, "-t", "0.8", "-vf", "setpts='if(lt(N,8),N*0.04,0.32+(N-8)*0.02)/TB'", "-fps_mode", "vfr",
        "-enc_time_base", "1:1000", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", bad / "vfr.mp4")
    weird = bad / "dir with spaces ü" / "clip é ñ.mp4"
    weird.parent.mkdir()
    _ff("-i", src, "-t", "0.6", "-c", "copy", weird)
    return root


@pytest.fixture(scope="module")
def reference(ray_address, corpus, tmp_path_factory):
    """An uninterrupted run over the good clips only."""
    out = tmp_path_factory.mktemp("ref") / "out"
    summary = run_preprocess(str(corpus / "good.csv"), str(out), load_config("tiny", overrides=REAL_SET))
    assert summary["complete"] and summary["ok"] == 3, summary
    return out


def test_bad_inputs_mixed_with_good(ray_address, corpus, reference, tmp_path, capsys):
    out = tmp_path / "out"
    summary = run_preprocess(str(corpus), str(out), load_config("tiny", overrides=REAL_SET))
    printed = capsys.readouterr().out
    rows = rows_by_path(out)
    files = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.mp4"))
    assert sorted(rows) == files and summary["clips"] == len(files) == 12  # every input has a row
    assert summary["complete"] and summary["ok"] + summary["failed"] == 12
    expect = {"bad/empty.mp4": ("VideoError", "empty_file"), "bad/truncated.mp4": ("VideoError", "unreadable"),
              "bad/text.mp4": ("VideoError", "unreadable"), "bad/no_audio.mp4": ("VideoError", "no_audio"),
              "bad/no_face.mp4": ("TrackingError", "no_face"), "bad/one_frame.mp4": ("VideoError", "too_few_frames")}
    for rel, (etype, reason) in expect.items():
        r = rows[rel]
        assert r["status"] == "failed" and r["error_type"] == etype and r["error_reason"] == reason, r["error"]
        assert Path(rel).name in r["error"] and "\n" not in r["error"] and len(r["error"]) > 40
    # valid but unusual videos are processed
    for rel in ("bad/odd_511x509.mp4", "bad/vfr.mp4", "bad/dir with spaces ü/clip é ñ.mp4"):
        assert rows[rel]["status"] == "ok", rows[rel]["error"]
    assert (rows["bad/odd_511x509.mp4"]["width"], rows["bad/odd_511x509.mp4"]["height"]) == (511, 509)
    vfr = DecordDecoder().probe(corpus / "bad" / "vfr.mp4")
    assert rows["bad/vfr.mp4"]["n_frames"] == n_output_frames(vfr.duration_s) >= 10  # resampled by timestamps
    # the good clips' rows are identical to a run without the bad inputs
    ref = dataset_hashes(reference)
    got = dataset_hashes(out)
    assert {cid: got[cid] for cid in ref} == ref
    # a progress line per shard and a final summary
    assert sum(line.startswith("[") for line in printed.splitlines()) == 12
    assert f"done: {summary['ok']} ok, {summary['failed']} failed" in printed
    s = json.loads((out / "v001" / "summary.json").read_text())
    assert s["errors"]["VideoError (unreadable)"] == 2 and s["mib_per_minute_of_video"] > 0
    stats = json.loads((out / "v001" / "stats" / "train-00000.json").read_text())
    assert {"ok", "failed", "skipped", "errors", "seconds", "frames_per_s"} <= set(stats)


def _run_and_kill_after_first_shard(ray_address, corpus, out):
    """Start `r3p preprocess` and SIGKILL its process group as soon as a shard is published; the shards
    published at the kill."""
    cmd = [sys.executable, "-m", "pipeline.cli", "preprocess", str(corpus / "good.csv"), str(out), "--preset", "tiny",
           "--address", ray_address] + [a for s in REAL_SET for a in ("--set", s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    stats = out / "v001" / "stats"
    deadline = time.monotonic() + 240
    try:
        while not (stats.is_dir() and any(p.suffix == ".json" for p in stats.iterdir())):
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no shard published within 240 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return {p.stem for p in stats.iterdir() if p.suffix == ".json"}


def test_sigkill_mid_run_then_resume_is_identical(ray_address, corpus, reference, tmp_path):
    # the driver publishes shards as the actors return them; on a loaded machine this test's poll can wake
    # only after the last one (nothing left to resume): then the kill is tried again on a fresh output
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        at_kill = _run_and_kill_after_first_shard(ray_address, corpus, out)
        if len(at_kill) < 3:
            break
    assert 1 <= len(at_kill) < 3, "killed mid-run"

    summary = run_preprocess(str(corpus / "good.csv"), str(out), load_config("tiny", overrides=REAL_SET))
    assert summary["complete"] and summary["shards_skipped_this_run"] == len(at_kill)
    assert dataset_hashes(out) == dataset_hashes(reference)  # same rows, same content
    v = out / "v001"
    for table in ("clips", "frames", "stats"):
        assert not [p.name for p in (v / table).iterdir() if p.name.startswith(".")]  # no partial shard left
    clips = pq.read_table(v / "clips").to_pylist()
    assert len(clips) == 3 and len({r["clip_id"] for r in clips}) == 3  # no duplicates
    frames = pq.read_table(v / "frames", columns=["clip_id", "index"]).to_pylist()
    assert len(frames) == sum(r["n_frames"] for r in clips) == len({(f["clip_id"], f["index"]) for f in frames})


def test_readable_by_ray_data_pandas_duckdb_and_inspect(ray_address, reference, tmp_path, capsys):
    import pandas as pd
    import ray

    v = reference / "v001"
    ds = ray.data.read_parquet(str(v / "frames"))
    assert ds.count() == 90 and "landmarks" in ds.schema().names
    assert len(pd.read_parquet(v / "clips")) == 3
    duckdb = pytest.importorskip("duckdb")
    (n,) = duckdb.connect().execute(f"select count(*) from read_parquet('{v}/clips/*.parquet') where status = 'ok'"
                                    ).fetchone()
    assert n == 3
    assert main(["inspect", str(reference), "--sheet", str(tmp_path / "sheet.png"), "--samples", "3"]) == 0
    printed = capsys.readouterr().out
    assert "3 clips, 90 frames" in printed and "failed" not in printed and "contact sheet" in printed and (tmp_path / "sheet.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------
# bookkeeping (stand-in processor)


def _small_corpus(root: Path, names=("a/one.mp4", "a/two.mp4", "b/three.mp4", "b/four.mp4")) -> Path:
    for i, name in enumerate(names):
        n = 20 + 5 * i
        encode_mp4(root / name, np.full((n, 64, 64, 3), (40 * i) % 251, np.uint8), 25, np.zeros(n * 640, np.float32))
    return root


FAKE_SET = ["preprocess.shard_size=2", "preprocess.actors=2", "preprocess.val_fraction=0",
            "preprocess.test_fraction=0"]


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.parquet")}


def test_rerun_skips_published_and_retry_failed_redoes_only_failed(ray_address, tmp_path, capsys):
    root = _small_corpus(tmp_path / "c")
    (root / "list.csv").write_text("path\na/one.mp4\na/two.mp4\nb/three.mp4\nb/four.mp4\nb/late.mp4\n")
    out = tmp_path / "out"
    cfg = load_config("tiny", overrides=FAKE_SET)
    s1 = run_preprocess(str(root / "list.csv"), str(out), cfg, factory=FAKE)
    assert (s1["ok"], s1["failed"], s1["shards"]) == (4, 1, 3)
    assert rows_by_path(out)["b/late.mp4"]["error_reason"] == "not_found"
    before = _mtimes(out)
    capsys.readouterr()
    s2 = run_preprocess(str(root / "list.csv"), str(out), cfg, factory=FAKE)
    assert s2["shards_published_this_run"] == 0 and s2["shards_skipped_this_run"] == 3
    assert "0 clip(s) to process" in capsys.readouterr().out and _mtimes(out) == before
    # the missing file appears; --retry-failed processes that clip only and republishes its shard
    _small_corpus(root, ["b/late.mp4"])
    ok_before = dataset_hashes(out)
    s3 = run_preprocess(str(root / "list.csv"), str(out), cfg, factory=FAKE, retry_failed=True)
    assert (s3["ok"], s3["failed"], s3["shards_published_this_run"]) == (5, 0, 1)
    after = _mtimes(out)
    changed = sorted(k for k in after if after[k] != before[k])
    late = rows_by_path(out)["b/late.mp4"]["clip_id"]
    manifest = pq.read_table(out / "v001" / "manifest.parquet").to_pylist()
    shard = next(r["shard_id"] for r in manifest if r["clip_id"] == late)
    assert len(changed) == 2 and all(Path(k).stem == shard for k in changed)  # its clips + frames only
    now = dataset_hashes(out)
    assert {k: now[k] for k in ok_before if k != late} == {k: v for k, v in ok_before.items() if k != late}
    stats = json.loads((out / "v001" / "stats" / f"{shard}.json").read_text())
    assert stats["ok"] == 2 and stats["failed"] == 0 and stats["retried_failed"]


def test_changed_config_or_inputs_are_reported_and_force_starts_a_new_version(ray_address, tmp_path, capsys):
    root = _small_corpus(tmp_path / "c")
    out = tmp_path / "out"
    run_preprocess(str(root), str(out), load_config("tiny", overrides=FAKE_SET), factory=FAKE)
    # execution resources are not part of the dataset's identity
    run_preprocess(str(root), str(out), load_config("tiny", overrides=FAKE_SET + ["preprocess.actors=1"]),
                   factory=FAKE)
    with pytest.raises(PreprocessConflict, match=r"preprocess.shard_size: 2 -> 3.*--force.*v002"):
        run_preprocess(str(root), str(out), load_config("tiny", overrides=FAKE_SET + ["preprocess.shard_size=3"]),
                       factory=FAKE)
    _small_corpus(root, ["c/five.mp4"])
    with pytest.raises(PreprocessConflict, match=r"input set changed \(1 clip\(s\) added, 0 removed\)"):
        run_preprocess(str(root), str(out), load_config("tiny", overrides=FAKE_SET), factory=FAKE)
    capsys.readouterr()
    args = ["preprocess", str(root), str(out), "--preset", "tiny"] + [a for s in FAKE_SET for a in ("--set", s)]
    assert main(args) == 2
    assert "input set changed" in capsys.readouterr().err
    s = run_preprocess(str(root), str(out), load_config("tiny", overrides=FAKE_SET), factory=FAKE, force=True)
    assert s["version"] == 2 and s["clips"] == 5 and (out / "v001" / "run.json").exists()
    assert shards.open_dataset(str(out)).version == 2
    assert main(["preprocess", str(tmp_path / "missing"), str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_crashing_input_fails_alone_and_spares_the_others(ray_address, tmp_path):
    """One input segfaults its worker (ctypes): it alone fails, with the crash; the rest equal a clean run."""
    root = _small_corpus(tmp_path / "c", ("a/one.mp4", "a/crash_me.mp4", "b/two.mp4", "b/three.mp4"))
    (root / "all.csv").write_text("path\na/one.mp4\na/crash_me.mp4\nb/two.mp4\nb/three.mp4\n")
    (root / "clean.csv").write_text("path\na/one.mp4\nb/two.mp4\nb/three.mp4\n")
    cfg = load_config("tiny", overrides=FAKE_SET + ["preprocess.max_retries=0", "preprocess.max_job_attempts=3"])
    s = run_preprocess(str(root / "all.csv"), str(tmp_path / "out"), cfg, factory=FAKE)
    clean = run_preprocess(str(root / "clean.csv"), str(tmp_path / "clean"), cfg, factory=FAKE)
    assert s["complete"] and (s["ok"], s["failed"]) == (3, 1) and clean["ok"] == 3
    bad = rows_by_path(tmp_path / "out")["a/crash_me.mp4"]
    assert (bad["error_type"], bad["error_reason"]) == ("WorkerCrash", "worker_crash")
    assert "Segmentation fault" in bad["error"] and "--retry-failed" in bad["error"], bad["error"]
    got, ref = dataset_hashes(tmp_path / "out"), dataset_hashes(tmp_path / "clean")
    assert {cid: got[cid] for cid in ref} == ref  # every other clip identical to a run without the crash


@pytest.mark.slow
def test_every_clip_crashing_stops_with_a_diagnosis_and_a_rerun_completes(ray_address, tmp_path):
    """A broken environment (every clip segfaults its worker) stops the job early with the crash's stage and
    stack; nothing is written for the clips, and the same command with a working processor completes."""
    from pipeline.preprocess import PreprocessError

    names = tuple(f"s{i}/c{i}.mp4" for i in range(16))
    root = _small_corpus(tmp_path / "c", names)
    cfg = load_config("tiny", overrides=FAKE_SET + ["preprocess.max_retries=0", "preprocess.crash_limit=3"])
    with pytest.raises(PreprocessError) as err:
        run_preprocess(str(root), str(tmp_path / "out"), cfg, factory="clip_records:make_segfaulting_processor")
    text = str(err.value)
    assert "environment" in text and "Segmentation fault" in text and "fake_audio_stage" in text, text
    assert "Nothing was written for these clips" in text
    # bounded: each of the 2 attempts gave up after crash_limit (+ the other actor's) crashes, not one per clip
    n = int(re.search(r"(\d+) worker crash\(es\)", text).group(1))
    assert 2 <= n <= 2 * (3 + 2) < len(names)
    stats = tmp_path / "out" / "v001" / "stats"
    assert not stats.exists() or not list(stats.glob("*.json"))  # no WorkerLost rows blaming the inputs
    s = run_preprocess(str(root), str(tmp_path / "out"), cfg, factory=FAKE)  # the fix: a working processor
    assert s["complete"] and s["ok"] == len(names) and s["failed"] == 0
    assert dataset_hashes(tmp_path / "out") == _fake_reference(root, tmp_path / "ref", cfg)


def _fake_reference(root: Path, out: Path, cfg) -> dict:
    run_preprocess(str(root), str(out), cfg, factory=FAKE)
    return dataset_hashes(out)


def test_a_version_1_dataset_is_refused_with_the_way_to_a_current_one(ray_address, tmp_path, capsys):
    root = _small_corpus(tmp_path / "c", ("a/one.mp4", "b/two.mp4"))
    out = tmp_path / "out"
    cfg = load_config("tiny", overrides=FAKE_SET)
    run_preprocess(str(root), str(out), cfg, factory=FAKE)
    run_json = out / "v001" / "run.json"
    old = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**old, "schema_version": 1}))  # as an r3p before the camera change wrote it
    with pytest.raises(shards.SchemaVersionError, match=r"schema version 1.*reads version 2.*eg3d_cam.*--force"):
        shards.open_dataset(str(out))
    assert main(["inspect", str(out)]) == 2 and "--force" in capsys.readouterr().err
    with pytest.raises(PreprocessConflict, match=r"schema version 1.*--force"):  # no resume into an old version
        run_preprocess(str(root), str(out), cfg, factory=FAKE)
    s = run_preprocess(str(root), str(out), cfg, factory=FAKE, force=True)
    assert s["complete"] and s["version"] == 2 and shards.open_dataset(str(out)).version == 2


def test_a_new_version_reuses_the_previous_versions_rows_by_clip_id(ray_address, tmp_path, capsys):
    """What `r3p retrain` does with new data: v2 = v1's clips + new ones; v1's ok rows are copied (not
    recomputed: their timings are v1's to the last digit), only the new and the failed clips are processed."""
    from pipeline import manifest as mf

    root = _small_corpus(tmp_path / "c")
    (root / "v1.csv").write_text("path\na/one.mp4\na/two.mp4\nb/three.mp4\nb/late.mp4\n")  # late.mp4: missing
    out = tmp_path / "out"
    cfg = load_config("tiny", overrides=FAKE_SET)
    s1 = run_preprocess(str(root / "v1.csv"), str(out), cfg, factory=FAKE)
    assert (s1["ok"], s1["failed"]) == (3, 1)
    _small_corpus(root, ["b/late.mp4"])
    (root / "v2.csv").write_text("path\na/one.mp4\na/two.mp4\nb/three.mp4\nb/late.mp4\nb/four.mp4\n")
    clips = mf.assign_shards(mf.build_manifest(str(root / "v2.csv"), cfg.preprocess), cfg.preprocess.shard_size)
    capsys.readouterr()
    s2 = run_preprocess("v1 + b/four.mp4", str(out), cfg, factory=FAKE, clips=clips, reuse=str(out / "v001"),
                        force=True)
    assert s2["version"] == 2 and (s2["ok"], s2["failed"]) == (5, 0) and s2["reused_clips"] == 3
    assert "3 clip(s) reused from" in capsys.readouterr().out
    v1 = {r["clip_id"]: r for r in shards.read_table(shards.open_dataset(str(out / "v001")), "clips").to_pylist()}
    v2 = {r["clip_id"]: r for r in shards.read_table(shards.open_dataset(str(out)), "clips").to_pylist()}
    reused = [c for c, r in v1.items() if r["status"] == "ok"]
    assert len(reused) == 3 and all(v2[c]["timings"] == v1[c]["timings"] for c in reused)
    h1, h2 = dataset_hashes(out / "v001"), dataset_hashes(out)
    assert all(h2[c] == h1[c] for c in reused)  # rows and frames identical
    late = next(c for c, r in v2.items() if r["rel_path"] == "b/late.mp4")
    assert v1[late]["status"] == "failed" and v2[late]["status"] == "ok"  # a failed row is processed again
    # another preprocessing config reuses nothing (and says so)
    other = load_config("tiny", overrides=FAKE_SET + ["preprocess.shard_size=3"])
    s3 = run_preprocess("other config", str(out), other, factory=FAKE, reuse=str(out / "v002"), force=True,
                        clips=mf.assign_shards(mf.build_manifest(str(root / "v2.csv"), other.preprocess), 3))
    assert s3["reused_clips"] == 0 and "another preprocessing config" in capsys.readouterr().out
