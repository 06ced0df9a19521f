"""`r3p retrain --new INPUT --root ROOT`: fold new videos in, fine-tune from the champion, evaluate both on the
frozen test clips, and promote the challenger only when it passes the gate.

ROOT is a clips dataset root as `r3p preprocess` and `r3p train` lay it out: versions `ROOT/vNNN`, runs
`ROOT/runs/<run>`, MLflow `sqlite:///ROOT/mlflow.db` (or `--tracking-uri`). Steps, each recorded in
`ROOT/retrain/<id>/state.json` when it finishes (the id hashes the new input's clips, the stages, the gate and
the config, so the same command after a crash continues from the first unfinished step, and after success
prints the decision again without redoing anything):

1. data: a new version = the previous version's clips + the new input's (their paths under `<batch>/`, so ids
   never collide); the previous version's ok rows are reused by `clip_id` (only new clips are processed);
   splits hash the speaker, so old test speakers stay in test and the test set only grows by new speakers;
2. train:<stage> for each stage in order: `r3p train` on the new version from the champion's checkpoint
   (`--from-checkpoint`), with the champion's earlier-stage inputs (htbsr over the new motion run when motion
   is retrained) and the fine-tune keys of `retrain.fine_tune.<stage>`; the run registers a new version;
3. evaluate: the challenger (new versions + the champion's for stages not retrained) and the champion through
   `r3p evaluate` on the new version's test split, in one table;
4. decide: the gate (`pipeline.lifecycle.gate`); pass → `champion` moves (old → `previous`), fail → the new
   versions get `rejected`; the decision record (inputs, versions, metrics side by side, each rule) goes to
   `ROOT/decisions/<id>.json`, to an MLflow run of the experiment `r3p-retrain`, and to the versions' tags.

A lock file (`pipeline.lifecycle.lock`) refuses a second retrain on the same ROOT while one runs.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from pipeline import manifest as mf
from pipeline import shards, storage
from pipeline.config import R3PConfig, config_to_yaml
from pipeline.lifecycle.gate import Gate, decide, load_gate
from pipeline.lifecycle.lock import root_lock
from pipeline.lifecycle.registry import ModelRegistry, StageVersion

EXPERIMENT = "r3p-retrain"


class RetrainError(RuntimeError):
    """A retrain step cannot run; the message names the step, the input and the fix."""


def default_tracking_uri(root: str) -> str:
    from pipeline.tracking import default_tracking_uri as dflt

    return dflt(root)


def _json(fs, path: str) -> dict[str, Any] | None:
    if not storage.exists(fs, path):
        return None
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read().decode())


def _write_json(fs, path: str, data: dict[str, Any]) -> None:
    storage.write_atomic(fs, path, json.dumps(data, indent=2, default=str).encode())


def new_batch_clips(new_input: str, cfg: R3PConfig, batch: str | None) -> tuple[list[mf.Clip], str]:
    """The new input's clips with their paths (and so ids) under `<batch>/`; splits and speakers as the input's
    own manifest gives them. Returns (clips, batch name)."""
    try:
        clips = mf.build_manifest(new_input, cfg.preprocess)
    except mf.ManifestError as exc:
        raise RetrainError(f"--new {new_input}: {exc}") from None
    if not clips:
        raise RetrainError(f"--new {new_input}: no videos found; give a folder of videos or a manifest file")
    ids = hashlib.sha256("\n".join(sorted(c.clip_id for c in clips)).encode()).hexdigest()
    batch = batch or f"batch-{ids[:8]}"
    if not batch or "/" in batch or batch.startswith("."):
        raise RetrainError(f"--batch {batch!r}: give a plain name (letters, digits, -, _)")
    for c in clips:
        c.rel_path = f"{batch}/{c.rel_path}"
        c.clip_id = mf.clip_id(c.rel_path, c.start_s, c.end_s)
    return clips, batch


def _stage_list(value: str) -> list[str]:
    from training.registry import STAGES

    stages = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if not stages or unknown:
        raise RetrainError(f"--stages {value!r}: unknown stage(s) {unknown}; choose from {sorted(STAGES)}")
    if any(s in ("i2p", "syncnet") for s in stages):
        raise RetrainError(f"--stages {value!r}: retrain fine-tunes the clips stages (a2m, motion, htbsr); i2p "
                           "reads a multi-view dataset and syncnet is a metric network: train them with `r3p train`")
    return stages


def _with_stage_keys(cfg: R3PConfig, stage: str, keys: dict[str, Any]) -> R3PConfig:
    data = cfg.model_dump(mode="json")
    section = dict(data["training"].get(stage) or {})
    section.update(keys)
    data["training"][stage] = section
    return R3PConfig.model_validate(data)


def run_retrain(new_input: str, root: str, cfg: R3PConfig, *, stages: str | None = None, gate: str | None = None,
                tracking_uri: str | None = None, address: str | None = None, batch: str | None = None,
                say: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole retrain round (see the module docstring); returns the decision record."""
    fs, root_path = storage.resolve(root)
    if not storage.is_local(fs):
        raise RetrainError(f"--root {root}: retrain keeps its runs beside the dataset and needs a local or mounted "
                           "ROOT here (object storage roots: mount them, e.g. with a CSI driver)")
    root_path = str(Path(root_path).resolve())
    stage_list = _stage_list(stages or cfg.retrain.stages)
    gate_obj = load_gate(gate or cfg.retrain.gate)
    uri = tracking_uri or cfg.training.tracking_uri or default_tracking_uri(root_path)
    command = shlex.join(["r3p", "retrain", "--new", new_input, "--root", root, "--stages", ",".join(stage_list)])
    with root_lock(root_path, command, cfg.retrain.stale_lock_s, say):
        new_clips, batch = new_batch_clips(new_input, cfg, batch)
        key = json.dumps({"new": sorted(c.clip_id for c in new_clips), "stages": stage_list,
                          "gate": gate_obj.model_dump(), "config": config_to_yaml(cfg)}, sort_keys=True)
        rid = hashlib.sha256(key.encode()).hexdigest()[:12]
        work = Path(root_path) / "retrain" / rid
        work.mkdir(parents=True, exist_ok=True)
        state_path = str(work / "state.json")
        state = _json(fs, state_path) or {"id": rid, "command": command, "new_input": new_input, "batch": batch,
                                           "stages": stage_list, "tracking_uri": uri, "steps": {},
                                           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if state.get("complete"):
            rec = _json(fs, state["steps"]["decide"]["record"])
            say(f"r3p retrain {rid}: already decided ({rec['decision']}); nothing to do")
            say(format_decision(rec))
            return rec

        def done(step: str, result: dict[str, Any]) -> None:
            state["steps"][step] = {**result, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_json(fs, state_path, state)

        reg = ModelRegistry(uri)
        if "champion" not in state:  # the champion this round compares against, fixed at its start
            state["champion"] = {s: v.version for s, v in reg.by_alias("champion").items()}
            _write_json(fs, state_path, state)
        champ = {s: reg.get(s, v) for s, v in state["champion"].items()}
        if champ:
            say(f"r3p retrain {rid}: champion " + ", ".join(f"{s} v{v.version} ({v.run_name})"
                                                           for s, v in sorted(champ.items())))
        else:
            say(f"r3p retrain {rid}: no champion yet: the stages train from their configured inputs and the "
                "gate's relative rules do not apply")
        champ_dir = reg.materialise(champ, work / "champion") if champ else None

        # 1. data
        if "data" in state["steps"]:
            data = state["steps"]["data"]
            say(f"r3p retrain {rid}: data: done ({data['version_dir']})")
        else:
            data = _data_step(fs, root_path, new_clips, new_input, batch, rid, cfg, address, say)
            done("data", data)
        version_dir = data["version_dir"]

        # 2. train each stage from the champion
        challenger: dict[str, StageVersion] = dict(champ)
        trained_runs: dict[str, str] = {}
        for stage in stage_list:
            step = f"train:{stage}"
            if step in state["steps"]:
                r = state["steps"][step]
                say(f"r3p retrain {rid}: {step}: done (run {r['run']}, version {r['version']})")
            else:
                r = _train_step(stage, version_dir, rid, cfg, champ, champ_dir, trained_runs, uri, address, say)
                done(step, r)
            trained_runs[stage] = r["checkpoint"]
            challenger[stage] = reg.get(stage, int(r["version"]))

        # 3. evaluate challenger and champion on the same test clips
        chal_dir = reg.materialise(challenger, work / "challenger")
        if "evaluate" in state["steps"]:
            ev = state["steps"]["evaluate"]
            say(f"r3p retrain {rid}: evaluate: done ({ev['report']})")
        else:
            ev = _evaluate_step(version_dir, chal_dir, champ_dir, work, cfg, uri, address, say)
            done("evaluate", ev)

        # 4. gate, aliases, record
        rec = _decide_step(reg, gate_obj, ev, state, rid, challenger, champ, data, uri, root_path, say)
        done("decide", {"record": rec["record_path"], "decision": rec["decision"]})
        state["complete"] = True
        _write_json(fs, state_path, state)
        say(format_decision(rec))
        return rec


def _data_step(fs, root: str, new_clips: list[mf.Clip], new_input: str, batch: str, rid: str, cfg: R3PConfig,
               address: str | None, say) -> dict[str, Any]:
    from pipeline.preprocess import PreprocessConflict, _read_manifest, run_preprocess

    vs = shards.versions(fs, root)
    prev = shards.Layout(fs, root, vs[-1]) if vs else None
    mine = f"retrain {rid}:"
    if prev is not None and str(shards.read_json(fs, prev.run_path).get("input", "")).startswith(mine):
        # this round's own version, left unfinished by a crash: finish it (same clips, same reuse source)
        clips = mf.clips_from_table(_read_manifest(prev))
        label = shards.read_json(fs, prev.run_path)["input"]
        prev = shards.Layout(fs, root, vs[-2]) if len(vs) > 1 else None
        fresh = [c for c in clips if c.clip_id in {n.clip_id for n in new_clips}]
        say(f"r3p retrain {rid}: data: finishing this round's version")
    else:
        old = mf.clips_from_table(_read_manifest(prev)) if prev else []
        old_ids = {c.clip_id for c in old}
        fresh = [c for c in new_clips if c.clip_id not in old_ids]
        if prev is not None and not fresh:
            say(f"r3p retrain {rid}: data: every clip of {new_input} is already in {prev.dir}; training on it as "
                "it is")
            return {"version_dir": prev.dir, "version": prev.version, "previous": prev.version, "new_clips": 0,
                    "reused_clips": 0, "batch": batch}
        clips = mf.assign_shards([*old, *fresh], cfg.preprocess.shard_size)
        label = f"{mine} {prev.dir if prev else '(empty)'} + {new_input} as {batch}/"
    say(f"r3p retrain {rid}: data: {len(clips) - len(fresh)} clip(s) of {prev.dir if prev else 'no previous version'}"
        f" + {len(fresh)} new from {new_input}")
    kw = dict(address=address, clips=clips, reuse=prev.dir if prev else None, progress=say)
    try:
        summary = run_preprocess(label, root, cfg, **kw)
    except PreprocessConflict:  # the latest version is another input set: this round's data is a new version
        summary = run_preprocess(label, root, cfg, force=True, **kw)
    if not summary.get("complete"):
        raise RetrainError(f"data step: the new version {summary.get('output')} is incomplete; run the same "
                           "command again to finish it")
    layout = shards.open_dataset(summary["output"])
    return {"version_dir": layout.dir, "version": layout.version, "previous": prev.version if prev else None,
            "new_clips": len(fresh), "reused_clips": summary.get("reused_clips", 0), "batch": batch,
            "counts": summary.get("counts") or summary.get("by_split")}


def _train_step(stage: str, version_dir: str, rid: str, cfg: R3PConfig, champ: dict[str, StageVersion],
                champ_dir: Path | None, trained: dict[str, str], uri: str, address: str | None,
                say) -> dict[str, Any]:
    from pipeline.train import run_train
    from training.checkpoint import read_meta
    from training.registry import get_stage

    # the champion's stage parameters (architecture, losses, its earlier-stage inputs: the checkpoint must load
    # into the same network), then the training.<stage> keys the config sets, then retrain.fine_tune.<stage>
    given = dict((cfg.training.model_extra or {}).get(stage) or {})
    tuned = dict(cfg.retrain.fine_tune.get(stage) or {})
    keys: dict[str, Any] = {}
    init = None
    if stage in champ and champ_dir is not None:
        init = str((champ_dir / champ[stage].run_name / "final").resolve())
        fields = set(vars(get_stage(stage).params(cfg.training.size, None)))
        keys = {k: v for k, v in (read_meta(init).get("params") or {}).items() if k in fields}
    keys.update(given)
    keys.update(tuned)
    if stage == "htbsr" and "motion" in trained:  # over this round's motion run
        keys["motion"] = trained["motion"]
    run_name = f"{stage}-r{rid[:8]}"
    scfg = _with_stage_keys(cfg, stage, keys)
    say(f"r3p retrain {rid}: train:{stage}: run {run_name} on {version_dir}"
        + (f" from the champion {champ[stage].run_name} v{champ[stage].version}" if init else " from scratch")
        + (f" ({', '.join(f'{k}={v}' for k, v in sorted({**given, **tuned}.items()))})" if given or tuned else ""))
    s = run_train(stage, version_dir, run_name, scfg, address=address, from_checkpoint=init, tracking_uri=uri,
                  say=say)
    if not s.get("model_version"):
        raise RetrainError(f"train:{stage}: run {run_name} registered no model version in {uri}")
    return {"run": run_name, "checkpoint": s["checkpoint"], "version": int(s["model_version"]), "steps": s["steps"],
            "from": init, "keys": keys, "best": s.get("best"), "mlflow_run_id": s.get("mlflow_run_id")}


def _evaluate_step(version_dir: str, chal_dir: Path, champ_dir: Path | None, work: Path, cfg: R3PConfig, uri: str,
                   address: str | None, say) -> dict[str, Any]:
    from pipeline.evaluate import format_table, run_evaluate

    models = [str(chal_dir)] + ([str(champ_dir)] if champ_dir is not None else [])
    s = run_evaluate(version_dir, cfg, models=models, protocols=cfg.retrain.protocols, split="test",
                     limit=cfg.retrain.limit, tracking_uri=uri, out=str(work / "evaluation"), address=address, say=say)
    say(format_table(s))
    return {"report": s["report"], "out": s["out"], "table": s["table"], "clips": s["clips"],
            "clip_list_hash": s["clip_list_hash"], "failed": s["failed"], "models": s["models"],
            "mlflow_run_id": s.get("mlflow_run_id")}


def _decide_step(reg: ModelRegistry, gate: Gate, ev: dict[str, Any], state: dict[str, Any], rid: str,
                 challenger: dict[str, StageVersion], champ: dict[str, StageVersion], data: dict[str, Any], uri: str,
                 root: str, say) -> dict[str, Any]:
    failed_items = {f["clip_id"] for f in ev["failed"]}
    n_ok = ev["clips"] - len(failed_items)
    d = decide(gate, ev["table"], "challenger", "champion" if champ else None, n_ok)
    if ev["failed"]:
        d.reasons.append(f"{len(ev['failed'])} evaluation item(s) failed (first: {ev['failed'][0]['error'][:200]})")
        d.passed = False
    new_versions = {s: v.version for s, v in challenger.items() if s not in champ or v.version != champ[s].version}
    decision = "promoted" if d.passed else "rejected"
    if d.passed:
        reg.promote({s: v.version for s, v in challenger.items()}, rid, ["passed the gate"])
    else:
        reg.reject(new_versions, rid, d.reasons)
    after = {s: v.version for s, v in reg.by_alias("champion").items()}
    metrics = [{"protocol": r["protocol"], "metric": r["metric"], "higher_is_better": r["higher_is_better"],
                "challenger": r["values"].get("challenger"), "champion": r["values"].get("champion"),
                "static": r["values"].get("static"), "ground_truth": r["values"].get("ground_truth")}
               for r in ev["table"]]
    rec = {"id": rid, "decision": decision, "reasons": d.reasons, "decided_utc": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": state["command"], "new_input": state["new_input"],
        "batch": data.get("batch"), "dataset": {k: data.get(k) for k in ("version_dir", "version", "previous",
                                                                          "new_clips", "reused_clips")},
        "test_clips": ev["clips"], "clip_list_hash": ev["clip_list_hash"],
        "champion_before": {s: v.version for s, v in champ.items()},
        "challenger": {s: v.version for s, v in challenger.items()}, "new_versions": new_versions,
        "champion_after": after, "runs": {s: v.run_name for s, v in challenger.items()},
        "gate": gate.model_dump(), "outcomes": d.to_dict()["outcomes"], "metrics": metrics,
        "evaluation": {"report": ev["report"], "out": ev["out"], "mlflow_run_id": ev.get("mlflow_run_id")},
        "tracking_uri": uri}
    path = Path(root) / "decisions" / f"{rid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rec["record_path"] = str(path)
    rec["mlflow_run_id"] = _log_decision(uri, rec)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=2, default=str))
    tmp.replace(path)
    return rec


