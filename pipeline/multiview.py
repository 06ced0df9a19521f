"""`r3p multiview`: teacher heads rendered from several cameras → a sharded Parquet `views/` table.

```
OUTPUT/v001/run.json             kind "views", schema version, config hash + the settings, teacher
OUTPUT/v001/views/<shard>.parquet  one row per (sample, view)
OUTPUT/v001/stats/<shard>.json   written last: its presence is what "published" means
OUTPUT/v001/summary.json, views_sheet.png
```

Samples are numbered 0…N−1, sample i has seed `multiview.seed + i`, and shard k holds samples
[k·S, (k+1)·S) under the stable id `<teacher>-<first sample, 8 digits>`. Ray Data runs the shards
through actors that load the teacher once (GPU actors with `multiview.num_gpus`); the driver
publishes each shard with the dataset layout's primitives (`pipeline.shards.Layout`,
`pipeline.storage`: hidden temporary, rename, stats last). Re-running resumes (published shards are
skipped); a run whose settings differ from the version folder's stops and names the difference;
`--force` starts a new version. The same seed and config give byte-identical rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import shards, storage
from pipeline.config import R3PConfig

log = logging.getLogger(__name__)

VIEWS_SCHEMA_VERSION = 1
DEPTH_SCALE = 1e-4  # depth PNG: uint16 = depth / DEPTH_SCALE (EG3D world units), 0 = background
VIEWS_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("seed", pa.int64()), ("teacher", pa.string()), ("view", pa.int16()),
    ("camera", pa.list_(pa.float32(), 25)), ("camera_source", pa.string()),
    ("cond_camera", pa.list_(pa.float32(), 25)),
    ("image", pa.binary()), ("image_raw", pa.binary()), ("depth", pa.binary()), ("mask", pa.binary()),
    ("opacity", pa.binary()), ("face_model", pa.string()), ("status", pa.string()), ("error", pa.string()),
], metadata={b"r3p_table": b"views", b"r3p_schema_version": str(VIEWS_SCHEMA_VERSION).encode(),
             b"depth_png": f"uint16 = ray distance (EG3D world units) / {DEPTH_SCALE}; 0 = background".encode()})


class MultiviewError(RuntimeError):
    """The job cannot run as asked (settings differ from the version folder's, bad pose dataset, …)."""


# ------------------------------------------------------------------------------------------------
# encoding


def _png(a: np.ndarray) -> bytes:
    import cv2
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    import cv2
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def encode_depth(depth: np.ndarray) -> bytes:
    """Ray-distance depth (H, W), +inf background → 16-bit PNG (value / DEPTH_SCALE, 0 background)."""
    d = np.where(np.isfinite(depth), np.clip(np.round(depth / DEPTH_SCALE), 1, 65535), 0)
    return _png(d.astype(np.uint16))


def decode_depth(data: bytes) -> np.ndarray:
    """Inverse of `encode_depth`: float32 (H, W), +inf background."""
    import cv2
    d = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float32)
    return np.where(d > 0, d * DEPTH_SCALE, np.inf).astype(np.float32)


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes → uint8 RGB (or grey) array."""
    import cv2
    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return a[..., ::-1].copy() if a.ndim == 3 else a


# ------------------------------------------------------------------------------------------------
# the operator (one per actor: the teacher is loaded once)


def build_teacher(cfg: R3PConfig, teacher: str):
    """The configured teacher: 'morphable' (face model from config) or 'eg3d' (converted checkpoint)."""
    from preprocessing.multiview import EG3DTeacher, MorphableTeacher

    mv = cfg.multiview
    if teacher == "morphable":
        from pipeline.assets import resolve_face_model
        return MorphableTeacher(resolve_face_model(cfg), size=mv.image_size)
    if teacher == "eg3d":
        import torch

        from pipeline.assets import asset_path
        from preprocessing.eg3d.generator import load_generator
        weights = asset_path("eg3d", cfg.home, cfg.assets).with_suffix(".safetensors")
        if not weights.is_file():
            raise FileNotFoundError(f"no converted EG3D checkpoint at {weights}: put ffhqrebalanced512-128.pkl "
                                    f"beside it and run `r3p assets convert-eg3d {weights.with_suffix('.pkl')}`")
        device = "cuda" if mv.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        return EG3DTeacher(load_generator(str(weights), device=device), mv.truncation_psi, mv.camera_distribution())
    raise MultiviewError(f"unknown teacher {teacher!r}; use morphable or eg3d")


def _cameras(seed: int, views: int, dist, pose_bank: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    from preprocessing.multiview import view_camera
    rng = np.random.default_rng([seed, 1])  # the cameras' own stream: independent of the head's
    out = [view_camera(rng, dist, pose_bank) for _ in range(views)]
    return np.stack([c for c, _ in out]), [s for _, s in out]


def sample_rows(teacher, seed: int, sample_id: str, views: int, dist, pose_bank: np.ndarray | None,
                raw_size: int, face_model: str) -> dict[str, list]:
    """The rows of one sample: every view rendered, encoded; a failed sample gives one failed row."""
    from preprocessing.multiview import downsample
    cols: dict[str, list] = {f.name: [] for f in VIEWS_SCHEMA}
    try:
        head = teacher.sample(seed)
        cams, sources = _cameras(seed, views, dist, pose_bank)
        v = teacher.render(head, cams)
        raw = downsample(v.image, raw_size)
        cond = getattr(head, "cond_camera", np.full(25, np.nan, np.float32))
        for i in range(len(cams)):
            row = {"sample_id": sample_id, "seed": seed, "teacher": teacher.name, "view": i,
                   "camera": cams[i].tolist(), "camera_source": sources[i], "cond_camera": np.asarray(cond).tolist(),
                   "image": _jpeg(v.image[i]), "image_raw": _png(raw[i][..., ::-1]), "depth": encode_depth(v.depth[i]),
                   "mask": _png(v.mask[i].astype(np.uint8) * 255),
                   "opacity": None if v.opacity is None else _png(np.round(v.opacity[i] * 255).astype(np.uint8)),
                   "face_model": face_model, "status": "ok", "error": None}
            for k, val in row.items():
                cols[k].append(val)
    except Exception as exc:  # noqa: BLE001 - a bad sample never stops the job: it becomes a row
        log.warning("sample %s (seed %d) failed: %s", sample_id, seed, exc)
        row = {"sample_id": sample_id, "seed": seed, "teacher": teacher.name, "view": -1, "camera": [math.nan] * 25,
               "camera_source": None, "cond_camera": [math.nan] * 25, "image": None, "image_raw": None, "depth": None,
               "mask": None, "opacity": None, "face_model": face_model, "status": "failed",
               "error": f"{type(exc).__name__}: {exc}"}
        for k, val in row.items():
            cols[k].append(val)
    return cols


class ViewsOperator:
    """Ray Data callable class: one batch of shard descriptions → those shards' rows."""

    def __init__(self, cfg_json: str, teacher: str, pose_bank: np.ndarray | None, threads: int = 1):
        import torch
        torch.set_num_threads(max(1, threads))
        self.cfg = R3PConfig.model_validate_json(cfg_json)
        self.teacher = build_teacher(self.cfg, teacher)
        self.dist = self.cfg.multiview.camera_distribution()
        self.pose_bank = pose_bank
        model = getattr(self.teacher, "model", None)
        self.face_model = ("synthetic" if model.synthetic else "bfm") if model is not None else "eg3d"

    def __call__(self, batch: pa.Table) -> pa.Table:
        mv = self.cfg.multiview
        parts = []
        for shard_id, start, count in zip(batch["shard_id"].to_pylist(), batch["start"].to_pylist(),
                                          batch["count"].to_pylist()):
            cols: dict[str, list] = {f.name: [] for f in VIEWS_SCHEMA}
            for i in range(start, start + count):
                rows = sample_rows(self.teacher, mv.seed + i, f"{self.teacher.name}-{i:08d}", mv.views, self.dist,
                                   self.pose_bank, mv.raw_size, self.face_model)
                for k in cols:
                    cols[k].extend(rows[k])
            t = pa.table(cols, schema=VIEWS_SCHEMA)
            parts.append(t.append_column("shard_id", pa.array([shard_id] * len(t))))
        return pa.concat_tables(parts)


