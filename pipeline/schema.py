"""The Parquet tables `clips/` and `frames/` (versioned schema) and their conversion from ClipRecords.

Conventions: fixed-size float32 lists for coefficients, landmarks and cameras (landmarks flattened
as x0, y0, x1, y1, … in crop pixels); encoded bytes for images (JPEG photographs, PNG masks and
coordinate codes); audio features per clip as lists with 2 rows per frame (50 Hz). Every clip
has a row whatever happened to it: `status` ok | failed | skipped, and for failures `error` (one
line: exception type, what failed, what to do), `error_type` and `error_reason` (VideoError's
reason code, or one derived from the exception type: see `error_reason`). Failed clips have no frame rows; their fixed-size list columns (crop_box, id_coeff) are
NaN-filled rather than null, because pyarrow cannot read a null fixed-size list back from Parquet. Arrow metadata on both schemas carries
`r3p.schema_version` and the table name.

Bump SCHEMA_VERSION on any change of column names, types or meaning.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2
#: what each older schema version lacks or meant differently (said to users who meet one)
SCHEMA_CHANGES = {
    1: "its eg3d_cam column holds the renormalised camera (centre rescaled to radius 2.7), not the reference "
       "training form the models expect, and failed tracking rows have no error_reason",
}
STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_SKIPPED)
N_LANDMARKS = 68
MEL_BINS = 80
HUBERT_DIM = 1024

#: columns that change from run to run (wall-clock, retries): excluded from content hashes
VOLATILE_CLIP_COLUMNS = ("timings", "seconds", "attempts")


def _f32(n: int) -> pa.DataType:
    return pa.list_(pa.float32(), n)


TIMINGS_TYPE = pa.list_(pa.struct([("stage", pa.string()), ("seconds", pa.float64())]))


def _meta(table: str) -> dict[bytes, bytes]:
    return {b"r3p.schema_version": str(SCHEMA_VERSION).encode(), b"r3p.table": table.encode()}


CLIPS_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    ("source", pa.string()),  # location the video was read from (path or URI)
    ("rel_path", pa.string()),  # path relative to the corpus root (with the window: the id)
    ("dataset", pa.string()),
    ("split", pa.string()),  # train | val | test
    ("speaker_id", pa.string()),
    ("start_s", pa.float64()),  # window start in the source, seconds
    ("end_s", pa.float64()),  # requested window end, seconds; null = to the end of the video
    ("status", pa.string()),
    ("error", pa.string()),
    ("error_type", pa.string()),
    ("error_reason", pa.string()),
    ("attempts", pa.int32()),
    ("fps", pa.float32()),
    ("n_frames", pa.int32()),
    ("width", pa.int32()),  # source video size, pixels
    ("height", pa.int32()),
    ("crop_box", _f32(4)),  # x0, y0, x1, y1 of the square crop in source pixels
    ("crop_size", pa.int32()),
    ("render_size", pa.int32()),
    ("face_fraction", pa.float32()),
    ("id_coeff", _f32(80)),
    ("background_jpeg", pa.binary()),
    ("background_inpainted_fraction", pa.float32()),
    ("has_audio", pa.bool_()),
    ("mel", pa.list_(_f32(MEL_BINS))),  # (2T, 80) log-mel at 50 Hz
    ("f0", pa.list_(pa.float32())),  # (2T,) Hz
    ("voiced", pa.list_(pa.bool_())),
    ("rms", pa.list_(pa.float32())),
    ("hubert", pa.list_(_f32(HUBERT_DIM))),  # (2T, 1024); null unless a HuBERT model is configured
    ("timings", TIMINGS_TYPE),  # seconds per stage
    ("seconds", pa.float64()),  # wall seconds spent on the clip (all attempts)
    ("pipeline_version", pa.string()),
    ("config_hash", pa.string()),
    ("schema_version", pa.int32()),
    ("synthetic_face_model", pa.bool_()),
], metadata=_meta("clips"))

FRAMES_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    ("index", pa.int32()),  # frame index in the clip
    ("timestamp", pa.float64()),  # seconds in the source
    ("valid", pa.bool_()),  # face detected or interpolated over a short gap
    ("frame_jpeg", pa.binary()),  # aligned crop
    ("landmarks", _f32(2 * N_LANDMARKS)),  # x0, y0, x1, y1, … crop px; NaN where not valid
    ("exp", _f32(64)),
    ("euler", _f32(3)),  # pitch, yaw, roll, radians
    ("trans", _f32(3)),
    ("eg3d_cam", _f32(25)),  # 16 cam2world + 9 normalised intrinsics
    ("fit_rmse_px", pa.float32()),
    ("mouth_box", _f32(4)),
    ("eye_aspect_ratio", pa.float32()),
    ("mouth_opening", pa.float32()),
    ("secc_png", pa.binary()),
    ("pncc_png", pa.binary()),
    ("person_png", pa.binary()),
    ("seg_png", pa.binary()),  # labels 0 background, 1 head, 2 torso
    ("torso_jpeg", pa.binary()),
    ("composite_jpeg", pa.binary()),
], metadata=_meta("frames"))

BINARY_COLUMNS = {f.name for s in (CLIPS_SCHEMA, FRAMES_SCHEMA) for f in s if f.type == pa.binary()}


# ------------------------------------------------------------------------------------------------
# building rows


def _fixed(values: np.ndarray, n: int) -> pa.Array:
    flat = np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), n)


def _one_list(values: pa.Array) -> pa.Array:
    """A single-row list array holding `values`."""
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)


def _null_of(t: pa.DataType) -> pa.Array:
    """One missing value: null, except NaN-filled for fixed-size lists (pyarrow cannot read back a null
    fixed-size list from Parquet: "Expected all lists to be of size=N")."""
    if pa.types.is_fixed_size_list(t):
        return pa.array([[float("nan")] * t.list_size], t)
    return pa.nulls(1, t)


#: error_reason for exceptions that carry no `reason` of their own, by type (the first entry the exception is an instance of)
FALLBACK_REASONS = (
    ("FaceModelError", "face_model"), ("IsADirectoryError", "not_a_file"), ("FileNotFoundError", "not_found"),
    ("PermissionError", "permission_denied"), ("TimeoutError", "timeout"), ("MemoryError", "out_of_memory"),
    ("ValueError", "invalid_input"), ("OSError", "io_error"),
)
#: error_reason of a clip whose worker process died while processing it (alone, so the input is the cause)
REASON_WORKER_CRASH = "worker_crash"


def error_reason(error: BaseException) -> str:
    """Machine-readable failure reason: the exception's own `reason` (VideoError, TrackingError,
    SegmentationError), else one by type (`FALLBACK_REASONS`), else `internal_error`."""
    reason = getattr(error, "reason", None)
    if reason:
        return str(reason)
    names = [k.__name__ for k in type(error).__mro__]
    for name, code in FALLBACK_REASONS:
        if name in names:
            return code
    return "internal_error"


def failed_row(clip: dict[str, Any], error: BaseException | str, run: dict[str, Any], attempts: int = 1,
               seconds: float = 0.0, status: str = STATUS_FAILED, error_type: str | None = None,
               reason: str | None = None) -> pa.Table:
    """One-row clips table for a clip that produced no record, with an actionable one-line error and a
    machine-readable `error_reason` (always set: from the exception, or `reason` for a text)."""
    if isinstance(error, BaseException):
        etype, reason = type(error).__name__, error_reason(error)
        text = f"{etype}: {error}"
    else:
        etype, reason, text = error_type, reason or "internal_error", str(error)
    text = " ".join(text.split())[:1000]
    values = {**_ids(clip), "status": status, "error": text, "error_type": etype,
              "error_reason": reason, "attempts": attempts,
              "timings": [], "seconds": float(seconds), **_run_columns(run)}
    cols = [pa.array([values.get(f.name)], f.type) if f.name in values else _null_of(f.type) for f in CLIPS_SCHEMA]
    return pa.Table.from_arrays(cols, schema=CLIPS_SCHEMA)


def _ids(clip: dict[str, Any]) -> dict[str, Any]:
    return {k: clip.get(k) for k in ("clip_id", "source", "rel_path", "dataset", "split", "speaker_id", "start_s",
                                     "end_s")}


def _run_columns(run: dict[str, Any]) -> dict[str, Any]:
    return {"pipeline_version": run.get("pipeline_version"), "config_hash": run.get("config_hash"),
            "schema_version": SCHEMA_VERSION}


def record_tables(record: Any, clip: dict[str, Any], run: dict[str, Any], attempts: int = 1,
                  seconds: float = 0.0) -> tuple[pa.Table, pa.Table]:
    """(one-row clips table, T-row frames table) for a `preprocessing.record.ClipRecord` of `clip`."""
    r = record.check()
    t = int(r.n_frames)
    has_audio = r.mel is not None
    timings = [{"stage": k, "seconds": float(v)} for k, v in sorted(r.timings.items())]
    scalar = {**_ids(clip), "status": STATUS_OK, "error": None, "error_type": None, "error_reason": None,
              "attempts": attempts, "fps": float(r.fps), "n_frames": t, "width": int(r.width), "height": int(r.height),
              "crop_size": int(r.crop_size), "render_size": int(r.render_size), "face_fraction": float(r.face_fraction),
              "background_jpeg": bytes(r.background_jpeg),
              "background_inpainted_fraction": float(r.background_inpainted_fraction), "has_audio": has_audio,
              "timings": timings, "seconds": float(seconds), "synthetic_face_model": bool(r.synthetic_face_model),
              **_run_columns(run)}
    arrays = {
        "crop_box": _fixed(r.crop_box, 4), "id_coeff": _fixed(r.id_coeff, 80),
        "mel": _one_list(_fixed(r.mel, MEL_BINS)) if has_audio else None,
        "f0": _one_list(pa.array(np.asarray(r.f0, np.float32))) if r.f0 is not None else None,
        "voiced": _one_list(pa.array(np.asarray(r.voiced, bool))) if r.voiced is not None else None,
        "rms": _one_list(pa.array(np.asarray(r.rms, np.float32))) if r.rms is not None else None,
        "hubert": _one_list(_fixed(r.hubert, HUBERT_DIM)) if r.hubert is not None else None,
    }
    cols = []
    for f in CLIPS_SCHEMA:
        if f.name in arrays:
            cols.append(arrays[f.name] if arrays[f.name] is not None else _null_of(f.type))
        else:
            cols.append(pa.array([scalar.get(f.name)], f.type))
    clips = pa.Table.from_arrays(cols, schema=CLIPS_SCHEMA)

    frame_cols = {
        "clip_id": pa.array([clip["clip_id"]] * t, pa.string()),
        "index": pa.array(np.arange(t, dtype=np.int32)),
        "timestamp": pa.array(np.asarray(r.timestamps, np.float64)),
        "valid": pa.array(np.asarray(r.valid, bool)),
        "landmarks": _fixed(r.landmarks, 2 * N_LANDMARKS), "exp": _fixed(r.exp, 64), "euler": _fixed(r.euler, 3),
        "trans": _fixed(r.trans, 3), "eg3d_cam": _fixed(r.eg3d_cam, 25),
        "fit_rmse_px": pa.array(np.asarray(r.fit_rmse_px, np.float32)), "mouth_box": _fixed(r.mouth_box, 4),
        "eye_aspect_ratio": pa.array(np.asarray(r.eye_aspect_ratio, np.float32)),
        "mouth_opening": pa.array(np.asarray(r.mouth_opening, np.float32)),
    }
    for name in ("frame_jpeg", "secc_png", "pncc_png", "person_png", "seg_png", "torso_jpeg", "composite_jpeg"):
        frame_cols[name] = pa.array([bytes(b) for b in getattr(r, name)], pa.binary())
    frames = pa.Table.from_arrays([frame_cols[f.name] for f in FRAMES_SCHEMA], schema=FRAMES_SCHEMA)
    return clips, frames


def empty_frames() -> pa.Table:
    return FRAMES_SCHEMA.empty_table()


# ------------------------------------------------------------------------------------------------
# transport and checks


def to_ipc(table: pa.Table) -> bytes:
    """Arrow IPC stream bytes of a table (how the actors hand rows to the writer)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` cast to `schema` (same columns in order, schema metadata attached); raises if it cannot."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing} of schema version {SCHEMA_VERSION}")
    return table.select(schema.names).cast(schema)


def _feed(h: Any, v: Any) -> None:
    if v is None:
        h.update(b"N")
    elif isinstance(v, bytes):
        h.update(b"B" + struct.pack("<q", len(v)) + v)
    elif isinstance(v, bool):
        h.update(b"T" if v else b"F")
    elif isinstance(v, int):
        h.update(b"I" + str(v).encode())
    elif isinstance(v, float):
        h.update(b"D" + (b"nan" if math.isnan(v) else struct.pack("<d", v)))
    elif isinstance(v, str):
        b = v.encode("utf-8")
        h.update(b"S" + struct.pack("<q", len(b)) + b)
    elif isinstance(v, (list, tuple)):
        h.update(b"L" + struct.pack("<q", len(v)))
        for x in v:
            _feed(h, x)
    elif isinstance(v, dict):
        h.update(b"M" + struct.pack("<q", len(v)))
        for k in sorted(v):
            _feed(h, k)
            _feed(h, v[k])
    else:
        _feed(h, repr(v))


def clip_hashes(clips: pa.Table, exclude: tuple[str, ...] = VOLATILE_CLIP_COLUMNS) -> dict[str, str]:
    """{clip_id: sha256 of the row's content} without wall-clock/retry columns."""
    t = clips.drop_columns([c for c in exclude if c in clips.column_names])
    out = {}
    for row in t.to_pylist():
        h = hashlib.sha256()
        _feed(h, row)
        out[row["clip_id"]] = h.hexdigest()
    return out


def frame_hashes(frames: pa.Table) -> dict[str, str]:
    """{clip_id: sha256 of all its frame rows in index order}."""
    hs: dict[str, Any] = {}
    rows = frames.to_pylist()
    for row in sorted(rows, key=lambda r: (r["clip_id"], r["index"])):
        _feed(hs.setdefault(row["clip_id"], hashlib.sha256()), row)
    return {k: v.hexdigest() for k, v in hs.items()}