def _log_decision(uri: str, rec: dict[str, Any]) -> str:
    """The decision as an MLflow run of EXPERIMENT: tags, both models' metrics side by side, the record."""
    import math

    from mlflow.entities import Metric

    from pipeline.tracking import client

    c = client(uri)
    exp = c.get_experiment_by_name(EXPERIMENT)
    eid = exp.experiment_id if exp else c.create_experiment(EXPERIMENT)
    run = c.create_run(eid, run_name=f"retrain-{rec['id']}", tags={
        "r3p.retrain_id": rec["id"], "r3p.decision": rec["decision"], "r3p.reasons": "; ".join(rec["reasons"])[:5000],
        "r3p.challenger": json.dumps(rec["challenger"]), "r3p.champion_before": json.dumps(rec["champion_before"]),
        "r3p.champion_after": json.dumps(rec["champion_after"]), "r3p.dataset_version": str(rec["dataset"]["version"])})
    now = int(time.time() * 1000)
    ms = []
    for m in rec["metrics"]:
        for who in ("challenger", "champion"):
            v = m[who]
            if v is not None and math.isfinite(v):
                ms.append(Metric(f"{who}.{m['protocol']}.{m['metric']}", float(v), now, 0))
    for i in range(0, len(ms), 200):
        c.log_batch(run.info.run_id, metrics=ms[i:i + 200])
    c.log_dict(run.info.run_id, {k: v for k, v in rec.items() if k != "mlflow_run_id"}, "decision.json")
    c.set_terminated(run.info.run_id)
    return run.info.run_id


