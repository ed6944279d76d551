"""Key rotation: new data keys with every database re-keyed online, and new store keys.

CMEK rotation is a re-wrap of the store key and lives with CMEK (cmek.py). Every rotation holds the
rotation lock exclusively, so creates, drops, backups and restores wait for it (and it for them).
"""

from __future__ import annotations

import time

import apsw

from ..errors import EncryptionError
from ..sqlite.connect import BUSY_TIMEOUT_MS, connect, key_literal
from .cmek import KeyHierarchy
from .databases import Databases
from .keys import FileKey, RegionKeys, RegionSpec, Registry

#: How long one try of truncate_wal may hold up writers, waiting for readers to move on.
_TRUNCATE_WAIT_MS = 50


class Rotation:
    def __init__(self, keys: KeyHierarchy, databases: Databases) -> None:
        self.keys = keys
        self.databases = databases

    def _regions(self, region: str | None) -> list[str]:
        return [self.keys.meta.check_region(region)] if region else self.keys.meta.regions

    def rotate_data_keys(self, region: str | None = None, *, if_due: bool = False) -> dict[str, list[str]]:
        """Make a new active data key per region and re-key every database onto it, online.

        With ``if_due`` only regions whose active data key is older than their rotation period
        rotate (the schedule; ``strongroom serve`` runs it). Returns the databases re-keyed per region.
        """
        done: dict[str, list[str]] = {}
        with self.keys.lock.exclusive():
            for r in self._regions(region):
                keys = self.keys.region_keys(r)
                keys.refresh()
                if if_due and not keys.rotation_due():
                    continue
                keys.new_data_key()
                done[r] = self._rekey_region(keys)
        return done

    def rotate_store_key(self, region: str | None = None) -> None:
        """New store keys (wrapped by the same CMEK or key file), each with a new data key for new data."""
        with self.keys.lock.exclusive():
            for r in self._regions(region):
                self.keys.region_keys(r).rotate_store_key()

    def _rekey_region(self, keys: RegionKeys) -> list[str]:
        rekeyed = []
        for name in self.databases.in_region(keys.region):
            entry = keys.registry.files.get(name)
            if entry is None or entry.key_id != keys.registry.active_data_key_id or entry.rekey_to:
                self._rekey_database(keys, name)
                rekeyed.append(name)
        self._forget_missing(keys)
        return rekeyed

    def _forget_missing(self, keys: RegionKeys) -> None:
        """Drop registry entries of databases that no longer exist, then data keys nothing uses."""
        existing = set(self.databases.names())

        def change(spec: RegionSpec, registry: Registry) -> None:
            for name in [n for n in registry.files if n not in existing]:
                del registry.files[name]
            registry.drop_unused_data_keys()

        keys.update(change)

    def _rekey_database(self, keys: RegionKeys, name: str) -> None:
        """Move one database onto the region's active data key, while others keep using it.

        Crash-safe in three steps: record ``rekey_to`` (either key opens the file from then on),
        ``PRAGMA rekey`` (one SQLite transaction: the file is under the old key or the new), then
        record the new key. Afterwards the WAL is checkpointed and truncated (see truncate_wal), so
        no page under the retired key is left behind in it.
        """
        current = self.databases.database_key(name)
        target_id = keys.registry.active_data_key_id

        def begin(spec: RegionSpec, registry: Registry) -> None:
            old_id = next((k for k, v in registry.data_keys.items() if v.key == current), None)
            if old_id is None:
                raise EncryptionError(f'database "{name}": its key is not in the registry of region "{keys.region}"')
            registry.files[name] = FileKey(old_id, target_id if old_id != target_id else None)

        keys.update(begin)
        if current != keys.registry.data_keys[target_id].key:
            conn = connect(self.databases.database_path(name), key=current)
            try:
                conn.execute(f'PRAGMA rekey="{key_literal(keys.registry.data_keys[target_id].key)}"').fetchall()
                truncate_wal(conn)
            finally:
                conn.close()

        def finish(spec: RegionSpec, registry: Registry) -> None:
            registry.files[name] = FileKey(target_id)

        keys.update(finish)


def truncate_wal(conn: apsw.Connection, timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> bool:
    """Checkpoint and truncate ``conn``'s WAL, holding up writers for moments only; False if
    readers kept older snapshots (frames in the WAL) for all of ``timeout_s``.

    A TRUNCATE checkpoint waits for the readers of older snapshots while it holds the write lock,
    so with the usual busy timeout one long read transaction would stall every writer. Each try
    here waits a few tens of milliseconds (enough for short read transactions to end, and no new
    frame can be added meanwhile), then lets writers through before the next one.
    """
    conn.set_busy_timeout(_TRUNCATE_WAIT_MS)
    deadline = time.monotonic() + timeout_s
    while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0]:
        if time.monotonic() > deadline:
            return False
        time.sleep(_TRUNCATE_WAIT_MS / 1000)
    return True
