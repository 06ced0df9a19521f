"""`r3p train`: the Ray Train job for any registered stage (the stage's module says what it needs).

Before any worker starts: open the dataset version (schema version checked), keep the `status ==
ok` clips of the wanted split, check the stage's columns exist, resolve the checkpoints of earlier
stages it needs, pick the audio feature (HuBERT when every sampled clip has it, else log-mel) and
its normalisation statistics, and take the face model's keypoint basis. Then: Ray Datasets of the
stage's examples (one Ray Data task per shard turns its clips into windows; shuffled once with the
seed and materialised), a `TorchTrainer` with ScalingConfig / RunConfig(name = --run,
storage_path) / CheckpointConfig / FailureConfig, the MLflow run, and a summary. Re-running the
same command resumes from the run's latest checkpoint (same RunConfig name and storage path).

Layout under the storage path (default `<dataset root>/runs`): `<run>/checkpoint_*` (Ray Train)
and `<run>/final` (a copy of the last checkpoint, what `--set training.a2m.syncnet=<run>` and
`r3p predict-motion --model <run>` read).
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import shards, storage
from pipeline.config import R3PConfig, config_to_yaml, flat_params
from training.registry import get_stage
from training.stage import BASE_CLIP_COLUMNS, ClipArrays, Stage, StageError

FINAL = "final"
MIN_BATCHES_PER_EPOCH = 256


class TrainError(RuntimeError):
    """Training cannot start or did not finish; the message says what and what to do."""


# ------------------------------------------------------------------------------------------------
# dataset side


def _published_ids(layout: shards.Layout) -> list[str]:
    return sorted(shards.published(layout))


def _check_columns(layout: shards.Layout, shard_ids: list[str], stage: Stage, audio_cols: list[str]) -> None:
    need = {"clips": list(BASE_CLIP_COLUMNS) + list(stage.clip_columns) + audio_cols + ["f0"],
            "frames": ["clip_id"] + list(stage.frame_columns)}
    for table, cols in need.items():
        names = pq.read_schema(layout.fs.open_input_file(layout.shard_path(table, shard_ids[0]))).names
        missing = [c for c in dict.fromkeys(cols) if c not in names]
        if missing:
            raise TrainError(f"{layout.uri}: the {table} table lacks column(s) {missing} that stage {stage.name} "
                             f"reads; re-run `r3p preprocess INPUT {layout.root} --force` with this r3p")


def select_clips(layout: shards.Layout, split: str) -> pa.Table:
    """clip_id, split, speaker_id, status and shard of the ok clips in `split` ('all' = every split)."""
    parts = []
    for s in _published_ids(layout):
        t = pq.read_table(layout.shard_path("clips", s), filesystem=layout.fs, columns=list(BASE_CLIP_COLUMNS))
        parts.append(t.append_column("shard", pa.array([s] * t.num_rows, pa.string())))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in list(BASE_CLIP_COLUMNS) + ["shard"]})
    t = pa.concat_tables(parts)
    keep = pc.equal(t["status"], "ok")
    if split != "all":
        keep = pc.and_(keep, pc.equal(t["split"], split))
    return t.filter(keep)


def _audio_column(layout: shards.Layout, sel: pa.Table, wanted: str, n_sample: int = 32) -> tuple[str, np.ndarray,
                                                                                                   np.ndarray]:
    """(audio column, per-dim mean, per-dim std) from a sample of the selected clips."""
    ids = set(sel["clip_id"].to_pylist()[:n_sample])
    shard_ids = sorted(set(sel.filter(pc.is_in(sel["clip_id"], pa.array(sorted(ids))))["shard"].to_pylist()))
    rows: list[dict] = []
    for s in shard_ids:
        t = pq.read_table(layout.shard_path("clips", s), filesystem=layout.fs, columns=["clip_id", "mel", "hubert"])
        rows += [r for r in t.to_pylist() if r["clip_id"] in ids]
    has_hubert = bool(rows) and all(r["hubert"] is not None for r in rows)
    if wanted == "hubert" and not has_hubert:
        raise TrainError(f"{layout.uri}: audio=hubert but the clips have no HuBERT features; preprocess with a "
                         "HuBERT model (`r3p assets`, audio.hubert=always) or set training.<stage>.audio=mel")
    col = "hubert" if (wanted == "hubert" or (wanted == "auto" and has_hubert)) else "mel"
    feats = [np.asarray(r[col], np.float32) for r in rows if r[col] is not None]
    if not feats:
        raise TrainError(f"{layout.uri}: the selected clips have no audio features ({col} is empty)")
    x = np.concatenate(feats)
    return col, x.mean(0), x.std(0) + 1e-3


def clip_arrays(clips: pa.Table, frames: pa.Table, audio_col: str | None, frame_columns: tuple[str, ...],
                context: dict[str, Any] | None = None, clip_columns: tuple[str, ...] = ()) -> list[ClipArrays]:
    """Per-clip arrays from a shard's clips rows and frames rows (frames sorted by index); binary columns
    (stored images) stay bytes, in object arrays. `audio_col` None: a stage that reads no audio."""
    out = []
    frames = frames.sort_by([("clip_id", "ascending"), ("index", "ascending")])
    fid = frames["clip_id"].to_numpy(zero_copy_only=False)
    binary = {c for c in frame_columns if c in frames.column_names and pa.types.is_binary(frames.schema.field(c).type)}
    for r in clips.to_pylist():
        rows = fid == r["clip_id"]
        m = pa.array(rows)
        sub = {}
        for c in frame_columns:
            if c == "index":
                continue
            values = frames[c].filter(m).to_pylist()
            sub[c] = np.array(values + [None], object)[:-1] if c in binary else np.asarray(values, np.float32)
        audio = np.asarray(r[audio_col], np.float32) if audio_col and r.get(audio_col) is not None else None
        if audio is None:
            if audio_col:
                raise StageError(f"clip {r['clip_id']} has no {audio_col} features")
            audio = np.zeros((2 * int(rows.sum()), 1), np.float32)  # only its length (2T rows at 50 Hz) is read
        f0 = np.asarray(r["f0"], np.float32) if r.get("f0") is not None else np.zeros(len(audio), np.float32)
        out.append(ClipArrays(clip_id=r["clip_id"], speaker_id=r["speaker_id"] or "", audio=audio, f0=f0,
                              id_coeff=np.asarray(r["id_coeff"], np.float32), frames=sub, context=context or {},
                              columns={c: r.get(c) for c in clip_columns}))
    return out


def _shard_examples(batch: dict[str, np.ndarray], layout: shards.Layout, stage_name: str, params: dict,
                    audio_col: str | None, context: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Ray Data task: one shard (row: shard id + the clip ids to use) → the stage's examples of those clips."""
    stage = get_stage(stage_name)
    p = stage.params_from_dict(params)
    parts: list[dict[str, np.ndarray]] = []
    for shard_id, ids in zip(batch["shard"], batch["ids"]):
        ids = pa.array(list(ids), pa.string())
        cols = list(dict.fromkeys(["clip_id", "speaker_id", "id_coeff", "f0", *([audio_col] if audio_col else []),
                                   *stage.clip_columns]))
        c = pq.read_table(layout.shard_path("clips", shard_id), filesystem=layout.fs, columns=cols)
        c = c.filter(pc.is_in(c["clip_id"], ids))
        fcols = list(dict.fromkeys(["clip_id", "index", *stage.frame_columns]))
        f = pq.read_table(layout.shard_path("frames", shard_id), filesystem=layout.fs, columns=fcols)
        f = f.filter(pc.is_in(f["clip_id"], ids))
        for clip in clip_arrays(c, f, audio_col, tuple(stage.frame_columns), context, tuple(stage.clip_columns)):
            parts.append(stage.examples(clip, p))
    return _concat(parts)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = [q for q in parts if q and len(next(iter(q.values())))]
    keys = list(parts[0]) if parts else []
    return {k: np.concatenate([q[k] for q in parts]) for k in keys}


