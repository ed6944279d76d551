"""Backup schedules: CockroachDB's ``CREATE SCHEDULE FOR BACKUP``, ``SHOW SCHEDULES``, ``PAUSE``,
``RESUME`` and ``DROP SCHEDULE``, run by ``strongroom serve`` or ``strongroom schedules run-due``.

As in CockroachDB, one ``CREATE SCHEDULE`` makes up to two schedules with one label: a full-backup
schedule and, unless ``FULL BACKUP ALWAYS``, an incremental one that starts paused ("Waiting for
initial backup to complete") and is resumed by the first full backup that succeeds. Without a
``FULL BACKUP`` clause the full cadence follows CockroachDB's rule: incrementals at most hourly get
a daily full, at most daily a weekly full, anything rarer is always full.

Where things live:

- each schedule's row is in ``<store>/system.db`` (beside the jobs): its label, state, next run and
  the statement it runs, redacted as ``SHOW JOBS`` redacts (the row never holds a secret);
- what the statement needs to run later (its collection URIs, KMS URIs or passphrase) is sealed in
  the data-key registry of the store's primary region, under that region's store key, which the
  CMEK wraps (see keys.py ``Registry.secrets``). A revoked CMEK leaves it unreadable, and every
  schedule stops, paused, with a state that says why and what to do.

A run is claimed in one ``BEGIN IMMEDIATE`` transaction, so two processes running due schedules at
the same moment (serve and a timer) never start one run twice; the claim names its owner (host,
boot, process), so a killed run does not block ``on_previous_running = 'wait'`` forever.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import apsw
from croniter import croniter

from ..backup.jobs import JobResult, job_id_floor, new_job_id
from ..backup.keys import Encryption
from ..backup.owners import lock_content, owner_gone
from ..backup.requests import LATEST, BackupRequest
from ..backup.retention import RetentionPolicy
from ..errors import KMSError, NotFoundError, StrongroomError, UsageError
from . import systemdb
from .jobs import _user
from .keys import REVOKED

if TYPE_CHECKING:
    from .backups import Backups
    from .cmek import KeyHierarchy
    from .meta import StoreMeta

# CockroachDB's result columns.
CREATE_COLUMNS = ("schedule_id", "label", "status", "first_run", "schedule", "backup_stmt")
SHOW_COLUMNS = (
    "id",
    "label",
    "schedule_status",
    "next_run",
    "state",
    "recurrence",
    "jobsrunning",
    "owner",
    "created",
    "command",
)
RUN_COLUMNS = ("schedule_id", "label", "backup_type", "job_id", "status", "next_run", "error")

ACTIVE, PAUSED = "ACTIVE", "PAUSED"
FULL, INCREMENTAL = "full", "incremental"
WAITING_FOR_FULL = "Waiting for initial backup to complete"
ALWAYS = "ALWAYS"
ON_EXECUTION_FAILURE = ("retry", "reschedule", "pause")
ON_PREVIOUS_RUNNING = ("wait", "skip", "start")
_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_SECRET_PREFIX = "schedule:"


def _now() -> datetime:
    return datetime.now(UTC)


def _shown(at: datetime | None) -> str | None:
    """A timestamp as CockroachDB prints a TIMESTAMPTZ: ``2026-12-02 03:00:00+00:00``."""
    return None if at is None else at.astimezone(UTC).isoformat(sep=" ")


def _parsed(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# ------------------------------------------------------------------------------------------- crontab


def check_crontab(expr: str, clause: str) -> str:
    """A crontab expression as CockroachDB takes it (five fields, or a macro such as ``@daily``); UTC."""
    text = expr.strip()
    macro = text.lower()
    if macro.startswith("@"):
        if macro not in _MACROS:
            raise UsageError(f"{clause} {expr!r}: unknown macro (use one of {', '.join(_MACROS)})")
        return macro
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise UsageError(
            f"{clause} {expr!r}: not a crontab expression (five fields such as '0 * * * *', or @hourly, @daily, "
            "@weekly, @monthly)"
        )
    return text


def next_run(expr: str, after: datetime) -> datetime:
    """The first time ``expr`` fires strictly after ``after`` (UTC)."""
    value = croniter(expr, after.astimezone(UTC)).get_next(datetime)
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def frequency(expr: str, now: datetime) -> timedelta:
    """How often ``expr`` fires, measured as CockroachDB does: between its next two runs."""
    first = next_run(expr, now)
    return next_run(expr, first) - first


def default_full_recurrence(incremental: str, now: datetime) -> str | None:
    """CockroachDB's full cadence when no ``FULL BACKUP`` clause is given (None: always full)."""
    every = frequency(incremental, now)
    if every <= timedelta(hours=1):
        return "@daily"
    if every <= timedelta(days=1):
        return "@weekly"
    return None


