"""Files through pyarrow filesystems: one code path for local paths and object-store URIs (s3://, gs://).

A location is a (filesystem, path) pair from `resolve`. Writes are atomic where the filesystem
allows: `write_atomic` writes to a hidden temporary name in the same folder and renames it last
(a rename on local disks; object stores have no rename, so there the stats file written last is
the commit marker, see `pipeline.shards`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

TMP_PREFIX = ".tmp-"


def is_uri(location: str) -> bool:
    """True for `scheme://…` locations (s3://, gs://, file://), false for plain paths."""
    return "://" in str(location)


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or URI; local paths become absolute."""
    loc = str(location)
    if is_uri(loc):
        return pafs.FileSystem.from_uri(loc)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(loc))


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def join(*parts: str) -> str:
    """Join path parts with '/' (pyarrow filesystems use '/' everywhere)."""
    return posixpath.join(*parts)


def file_info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    return fs.get_file_info(path)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def listdir(fs: pafs.FileSystem, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """Entries under `path` (files and folders), or [] when it does not exist."""
    return fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(fs: pafs.FileSystem, path: str) -> str:
    return read_bytes(fs, path).decode("utf-8")


def tmp_name(path: str) -> str:
    """Hidden temporary sibling of `path` (readers of the folder ignore names starting with '.')."""
    head, tail = posixpath.split(path)
    return posixpath.join(head, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{tail}.tmp")


def publish(fs: pafs.FileSystem, tmp: str, path: str) -> None:
    """Move a fully written temporary file to its final name (replacing any previous file)."""
    if is_local(fs):
        os.replace(tmp, path)  # atomic on POSIX, replaces the target
    else:
        fs.move(tmp, path)


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write `data` to a temporary name, then rename it to `path`."""
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = tmp_name(path)
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    publish(fs, tmp, path)


def delete(fs: pafs.FileSystem, path: str) -> None:
    """Delete a file if present."""
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def remove_temporaries(fs: pafs.FileSystem, folder: str) -> int:
    """Delete leftover temporary files (from a crashed run) directly under `folder`; returns how many."""
    n = 0
    for info in listdir(fs, folder):
        if info.type == pafs.FileType.File and info.base_name.startswith(TMP_PREFIX):
            delete(fs, info.path)
            n += 1
    return n


@contextlib.contextmanager
def local_file(fs: pafs.FileSystem, path: str) -> Iterator[str]:
    """A local path for `path`: itself on a local filesystem, else a temporary download (deleted after)."""
    if is_local(fs):
        yield path
        return
    suffix = Path(path).suffix
    fd, tmp = tempfile.mkstemp(prefix="r3p-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as src:
            shutil.copyfileobj(src, out, 8 << 20)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
