"""A Strongroom store: named SQLite databases in one or more regions, encrypted at rest.

Layout::

    <store>/STRONGROOM-STORE         store metadata (JSON): id, regions, databases' home regions
    <store>/databases/<name>.db      one SQLite3 Multiple Ciphers database per name (AEGIS, WAL mode)
    <store>/keys/<region>/KEYS-<n>   the region's key hierarchy (see keys.py)
    <store>/audit.log                every use of a CMEK (see audit.py)
    <store>/system.db                the job registry (SHOW JOBS)
    <store>/extern/                  nodelocal:// external storage (CockroachDB's external-io dir)

Every database is encrypted with a data key of its home region; the region's store key seals the
data keys, and the region's CMEK (or, without CMEK, a local key file) wraps the store key. Opening
the store unwraps each region's store key (one KMS decrypt per region): no key, no start.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import apsw

from ..backup import engine
from ..backup.engine import DatabaseSource, ShowBackupResult
from ..backup.jobs import JobResult, Progress
from ..backup.keys import Encryption
from ..errors import AlreadyExistsError, EncryptionError, KMSError, NotFoundError, StrongroomError, UsageError
from ..kms import create_key, local_kms_uri
from ..sqlite.connect import BUSY_TIMEOUT_MS, connect, key_literal, remove_database_files
from ..storage import StorageContext
from ..uri import parse_uri, redact
from . import managed
from .audit import AuditLog, AuditRecord
from .connection import follow_rekeys, guard
from .jobs import JobRegistry
from .keys import (
    DEFAULT_ROTATION_PERIOD,
    REVOKED,
    FileKey,
    RegionKeys,
    RegionSpec,
    Registry,
    key_type,
    read_spec,
    set_revoked_on_disk,
)

if TYPE_CHECKING:
    from ..sql.executor import Result, Session

MARKER = "STRONGROOM-STORE"
FORMAT = 2
DEFAULT_REGION = "local"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: How long one try of _truncate_wal may hold up writers, waiting for readers to move on.
_TRUNCATE_WAIT_MS = 50


def check_database_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(
            f"invalid database name {name!r}: use letters, digits and '_', starting with a letter or '_' (max 63)"
        )
    return name


def check_region_name(region: str) -> str:
    if not isinstance(region, str) or not _REGION.match(region):
        raise UsageError(f"invalid region name {region!r}: use letters, digits, '-', '_' or '.' (max 63)")
    return region


@dataclass(frozen=True)
class KeyUsage:
    """One data key of a region and what it protects (CockroachDB's encryption status)."""

    key_id: str
    created: str
    store_key_id: str
    active: bool
    under_cmek: bool  # made while the region had CMEK (see keys.DataKey)
    files: int
    bytes: int


@dataclass(frozen=True)
class RegionStatus:
    region: str
    status: str
    cmek: bool
    key_type: str
    key_uri: str  # redacted
    auth_principal: str | None
    cmek_enabled_at: str | None
    store_key_id: str
    store_key_created: str
    active_data_key_id: str | None  # None when the region's keys are not open (revoked)
    rotation_period_s: int | None
    next_rotation: str | None
    data_keys: tuple[KeyUsage, ...]
    updated_at: str
    user_message: str


def encryption_status_table(
    statuses: Sequence[RegionStatus], *, short_ids: bool = False
) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    """The status report as one row per (region, data key); ``short_ids`` keeps 16 hex digits of ids."""

    def key_id(value: str | None) -> str | None:
        return value[:16] if value and short_ids else value

    rows: list[tuple[object, ...]] = []
    for st in statuses:
        region = (st.region, st.status, st.key_type, st.key_uri, key_id(st.store_key_id))
        for dk in st.data_keys or [None]:
            usage = (key_id(dk.key_id), dk.active, dk.under_cmek, dk.files, dk.bytes) if dk else (None,) * 5
            rows.append((*region, *usage, st.next_rotation, st.user_message or None))
    columns = (
        *("region", "status", "key_type", "key_uri", "store_key_id"),
        *("data_key_id", "active", "under_cmek", "files", "bytes", "next_rotation", "user_message"),
    )
    return columns, rows


class Store:
    """Open with :func:`open_store`; create with :func:`init_store`."""

    def __init__(self, path: Path, meta: dict[str, object]) -> None:
        self.path = path
        self._meta = meta
        self._meta_stamp: tuple[int, int, int] | None = None
        self.databases_dir = path / "databases"
        self.extern_dir = path / "extern"
        self.keys_dir = path / "keys"
        self.audit = AuditLog(path / "audit.log")
        self._keys: dict[str, RegionKeys] = {}
        self._jobs: JobRegistry | None = None
        self._session: Session | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        regions: Sequence[str] = (DEFAULT_REGION,),
        cmek: str | Mapping[str, str] | None = None,
        rotation_period: timedelta = DEFAULT_ROTATION_PERIOD,
        keyring: str | os.PathLike[str] | None = None,
    ) -> Store:
        """Create a store. ``cmek`` is one KMS URI for every region, or a URI per region; a region
        without one gets its store key wrapped by a new local key file in ``keyring`` (default: the
        default keyring, $STRONGROOM_KEYRING or ~/.strongroom/keys)."""
        root = Path(path).absolute()
        if (root / MARKER).exists():
            raise AlreadyExistsError(f"{root} is already a Strongroom store")
        if root.exists() and any(root.iterdir()):
            raise AlreadyExistsError(f"{root} exists and is not empty: choose a new directory for the store")
        regions = [check_region_name(r) for r in regions]
        if not regions or len(set(regions)) != len(regions):
            raise UsageError("a store needs one or more distinct regions")
        specs = _cmek_specs(cmek, regions)
        if rotation_period <= timedelta(0):
            raise UsageError("the data key rotation period must be positive")
        for uri in specs.values():
            key_type(uri)
        store_id = str(uuid.uuid4())
        for d in (root, root / "databases", root / "extern", root / "keys"):
            d.mkdir(parents=True, exist_ok=True)
        meta: dict[str, object] = {
            "format": FORMAT,
            "id": store_id,
            "created": datetime.now(UTC).isoformat(),
            "regions": regions,
            "encrypted": True,
        }
        if len(specs) < len(regions):
            meta["key_file"] = local_kms_uri(
                f"strongroom-store-{store_id}", Path(keyring).absolute() if keyring else None
            )
        store = cls(root, meta)
        for region in regions:
            store._create_region(region, specs.get(region), rotation_period)
        store.update_meta(lambda m: None)
        return store

    def _create_region(self, region: str, cmek: str | None, rotation_period: timedelta) -> None:
        """A region's first key generation: its store key wrapped by ``cmek``, else by the store's key file."""
        uri = cmek
        if uri is None:
            uri = str(self.meta["key_file"])
            parsed = parse_uri(uri)
            with suppress(AlreadyExistsError):  # made by the first region that needs it
                create_key(parsed.path.lstrip("/"), parsed.params.get("KEYRING"))
        self._keys[region] = RegionKeys.create(
            self._region_dir(region),
            region,
            uri,
            cmek=cmek is not None,
            audit=self.audit,
            rotation_period=rotation_period,
        )

    def add_region(self, region: str, *, rotation_period: timedelta = DEFAULT_ROTATION_PERIOD) -> None:
        """Add a region to the store. As in CockroachDB Cloud, a new region is not protected by the
        CMEK of the others: its store key is wrapped by the store's key file until CMEK is enabled
        for it (``rotate_cmek({region: uri})``, the API's PUT)."""
        check_region_name(region)
        if region in self.regions:
            raise AlreadyExistsError(f'region "{region}" already exists')
        if "key_file" not in self.meta:
            self.update_meta(lambda m: m.setdefault("key_file", local_kms_uri(f"strongroom-store-{self.id}")))
        with self._rotation_lock():
            self._create_region(region, None, rotation_period)
            self.update_meta(lambda m: m.__setitem__("regions", [*m["regions"], region]))  # type: ignore[misc]

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, unlock: bool = True) -> Store:
        """Open a store: unwrap every region's store key (one KMS decrypt per region).

        With ``unlock=False`` no key is touched: only metadata and key status can be read (how
        ``strongroom cmek status`` and ``cmek enable`` work on a store that cannot start).
        """
        root = Path(path).absolute()
        try:
            meta = json.loads((root / MARKER).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"{root} is not a Strongroom store (create one with: strongroom init {path})") from None
        if meta.get("format") != FORMAT:
            raise UsageError(f"{root}: unsupported store format {meta.get('format')!r}")
        store = cls(root, meta)
        for region in store.regions:
            if read_spec(store._region_dir(region)) is None:
                raise EncryptionError(
                    "encryption was used on this store before, but no encryption settings were found "
                    f'for region "{region}" ({store._region_dir(region)} is empty or missing): '
                    "restore the store's keys directory"
                )
        if unlock:
            for region in store.regions:
                store._keys[region] = RegionKeys.load(store._region_dir(region), store.audit)
        return store

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def regions(self) -> list[str]:
        return list(self.meta["regions"])  # type: ignore[call-overload]

    @property
    def primary_region(self) -> str:
        return self.regions[0]

    def _region_dir(self, region: str) -> Path:
        return self.keys_dir / region

    # Several processes share a store (``serve``, the CLI, apps), so the metadata is re-read whenever
    # the file changed, and changed only under a lock: read, modify, write atomically.
    @property
    def meta(self) -> dict[str, object]:
        try:
            st = os.stat(self.path / MARKER)
        except FileNotFoundError:
            return self._meta
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._meta_stamp:
            self._meta, self._meta_stamp = json.loads((self.path / MARKER).read_text()), stamp
        return self._meta

    def update_meta(self, change: Callable[[dict[str, object]], None]) -> None:
        """Apply ``change`` to the newest metadata and rewrite it atomically (temp, fsync, rename)."""
        fd = os.open(self.path / ".meta.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            meta = dict(self.meta)
            change(meta)
            tmp = self.path / f".{MARKER}.tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(meta, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / MARKER)
            self._meta, self._meta_stamp = meta, None
        finally:
            os.close(fd)

    def _regions_of_databases(self) -> dict[str, str]:
        return dict(self.meta.get("database_regions", {}))  # type: ignore[call-overload]

    def database_region(self, name: str) -> str | None:
        """The database's home region as declared (``CREATE DATABASE ... PRIMARY REGION``), or None."""
        return self._regions_of_databases().get(name)

    def home_region(self, name: str) -> str:
        """The region whose keys protect database ``name``: its declared region, else the primary."""
        return self.database_region(name) or self.primary_region

    def _check_region(self, region: str) -> str:
        if region not in self.regions:
            raise UsageError(f'region "{region}" does not exist\nHINT: valid regions: {", ".join(self.regions)}')
        return region

    def _set_region(self, name: str, region: str | None) -> None:
        if self.database_region(name) == region:
            return

        def change(meta: dict[str, object]) -> None:
            regions = dict(meta.get("database_regions", {}))  # type: ignore[call-overload]
            if region is None:
                regions.pop(name, None)
            else:
                regions[name] = region
            meta["database_regions"] = regions

        self.update_meta(change)

    # -- keys -------------------------------------------------------------------------------------
    def region_keys(self, region: str) -> RegionKeys:
        self._check_region(region)
        keys = self._keys.get(region)
        if keys is None:
            raise EncryptionError(f'region "{region}" is not open: its keys are locked (see strongroom cmek status)')
        return keys

    def _candidate_keys(self, name: str) -> list[bytes]:
        keys = self.region_keys(self.home_region(name))
        keys.refresh()
        return keys.file_keys(name)

    def database_key(self, name: str) -> bytes:
        """The data key database ``name`` opens with now: for the backup engine and restore, which
        run inside the store; apps get connections (:meth:`connect`), never keys."""
        path = self.database_path(name)
        candidates = self._candidate_keys(name)
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
            raise EncryptionError(f'database "{name}": key {name} is not found in region "{self.home_region(name)}"')
        return candidates[0]

    @contextmanager
    def _rotation_lock(self, *, shared: bool = False) -> Iterator[None]:
        """One re-key or rotation at a time per store, across processes.

        Creating, dropping, backing up and restoring databases hold it shared, so that a rotation
        never forgets the key of a file still being written (it drops the keys of missing files),
        re-keys a file being dropped, or re-keys a database between the moment a backup picks its
        key and the moment the backup's snapshot is pinned.
        """
        fd = os.open(self.keys_dir / ".rotate.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @property
    def jobs(self) -> JobRegistry:
        """BACKUP and RESTORE jobs run through SQL (``SHOW JOBS``)."""
        if self._jobs is None:
            self._jobs = JobRegistry(self.path / "system.db")
        return self._jobs

    def session(self, database: str | None = None) -> Session:
        """A SQL session on this store (its own current database, ``USE``)."""
        from ..sql.executor import Session

        return Session(self, database)

    def execute(self, sql: str, params: Sequence[object] | None = None) -> Result:
        """Run a script of statements in the store's default session; returns the last statement's result."""
        if self._session is None:
            self._session = self.session()
        results = self._session.execute(sql, params)
        if not results:
            raise UsageError("no statement to execute")
        return results[-1]

    def close(self) -> None:
        """Close the default session and forget every unwrapped key."""
        if self._session is not None:
            self._session.close()
            self._session = None
        self._keys.clear()

    @property
    def storage_context(self) -> StorageContext:
        return StorageContext(extern_dir=self.extern_dir)

    # -- databases --------------------------------------------------------------------------------
    def database_path(self, name: str) -> Path:
        return self.databases_dir / f"{check_database_name(name)}.db"

    def databases(self) -> list[str]:
        return sorted(p.stem for p in self.databases_dir.glob("*.db") if _NAME.match(p.stem))

    def has_database(self, name: str) -> bool:
        return self.database_path(name).exists()

    def create_database(self, name: str, *, if_not_exists: bool = False, region: str | None = None) -> None:
        path = self.database_path(name)
        if path.exists():
            if if_not_exists:
                return
            raise AlreadyExistsError(f'database "{name}" already exists')
        if region is not None:
            self._check_region(region)
        with self._rotation_lock(shared=True):
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
        if region is not None and region not in self.regions:
            raise UsageError(
                "detected a mismatch in regions between the restore cluster and the backup cluster, "
                f'missing regions detected: {region}.\nHINT: database "{name}" lives in region "{region}"; '
                f"this store's regions are {', '.join(self.regions)}"
            )
        if self.has_database(name):
            raise AlreadyExistsError(f'database "{name}" already exists')
        # A drop killed between its unlinks leaves the dropped database's -wal behind, and SQLite
        # would replay its frames into the new file (a restored one is not empty): old rows back.
        remove_database_files(self.database_path(name))
        self._set_region(name, region)
        keys = self.region_keys(self.home_region(name))
        for other in self.regions:  # a name reused in another region must not keep its old entry
            if other != keys.region and other in self._keys:
                self._keys[other].forget(name)
        return keys.assign(name)

    def discard_database(self, name: str) -> None:
        remove_database_files(self.database_path(name))
        region = self.home_region(name)
        self._set_region(name, None)
        if region in self._keys:
            self._keys[region].forget(name)

    def drop_database(self, name: str, *, if_exists: bool = False) -> None:
        if not self.database_path(name).exists():
            if if_exists:
                return
            raise NotFoundError(f'database "{name}" does not exist')
        with self._rotation_lock(shared=True):
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
        return follow_rekeys(conn, lambda: self._candidate_keys(name))

    # -- rotation ---------------------------------------------------------------------------------
    def _regions_arg(self, region: str | None) -> list[str]:
        return [self._check_region(region)] if region else self.regions

    def rotate_data_keys(self, region: str | None = None, *, if_due: bool = False) -> dict[str, list[str]]:
        """Make a new active data key per region and re-key every database onto it, online.

        With ``if_due`` only regions whose active data key is older than their rotation period
        rotate (the schedule; ``strongroom serve`` runs it). Returns the databases re-keyed per region.
        """
        done: dict[str, list[str]] = {}
        with self._rotation_lock():
            for r in self._regions_arg(region):
                keys = self.region_keys(r)
                keys.refresh()
                if if_due and not keys.rotation_due():
                    continue
                keys.new_data_key()
                done[r] = self._rekey_region(keys)
        return done

    def _rekey_region(self, keys: RegionKeys) -> list[str]:
        rekeyed = []
        for name in self.databases():
            if self.home_region(name) != keys.region:
                continue
            entry = keys.registry.files.get(name)
            if entry is None or entry.key_id != keys.registry.active_data_key_id or entry.rekey_to:
                self._rekey_database(keys, name)
                rekeyed.append(name)
        self._forget_missing(keys)
        return rekeyed

    def _forget_missing(self, keys: RegionKeys) -> None:
        """Drop registry entries of databases that no longer exist, then data keys nothing uses."""
        existing = set(self.databases())

        def change(spec: RegionSpec, registry: Registry) -> None:
            for name in [n for n in registry.files if n not in existing]:
                del registry.files[name]
            registry.drop_unused_data_keys()

        keys.update(change)

    def _rekey_database(self, keys: RegionKeys, name: str) -> None:
        """Move one database onto the region's active data key, while others keep using it.

        Crash-safe in three steps: record ``rekey_to`` (either key opens the file from then on),
        ``PRAGMA rekey`` (one SQLite transaction: the file is under the old key or the new), then
        record the new key. Afterwards the WAL is checkpointed and truncated (see _truncate_wal), so
        no page under the retired key is left behind in it.
        """
        current = self.database_key(name)
        target_id = keys.registry.active_data_key_id

        def begin(spec: RegionSpec, registry: Registry) -> None:
            old_id = next((k for k, v in registry.data_keys.items() if v.key == current), None)
            if old_id is None:
                raise EncryptionError(f'database "{name}": its key is not in the registry of region "{keys.region}"')
            registry.files[name] = FileKey(old_id, target_id if old_id != target_id else None)

        keys.update(begin)
        if current != keys.registry.data_keys[target_id].key:
            conn = connect(self.database_path(name), key=current)
            try:
                conn.execute(f'PRAGMA rekey="{key_literal(keys.registry.data_keys[target_id].key)}"').fetchall()
                _truncate_wal(conn)
            finally:
                conn.close()

        def finish(spec: RegionSpec, registry: Registry) -> None:
            registry.files[name] = FileKey(target_id)

        keys.update(finish)

    def rotate_store_key(self, region: str | None = None) -> None:
        """New store keys (wrapped by the same CMEK or key file), each with a new data key for new data."""
        with self._rotation_lock():
            for r in self._regions_arg(region):
                self.region_keys(r).rotate_store_key()

    # -- CMEK ---------------------------------------------------------------------------------------
    def enable_cmek(self, specs: Mapping[str, str], *, auth_principal: str | None = None) -> None:
        """Enable CMEK: every region of the store gets a CMEK (CockroachDB Cloud's POST).

        For each region a new store key is made and wrapped by the region's CMEK, and a new data key
        under it protects data written from now on; existing files keep their data keys, which are
        now sealed under the new store key too, so nothing in the region opens without the CMEK.
        """
        self.check_cmek_specs(specs, every_region=True)
        self._set_cmek(specs, auth_principal=auth_principal, enabling=True)

    def rotate_cmek(self, specs: Mapping[str, str | None], *, auth_principal: str | None = None) -> None:
        """Rotate the CMEK of some regions (CockroachDB Cloud's PUT): a new key URI, or None for a new
        version of the same key; the store key is re-wrapped. A region without CMEK gets it enabled."""
        resolved: dict[str, str] = {}
        for region, uri in specs.items():
            spec = self._spec(region)
            if uri is None:
                if not spec.cmek:
                    raise UsageError(f'region "{region}" has no CMEK to rotate: give a key URI to enable one')
                uri = spec.key_uri
            resolved[region] = uri
        self._set_cmek(resolved, auth_principal=auth_principal, enabling=False)

    def _spec(self, region: str) -> RegionSpec:
        found = read_spec(self._region_dir(self._check_region(region)))
        if found is None:
            raise EncryptionError(f'region "{region}" has no key files')
        return found[1]

    def check_cmek_specs(self, specs: Mapping[str, str], *, every_region: bool = False) -> None:
        """Refuse a CMEK change before anything is touched (the HTTP API answers 400 with these)."""
        for region in specs:
            self._check_region(region)
        if every_region:
            missing = [r for r in self.regions if r not in specs]
            if missing:
                raise UsageError(
                    f"enabling CMEK needs a key for every region of the store; missing: {', '.join(missing)}"
                )
        for region, uri in specs.items():
            if not uri:
                raise UsageError(
                    f'region "{region}": encryption was used on this store before; CMEK cannot be dropped '
                    "(revoke it instead: strongroom cmek revoke)"
                )
            key_type(uri)

    def _set_cmek(self, specs: Mapping[str, str], *, auth_principal: str | None, enabling: bool) -> None:
        self.check_cmek_specs(specs)
        with self._rotation_lock():
            for region, uri in specs.items():
                keys = self._keys.get(region)
                if keys is None:  # revoked or never opened: unwrap with the key it was wrapped by
                    keys = RegionKeys.load(
                        self._region_dir(region), self.audit, purpose="re-enable CMEK", allow_revoked=True
                    )
                    self._keys[region] = keys
                before = keys.spec
                try:
                    keys.set_cmek(uri, auth_principal=auth_principal, enabling=enabling and not keys.spec.cmek)
                except StrongroomError as exc:
                    keys.set_status("ENABLE_FAILED" if enabling or not keys.spec.cmek else "ROTATE_FAILED", str(exc))
                    # The status keeps the KMS's own words; the caller also needs to know which region.
                    raise type(exc)(f'region "{region}": {exc}') from None
                if before.cmek and before.key_uri != uri:  # moved to another CMEK: keep managed backups restorable
                    self._rewrap_managed_backups(keys, before.key_uri)

    def revoke_cmek(self) -> None:
        """Revoke the store's use of its CMEK (CockroachDB Cloud's PATCH REVOKE): every region stops
        and the store no longer starts until CMEK is enabled again with a key it can use."""
        if not any(self._spec(r).cmek for r in self.regions):
            raise UsageError("CMEK is not enabled on this store: there is nothing to revoke")
        with self._rotation_lock():
            for region in self.regions:
                keys = self._keys.get(region)
                if keys is not None:
                    keys.set_status(REVOKED)
                else:
                    set_revoked_on_disk(self._region_dir(region))
            self.close()

    def encryption_status(self) -> list[RegionStatus]:
        """Which keys protect what, per region (CockroachDB's encryption status report)."""
        out = []
        for region in self.regions:
            keys = self._keys.get(region)
            if keys is not None:
                try:
                    keys.refresh()
                except KMSError:  # revoked (or re-wrapped out of reach) by another process: report the files
                    keys = None
            spec = keys.spec if keys is not None else self._spec(region)
            usages: list[KeyUsage] = []
            active = period = next_rotation = None
            if keys is not None:
                reg = keys.registry
                active, period = reg.active_data_key_id, reg.rotation_period_s
                created = datetime.fromisoformat(reg.active_data_key.created)
                next_rotation = (created + timedelta(seconds=period)).isoformat(timespec="seconds")
                for kid, dk in reg.data_keys.items():
                    names = [n for n, f in reg.files.items() if f.key_id == kid and self.has_database(n)]
                    size = sum(_db_bytes(self.database_path(n)) for n in names)
                    usages.append(
                        KeyUsage(kid, dk.created, dk.store_key_id, kid == active, dk.under_cmek, len(names), size)
                    )
            out.append(
                RegionStatus(
                    region=region,
                    status=spec.status,
                    cmek=spec.cmek,
                    key_type=spec.key_type,
                    key_uri=redact(spec.key_uri),
                    auth_principal=spec.auth_principal,
                    cmek_enabled_at=spec.cmek_enabled_at,
                    store_key_id=spec.store_key_id,
                    store_key_created=spec.store_key_created,
                    active_data_key_id=active,
                    rotation_period_s=period,
                    next_rotation=next_rotation,
                    data_keys=tuple(usages),
                    updated_at=spec.updated_at,
                    user_message=spec.user_message,
                )
            )
        return out

    def audit_records(self) -> list[AuditRecord]:
        return self.audit.records()

    # -- managed backups: thin calls into managed.py ----------------------------------------------
    @property
    def managed_backup_schedule(self) -> managed.Schedule:
        return managed.schedule(self)

    def set_managed_backup_schedule(
        self, *, interval: timedelta | None = None, full_every: timedelta | None = None
    ) -> managed.Schedule:
        return managed.set_schedule(self, interval=interval, full_every=full_every)

    def run_due_managed_backups(self, now: datetime | None = None) -> list[managed.TakenBackup]:
        """Take the managed backups due now (what ``strongroom serve``'s scheduler calls)."""
        return managed.run_due(self, now)

    def managed_backup(self, full: bool | None = None) -> list[managed.TakenBackup]:
        """Take a managed backup of every region now: full, incremental, or (None) as scheduled."""
        return managed.take_now(self, full)

    def managed_backups(self) -> list[managed.ManagedBackup]:
        return managed.list_backups(self)

    def _rewrap_managed_backups(self, keys: RegionKeys, old_uri: str) -> None:
        """The CMEK change itself is done; a managed backup the old key alone can still open is
        reported in the region's user message (and by managed_backups()) rather than undoing it."""
        try:
            managed.rewrap_for_new_cmek(self, keys.region, old_uri)
        except StrongroomError as exc:
            keys.set_status(keys.spec.status, str(exc))

    def restore_managed(
        self,
        subdir: str = "LATEST",
        databases: list[str] | None = None,
        new_db_name: str | None = None,
        region: str | None = None,
        as_of: datetime | None = None,
    ) -> JobResult:
        if new_db_name is not None:
            check_database_name(new_db_name)
        return managed.restore(self, subdir, databases, new_db_name, region, as_of)

    # -- backup and restore: thin calls into the backup engine --------------------------------------
    def backup(
        self,
        into: str | Sequence[str],
        *,
        databases: list[str] | None = None,
        tables: list[str] | None = None,
        encryption: Encryption | None = None,
        incremental: str | None = None,
        progress: Progress | None = None,
        job_id: int | None = None,
    ) -> JobResult:
        """BACKUP [DATABASE ... | TABLE ...] INTO ... (full), or INTO LATEST / '<subdir>' IN ... (incremental)."""
        with self._rotation_lock(shared=True):
            return engine.backup(
                into,
                _sources(self, databases, tables),
                encryption=encryption,
                incremental=incremental,
                is_full_cluster=not databases and not tables,
                context=self.storage_context,
                progress=progress,
                job_id=job_id,
            )

    def restore(
        self,
        from_: str | Sequence[str],
        *,
        subdir: str = "LATEST",
        databases: list[str] | None = None,
        tables: list[str] | None = None,
        new_db_name: str | None = None,
        into_db: str | None = None,
        encryption: Encryption | None = None,
        as_of: datetime | None = None,
        progress: Progress | None = None,
        job_id: int | None = None,
    ) -> JobResult:
        if new_db_name is not None:
            check_database_name(new_db_name)
        with self._rotation_lock(shared=True):
            return engine.restore(
                from_,
                self,
                subdir=subdir,
                encryption=encryption,
                databases=databases,
                tables=tables,
                new_db_name=new_db_name,
                into_db=into_db,
                as_of=as_of,
                context=self.storage_context,
                progress=progress,
                job_id=job_id,
            )

    def show_backups(self, in_: str | Sequence[str]) -> list[str]:
        return engine.show_backups(in_, context=self.storage_context)

    def show_backup(
        self,
        in_: str | Sequence[str],
        *,
        subdir: str = "LATEST",
        encryption: Encryption | None = None,
        check_files: bool = False,
    ) -> ShowBackupResult:
        return engine.show_backup(
            in_, subdir=subdir, encryption=encryption, check_files=check_files, context=self.storage_context
        )

    def alter_backup(
        self, in_: str, *, subdir: str = "LATEST", new_kms: tuple[str, ...], old_kms: tuple[str, ...]
    ) -> str:
        return engine.alter_backup_add_kms(
            in_, subdir=subdir, new_kms=new_kms, old_kms=old_kms, context=self.storage_context
        )


#: The module-level names of :meth:`Store.init` and :meth:`Store.open`.
init_store = Store.init
open_store = Store.open


def _sources(store: Store, databases: list[str] | None, tables: list[str] | None) -> list[DatabaseSource]:
    if databases and tables:
        raise UsageError("back up either databases or tables, not both")
    if tables:
        grouped: dict[str, list[str]] = {}
        for qualified in tables:
            parts = qualified.split(".")
            if len(parts) == 3 and parts[1] == "public":
                parts = [parts[0], parts[2]]
            if len(parts) != 2:
                raise UsageError(f'qualify table "{qualified}" with its database, as database.table')
            grouped.setdefault(parts[0], []).append(parts[1])
        out = []
        for db, names in grouped.items():
            if not store.has_database(db):
                raise NotFoundError(f'database "{db}" does not exist')
            out.append(
                DatabaseSource(
                    db, store.database_path(db), store.database_key(db), tuple(names), store.database_region(db)
                )
            )
        return out
    names = databases or store.databases()
    for db in names:
        if not store.has_database(db):
            raise NotFoundError(f'database "{db}" does not exist')
    if not names:
        raise UsageError("the store has no databases to back up")
    return [
        DatabaseSource(db, store.database_path(db), store.database_key(db), region=store.database_region(db))
        for db in names
    ]


def _cmek_specs(cmek: str | Mapping[str, str] | None, regions: Sequence[str]) -> dict[str, str]:
    if cmek is None:
        return {}
    if isinstance(cmek, str):
        return dict.fromkeys(regions, cmek)
    unknown = [r for r in cmek if r not in regions]
    if unknown:
        raise UsageError(f'region "{unknown[0]}" does not exist\nHINT: valid regions: {", ".join(regions)}')
    return dict(cmek)


def _truncate_wal(conn: apsw.Connection, timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> bool:
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


def _db_bytes(path: Path) -> int:
    return sum(os.path.getsize(f) for f in (path, Path(f"{path}-wal")) if f.exists())