# ------------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class ScheduleOptions:
    """``WITH SCHEDULE OPTIONS``: CockroachDB's, plus Strongroom's ``retention``."""

    first_run: datetime | None = None
    on_execution_failure: str = "reschedule"
    on_previous_running: str = "wait"
    ignore_existing_backups: bool = False
    #: Strongroom's addition: a forget policy (``'keep-daily=7,keep-weekly=4'``) applied to the
    #: collection after each successful run.
    retention: str | None = None

    def __post_init__(self) -> None:
        fail = self.on_execution_failure.lower()
        running = self.on_previous_running.lower()
        if fail not in ON_EXECUTION_FAILURE:
            raise UsageError(
                f"on_execution_failure = {self.on_execution_failure!r}: "
                f"expected one of {', '.join(ON_EXECUTION_FAILURE)}"
            )
        if running not in ON_PREVIOUS_RUNNING:
            raise UsageError(
                f"on_previous_running = {self.on_previous_running!r}: expected one of {', '.join(ON_PREVIOUS_RUNNING)}"
            )
        object.__setattr__(self, "on_execution_failure", fail)
        object.__setattr__(self, "on_previous_running", running)

    def to_doc(self) -> dict[str, object]:
        return {
            "on_execution_failure": self.on_execution_failure,
            "on_previous_running": self.on_previous_running,
            "retention": self.retention,
        }


@dataclass(frozen=True)
class CreateScheduleRequest:
    """``CREATE SCHEDULE [IF NOT EXISTS] <label> FOR BACKUP ... RECURRING ... [FULL BACKUP ...]``.

    ``backup`` is the statement to run (its ``incremental`` is ignored: the schedules decide);
    ``full_backup`` is a crontab, ``ALWAYS``, or None for CockroachDB's default."""

    label: str | None
    backup: BackupRequest
    recurrence: str
    full_backup: str | None = None
    options: ScheduleOptions = field(default_factory=ScheduleOptions)
    if_not_exists: bool = False


def _secret_doc(request: BackupRequest) -> str:
    enc = request.encryption
    return json.dumps(
        {
            "into": list(request.into),
            "databases": list(request.databases or ()),
            "tables": list(request.tables or ()),
            "kms": list(enc.kms),
            "groups": [list(g) for g in enc.groups],
            "threshold": enc.threshold,
            "passphrase": enc.passphrase,
            "include_unencrypted_data": request.include_unencrypted_data,
            "postgres": request.postgres,  # a DSN may hold a password: sealed with the rest
        }
    )


def _request_from(doc_text: str, kind: str) -> BackupRequest:
    doc = json.loads(doc_text)
    return BackupRequest(
        into=tuple(doc["into"]),
        databases=tuple(doc["databases"]) or None,
        tables=tuple(doc["tables"]) or None,
        encryption=Encryption(
            passphrase=doc["passphrase"],
            kms=tuple(doc["kms"]),
            # Key groups split each new full backup's key; an incremental needs only the keys.
            groups=tuple(tuple(g) for g in doc.get("groups", [])) if kind == FULL else (),
            threshold=int(doc.get("threshold", 0)) if kind == FULL else 0,
        ),
        incremental=LATEST if kind == INCREMENTAL else None,
        include_unencrypted_data=bool(doc["include_unencrypted_data"]),
        postgres=doc.get("postgres"),
    )


