"""Back up and restore any SQLite file, no store needed."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import apsw

from .backup import engine
from .backup.jobs import Cancel, JobResult, Progress, checking, foreground
from .backup.keys import Encryption
from .backup.requests import BackupRequest, RestoreRequest, ShowBackupRequest
from .errors import UsageError
from .sqlite import remove_database_files


def _name_for(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.stem) or "db"
    return name if re.match(r"[A-Za-z_]", name) else "_" + name


def backup_file(
    path: str | os.PathLike[str],
    into: str,
    *,
    encryption: Encryption | None = None,
    incremental: str | None = None,
    name: str | None = None,
    key: bytes | None = None,
    progress: Progress | None = None,
) -> JobResult:
    """Back up one SQLite file (a consistent snapshot, even while others write) into a collection.

    ``incremental`` is "LATEST" or a full backup's subdir; ``key`` is the raw key of a SQLite3
    Multiple Ciphers (AEGIS) file.
    """
    p = Path(path).absolute()
    source = engine.DatabaseSource(name or _name_for(p), p, key)
    # A plain file may be backed up unencrypted by choice (the result says so); a store's databases
    # may not without consent (store/backups.py).
    request = BackupRequest(into=(into,), encryption=encryption or Encryption(), incremental=incremental)
    # No store, so no job registry for CANCEL JOB; Ctrl-C or SIGTERM in the CLI still stops the
    # backup at a progress point, so its cleanup knows every object it started.
    with foreground(cancel := Cancel()):
        result = engine.backup(request, [source], progress=checking(progress, cancel))
    return replace(result, encryption=request.encryption.kind)


class _FileTarget:
    """Restores the one database a file backup holds to a chosen path."""

    def __init__(self, dest: Path, key: bytes | None) -> None:
        self.dest = dest
        self.key = key

    def database_path(self, name: str) -> Path:
        return self.dest

    def database_key(self, name: str) -> bytes | None:
        return self.key

    def connect(self, name: str) -> apsw.Connection:
        return apsw.Connection(str(self.dest))

    def prepare_database(self, name: str, region: str | None) -> bytes | None:
        """A plain file has no home region to record."""
        return self.key

    def discard_database(self, name: str) -> None:
        remove_database_files(self.dest)


def restore_file(
    from_: str,
    dest: str | os.PathLike[str],
    *,
    subdir: str = "LATEST",
    database: str | None = None,
    encryption: Encryption | None = None,
    key: bytes | None = None,
    verify: bool = False,
    as_of: datetime | None = None,
    progress: Progress | None = None,
) -> JobResult:
    """Restore a database from a backup to ``dest`` (refused if it exists).

    A backup of several databases needs ``database`` to say which one; ``verify`` adds SQLite's
    full integrity_check; ``as_of`` picks the newest layer of the chain at or before that time.
    """
    d = Path(dest).absolute()
    enc = encryption or Encryption()
    if database is None:
        listing = engine.show_backup(ShowBackupRequest(in_=(from_,), subdir=subdir, encryption=enc))
        names = [m.name for m in listing.manifests[-1].databases]
        if len(names) != 1:
            raise UsageError(f"the backup holds {len(names)} databases ({', '.join(names)}): say which to restore")
        database = names[0]
    request = RestoreRequest(
        from_=(from_,), subdir=subdir, databases=(database,), encryption=enc, verify=verify, as_of=as_of
    )
    with foreground(cancel := Cancel()):  # as backup_file
        result = engine.restore(request, _FileTarget(d, key), progress=checking(progress, cancel))
    return replace(result, encryption=enc.kind)