def select_samples(layout: shards.Layout, val_every: int) -> tuple[pa.Table, pa.Table]:
    """(train, val) tables of sample_id and shard of a views dataset's ok samples: every `val_every`-th
    sample (in sample order) is held out for validation (val_every 0: none)."""
    parts = []
    for s in _published_ids(layout):
        t = pq.read_table(layout.shard_path("views", s), filesystem=layout.fs, columns=["sample_id", "status"])
        ok = sorted(set(t.filter(pc.equal(t["status"], "ok"))["sample_id"].to_pylist()))
        parts.append(pa.table({"sample_id": pa.array(ok, pa.string()), "shard": pa.array([s] * len(ok), pa.string())}))
    t = pa.concat_tables(parts) if parts else pa.table({"sample_id": pa.array([], pa.string()),
                                                       "shard": pa.array([], pa.string())})
    held = np.zeros(t.num_rows, bool)
    if val_every:
        held[val_every - 1::val_every] = True
    return t.filter(pa.array(~held)), t.filter(pa.array(held))


def _views_examples(batch: dict[str, np.ndarray], layout: shards.Layout, stage_name: str,
                    params: dict) -> dict[str, np.ndarray]:
    """Ray Data task: one views shard (row: shard id + the sample ids to use) → the stage's examples."""
    from pipeline.multiview import decode_image

    stage = get_stage(stage_name)
    p = stage.params_from_dict(params)
    parts: list[dict[str, np.ndarray]] = []
    for shard_id, ids in zip(batch["shard"], batch["ids"]):
        t = pq.read_table(layout.shard_path("views", shard_id), filesystem=layout.fs,
                          columns=["sample_id", "view", "camera", "image", "mask", "status"])
        t = t.filter(pc.and_(pc.is_in(t["sample_id"], pa.array(list(ids), pa.string())), pc.equal(t["status"], "ok")))
        t = t.sort_by([("sample_id", "ascending"), ("view", "ascending")])
        rows = t.to_pylist()
        for sid in dict.fromkeys(r["sample_id"] for r in rows):
            views = [r for r in rows if r["sample_id"] == sid]
            image = np.stack([decode_image(r["image"]) for r in views])
            mask = np.stack([decode_image(r["mask"]) > 127 for r in views])
            cams = np.asarray([r["camera"] for r in views], np.float32)
            parts.append(stage.views_examples(image, mask, cams, p))
    return _concat(parts)


