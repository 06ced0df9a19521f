"""The manifest step: input videos → clips with stable ids, windows, splits and shards.

INPUT is a folder (searched recursively for video extensions) or a manifest file (CSV, JSONL or
Parquet with a `path` column and optional `speaker_id`, `clip_start`, `clip_end`, `dataset`),
local or behind any pyarrow filesystem URI. Relative manifest paths are relative to the
manifest's folder.

- `clip_id` = first 16 hex digits of sha1("<path relative to the corpus root>|<start ms>|<end ms or
  'end'>"), so it does not change between runs, machines or corpus locations.
- Windows: a video (or its clip_start..clip_end span) of L seconds is cut at multiples of
  `window_s`; a last piece shorter than `min_window_s` joins the window before it. The last window
  runs to the end of the video (end_s = None) unless clip_end was given. Durations come from a
  cheap probe; a file that cannot be probed still gets one whole-file clip, which then fails in
  the job with the decoder's error, so it shows up as a failed row.
- Splits: a hash of the speaker id (or of the video path when the speaker is unknown, or with
  `split_key: video`) mapped to [0, 1): below test_fraction → test, below test+val → val, else
  train. Never row order, so every window of a speaker lands in the same split.
- Shards: per split, clips sorted by (path, start) are grouped `shard_size` at a time; shard ids
  are `<split>-<5 digits>`.
"""

from __future__ import annotations

import hashlib
import io
import math
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline import storage
from pipeline.config import PreprocessConfig

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """The input cannot be turned into a clip list (missing folder, bad manifest file); says what to fix."""


@dataclass
class InputVideo:
    """One input file as listed: where to open it, its id path, and what the manifest says about it."""

    source: str  # local absolute path or URI that opens the file
    rel_path: str  # path relative to the corpus root (the id of the video)
    speaker_id: str | None = None
    dataset: str | None = None
    clip_start: float | None = None
    clip_end: float | None = None
    size_bytes: int = -1
    mtime_ns: int = -1


@dataclass
class Clip:
    """One unit of work: a window of a video, with its split and shard."""

    clip_id: str
    source: str
    rel_path: str
    dataset: str | None
    speaker_id: str | None
    split: str
    start_s: float
    end_s: float | None  # None = to the end of the video
    duration_s: float | None  # probed duration of the whole file (None when the probe failed)
    probe_error: str | None
    size_bytes: int
    mtime_ns: int
    shard_id: str = ""


# ------------------------------------------------------------------------------------------------
# pure helpers


def clip_id(rel_path: str, start_s: float, end_s: float | None) -> str:
    """Stable 16-hex-digit id of a window of a video (relative path + window in whole ms)."""
    end = "end" if end_s is None else str(int(round(end_s * 1000)))
    key = f"{rel_path}|{int(round(start_s * 1000))}|{end}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def windows(duration_s: float | None, window_s: float, min_window_s: float, clip_start: float | None = None,
            clip_end: float | None = None) -> list[tuple[float, float | None]]:
    """[(start_s, end_s or None = to the end)] cutting the span into `window_s` pieces (seconds)."""
    a = float(clip_start or 0.0)
    b = clip_end if clip_end is not None else duration_s
    if b is None or b <= a:
        return [(a, clip_end)]
    n = max(1, math.floor((b - a) / window_s + 1e-9))
    if (b - a) - n * window_s >= max(min_window_s, 1e-6):
        n += 1  # the remainder is long enough to be a window of its own
    out = [(round(a + k * window_s, 3), round(a + (k + 1) * window_s, 3)) for k in range(n - 1)]
    out.append((round(a + (n - 1) * window_s, 3), clip_end))
    return out


