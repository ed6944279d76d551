"""The store's databases: one SQLite3 Multiple Ciphers file per name, under its home region's data key.

This part creates, drops and connects to databases, and is the backup engine's ``RestoreTarget``
(hence the ``database_*`` names): restores prepare a database's key and region before writing it,
and discard it if the restore fails. Apps get keyed connections, never keys.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from ..errors import AlreadyExistsError, EncryptionError, NotFoundError, UsageError
from ..sqlite.connect import connect, remove_database_files
from .cmek import KeyHierarchy
from .connection import follow_rekeys, guard
from .locks import RotationLock
from .meta import NAME, StoreMeta, check_database_name


class Databases:
    def __init__(self, folder: Path, meta: StoreMeta, keys: KeyHierarchy, lock: RotationLock) -> None:
        self.folder = folder
        self.meta = meta
        self.keys = keys
        self.lock = lock

    def database_path(self, name: str) -> Path:
        return self.folder / f"{check_database_name(name)}.db"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.db") if NAME.match(p.stem))

    def exists(self, name: str) -> bool:
        return self.database_path(name).exists()

    def in_region(self, region: str) -> list[str]:
        return [name for name in self.names() if self.meta.home_region(name) == region]

    # -- keys -------------------------------------------------------------------------------------
    def candidate_keys(self, name: str) -> list[bytes]:
        """The keys database ``name`` may be under now (two while it is re-keyed)."""
        keys = self.keys.region_keys(self.meta.home_region(name))
        keys.refresh()
        return keys.file_keys(name)

    def database_key(self, name: str) -> bytes:
        """The data key database ``name`` opens with now: for the backup engine and restore, which
        run inside the store; apps get connections (:meth:`connect`), never keys."""
        path = self.database_path(name)
        candidates = self.candidate_keys(name)
        if not path.exists():
            raise NotFoundError(f'database "{name}" does not exist')
        if len(candidates) > 1:  # mid re-key (or a crash during one): the file says which
            for key in candidates:
                try:
                    connect(path, key=key, readonly=True).close()
                except EncryptionError:
                    continue
                return key
        if not candidates:
            region = self.meta.home_region(name)
            raise EncryptionError(f'database "{name}": key {name} is not found in region "{region}"')
        return candidates[0]

    # -- lifecycle --------------------------------------------------------------------------------
    def create(self, name: str, *, if_not_exists: bool = False, region: str | None = None) -> None:
        path = self.database_path(name)
        if path.exists():
            if if_not_exists:
                return
            raise AlreadyExistsError(f'database "{name}" already exists')
        if region is not None:
            self.meta.check_region(region)
        with self.lock.shared():
            key = self.prepare_database(name, region)
            # Made under a temporary name and linked into place once in WAL mode: a create killed
            # half way must not leave an empty database in rollback-journal mode under the name.
            tmp = path.with_name(f".{path.name}.new")
            tmp.unlink(missing_ok=True)
            conn = connect(tmp, key=key, create=True)
            try:
                conn.execute("PRAGMA journal_mode=WAL").fetchall()
            finally:
                conn.close()
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise AlreadyExistsError(f'database "{name}" already exists') from None
            finally:
                tmp.unlink()

    def prepare_database(self, name: str, region: str | None) -> bytes:
        """Record a new database's home region and data key before its file is written (restore
        calls this with the region the database had when it was backed up)."""
        regions = self.meta.regions
        if region is not None and region not in regions:
            raise UsageError(
                "detected a mismatch in regions between the restore cluster and the backup cluster, "
                f'missing regions detected: {region}.\nHINT: database "{name}" lives in region "{region}"; '
                f"this store's regions are {', '.join(regions)}"
            )
        if self.exists(name):
            raise AlreadyExistsError(f'database "{name}" already exists')
        # A drop killed between its unlinks leaves the dropped database's -wal behind, and SQLite
        # would replay its frames into the new file (a restored one is not empty): old rows back.
        remove_database_files(self.database_path(name))
        self.meta.set_database_region(name, region)
        home = self.keys.region_keys(self.meta.home_region(name))
        for other in self.keys.open_regions():  # a name reused in another region must not keep its old entry
            if other.region != home.region:
                other.forget(name)
        return home.assign(name)

    def discard_database(self, name: str) -> None:
        remove_database_files(self.database_path(name))
        region = self.meta.home_region(name)
        self.meta.set_database_region(name, None)
        if self.keys.is_open(region):
            self.keys.region_keys(region).forget(name)

    def drop(self, name: str, *, if_exists: bool = False) -> None:
        if not self.database_path(name).exists():
            if if_exists:
                return
            raise NotFoundError(f'database "{name}" does not exist')
        with self.lock.shared():
            self.discard_database(name)

    def connect(self, name: str) -> apsw.Connection:
        """An ordinary apsw connection to a database of the store (WAL mode, 30 s busy timeout).

        The connection is keyed with the database's data key and follows it through re-keys; the
        key itself is never exposed. Temporary tables and indexes stay in memory, and statements
        that would change the key or write elsewhere unencrypted are refused (connection.guard).
        """
        path = self.database_path(name)
        if not path.exists():
            raise NotFoundError(f'database "{name}" does not exist')
        conn = guard(connect(path, key=self.database_key(name)))
        return follow_rekeys(conn, lambda: self.candidate_keys(name))
