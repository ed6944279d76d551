"""The background loop of ``strongroom serve``: due data key rotations, managed backups, schedules.

Every ``interval`` seconds it rotates the data keys of regions whose active data key is older than
the store's rotation period, takes the managed backups that are due, and runs the backup schedules
(CREATE SCHEDULE FOR BACKUP) whose next run has come. A failure (a KMS outage, a
revoked store) is logged, redacted, and the loop carries on: the next tick tries again.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ..errors import StrongroomError
from ..store.audit import acting_as
from ..uri import redact_loose

if TYPE_CHECKING:
    from ..store import Store
    from .app import StoreService

log = logging.getLogger("strongroom.server")
ACTOR = "scheduler"


def safe_message(exc: BaseException) -> str:
    """An error as a user may read it: ours are final text; anything else is named and redacted."""
    if isinstance(exc, StrongroomError):
        return str(exc)
    return f"{type(exc).__name__}: {redact_loose(str(exc))}"


class Scheduler:
    def __init__(self, service: StoreService, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the schedule interval must be positive")
        self.service = service
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="strongroom-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()

    def run_once(self) -> None:
        """One tick; KMS calls it makes are audited as the scheduler's."""
        with self.service.lock, acting_as(ACTOR):
            for what, task in (
                ("data key rotation", _rotate_due_data_keys),
                ("managed backups", _take_due_backups),
                ("backup schedules", _run_due_schedules),
            ):
                try:
                    task(self.service.store)
                except Exception as exc:  # the loop must outlive any failure
                    log.warning("scheduled %s failed: %s", what, safe_message(exc))


def _rotate_due_data_keys(store: Store) -> None:
    for region, names in store.rotate_data_keys(if_due=True).items():
        log.info("rotated the data key of region %s; re-keyed %d database(s)", region, len(names))


def _run_due_schedules(store: Store) -> None:
    for run in store.schedules.run_due():
        what = f"schedule {run.schedule_id} ({run.label}, {run.backup_type} backup)"
        if run.status == "succeeded":
            log.info("%s: job %s succeeded", what, run.job_id)
        else:
            log.warning("%s %s: %s", what, run.status, run.error)


def _take_due_backups(store: Store) -> None:
    for taken in store.run_due_managed_backups():
        log.info("took a %s managed backup of region %s: %s", taken.backup_type, taken.region, taken.path)
