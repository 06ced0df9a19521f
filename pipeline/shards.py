"""Output layout, version folders and atomic shard publishing.

```
OUTPUT/v001/run.json            config hash + resolved config, input fingerprint, versions (written once)
OUTPUT/v001/manifest.parquet    the clip list: ids, sources, windows, splits, shards, probe results
OUTPUT/v001/clips/<shard>.parquet
OUTPUT/v001/frames/<shard>.parquet
OUTPUT/v001/stats/<shard>.json  written last: its presence is what "published" means
OUTPUT/v001/summary.json        the last run's summary
```

A shard is written as hidden temporaries (`.tmp-…`, ignored by pandas, DuckDB globs and Ray Data),
renamed frames first, then clips, then the stats file is written (atomically) last. A shard
without a stats file is unpublished and is rewritten whole by the next run; temporaries left by a
crash are deleted at the start of a run. Re-publishing a shard (`--retry-failed`) deletes its stats
file first, so a crash in between leaves it unpublished rather than half old, half new.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.schema import BINARY_COLUMNS, CLIPS_SCHEMA, FRAMES_SCHEMA, SCHEMA_CHANGES, SCHEMA_VERSION, conform

VERSION_RE = re.compile(r"^v(\d{3,})$")
FRAME_ROW_GROUP = 256


@dataclass(frozen=True)
class Layout:
    """Paths of one version folder of a dataset."""

    fs: pafs.FileSystem
    root: str  # OUTPUT
    version: int

    @property
    def dir(self) -> str:
        return storage.join(self.root, f"v{self.version:03d}")

    @property
    def uri(self) -> str:
        return self.dir if storage.is_local(self.fs) else f"{self.fs.type_name}://{self.dir}"

    def table_dir(self, table: str) -> str:
        return storage.join(self.dir, table)

    def shard_path(self, table: str, shard_id: str) -> str:
        return storage.join(self.dir, table, f"{shard_id}.parquet")

    def stats_path(self, shard_id: str) -> str:
        return storage.join(self.dir, "stats", f"{shard_id}.json")

    @property
    def run_path(self) -> str:
        return storage.join(self.dir, "run.json")

    @property
    def manifest_path(self) -> str:
        return storage.join(self.dir, "manifest.parquet")

    @property
    def summary_path(self) -> str:
        return storage.join(self.dir, "summary.json")


def versions(fs: pafs.FileSystem, root: str) -> list[int]:
    """Version numbers of the complete version folders (those with a run.json) under OUTPUT, ascending."""
    out = []
    for info in storage.listdir(fs, root):
        m = VERSION_RE.match(info.base_name)
        if info.type == pafs.FileType.Directory and m and storage.exists(fs, storage.join(info.path, "run.json")):
            out.append(int(m.group(1)))
    return sorted(out)


class SchemaVersionError(ValueError):
    """A dataset version written with a schema version this code does not read."""


def check_schema_version(layout: Layout, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """run.json of `layout`, after checking it was written with this code's SCHEMA_VERSION."""
    run = run if run is not None else read_json(layout.fs, layout.run_path)
    found = run.get("schema_version")
    if found != SCHEMA_VERSION:
        why = SCHEMA_CHANGES.get(found, "")
        raise SchemaVersionError(
            f"{layout.uri} was written with dataset schema version {found}; this r3p reads version {SCHEMA_VERSION}"
            + (f" ({why})" if why else "") + f". Make a version-{SCHEMA_VERSION} dataset: re-run `r3p preprocess "
            f"INPUT {layout.root} --force` (writes v{layout.version + 1:03d} beside it)")
    return run