def format_decision(rec: dict[str, Any]) -> str:
    """The decision for a person: verdict, versions, the gate's rules and the metrics side by side."""
    lines = [f"r3p retrain {rec['id']}: {rec['decision'].upper()} — dataset v{rec['dataset']['version']:03d} "
             f"({rec['dataset']['new_clips']} new clip(s), {rec['dataset']['reused_clips']} reused), "
             f"{rec['test_clips']} test clip(s)",
             "  challenger " + ", ".join(f"{s} v{v}" for s, v in sorted(rec["challenger"].items())),
             "  champion before " + (", ".join(f"{s} v{v}" for s, v in sorted(rec["champion_before"].items()))
                                     or "none") + "; after " + ", ".join(f"{s} v{v}" for s, v in
                                                                          sorted(rec["champion_after"].items()))]
    for o in rec["outcomes"]:
        lines.append(f"  [{'pass' if o['passed'] else 'FAIL'}] {o['rule']}: {o['reason']}")
    lines.append(f"  {'protocol':<6} {'metric':<12} {'challenger':>11} {'champion':>11} {'static':>11}")
    for m in rec["metrics"]:
        vals = " ".join(f"{m[k]:>11.4f}" if m[k] is not None else f"{'—':>11}" for k in ("challenger", "champion",
                                                                                           "static"))
        lines.append(f"  {m['protocol']:<6} {m['metric']:<12} {vals}")
    lines.append(f"  record: {rec['record_path']}; report: {rec['evaluation']['report']}")
    return "\n".join(lines)
