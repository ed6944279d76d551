"""Job ids and results, shaped like CockroachDB's (``job_id | status | fraction_completed | rows | ...``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_lock = threading.Lock()
_last = 0


_EPOCH_NS = 1_420_070_400_000_000_000  # 2015-01-01, CockroachDB's unique_rowid() epoch


def new_job_id() -> int:
    """A unique, time-ordered 63-bit id like CockroachDB's ``unique_rowid()`` (10 µs ticks << 15)."""
    global _last
    with _lock:
        candidate = ((time.time_ns() - _EPOCH_NS) // 10_000) << 15
        _last = max(candidate, _last + 1)
        return _last


@dataclass(frozen=True)
class JobResult:
    job_id: int
    status: str
    fraction_completed: float
    rows: int
    index_entries: int
    bytes: int

    COLUMNS = ("job_id", "status", "fraction_completed", "rows", "index_entries", "bytes")

    def row(self) -> tuple[object, ...]:
        return (self.job_id, self.status, self.fraction_completed, self.rows, self.index_entries, self.bytes)


# progress(done, total, what): called from the job's thread as work proceeds.
Progress = Callable[[int, int, str], None]
