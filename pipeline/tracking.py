"""MLflow for training runs: one MLflow run per `r3p train --run NAME` (resumed runs reuse it).

The job (driver) creates or finds the run, logs flat params, the resolved config as an artifact,
the dataset version with `log_input`, and tags (config hash, dataset version, code version); the
workers' rank 0 logs metrics to it by id; at the end the job logs the final checkpoint folder as
the artifact `model` and registers it as a version of the model `r3p-<stage>`.

Default store: `sqlite:///<dataset output root>/mlflow.db` (MLflow 3.13+ refuses the file store),
artifacts beside it in `mlartifacts/`. Created once by the driver, before any worker opens it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")

RUN_TAG = "r3p.run"


def default_tracking_uri(root: str) -> str:
    """`sqlite:///<root>/mlflow.db` for a local dataset root."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def client(uri: str):
    """An MlflowClient on `uri` (tracking and registry)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


_client = client


def experiment_id(uri: str, name: str, artifact_root: str | None) -> str:
    """Id of experiment `name`, created (with artifacts under `artifact_root`) when missing."""
    c = _client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root:
        location = Path(artifact_root).resolve().as_uri() if "://" not in artifact_root else artifact_root
    return c.create_experiment(name, artifact_location=location)


def open_run(uri: str, experiment: str, run_name: str, artifact_root: str | None, *, params: dict[str, Any],
             config_yaml: str, tags: dict[str, str], dataset: dict[str, Any]) -> tuple[str, bool]:
    """(run id, resumed?) of the MLflow run named `run_name`; a new run logs params, config, inputs and tags."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag, Param

    c = _client(uri)
    eid = experiment_id(uri, experiment, artifact_root)
    found = c.search_runs([eid], filter_string=f"tags.`{RUN_TAG}` = '{run_name}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        return run_id, True
    run = c.create_run(eid, run_name=run_name, tags={RUN_TAG: run_name, **tags})
    run_id = run.info.run_id
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])
    c.log_text(run_id, config_yaml, "config.yaml")
    c.log_dict(run_id, dataset, "dataset.json")
    mlflow.set_tracking_uri(uri)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a local path matches two equivalent source types
            source = resolve_dataset_source(dataset["uri"])
    except Exception:  # noqa: BLE001 - any unresolvable location is still recorded by name
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(url=str(dataset["uri"]))
    ds = MetaDataset(source=source, name=dataset["name"], digest=dataset["digest"])
    c.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[
        InputTag("mlflow.data.context", "training"),
        *[InputTag(k, str(v)) for k, v in dataset.get("counts", {}).items()]])])
    c.set_tag(run_id, "r3p.config_hash", tags.get("r3p.config_hash", ""))
    return run_id, False


def finish_run(uri: str, run_id: str, stage: str, checkpoint_dir: str | None, summary: dict[str, Any],
               status: str = "FINISHED") -> dict[str, Any]:
    """Log the checkpoint as artifact `model`, register it as `r3p-<stage>`, log the summary, close the run."""
    c = _client(uri)
    out: dict[str, Any] = {}
    if checkpoint_dir:
        c.log_artifacts(run_id, checkpoint_dir, "model")
        name = f"r3p-{stage}"
        try:
            c.get_registered_model(name)
        except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
            c.create_registered_model(name, description=f"r3p {stage} stage checkpoints (weights + config)")
        source = f"{c.get_run(run_id).info.artifact_uri}/model"
        mv = c.create_model_version(name, source=source, run_id=run_id,
                                    tags={"r3p.step": str(summary.get("steps", "")), "r3p.checkpoint": str(checkpoint_dir),
                                          "r3p.run": str(summary.get("run", ""))})
        out = {"registered_model": name, "model_version": mv.version}
    c.log_dict(run_id, {**summary, **out}, "summary.json")
    c.set_terminated(run_id, status=status)
    return out


def dataset_digest(stats: dict[str, dict[str, Any]], run_json: dict[str, Any]) -> str:
    """A short content hash of a dataset version: its published shards' stats and its config hash."""
    h = hashlib.sha256(json.dumps({"stats": stats, "config_hash": run_json.get("config_hash")}, sort_keys=True,
                                  default=str).encode())
    return h.hexdigest()[:16]


def code_version() -> str:
    """The git commit of the r3p checkout when there is one, else the package version."""
    import subprocess

    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("r3p")
    except PackageNotFoundError:
        return "unknown"
