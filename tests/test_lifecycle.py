"""The model lifecycle: the promotion gate (known answers), the retrain lock, the registry's aliases over a
real SQLite MLflow store, `r3p models`, and the commands' refusals of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.lifecycle.gate import Gate, GateError, decide, load_gate
from pipeline.lifecycle.lock import LOCK_NAME, LockHeld, root_lock, stale_reason


def _row(protocol, metric, higher, **values):
    return {"protocol": protocol, "metric": metric, "higher_is_better": higher, "values": values}


TABLE = [_row("self", "PSNR", True, challenger=21.0, champion=20.0),
         _row("self", "CSIM-dlib", True, challenger=0.895, champion=0.90),
         _row("self", "FID-dlib", False, challenger=0.25, champion=0.24),
         _row("self", "LPIPS", False, challenger=None, champion=0.3)]


def _gate(**kw) -> Gate:
    return Gate.model_validate(kw)


# ------------------------------------------------------------------------------------------------
# the gate


def test_gate_rules_follow_each_metrics_direction():
    # CSIM drops 0.005 (allowed 0.01), FID rises 4.2 % (allowed 5 %), PSNR is better
    g = _gate(rules=[{"metric": "CSIM-dlib", "max_drop": 0.01}, {"metric": "FID-dlib", "max_ratio": 1.05}],
              improve_any=[{"metric": "PSNR"}])
    d = decide(g, TABLE, "challenger", "champion", test_clips=3)
    assert d.passed and d.reasons == []
    # the same numbers under tighter bounds: each failing rule says its numbers
    g = _gate(rules=[{"metric": "CSIM-dlib", "max_drop": 0.001}, {"metric": "FID-dlib", "max_ratio": 1.02}])
    d = decide(g, TABLE, "challenger", "champion", test_clips=3)
    assert not d.passed and len(d.reasons) == 2
    assert "CSIM-dlib@self" in d.reasons[0] and "0.899" in d.reasons[0]  # bound 0.90 − 0.001
    assert "FID-dlib@self" in d.reasons[1] and "0.2448" in d.reasons[1]  # bound 0.24 × 1.02
    # a lower-is-better metric allowed to drop by d means challenger ≤ champion + d
    assert decide(_gate(rules=[{"metric": "FID-dlib", "max_drop": 0.011}]), TABLE, "challenger", "champion", 1).passed
    assert not decide(_gate(rules=[{"metric": "FID-dlib", "max_drop": 0.009}]), TABLE, "challenger", "champion",
                      1).passed


def test_gate_absolute_bounds_missing_metrics_and_evidence():
    d = decide(_gate(rules=[{"metric": "PSNR", "min": 22.0}]), TABLE, "challenger", "champion", 5)
    assert not d.passed and "21 ≥ 22" in d.reasons[0]
    d = decide(_gate(rules=[{"metric": "LPIPS", "max_drop": 1.0}]), TABLE, "challenger", "champion", 5)
    assert not d.passed and "not computed for the challenger" in d.reasons[0]  # never passes on a missing number
    d = decide(_gate(rules=[{"metric": "NOPE", "min": 0}]), TABLE, "challenger", "champion", 5)
    assert not d.passed
    d = decide(_gate(min_test_clips=10), TABLE, "challenger", "champion", 3)
    assert not d.passed and "3 test clip(s)" in d.reasons[0]
    d = decide(_gate(improve_any=[{"metric": "CSIM-dlib"}, {"metric": "FID-dlib"}]), TABLE, "challenger",
               "champion", 3)
    assert not d.passed and "none is strictly better" in d.reasons[0]


def test_gate_without_a_champion_applies_only_absolute_rules():
    g = _gate(rules=[{"metric": "CSIM-dlib", "max_drop": 0.0}, {"metric": "PSNR", "min": 18.0}],
              improve_any=[{"metric": "PSNR"}])
    d = decide(g, TABLE, "challenger", None, 1)
    assert d.passed and any("no champion" in o.reason for o in d.outcomes)
    g = _gate(rules=[{"metric": "PSNR", "min": 25.0}])
    assert not decide(g, TABLE, "challenger", None, 1).passed


def test_gate_files_are_validated_naming_the_key(tmp_path):
    assert load_gate(None).rules  # the built-in gate
    good = tmp_path / "gate.yaml"
    good.write_text("min_test_clips: 2\nrules:\n  - {metric: PSNR, protocol: self, max_drop: 0.5}\n")
    assert load_gate(good).rules[0].max_drop == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {metric: PSNR, max_dorp: 0.5}\n")
    with pytest.raises(GateError, match="rules.0.max_dorp"):
        load_gate(bad)
    bad.write_text("rules:\n  - {metric: PSNR}\n")
    with pytest.raises(GateError, match="sets no condition"):
        load_gate(bad)
    with pytest.raises(GateError, match="no such file"):
        load_gate(tmp_path / "missing.yaml")
    shipped = load_gate(Path(__file__).parents[1] / "infra" / "gate.yaml")  # the cluster's gate is a valid gate
    assert shipped.min_test_clips == 20 and {r.metric for r in shipped.rules} >= {"CSIM-dlib", "FID-dlib"}


# ------------------------------------------------------------------------------------------------
# the lock


def test_a_second_retrain_on_the_same_root_is_refused_and_a_dead_owner_is_taken_over(tmp_path):
    root = str(tmp_path / "root")
    with root_lock(root, "r3p retrain first", 3600, say=lambda _: None) as me:
        assert me["pid"] == os.getpid()
        with pytest.raises(LockHeld, match="r3p retrain first"):
            with root_lock(root, "r3p retrain second", 3600, say=lambda _: None):
                pass
    assert not (Path(root) / LOCK_NAME).exists()  # released
    # a lock left by a process that is gone (same host) is stale and taken over, saying so
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (Path(root) / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                    "started": time.time(), "command": "r3p retrain crashed"}))
    said = []
    with root_lock(root, "r3p retrain third", 3600, say=said.append):
        pass
    assert "taking over a stale lock" in said[0] and "gone" in said[0]
    # another host's lock is respected until it is older than the limit
    other = {"host": "elsewhere", "pid": 1, "started": 1000.0}
    assert stale_reason(other, 3600, now=1000.0 + 60) is None
    assert "old" in stale_reason(other, 3600, now=1000.0 + 7200)


def test_retrain_command_refuses_while_another_runs_and_names_bad_input(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (root / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid,
                                                  "started": time.time(), "started_utc": "now",
                                                  "command": "r3p retrain --new a --root b"}))
        assert main(["retrain", "--new", str(tmp_path), "--root", str(root)]) == 3
        err = capsys.readouterr().err
        assert "refused" in err and str(sleeper.pid) in err and "r3p retrain --new a" in err
    finally:
        sleeper.kill()
        sleeper.wait()
    (root / LOCK_NAME).unlink()
    assert main(["retrain", "--new", str(tmp_path), "--root", str(root), "--stages", "i2p"]) == 2
    assert "multi-view" in capsys.readouterr().err
    bad = tmp_path / "gate.yaml"
    bad.write_text("rules: [{metric: PSNR, bogus: 1}]\n")
    assert main(["retrain", "--new", str(tmp_path), "--root", str(root), "--gate", str(bad)]) == 2
    assert "bogus" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["retrain", "--new", str(empty), "--root", str(root)]) == 2
    assert "holds no videos" in capsys.readouterr().err
    assert not (root / LOCK_NAME).exists()  # a refused or failed round leaves no lock behind


# ------------------------------------------------------------------------------------------------
# the registry on a real SQLite MLflow store


def _register(uri: str, tmp: Path, stage: str, run: str, params: dict | None = None) -> tuple[int, Path]:
    """A finished training run with a checkpoint folder, registered as `r3p train` does."""
    from pipeline import tracking

    ckpt = tmp / "runs" / run / "final"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"stage": stage, "step": 1, "params": params or {}}))
    (ckpt / "model.safetensors").write_bytes(b"weights of " + run.encode())
    run_id, _ = tracking.open_run(uri, "r3p-train", run, str(tmp / "mlartifacts"), params={"stage": stage},
                                  config_yaml="{}", tags={"r3p.stage": stage, "r3p.dataset_version": "ds/v001"},
                                  dataset={"uri": str(tmp), "name": "ds/v001", "digest": "d", "counts": {}})
    out = tracking.finish_run(uri, run_id, stage, str(ckpt), {"steps": 1, "run": run})
    return int(out["model_version"]), ckpt


@pytest.fixture
def registry(tmp_path):
    from pipeline.lifecycle.registry import ModelRegistry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    v = {}
    v["motion1"], _ = _register(uri, tmp_path, "motion", "motion-a")
    v["htbsr1"], _ = _register(uri, tmp_path, "htbsr", "htbsr-a", {"motion": str(tmp_path / "runs/motion-a/final")})
    v["motion2"], _ = _register(uri, tmp_path, "motion", "motion-b")
    return ModelRegistry(uri), v, tmp_path


def test_aliases_move_on_promotion_and_mark_rejections(registry):
    reg, v, _ = registry
    assert reg.stages() == ["htbsr", "motion"] and [x.version for x in reg.versions("motion")] == [2, 1]
    assert reg.by_alias("champion") == {}
    reg.promote({"motion": v["motion1"], "htbsr": v["htbsr1"]}, "r1", ["first"])
    champ = reg.by_alias("champion")
    assert {s: x.version for s, x in champ.items()} == {"motion": 1, "htbsr": 1}
    assert champ["motion"].run_name == "motion-a" and champ["motion"].dataset_version == "ds/v001"
    reg.promote({"motion": v["motion2"], "htbsr": v["htbsr1"]}, "r2", ["passed"])
    assert reg.by_alias("champion")["motion"].version == 2 and reg.by_alias("previous")["motion"].version == 1
    assert "htbsr" not in reg.by_alias("previous")  # unchanged stage: no previous
    reg.reject({"motion": v["motion1"]}, "r3", ["CSIM-dlib@self: too low"])
    assert reg.by_alias("champion")["motion"].version == 2  # a rejection never touches the champion
    rej = reg.get("motion", 1)
    assert "rejected" in rej.aliases and rej.tags["r3p.decision_reasons"] == "CSIM-dlib@self: too low"


def test_the_champion_is_laid_out_as_a_runs_folder_animate_reads(registry, tmp_path):
    from pipeline.animate import choose_htbsr, find_stage_checkpoints

    reg, v, base = registry
    reg.promote({"motion": v["motion1"], "htbsr": v["htbsr1"]}, "r1", ["first"])
    folder = reg.materialise_alias("champion", cache=tmp_path / "cache")
    assert folder.name == "champion" and (folder / "motion-a" / "final" / "meta.json").is_file()
    found = find_stage_checkpoints(str(folder), {"motion": None})
    assert Path(found["motion"]).resolve() == (base / "runs/motion-a/final").resolve()
    # the htbsr version is found over its own motion version (the pairing survives the layout)
    assert choose_htbsr(str(folder), "auto", found["motion"]) is not None
    # a checkpoint folder that is gone here comes from the registered artifacts instead
    import shutil

    shutil.rmtree(base / "runs" / "motion-a")
    again = reg.materialise(reg.by_alias("champion"), tmp_path / "elsewhere")
    got = again / "motion-a" / "final"
    assert (got / "model.safetensors").read_bytes() == b"weights of motion-a" and not got.is_symlink()


def test_models_command_lists_aliases_and_sets_the_first_champion(registry, capsys):
    reg, v, base = registry
    uri = reg.uri
    assert main(["models", "--tracking-uri", uri, "set-alias", "champion", "--latest", "--root", str(base)]) == 0
    assert "champion -> htbsr v1, motion v2" in capsys.readouterr().out
    assert main(["models", "--tracking-uri", uri, "--root", str(base), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    motion = {r["version"]: r for r in info["stages"]["motion"]}
    assert motion[2]["aliases"] == ["champion"] and motion[1]["aliases"] == []
    assert info["decisions"][0]["decision"] == "set champion"
    assert main(["models", "--tracking-uri", uri, "set-alias", "champion", "motion=1"]) == 0
    capsys.readouterr()
    assert main(["models", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    assert "v1   champion" in text and "v2   previous" in text
    assert main(["models", "--tracking-uri", uri, "set-alias", "champion", "motion=9"]) == 2
    assert "no version 9" in capsys.readouterr().err


def test_champion_without_a_registry_entry_is_a_clear_error(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["evaluate", "--data", str(tmp_path), "--model", "champion", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "champion" in err and "r3p retrain" in err
    photo = tmp_path / "p.png"
    photo.write_bytes(b"")
    assert main(["animate", "--source", str(photo), "--audio", str(photo), "--model", "champion", "--tracking-uri",
                 uri, "--out", str(tmp_path / "o.mp4")]) == 2
    assert "no model carries the alias 'champion'" in capsys.readouterr().err


def test_new_batch_clips_get_their_own_ids_and_keep_speakers_and_splits(tmp_path):
    from pipeline import manifest as mf
    from pipeline.config import load_config
    from pipeline.lifecycle.retrain import new_batch_clips
    from preprocessing.video import encode_mp4
    import numpy as np

    for spk in ("alice", "bob"):
        (tmp_path / "in" / spk).mkdir(parents=True)
        encode_mp4(tmp_path / "in" / spk / "c.mp4", np.zeros((25, 64, 64, 3), np.uint8), 25, np.zeros(16000, np.float32))
    cfg = load_config("tiny")
    plain = mf.build_manifest(str(tmp_path / "in"), cfg.preprocess)
    clips, batch = new_batch_clips(str(tmp_path / "in"), cfg, "week2")
    assert batch == "week2" and sorted(c.rel_path for c in clips) == ["week2/alice/c.mp4", "week2/bob/c.mp4"]
    by = {c.speaker_id: c for c in plain}
    for c in clips:
        assert c.split == by[c.speaker_id].split  # the speaker's split, not the prefixed path's
        assert c.clip_id == mf.clip_id(c.rel_path, c.start_s, c.end_s) != by[c.speaker_id].clip_id
    again, auto = new_batch_clips(str(tmp_path / "in"), cfg, None)
    assert auto.startswith("batch-") and new_batch_clips(str(tmp_path / "in"), cfg, None)[1] == auto  # stable


# ------------------------------------------------------------------------------------------------
# the retrain round's bookkeeping: resume after a crash, idempotence, the decision and the aliases
# (the data/train/evaluate steps are stood in for here; tests/test_retrain_cluster.py and the demo run them)


def test_a_crashed_retrain_continues_from_the_first_unfinished_step_and_is_idempotent(tmp_path, monkeypatch):
    from pipeline.config import load_config
    from pipeline.lifecycle import retrain as rt
    from pipeline.lifecycle.registry import ModelRegistry
    from preprocessing.video import encode_mp4
    import numpy as np

    new = tmp_path / "new" / "spk"
    new.mkdir(parents=True)
    encode_mp4(new / "c.mp4", np.zeros((25, 64, 64, 3), np.uint8), 25, np.zeros(16000, np.float32))
    root = tmp_path / "root"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    v1, _ = _register(uri, tmp_path, "a2m", "a2m-champ")
    ModelRegistry(uri).promote({"a2m": v1}, "first", ["first"])
    calls: list[str] = []
    crash = {"train": True}

    def data_step(fs, root_, clips, new_input, batch, rid, cfg, address, say):
        calls.append("data")
        return {"version_dir": str(root / "v002"), "version": 2, "previous": 1, "new_clips": len(clips),
                "reused_clips": 3, "batch": batch}

    def train_step(stage, version_dir, rid, cfg, champ, champ_dir, trained, uri_, address, say):
        calls.append(f"train:{stage}")
        assert champ[stage].version == v1 and (champ_dir / "a2m-champ" / "final" / "meta.json").is_file()
        if crash["train"]:
            raise RuntimeError("the node died")
        version, ckpt = _register(uri_, tmp_path, stage, f"{stage}-{rid[:8]}")
        return {"run": f"{stage}-{rid[:8]}", "checkpoint": str(ckpt), "version": version}

    def evaluate_step(version_dir, chal_dir, champ_dir, work, cfg, uri_, address, say):
        calls.append("evaluate")
        assert chal_dir.name == "challenger" and champ_dir.name == "champion"
        return {"report": "r.html", "out": str(work), "clips": 2, "clip_list_hash": "h", "failed": [],
                "models": ["challenger", "champion"], "table": [
                    {"protocol": "self", "metric": "PSNR", "higher_is_better": True,
                     "values": {"challenger": 21.0, "champion": 20.0, "static": 27.0}}]}

    monkeypatch.setattr(rt, "_data_step", data_step)
    monkeypatch.setattr(rt, "_train_step", train_step)
    monkeypatch.setattr(rt, "_evaluate_step", evaluate_step)
    gate = tmp_path / "gate.yaml"
    gate.write_text("min_test_clips: 2\nrules: [{metric: PSNR, protocol: self, max_drop: 0.1}]\n"
                    "improve_any: [{metric: PSNR, protocol: self}]\n")
    cfg = load_config("tiny")
    kw = dict(stages="a2m", gate=str(gate), tracking_uri=uri, say=lambda _: None)
    with pytest.raises(RuntimeError, match="the node died"):
        rt.run_retrain(str(tmp_path / "new"), str(root), cfg, **kw)
    assert calls == ["data", "train:a2m"] and not (root / LOCK_NAME).exists()  # the lock goes with the process
    crash["train"] = False
    calls.clear()
    rec = rt.run_retrain(str(tmp_path / "new"), str(root), cfg, **kw)
    assert calls == ["train:a2m", "evaluate"]  # the data step was done: not redone
    assert rec["decision"] == "promoted" and rec["champion_before"] == {"a2m": v1}
    assert rec["champion_after"] == {"a2m": v1 + 1} == rec["challenger"] and rec["new_versions"] == {"a2m": v1 + 1}
    assert json.loads(Path(rec["record_path"]).read_text())["decision"] == "promoted"
    reg = ModelRegistry(uri)
    assert reg.by_alias("previous")["a2m"].version == v1
    run = reg.c.get_run(rec["mlflow_run_id"])
    assert run.data.tags["r3p.decision"] == "promoted" and run.data.metrics["challenger.self.PSNR"] == 21.0
    calls.clear()
    again = rt.run_retrain(str(tmp_path / "new"), str(root), cfg, **kw)  # the same command once more: nothing
    assert calls == [] and again["id"] == rec["id"] and again["decision"] == "promoted"
