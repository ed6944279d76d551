"""Job ids and results, shaped like CockroachDB's (``job_id | status | fraction_completed | rows | ...``)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

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
