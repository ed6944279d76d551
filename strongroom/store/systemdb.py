"""``<store>/system.db``: the store's own tables (jobs, schedules, restores asked for over the API).

Every part opens it the same way: the file is private to the store's owner (SQLite gives its -wal and
-shm files the database file's mode), writers wait for each other rather than fail, and WAL lets
readers (``SHOW JOBS`` in another process) read while a job writes its progress.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw

BUSY_TIMEOUT_MS = 30_000


def connect(path: Path, schema: str | None = None) -> apsw.Connection:
    """A connection to system.db, made private if new; ``schema`` (CREATE TABLE IF NOT EXISTS ...) run first."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    if schema is not None:
        conn.execute(schema)
    return conn


class Table:
    """One table of system.db: created (``schema``) on the first connection of this process, not on every one."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path, self._schema = path, schema
        self._ready = False

    def connect(self) -> apsw.Connection:
        conn = connect(self.path, None if self._ready else self._schema)
        self._ready = True
        return conn
