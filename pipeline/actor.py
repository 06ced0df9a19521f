"""The Ray Data operator: a callable class that turns manifest rows into clip and frame rows.

One instance per actor: the processor (face model, detector, segmenter, HuBERT) is built once in
`__init__`. Each call gets a small Arrow batch of manifest rows (`batch_size` clips, 1 by default,
so a long video never sits in memory with others) and returns one row per clip: ids, status and
the clip's `clips`/`frames` tables as Arrow IPC bytes (encoded images, never raw frames).

Errors never leave the operator: input errors (VideoError, TrackingError, SegmentationError,
ValueError, missing files) become a failed row at once; anything else (I/O hiccups, runtime
errors) is retried up to `max_retries` times with a short back-off, then becomes a failed row.
"""

from __future__ import annotations

import importlib
import os
import resource
import socket
import time
from typing import Any, Callable

import pyarrow as pa

from pipeline import schema, storage

#: what each operator call returns per clip
OUTPUT_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("shard_id", pa.string()), ("status", pa.string()), ("error_type", pa.string()),
    ("n_frames", pa.int32()), ("seconds", pa.float64()), ("attempts", pa.int32()),
    ("clips_ipc", pa.binary()), ("frames_ipc", pa.binary()),
    ("worker", pa.string()), ("peak_rss_mb", pa.float64()),
])

DEFAULT_FACTORY = "pipeline.process:make_processor"


def load_factory(spec: str) -> Callable[..., Any]:
    """'module:function' → the function."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def permanent_errors() -> tuple[type[BaseException], ...]:
    """Exception types that say the input is unusable (retrying cannot help)."""
    kinds: list[type[BaseException]] = [ValueError, FileNotFoundError, IsADirectoryError, PermissionError]
    for module, name in (("preprocessing.video", "VideoError"), ("preprocessing.landmarks.tracking", "TrackingError"),
                         ("preprocessing.segmentation", "SegmentationError"),
                         ("preprocessing.face_model", "FaceModelError")):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


def limit_threads(n: int) -> None:
    """Keep this process's thread pools (torch, OpenCV, numba) within its `n` CPUs: actors sharing a node
    must not oversubscribe it (Ray sets OMP_NUM_THREADS, but not these)."""
    import torch

    torch.set_num_threads(n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:  # pragma: no cover
        pass
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):  # pragma: no cover
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class ClipOperator:
    """Callable class for `Dataset.map_batches(..., compute=ActorPoolStrategy(...))`."""

    def __init__(self, cfg_json: str, run: dict[str, Any], factory: str = DEFAULT_FACTORY, threads: int = 1,
                 max_retries: int = 2, retry_backoff_s: float = 1.0) -> None:
        from pipeline.config import R3PConfig

        limit_threads(max(1, threads))
        self.cfg = R3PConfig.model_validate_json(cfg_json)
        self.run = run
        self.max_retries = max_retries
        self.backoff = retry_backoff_s
        self.permanent = permanent_errors()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.processor = load_factory(factory)(self.cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.process(clip) for clip in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)

    def _record(self, clip: dict[str, Any]):
        fs, path = storage.resolve(clip["source"])
        with storage.local_file(fs, path) as local:
            return self.processor(local, start_s=float(clip["start_s"] or 0.0), end_s=clip["end_s"])

    def process(self, clip: dict[str, Any]) -> dict[str, Any]:
        """One clip → one output row (never raises for a bad input)."""
        t0 = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            try:
                record = self._record(clip)
                clips, frames = schema.record_tables(record, clip, self.run, attempts, time.perf_counter() - t0)
                status, etype = schema.STATUS_OK, None
                break
            except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                if not isinstance(exc, self.permanent) and attempts <= self.max_retries:
                    time.sleep(self.backoff * attempts)
                    continue
                clips = schema.failed_row(clip, exc, self.run, attempts, time.perf_counter() - t0)
                frames = schema.empty_frames()
                status, etype = schema.STATUS_FAILED, type(exc).__name__
                break
        return {"clip_id": clip["clip_id"], "shard_id": clip["shard_id"], "status": status, "error_type": etype,
                "n_frames": frames.num_rows, "seconds": time.perf_counter() - t0, "attempts": attempts,
                "clips_ipc": schema.to_ipc(clips), "frames_ipc": schema.to_ipc(frames), "worker": self.worker,
                "peak_rss_mb": peak_rss_mb()}
