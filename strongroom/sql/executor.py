"""Runs parsed statements against a store: the one engine behind ``strongroom sql`` and ``Store.execute``.

BACKUP / RESTORE / SHOW BACKUP(S) / ALTER BACKUP are thin calls into the backup engine; database
statements manage the store; anything else goes to SQLite in the session's current database.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import apsw

from ..backup import Encryption, JobResult, new_job_id
from ..backup.destinations import open_destinations
from ..errors import NotFoundError, StrongroomError, UsageError
from ..kms import open_kms
from ..output import render
from ..store.jobs import JOB_COLUMNS
from ..uri import redact
from .ast import (
    LATEST,
    AlterBackup,
    Backup,
    CreateDatabase,
    DropDatabase,
    Options,
    Passthrough,
    Restore,
    ShowBackup,
    ShowBackups,
    ShowDatabases,
    ShowJobs,
    ShowTables,
    Statement,
    Use,
)
from .parser import parse

if TYPE_CHECKING:
    from ..store import Store


@dataclass
class Result:
    """One statement's result: named columns and rows, or just a status tag (``CREATE DATABASE``)."""

    columns: tuple[str, ...] = ()
    rows: list[tuple[object, ...]] = field(default_factory=list)
    status: str = ""

    def render(self, fmt: str = "table") -> str:
        return render(self.columns, self.rows, fmt) if self.columns else self.status


def _encryption(options: Options) -> Encryption:
    return Encryption(passphrase=options.encryption_passphrase, kms=options.kms)


def _collection(destinations: tuple[str, ...]) -> str | tuple[str, ...]:
    """One location, or a locality-aware set of them (the engine checks COCKROACH_LOCALITY)."""
    return destinations[0] if len(destinations) == 1 else destinations


def _location(destinations: tuple[str, ...], subdir: str | None, what: str) -> tuple[str | tuple[str, ...], str]:
    """(collection, subdir) of ``... LATEST | '<subdir>' IN <collection>``, or of ``... '<uri of one backup>'``."""
    if subdir is not None:
        return _collection(destinations), subdir
    if len(destinations) != 1:
        raise UsageError(f"{what} FROM several locations needs LATEST IN (...) or '<subdir>' IN (...)")
    return _split_backup_uri(destinations[0])


def _describe(stmt: Statement) -> str:
    """A job description in CockroachDB's spirit, with every secret redacted."""
    if isinstance(stmt, Backup | Restore):
        verb = "BACKUP" if isinstance(stmt, Backup) else "RESTORE"
        targets = f" {stmt.targets.kind.upper()} {', '.join(stmt.targets.names)}" if stmt.targets else ""
        dests = ", ".join(f"'{redact(d)}'" for d in stmt.destinations)
        dest = dests if len(stmt.destinations) == 1 else f"({dests})"
        prep = "INTO" if isinstance(stmt, Backup) else "FROM"
        where = f"{prep} {dest}"
        if stmt.subdir is not None:
            sub = "LATEST" if stmt.subdir == LATEST else f"'{stmt.subdir}'"
            where = f"{prep} {sub} IN {dest}"
        opts = []
        if stmt.options.encryption_passphrase is not None:
            opts.append("encryption_passphrase = '*****'")
        if stmt.options.kms:
            opts.append("kms = (" + ", ".join(f"'{redact(k)}'" for k in stmt.options.kms) + ")")
        for name in ("new_db_name", "into_db"):
            value = getattr(stmt.options, name)
            if value:
                opts.append(f"{name} = '{value}'")
        if stmt.options.detached:
            opts.append("detached")
        return f"{verb}{targets} {where}" + (f" WITH OPTIONS ({', '.join(opts)})" if opts else "")
    return type(stmt).__name__


