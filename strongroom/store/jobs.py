"""The store's jobs (``SHOW JOBS``): every BACKUP, RESTORE, ALTER BACKUP and managed backup, whoever
started it (CLI, Python, SQL, HTTP, a schedule), with its status, progress and error.

Kept in ``<store>/system.db``. Descriptions are the request's own ``describe()``, with every secret
redacted, so nothing here ever holds a passphrase or a credential. ``JobRunner`` is the one place a
job is started, run (in the caller's thread, or detached in the background) and finished.
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import apsw

from ..backup.jobs import CANCELED_MESSAGE, NODE_ID, Cancel, Progress, checking, foreground, new_job_id
from ..backup.owners import lock_content, owner_gone
from ..errors import JobCanceledError, NotFoundError, StrongroomError, UsageError

T = TypeVar("T")
log = logging.getLogger("strongroom.jobs")
# CockroachDB's SHOW JOBS columns, in its order.
JOB_COLUMNS = (
    "job_id",
    "job_type",
    "description",
    "statement",
    "user_name",
    "status",
    "running_status",
    "created",
    "started",
    "finished",
    "modified",
    "fraction_completed",
    "error",
    "coordinator_id",
)
# Columns added after the first stores were made (ALTER TABLE adds them to an older system.db).
_ADDED_COLUMNS = {
    "statement": "TEXT",
    "user_name": "TEXT",
    "running_status": "TEXT",
    "started": "TEXT",
    "modified": "TEXT",
    "coordinator_id": "INTEGER",
    # Strongroom's, for /metrics (not in SHOW JOBS): the collection a backup wrote (redacted) and
    # the bytes it stored.
    "collection": "TEXT",
    "bytes": "INTEGER",
    # The process running the job (host, boot, pid, start time: backup/owners.py), so a job whose
    # process was killed is not shown running for ever.
    "owner": "TEXT",
}
_SELECTED = ", ".join((*JOB_COLUMNS, "collection", "bytes"))
_PROGRESS_EVERY_S = 1.0
# CockroachDB's statuses: a CANCEL JOB moves a running job to cancel-requested; the job itself, once
# it has undone its work, to canceled.
RUNNING, CANCEL_REQUESTED, CANCELED = "running", "cancel-requested", "canceled"
#: Statuses of a job that has not ended (SHOW JOBS WHEN COMPLETE waits while a job has one).
UNFINISHED = frozenset({RUNNING, CANCEL_REQUESTED})
ORPHAN_MESSAGE = (
    "the process running this job ended before the job did (killed or crashed); what it wrote is "
    "removed by the next backup into its collection, or by strongroom prune"
)


def _user() -> str:
    """The operating-system user who started the job (CockroachDB's user_name is the SQL user)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return str(os.getuid())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass
class JobRow:
    job_id: int
    job_type: str
    description: str
    statement: str | None
    user_name: str | None
    status: str
    running_status: str | None
    created: str
    started: str | None
    finished: str | None
    modified: str | None
    fraction_completed: float
    error: str | None
    coordinator_id: int | None
    collection: str | None = None
    bytes: int | None = None

    def row(self) -> tuple[object, ...]:
        return tuple(getattr(self, c) for c in JOB_COLUMNS)


class JobRegistry:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        # Descriptions and errors are redacted, but still the store owner's business alone; SQLite
        # gives the -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = self._connect()
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS jobs (job_id INTEGER PRIMARY KEY, job_type TEXT NOT NULL, "
                "description TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL, finished TEXT, "
                "fraction_completed REAL NOT NULL DEFAULT 0, error TEXT)"
            )
            have = {str(row[1]) for row in conn.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in have:
                    with suppress(apsw.SQLError):  # another process added it first
                        conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        finally:
            conn.close()

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(str(self._path))
        conn.set_busy_timeout(30_000)
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        return conn

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        with self._lock:
            conn = self._connect()
            try:
                conn.execute(sql, args)
            finally:
                conn.close()

    def start(self, job_type: str, description: str, collection: str | None = None) -> int:
        """Record a new running job; returns its id, unique in this registry even if two processes
        drew the same node id (new_job_id) in the same tick: the second one draws again."""
        while True:
            job_id = new_job_id()
            try:
                now = _now()
                self._write(
                    "INSERT INTO jobs(job_id, job_type, description, statement, user_name, status, created, "
                    "started, modified, coordinator_id, collection, owner) "
                    "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        job_type,
                        description,
                        description,
                        _user(),
                        now,
                        now,
                        now,
                        NODE_ID,
                        collection,
                        lock_content("job").decode(),
                    ),
                )
            except apsw.ConstraintError:
                continue
            return job_id

    def progress_callback(self, job_id: int) -> ProgressWriter:
        return ProgressWriter(self, job_id)

    def set_fraction(self, job_id: int, fraction: float, running_status: str | None = None) -> None:
        self._write(
            "UPDATE jobs SET fraction_completed = ?, running_status = ?, modified = ? WHERE job_id = ?",
            (fraction, running_status, _now(), job_id),
        )

    def request_cancel(self, job_id: int) -> None:
        """CANCEL JOB: mark a running job cancel-requested (the job notices and stops). As in
        CockroachDB, a job already cancel-requested or canceled is left as it is, and any other
        ended job is an error."""
        with self._lock:
            conn = self._connect()
            try:
                # One conditional UPDATE, so a job that ends meanwhile is never marked after its end.
                conn.execute(
                    "UPDATE jobs SET status = ?, modified = ? WHERE job_id = ? AND status = ?",
                    (CANCEL_REQUESTED, _now(), job_id, RUNNING),
                )
                if conn.changes():
                    return
                row = conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            finally:
                conn.close()
        if row is None:
            raise NotFoundError(f"job with ID {job_id} does not exist")
        if row[0] not in (CANCEL_REQUESTED, CANCELED):
            raise UsageError(f"job with status {row[0]} cannot be requested to be canceled")

    def _end_orphans(self, conn: apsw.Connection) -> None:
        """A job whose process provably ended without ending it (killed, crashed: same host and
        boot, the process gone) is recorded as ended: failed, or canceled if a cancel was asked
        for. What it wrote is removed by the next backup of its collection, or by prune."""
        rows = conn.execute(
            "SELECT job_id, status, owner FROM jobs WHERE status IN (?, ?) AND owner IS NOT NULL",
            (RUNNING, CANCEL_REQUESTED),
        ).fetchall()
        for job_id, status, owner in rows:
            if not owner_gone(str(owner).encode()):
                continue
            ended = CANCELED if status == CANCEL_REQUESTED else "failed"
            message = CANCELED_MESSAGE if ended == CANCELED else ORPHAN_MESSAGE
            now = _now()
            conn.execute(  # conditional: a job that ended meanwhile keeps its own end
                "UPDATE jobs SET status = ?, running_status = NULL, error = ?, finished = ?, modified = ? "
                "WHERE job_id = ? AND status = ?",
                (ended, message, now, now, job_id, status),
            )

    def status(self, job_id: int) -> str | None:
        """The job's status (None if there is no such job): a running job's cancel poll."""
        conn = self._connect()
        try:
            row = conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        finally:
            conn.close()
        return None if row is None else str(row[0])

    def finish_canceled(self, job_id: int) -> None:
        self._write(
            "UPDATE jobs SET status = ?, running_status = NULL, error = ?, finished = ?, modified = ? WHERE job_id = ?",
            (CANCELED, CANCELED_MESSAGE, now := _now(), now, job_id),
        )

    def finish(self, job_id: int, error: str | None = None, stored_bytes: int | None = None) -> None:
        if error is None:
            self._write(
                "UPDATE jobs SET status='succeeded', fraction_completed=1, running_status=NULL, finished=?, "
                "modified=?, bytes=? WHERE job_id=?",
                (now := _now(), now, stored_bytes, job_id),
            )
        else:
            self._write(
                "UPDATE jobs SET status='failed', running_status=NULL, error=?, finished=?, modified=? WHERE job_id=?",
                (error, now := _now(), now, job_id),
            )

    def list(self, job_id: int | None = None) -> list[JobRow]:
        conn = self._connect()
        try:
            self._end_orphans(conn)
            if job_id is None:
                rows = conn.execute(f"SELECT {_SELECTED} FROM jobs ORDER BY created, job_id").fetchall()
            else:
                rows = conn.execute(f"SELECT {_SELECTED} FROM jobs WHERE job_id = ?", (job_id,)).fetchall()
        finally:
            conn.close()
        return [JobRow(*r) for r in rows]  # type: ignore[arg-type]  # the table's columns, in JOB_COLUMNS order


class ProgressWriter:
    """A backup/restore progress callback that records fraction_completed at most once a second."""

    def __init__(self, registry: JobRegistry, job_id: int) -> None:
        self._registry = registry
        self._job_id = job_id
        self._last = 0.0

    def __call__(self, done: int, total: int, what: str) -> None:
        now = time.monotonic()
        if total and now - self._last >= _PROGRESS_EVERY_S:
            self._last = now
            self._registry.set_fraction(self._job_id, min(done / total, 0.99), what or None)


class JobRunner:
    """Runs every job of a store: records it, reports its progress, records how it ended."""

    def __init__(self, registry: Callable[[], JobRegistry]) -> None:
        self._registry = registry  # opened on first use: a store that runs no job makes no system.db
        self._threads: list[threading.Thread] = []
        self._cancels: dict[int, Cancel] = {}  # the jobs running in this process
        self._cancels_lock = threading.Lock()

    @property
    def registry(self) -> JobRegistry:
        return self._registry()

    def run(
        self,
        job_type: str,
        description: str,
        work: Callable[[int, Progress], T],
        progress: Progress | None = None,
        *,
        collection: str | None = None,
    ) -> T:
        """Run ``work`` now, as job ``job_type``; its errors are recorded, then raised."""
        job_id = self.registry.start(job_type, description, collection)
        with foreground(self._cancel_for(job_id)):  # this process's Ctrl-C or SIGTERM cancels it
            return self._finish(job_id, work, progress)

    def detach(
        self,
        job_type: str,
        description: str,
        work: Callable[[int, Progress], object],
        *,
        collection: str | None = None,
    ) -> int:
        """Start ``work`` in the background and return its job id at once (``WITH detached``)."""
        job_id = self.registry.start(job_type, description, collection)
        self._cancel_for(job_id)

        def background() -> None:
            with suppress(BaseException):  # the outcome is recorded in the job registry
                self._finish(job_id, work, None)

        thread = threading.Thread(target=background, name=f"job-{job_id}", daemon=False)
        thread.start()
        self._threads.append(thread)
        return job_id

    def cancel(self, job_id: int) -> None:
        """``CANCEL JOB``: stop a running job, in this process or any other using the store. Returns
        once the request is recorded; the job ends ``canceled`` (SHOW JOB WHEN COMPLETE waits for it)
        after deleting what it wrote."""
        self.registry.request_cancel(job_id)
        with self._cancels_lock:
            local = self._cancels.get(job_id)
        if local is not None:  # ours: no need to wait for its next look at the registry
            local.set()

    def _cancel_for(self, job_id: int) -> Cancel:
        registry = self.registry
        cancel = Cancel(lambda: registry.status(job_id) == CANCEL_REQUESTED)
        with self._cancels_lock:
            self._cancels[job_id] = cancel
        return cancel

    def list(self, job_id: int | None = None) -> list[JobRow]:
        """``SHOW JOBS`` (``SHOW JOB <id>``)."""
        return self.registry.list(job_id)

    def wait(self) -> None:
        """Wait for the detached jobs started here."""
        for t in self._threads:
            t.join()
        self._threads.clear()

    def _finish(self, job_id: int, work: Callable[[int, Progress], T], progress: Progress | None) -> T:
        registry = self.registry
        recorder = registry.progress_callback(job_id)
        with self._cancels_lock:
            cancel = self._cancels[job_id]

        def report(done: int, total: int, what: str) -> None:
            recorder(done, total, what)
            if progress is not None:
                progress(done, total, what)

        try:
            result = work(job_id, checking(report, cancel))
        except BaseException as exc:
            # Canceled: the job stopped at a progress point with JobCanceledError, or (a page read
            # inside SQLite) with whatever error SQLite made of it; a KeyboardInterrupt with no
            # handler installed (a Python caller's Ctrl-C) is a cancel too, and stays one.
            if isinstance(exc, JobCanceledError | KeyboardInterrupt) or cancel.is_set():
                registry.finish_canceled(job_id)
                log_job(registry, job_id)
                if isinstance(exc, JobCanceledError | KeyboardInterrupt):
                    raise
                raise JobCanceledError(CANCELED_MESSAGE) from exc
            self._record_failure(job_id, exc)
            raise
        finally:
            with self._cancels_lock:
                self._cancels.pop(job_id, None)
        stored = getattr(result, "bytes", None)
        registry.finish(job_id, stored_bytes=stored if isinstance(stored, int) else None)
        log_job(registry, job_id)
        return result

    def _record_failure(self, job_id: int, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, StrongroomError) else f"internal error: {type(exc).__name__}"
        self.registry.finish(job_id, message)
        log_job(self.registry, job_id)


def log_job(registry: JobRegistry, job_id: int) -> None:
    """One log line per finished job (``strongroom.jobs``): its row, as SHOW JOBS has it (redacted)."""
    if not log.isEnabledFor(logging.INFO):
        return
    found = registry.list(job_id)
    if not found:
        return
    job = found[0]
    fields = {
        "job_id": str(job.job_id),
        "job_type": job.job_type,
        "status": job.status,
        "description": job.description,
        "started": job.started,
        "finished": job.finished,
        "error": job.error,
        "bytes": job.bytes,
    }
    level = logging.INFO if job.status == "succeeded" else logging.WARNING
    what = f"job {job.job_id} ({job.job_type}) {job.status}" + (f": {job.error}" if job.error else "")
    log.log(level, what, extra={"job": fields})
