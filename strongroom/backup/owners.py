"""Who holds a BACKUP-LOCK, and whether that owner is provably gone.

A backup writes its layer's lock first and removes it last, so a layer that still has one was left
by a backup that is running or was killed. The lock names its owner: host, boot, process id and the
process's start time. Another backup on the same host and boot can prove the owner gone (no such
process, or another process under a reused id) and clean the layer up; a lock from another host or
an earlier boot proves nothing either way, and stays for ``prune`` (the lifecycle issue).
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import suppress
from pathlib import Path

from ..storage import ExternalStorage
from ..storage.local import LocalStorage
from ..storage.objectstore import ObjectStoreStorage
from . import layout


def _boot_id() -> str:
    with suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def lock_content(op: str = "backup") -> bytes:
    """What this process writes into a BACKUP-LOCK: its owner, what it does (``backup``, or
    ``forget`` deleting the layer) and when it took the lock (for prune's grace period)."""
    me = os.getpid()
    owner = {
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "pid": me,
        "started": _started(me),
        "op": op,
        "time": time.time(),
    }
    return json.dumps(owner).encode()


def lock_facts(content: bytes) -> tuple[str, float | None]:
    """(what the lock's owner does, when it took the lock as a Unix time or None if it does not say)."""
    try:
        owner = json.loads(content)
        when = owner.get("time")
        return str(owner.get("op", "backup")), float(when) if isinstance(when, int | float) else None
    except (ValueError, AttributeError, TypeError):
        return "backup", None


def owner_gone(content: bytes) -> bool:
    """True only if the lock's owner provably no longer runs (same host and boot, process gone)."""
    try:
        owner = json.loads(content)
        host, boot, pid, started = owner["host"], owner["boot_id"], int(owner["pid"]), owner["started"]
    except (ValueError, KeyError, TypeError):
        return False  # a lock of an older Strongroom, or not ours: cannot tell
    if host != socket.gethostname() or not boot or boot != _boot_id():
        return False
    return _started(pid) != started


def remove_abandoned_layers(storage: ExternalStorage) -> list[str]:
    """Delete what killed backups on this host left in the collection: the files of each layer whose
    lock's owner is gone (a full backup that completed before its lock was removed keeps its files
    and loses only the lock). The lock goes last, so a crash here leaves the layer still marked
    partial. Files of a locality-aware backup at its other locations stay for ``prune``. Returns the
    layer dirs cleaned."""
    names = [name for name, _size in storage.list("")]
    cleaned = []
    named: set[str] | None = None  # what LATEST files name: read once, and only if a lock is abandoned
    for lock in [n for n in names if "/" in n and n.rsplit("/", 1)[1].startswith(layout.LOCK_PREFIX)]:
        layer = lock.rsplit("/", 1)[0]
        try:
            if not owner_gone(storage.get(lock)):
                continue
        except Exception:  # vanished meanwhile, or unreadable: leave it
            continue
        files = [n for n in names if n.startswith(layer + "/") and n != lock]
        # Only a full backup that LATEST already names completed before its lock went (layout's
        # rule); an incremental that still has its lock is not in its chain, whatever it holds.
        full_with_manifest = f"{layer}/{layout.MANIFEST}" in files and not layer.startswith(layout.INCREMENTALS + "/")
        if full_with_manifest and named is None:
            named = layout.latest_contents(storage)
        complete = full_with_manifest and named is not None and "/" + layer in named
        if not complete:
            for name in files:
                storage.delete(name)
            remove_temp_files(storage, layer)
        storage.delete(lock)
        cleaned.append(layer)
    return cleaned


def chain_locks(storage: ExternalStorage, full: str) -> list[str]:
    """Every BACKUP-LOCK in one chain: its full backup's dir and its incrementals' dirs."""
    names = [n for n, _s in storage.list(f"{full.strip('/')}/{layout.LOCK_PREFIX}")]
    for name, _size in storage.list(layout.incrementals_prefix(full)):
        if name.rsplit("/", 1)[-1].startswith(layout.LOCK_PREFIX):
            names.append(name)
    return names


def forget_in_chain(storage: ExternalStorage, full: str) -> str | None:
    """A layer of the chain a forget is removing (or left half-removed), or None.

    An incremental backup checks this after writing its own lock, and a forget checks for live
    backup locks after writing its own: whichever writes second sees the other, so an incremental
    is never built on a layer a forget removes (nor a layer removed under it)."""
    for lock in chain_locks(storage, full):
        try:
            content = storage.get(lock)
        except Exception:  # gone since the listing
            continue
        if lock_facts(content)[0] == "forget":
            return lock.rsplit("/", 1)[0]
    return None


def remove_temp_files(storage: ExternalStorage, prefix: str) -> None:
    """Remove the hidden temp objects that killed or interrupted writers left under ``prefix`` (a
    file system's, and an object store's upload-aside copies); only for a prefix no live writer uses."""
    if isinstance(storage, LocalStorage | ObjectStoreStorage):
        storage.remove_temp_files(prefix)
