"""A Strongroom store: a directory of named SQLite databases (CockroachDB's "cluster" for us).

Layout::

    <store>/STRONGROOM-STORE     store metadata (JSON)
    <store>/databases/<name>.db  one SQLite database per name (WAL mode)
    <store>/extern/              nodelocal:// external storage (CockroachDB's external-io dir)

Encryption at rest (CMEK) hangs off :meth:`Store.database_key`: today every database is a plain
SQLite file and the key is None; the backup engine and restore already take a per-database key.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import apsw

from ..backup import engine
from ..backup.engine import DatabaseSource, ShowBackupResult
from ..backup.jobs import JobResult, Progress
from ..backup.keys import Encryption
from ..errors import AlreadyExistsError, NotFoundError, UsageError
from ..sqlite.connect import connect
from ..storage import StorageContext
from .jobs import JobRegistry

if TYPE_CHECKING:
    from ..sql.executor import Result, Session

MARKER = "STRONGROOM-STORE"
FORMAT = 1
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_database_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(
            f"invalid database name {name!r}: use letters, digits and '_', starting with a letter or '_' (max 63)"
        )
    return name


class Store:
    """Open with :func:`open_store`; create with :func:`init_store`."""

    def __init__(self, path: Path, meta: dict[str, object]) -> None:
        self.path = path
        self.meta = meta
        self.databases_dir = path / "databases"
        self.extern_dir = path / "extern"
        self._jobs: JobRegistry | None = None
        self._session: Session | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str]) -> Store:
        root = Path(path).absolute()
        if (root / MARKER).exists():
            raise AlreadyExistsError(f"{root} is already a Strongroom store")
        if root.exists() and any(root.iterdir()):
            raise AlreadyExistsError(f"{root} exists and is not empty: choose a new directory for the store")
        for d in (root, root / "databases", root / "extern"):
            d.mkdir(parents=True, exist_ok=True)
        meta: dict[str, object] = {"format": FORMAT, "id": str(uuid.uuid4()), "created": datetime.now(UTC).isoformat()}
        store = cls(root, meta)
        store._save_meta()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        root = Path(path).absolute()
        try:
            meta = json.loads((root / MARKER).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"{root} is not a Strongroom store (create one with: strongroom init {path})") from None
        if meta.get("format") != FORMAT:
            raise UsageError(f"{root}: unsupported store format {meta.get('format')!r}")
        return cls(root, meta)

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    def _save_meta(self) -> None:
        """Rewrite the store metadata atomically (temp, fsync, rename), so a crash leaves old or new."""
        tmp = self.path / f".{MARKER}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(self.meta, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / MARKER)

    def _regions(self) -> dict[str, str]:
        return self.meta.setdefault("database_regions", {})  # type: ignore[return-value]

    def database_region(self, name: str) -> str | None:
        """The database's home region (``CREATE DATABASE ... PRIMARY REGION``), or None."""
        return self._regions().get(name)

    def set_region(self, name: str, region: str | None) -> None:
        regions = self._regions()
        if regions.get(name) == region:
            return
        if region is None:
            regions.pop(name, None)
        else:
            regions[name] = region
        self._save_meta()

    @property
    def jobs(self) -> JobRegistry:
        """BACKUP and RESTORE jobs run through SQL (``SHOW JOBS``)."""
        if self._jobs is None:
            self._jobs = JobRegistry(self.path / "system.db")
        return self._jobs

    def session(self, database: str | None = None) -> Session:
        """A SQL session on this store (its own current database, ``USE``)."""
        from ..sql.executor import Session

        return Session(self, database)

    def execute(self, sql: str, params: Sequence[object] | None = None) -> Result:
        """Run a script of statements in the store's default session; returns the last statement's result."""
        if self._session is None:
            self._session = self.session()
        results = self._session.execute(sql, params)
        if not results:
            raise UsageError("no statement to execute")
        return results[-1]

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    @property
    def storage_context(self) -> StorageContext:
        return StorageContext(extern_dir=self.extern_dir)

    # -- databases --------------------------------------------------------------------------------
    def database_path(self, name: str) -> Path:
        return self.databases_dir / f"{check_database_name(name)}.db"

    def database_key(self, name: str) -> bytes | None:
        return None

    def databases(self) -> list[str]:
        return sorted(p.stem for p in self.databases_dir.glob("*.db") if _NAME.match(p.stem))

    def has_database(self, name: str) -> bool:
        return self.database_path(name).exists()

    def create_database(self, name: str, *, if_not_exists: bool = False, region: str | None = None) -> None:
        path = self.database_path(name)
        if path.exists():
            if if_not_exists:
                return
            raise AlreadyExistsError(f'database "{name}" already exists')
        conn = connect(path, key=self.database_key(name), create=True)
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
        finally:
            conn.close()
        self.set_region(name, region)

    def drop_database(self, name: str, *, if_exists: bool = False) -> None:
        path = self.database_path(name)
        if not path.exists():
            if if_exists:
                return
            raise NotFoundError(f'database "{name}" does not exist')
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        self.set_region(name, None)

    def connect(self, name: str) -> apsw.Connection:
        """An ordinary apsw connection to a database of the store (WAL mode, 30 s busy timeout)."""
        path = self.database_path(name)
        if not path.exists():
            raise NotFoundError(f'database "{name}" does not exist')
        return connect(path, key=self.database_key(name))

    # -- backup and restore: thin calls into the backup engine --------------------------------------
    def backup(
        self,
        into: str | Sequence[str],
        *,
        databases: list[str] | None = None,
        tables: list[str] | None = None,
        encryption: Encryption | None = None,
        incremental: str | None = None,
        progress: Progress | None = None,
        job_id: int | None = None,
    ) -> JobResult:
        """BACKUP [DATABASE ... | TABLE ...] INTO ... (full), or INTO LATEST / '<subdir>' IN ... (incremental)."""
        return engine.backup(
            into,
            _sources(self, databases, tables),
            encryption=encryption,
            incremental=incremental,
            is_full_cluster=not databases and not tables,
            context=self.storage_context,
            progress=progress,
            job_id=job_id,
        )

    def restore(
        self,
        from_: str | Sequence[str],
        *,
        subdir: str = "LATEST",
        databases: list[str] | None = None,
        tables: list[str] | None = None,
        new_db_name: str | None = None,
        into_db: str | None = None,
        encryption: Encryption | None = None,
        as_of: datetime | None = None,
        progress: Progress | None = None,
        job_id: int | None = None,
    ) -> JobResult:
        if new_db_name is not None:
            check_database_name(new_db_name)
        return engine.restore(
            from_,
            self,
            subdir=subdir,
            encryption=encryption,
            databases=databases,
            tables=tables,
            new_db_name=new_db_name,
            into_db=into_db,
            as_of=as_of,
            context=self.storage_context,
            progress=progress,
            job_id=job_id,
        )

    def show_backups(self, in_: str | Sequence[str]) -> list[str]:
        return engine.show_backups(in_, context=self.storage_context)

    def show_backup(
        self,
        in_: str | Sequence[str],
        *,
        subdir: str = "LATEST",
        encryption: Encryption | None = None,
        check_files: bool = False,
    ) -> ShowBackupResult:
        return engine.show_backup(
            in_, subdir=subdir, encryption=encryption, check_files=check_files, context=self.storage_context
        )

    def alter_backup(
        self, in_: str, *, subdir: str = "LATEST", new_kms: tuple[str, ...], old_kms: tuple[str, ...]
    ) -> str:
        return engine.alter_backup_add_kms(
            in_, subdir=subdir, new_kms=new_kms, old_kms=old_kms, context=self.storage_context
        )


