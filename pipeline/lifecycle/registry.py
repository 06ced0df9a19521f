"""The model registry: each stage's checkpoints are versions of the MLflow registered model `r3p-<stage>`
(registered by `r3p train`), and what is in service is named by aliases, never by MLflow stages:

- `champion`: the version of each stage that `r3p animate --model champion` and `r3p evaluate --model champion`
  use; `r3p retrain` moves it when a challenger passes the gate;
- `previous`: the champion it replaced (rollback = point `champion` back at it);
- `rejected`: the latest challenger that failed the gate (every rejected version also keeps the tag
  `r3p.decision = rejected` and the reasons).

A "model" is one version per stage. `materialise` lays a set of versions out as a runs folder
(`<run name>/final` per stage) that the animate pipeline reads like the output of `r3p train`: a link to the
checkpoint folder when it is reachable from here, else the registered artifacts downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.tracking import client

PREFIX = "r3p-"
ALIASES = ("champion", "previous", "rejected")
CHECKPOINT_TAG = "r3p.checkpoint"  # the checkpoint folder the version was registered from (a path or URI)
RUN_NAME_TAG = "r3p.run"


class RegistryError(RuntimeError):
    """The registry cannot give what was asked (no such alias, version or tracking store); says what to do."""


@dataclass
class StageVersion:
    """One registered version of a stage's checkpoint."""

    stage: str
    version: int
    run_id: str | None
    run_name: str
    source: str  # the registered artifact location (the checkpoint folder as logged to MLflow)
    checkpoint: str | None  # the original checkpoint folder (tag), when recorded
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    dataset_version: str | None = None

    @property
    def model_name(self) -> str:
        return PREFIX + self.stage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRegistry:
    """Aliases over the `r3p-<stage>` registered models of one MLflow tracking store."""

    def __init__(self, tracking_uri: str) -> None:
        self.uri = tracking_uri
        self.c = client(tracking_uri)

    # -- reading
    def stages(self) -> list[str]:
        """Stages with a registered model, sorted."""
        return sorted(m.name[len(PREFIX):] for m in self.c.search_registered_models(max_results=1000)
                      if m.name.startswith(PREFIX))

    def _version(self, mv: Any) -> StageVersion:
        run_name, dataset = mv.tags.get(RUN_NAME_TAG, ""), None
        if mv.run_id:
            try:
                run = self.c.get_run(mv.run_id)
                run_name = run_name or run.data.tags.get("r3p.run", run.info.run_name or "")
                dataset = run.data.tags.get("r3p.dataset_version")
            except Exception:  # noqa: BLE001 - a deleted run leaves the version readable
                pass
        return StageVersion(stage=mv.name[len(PREFIX):], version=int(mv.version), run_id=mv.run_id,
                            run_name=run_name or f"{mv.name}-v{mv.version}", source=mv.source,
                            checkpoint=mv.tags.get(CHECKPOINT_TAG), aliases=sorted(getattr(mv, "aliases", []) or []),
                            tags=dict(mv.tags), dataset_version=dataset)

    def versions(self, stage: str) -> list[StageVersion]:
        """Every version of `stage`, newest first."""
        mvs = self.c.search_model_versions(f"name = '{PREFIX}{stage}'", max_results=1000)
        aliases: dict[int, list[str]] = {}
        for alias, v in (getattr(self.c.get_registered_model(PREFIX + stage), "aliases", None) or {}).items():
            aliases.setdefault(int(v), []).append(alias)  # a search leaves the versions' aliases out
        out = []
        for mv in mvs:
            sv = self._version(mv)
            sv.aliases = sorted(aliases.get(sv.version, []))
            out.append(sv)
        return sorted(out, key=lambda v: -v.version)

    def get(self, stage: str, version: int) -> StageVersion:
        try:
            return self._version(self.c.get_model_version(PREFIX + stage, str(version)))
        except Exception as exc:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
            raise RegistryError(f"{PREFIX}{stage} has no version {version} in {self.uri}: {exc}") from None

    def by_alias(self, alias: str) -> dict[str, StageVersion]:
        """{stage: version} of every stage whose model has `alias` (empty when none has)."""
        out = {}
        for stage in self.stages():
            try:
                mv = self.c.get_model_version_by_alias(PREFIX + stage, alias)
            except Exception:  # noqa: BLE001 - the alias is not set on this model
                continue
            out[stage] = self._version(mv)
        return out

    # -- writing
    def set_alias(self, versions: dict[str, int], alias: str) -> None:
        for stage, v in versions.items():
            self.c.set_registered_model_alias(PREFIX + stage, alias, str(v))

    def drop_alias(self, stages: list[str], alias: str) -> None:
        for stage in stages:
            try:
                self.c.delete_registered_model_alias(PREFIX + stage, alias)
            except Exception:  # noqa: BLE001 - not set
                pass

    def tag(self, versions: dict[str, int], tags: dict[str, str]) -> None:
        for stage, v in versions.items():
            for k, val in tags.items():
                self.c.set_model_version_tag(PREFIX + stage, str(v), k, str(val)[:5000])

    def promote(self, challenger: dict[str, int], decision_id: str, reasons: list[str]) -> dict[str, Any]:
        """`champion` → the challenger's versions; the replaced champions get `previous`; returns {stage: (old, new)}."""
        old = self.by_alias("champion")
        moved = {}
        for stage, v in challenger.items():
            if stage in old and old[stage].version != v:
                self.c.set_registered_model_alias(PREFIX + stage, "previous", str(old[stage].version))
            self.c.set_registered_model_alias(PREFIX + stage, "champion", str(v))
            moved[stage] = (old[stage].version if stage in old else None, v)
        self.tag(challenger, {"r3p.decision": "promoted", "r3p.decision_id": decision_id,
                              "r3p.decision_reasons": "; ".join(reasons)})
        return moved

    def reject(self, challenger: dict[str, int], decision_id: str, reasons: list[str]) -> None:
        """`rejected` → the challenger's versions, tagged with the reasons; `champion` untouched."""
        self.set_alias(challenger, "rejected")
        self.tag(challenger, {"r3p.decision": "rejected", "r3p.decision_id": decision_id,
                              "r3p.decision_reasons": "; ".join(reasons)})

    # -- using
    def materialise(self, versions: dict[str, StageVersion], dest: str | os.PathLike) -> Path:
        """A runs folder at `dest` with `<run name>/final` for each version (a link to the checkpoint folder when
        it exists here, else the registered artifacts downloaded); returns `dest`."""
        from training.checkpoint import META

        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for v in versions.values():
            run = dest / v.run_name
            final = run / "final"
            if (final / META).is_file():
                continue
            run.mkdir(parents=True, exist_ok=True)
            if final.is_symlink():
                final.unlink()
            if v.checkpoint and "://" not in v.checkpoint and (Path(v.checkpoint) / META).is_file():
                final.symlink_to(Path(v.checkpoint).resolve(), target_is_directory=True)
                continue
            import mlflow.artifacts

            tmp = run / ".download"
            try:
                got = mlflow.artifacts.download_artifacts(artifact_uri=v.source, dst_path=str(tmp),
                                                          tracking_uri=self.uri)
            except Exception as exc:  # noqa: BLE001 - unreachable artifact store
                raise RegistryError(f"{v.model_name} version {v.version}: its checkpoint {v.checkpoint or v.source} "
                                    f"is not here and downloading {v.source} failed ({exc})") from None
            Path(got).rename(final)
        (dest / "registry.json").write_text(json.dumps({s: v.to_dict() for s, v in versions.items()}, indent=2))
        return dest

    def materialise_alias(self, alias: str, cache: str | os.PathLike | None = None) -> Path:
        """The runs folder of the versions that carry `alias` (under `cache`, default ~/.cache/r3p/registry)."""
        versions = self.by_alias(alias)
        if not versions:
            have = ", ".join(self.stages()) or "no registered stages"
            raise RegistryError(f"no model carries the alias {alias!r} in {self.uri} ({have}); `r3p retrain` sets "
                                "`champion` when a challenger passes its gate (`r3p models` lists the registry)")
        key = hashlib.sha256((self.uri + json.dumps({s: v.version for s, v in sorted(versions.items())})).encode())
        base = Path(cache) if cache else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "r3p"
        return self.materialise(versions, base / "registry" / key.hexdigest()[:12] / alias)