# ------------------------------------------------------------------------------------------------
# the job


def views_fingerprint(cfg: R3PConfig, teacher: str, poses: str | None) -> tuple[str, dict[str, Any]]:
    """(16-hex hash, settings) of everything that changes the rows (not execution resources)."""
    mv = cfg.multiview.model_dump(mode="json")
    mv.pop("num_gpus", None)
    mv.pop("samples", None)  # more samples extend a version; they do not change existing rows
    data = {"teacher": teacher, "multiview": mv, "face_model": cfg.face_model.model_dump(mode="json"),
            "poses": poses, "schema_version": VIEWS_SCHEMA_VERSION}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16], data


def load_pose_bank(location: str) -> np.ndarray:
    """(N, 25) float32 `eg3d_cam` of every frame of a preprocessed dataset version."""
    layout = shards.open_dataset(location)
    cams = shards.read_table(layout, "frames", columns=["eg3d_cam"])["eg3d_cam"]
    bank = np.asarray(cams.combine_chunks().flatten(), np.float32).reshape(-1, 25) if len(cams) else np.zeros((0, 25))
    bank = bank[np.isfinite(bank).all(1)]
    if not len(bank):
        raise MultiviewError(f"--poses {location}: the dataset has no frames with an EG3D camera")
    return bank


