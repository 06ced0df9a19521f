"""`r3p preprocess INPUT OUTPUT`: the corpus → sharded Parquet job on Ray Data.

1. Manifest step (`pipeline.manifest`): clips with stable ids, windows, splits, shards.
2. Version check (`pipeline.shards`): OUTPUT/vNNN holds one config + input set. Same config and
   inputs → resume (published shards are skipped); anything changed → `PreprocessConflict` naming
   what changed, unless `force` starts a new version folder.
3. Ray Data: one single-row block per pending clip → `map_batches(ClipOperator,
   compute=ActorPoolStrategy(size=n))` with num_cpus/num_gpus/memory per actor from config. The
   driver streams the results, assembles each shard as soon as all its clips are back and
   publishes it (temporaries, renames, stats file last), printing a line per shard.
4. Lost work (a worker or node dying, an actor crashing on an input) never loses a row: each actor
   takes one clip at a time, Ray restarts dead actors, Ray Data tolerates the lost blocks, and the
   driver runs the clips that did not come back again, each alone. A clip lost twice while others
   come back is a crashing input (`WorkerCrash` row); when nothing comes back and every clip crashes
   its worker, the environment is broken: the job stops with a diagnosis from the actors' crash
   logs (faulthandler) and writes nothing for those clips, so a re-run after the fix does them.
   Before any actor starts, the data path's numba functions are compiled in a child process into
   r3p's own cache folder (`pipeline.jit_cache`), so a bad cache entry is found and wiped there.
5. A summary JSON (counts by split/status, errors, frames/s, stage shares, peak memory per actor,
   bytes per minute of video) is written at the end and returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict
from importlib import metadata
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import manifest as mf
from pipeline import schema, shards, storage
from pipeline.actor import DEFAULT_FACTORY, ActorRegistry, ClipOperator, read_crash_logs
from pipeline.config import R3PConfig

log = logging.getLogger(__name__)

#: the custom resource only the head node of a Ray cluster has (`ray._common.constants.HEAD_NODE_RESOURCE_NAME`)
HEAD_NODE_RESOURCE = "node:__internal_head__"

#: preprocess keys that only change how the job runs, not what it writes (left out of the config hash)
EXECUTION_KEYS = ("actors", "actor_num_cpus", "actor_num_gpus", "actor_memory_gb", "batch_size", "max_retries",
                  "max_job_attempts", "crash_limit", "probe_threads")


class PreprocessConflict(RuntimeError):
    """OUTPUT holds a dataset made with another config or input set; the message says what differs."""


class PreprocessError(RuntimeError):
    """The job itself cannot run (e.g. no actor can load the models); nothing was published."""


def pipeline_version() -> str:
    try:
        return f"r3p {metadata.version('r3p')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "r3p (unpackaged)"


#: config sections that never change what preprocessing writes (the later jobs' settings)
NON_DATA_SECTIONS = ("preset", "home", "demo", "training", "evaluate", "retrain")


def _data_settings(data: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in data.items() if k not in NON_DATA_SECTIONS}
    if isinstance(data.get("preprocess"), dict):
        data["preprocess"] = {k: v for k, v in data["preprocess"].items() if k not in EXECUTION_KEYS}
    return data


def _hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def config_fingerprint(cfg: R3PConfig) -> tuple[str, dict[str, Any]]:
    """(16-hex hash, the settings hashed): everything that changes the output; not paths of
    R3P_HOME, demo settings, execution resources, or the training/evaluation/retrain sections."""
    data = _data_settings(cfg.model_dump(mode="json"))
    return _hash(data), data


def version_config_hash(run: dict[str, Any]) -> str:
    """The config hash of a version's run.json as this r3p computes it (recomputed from the stored settings, so
    versions written when the hash also covered later jobs' sections still match an unchanged config)."""
    return _hash(_data_settings(run["config"])) if isinstance(run.get("config"), dict) else run.get("config_hash", "")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _describe_changes(run: dict[str, Any], cfg_hash: str, cfg_data: dict, fingerprint: str,
                      old_ids: set[str], new_ids: set[str], layout: shards.Layout) -> str:
    lines = []
    if version_config_hash(run) != cfg_hash:
        a, b = _flat(_data_settings(run.get("config", {}))), _flat(cfg_data)
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:8]) + (" …" if len(keys) > 8 else "")
        lines.append(f"the config changed ({shown})")
    if run["input_fingerprint"] != fingerprint:
        added, removed = sorted(new_ids - old_ids), sorted(old_ids - new_ids)
        what = f"{len(added)} clip(s) added, {len(removed)} removed"
        if not added and not removed:
            what = "the same clips with other speakers, datasets, splits or shards"
        lines.append(f"the input set changed ({what})")
    nxt = f"v{layout.version + 1:03d}"
    return (f"{layout.uri} was made with a different setup: {'; '.join(lines)}. Not mixing versions: re-run with "
            f"--force to start over in {nxt}, or point OUTPUT elsewhere")


