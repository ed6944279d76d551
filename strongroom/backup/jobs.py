"""Job ids and results, shaped like CockroachDB's (``job_id | status | fraction_completed | rows | ...``)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from ..errors import JobCanceledError

_EPOCH_NS = 1_420_070_400_000_000_000  # 2015-01-01, CockroachDB's unique_rowid() epoch
_NODE_BITS = 15

# CockroachDB's unique_rowid() is (10 µs ticks since 2015) << 15 | node id, unique per cluster
# because node ids are. A process here is a node of its own: it draws its node id at random, so
# processes (and machines) writing one store or one collection at the same moment get distinct
# ids, and each process keeps its ticks strictly increasing.
NODE_ID = secrets.randbits(_NODE_BITS)  # SHOW JOBS' coordinator_id
_lock = threading.Lock()
_last_tick = 0


def new_job_id() -> int:
    """A unique, time-ordered 63-bit id shaped like CockroachDB's ``unique_rowid()``."""
    global _last_tick
    with _lock:
        _last_tick = max((time.time_ns() - _EPOCH_NS) // 10_000, _last_tick + 1)
        return _last_tick << _NODE_BITS | NODE_ID


def job_id_floor(at: datetime) -> int:
    """The smallest id ``new_job_id`` could draw at ``at``: ids below it were drawn earlier."""
    return (int(at.timestamp() * 1e9) - _EPOCH_NS) // 10_000 << _NODE_BITS


@dataclass(frozen=True)
class JobResult:
    job_id: int
    status: str
    fraction_completed: float
    rows: int
    index_entries: int
    bytes: int
    #: Strongroom's addition to CockroachDB's columns: how the backup is encrypted (passphrase, kms
    #: or none), so a plaintext backup never passes unnoticed.
    encryption: str = "none"
    #: What the job left out or worked around, one sentence each (e.g. a one-table restore's foreign
    #: keys skipped with skip_missing_foreign_keys): not a column, for callers and logs.
    notes: tuple[str, ...] = ()

    COLUMNS = ("job_id", "status", "fraction_completed", "rows", "index_entries", "bytes", "encryption")

    def row(self) -> tuple[object, ...]:
        return (
            self.job_id,
            self.status,
            self.fraction_completed,
            self.rows,
            self.index_entries,
            self.bytes,
            self.encryption,
        )


# progress(done, total, what): called from the job's thread as work proceeds.
Progress = Callable[[int, int, str], None]


#: SHOW JOBS' error for a canceled job, and the message of the JobCanceledError it raised.
CANCELED_MESSAGE = "job canceled by user"
#: How often a running job looks for a CANCEL JOB from another process (one indexed read of system.db).
CANCEL_POLL_S = 0.25


class Cancel:
    """A job's stop request, checked at the job's progress points (so it stops between writes, never
    inside one, and its cleanup knows every object it started). Set here (Ctrl-C, SIGTERM, a CANCEL JOB
    in this process) or found by ``poll`` (a CANCEL JOB from another process, read from the registry at
    most every ``every`` seconds)."""

    def __init__(self, poll: Callable[[], bool] | None = None, every: float = CANCEL_POLL_S) -> None:
        self._event = threading.Event()
        self._poll = poll
        self._every = every
        self._next = 0.0

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self._poll is not None:
            now = time.monotonic()
            if now >= self._next:
                self._next = now + self._every
                if self._poll():
                    self._event.set()
        return self._event.is_set()

    def check(self) -> None:
        """Raise JobCanceledError if the job is to stop."""
        if self.is_set():
            raise JobCanceledError(CANCELED_MESSAGE)


_foreground: set[Cancel] = set()
# Reentrant: the signal handler that calls cancel_foreground runs on the main thread between any two
# bytecodes, possibly while that thread holds this lock in foreground().
_foreground_lock = threading.RLock()


@contextmanager
def foreground(cancel: Cancel) -> Iterator[Cancel]:
    """Mark a job as one this process's Ctrl-C or SIGTERM cancels (not a detached one), while it runs."""
    with _foreground_lock:
        _foreground.add(cancel)
    try:
        yield cancel
    finally:
        with _foreground_lock:
            _foreground.discard(cancel)


def cancel_foreground() -> int:
    """Ask every foreground job of this process to stop (a signal handler's work); returns how many."""
    with _foreground_lock:
        jobs = list(_foreground)
    for cancel in jobs:
        cancel.set()
    return len(jobs)


def checking(progress: Progress | None, cancel: Cancel) -> Progress:
    """``progress`` that first raises JobCanceledError once ``cancel`` is set."""

    def report(done: int, total: int, what: str) -> None:
        cancel.check()
        if progress is not None:
            progress(done, total, what)

    return report