# --------------------------------------------------------------------------------------------- rows


@dataclass
class ScheduleRow:
    id: int
    label: str
    kind: str
    status: str
    state: str | None
    next_run: str | None
    recurrence: str
    owner: str
    created: str
    statement: str  # the backup statement, redacted (BackupRequest.describe)
    paired_id: int | None
    secret: str
    options: str  # JSON of ScheduleOptions.to_doc()
    running: str | None  # JSON {"owner": lock_content, "claimed": ...} of the run in progress
    last_success: str | None = None  # when a run last succeeded (for /metrics)

    @property
    def schedule_options(self) -> dict[str, object]:
        doc = json.loads(self.options)
        assert isinstance(doc, dict)
        return doc

    def jobs_running(self) -> int:
        return 1 if self.running is not None and run_alive(self.running) else 0

    def command(self) -> str:
        """SHOW SCHEDULES' ``command``: CockroachDB's JSON (ids as strings, so jq keeps them whole)."""
        doc: dict[str, object] = {
            "backup_statement": self.statement,
            "backup_type": 0 if self.kind == FULL else 1,
        }
        if self.paired_id is not None:
            doc["dependent_schedule_id"] = str(self.paired_id)
        retention = self.schedule_options.get("retention")
        if retention:
            doc["retention"] = retention
        return json.dumps(doc)

    def show_row(self) -> tuple[object, ...]:
        return (
            self.id,
            self.label,
            self.status,
            self.next_run,
            self.state,
            self.recurrence,
            self.jobs_running(),
            self.owner,
            self.created,
            self.command(),
        )

    def create_row(self) -> tuple[object, ...]:
        status = self.status if not self.state or self.status == ACTIVE else f"{self.status}: {self.state}"
        return (self.id, self.label, status, self.next_run, self.recurrence, self.statement)


_ROW_COLUMNS = (
    "id, label, kind, status, state, next_run, recurrence, owner, created, statement, paired_id, secret, "
    "options, running, last_success"
)