def _version(fs, root: str, fp: str, data: dict, force: bool) -> tuple[shards.Layout, bool]:
    vs = shards.versions(fs, root)
    if vs and not force:
        layout = shards.Layout(fs, root, vs[-1])
        run = shards.read_json(fs, layout.run_path)
        if run.get("kind") != "views":
            raise MultiviewError(f"{layout.uri} is not a views dataset; choose another OUTPUT")
        if run.get("config_hash") != fp:
            old, new = run.get("settings", {}), data
            diff = sorted(k for k in set(_flat(old)) | set(_flat(new)) if _flat(old).get(k) != _flat(new).get(k))
            raise MultiviewError(f"{layout.uri} was made with other settings ({', '.join(diff[:6])}); "
                                 "re-run with --force to write a new version beside it")
        return layout, False
    return shards.Layout(fs, root, (vs[-1] + 1) if vs else 1), True


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _publish(layout: shards.Layout, shard_id: str, table: pa.Table, stats: dict) -> None:
    fs = layout.fs
    for t in ("views", "stats"):
        fs.create_dir(layout.table_dir(t), recursive=True)
    storage.delete(fs, layout.stats_path(shard_id))
    final = layout.shard_path("views", shard_id)
    tmp = storage.tmp_name(final)
    binary = {"image", "image_raw", "depth", "mask", "opacity"}
    with fs.open_output_stream(tmp) as f:
        pq.write_table(table, f, compression={n: "none" if n in binary else "zstd" for n in table.column_names})
    storage.publish(fs, tmp, final)
    shards.write_json(fs, layout.stats_path(shard_id), stats)


