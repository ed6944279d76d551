"""Query a backup where it lies: its databases as read-only SQLite connections, no restore.

Each connection reads its database's page image straight from the backup through a read-only VFS
(sqlite/image.py): a page is fetched, authenticated, decompressed and hash-checked when SQLite asks
for it, so nothing is written anywhere, memory stays bounded, and a query that touches 1% of the
pages reads about 1% of the packs. ``engine.open_backup`` checks the chain as RESTORE does
(rollback, links, missing files) before it hands one over.
"""

from __future__ import annotations

from types import TracebackType

import apsw

from ..errors import NotFoundError
from ..sqlite import open_image
from .data import BackupImage, StorageFor
from .destinations import Destinations
from .keys import BackupKeys
from .manifest import Manifest


class BackupReader:
    """The databases of one restore point of a backup chain; ``connect(name)`` for each. Close it (or
    use it as a context manager) to release every connection and file it opened."""

    def __init__(self, dests: Destinations, manifest: Manifest, keys: BackupKeys) -> None:
        self._dests = dests
        self.manifest = manifest
        self._keys = keys
        self._open: list[tuple[apsw.Connection, BackupImage]] = []

    @property
    def keys(self) -> BackupKeys:
        """The backup's keys (for readers of non-SQLite entries, strongroom.postgres)."""
        return self._keys

    @property
    def storage_for(self) -> StorageFor:
        """The storage holding each locality's files."""
        return self._dests.storage_for

    @property
    def databases(self) -> list[str]:
        """The names of the databases this restore point holds."""
        return [d.name for d in self.manifest.databases]

    @property
    def end_time(self) -> str:
        """When this restore point was taken (ISO 8601, UTC)."""
        return self.manifest.end_time

    def connect(self, database: str) -> apsw.Connection:
        """A read-only connection to ``database`` as the backup holds it."""
        entry = self.manifest.database(database)
        if entry is None:
            names = ", ".join(self.databases) or "none"
            raise NotFoundError(f'database "{database}" is not in this backup (it holds: {names})')
        image = BackupImage(self._dests.storage_for, entry.index, self.manifest.packs, self._keys)
        try:
            conn = open_image(image)
        except BaseException:
            image.close()
            raise
        self._open.append((conn, image))
        return conn

    def close(self) -> None:
        for conn, image in self._open:
            conn.close()
            image.close()
        self._open.clear()
        self._dests.close()

    def __enter__(self) -> BackupReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