def _select_version(fs, root: str, clips: list[mf.Clip], cfg_hash: str, cfg_data: dict, fingerprint: str,
                    force: bool) -> tuple[shards.Layout, bool]:
    """(layout, is_new): the latest version when it matches (resume), a new one with `force`, else a conflict."""
    vs = shards.versions(fs, root)
    if not vs:
        return shards.Layout(fs, root, 1), True
    if force:
        return shards.Layout(fs, root, vs[-1] + 1), True
    layout = shards.Layout(fs, root, vs[-1])
    run = shards.read_json(fs, layout.run_path)
    try:
        shards.check_schema_version(layout, run)
    except shards.SchemaVersionError as exc:
        raise PreprocessConflict(str(exc)) from None
    if version_config_hash(run) == cfg_hash and run["input_fingerprint"] == fingerprint:
        return layout, False
    old = mf.clips_from_table(_read_manifest(layout))
    raise PreprocessConflict(_describe_changes(run, cfg_hash, cfg_data, fingerprint, {c.clip_id for c in old},
                                               {c.clip_id for c in clips}, layout))


def _read_manifest(layout: shards.Layout) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(layout.manifest_path, filesystem=layout.fs)


def _probe_cache(fs, root: str) -> dict:
    vs = shards.versions(fs, root)
    if not vs:
        return {}
    try:
        return mf.probe_cache_from(mf.clips_from_table(_read_manifest(shards.Layout(fs, root, vs[-1]))))
    except Exception:  # noqa: BLE001 - a cache only
        return {}


# ------------------------------------------------------------------------------------------------
# Ray


def use_loopback() -> None:
    """Keep Ray on 127.0.0.1 in this process and the processes it starts.

    Ray replaces 127.0.0.1/localhost (in addresses and `_node_ip_address`) by the machine's routable
    address unless its single-machine mode is on; that mode is switched by an environment variable
    read at import, so it is set for child processes and patched here for this one."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray: the given/RAY_ADDRESS cluster, else a local one on loopback. True if started here."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "ignore_reinit_error": True, "logging_level": logging.WARNING}
    if address:
        if address.split("://")[-1].rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
            use_loopback()  # a cluster on this machine's loopback
        ray.init(address=address, **kwargs)
    else:
        use_loopback()
        ray.init(address="local", num_cpus=num_cpus, **kwargs)  # a new local Ray, never a stray `ray start` one
    return True


def _actor_count(wanted: int, num_cpus: float, num_gpus: float, wait_s: float = 20.0) -> int:
    """Actors that fit the cluster's free resources now (waits briefly for resources of dead work to free)."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        free = ray.available_resources()
        fit = int(free.get("CPU", 0.0) / num_cpus + 1e-9)
        if num_gpus > 0:
            fit = min(fit, int(free.get("GPU", 0.0) / num_gpus + 1e-9))
        if fit >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return max(1, min(wanted, fit))