def init_store(path: str | os.PathLike[str]) -> Store:
    return Store.init(path)


def open_store(path: str | os.PathLike[str]) -> Store:
    return Store.open(path)


def _sources(store: Store, databases: list[str] | None, tables: list[str] | None) -> list[DatabaseSource]:
    if databases and tables:
        raise UsageError("back up either databases or tables, not both")
    if tables:
        grouped: dict[str, list[str]] = {}
        for qualified in tables:
            parts = qualified.split(".")
            if len(parts) == 3 and parts[1] == "public":
                parts = [parts[0], parts[2]]
            if len(parts) != 2:
                raise UsageError(f'qualify table "{qualified}" with its database, as database.table')
            grouped.setdefault(parts[0], []).append(parts[1])
        out = []
        for db, names in grouped.items():
            if not store.has_database(db):
                raise NotFoundError(f'database "{db}" does not exist')
            out.append(
                DatabaseSource(
                    db, store.database_path(db), store.database_key(db), tuple(names), store.database_region(db)
                )
            )
        return out
    names = databases or store.databases()
    for db in names:
        if not store.has_database(db):
            raise NotFoundError(f'database "{db}" does not exist')
    if not names:
        raise UsageError("the store has no databases to back up")
    return [
        DatabaseSource(db, store.database_path(db), store.database_key(db), region=store.database_region(db))
        for db in names
    ]