def build_dataset(layout: shards.Layout, sel: pa.Table, stage: Stage, params: dict, audio_col: str | None,
                  seed: int, context: dict[str, Any] | None = None):
    """A materialised, once-shuffled Ray Dataset of the stage's examples of the selected clips (or, for a
    views stage, samples): one Ray Data task per shard."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    key = "sample_id" if stage.dataset_kind == "views" else "clip_id"
    by_shard: dict[str, list[str]] = {}
    for cid, s in zip(sel[key].to_pylist(), sel["shard"].to_pylist()):
        by_shard.setdefault(s, []).append(cid)
    items = [{"shard": s, "ids": ids} for s, ids in sorted(by_shard.items())]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    if stage.dataset_kind == "views":
        fn, kwargs = _views_examples, dict(layout=layout, stage_name=stage.name, params=params)
    else:
        fn, kwargs = _shard_examples, dict(layout=layout, stage_name=stage.name, params=params, audio_col=audio_col,
                                           context=context)
    ds = ds.map_batches(fn, batch_size=1, batch_format="numpy", fn_kwargs=kwargs)
    return ds.random_shuffle(seed=seed).materialize()


# ------------------------------------------------------------------------------------------------
# checkpoints of earlier stages


def resolve_checkpoint(value: str, storage_root: str) -> str:
    """A checkpoint folder from a path (checkpoint folder or run folder) or a run name under `storage_root`."""
    from training.checkpoint import META

    candidates = [Path(value), Path(value) / FINAL, Path(storage_root) / value / FINAL]
    for c in candidates:
        if (c / META).is_file():
            return str(c.resolve())
    raise TrainError(f"no checkpoint at {value!r}: looked for {', '.join(str(c / META) for c in candidates)}; "
                     "give a checkpoint folder or the --run name of a finished `r3p train` run")


def storage_root(cfg: R3PConfig, layout: shards.Layout) -> str:
    if cfg.training.storage_path:
        return cfg.training.storage_path
    if not storage.is_local(layout.fs):
        raise TrainError(f"{layout.uri} is not local: set training.storage_path to shared storage (e.g. s3://…)")
    return str(Path(layout.root).resolve() / "runs")


# ------------------------------------------------------------------------------------------------
# the job


def _config_hash(cfg: R3PConfig, stage_name: str) -> str:
    return hashlib.sha256((config_to_yaml(cfg) + stage_name).encode()).hexdigest()[:16]


def run_train(stage_name: str, data: str, run_name: str, cfg: R3PConfig, *, address: str | None = None,
              from_checkpoint: str | None = None, tracking_uri: str | None = None,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `stage_name` on dataset version `data` as run `run_name` (resumes when the run exists); summary."""
    t0 = time.perf_counter()
    try:
        stage = get_stage(stage_name)
        tc = cfg.training
        params = stage.params(tc.size, (tc.model_extra or {}).get(stage_name))
    except StageError as exc:
        raise TrainError(str(exc)) from None
    if not run_name or "/" in run_name or run_name.startswith("."):
        raise TrainError(f"--run {run_name!r}: give a plain name (letters, digits, -, _)")
    layout = shards.open_dataset(data, check_schema=False)  # FileNotFoundError names the fix
    run_json = shards.read_json(layout.fs, layout.run_path)
    kind = run_json.get("kind", "clips")
    if kind != stage.dataset_kind:
        make = "r3p multiview OUTPUT" if stage.dataset_kind == "views" else "r3p preprocess INPUT OUTPUT"
        raise TrainError(f"stage {stage.name} reads a {stage.dataset_kind} dataset (`{make}`), but {layout.uri} is "
                         f"a {kind} dataset; pass --data a {stage.dataset_kind} dataset")
    published = _published_ids(layout)
    if not published:
        job = "r3p multiview" if kind == "views" else "r3p preprocess"
        raise TrainError(f"{layout.uri} has no published shards; finish `{job}` on it first")
    col, info, context, val_sel = None, {}, {}, None
    if kind == "views":
        from pipeline.multiview import VIEWS_SCHEMA_VERSION

        if run_json.get("views_schema_version") != VIEWS_SCHEMA_VERSION:
            raise TrainError(f"{layout.uri} has views schema version {run_json.get('views_schema_version')}; this "
                             f"r3p reads {VIEWS_SCHEMA_VERSION}: re-run `r3p multiview {layout.root} --force`")
        sel, val_sel = select_samples(layout, 0 if tc.val_split == "none" else tc.views_val_every)
        if sel.num_rows == 0:
            raise TrainError(f"{layout.uri} has no samples with status ok to train on; run `r3p multiview` with "
                             "more samples")
    else:
        shards.check_schema_version(layout, run_json)  # SchemaVersionError names the fix
        sel = select_clips(layout, tc.split)
        if sel.num_rows == 0:
            raise TrainError(f"{layout.uri} has no clips with status ok in split {tc.split!r}; choose another split "
                             "(--set training.split=all) or preprocess more data")
        if stage.uses_audio:
            col, mean, std = _audio_column(layout, sel, params.audio)
            info = {"audio": col, "audio_dim": int(mean.shape[0]), "audio_mean": mean.tolist(),
                    "audio_std": std.tolist()}
        _check_columns(layout, published, stage, [col] if col else [])
    root = storage_root(cfg, layout)

    # earlier stages' checkpoints (resolved to folders now: a missing one stops the job here)
    pdict = dict(vars(params))
    for key, value in stage.required_checkpoints(params).items():
        if not value:
            raise TrainError(f"stage {stage.name} needs a checkpoint for training.{stage.name}.{key} (an earlier "
                             f"stage's run); pass --set training.{stage.name}.{key}=RUN_OR_PATH")
        pdict[key] = resolve_checkpoint(value, root)
    init_from = resolve_checkpoint(from_checkpoint, root) if from_checkpoint else None

    if kind == "clips":
        from pipeline.assets import resolve_face_model
        from training.keypoints import KeypointBasis

        face_model = resolve_face_model(cfg)
        info["keypoints"] = KeypointBasis.from_face_model(face_model).to_dict()
        try:
            context = stage.example_context(stage.params_from_dict(pdict), face_model)
        except StageError as exc:
            raise TrainError(str(exc)) from None

    from pipeline.preprocess import ensure_ray

    started = ensure_ray(address)
    try:
        return _fit(stage, params, pdict, info, layout, run_json, sel, col, root, run_name, cfg, init_from,
                    tracking_uri, say, t0, context, val_sel)
    finally:
        if started:
            import ray

            ray.shutdown()