def _execute(rows: list[dict[str, Any]], cfg: R3PConfig, run: dict[str, Any], factory: str, n_actors: int,
             max_errored: int = -1, crash_dir: str | None = None, registry: str | None = None):
    """Stream operator outputs (pyarrow tables) for manifest `rows` through Ray Data. One clip at a time
    per actor, so a clip lost with its worker is the one that worker was processing; `max_errored`
    lost clips (-1: any number) before Ray Data gives up on the attempt."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    p = cfg.preprocess
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.max_errored_blocks = max_errored  # blocks that fail for good are re-run (or reported) by the driver
    ctx.execution_options.preserve_order = False
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    # A dead actor is restarted when resources allow, but its in-flight clips fail at once (no Ray-level task
    # retry: it would wait forever for an actor whose node is gone, and loop on an input that crashes the
    # worker); Ray Data tolerates those blocks and the driver runs the clips again, isolated.
    remote_args: dict[str, Any] = {"num_cpus": p.actor_num_cpus, "max_restarts": -1, "max_task_retries": 0}
    if p.actor_num_gpus:
        remote_args["num_gpus"] = p.actor_num_gpus
    if p.actor_memory_gb:
        remote_args["memory"] = int(p.actor_memory_gb * 2**30)
    with warnings.catch_warnings():
        # max_restarts / max_task_retries have no named parameter yet (Ray 2.60 deprecates **ray_remote_args);
        # the default max_task_retries=-1 would retry forever on an input that crashes the worker
        warnings.simplefilter("ignore")
        out = ds.map_batches(
            ClipOperator,
            fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(), "run": run, "factory": factory,
                                   "threads": max(1, int(p.actor_num_cpus)), "max_retries": p.max_retries,
                                   "crash_dir": crash_dir, "registry": registry},
            batch_size=p.batch_size, batch_format="pyarrow", zero_copy_batch=True,
            compute=ActorPoolStrategy(size=n_actors, max_tasks_in_flight_per_actor=1), **remote_args)
    for batch in out.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
        yield batch


# ------------------------------------------------------------------------------------------------
# the job


class _Shard:
    """A shard being assembled on the driver."""

    def __init__(self, shard_id: str, clip_ids: list[str]) -> None:
        self.shard_id = shard_id
        self.order = {cid: i for i, cid in enumerate(clip_ids)}
        self.clips: dict[str, pa.Table] = {}
        self.frames: dict[str, pa.Table] = {}
        self.info: dict[str, dict[str, Any]] = {}

    @property
    def complete(self) -> bool:
        return len(self.clips) == len(self.order)

    def add(self, clip_id: str, clips: pa.Table, frames: pa.Table, info: dict[str, Any]) -> None:
        self.clips[clip_id], self.frames[clip_id], self.info[clip_id] = clips, frames, info

    def tables(self) -> tuple[pa.Table, pa.Table]:
        ids = sorted(self.clips, key=self.order.__getitem__)
        clips = pa.concat_tables([schema.conform(self.clips[i], schema.CLIPS_SCHEMA) for i in ids])
        frames = pa.concat_tables([schema.conform(self.frames[i], schema.FRAMES_SCHEMA) for i in ids])
        return clips, frames


def _shard_stats(shard: _Shard, clips: pa.Table, run: dict[str, Any], retried: bool) -> dict[str, Any]:
    rows = clips.select(["clip_id", "split", "status", "error_type", "error_reason", "n_frames", "seconds",
                         "timings"]).to_pylist()
    status = Counter(r["status"] for r in rows)
    errors = Counter(f"{r['error_type']}" + (f" ({r['error_reason']})" if r["error_reason"] else "")
                     for r in rows if r["status"] == schema.STATUS_FAILED)
    frames = sum(r["n_frames"] or 0 for r in rows)
    seconds = sum(r["seconds"] or 0.0 for r in rows)
    stages: dict[str, float] = defaultdict(float)
    for r in rows:
        for t in r["timings"] or []:
            stages[t["stage"]] += t["seconds"]
    workers: dict[str, float] = {}
    for info in shard.info.values():
        if info.get("worker"):
            workers[info["worker"]] = max(workers.get(info["worker"], 0.0), info.get("peak_rss_mb") or 0.0)
    return {"shard_id": shard.shard_id, "split": rows[0]["split"] if rows else None, "clips": len(rows),
            "ok": status.get(schema.STATUS_OK, 0), "failed": status.get(schema.STATUS_FAILED, 0),
            "skipped": status.get(schema.STATUS_SKIPPED, 0), "frames": frames, "errors": dict(errors.most_common()),
            "seconds": round(seconds, 3), "frames_per_s": round(frames / seconds, 3) if seconds > 0 else None,
            "stage_seconds": {k: round(v, 3) for k, v in sorted(stages.items())},
            "peak_rss_mb_per_worker": workers, "config_hash": run["config_hash"],
            "schema_version": schema.SCHEMA_VERSION, "pipeline_version": run["pipeline_version"],
            "retried_failed": retried, "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _reusable(reuse: str, clips: list[mf.Clip], cfg_hash: str) -> tuple[shards.Layout | None, dict[str, str], str]:
    """(layout, {clip_id: shard_id}, note) of the clips whose ok rows a previous version `reuse` can give: same
    preprocessing config, same clip id, and the same source file (size and modification time) as listed then."""
    try:
        old = shards.open_dataset(reuse)
    except (FileNotFoundError, shards.SchemaVersionError) as exc:
        return None, {}, f"nothing reused from {reuse}: {exc}"
    run = shards.read_json(old.fs, old.run_path)
    if version_config_hash(run) != cfg_hash:
        return None, {}, f"nothing reused from {old.uri}: it was made with another preprocessing config"
    listed = {c.clip_id: (c.size_bytes, c.mtime_ns) for c in mf.clips_from_table(_read_manifest(old))}
    rows = shards.read_table(old, "clips", ["clip_id", "status"]).to_pylist()
    ok = {r["clip_id"] for r in rows if r["status"] == schema.STATUS_OK}
    where: dict[str, str] = {}
    for sid in shards.published(old):
        for cid in pq.read_table(old.shard_path("clips", sid), filesystem=old.fs, columns=["clip_id"])[
                "clip_id"].to_pylist():
            where[cid] = sid
    out = {c.clip_id: where[c.clip_id] for c in clips
           if c.clip_id in ok and c.clip_id in where and listed.get(c.clip_id) == (c.size_bytes, c.mtime_ns)}
    return old, out, f"{len(out)} clip(s) reused from {old.uri}"


def run_preprocess(input_location: str, output_location: str, cfg: R3PConfig, *, address: str | None = None,
                   retry_failed: bool = False, force: bool = False, factory: str = DEFAULT_FACTORY,
                   progress: Callable[[str], None] | None = print, num_cpus: int | None = None,
                   clips: list[mf.Clip] | None = None, reuse: str | None = None) -> dict[str, Any]:
    """Run the whole job; returns the run summary (also written to OUTPUT/vNNN/summary.json).

    `clips`: the manifest made by the caller (then `input_location` only names the input); `reuse`: a previous
    version folder whose ok rows are copied, by `clip_id`, for the clips it already processed from the same
    files with the same config (a new version that adds data processes only the new clips)."""
    say = progress or (lambda s: None)
    t_start = time.perf_counter()
    p = cfg.preprocess
    fs, root = storage.resolve(output_location)
    if clips is None:
        clips = mf.build_manifest(input_location, p, _probe_cache(fs, root))
    cfg_hash, cfg_data = config_fingerprint(cfg)
    fingerprint = mf.input_fingerprint(clips)
    layout, is_new = _select_version(fs, root, clips, cfg_hash, cfg_data, fingerprint, force)
    run = {"version": layout.version, "config_hash": cfg_hash, "config": cfg_data, "input": str(input_location),
           "input_fingerprint": fingerprint, "clips": len(clips), "schema_version": schema.SCHEMA_VERSION,
           "pipeline_version": pipeline_version(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if is_new:
        fs.create_dir(layout.dir, recursive=True)
        buf = pa.BufferOutputStream()
        import pyarrow.parquet as pq

        pq.write_table(mf.clips_to_table(clips), buf)
        storage.write_atomic(fs, layout.manifest_path, buf.getvalue().to_pybytes())
        shards.write_json(fs, layout.run_path, run)  # last: marks the version folder complete
    else:
        run = shards.read_json(fs, layout.run_path)
    shards.clean_temporaries(layout)

    by_shard: dict[str, list[mf.Clip]] = defaultdict(list)
    for c in clips:
        by_shard[c.shard_id].append(c)
    done = shards.published(layout)
    pending: dict[str, _Shard] = {}
    todo: list[mf.Clip] = []
    for sid, members in sorted(by_shard.items()):
        if sid not in done:
            pending[sid] = _Shard(sid, [c.clip_id for c in members])
            todo += members
        elif retry_failed and done[sid].get("failed", 0) > 0:
            old_clips, old_frames = shards.read_shard(layout, sid)
            failed = set(old_clips.filter(pc.equal(old_clips["status"], schema.STATUS_FAILED))
                         ["clip_id"].to_pylist())
            sh = _Shard(sid, [c.clip_id for c in members])
            for row_i, cid in enumerate(old_clips["clip_id"].to_pylist()):
                if cid not in failed:
                    sh.add(cid, old_clips.slice(row_i, 1),
                           old_frames.filter(pc.equal(old_frames["clip_id"], cid)), {})
            pending[sid] = sh
            todo += [c for c in members if c.clip_id in failed]
    n_shards = len(by_shard)
    skipped_shards = n_shards - len(pending)
    reused_now = 0
    if reuse and todo:
        old, found, note = _reusable(reuse, todo, cfg_hash)
        say(f"r3p preprocess: {note}")
        by_old: dict[str, list[str]] = defaultdict(list)
        for cid, sid in found.items():
            by_old[sid].append(cid)
        shard_of = {c.clip_id: c.shard_id for c in todo}
        for sid, cids in sorted(by_old.items()):
            old_clips, old_frames = shards.read_shard(old, sid)
            ids = old_clips["clip_id"].to_pylist()
            for cid in cids:
                i = ids.index(cid)
                pending[shard_of[cid]].add(cid, old_clips.slice(i, 1),
                                           old_frames.filter(pc.equal(old_frames["clip_id"], cid)), {})
        todo = [c for c in todo if c.clip_id not in found]
        reused_now = len(found)
        for sid in [s for s, sh in pending.items() if sh.complete]:  # shards made only of reused clips
            skipped_shards += 1
            _publish(pending.pop(sid), layout, run, retry_failed, say, skipped_shards, n_shards)
    say(f"r3p preprocess: {len(clips)} clips in {n_shards} shards -> {layout.uri}"
        f" ({'new version' if is_new else 'resuming'}; {skipped_shards} shard(s) already published, "
        f"{len(todo)} clip(s) to process)")

    published_now = 0
    workers: dict[str, float] = {}
    if todo and factory == DEFAULT_FACTORY:
        from pipeline import jit_cache
        from pipeline.process import process_params

        process_params(cfg)  # config errors (e.g. audio.hubert=on without the model) before any actor starts
        try:
            warm = jit_cache.check_and_warm()
        except jit_cache.JitCacheError as exc:
            raise PreprocessError(str(exc)) from None
        if warm["wiped"]:
            say(f"the JIT cache {warm['folder']} made a test process crash ({warm['first_failure'][:200]}); "
                "it was wiped and rebuilt")
    if todo:
        started_ray = ensure_ray(address, num_cpus)
        try:
            published_now = _process(todo, pending, cfg, run, layout, factory, retry_failed, workers, say,
                                     n_shards, skipped_shards)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    summary = summarize(layout, time.perf_counter() - t_start, published_now, skipped_shards, workers)
    summary["reused_clips"] = reused_now
    shards.write_json(fs, layout.summary_path, summary)
    say(format_summary(summary))
    return summary


def _process(todo: list[mf.Clip], pending: dict[str, _Shard], cfg: R3PConfig, run: dict[str, Any],
             layout: shards.Layout, factory: str, retried: bool, workers: dict[str, float], say,
             n_shards: int, skipped_shards: int) -> int:
    """Run the clips through the actors, publishing shards as they complete; returns shards published.

    Lost clips (their worker or node died) are run again, each alone on its actor. A clip lost twice
    while others come back is the cause (a crashing input): it gets a `WorkerCrash` row. When no clip
    comes back at all and every clip tried crashed its worker twice — the environment, not the inputs —
    the job stops with a diagnosis from the workers' crash logs and writes nothing for those clips, so
    the same command processes them once the environment is fixed."""
    p = cfg.preprocess
    remaining = {c.clip_id: c for c in todo}
    lost_count: Counter[str] = Counter()
    published_now = 0
    any_back = False
    last_error = None
    crash_dir = tempfile.mkdtemp(prefix="r3p-crashes-")
    import ray

    registry_name = f"r3p-preprocess-actors-{os.getpid()}-{os.path.basename(crash_dir)}"
    # on the head node (as Ray Train places its state actor): a driver joining a cluster may be attached to
    # any raylet of its machine, and a registry lost with a worker node would fail every later actor
    registry = ray.remote(num_cpus=0)(ActorRegistry).options(
        name=registry_name, resources={HEAD_NODE_RESOURCE: 0.001}).remote()

    def add(cid: str, clips: pa.Table, frames: pa.Table, info: dict[str, Any]) -> None:
        nonlocal published_now
        sh = pending[remaining.pop(cid).shard_id]
        sh.add(cid, clips, frames, info)
        if sh.complete:
            published_now += 1
            _publish(sh, layout, run, retried, say, skipped_shards + published_now, n_shards)
            del pending[sh.shard_id]

    try:
        for attempt in range(1, p.max_job_attempts + 1):
            if not remaining:
                break
            rows = [asdict(c) for c in sorted(remaining.values(), key=lambda c: (c.shard_id, c.rel_path, c.start_s))]
            n_actors = _actor_count(min(p.actors, len(rows)), p.actor_num_cpus, p.actor_num_gpus)
            if attempt > 1:
                say(f"attempt {attempt}/{p.max_job_attempts}: {len(rows)} clip(s) did not come back "
                    f"({last_error or 'lost with a worker'}); running them again, one per actor, on {n_actors} "
                    "actor(s)")
            sent = set(remaining)
            try:
                # until a clip has come back, give up after `crash_limit` lost clips: a broken environment
                # kills every worker and should not cost one actor restart per clip of the corpus
                for batch in _execute(rows, cfg, run, factory, n_actors, -1 if any_back else p.crash_limit,
                                      crash_dir, registry_name):
                    for out in batch.to_pylist():
                        cid = out["clip_id"]
                        if cid not in remaining:
                            continue  # a duplicate from a retried task
                        any_back = True
                        workers[out["worker"]] = max(workers.get(out["worker"], 0.0), out["peak_rss_mb"] or 0.0)
                        add(cid, schema.from_ipc(out["clips_ipc"]), schema.from_ipc(out["frames_ipc"]),
                            {"worker": out["worker"], "peak_rss_mb": out["peak_rss_mb"]})
                last_error = None
            except Exception as exc:  # noqa: BLE001 - lost workers/nodes: re-run what did not come back
                last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                log.warning("preprocess attempt %d failed: %s", attempt, last_error)
            _kill_actors(registry)
            lost = sent & set(remaining)  # crashed, on a lost node, or never started in an attempt given up
            lost_count.update(lost)
            crash_list = read_crash_logs(crash_dir)
            crashes = {c["clip_id"]: c for c in crash_list}
            alone = len(todo) == 1 and crashes  # one input that crashes: the input, not the environment
            if not any_back and lost and attempt >= min(2, p.max_job_attempts) and not alone:
                raise PreprocessError(_diagnose(lost, crash_list, last_error, attempt))
            if any_back or alone:
                for cid in sorted(c for c in lost if lost_count[c] >= 2):
                    c = remaining[cid]
                    add(cid, schema.failed_row(asdict(c), _crash_text(lost_count[cid], crashes.get(cid)), run,
                                               attempts=lost_count[cid], error_type="WorkerCrash",
                                               reason=schema.REASON_WORKER_CRASH),
                        schema.empty_frames(), {})
        # still missing after every attempt (lost once, at the last one): failed rows, never silently dropped
        why = last_error or "the worker process died while processing it (e.g. a crash in a decoder)"
        for cid in sorted(remaining):
            c = remaining[cid]
            add(cid, schema.failed_row(asdict(c), f"WorkerLost: no result after {p.max_job_attempts} attempt(s): "
                                       f"{why}; run with --retry-failed, or check the worker logs for this input",
                                       run, attempts=p.max_job_attempts, error_type="WorkerLost", reason="worker_lost"),
                schema.empty_frames(), {})
    finally:
        shutil.rmtree(crash_dir, ignore_errors=True)
        _kill_actors(registry)
        try:
            ray.kill(registry)
        except Exception:  # noqa: BLE001 - already gone
            pass
    return published_now


def _kill_actors(registry) -> None:
    """Kill every ClipOperator actor registered so far (those of a finished attempt: none is working)."""
    import ray

    try:
        handles = ray.get(registry.take.remote(), timeout=60)
    except Exception as exc:  # noqa: BLE001 - cleanup only: never fail the job for it
        log.warning("could not list the attempt's actors to stop them: %s", exc)
        return
    for handle in handles:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone (e.g. with its node)
            pass


def _crash_text(times: int, crash: dict[str, Any] | None) -> str:
    where = (f": {crash['fatal']} in {crash['stage'] or crash['innermost']}"
             + (f" (innermost frame {crash['innermost']})" if crash["stage"] and crash["innermost"] else "")
             if crash else "")
    return (f"WorkerCrash: the worker process died while processing this clip alone, {times} times{where}, while "
            "other clips came through: the input makes the processor crash (e.g. a decoder fault). Check or "
            "re-encode the file; `r3p preprocess … --retry-failed` runs it again")


def _diagnose(lost: set[str], crash_list: list[dict[str, Any]], last_error: str | None, attempts: int) -> str:
    from pipeline import jit_cache

    crashed = {c["clip_id"] for c in crash_list}
    what = (f"{len(crash_list)} worker crash(es) on {len(crashed)} clip(s)" if crash_list
            else f"{len(lost)} clip(s) lost with their workers")
    head = (f"no clip came back from the actors in {attempts} attempt(s), each clip run alone ({what}): that is the "
            "environment (models, libraries, JIT cache, memory), not the inputs. Nothing was written for these "
            "clips, so the same command processes them after the fix.")
    if crash_list:
        kinds = Counter((c["fatal"], c["stage"] or c["innermost"]) for c in crash_list)
        (fatal, stage), k = kinds.most_common(1)[0]
        sample = next(c for c in crash_list if (c["fatal"], c["stage"] or c["innermost"]) == (fatal, stage))
        stack = " <- ".join(sample["stack"][:6])
        hint = ("The crash is in JIT-compiled code: delete r3p's numba cache "
                f"`rm -rf {jit_cache.cache_dir()}` (and any `__pycache__/*.nbi/*.nbc` of that package), then re-run."
                if any(w in stack for w in ("numba", "librosa", "raster")) else
                "Reinstall the package in the stack (e.g. `make clean-venv`), or run the stage on one clip in a "
                "plain Python process to reproduce it.")
        return (f"{head} Workers died with '{fatal}' in {stage} ({k} of {len(crash_list)} crashes; stack, innermost "
                f"first: {stack}). {hint}")
    tail = f" Last error: {last_error}." if last_error else ""
    return (f"{head}{tail} The workers left no crash report here (a remote node, or a failure before the first "
            "clip, e.g. the models could not be loaded): check the worker logs (`ray logs`, or "
            "/tmp/ray/session_latest/logs on each node), the config and the models.")


def _publish(sh: _Shard, layout: shards.Layout, run: dict[str, Any], retried: bool, say, k: int, n: int) -> None:
    clips, frames = sh.tables()
    stats = shards.write_shard(layout, sh.shard_id, clips, frames, _shard_stats(sh, clips, run, retried))
    fps = f"{stats['frames_per_s']:.1f} frames/s" if stats["frames_per_s"] else "-"
    say(f"[{k}/{n}] {sh.shard_id}: {stats['clips']} clips ({stats['ok']} ok, {stats['failed']} failed), "
        f"{stats['frames']} frames, {stats['seconds']:.1f} s of work, {fps}, "
        f"{(stats['bytes_clips'] + stats['bytes_frames']) / 2**20:.1f} MiB")


def summarize(layout: shards.Layout, wall_s: float | None = None, published_now: int = 0, skipped_shards: int = 0,
              workers: dict[str, float] | None = None) -> dict[str, Any]:
    """Run summary from the published shards of a version folder."""
    stats = shards.published(layout)
    manifest = _read_manifest(layout)
    expected = set(manifest["shard_id"].to_pylist())
    clips = shards.read_table(layout, "clips", ["split", "status", "error_type", "error_reason", "n_frames", "fps",
                                                "seconds", "timings"]).to_pylist()
    by = Counter((r["split"], r["status"]) for r in clips)
    errors = Counter(f"{r['error_type']}" + (f" ({r['error_reason']})" if r["error_reason"] else "")
                     for r in clips if r["status"] == schema.STATUS_FAILED)
    frames = sum(r["n_frames"] or 0 for r in clips)
    work_s = sum(r["seconds"] or 0.0 for r in clips)
    video_s = sum((r["n_frames"] or 0) / r["fps"] for r in clips if r["fps"])
    stages: dict[str, float] = defaultdict(float)
    for r in clips:
        for t in r["timings"] or []:
            if t["stage"] != "total":  # the processor's own sum of the stages
                stages[t["stage"]] += t["seconds"]
    total_stage = sum(stages.values()) or 1.0
    nbytes = sum(s.get("bytes_clips", 0) + s.get("bytes_frames", 0) for s in stats.values())
    peak = dict(workers or {})
    for s in stats.values():
        for w, mb in (s.get("peak_rss_mb_per_worker") or {}).items():
            peak[w] = max(peak.get(w, 0.0), mb)
    status = Counter(r["status"] for r in clips)
    return {
        "output": layout.uri, "version": layout.version, "complete": expected <= set(stats),
        "shards": len(expected), "shards_published": len(stats), "shards_published_this_run": published_now,
        "shards_skipped_this_run": skipped_shards, "clips": len(clips),
        "ok": status.get(schema.STATUS_OK, 0), "failed": status.get(schema.STATUS_FAILED, 0),
        "skipped": status.get(schema.STATUS_SKIPPED, 0),
        "by_split": {f"{sp}/{st}": n for (sp, st), n in sorted(by.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))},
        "errors": dict(errors.most_common()), "frames": frames, "video_seconds": round(video_s, 3),
        "work_seconds": round(work_s, 3), "wall_seconds": None if wall_s is None else round(wall_s, 3),
        "frames_per_s_wall": round(frames / wall_s, 3) if wall_s and published_now else None,
        "frames_per_s_per_actor": round(frames / work_s, 3) if work_s else None,
        "stage_share": {k: round(v / total_stage, 4) for k, v in sorted(stages.items(), key=lambda kv: -kv[1])},
        "bytes": nbytes, "mib_per_minute_of_video": round(nbytes / 2**20 / (video_s / 60), 2) if video_s else None,
        "peak_rss_mb_per_worker": peak,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"done: {s['ok']} ok, {s['failed']} failed, {s['skipped']} skipped of {s['clips']} clips; "
             f"{s['frames']} frames ({s['video_seconds']:.1f} s of video)"
             + (f" in {s['wall_seconds']:.1f} s" if s["wall_seconds"] is not None else "")
             + (f", {s['frames_per_s_wall']:.1f} frames/s" if s.get("frames_per_s_wall") else "")]
    if s["errors"]:
        lines.append("errors: " + ", ".join(f"{k} x{v}" for k, v in list(s["errors"].items())[:5]))
    if not s["complete"]:
        lines.append(f"INCOMPLETE: {s['shards_published']}/{s['shards']} shards published; re-run to finish")
    size = f", {s['mib_per_minute_of_video']:.1f} MiB per minute of video" if s["mib_per_minute_of_video"] else ""
    lines.append(f"output: {s['output']} ({s['bytes'] / 2**20:.1f} MiB{size}); tables clips/ and frames/, "
                 f"summary.json; `r3p inspect {s['output']}` for a report")
    return "\n".join(lines)
