"""Runs parsed statements against a store: the one engine behind ``strongroom sql`` and ``Store.execute``.

BACKUP / RESTORE / SHOW BACKUP(S) / ALTER BACKUP build the same request objects the CLI and the
Python API build and hand them to the store's backups part (which runs them as jobs); database
statements manage the store; anything else goes to SQLite in the session's current database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import apsw

from ..backup import AlterBackupRequest, BackupRequest, Encryption, JobResult, RestoreRequest, ShowBackupRequest
from ..backup.reader import BackupReader
from ..backup.requests import parse_as_of
from ..errors import NotFoundError, UsageError
from ..output import render
from ..store.jobs import JOB_COLUMNS, UNFINISHED
from ..store.schedules import CREATE_COLUMNS, SHOW_COLUMNS, CreateScheduleRequest, ScheduleOptions
from ..uri import redact
from .ast import (
    AlterBackup,
    Backup,
    CancelJob,
    ControlSchedule,
    CreateDatabase,
    CreateSchedule,
    DropDatabase,
    Options,
    Passthrough,
    Restore,
    ShowBackup,
    ShowBackups,
    ShowDatabases,
    ShowJobs,
    ShowSchedules,
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
    #: What the statement left out on request (a foreign key skipped by
    #: skip_missing_foreign_keys); the shell prints them apart from the result.
    notices: tuple[str, ...] = ()

    def render(self, fmt: str = "table") -> str:
        return render(self.columns, self.rows, fmt) if self.columns else self.status


def _encryption(options: Options) -> Encryption:
    return Encryption(
        passphrase=options.encryption_passphrase,
        kms=options.kms,
        groups=options.kms_groups,
        threshold=options.kms_threshold,
    )


def _location(destinations: tuple[str, ...], subdir: str | None, what: str) -> tuple[tuple[str, ...], str]:
    """(collection, subdir) of ``... LATEST | '<subdir>' IN <collection>``, or of ``... '<uri of one backup>'``."""
    if subdir is not None:
        return destinations, subdir
    if len(destinations) != 1:
        raise UsageError(f"{what} FROM several locations needs LATEST IN (...) or '<subdir>' IN (...)")
    collection, sub = _split_backup_uri(destinations[0])
    return (collection,), sub


def _as_of(text: str | None) -> datetime | None:
    return None if text is None else parse_as_of(text)


def _first_run(text: str | None) -> datetime | None:
    """``first_run = 'now'`` or a timestamp (UTC unless it says otherwise)."""
    if text is None or text.strip().lower() == "now":
        return None
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"first_run = {text!r}: give 'now' or a timestamp such as '2026-12-03 01:00:00+00:00'"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


_WHEN_COMPLETE_POLL_S = 0.05
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

    #: The PostgreSQL server BACKUP reads and RESTORE writes (strongroom.postgres.PostgresSession);
    #: None: the store's own databases.
    postgres: str | None = None

    def __init__(self, store: Store, database: str | None = None) -> None:
        self.store = store
        self.database = database
        self._connections: dict[str, apsw.Connection] = {}

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_for_jobs(self) -> None:
        """Wait for the store's detached jobs."""
        self.store.jobs.wait()

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
        rows: list[tuple[object, ...]] = []
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
    def _job(self, request: BackupRequest | RestoreRequest) -> Result:
        backups = self.store.backups
        if request.detached:
            return Result(("job_id",), [(backups.detach(request),)])
        result = backups.backup(request) if isinstance(request, BackupRequest) else backups.restore(request)
        return Result(JobResult.COLUMNS, [result.row()], notices=result.notes)

    def _run_ShowJobs(self, stmt: ShowJobs, params: object) -> Result:
        if stmt.when_complete:
            # CockroachDB blocks until every job named is done; jobs may run in other processes, so
            # the registry is what is watched (Ctrl-C stops the wait, not the jobs).
            while True:
                jobs = []
                for job_id in stmt.when_complete:
                    found = self.store.jobs.list(job_id)
                    if not found:
                        raise NotFoundError(f"job with ID {job_id} does not exist")
                    jobs.append(found[0])
                if all(j.status not in UNFINISHED for j in jobs):
                    return Result(JOB_COLUMNS, [j.row() for j in jobs])
                time.sleep(_WHEN_COMPLETE_POLL_S)
        rows = [j.row() for j in self.store.jobs.list(stmt.job_id)]
        if stmt.job_id is not None and not rows:
            raise NotFoundError(f"job with ID {stmt.job_id} does not exist")
        return Result(JOB_COLUMNS, rows)

    # -- schedules --------------------------------------------------------------------------------
    def _run_CreateSchedule(self, stmt: CreateSchedule, params: object) -> Result:
        if stmt.recurrence is None:
            raise UsageError("RECURRING NEVER: a backup schedule needs a crontab, such as RECURRING '@daily'")
        backup = self._backup_request(stmt, None)
        raw = dict(stmt.schedule_options)
        first_run = raw.pop("first_run", None)
        options = ScheduleOptions(first_run=_first_run(first_run), **raw)  # type: ignore[arg-type]
        request = CreateScheduleRequest(
            stmt.label, backup, stmt.recurrence, stmt.full_backup, options, if_not_exists=stmt.if_not_exists
        )
        return Result(CREATE_COLUMNS, [row.create_row() for row in self.store.schedules.create(request)])

    def _run_ShowSchedules(self, stmt: ShowSchedules, params: object) -> Result:
        schedules = self.store.schedules
        if stmt.schedule_id is not None:
            return Result(SHOW_COLUMNS, [schedules.get(stmt.schedule_id).show_row()])
        return Result(SHOW_COLUMNS, [row.show_row() for row in schedules.show(stmt.status)])

    def _run_ControlSchedule(self, stmt: ControlSchedule, params: object) -> Result:
        schedules = self.store.schedules
        {"PAUSE": schedules.pause, "RESUME": schedules.resume, "DROP": schedules.drop}[stmt.action](stmt.schedule_id)
        return Result(status=f"{stmt.action} SCHEDULE")

    def _run_CancelJob(self, stmt: CancelJob, params: object) -> Result:
        self.store.jobs.cancel(stmt.job_id)
        return Result(status="CANCEL JOBS 1")  # CockroachDB's command tag

    # -- backup statements ------------------------------------------------------------------------
    def _targets(
        self, stmt: Backup | Restore | CreateSchedule
    ) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        """(databases, tables) named by ``DATABASE ...`` / ``TABLE ...``; unqualified tables are in the current db."""
        if stmt.targets is None:
            return None, None
        if stmt.targets.kind == "database":
            return tuple(stmt.targets.names), None
        return None, tuple(n if "." in n else f"{self._current()}.{n}" for n in stmt.targets.names)

    def _run_Backup(self, stmt: Backup, params: object) -> Result:
        if stmt.as_of is not None:
            raise UsageError("BACKUP ... AS OF SYSTEM TIME is not supported: a backup is a snapshot taken now")
        return self._job(self._backup_request(stmt, stmt.subdir))

    def _backup_request(self, stmt: Backup | CreateSchedule, incremental: str | None) -> BackupRequest:
        databases, tables = self._targets(stmt)
        return BackupRequest(
            into=stmt.destinations,
            databases=databases,
            tables=tables,
            encryption=_encryption(stmt.options),
            incremental=incremental,
            detached=stmt.options.detached,
            include_unencrypted_data=stmt.options.include_unencrypted_data,
            postgres=self.postgres,
        )

    def _run_Restore(self, stmt: Restore, params: object) -> Result:
        dest, subdir = _location(stmt.destinations, stmt.subdir, "RESTORE")
        databases, tables = self._targets(stmt)
        request = RestoreRequest(
            from_=dest,
            subdir=subdir,
            databases=databases,
            tables=tables,
            new_db_name=stmt.options.new_db_name,
            into_db=stmt.options.into_db,
            encryption=_encryption(stmt.options),
            as_of=_as_of(stmt.as_of),
            detached=stmt.options.detached,
            verify=stmt.options.verify,
            schema_only=stmt.options.schema_only,
            verify_backup_table_data=stmt.options.verify_backup_table_data,
            skip_missing_foreign_keys=stmt.options.skip_missing_foreign_keys,
            postgres=self.postgres,
        )
        for name in (request.new_db_name, request.into_db):
            if name is not None:
                self._forget(name)
        return self._job(request)

    def _run_ShowBackups(self, stmt: ShowBackups, params: object) -> Result:
        dest = stmt.destinations[0] if len(stmt.destinations) == 1 else stmt.destinations
        # ``path`` first, as CockroachDB; ``status`` is Strongroom's: a killed backup's dir is shown
        # as partial (never used), one whose manifest was removed as such (tampering).
        return Result(("path", "status"), list(self.store.backups.show_backups_detail(dest)))

    def _run_ShowBackup(self, stmt: ShowBackup, params: object) -> Result:
        dest, subdir = _location(stmt.destinations, stmt.subdir, "SHOW BACKUP")
        request = ShowBackupRequest(
            in_=dest, subdir=subdir, encryption=_encryption(stmt.options), check_files=stmt.options.check_files
        )
        shown = self.store.backups.show_backup(request)
        return Result(shown.columns, shown.rows)

    def _run_AlterBackup(self, stmt: AlterBackup, params: object) -> Result:
        dest, subdir = _location(stmt.destinations, stmt.subdir, "ALTER BACKUP")
        request = AlterBackupRequest(
            in_=dest,
            subdir=subdir,
            new_kms=stmt.new_kms,
            old_kms=stmt.old_kms,
            drop_kms=stmt.drop_kms,
            rotate=stmt.rotate,
        )
        if request.action == "add":  # CockroachDB's statement: no rows
            self.store.backups.alter(request)
            return Result(status="ALTER BACKUP")
        done = self.store.backups.alter(request)
        return Result(done.COLUMNS, [done.row])


