"""`r3p evaluate` end to end: baselines' known answers, Ray merge = single pass, cache, failures, MLflow, report.

The dataset is made by the real preprocessing job (`run_preprocess`, tiny sizes) on a synthetic
corpus of 3 speakers × one 1.2 s clip; one local Ray (2 CPUs, loopback) serves the module. The
offline metric backends run (dlib: CSIM-dlib, FID-dlib); LPIPS and LSE are recorded as not computed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.generators import GeneratorNotAvailable, load_generator
from evaluation.protocols import ProtocolError, build_items, cross_pairs, parse_protocols
from pipeline import shards
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.evaluate import EvaluateError, ItemScorer, _backend_paths, run_evaluate, single_pass
from model_runs import random_runs

EVAL_SET = ["evaluate.max_frames=10", "evaluate.actors=2", "evaluate.actor_num_cpus=0.5", "evaluate.strip_clips=2"]


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    from pipeline.preprocess import use_loopback

    use_loopback()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(ray_address, tmp_path_factory):
    from pipeline.preprocess import run_preprocess
    from preprocessing.synthetic import SynthSpec, generate_corpus
    from preprocessing.synthetic_bfm import synthetic_face_model

    root = tmp_path_factory.mktemp("ev")
    corpus = root / "corpus"
    generate_corpus(synthetic_face_model(0, "bfm"), SynthSpec(identities=3, clips=1, seconds=1.2, size=512, seed=1),
                    corpus)
    cfg = load_config("tiny", overrides=["tracking.crop_size=128", "render.size=64", "preprocess.actors=2",
                                         "preprocess.shard_size=1"])
    summary = run_preprocess(str(corpus), str(root / "ds"), cfg)
    assert summary["ok"] == 3, summary
    return root / "ds"


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", overrides=EVAL_SET)


@pytest.fixture(scope="module")
def evaluation(dataset, cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("evout")
    s = run_evaluate(str(dataset), cfg, split="all", out=str(out / "eval"),
                     tracking_uri=f"sqlite:///{out / 'mlflow.db'}", say=lambda _: None)
    return s


def _value(s, protocol, metric, model):
    rows = [r for r in s["table"] if r["protocol"] == protocol and r["metric"] == metric]
    assert rows, (protocol, metric, [(r["protocol"], r["metric"]) for r in s["table"]])
    return rows[0]["values"][model]


# ------------------------------------------------------------------------------------------------
# protocols and generators (no data)


def test_protocol_pairing_and_errors():
    clips = [("c1", "alice"), ("c2", "alice"), ("c3", "bob")]
    pairs = cross_pairs(clips)
    assert pairs == [("c1", "c3"), ("c2", "c3"), ("c3", "c1")]
    speaker = dict(clips)
    assert all(speaker[d] != speaker[s] for d, s in pairs)
    with pytest.raises(ProtocolError, match="at least 2 speakers"):
        cross_pairs([("c1", "alice"), ("c2", "alice")])
    items, skipped = build_items(["self", "cross"], [("c1", "alice"), ("c2", "alice")])
    assert [i.protocol for i in items] == ["self", "self"] and "cross" in skipped
    assert parse_protocols("audio,self,audio") == ["audio", "self"]
    with pytest.raises(ProtocolError, match="choose from self,cross,audio"):
        parse_protocols("self,lipsync")


def test_longest_run_of_consecutive_frames():
    from pipeline.evaluate import longest_run

    assert longest_run(np.array([0, 1, 2, 5, 6, 7, 8, 9, 12])) == slice(3, 8)
    assert longest_run(np.array([3, 4])) == slice(0, 2)
    assert longest_run(np.array([0, 2, 4])) == slice(0, 1)


def test_unknown_models_are_refused_with_what_to_give(capsys):
    for name in ("champion", "my-run", "/some/checkpoint"):
        with pytest.raises(GeneratorNotAvailable, match="not a baseline"):
            load_generator(name)
    assert main(["evaluate", "--data", "/nonexistent", "--model", "champion"]) == 2
    assert "/nonexistent" in capsys.readouterr().err  # champion resolves through the dataset's registry
    assert main(["evaluate", "--data", "/nonexistent", "--model", "/no/such/runs"]) == 2
    err = capsys.readouterr().err
    assert "/no/such/runs" in err and "runs folder" in err


# ------------------------------------------------------------------------------------------------
# the job


def test_ground_truth_known_answers(evaluation):
    s = evaluation
    assert s["items"] == 9 and s["failed"] == [] and s["computed"] == 9
    gt = "ground_truth"
    assert _value(s, "self", "PSNR", gt) == 100.0  # identical frames: the capped value, not inf/NaN
    assert _value(s, "self", "SSIM", gt) == pytest.approx(1.0)
    for p, m in (("self", "AED"), ("self", "APD"), ("cross", "AED"), ("cross", "APD"), ("audio", "LMD")):
        assert _value(s, p, m, gt) == 0.0
    assert _value(s, "self", "FID-dlib", gt) == pytest.approx(0.0, abs=1e-9)
    assert _value(s, "self", "CSIM-dlib", gt) > 0.97  # frames of one person vs its first frame
    assert s["backends"]["CSIM"].startswith("ArcFace not found") and "CSIM-dlib" in s["backends"]["CSIM"]


def test_static_source_is_worse_than_ground_truth_where_it_must_be(evaluation):
    s = evaluation
    st, gt = "static", "ground_truth"
    assert _value(s, "self", "PSNR", st) < 60.0 < _value(s, "self", "PSNR", gt)
    assert _value(s, "self", "SSIM", st) < _value(s, "self", "SSIM", gt)
    for p, m in (("self", "AED"), ("self", "APD"), ("cross", "AED"), ("audio", "LMD"), ("self", "FID-dlib")):
        assert _value(s, p, m, st) > _value(s, p, m, gt), (p, m)
    # identity: the static frame IS the source (CSIM 1); cross-identity ground truth shows another person
    assert _value(s, "self", "CSIM-dlib", st) == pytest.approx(1.0)
    assert _value(s, "cross", "CSIM-dlib", gt) < _value(s, "self", "CSIM-dlib", gt) - 0.03


def test_ray_merge_equals_single_process_pass(evaluation, dataset, cfg):
    from evaluation.protocols import parse_protocols as pp

    layout = shards.open_dataset(str(dataset))
    clips = [(r["clip_id"], r["speaker_id"]) for r in shards.read_table(layout, "clips").to_pylist()]
    items, _ = build_items(pp("self,cross,audio"), clips)
    scorer = ItemScorer(layout.uri, evaluation["models"], _backend_paths(cfg), cfg.evaluate.max_frames)
    ref = single_pass(scorer, items)
    n = 0
    for row in evaluation["table"]:
        for model, v in row["values"].items():
            assert v == pytest.approx(ref[row["protocol"]][model][row["metric"]].value, rel=1e-9, abs=1e-9)
            n += 1
    assert n == 2 * len(evaluation["table"]) >= 2 * 12


def test_rerun_uses_the_cache_and_gives_the_same_table(evaluation, dataset, capsys):
    import json

    out = Path(evaluation["out"])
    sets = [x for kv in EVAL_SET for x in ("--set", kv)]
    assert main(["evaluate", "--preset", "tiny", *sets, "--data", str(dataset), "--split", "all", "--out", str(out),
                 "--tracking-uri", evaluation["mlflow_tracking_uri"]]) == 0
    printed = capsys.readouterr().out
    assert "9 items, 9 cached, 0 to compute" in printed and f"report: {out / 'report.html'}" in printed
    assert "self     PSNR" in printed and "100.0000" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["computed"] == 0 and s["cached"] == 9
    assert s["table"] == evaluation["table"]
    assert len(list(Path(s["cache"]).glob("*.pkl"))) == 9


def test_a_tampered_cache_file_is_refused_and_runs_nothing(evaluation, tmp_path):
    """Cache files are read back through a restricted unpickler: evaluation state only."""
    import os
    import pickle

    from pipeline.evaluate import load_result

    s = json.loads((Path(evaluation["out"]) / "summary.json").read_text())
    good = next(Path(s["cache"]).glob("*.pkl")).read_bytes()
    assert load_result(good).key  # a real cache file loads
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_result(pickle.dumps(Payload()))
    assert not marker.exists()


def test_mlflow_parent_and_nested_runs(evaluation):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(evaluation["mlflow_tracking_uri"])
    parent = c.get_run(evaluation["mlflow_run_id"])
    assert parent.data.tags["r3p.kind"] == "evaluation"
    assert parent.data.params["clip_list_hash"] == evaluation["clip_list_hash"]
    assert parent.inputs.dataset_inputs and parent.inputs.dataset_inputs[0].dataset.digest
    kids = c.search_runs([parent.info.experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by = {r.data.tags["r3p.protocol"]: r for r in kids}
    assert set(by) == {"self", "cross", "audio"}
    assert by["self"].data.metrics["ground_truth.PSNR"] == 100.0
    assert by["self"].data.metrics["static.PSNR"] == pytest.approx(_value(evaluation, "self", "PSNR", "static"))
    assert "SyncNet v2 weights not found" in by["audio"].data.tags["not_computed.static.LSE"]
    assert "alex.pth" in by["self"].data.tags["not_computed.ground_truth.LPIPS"]
    arts = [a.path for a in c.list_artifacts(parent.info.run_id)]
    assert "report.html" in arts and "summary.json" in arts


def test_report_is_self_contained_with_the_table(evaluation):
    text = Path(evaluation["report"]).read_text()
    assert "http://" not in text and "https://" not in text
    assert text.count("data:image/png;base64,") >= 10  # distributions + strips
    for needle in ("<table", "PSNR", "ground_truth", "static", "CSIM-dlib", "▼ worse", "Not computed"):
        assert needle in text, needle


def test_a_failing_clip_is_listed_and_the_rest_still_count(dataset, cfg, tmp_path):
    bad = tmp_path / "ds"
    shutil.copytree(dataset, bad)
    layout = shards.open_dataset(str(bad))
    shard = sorted(shards.published(layout))[0]
    path = layout.shard_path("frames", shard)
    t = pq.read_table(path)
    victim = t["clip_id"][0].as_py()
    t = t.set_column(t.schema.get_field_index("frame_jpeg"), "frame_jpeg",
                     pa.array([b"not a jpeg"] * t.num_rows, pa.binary()))
    pq.write_table(t, path)
    s = run_evaluate(str(bad), cfg, split="all", protocols="self", out=str(tmp_path / "eval"),
                     tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", say=lambda _: None)
    assert [f["clip_id"] for f in s["failed"]] == [victim]
    assert "not a decodable" in s["failed"][0]["error"]
    assert _value(s, "self", "PSNR", "ground_truth") == 100.0  # the two good clips
    assert victim in Path(s["report"]).read_text()


def test_empty_split_names_the_split_and_counts(dataset, cfg, capsys):
    layout = shards.open_dataset(str(dataset))
    splits = {r["split"] for r in shards.read_table(layout, "clips").to_pylist()}
    empty = next(s for s in ("test", "train", "val") if s not in splits)  # 3 speakers cannot fill 3 splits + 1
    with pytest.raises(EvaluateError, match=f"no usable clips in split '{empty}'"):
        run_evaluate(str(dataset), cfg, split=empty, say=lambda _: None)


def _syncnet_checkpoint(folder: Path) -> Path:
    """A small landmark SyncNet checkpoint (random weights, mel input) in the training job's folder format."""
    import json
    from dataclasses import asdict

    import torch
    from safetensors.torch import save_file

    from training.checkpoint import META, WEIGHTS, stub_info
    from training.registry import get_stage

    stage = get_stage("syncnet")
    params = stage.params_from_dict({"width": 16, "layers": 2, "embed": 16})
    meta = {"stage": "syncnet", "params": asdict(params), "info": {"audio_dim": 80, "audio": "mel"}, "step": 7}
    torch.manual_seed(0)
    net = stage.build(params, stub_info(meta))
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS))
    (folder / META).write_text(json.dumps(meta))
    return folder