def _as_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip("'"))
    except ValueError:
        raise UsageError(f"AS OF SYSTEM TIME {text!r}: give a timestamp such as '2026-11-23 10:00:00' (UTC)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_SUBDIR_AT_END = re.compile(r"^(?P<coll>.*?)/(?P<sub>\d{4}/\d{2}/\d{2}-\d{6}\.\d{2})/?$")


def _split_backup_uri(uri: str) -> tuple[str, str]:
    """``RESTORE FROM '<collection>/2026/11/23-101500.00'``: a URI naming one backup directly."""
    base, sep, query = uri.partition("?")
    m = _SUBDIR_AT_END.match(base)
    if not m:
        raise UsageError(
            f"RESTORE FROM {redact(uri)!r} names no backup: use RESTORE FROM LATEST IN '<collection>' "
            "or FROM '<subdir>' IN '<collection>'"
        )
    return m.group("coll") + (sep + query if query else ""), "/" + m.group("sub")


class Session:
    """A connection to a store: the current database (``USE``) and open SQLite connections."""

    def __init__(self, store: Store, database: str | None = None) -> None:
        self.store = store
        self.database = database
        self._connections: dict[str, apsw.Connection] = {}
        self._threads: list[threading.Thread] = []

    def close(self) -> None:
        self.wait_for_jobs()
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_for_jobs(self) -> None:
        """Wait for detached jobs this session started."""
        for t in self._threads:
            t.join()
        self._threads.clear()

    def execute(self, sql: str, params: Sequence[object] | None = None) -> list[Result]:
        """Run every statement of ``sql``; stops at the first error (statements before it took effect)."""
        return [self.run(stmt, params) for stmt in parse(sql, params)]

    def run(self, stmt: Statement, params: Sequence[object] | None = None) -> Result:
        handler = getattr(self, f"_run_{type(stmt).__name__}")
        return handler(stmt, params)

    # -- database statements ----------------------------------------------------------------------
    def _conn(self, name: str) -> apsw.Connection:
        conn = self._connections.get(name)
        if conn is None:
            conn = self._connections[name] = self.store.connect(name)
        return conn

    def _forget(self, name: str) -> None:
        conn = self._connections.pop(name, None)
        if conn is not None:
            conn.close()

    def _run_CreateDatabase(self, stmt: CreateDatabase, params: object) -> Result:
        self.store.create_database(stmt.name, if_not_exists=stmt.if_not_exists, region=stmt.region)
        return Result(status="CREATE DATABASE")

    def _run_DropDatabase(self, stmt: DropDatabase, params: object) -> Result:
        self._forget(stmt.name)
        self.store.drop_database(stmt.name, if_exists=stmt.if_exists)
        if self.database == stmt.name:
            self.database = None
        return Result(status="DROP DATABASE")

    def _run_ShowDatabases(self, stmt: ShowDatabases, params: object) -> Result:
        return Result(
            ("database_name", "primary_region"),
            [(name, self.store.database_region(name)) for name in self.store.databases()],
        )

    def _run_ShowTables(self, stmt: ShowTables, params: object) -> Result:
        db = stmt.database or self._current()
        conn = self._conn(db)
        rows = []
        for typ, name in conn.execute(
            "SELECT type, name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        ).fetchall():
            count = conn.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0] if typ == "table" else None
            rows.append(("public", name, typ, count))
        return Result(("schema_name", "table_name", "type", "estimated_row_count"), rows)

    def _run_Use(self, stmt: Use, params: object) -> Result:
        if not self.store.has_database(stmt.name):
            raise NotFoundError(f'database "{stmt.name}" does not exist')
        self.database = stmt.name
        return Result(status="SET")

    def _current(self) -> str:
        if self.database is None:
            raise UsageError("no database is selected: USE <database> first (SHOW DATABASES lists them)")
        return self.database

    def _run_Passthrough(self, stmt: Passthrough, params: Sequence[object] | None) -> Result:
        conn = self._conn(self._current())
        bindings = {str(i + 1): v for i, v in enumerate(params)} if params and "$" in stmt.sql else None
        described: list[tuple[str, ...]] = []

        def trace(cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
            # The only moment the column names are known even when no row comes back.
            described.append(tuple(d[0] for d in cursor.get_description()))
            return True

        try:
            cursor = conn.cursor()
            cursor.exec_trace = trace
            rows = [tuple(r) for r in cursor.execute(stmt.sql, bindings)]
            columns = described[-1] if described else ()
        except apsw.AuthError:
            raise UsageError(
                "not authorized: a store database's keys and encryption are managed by the store "
                "(key and cipher pragmas, temp files on disk, ATTACH and VACUUM INTO are refused)"
            ) from None
        except apsw.Error as exc:
            raise UsageError(str(exc)) from None
        if columns:
            return Result(columns, rows)
        verb = stmt.sql.split(None, 1)[0].upper() if stmt.sql.split() else ""
        return Result(status=f"{verb} {conn.changes()}" if verb in ("INSERT", "UPDATE", "DELETE") else verb)

    # -- jobs -------------------------------------------------------------------------------------
    def _check_uris(self, stmt: Backup | Restore) -> None:
        """Planning errors (bad URI, unknown scheme or parameter) surface now, even for detached jobs."""
        open_destinations(stmt.destinations, self.store.storage_context).close()
        for uri in stmt.options.kms:
            open_kms(uri).close()

    def _job(self, stmt: Backup | Restore, job_type: str, work: object) -> Result:
        self._check_uris(stmt)
        job_id = new_job_id()
        jobs = self.store.jobs
        jobs.start(job_id, job_type, _describe(stmt))
        progress = jobs.progress_callback(job_id)

        def run() -> JobResult:
            try:
                result: JobResult = work(job_id, progress)  # type: ignore[operator]
            except StrongroomError as exc:
                jobs.finish(job_id, str(exc))
                raise
            except BaseException as exc:
                jobs.finish(job_id, f"internal error: {type(exc).__name__}")
                raise
            jobs.finish(job_id)
            return result

        if stmt.options.detached:

            def background() -> None:
                with suppress(BaseException):  # the outcome is recorded in the job registry
                    run()

            thread = threading.Thread(target=background, name=f"job-{job_id}", daemon=False)
            thread.start()
            self._threads.append(thread)
            return Result(("job_id",), [(job_id,)])
        result = run()
        return Result(JobResult.COLUMNS, [result.row()])

    def _run_ShowJobs(self, stmt: ShowJobs, params: object) -> Result:
        rows = [j.row() for j in self.store.jobs.list(stmt.job_id)]
        if stmt.job_id is not None and not rows:
            raise NotFoundError(f"job with ID {stmt.job_id} does not exist")
        return Result(JOB_COLUMNS, rows)

    # -- backup statements ------------------------------------------------------------------------
    def _targets(self, stmt: Backup | Restore) -> tuple[list[str] | None, list[str] | None]:
        """(databases, tables) named by ``DATABASE ...`` / ``TABLE ...``; unqualified tables are in the current db."""
        if stmt.targets is None:
            return None, None
        if stmt.targets.kind == "database":
            return list(stmt.targets.names), None
        return None, [n if "." in n else f"{self._current()}.{n}" for n in stmt.targets.names]

    def _run_Backup(self, stmt: Backup, params: object) -> Result:
        if stmt.as_of is not None:
            raise UsageError("BACKUP ... AS OF SYSTEM TIME is not supported: a backup is a snapshot taken now")
        dest = _collection(stmt.destinations)
        databases, tables = self._targets(stmt)
        enc = _encryption(stmt.options)
        incremental = stmt.subdir

        def work(job_id: int, progress: object) -> JobResult:
            return self.store.backup(
                dest,
                databases=databases,
                tables=tables,
                encryption=enc,
                incremental=incremental,
                progress=progress,  # type: ignore[arg-type]
                job_id=job_id,
            )

        return self._job(stmt, "BACKUP", work)

    def _run_Restore(self, stmt: Restore, params: object) -> Result:
        dest, subdir = _location(stmt.destinations, stmt.subdir, "RESTORE")
        databases, tables = self._targets(stmt)
        as_of = _as_of(stmt.as_of)
        enc = _encryption(stmt.options)
        for name in (stmt.options.new_db_name, stmt.options.into_db):
            if name is not None:
                self._forget(name)

        def work(job_id: int, progress: object) -> JobResult:
            return self.store.restore(
                dest,
                subdir=subdir,
                databases=databases,
                tables=tables,
                new_db_name=stmt.options.new_db_name,
                into_db=stmt.options.into_db,
                encryption=enc,
                as_of=as_of,
                progress=progress,  # type: ignore[arg-type]
                job_id=job_id,
            )

        return self._job(stmt, "RESTORE", work)

    def _run_ShowBackups(self, stmt: ShowBackups, params: object) -> Result:
        dest = _collection(stmt.destinations)
        return Result(("path",), [(p,) for p in self.store.show_backups(dest)])

    def _run_ShowBackup(self, stmt: ShowBackup, params: object) -> Result:
        dest, subdir = _location(stmt.destinations, stmt.subdir, "SHOW BACKUP")
        shown = self.store.show_backup(
            dest, subdir=subdir, encryption=_encryption(stmt.options), check_files=stmt.options.check_files
        )
        return Result(shown.columns, shown.rows)

    def _run_AlterBackup(self, stmt: AlterBackup, params: object) -> Result:
        dest, subdir = _location(stmt.destinations, stmt.subdir, "ALTER BACKUP")
        self.store.alter_backup(dest, subdir=subdir, new_kms=stmt.new_kms, old_kms=stmt.old_kms)
        return Result(status="ALTER BACKUP")
