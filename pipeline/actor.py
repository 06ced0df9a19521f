"""The Ray Data operator: a callable class that turns manifest rows into clip and frame rows.

One instance per actor: the processor (face model, detector, segmenter, HuBERT) is built once in
`__init__`. Each call gets a small Arrow batch of manifest rows (`batch_size` clips, 1 by default,
so a long video never sits in memory with others) and returns one row per clip: ids, status and
the clip's `clips`/`frames` tables as Arrow IPC bytes (encoded images, never raw frames).

Errors never leave the operator: input errors (VideoError, TrackingError, SegmentationError,
ValueError, missing files) become a failed row at once; anything else (I/O hiccups, runtime
errors) is retried up to `max_retries` times with a short back-off, then becomes a failed row.

A crash that kills the process (a segfault in native code) cannot be caught; for the driver's
diagnosis each actor keeps a crash log in `crash_dir` (when given): a `start <clip_id>` line before
each clip, `end <clip_id>` after, and Python's faulthandler dump of every thread's stack when the
process dies on a fatal signal (`read_crash_logs` reads them back).
"""

from __future__ import annotations

import faulthandler
import importlib
import logging
import os
import re
import resource
import socket
import time
from pathlib import Path
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


def _register(registry: str) -> None:
    """Add this actor to the job's registry; a registry that is gone costs the clean-up, never the actor."""
    import ray

    try:
        ray.get(ray.get_actor(registry).add.remote(ray.get_runtime_context().current_actor), timeout=60)
    except Exception as exc:  # noqa: BLE001 - clean-up bookkeeping only
        logging.getLogger(__name__).warning("could not register with %s (the driver will not stop this actor "
                                            "itself): %s", registry, exc)


class ClipOperator:
    """Callable class for `Dataset.map_batches(..., compute=ActorPoolStrategy(...))`."""

    def __init__(self, cfg_json: str, run: dict[str, Any], factory: str = DEFAULT_FACTORY, threads: int = 1,
                 max_retries: int = 2, retry_backoff_s: float = 1.0, crash_dir: str | None = None,
                 registry: str | None = None) -> None:
        from pipeline import jit_cache
        from pipeline.config import R3PConfig

        if registry:  # the driver kills every actor of an attempt once it is over (see ActorRegistry)
            _register(registry)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._log = _open_crash_log(crash_dir, self.worker)
        jit_cache.configure()  # r3p's own numba cache, never site-packages' (before anything compiles)
        limit_threads(max(1, threads))
        self.cfg = R3PConfig.model_validate_json(cfg_json)
        self.run = run
        self.max_retries = max_retries
        self.backoff = retry_backoff_s
        self.permanent = permanent_errors()
        self.processor = load_factory(factory)(self.cfg)
        if factory == DEFAULT_FACTORY:
            jit_cache.warm_here()  # one actor per node compiles, the others load its entries

    def _mark(self, what: str, clip_id: str) -> None:
        if self._log is not None:
            self._log.write(f"{what} {clip_id}\n")
            self._log.flush()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.process(clip) for clip in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)

    def _record(self, clip: dict[str, Any]):
        fs, path = storage.resolve(clip["source"])
        with storage.local_file(fs, path) as local:
            return self.processor(local, start_s=float(clip["start_s"] or 0.0), end_s=clip["end_s"])

    def process(self, clip: dict[str, Any]) -> dict[str, Any]:
        """One clip → one output row (never raises for a bad input)."""
        self._mark("start", clip["clip_id"])
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
        self._mark("end", clip["clip_id"])
        return {"clip_id": clip["clip_id"], "shard_id": clip["shard_id"], "status": status, "error_type": etype,
                "n_frames": frames.num_rows, "seconds": time.perf_counter() - t0, "attempts": attempts,
                "clips_ipc": schema.to_ipc(clips), "frames_ipc": schema.to_ipc(frames), "worker": self.worker,
                "peak_rss_mb": peak_rss_mb()}


class ActorRegistry:
    """Handles of the ClipOperator actors of a job (a Ray actor, named per job, `num_cpus=0`).

    Ray Data tears down its actor pool when an attempt ends, but an actor that crashed and was being
    restarted can come back after that and hold its CPU forever, so the next attempt's actors never
    get scheduled. The driver kills every registered actor after each attempt."""

    def __init__(self) -> None:
        self.handles: list = []

    def add(self, handle) -> None:
        self.handles.append(handle)

    def take(self) -> list:
        out, self.handles = self.handles, []
        return out


# ------------------------------------------------------------------------------------------------
# crash logs


def _open_crash_log(crash_dir: str | None, worker: str):
    """This process's crash log (line-buffered text file) with faulthandler writing into it, or None."""
    if not crash_dir:
        return None
    folder = Path(crash_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", worker) + ".log"), "a", buffering=1)
    faulthandler.enable(file=fh, all_threads=True)
    return fh


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_FATAL = re.compile(r"^Fatal Python error: (?P<what>.+)$")


def _short(path: str) -> str:
    parts = Path(path).parts
    for anchor in ("preprocessing", "pipeline", "training", "site-packages", "tests"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i + 1:] if anchor == "site-packages" else parts[i:])
    return "/".join(parts[-2:])


def read_crash_logs(crash_dir: str | Path) -> list[dict[str, Any]]:
    """Crashes recorded under `crash_dir`: one dict per process that died inside a clip —
    {"worker", "clip_id", "fatal" (e.g. "Segmentation fault"), "stage" (innermost r3p frame,
    `file:line function`), "innermost" (innermost frame of all), "stack" (frames, innermost first)}."""
    out = []
    folder = Path(crash_dir)
    if not folder.is_dir():
        return out
    for log in sorted(folder.glob("*.log")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        open_clip, fatal, stack, in_dump = None, None, [], False
        for line in lines:
            if line.startswith("start "):
                open_clip, fatal, stack, in_dump = line[6:].strip(), None, [], False
            elif line.startswith("end "):
                open_clip = None
            elif (m := _FATAL.match(line)) is not None:
                fatal, stack, in_dump = m.group("what"), [], False
            elif fatal is not None and line.startswith("Current thread"):
                in_dump = True  # only the crashing thread's stack is kept
            elif line.startswith("Thread "):
                in_dump = False
            elif in_dump and (m := _FRAME.match(line)) is not None:
                stack.append(f"{_short(m.group('file'))}:{m.group('line')} {m.group('func')}")
        if open_clip is not None and fatal is not None:
            own = [f for f in stack if f.split("/")[0] in ("preprocessing", "pipeline", "training")]
            out.append({"worker": log.stem, "clip_id": open_clip, "fatal": fatal,
                        "stage": own[0] if own else None, "innermost": stack[0] if stack else None,
                        "stack": stack})
    return out