def assign_split(key: str, val_fraction: float, test_fraction: float, salt: str = "r3p") -> str:
    """'train' | 'val' | 'test' from a hash of `key` (deterministic, independent of other inputs)."""
    u = int.from_bytes(hashlib.sha1(f"{salt}|{key}".encode("utf-8")).digest()[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def speaker_from_path(rel_path: str, mode: str) -> str | None:
    """Speaker id guessed from the relative path: first folder, the file's folder, or None."""
    parts = rel_path.split("/")
    if mode == "none" or len(parts) < 2:
        return None
    return parts[0] if mode == "first_dir" else parts[-2]


def assign_shards(clips: list[Clip], shard_size: int) -> list[Clip]:
    """Group clips per split, sorted by (path, start), into shards `<split>-<00000>` of `shard_size`."""
    out = []
    for split in SPLITS:
        members = sorted((c for c in clips if c.split == split), key=lambda c: (c.rel_path, c.start_s))
        for i, c in enumerate(members):
            c.shard_id = f"{split}-{i // shard_size:05d}"
            out.append(c)
    return out


# ------------------------------------------------------------------------------------------------
# listing inputs


def _clean(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _read_manifest_table(fs: pafs.FileSystem, path: str) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    suffix = posixpath.splitext(path)[1].lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path, filesystem=fs)
        data = storage.read_bytes(fs, path)
        if suffix == ".csv":
            opts = pacsv.ConvertOptions(column_types={"path": pa.string(), "speaker_id": pa.string(),
                                                      "dataset": pa.string(), "clip_start": pa.float64(),
                                                      "clip_end": pa.float64()})
            return pacsv.read_csv(io.BytesIO(data), convert_options=opts)
        return pajson.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"manifest {path} cannot be read as {suffix[1:].upper()}: {exc}") from None


def _manifest_inputs(fs: pafs.FileSystem, path: str) -> list[InputVideo]:
    table = _read_manifest_table(fs, path)
    if "path" not in table.column_names:
        raise ManifestError(f"manifest {path} has no 'path' column (columns: {', '.join(table.column_names)}); "
                            "add one with the video paths (relative to the manifest's folder or absolute)")
    root = posixpath.dirname(path)
    out = []
    for i, row in enumerate(table.to_pylist()):
        p = _clean(row.get("path"))
        if p is None:
            raise ManifestError(f"manifest {path}: row {i + 1} has an empty 'path'")
        p = str(p)
        if storage.is_uri(p):
            source, rel = p, p
        elif posixpath.isabs(p):
            source = p
            rel = posixpath.relpath(p, root) if p.startswith(root.rstrip("/") + "/") else p
        else:
            rel = posixpath.normpath(p)
            source = posixpath.join(root, rel)
        if not storage.is_local(fs) and not storage.is_uri(source):
            source = f"{fs.type_name}://{source}"
        start, end = _clean(row.get("clip_start")), _clean(row.get("clip_end"))
        out.append(InputVideo(
            source=source, rel_path=rel,
            speaker_id=None if _clean(row.get("speaker_id")) is None else str(row["speaker_id"]),
            dataset=None if _clean(row.get("dataset")) is None else str(row["dataset"]),
            clip_start=None if start is None else float(start), clip_end=None if end is None else float(end)))
    return out


def _folder_inputs(fs: pafs.FileSystem, root: str, extensions: list[str]) -> list[InputVideo]:
    out = []
    for info in storage.listdir(fs, root, recursive=True):
        if info.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(info.path, root)
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and temporaries (e.g. an encoder's .tmp.mp4)
        if posixpath.splitext(rel)[1].lower() not in extensions:
            continue
        source = info.path if storage.is_local(fs) else f"{fs.type_name}://{info.path}"
        out.append(InputVideo(source=source, rel_path=rel, size_bytes=int(info.size or 0),
                              mtime_ns=int(info.mtime_ns or 0)))
    return sorted(out, key=lambda v: v.rel_path)


def list_inputs(location: str, cfg: PreprocessConfig) -> tuple[list[InputVideo], str]:
    """(input videos, default dataset name) for a folder or a manifest file at `location`."""
    fs, path = storage.resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ManifestError(f"input {location} does not exist; give a folder of videos or a manifest "
                            f"({', '.join(MANIFEST_SUFFIXES)})")
    if info.type == pafs.FileType.Directory:
        videos = _folder_inputs(fs, path, cfg.extensions)
        name = posixpath.basename(path.rstrip("/"))
        if not videos:
            raise ManifestError(f"input folder {location} holds no videos with extensions {cfg.extensions} "
                                "(set preprocess.extensions to pick up others)")
    else:
        if posixpath.splitext(path)[1].lower() not in MANIFEST_SUFFIXES:
            raise ManifestError(f"input {location} is a file but not a manifest ({', '.join(MANIFEST_SUFFIXES)}); "
                                "give its folder, or a manifest listing it")
        videos = _manifest_inputs(fs, path)
        name = posixpath.basename(posixpath.dirname(path).rstrip("/")) or "corpus"
        if not videos:
            raise ManifestError(f"manifest {location} lists no videos")
        for v in videos:  # sizes/mtimes: the fingerprint of the input set and the probe cache key
            vfs, vpath = storage.resolve(v.source)
            vi = vfs.get_file_info(vpath)
            if vi.type == pafs.FileType.File:
                v.size_bytes, v.mtime_ns = int(vi.size or 0), int(vi.mtime_ns or 0)
    return videos, name


# ------------------------------------------------------------------------------------------------
# probing and the clip list


def probe_duration(source: str) -> tuple[float | None, str | None]:
    """(duration in seconds, None) or (None, error message) for a video location (cheap probe)."""
    from preprocessing.video import DecordDecoder

    try:
        fs, path = storage.resolve(source)
        with storage.local_file(fs, path) as local:
            return float(DecordDecoder().probe(local).duration_s), None
    except Exception as exc:  # noqa: BLE001 - reported in the row; the job gives the full error
        return None, f"{type(exc).__name__}: {exc}"


def build_clips(videos: list[InputVideo], cfg: PreprocessConfig, default_dataset: str | None = None,
                probe_cache: dict[tuple, tuple] | None = None) -> list[Clip]:
    """Probe durations (threads; cached by (source, size, mtime)), cut windows, split, shard."""
    cache = probe_cache or {}
    keys = [(v.source, v.size_bytes, v.mtime_ns) for v in videos]
    need = [k for k, v in zip(keys, videos) if k not in cache and not (v.clip_start is not None and
                                                                         v.clip_end is not None)]
    with ThreadPoolExecutor(max_workers=cfg.probe_threads) as pool:
        for k, res in zip(need, pool.map(lambda k: probe_duration(k[0]), need)):
            cache[k] = res
    clips: dict[str, Clip] = {}
    for k, v in zip(keys, videos):
        duration, err = cache.get(k, (None, None))
        speaker = v.speaker_id or speaker_from_path(v.rel_path, cfg.speaker_from_path)
        split_key = speaker if (cfg.split_key == "speaker" and speaker) else f"video:{v.rel_path}"
        split = assign_split(split_key, cfg.val_fraction, cfg.test_fraction, cfg.split_salt)
        for start, end in windows(duration, cfg.window_s, cfg.min_window_s, v.clip_start, v.clip_end):
            cid = clip_id(v.rel_path, start, end)
            if cid in clips:
                continue  # the same window listed twice: one row
            clips[cid] = Clip(clip_id=cid, source=v.source, rel_path=v.rel_path,
                              dataset=v.dataset or default_dataset, speaker_id=speaker, split=split, start_s=start,
                              end_s=end, duration_s=duration, probe_error=err, size_bytes=v.size_bytes,
                              mtime_ns=v.mtime_ns)
    return assign_shards(list(clips.values()), cfg.shard_size)


def build_manifest(location: str, cfg: PreprocessConfig, probe_cache: dict[tuple, tuple] | None = None) -> list[Clip]:
    """The whole manifest step for INPUT `location`."""
    videos, name = list_inputs(location, cfg)
    return build_clips(videos, cfg, name, probe_cache)


MANIFEST_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("source", pa.string()), ("rel_path", pa.string()), ("dataset", pa.string()),
    ("speaker_id", pa.string()), ("split", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("duration_s", pa.float64()), ("probe_error", pa.string()), ("size_bytes", pa.int64()),
    ("mtime_ns", pa.int64()), ("shard_id", pa.string()),
])


def clips_to_table(clips: list[Clip]) -> pa.Table:
    return pa.Table.from_pylist([asdict(c) for c in clips], schema=MANIFEST_SCHEMA)


def clips_from_table(table: pa.Table) -> list[Clip]:
    names = {f.name for f in fields(Clip)}
    return [Clip(**{k: v for k, v in row.items() if k in names}) for row in table.to_pylist()]


def probe_cache_from(clips: list[Clip]) -> dict[tuple, tuple]:
    """Probe results of an earlier manifest, keyed like `build_clips` keys them."""
    return {(c.source, c.size_bytes, c.mtime_ns): (c.duration_s, c.probe_error) for c in clips
            if c.size_bytes >= 0}


def input_fingerprint(clips: list[Clip]) -> str:
    """Hash of the clip list (ids = paths + windows, speakers, splits, shards): changes when the input set
    changes. File sizes are left out, so a missing or broken file that is fixed in place can be retried."""
    h = hashlib.sha256()
    for c in sorted(clips, key=lambda c: c.clip_id):
        h.update(f"{c.clip_id}|{c.rel_path}|{c.split}|{c.shard_id}|{c.speaker_id}|"
                 f"{c.dataset}\n".encode("utf-8"))
    return h.hexdigest()[:16]