def _fit(stage, params, pdict, info, layout, run_json, sel, col, root, run_name, cfg, init_from, tracking_uri,
         say, t0, context, val_sel) -> dict[str, Any]:
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline import tracking
    from training.loop import train_loop_per_worker

    tc = cfg.training
    t_data = time.perf_counter()
    train_ds = build_dataset(layout, sel, stage, pdict, col, tc.seed, context)
    n_train = train_ds.count()
    # small datasets: one "epoch" of the worker loop is several passes (the same blocks, no copies), so the
    # per-epoch start of a Ray Data iteration is not paid every few steps
    passes = max(1, math.ceil(MIN_BATCHES_PER_EPOCH * params.batch_size / max(n_train, 1)))
    if passes > 1 and n_train >= params.batch_size:
        train_ds = train_ds.union(*([train_ds] * (passes - 1)))
    datasets = {"train": train_ds}
    n_val = 0
    vsel = val_sel
    if vsel is None and tc.val_split != "none" and tc.val_split != tc.split:
        vsel = select_clips(layout, tc.val_split)
    if vsel is not None and vsel.num_rows:
        val_ds = build_dataset(layout, vsel, stage, pdict, col, tc.seed + 1, context)
        n_val = val_ds.count()
        if n_val:
            datasets["val"] = val_ds
    data_s = time.perf_counter() - t_data
    unit = "samples" if stage.dataset_kind == "views" else "clips"
    if n_train < params.batch_size:
        raise TrainError(f"{n_train} training examples from {sel.num_rows} {unit} are fewer than one batch "
                         f"(training.{stage.name}.batch_size={params.batch_size}); use more data or a smaller batch")
    audio = f", audio {col} ({info['audio_dim']}-d)" if col else ""
    what = "all" if stage.dataset_kind == "views" else tc.split
    say(f"r3p train {stage.name}: {sel.num_rows} {unit} ({what}) → {n_train} examples ({passes} pass(es) per "
        f"epoch), {n_val} validation examples{audio}; data prepared in {data_s:.1f} s")

    uri = tracking_uri or tc.tracking_uri or tracking.default_tracking_uri(layout.root)
    counts = {unit: sel.num_rows, "examples": n_train, "val_examples": n_val}
    if "speaker_id" in sel.column_names:
        counts["speakers"] = len(set(sel["speaker_id"].to_pylist()))
    stats = shards.published(layout)
    dataset = {"uri": layout.uri, "name": f"{posixpath.basename(layout.root)}/v{layout.version:03d}",
               "digest": tracking.dataset_digest(stats, run_json), "version": layout.version, "split": what,
               "counts": counts}
    cfg_hash = _config_hash(cfg, stage.name)
    code = tracking.code_version()
    params_flat = {**{f"stage.{k}": v for k, v in pdict.items()}, **flat_params(cfg), "stage": stage.name,
                   "audio": col or "none"}
    run_id, resumed = tracking.open_run(
        uri, tc.experiment, run_name, str(Path(root) / "mlartifacts") if "://" not in root else None,
        params=params_flat, config_yaml=config_to_yaml(cfg),
        tags={"r3p.stage": stage.name, "r3p.config_hash": cfg_hash, "r3p.dataset_version": dataset["name"],
              "r3p.dataset_digest": dataset["digest"], "r3p.code_version": code}, dataset=dataset)

    meta = {"config": cfg.model_dump(mode="json"), "dataset": dataset, "run": run_name, "mlflow_run_id": run_id,
            "code_version": code, "config_hash": cfg_hash}
    loop_config = {"stage": stage.name, "params": pdict, "info": info, "seed": tc.seed, "threads": tc.threads,
                   "log_every": tc.log_every, "checkpoint_every": tc.checkpoint_every, "n_train": n_train * passes,
                   "has_val": "val" in datasets, "val_batches": tc.val_batches, "tracking_uri": uri,
                   "run_id": run_id, "meta": meta, "init_from": init_from, "inject_nan_step": tc.inject_nan_step}
    use_gpu = tc.gpus_per_worker > 0
    resources = {"CPU": tc.cpus_per_worker, **({"GPU": tc.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=tc.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=run_name, storage_path=root,
                             checkpoint_config=CheckpointConfig(num_to_keep=tc.num_to_keep),
                             failure_config=FailureConfig(max_failures=tc.max_failures)),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]))
    say(f"r3p train {stage.name}: run {run_name!r} ({'resuming' if resumed else 'new'}), {tc.workers} worker(s), "
        f"{params.steps} steps of {params.batch_size}; checkpoints under {root}/{run_name}; MLflow {uri} run {run_id}")
    t_fit = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's error; surface its message
        tracking.finish_run(uri, run_id, stage.name, None, {"error": str(exc)[-2000:]}, status="FAILED")
        raise TrainError(_worker_error(exc)) from None
    fit_s = time.perf_counter() - t_fit
    if result.checkpoint is None:
        raise TrainError(f"run {run_name!r} finished without a checkpoint")
    final = Path(root) / run_name / FINAL
    tmp = final.with_name(".final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    metrics = dict(result.metrics or {})
    from training.checkpoint import read_meta

    step = int(read_meta(final)["step"])
    best_key = stage.best_metric[0] if stage.best_metric else None
    summary = {"stage": stage.name, "run": run_name, "steps": step, "fit_seconds": round(fit_s, 2),
               "total_seconds": round(time.perf_counter() - t0, 2), "examples": n_train, "val_examples": n_val,
               "samples_per_s": round(params.steps * params.batch_size / max(fit_s, 1e-9), 1),
               "best": {best_key: metrics.get(f"best_{best_key}")} if best_key else {},
               "last_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
               "checkpoint": str(final), "ray_checkpoint": result.checkpoint.path, "mlflow_tracking_uri": uri,
               "mlflow_run_id": run_id, "resumed": resumed}
    summary.update(tracking.finish_run(uri, run_id, stage.name, str(final), summary))
    (Path(root) / run_name / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    say(format_summary(summary))
    return summary


def _worker_error(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("NonFiniteLossError: ", "StageError: ", "CheckpointError: ", "ValueError: "):
        if marker in text:
            return text[text.rindex(marker):].strip().splitlines()[0]
    return f"training failed: {text.strip().splitlines()[-1] if text.strip() else type(exc).__name__}"


def format_summary(s: dict[str, Any]) -> str:
    best = ", ".join(f"best {k} {v:.4f}" for k, v in s.get("best", {}).items() if isinstance(v, (int, float)))
    return (f"r3p train {s['stage']}: run {s['run']!r} at step {s['steps']} in {s['fit_seconds']:.1f} s "
            f"({s['samples_per_s']:.0f} samples/s){'; ' + best if best else ''}\n"
            f"checkpoint: {s['checkpoint']}\n"
            f"MLflow: {s['mlflow_tracking_uri']} run {s['mlflow_run_id']}"
            + (f", registered {s['registered_model']} version {s['model_version']}" if s.get("model_version") else ""))