def open_dataset(location: str, check_schema: bool = True) -> Layout:
    """The Layout of OUTPUT (its latest version) or of a version folder OUTPUT/vNNN; with `check_schema`,
    a version written with another schema version raises SchemaVersionError saying how to get a current one."""
    fs, path = storage.resolve(location)
    path = path.rstrip("/")
    m = VERSION_RE.match(posixpath.basename(path))
    if m and storage.exists(fs, storage.join(path, "run.json")):
        layout = Layout(fs, posixpath.dirname(path), int(m.group(1)))
    else:
        vs = versions(fs, path)
        if not vs:
            raise FileNotFoundError(f"{location} holds no r3p dataset (no vNNN/run.json); run `r3p preprocess INPUT "
                                    f"{location}` first")
        layout = Layout(fs, path, vs[-1])
    if check_schema:
        check_schema_version(layout)
    return layout


def read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    return json.loads(storage.read_text(fs, path))


def write_json(fs: pafs.FileSystem, path: str, data: dict[str, Any]) -> None:
    storage.write_atomic(fs, path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def published(layout: Layout) -> dict[str, dict[str, Any]]:
    """{shard_id: stats} of every published shard."""
    out = {}
    for info in storage.listdir(layout.fs, layout.table_dir("stats")):
        name = info.base_name
        if info.type == pafs.FileType.File and name.endswith(".json") and not name.startswith("."):
            out[name[:-5]] = read_json(layout.fs, info.path)
    return out


def clean_temporaries(layout: Layout) -> int:
    """Delete temporaries a crashed run left in the table folders; returns how many."""
    return sum(storage.remove_temporaries(layout.fs, layout.table_dir(t)) for t in ("clips", "frames", "stats"))


def _write_parquet(fs: pafs.FileSystem, path: str, table: pa.Table, row_group_size: int) -> int:
    """Parquet with zstd for numbers and no compression for already-encoded images; returns bytes written."""
    compression = {name: ("none" if name in BINARY_COLUMNS else "zstd") for name in table.column_names}
    dictionary = [n for n in table.column_names if n not in BINARY_COLUMNS]
    with fs.open_output_stream(path) as f:
        pq.write_table(table, f, compression=compression, use_dictionary=dictionary,
                       row_group_size=row_group_size, write_statistics=["clip_id", "index", "status", "split"])
    return int(fs.get_file_info(path).size or 0)


def write_shard(layout: Layout, shard_id: str, clips: pa.Table, frames: pa.Table, stats: dict[str, Any]) -> dict:
    """Publish one shard: temporaries, rename frames, rename clips, stats last. Returns the stats written."""
    fs = layout.fs
    clips, frames = conform(clips, CLIPS_SCHEMA), conform(frames, FRAMES_SCHEMA)
    for t in ("clips", "frames", "stats"):
        fs.create_dir(layout.table_dir(t), recursive=True)
    storage.delete(fs, layout.stats_path(shard_id))  # unpublish first when replacing
    finals = {t: layout.shard_path(t, shard_id) for t in ("frames", "clips")}
    tmps = {t: storage.tmp_name(p) for t, p in finals.items()}
    sizes = {"frames": _write_parquet(fs, tmps["frames"], frames, FRAME_ROW_GROUP),
             "clips": _write_parquet(fs, tmps["clips"], clips, 64)}
    for t in ("frames", "clips"):
        storage.publish(fs, tmps[t], finals[t])
    stats = {**stats, "bytes_clips": sizes["clips"], "bytes_frames": sizes["frames"]}
    write_json(fs, layout.stats_path(shard_id), stats)
    return stats


def read_shard(layout: Layout, shard_id: str) -> tuple[pa.Table, pa.Table]:
    """(clips, frames) tables of a published shard."""
    c = pq.read_table(layout.shard_path("clips", shard_id), filesystem=layout.fs)
    f = pq.read_table(layout.shard_path("frames", shard_id), filesystem=layout.fs)
    return c, f


def read_table(layout: Layout, table: str, columns: list[str] | None = None) -> pa.Table:
    """All published shards of `table` ('clips' or 'frames') as one Arrow table (shard order)."""
    schema = CLIPS_SCHEMA if table == "clips" else FRAMES_SCHEMA
    parts = [pq.read_table(layout.shard_path(table, s), filesystem=layout.fs, columns=columns)
             for s in sorted(published(layout))]
    if not parts:
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    return pa.concat_tables(parts)
