"""Restores requested through CockroachDB Cloud's API (``POST /restores``): what was asked, and the job
that does it. Kept in ``<store>/system.db`` beside the jobs, so ``GET /restores`` outlives a restart of
``strongroom serve``; a restore's status and progress are its job's (``SHOW JOBS``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import apsw

from ..errors import NotFoundError
from . import systemdb

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS api_restores (id TEXT PRIMARY KEY, backup_id TEXT NOT NULL, type TEXT NOT NULL, "
    "objects TEXT NOT NULL, restore_opts TEXT NOT NULL, created_at TEXT NOT NULL, backup_end_time TEXT NOT NULL, "
    "job_id INTEGER NOT NULL)"
)
_COLUMNS = "id, backup_id, type, objects, restore_opts, created_at, backup_end_time, job_id"


@dataclass(frozen=True)
class RestoreRecord:
    id: str
    backup_id: str
    type: str  # CLUSTER | DATABASE | TABLE
    objects: str  # JSON list of {"database", "schema", "table"}
    restore_opts: str  # JSON object, as the request gave it
    created_at: str  # RFC 3339
    backup_end_time: str  # RFC 3339
    job_id: int

    def objects_list(self) -> list[dict[str, str]]:
        value = json.loads(self.objects)
        assert isinstance(value, list)
        return value

    def opts(self) -> dict[str, object]:
        value = json.loads(self.restore_opts)
        assert isinstance(value, dict)
        return value


class RestoreRecords:
    def __init__(self, path: Path) -> None:
        self._table = systemdb.Table(path, _SCHEMA)
        self._lock = threading.Lock()

    def _connect(self) -> apsw.Connection:
        return self._table.connect()

    def add(self, record: RestoreRecord) -> None:
        with self._lock:
            conn = self._connect()
            try:
                conn.execute(
                    f"INSERT INTO api_restores ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.backup_id,
                        record.type,
                        record.objects,
                        record.restore_opts,
                        record.created_at,
                        record.backup_end_time,
                        record.job_id,
                    ),
                )
            finally:
                conn.close()

    def list(self, restore_id: str | None = None) -> list[RestoreRecord]:
        where, args = ("WHERE id = ?", (restore_id,)) if restore_id is not None else ("", ())
        conn = self._connect()
        try:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM api_restores {where} ORDER BY created_at, id", args).fetchall()
        finally:
            conn.close()
        return [RestoreRecord(*r) for r in rows]  # type: ignore[arg-type]  # the table's columns, in order

    def get(self, restore_id: str) -> RestoreRecord:
        found = self.list(restore_id)
        if not found:
            raise NotFoundError(f'restore "{restore_id}" not found')
        return found[0]