def views_sheet(layout: shards.Layout, path: str, max_samples: int = 4) -> str:
    """Contact sheet: each sample's views side by side with their depth."""
    from preprocessing.render import depth_to_uint8
    from pipeline.sheet import contact_sheet
    import PIL.Image

    t = read_views(layout).filter(pc.field("status") == "ok")
    ids = sorted(set(t["sample_id"].to_pylist()))[:max_samples]
    rows, labels = [], []
    for sid in ids:
        sub = t.filter(pc.field("sample_id") == sid)
        tiles = []
        for img, dep in zip(sub["image"].to_pylist(), sub["depth"].to_pylist()):
            im = decode_image(img)
            d = depth_to_uint8(decode_depth(dep))
            d = np.asarray(PIL.Image.fromarray(d).resize(im.shape[1::-1], PIL.Image.NEAREST))
            tiles += [im, d]
        rows.append(tiles)
        labels.append(sid)
    n = max(len(r) for r in rows)
    cols = [("view " if j % 2 == 0 else "depth ") + str(j // 2) for j in range(n)]
    sheet = contact_sheet(rows, cols, labels)
    with layout.fs.open_output_stream(path) as f:
        sheet.save(f, format="PNG")
    return path


def read_views(layout: shards.Layout) -> pa.Table:
    """All published shards of the views table, in shard order."""
    ids = sorted(shards.published(layout))
    if not ids:
        return VIEWS_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(layout.shard_path("views", s), filesystem=layout.fs) for s in ids])