def test_sync_lm_runs_with_a_landmark_syncnet_checkpoint(dataset, tmp_path):
    ckpt = _syncnet_checkpoint(tmp_path / "runs" / "sync" / "final")
    cfg = load_config("tiny", overrides=[*EVAL_SET, f"evaluate.sync_model={ckpt}"])
    s = run_evaluate(str(dataset), cfg, split="all", protocols="audio", out=str(tmp_path / "eval"), use_ray=False,
                     tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", say=lambda _: None)
    assert "Sync-lm-D/C on landmark SyncNet sync/final step 7" in s["backends"]["LSE"]
    assert "LSE" not in s["not_computed"]["audio"]["ground_truth"]
    for m in ("static", "ground_truth"):
        d, c = _value(s, "audio", "Sync-lm-D", m), _value(s, "audio", "Sync-lm-C", m)
        assert np.isfinite(d) and d > 0 and c >= 0  # C = median - min of the offset curve
    assert _value(s, "audio", "LMD", "ground_truth") == 0.0
    bad = load_config("tiny", overrides=[*EVAL_SET, "evaluate.sync_model=no-such-run"])
    with pytest.raises(EvaluateError, match="evaluate.sync_model: no checkpoint at 'no-such-run'"):
        run_evaluate(str(dataset), bad, split="all", protocols="audio", out=str(tmp_path / "e2"), use_ray=False,
                     say=lambda _: None)


def test_lse_runs_with_syncnet_v2_weights_on_the_source_waveform(dataset, tmp_path):
    import torch

    from evaluation.metrics.syncnet import SyncNetV2

    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"  # stand-in: the real architecture, random weights, the real file format
    torch.save({k: v for k, v in SyncNetV2().eval().state_dict().items() if not k.endswith("num_batches_tracked")},
               weights)
    cfg = load_config("tiny", overrides=[*EVAL_SET, f"assets.syncnet={weights}"])
    s = run_evaluate(str(dataset), cfg, split="all", protocols="audio", limit=2, out=str(tmp_path / "eval"),
                     use_ray=False, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", say=lambda _: None)
    assert s["backends"]["LSE"].startswith("LSE-D/LSE-C on syncnet_v2.model (sha256 ")
    assert s["failed"] == [] and "LSE" not in s["not_computed"]["audio"]["static"]
    for m in ("static", "ground_truth"):
        assert np.isfinite(_value(s, "audio", "LSE-D", m)) and _value(s, "audio", "LSE-C", m) >= 0
    # a static mouth and the moving one are different videos: the distances differ
    assert _value(s, "audio", "LSE-D", "static") != _value(s, "audio", "LSE-D", "ground_truth")


def test_a_trained_model_is_evaluated_through_the_animate_pipeline(dataset, tmp_path):
    """`--model RUNS`: the animate pipeline generates beside the baselines; its table values are the metrics of
    the frames it generates (recomputed here), the video items are driven by the clip's stored expressions and
    cameras, audio items by A2M on the clip's stored features, and geometry metrics say why they did not run."""
    from evaluation.metrics import PSNR
    from evaluation.protocols import EvalItem
    from pipeline.animate_generator import AnimateGenerator
    from pipeline.evaluate import load_clip

    runs = random_runs(tmp_path)
    cfg = load_config("tiny", overrides=[*EVAL_SET, "evaluate.max_frames=8", "tracking.crop_size=128"])
    s = run_evaluate(str(dataset), cfg, models=[str(runs)], protocols="self,audio", split="all", limit=2,
                     out=str(tmp_path / "ev"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", use_ray=False,
                     say=lambda _: None)
    assert s["models"] == ["model", "static", "ground_truth"] and not s["failed"], [f["error"] for f in s["failed"]]
    assert "htbsr-t" in s["model_identity"]["model"] and s["model_paths"]["model"] == str(runs)
    # geometry metrics come from re-fitting the generated frames: computed, or not computed saying why (these
    # random-init weights may draw no trackable face); never the driving geometry in their place
    why = s["not_computed"]["self"].get("model", {}).get("AED")
    assert (why is None and _value(s, "self", "AED", "model") is not None) or "generated frames" in why, why
    # the table's PSNR is the PSNR of what the generator makes for those items
    layout = shards.open_dataset(str(dataset))
    gen = AnimateGenerator(str(runs), cfg)
    psnr = PSNR()
    from pipeline.evaluate import _select_clips

    for cid, _ in _select_clips(layout, "all", 2):
        drive = load_clip(layout, cid, cfg.evaluate.max_frames)
        from evaluation.generators import GenerationInput

        item = GenerationInput(drive.frames[0], drive.geometry.take(np.array([0])), drive.frames, drive.geometry,
                               drive.audio, "video", drive.index)
        mot = gen.motion(item)
        np.testing.assert_array_equal(mot.cams, drive.geometry.cams.astype(np.float32))
        np.testing.assert_array_equal(mot.exp, drive.geometry.exp.astype(np.float32))
        out = gen(item)
        assert out.frames.shape == drive.frames.shape and out.geometry is None
        assert np.abs(out.frames.astype(int) - drive.frames[:1].astype(int)).mean() > 1  # not the source repeated
        psnr.update(out.frames, drive.frames)
        audio_item = GenerationInput(*[getattr(item, k) for k in ("source_frame", "source_geometry", "driving_frames",
                                                                  "driving_geometry", "audio")], "audio", drive.index)
        i0, i1 = int(drive.index[0]), int(drive.index[-1]) + 1
        want = gen.anim.a2m.from_features(drive.audio["mel"][2 * i0:2 * i1], drive.audio["f0"][2 * i0:2 * i1])
        np.testing.assert_allclose(gen.motion(audio_item).exp, want[drive.index - i0], atol=1e-6)
    table = _value(s, "self", "PSNR", "model")
    assert abs(table - psnr.compute()["PSNR"].value) < 1e-6 * max(1.0, abs(table)), (table, psnr.compute())
    assert _value(s, "audio", "CSIM-dlib", "model") is not None



def test_the_registry_champion_joins_the_baselines_and_scores_like_the_same_model(dataset, tmp_path):
    """With a `champion` alias in the registry, `r3p evaluate` adds it to the table by itself; the champion is
    the runs' own checkpoints here, so its column equals the model's (same frames through the same pipeline)."""
    from pipeline import tracking

    runs = random_runs(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    for run in ("motion-t", "a2m-t", "htbsr-t"):
        stage = run.split("-")[0]
        rid, _ = tracking.open_run(uri, "r3p-train", run, str(tmp_path / "art"), params={}, config_yaml="{}",
                                   tags={}, dataset={"uri": str(dataset), "name": "ev/v001", "digest": "d",
                                                     "counts": {}})
        tracking.finish_run(uri, rid, stage, str(runs / run / "final"), {"steps": 0, "run": run})
    assert main(["models", "--tracking-uri", uri, "set-alias", "champion", "--latest"]) == 0
    cfg = load_config("tiny", overrides=[*EVAL_SET, "evaluate.max_frames=8", "tracking.crop_size=128"])
    s = run_evaluate(str(dataset), cfg, models=[str(runs)], protocols="self", split="all", limit=1,
                     out=str(tmp_path / "ev"), tracking_uri=uri, use_ray=False, say=lambda _: None)
    assert s["models"] == ["model", "static", "ground_truth", "champion"] and not s["failed"]
    assert "motion-t" in s["model_identity"]["champion"]
    for metric in ("PSNR", "SSIM", "CSIM-dlib"):
        assert _value(s, "self", metric, "champion") == pytest.approx(_value(s, "self", metric, "model"), abs=1e-9)


def test_refit_of_the_true_frames_recovers_the_stored_geometry(dataset, tmp_path):
    """The generated frames' geometry is measured by the project's own tracker and fit: on the clip's true frames
    it comes back closer to the stored fit than a still frame is (AED, LMD), with the head pose within 0.1 rad;
    frames with no face give no geometry and say why."""
    from evaluation.metrics import AED, APD, LMD
    from pipeline.animate_generator import AnimateGenerator
    from pipeline.evaluate import _select_clips, load_clip

    cfg = load_config("tiny", overrides=[*EVAL_SET, "tracking.crop_size=128"])
    gen = AnimateGenerator(str(random_runs(tmp_path)), cfg)
    layout = shards.open_dataset(str(dataset))
    cid, _ = _select_clips(layout, "all", 1)[0]
    drive = load_clip(layout, cid, 10)
    geo, why = gen.refit(drive.frames)
    assert why is None and geo.landmarks.shape == drive.geometry.landmarks.shape

    def score(metric, a, b):
        m = metric()
        m.update(a, b)
        return next(iter(m.compute().values())).value

    g = drive.geometry
    still = lambda a: np.repeat(a[:1], len(a), 0)  # noqa: E731 - the static source's geometry
    assert score(AED, geo.exp, g.exp) < score(AED, still(g.exp), g.exp)
    assert score(LMD, geo.landmarks, g.landmarks) < score(LMD, still(g.landmarks), g.landmarks)
    assert score(APD, geo.euler, g.euler) < 0.1  # measured 0.055 rad (3°) on these 128² crops
    none, why = gen.refit(np.full_like(drive.frames, 90))
    assert none is None and "no face tracked in the generated frames" in why
