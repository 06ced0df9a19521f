"""`r3p models`: what the registry holds (versions, aliases, runs, dataset versions, gate metrics) and the
retrain decisions; `r3p models set-alias` points an alias by hand (the first champion, a rollback)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.lifecycle.registry import ModelRegistry, RegistryError


def decisions(root: str | None) -> list[dict[str, Any]]:
    """The decision records under ROOT/decisions, oldest first."""
    if not root:
        return []
    folder = Path(root) / "decisions"
    recs = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            recs.append(json.loads(p.read_text()))
        except ValueError:
            continue
    return sorted(recs, key=lambda r: r.get("decided_utc", ""))


def describe(uri: str, root: str | None = None) -> dict[str, Any]:
    """{tracking_uri, stages: {stage: [version dicts with aliases, run, dataset, decision]}, decisions: [...]}"""
    reg = ModelRegistry(uri)
    try:
        stages = reg.stages()
    except Exception as exc:  # noqa: BLE001 - an unreachable or unreadable store
        raise RegistryError(f"cannot read the registry at {uri}: {exc}") from None
    recs = decisions(root)
    gate_metrics: dict[tuple[str, int], dict[str, Any]] = {}
    for r in recs:  # the gate's numbers behind each challenger version
        for stage, v in (r.get("new_versions") or {}).items():
            gate_metrics[(stage, int(v))] = {f"{m['protocol']}.{m['metric']}": m["challenger"]
                                             for m in r.get("metrics", []) if m.get("challenger") is not None}
    out: dict[str, Any] = {"tracking_uri": uri, "stages": {}, "decisions": []}
    for stage in stages:
        rows = []
        for v in reg.versions(stage):
            rows.append({"version": v.version, "aliases": v.aliases, "run": v.run_name,
                         "dataset_version": v.dataset_version, "checkpoint": v.checkpoint or v.source,
                         "decision": v.tags.get("r3p.decision"), "reasons": v.tags.get("r3p.decision_reasons"),
                         "metrics": gate_metrics.get((stage, v.version), {})})
        out["stages"][stage] = rows
    out["decisions"] = [{k: r.get(k) for k in ("id", "decided_utc", "decision", "reasons", "challenger",
                                               "champion_before", "champion_after", "dataset", "record_path")}
                        for r in recs]
    return out


def format_models(info: dict[str, Any]) -> str:
    lines = [f"model registry: {info['tracking_uri']}"]
    if not info["stages"]:
        lines.append("  no registered models yet (`r3p train` registers each run as r3p-<stage>)")
    for stage, rows in info["stages"].items():
        lines.append(f"r3p-{stage}:")
        for r in rows:
            alias = ",".join(r["aliases"]) or "-"
            extra = f"  {r['decision']}" if r["decision"] else ""
            m = r["metrics"]
            if m:
                extra += "  " + ", ".join(f"{k} {v:.3f}" for k, v in list(m.items())[:4])
            lines.append(f"  v{r['version']:<3} {alias:<18} run {r['run']:<24} data {r['dataset_version'] or '-'}{extra}")
    if info["decisions"]:
        lines.append("decisions:")
        for d in info["decisions"]:
            why = "; ".join(d.get("reasons") or []) or "passed the gate"
            lines.append(f"  {d['decided_utc']} {d['id']} {d['decision']}: {why[:160]}  ({d['record_path']})")
    return "\n".join(lines)


def set_alias(uri: str, alias: str, versions: list[str], *, latest: bool = False, root: str | None = None,
              note: str = "") -> dict[str, Any]:
    """Point `alias` at STAGE=VERSION items (or the latest version of every stage); a champion move keeps the
    replaced versions as `previous` and is recorded under ROOT/decisions when ROOT is given."""
    reg = ModelRegistry(uri)
    chosen: dict[str, int] = {}
    if latest:
        for stage in reg.stages():
            vs = reg.versions(stage)
            if vs:
                chosen[stage] = vs[0].version
    for item in versions:
        stage, _, v = item.partition("=")
        if not v.isdigit():
            raise RegistryError(f"{item!r}: give STAGE=VERSION (e.g. motion=3)")
        reg.get(stage, int(v))  # RegistryError when missing
        chosen[stage] = int(v)
    if not chosen:
        raise RegistryError(f"nothing to point {alias!r} at: give STAGE=VERSION items or --latest "
                            f"(registered stages: {', '.join(reg.stages()) or 'none'})")
    before = {s: v.version for s, v in reg.by_alias("champion").items()}
    rid = "manual-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if alias == "champion":
        reg.promote(chosen, rid, [f"set by hand: {note}" if note else "set by hand"])
    else:
        reg.set_alias(chosen, alias)
    out: dict[str, Any] = {"alias": alias, "versions": chosen}
    if root:
        rec = {"id": rid, "decision": f"set {alias}", "reasons": [note] if note else [],
               "decided_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "challenger": chosen,
               "champion_before": before, "champion_after": {s: v.version for s, v in reg.by_alias("champion").items()},
               "new_versions": {}, "metrics": [], "dataset": {}, "tracking_uri": uri}
        path = Path(root) / "decisions" / f"{rid}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        rec["record_path"] = str(path)
        path.write_text(json.dumps(rec, indent=2))
        out["record_path"] = str(path)
    return out