def run_multiview(output: str, cfg: R3PConfig, teacher: str | None = None, samples: int | None = None,
                  views: int | None = None, poses: str | None = None, force: bool = False,
                  address: str | None = None, actors: int | None = None, say=print) -> dict[str, Any]:
    """Run the job; returns the summary (counts, throughput, where the output is)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.preprocess import ensure_ray

    mv = cfg.multiview
    updates = {k: v for k, v in (("teacher", teacher), ("samples", samples), ("views", views)) if v is not None}
    if updates:
        cfg = cfg.model_copy(update={"multiview": mv.model_copy(update=updates)})
        mv = cfg.multiview
    pose_bank = load_pose_bank(poses) if poses else None
    fs, root = storage.resolve(output)
    fp, data = views_fingerprint(cfg, mv.teacher, poses)
    layout, new = _version(fs, root, fp, data, force)
    fs.create_dir(layout.dir, recursive=True)
    if new:
        shards.write_json(fs, layout.run_path, {"kind": "views", "views_schema_version": VIEWS_SCHEMA_VERSION,
                                                "config_hash": fp, "settings": data,
                                                "depth_scale": DEPTH_SCALE})
    for t in ("views", "stats"):
        storage.remove_temporaries(fs, layout.table_dir(t))
    per = mv.samples_per_shard
    all_shards = [(f"{mv.teacher}-{s:08d}", s, min(per, mv.samples - s)) for s in range(0, mv.samples, per)]
    done = shards.published(layout)
    todo = [s for s in all_shards if s[0] not in done]
    say(f"r3p multiview: {mv.teacher} teacher, {mv.samples} samples × {mv.views} views in {len(all_shards)} shards "
        f"→ {layout.uri} ({len(all_shards) - len(todo)} already published)")
    t0 = time.perf_counter()
    published_now = 0
    if todo:
        started = ensure_ray(address)
        try:
            ctx = DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.execution_options.preserve_order = False
            free = ray.available_resources().get("CPU", 1.0)
            n = actors or max(1, min(len(todo), int(free)))
            remote: dict[str, Any] = {"num_cpus": 1}
            if mv.num_gpus:
                remote["num_gpus"] = mv.num_gpus
            ds = ray.data.from_items([{"shard_id": s, "start": a, "count": c} for s, a, c in todo],
                                     override_num_blocks=len(todo))
            out = ds.map_batches(ViewsOperator, fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(),
                                                                       "teacher": mv.teacher, "pose_bank": pose_bank},
                                 batch_size=1, batch_format="pyarrow", compute=ActorPoolStrategy(size=n), **remote)
            for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
                for sid in sorted(set(batch["shard_id"].to_pylist())):
                    part = batch.filter(pc.equal(batch["shard_id"], sid)).drop_columns(["shard_id"])
                    part = part.sort_by([("sample_id", "ascending"), ("view", "ascending")]).cast(VIEWS_SCHEMA)
                    ok = pc.equal(part["status"], "ok")
                    stats = {"shard_id": sid, "rows": len(part), "samples": len(set(part["sample_id"].to_pylist())),
                             "failed_samples": int(len(part) - pc.sum(ok).as_py()), "config_hash": fp}
                    _publish(layout, sid, part, stats)
                    published_now += 1
                    say(f"  shard {sid}: {stats['samples']} samples, {stats['rows']} rows "
                        f"({published_now}/{len(todo)})")
        finally:
            if started:  # a Ray this job started is shut down (in-process callers: tests, the demo)
                ray.shutdown()

    wall = time.perf_counter() - t0
    table = read_views(layout)
    ok_rows = table.filter(pc.equal(table["status"], "ok"))
    sheet = storage.join(layout.dir, "views_sheet.png")
    if len(ok_rows):
        views_sheet(layout, sheet)
    summary = {"dataset": layout.uri, "teacher": mv.teacher, "samples": len(set(table["sample_id"].to_pylist())),
               "rows": len(table), "failed_samples": len(set(table.filter(pc.not_equal(
                   table["status"], "ok"))["sample_id"].to_pylist())), "published_now": published_now,
               "wall_s": round(wall, 2),
               "samples_per_s": round(sum(c for _, _, c in todo) / wall, 3) if todo and wall > 0 else None,
               "face_model": (ok_rows["face_model"][0].as_py() if len(ok_rows) else None),
               "sheet": sheet if len(ok_rows) else None}
    shards.write_json(fs, layout.summary_path, summary)
    say(f"r3p multiview: {summary['samples']} samples, {summary['rows']} rows, {summary['failed_samples']} failed; "
        f"{published_now} shards in {wall:.1f} s; sheet {summary['sheet']}")
    return summary


def is_views_dataset(location: str) -> bool:
    """True when OUTPUT (latest version) or OUTPUT/vNNN is a `r3p multiview` dataset."""
    try:
        layout = shards.open_dataset(location, check_schema=False)
    except FileNotFoundError:
        return False
    return shards.read_json(layout.fs, layout.run_path).get("kind") == "views"


def inspect_views(location: str, sheet_path: str | None = None, samples: int = 4) -> dict[str, Any]:
    """Report on a views dataset (counts, teacher, face model, camera sources) and write its sheet."""
    layout = shards.open_dataset(location, check_schema=False)
    run = shards.read_json(layout.fs, layout.run_path)
    if run.get("views_schema_version") != VIEWS_SCHEMA_VERSION:
        raise MultiviewError(f"{layout.uri} has views schema version {run.get('views_schema_version')}; this r3p "
                             f"reads version {VIEWS_SCHEMA_VERSION}: re-run `r3p multiview {layout.root} --force`")
    t = read_views(layout)
    ok = t.filter(pc.field("status") == "ok")
    sheet = None
    if len(ok):
        sheet = views_sheet(layout, str(sheet_path) if sheet_path else storage.join(layout.dir, "views_sheet.png"),
                            max_samples=samples)
    from collections import Counter
    return {"dataset": layout.uri, "kind": "views", "teacher": run["settings"]["teacher"],
            "samples": len(set(t["sample_id"].to_pylist())), "rows": len(t),
            "status": dict(Counter(t["status"].to_pylist())),
            "camera_source": dict(Counter(x for x in ok["camera_source"].to_pylist())),
            "face_model": sorted(set(ok["face_model"].to_pylist())), "shards_published": len(shards.published(layout)),
            "sheet": sheet}


def format_views_report(r: dict[str, Any]) -> str:
    """A few human-readable lines for `r3p inspect` on a views dataset."""
    return "\n".join([
        f"views dataset {r['dataset']}: {r['teacher']} teacher, {r['samples']} samples, {r['rows']} rows "
        f"({', '.join(f'{k} {v}' for k, v in r['status'].items())}), {r['shards_published']} shards",
        f"cameras: {', '.join(f'{k} {v}' for k, v in r['camera_source'].items()) or 'none'}; face model: "
        f"{', '.join(r['face_model']) or '-'}" + (" (synthetic heads)" if "synthetic" in r["face_model"] else ""),
        f"sheet: {r['sheet']}"])
