"""One `r3p retrain` per ROOT at a time: a lock file holding its owner (host, pid, command) and start time.

Taken by creating the file exclusively (`O_EXCL` on a local ROOT). A second retrain finds it and stops with
the owner in the message. A lock is stale — and is taken over, saying so — when its process is gone on this
host, or when it is older than `stale_after_s` (an owner on another host cannot be checked otherwise).
On object storage (s3://…) there is no exclusive create: the lock is checked then written, which narrows
but does not close the race; the KubeRay CronJob's `concurrencyPolicy: Forbid` covers a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator

from pipeline import storage

LOCK_NAME = "retrain.lock"


class LockHeld(RuntimeError):
    """Another retrain holds the ROOT's lock; the message names it and what to do."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(root: str) -> dict[str, Any] | None:
    fs, path = storage.resolve(root)
    p = storage.join(path, LOCK_NAME)
    if not storage.exists(fs, p):
        return None
    try:
        with fs.open_input_stream(p) as fh:
            return json.loads(fh.read().decode())
    except (OSError, ValueError):
        return {"unreadable": True}


def stale_reason(owner: dict[str, Any], stale_after_s: float, now: float | None = None) -> str | None:
    """Why the lock `owner` is stale, or None when it must be respected."""
    now = time.time() if now is None else now
    if owner.get("unreadable"):
        return "the lock file is unreadable"
    age = now - float(owner.get("started", 0))
    if owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", -1))):
        return f"its process {owner.get('pid')} on this host is gone"
    if age > stale_after_s:
        return f"it is {age / 3600:.1f} h old (over {stale_after_s / 3600:.1f} h)"
    return None


@contextmanager
def root_lock(root: str, command: str, stale_after_s: float, say=print) -> Iterator[dict[str, Any]]:
    """Hold ROOT's retrain lock for the block; LockHeld when a live retrain holds it."""
    fs, path = storage.resolve(root)
    fs.create_dir(path, recursive=True)
    p = storage.join(path, LOCK_NAME)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
          "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command}
    data = json.dumps(me, indent=2).encode()
    for _ in range(2):
        if storage.is_local(fs):
            try:
                fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                fd = None
            if fd is not None:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                break
        elif not storage.exists(fs, p):
            storage.write_atomic(fs, p, data)
            break
        owner = read_lock(root) or {}
        why = stale_reason(owner, stale_after_s)
        if why is None:
            raise LockHeld(f"{root} is being retrained by {owner.get('command', '?')!r} (host {owner.get('host')}, "
                           f"pid {owner.get('pid')}, since {owner.get('started_utc')}); wait for it to finish, or "
                           f"if it is dead on another host delete {p}")
        say(f"r3p retrain: taking over a stale lock ({why}): {owner.get('command', '?')!r}")
        fs.delete_file(p)
    else:
        raise LockHeld(f"could not take the lock {p}: another retrain took it at the same moment; try again")
    try:
        yield me
    finally:
        try:
            if (read_lock(root) or {}).get("pid") == me["pid"]:
                fs.delete_file(p)
        except OSError:
            pass
