"""The store's rotation lock: one re-key or rotation at a time per store, across processes.

Creating, dropping, backing up and restoring databases hold it shared, so that a rotation never
forgets the key of a file still being written (it drops the keys of missing files), re-keys a file
being dropped, or re-keys a database between the moment a backup picks its key and the moment the
backup's snapshot is pinned. Every part of the store that needs it is handed this one object.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path


class RotationLock:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _held(self, mode: int) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def exclusive(self) -> AbstractContextManager[None]:
        """Held by rotations (data keys, store keys, CMEK) and by adding a region."""
        return self._held(fcntl.LOCK_EX)

    def shared(self) -> AbstractContextManager[None]:
        """Held by creates, drops, backups and restores: they run together, never beside a rotation."""
        return self._held(fcntl.LOCK_SH)
