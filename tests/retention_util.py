"""Collections built at chosen times (engine.backup's clock), for the forget and prune tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import apsw

from strongroom import Encryption
from strongroom.backup import engine, layout
from strongroom.backup.requests import BackupRequest
from strongroom.files import restore_file
from strongroom.storage import ExternalStorage, open_storage

PASS = "correct horse battery staple"
ENC = Encryption(passphrase=PASS)


@dataclass
class Built:
    """A collection and, for each restore point (layer path), the rows a restore of it must return."""

    coll: str
    db: Path
    rows: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    fulls: list[str] = field(default_factory=list)

    def take(self, when: datetime, *, onto: str | None = None, incremental: bool = False) -> str:
        """Add a row, then back up at ``when``: a full, or an incremental onto LATEST or ``onto``."""
        conn = apsw.Connection(str(self.db))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, label TEXT)")
            conn.execute("INSERT INTO t(label) VALUES (?)", (when.isoformat(),))
            rows = [(int(r[0]), str(r[1])) for r in conn.execute("SELECT id, label FROM t ORDER BY id")]
        finally:
            conn.close()
        inc = onto or ("LATEST" if incremental else None)
        request = BackupRequest(into=(self.coll,), encryption=ENC, incremental=inc)
        engine.backup(request, [engine.DatabaseSource("app", self.db)], clock=lambda: when)
        if inc is None:
            path = layout.full_subdir(when)
            self.fulls.append(path)
        else:
            full = layout.read_latest(_storage(self.coll)) if inc == "LATEST" else inc
            path = "/" + layout.incrementals_prefix(full) + layout.incremental_dirname(when)
        self.rows[path] = rows
        return path

    def restore_rows(self, point: str, dest: Path) -> list[tuple[int, str]]:
        """The rows a restore of ``point`` returns (its chain, as of its end time)."""
        full = point if not point.startswith("/incrementals/") else "/" + "/".join(point.split("/")[2:5])
        dest.unlink(missing_ok=True)
        restore_file(self.coll, dest, subdir=full, encryption=ENC, as_of=layout.end_time_of(point))
        conn = apsw.Connection(str(dest))
        try:
            return [(int(r[0]), str(r[1])) for r in conn.execute("SELECT id, label FROM t ORDER BY id")]
        finally:
            conn.close()


def _storage(coll: str) -> ExternalStorage:
    return open_storage(coll)


def layers_on_disk(coll: str) -> set[str]:
    """Every completed layer the listing shows (what forget may have left)."""
    storage = _storage(coll)
    out = set()
    for full in layout.list_fulls(storage):
        out.add(full)
        out |= {"/" + d for d in layout.list_incrementals(storage, full)}
    return out