class BackupSession(Session):
    """SQL on a backup where it lies (``strongroom sql --backup``): the databases of one restore
    point, read-only, straight from the backup image. SQLite statements and SHOW DATABASES / TABLES
    and USE work; statements that change or take backups are refused."""

    _READ_ONLY = frozenset({"ShowDatabases", "ShowTables", "Use", "Passthrough"})

    def __init__(self, reader: BackupReader, database: str | None = None) -> None:
        # No store: only the read-only handlers above run, and they use connections and the reader.
        self.reader = reader
        only = reader.databases[0] if len(reader.databases) == 1 else None
        self.database = database if database is not None else only
        self._connections = {}

    def run(self, stmt: Statement, params: Sequence[object] | None = None) -> Result:
        kind = type(stmt).__name__
        if kind not in self._READ_ONLY:
            statement = re.sub(r"(?<!^)(?=[A-Z])", " ", kind).upper()  # CreateDatabase -> CREATE DATABASE
            raise UsageError(f"{statement} is not available on a backup opened read-only (strongroom sql --backup)")
        return super().run(stmt, params)

    def close(self) -> None:
        super().close()
        self.reader.close()

    def _conn(self, name: str) -> apsw.Connection:
        conn = self._connections.get(name)
        if conn is None:
            conn = self._connections[name] = self.reader.connect(name)
        return conn

    def _run_ShowDatabases(self, stmt: ShowDatabases, params: object) -> Result:
        regions = {d.name: d.region for d in self.reader.manifest.databases}
        return Result(("database_name", "primary_region"), [(n, regions.get(n)) for n in self.reader.databases])

    def _run_Use(self, stmt: Use, params: object) -> Result:
        if stmt.name not in self.reader.databases:
            raise NotFoundError(f'database "{stmt.name}" is not in this backup')
        self.database = stmt.name
        return Result(status="SET")

    def _run_Passthrough(self, stmt: Passthrough, params: Sequence[object] | None) -> Result:
        try:
            return super()._run_Passthrough(stmt, params)
        except UsageError as exc:
            if "readonly" in str(exc) or "read-only" in str(exc):
                raise UsageError(f"a backup opened with --backup is read-only: {exc}") from None
            raise