def run_alive(running: str) -> bool:
    """Is the run a claim names still going? Same host: only if its process is (a reboot ends every
    run). Another host: assumed running, since nothing here can tell."""
    try:
        owner = json.loads(running)["owner"]
        host = json.loads(owner)["host"]
    except (ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return True
    return not owner_gone(owner.encode()) and not _rebooted(owner)


def _rebooted(owner: str) -> bool:
    mine = json.loads(lock_content())
    return bool(json.loads(owner).get("boot_id") != mine.get("boot_id"))


@dataclass(frozen=True)
class ScheduleRun:
    """One run by ``run_due``: what ran and how it ended (or why it did not run)."""

    schedule_id: int
    label: str
    backup_type: str
    job_id: int | None
    status: str  # succeeded | failed | skipped | paused
    next_run: str | None
    error: str | None = None

    def row(self) -> tuple[object, ...]:
        return (self.schedule_id, self.label, self.backup_type, self.job_id, self.status, self.next_run, self.error)


# ----------------------------------------------------------------------------------------- registry


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schedules (id INTEGER PRIMARY KEY, label TEXT NOT NULL, kind TEXT NOT NULL, "
    "status TEXT NOT NULL, state TEXT, next_run TEXT, recurrence TEXT NOT NULL, owner TEXT NOT NULL, "
    "created TEXT NOT NULL, statement TEXT NOT NULL, paired_id INTEGER, secret TEXT NOT NULL, options TEXT NOT NULL, "
    "running TEXT, last_success TEXT)"
)


class ScheduleTable:
    """The ``schedules`` table of system.db."""

    def __init__(self, path: Path) -> None:
        self._table = systemdb.Table(path, _SCHEMA)
        self._lock = threading.Lock()

    def _connect(self) -> apsw.Connection:
        return self._table.connect()

    @contextmanager
    def transaction(self) -> Iterator[apsw.Connection]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``) so a read-then-update is atomic
        across processes."""
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                conn.close()

    def rows(
        self, conn: apsw.Connection | None = None, where: str = "", args: tuple[object, ...] = ()
    ) -> list[ScheduleRow]:
        own = conn is None
        c = conn or self._connect()
        try:
            found = c.execute(f"SELECT {_ROW_COLUMNS} FROM schedules {where} ORDER BY created, id", args).fetchall()
        finally:
            if own:
                c.close()
        return [ScheduleRow(*r) for r in found]  # type: ignore[arg-type]  # the columns of _ROW_COLUMNS

    def get(self, schedule_id: int, conn: apsw.Connection | None = None) -> ScheduleRow:
        found = self.rows(conn, "WHERE id = ?", (schedule_id,))
        if not found:
            raise NotFoundError(f"schedule {schedule_id} does not exist")
        return found[0]

    @staticmethod
    def insert(conn: apsw.Connection, row: ScheduleRow) -> None:
        conn.execute(
            f"INSERT INTO schedules ({_ROW_COLUMNS}) VALUES ({', '.join('?' * 15)})",
            (
                row.id,
                row.label,
                row.kind,
                row.status,
                row.state,
                row.next_run,
                row.recurrence,
                row.owner,
                row.created,
                row.statement,
                row.paired_id,
                row.secret,
                row.options,
                row.running,
                row.last_success,
            ),
        )

    @staticmethod
    def set(conn: apsw.Connection, schedule_id: int, **values: object) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        conn.execute(f"UPDATE schedules SET {assignments} WHERE id = ?", (*values.values(), schedule_id))


# ------------------------------------------------------------------------------------------ the part


class Schedules:
    """The store's backup schedules: create, show, pause, resume, drop, and run the due ones."""

    def __init__(self, path: Path, meta: StoreMeta, keys: KeyHierarchy, backups: Backups) -> None:
        self.table = ScheduleTable(path)
        self.meta = meta
        self.keys = keys
        self.backups = backups

    # -- statements -------------------------------------------------------------------------------
    def create(self, request: CreateScheduleRequest, now: datetime | None = None) -> list[ScheduleRow]:
        """``CREATE SCHEDULE FOR BACKUP``: the rows CockroachDB returns (the incremental first)."""
        now = now or _now()
        label = request.label if request.label is not None else "BACKUP"
        if not label.strip():
            raise UsageError("a schedule label must not be empty")
        recurrence = check_crontab(request.recurrence, "RECURRING")
        full_clause = request.full_backup
        if full_clause is None:
            full_recurrence = default_full_recurrence(recurrence, now)
        elif full_clause.upper() == ALWAYS:
            full_recurrence = None
        else:
            full_recurrence = check_crontab(full_clause, "FULL BACKUP")
        options = request.options
        if options.retention is not None:
            RetentionPolicy.parse(options.retention)  # a bad policy is refused now, not at the first run
        backup = replace(request.backup, incremental=None, detached=False)
        # The checks BACKUP itself makes, now rather than at 3 a.m.: every URI and KMS opens, every
        # target exists, a plaintext backup of encrypted data has consent.
        self.backups.plan(backup)
        self.backups.check_targets(backup)
        if not options.ignore_existing_backups and self.backups.show_backups(backup.collection):
            raise UsageError(
                f"backups already created in {backup.shown_collection}; "
                "to ignore existing backups, the schedule can be created with the 'ignore_existing_backups' option"
            )
        full_id = new_job_id()
        inc_id = new_job_id() if full_recurrence is not None else None
        secret = f"{_SECRET_PREFIX}{full_id}"
        owner, created = _user(), _shown(now)
        assert created is not None
        first_run = options.first_run or now
        # The statements as SHOW SCHEDULES prints them: redacted, and detached as CockroachDB runs them.
        full_stmt = replace(backup, detached=True).describe()
        inc_stmt = replace(backup, detached=True, incremental=LATEST).describe()
        opts = json.dumps(options.to_doc())
        rows = []
        common = {"label": label, "owner": owner, "created": created, "secret": secret, "options": opts}
        if inc_id is not None:
            rows.append(
                ScheduleRow(
                    id=inc_id,
                    kind=INCREMENTAL,
                    status=PAUSED,
                    state=WAITING_FOR_FULL,
                    next_run=None,
                    recurrence=recurrence,
                    statement=inc_stmt,
                    paired_id=full_id,
                    running=None,
                    **common,
                )
            )
        rows.append(
            ScheduleRow(
                id=full_id,
                kind=FULL,
                status=ACTIVE,
                state=None,
                next_run=_shown(first_run),
                recurrence=full_recurrence or recurrence,
                statement=full_stmt,
                paired_id=inc_id,
                running=None,
                **common,
            )
        )
        region_keys = self.keys.region_keys(self._secret_region())
        # The secret first: a crash before the rows leaves an unreferenced secret, which run_due
        # sweeps; never a row whose secret is missing.
        region_keys.keep_secret(secret, _secret_doc(backup))
        try:
            with self.table.transaction() as conn:
                if request.if_not_exists and self.table.rows(conn, "WHERE label = ?", (label,)):
                    rows = []
                for row in rows:
                    self.table.insert(conn, row)
        finally:
            if not rows:
                region_keys.keep_secret(secret, None)
        return rows

    def show(self, status: str | None = None) -> list[ScheduleRow]:
        """``SHOW SCHEDULES`` (``status``: ACTIVE for SHOW RUNNING SCHEDULES, PAUSED for SHOW PAUSED ...)."""
        if status is None:
            return self.table.rows()
        return self.table.rows(None, "WHERE status = ?", (status,))

    def get(self, schedule_id: int) -> ScheduleRow:
        return self.table.get(schedule_id)

    def pause(self, schedule_id: int) -> None:
        with self.table.transaction() as conn:
            self.table.get(schedule_id, conn)
            self.table.set(conn, schedule_id, status=PAUSED, next_run=None, state="paused by the user")

    def resume(self, schedule_id: int, now: datetime | None = None) -> None:
        """``RESUME SCHEDULE``: active again from the next time its crontab fires."""
        now = now or _now()
        with self.table.transaction() as conn:
            row = self.table.get(schedule_id, conn)
            if row.status == ACTIVE:
                return
            self.table.set(conn, schedule_id, status=ACTIVE, state=None, next_run=_shown(next_run(row.recurrence, now)))

    def drop(self, schedule_id: int) -> None:
        """``DROP SCHEDULE``: the row goes; its sealed secret goes with the last row that uses it."""
        with self.table.transaction() as conn:
            row = self.table.get(schedule_id, conn)
            conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
            conn.execute("UPDATE schedules SET paired_id = NULL WHERE paired_id = ?", (schedule_id,))
            still_used = bool(self.table.rows(conn, "WHERE secret = ?", (row.secret,)))
        if not still_used:
            # A store that cannot open its keys now (CMEK revoked) keeps the sealed secret until
            # run_due sweeps unreferenced ones.
            with suppress(StrongroomError):
                self.keys.region_keys(self._secret_region()).keep_secret(row.secret, None)

    # -- running ----------------------------------------------------------------------------------
    def run_due(self, now: datetime | None = None) -> list[ScheduleRun]:
        """Run every schedule whose next run has come, one after another; each run's outcome sets the
        schedule's next run as its options say. Nothing due: []."""
        now = now or _now()
        revoked = [r for r in self.meta.regions if self.keys.spec_on_disk(r).status == REVOKED]
        if revoked:
            return self._stop_all(revoked)
        self._sweep_secrets()
        runs = []
        for row in self.table.rows(None, "WHERE status = ?", (ACTIVE,)):
            due = _parsed(row.next_run)
            if due is None or due > now:
                continue
            run = self._run_one(row.id, now)
            if run is not None:
                runs.append(run)
        return runs

    def run_now(self, schedule_id: int) -> ScheduleRun:
        """Run one active schedule at once, whatever its next run (the console's "run now"); its next
        run then counts from now, as after any run."""
        now = _now()
        with self.table.transaction() as conn:
            row = self.table.get(schedule_id, conn)
            if row.status != ACTIVE:
                raise UsageError(f"schedule {schedule_id} is paused ({row.state}): RESUME SCHEDULE {schedule_id} first")
            self.table.set(conn, schedule_id, next_run=_shown(now))
        run = self._run_one(schedule_id, now)
        if run is None:
            raise UsageError(f"schedule {schedule_id} is running now: its previous run has not finished")
        return run

    def _stop_all(self, revoked: list[str]) -> list[ScheduleRun]:
        """The CMEK was revoked: no schedule can open its secrets or its databases. Every one is
        paused with a state that says so, once; RESUME SCHEDULE after CMEK is enabled again."""
        state = (
            f"the store's CMEK was revoked (region {', '.join(revoked)}): enable CMEK again "
            "(strongroom cmek enable), then RESUME SCHEDULE"
        )
        runs = []
        with self.table.transaction() as conn:
            # Paused ones too: whoever resumes them must know they cannot run until CMEK is back.
            for row in self.table.rows(conn, "WHERE state IS NOT ?", (state,)):
                self.table.set(conn, row.id, status=PAUSED, next_run=None, state=state)
                runs.append(ScheduleRun(row.id, row.label, row.kind, None, "paused", None, state))
        return runs

    def _claim(self, schedule_id: int, now: datetime) -> tuple[ScheduleRow, str] | ScheduleRun | None:
        """Take the run of a due schedule for this process, or say why not (None: not due any more)."""
        with self.table.transaction() as conn:
            row = self.table.get(schedule_id, conn)
            due = _parsed(row.next_run)
            if row.status != ACTIVE or due is None or due > now:
                return None  # another process ran it, or it was paused, meanwhile
            if row.running is not None and run_alive(row.running):
                mode = row.schedule_options.get("on_previous_running", "wait")
                if mode == "wait":
                    return None  # due again at the next tick, when the previous run may be done
                if mode == "skip":
                    after = _shown(next_run(row.recurrence, now))
                    state = "skipped a run: the previous one was still running"
                    self.table.set(conn, row.id, next_run=after, state=state)
                    return ScheduleRun(row.id, row.label, row.kind, None, "skipped", after)
            claim = json.dumps({"owner": lock_content().decode(), "claimed": _shown(now)})
            self.table.set(conn, row.id, running=claim)
        return row, claim

    def _run_one(self, schedule_id: int, now: datetime) -> ScheduleRun | None:
        claimed = self._claim(schedule_id, now)
        if not isinstance(claimed, tuple):
            return claimed
        row, claim = claimed
        result: JobResult | None = None
        error: str | None = None
        try:
            secret = self.keys.region_keys(self._secret_region()).secret(row.secret)
            if secret is None:
                raise UsageError(f"schedule {row.id}: its sealed statement is missing from the store's keys")
            request = _request_from(secret, row.kind)
            result = self.backups.backup(request)
        except StrongroomError as exc:
            error = str(exc)
        except Exception as exc:  # a schedule must outlive any failure; its text may hold anything
            error = f"internal error: {type(exc).__name__}"
        note = self._apply_retention(row, request) if result is not None else None
        return self._finish(row, claim, now, result, error, note)

    def _apply_retention(self, row: ScheduleRow, request: BackupRequest) -> str | None:
        """The schedule's forget policy, after a successful run; what went wrong, if anything (the
        backup itself succeeded: a failed forget is noted, and tried again after the next run)."""
        retention = row.schedule_options.get("retention")
        if not retention:
            return None
        try:
            self.backups.forget(request.collection, RetentionPolicy.parse(str(retention)))
        except StrongroomError as exc:
            return f"retention ({retention}) failed: {exc}"
        except Exception as exc:
            return f"retention ({retention}) failed: internal error: {type(exc).__name__}"
        return None

    def _finish(
        self,
        row: ScheduleRow,
        claim: str,
        now: datetime,
        result: JobResult | None,
        error: str | None,
        note: str | None = None,
    ) -> ScheduleRun:
        later = max(now, _now())  # the next run counts from when this one ended
        with self.table.transaction() as conn:
            try:
                current = self.table.get(row.id, conn)
            except NotFoundError:  # dropped while it ran
                return ScheduleRun(
                    row.id, row.label, row.kind, result.job_id if result else None, "dropped", None, error
                )
            running = None if current.running == claim else current.running  # another run started ('start')
            paused = current.status == PAUSED
            if error is None:
                after = None if paused else _shown(next_run(row.recurrence, later))
                assert result is not None
                state = f"succeeded at {_shown(later)}: job {result.job_id}" + (f"; {note}" if note else "")
                self.table.set(conn, row.id, running=running, next_run=after, state=state, last_success=_shown(later))
                if row.kind == FULL and row.paired_id is not None:
                    self._unpause_incremental(conn, row.paired_id, later)
                return ScheduleRun(row.id, row.label, row.kind, result.job_id, "succeeded", after, note)
            mode = str(row.schedule_options.get("on_execution_failure", "reschedule"))
            if self._revoked():
                mode = "pause"
            if mode == "pause" or paused:
                self.table.set(conn, row.id, running=running, status=PAUSED, next_run=None, state=f"pause: {error}")
                return ScheduleRun(row.id, row.label, row.kind, None, "failed", None, error)
            # retry: due again at once, so the next tick (serve's interval, the timer's next start) runs it.
            after = _shown(later) if mode == "retry" else _shown(next_run(row.recurrence, later))
            self.table.set(conn, row.id, running=running, next_run=after, state=f"{mode}: {error}")
            return ScheduleRun(row.id, row.label, row.kind, None, "failed", after, error)

    def _unpause_incremental(self, conn: apsw.Connection, schedule_id: int, now: datetime) -> None:
        """CockroachDB's ``unpause_on_success``: the first full backup starts the incremental schedule."""
        found = self.table.rows(conn, "WHERE id = ?", (schedule_id,))
        if found and found[0].status == PAUSED and found[0].state == WAITING_FOR_FULL:
            self.table.set(
                conn, schedule_id, status=ACTIVE, state=None, next_run=_shown(next_run(found[0].recurrence, now))
            )

    def _revoked(self) -> bool:
        return any(self.keys.spec_on_disk(r).status == REVOKED for r in self.meta.regions)

    def _secret_region(self) -> str:
        return self.meta.regions[0]

    def _sweep_secrets(self) -> None:
        """Forget sealed statements no schedule uses (a DROP while the keys were shut, a crash in CREATE)."""
        try:
            keys = self.keys.region_keys(self._secret_region())
        except (KMSError, StrongroomError):
            return
        used = {row.secret for row in self.table.rows()}
        # A CREATE in another process keeps its secret a moment before its rows exist; the name holds
        # the schedule id, which holds its creation time, so only secrets an hour old are swept.
        cutoff = job_id_floor(_now() - timedelta(hours=1))
        for name in [n for n in keys.registry.secrets if n.startswith(_SECRET_PREFIX) and n not in used]:
            with suppress(ValueError):
                if int(name[len(_SECRET_PREFIX) :]) < cutoff:
                    keys.keep_secret(name, None)


__all__ = [
    "CREATE_COLUMNS",
    "RUN_COLUMNS",
    "SHOW_COLUMNS",
    "CreateScheduleRequest",
    "ScheduleOptions",
    "ScheduleRow",
    "ScheduleRun",
    "Schedules",
    "check_crontab",
    "default_full_recurrence",
    "next_run",
]
