"""A Strongroom store: named SQLite databases in one or more regions, encrypted at rest.

Layout::

    <store>/STRONGROOM-STORE         store metadata (JSON): id, regions, databases' home regions
    <store>/databases/<name>.db      one SQLite3 Multiple Ciphers database per name (AEGIS, WAL mode)
    <store>/keys/<region>/KEYS-<n>   the region's key hierarchy (see keys.py)
    <store>/audit.log                every use of a CMEK (see audit.py)
    <store>/system.db                the job registry (SHOW JOBS)
    <store>/extern/                  nodelocal:// external storage (CockroachDB's external-io dir)
    <store>/managed-backups/         the store's own backups (see managed.py)

Every database is encrypted with a data key of its home region; the region's store key seals the
data keys, and the region's CMEK (or, without CMEK, a local key file) wraps the store key. Opening
the store unwraps each region's store key (one KMS decrypt per region): no key, no start.

``Store`` is a table of contents: each concern is a part with a name of its own, and the methods
here only hand a call to the part that owns it.

=================  ==========================  ==============================================
part               module                      what it owns
=================  ==========================  ==============================================
``meta``           meta.py                     the metadata file: id, regions, home regions
``keys``           cmek.py                     each region's keys; enable/rotate/revoke CMEK
``lock``           locks.py                    the rotation lock (rotations vs. everything)
``dbs``            databases.py                create, drop, connect; the restore target
``rotation``       rotation.py                 data key and store key rotation, online re-key
``backups``        backups.py                  BACKUP/RESTORE/SHOW/ALTER, each a job
``managed``        managed.py                  managed backups: schedule, take, restore
``schedules``      schedules.py                CREATE SCHEDULE FOR BACKUP: keep, show, run due
``restores``       restores.py                 restores asked for through the Cloud API
``jobs``           jobs.py                     the job registry and runner (SHOW JOBS)
=================  ==========================  ==============================================
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import apsw

from ..backup.engine import ShowBackupResult
from ..backup.jobs import JobResult, Progress
from ..backup.keys import Encryption
from ..backup.reader import BackupReader
from ..backup.requests import LATEST, AlterBackupRequest, BackupRequest, RestoreRequest, ShowBackupRequest
from ..errors import AlreadyExistsError, StrongroomError, UsageError
from ..kms import local_kms_uri
from ..storage import StorageContext
from .audit import AuditLog, AuditRecord
from .backups import Backups
from .cmek import KeyHierarchy
from .databases import Databases
from .jobs import JobRegistry, JobRunner
from .keys import DEFAULT_ROTATION_PERIOD, CMEKSpec, RegionKeys, key_type
from .locks import RotationLock
from .managed import ManagedBackup, ManagedBackups, Schedule, TakenBackup
from .meta import DEFAULT_REGION, FORMAT, MARKER, StoreMeta, check_region_name
from .restores import RestoreRecords
from .rotation import Rotation
from .schedules import Schedules
from .status import RegionStatus, encryption_status


class SQLSession(Protocol):
    """What ``Store.execute`` needs of a SQL session (strongroom.sql.Session is one)."""

    def execute(self, sql: str, params: Sequence[object] | None = None) -> list[Any]: ...

    def close(self) -> None: ...

    def __enter__(self) -> SQLSession: ...

    def __exit__(self, *exc: object) -> None: ...


#: How a store makes a SQL session. The SQL layer sits above the store, so it registers itself
#: here (``strongroom.sql`` does, on import) instead of the store importing it.
SQLSessionFactory = Callable[["Store", str | None], SQLSession]
_sql_sessions: list[SQLSessionFactory] = []


def register_sql_sessions(factory: SQLSessionFactory) -> None:
    _sql_sessions[:] = [factory]


class Store:
    """Open with :meth:`Store.open` (``strongroom.open_store``); create with :meth:`Store.init`."""

    def __init__(self, path: Path, meta: StoreMeta) -> None:
        self.path = path
        self.databases_dir = path / "databases"
        self.extern_dir = path / "extern"
        self.keys_dir = path / "keys"
        self.audit = AuditLog(path / "audit.log")
        self.meta = meta
        self.lock = RotationLock(self.keys_dir / ".rotate.lock")
        self.keys = KeyHierarchy(meta, self.keys_dir, self.audit, self.lock)
        self.dbs = Databases(self.databases_dir, meta, self.keys, self.lock)
        self.rotation = Rotation(self.keys, self.dbs)
        self._registry: JobRegistry | None = None
        self.jobs = JobRunner(self._job_registry)
        self.storage_context = StorageContext(extern_dir=self.extern_dir)
        self.backups = Backups(self.dbs, self.jobs, self.storage_context)
        self.managed = ManagedBackups(path, meta, self.keys, self.dbs, self.backups, self.jobs, self.storage_context)
        self.schedules = Schedules(path / "system.db", meta, self.keys, self.backups)
        self.restores = RestoreRecords(path / "system.db")
        self.keys.on_cmek_moved = self._rewrap_managed_backups
        self._session: SQLSession | None = None

    def _job_registry(self) -> JobRegistry:
        if self._registry is None:
            self._registry = JobRegistry(self.path / "system.db")
        return self._registry

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
        # Only the store's owner may look inside: job errors, the audit log and the metadata name
        # databases, regions and (redacted) key URIs.
        for d in (root, root / "databases", root / "extern", root / "keys"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            d.chmod(0o700)
        doc: dict[str, object] = {
            "format": FORMAT,
            "id": store_id,
            "created": datetime.now(UTC).isoformat(),
            "regions": regions,
            "encrypted": True,
        }
        if len(specs) < len(regions):
            doc["key_file"] = local_kms_uri(
                f"strongroom-store-{store_id}", Path(keyring).absolute() if keyring else None
            )
        store = cls(root, StoreMeta(root, doc))
        for region in regions:
            store.keys.create_region(region, specs.get(region), rotation_period)
        store.meta.update(lambda doc: None)  # writes the first metadata file
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, unlock: bool = True) -> Store:
        """Open a store: unwrap every region's store key (one KMS decrypt per region).

        With ``unlock=False`` no key is touched: only metadata and key status can be read (how
        ``strongroom cmek status`` and ``cmek enable`` work on a store that cannot start).
        """
        root = Path(path).absolute()
        store = cls(root, StoreMeta.read(root, path))
        store.keys.check_present()
        if unlock:
            store.keys.unlock()
        return store

    def close(self) -> None:
        """Close the default SQL session, wait for detached jobs, and forget every unwrapped key."""
        if self._session is not None:
            self._session.close()
            self._session = None
        self.jobs.wait()
        self.keys.close()

    def add_region(self, region: str, *, rotation_period: timedelta = DEFAULT_ROTATION_PERIOD) -> None:
        """Add a region to the store. As in CockroachDB Cloud, a new region is not protected by the
        CMEK of the others: its store key is wrapped by the store's key file until CMEK is enabled
        for it (``rotate_cmek({region: uri})``, the API's PUT)."""
        check_region_name(region)
        if region in self.regions:
            raise AlreadyExistsError(f'region "{region}" already exists')
        if self.meta.key_file is None:
            key_file = local_kms_uri(f"strongroom-store-{self.id}")
            self.meta.update(lambda doc: doc.__setitem__("key_file", doc.get("key_file") or key_file))
        with self.lock.exclusive():
            self.keys.create_region(region, None, rotation_period)
            self.meta.add_region(region)

    # -- what it is -------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.meta.id

    @property
    def regions(self) -> list[str]:
        return self.meta.regions

    @property
    def primary_region(self) -> str:
        return self.meta.primary_region

    def database_region(self, name: str) -> str | None:
        """The database's home region as declared (``CREATE DATABASE ... PRIMARY REGION``), or None."""
        return self.meta.database_region(name)

    def home_region(self, name: str) -> str:
        """The region whose keys protect database ``name``: its declared region, else the primary."""
        return self.meta.home_region(name)

    def region_keys(self, region: str) -> RegionKeys:
        """An open region's keys (for the store's own parts and tests; apps never need keys)."""
        return self.keys.region_keys(region)

    # -- SQL --------------------------------------------------------------------------------------
    def session(self, database: str | None = None) -> SQLSession:
        """A SQL session on this store (its own current database, ``USE``)."""
        if not _sql_sessions:
            # The SQL layer sits above the store and registers itself when imported; load it by
            # name on first use (a plugin, not a dependency: the store never calls into its code).
            importlib.import_module("strongroom.sql")
        return _sql_sessions[0](self, database)

    def execute(self, sql: str, params: Sequence[object] | None = None) -> Any:
        """Run a script of statements in the store's default session; returns the last statement's
        result (``columns`` and ``rows``, or a ``status`` tag)."""
        if self._session is None:
            self._session = self.session()
        results = self._session.execute(sql, params)
        if not results:
            raise UsageError("no statement to execute")
        return results[-1]

    # -- databases --------------------------------------------------------------------------------
    def databases(self) -> list[str]:
        """The names of the store's databases, sorted."""
        return self.dbs.names()

    def database_path(self, name: str) -> Path:
        """The file of database ``name`` (a ciphertext file: open it with :meth:`connect`)."""
        return self.dbs.database_path(name)

    def has_database(self, name: str) -> bool:
        """Does database ``name`` exist?"""
        return self.dbs.exists(name)

    def database_key(self, name: str) -> bytes:
        """The data key database ``name`` opens with now (for the backup engine, inside the store)."""
        return self.dbs.database_key(name)

    def create_database(self, name: str, *, if_not_exists: bool = False, region: str | None = None) -> None:
        """CREATE DATABASE [IF NOT EXISTS] name [PRIMARY REGION region], under a data key of its region."""
        self.dbs.create(name, if_not_exists=if_not_exists, region=region)

    def drop_database(self, name: str, *, if_exists: bool = False) -> None:
        """DROP DATABASE [IF EXISTS] name: its files and its entry in the region's key registry."""
        self.dbs.drop(name, if_exists=if_exists)

    def connect(self, name: str) -> apsw.Connection:
        """An ordinary apsw connection to a database of the store, keyed behind the scenes."""
        return self.dbs.connect(name)

    # -- keys: rotation and CMEK ------------------------------------------------------------------
    def rotate_data_keys(self, region: str | None = None, *, if_due: bool = False) -> dict[str, list[str]]:
        """New data keys, every database re-keyed online; ``if_due``: only where the period ran out."""
        return self.rotation.rotate_data_keys(region, if_due=if_due)

    def rotate_store_key(self, region: str | None = None) -> None:
        """New store keys (wrapped by the same CMEK or key file), each with a new data key for new data."""
        self.rotation.rotate_store_key(region)

    def enable_cmek(self, specs: Mapping[str, str | CMEKSpec], *, auth_principal: str | None = None) -> None:
        """CockroachDB Cloud's POST: a CMEK for every region."""
        self.keys.enable_cmek(specs, auth_principal=auth_principal)

    def rotate_cmek(self, specs: Mapping[str, str | CMEKSpec | None], *, auth_principal: str | None = None) -> None:
        """CockroachDB Cloud's PUT: a new key URI, or None for a new version of the same key."""
        self.keys.rotate_cmek(specs, auth_principal=auth_principal)

    def check_cmek_specs(self, specs: Mapping[str, str | CMEKSpec], *, every_region: bool = False) -> None:
        """Refuse a CMEK change before anything is touched (unknown region, missing region, bad URI)."""
        self.keys.check_cmek_specs(specs, every_region=every_region)

    def check_cmek_usable(self, specs: Mapping[str, str | CMEKSpec]) -> None:
        """Refuse keys the KMS will not use, before anything is touched (one audited probe each)."""
        self.keys.check_cmek_usable(specs)

    def revoke_cmek(self) -> None:
        """CockroachDB Cloud's PATCH REVOKE: the store stops and no longer starts."""
        self.keys.revoke_cmek()

    def encryption_status(self) -> list[RegionStatus]:
        """Which keys protect what, per region (CockroachDB's encryption status report)."""
        return encryption_status(self.keys, self.dbs)

    def audit_records(self) -> list[AuditRecord]:
        """Every use of a CMEK or key file, oldest first (``<store>/audit.log``)."""
        return self.audit.records()

    def _rewrap_managed_backups(self, keys: RegionKeys, old_uri: str) -> None:
        """The CMEK change itself is done; a managed backup the old key alone can still open is
        reported in the region's user message (and by managed_backups()) rather than undoing it."""
        try:
            self.managed.rewrap_for_new_cmek(keys.region, old_uri)
        except StrongroomError as exc:
            keys.set_status(keys.spec.status, str(exc))

    # -- backup and restore (Python surface: builds the request every other surface builds too) ----
    def backup(
        self,
        into: str | Sequence[str],
        *,
        databases: Sequence[str] | None = None,
        tables: Sequence[str] | None = None,
        encryption: Encryption | None = None,
        incremental: str | None = None,
        include_unencrypted_data: bool = False,
        progress: Progress | None = None,
    ) -> JobResult:
        """BACKUP [DATABASE ... | TABLE ...] INTO ... (full), or INTO LATEST / '<subdir>' IN ... (incremental).

        Without ``encryption`` a backup is refused unless ``include_unencrypted_data`` consents to
        writing the store's encrypted databases in plain text."""
        request = BackupRequest(
            into=tuple([into] if isinstance(into, str) else into),
            databases=tuple(databases) if databases else None,
            tables=tuple(tables) if tables else None,
            encryption=encryption or Encryption(),
            incremental=incremental,
            include_unencrypted_data=include_unencrypted_data,
        )
        return self.backups.backup(request, progress)

    def restore(
        self,
        from_: str | Sequence[str],
        *,
        subdir: str = LATEST,
        databases: Sequence[str] | None = None,
        tables: Sequence[str] | None = None,
        new_db_name: str | None = None,
        into_db: str | None = None,
        encryption: Encryption | None = None,
        as_of: datetime | None = None,
        verify: bool = False,
        progress: Progress | None = None,
    ) -> JobResult:
        """RESTORE [DATABASE ... | TABLE ...] FROM LATEST | '<subdir>' IN ...; ``verify`` adds SQLite's
        full integrity_check of each restored database (every chunk is authenticated regardless)."""
        request = RestoreRequest(
            from_=tuple([from_] if isinstance(from_, str) else from_),
            subdir=subdir,
            databases=tuple(databases) if databases else None,
            tables=tuple(tables) if tables else None,
            new_db_name=new_db_name,
            into_db=into_db,
            encryption=encryption or Encryption(),
            as_of=as_of,
            verify=verify,
        )
        return self.backups.restore(request, progress)

    def show_backups(self, in_: str | Sequence[str]) -> list[str]:
        """SHOW BACKUPS IN ...: the full backups of a collection, oldest first."""
        return self.backups.show_backups(in_ if isinstance(in_, str) else tuple(in_))

    def show_backup(
        self,
        in_: str | Sequence[str],
        *,
        subdir: str = LATEST,
        encryption: Encryption | None = None,
        check_files: bool = False,
    ) -> ShowBackupResult:
        """SHOW BACKUP LATEST | '<subdir>' IN ... [WITH ..., check_files]: one row per object and layer."""
        request = ShowBackupRequest(
            in_=tuple([in_] if isinstance(in_, str) else in_),
            subdir=subdir,
            encryption=encryption or Encryption(),
            check_files=check_files,
        )
        return self.backups.show_backup(request)

    def open_backup(
        self,
        in_: str | Sequence[str],
        *,
        subdir: str = LATEST,
        as_of: datetime | None = None,
        encryption: Encryption | None = None,
    ) -> BackupReader:
        """Query a backup without restoring it: ``reader.connect(db)`` is a read-only connection
        served straight from the backup (no plaintext on disk; pages are read as queries need them)."""
        return self.backups.open_backup(
            in_ if isinstance(in_, str) else tuple(in_), subdir=subdir, as_of=as_of, encryption=encryption
        )

    def alter_backup(self, in_: str, *, subdir: str = LATEST, new_kms: Sequence[str], old_kms: Sequence[str]) -> str:
        """ALTER BACKUP ... ADD NEW_KMS = ... WITH OLD_KMS = ...; returns the ENCRYPTION-INFO file written."""
        return self.backups.alter_backup(
            AlterBackupRequest(in_=(in_,), subdir=subdir, new_kms=tuple(new_kms), old_kms=tuple(old_kms))
        )

    def drop_backup_kms(
        self, in_: str, *, subdir: str = LATEST, drop_kms: Sequence[str], old_kms: Sequence[str]
    ) -> str:
        """ALTER BACKUP ... DROP KMS = ... WITH OLD_KMS = ...; returns the ENCRYPTION-INFO file written.
        Copies of the old files keep the dropped wrap: rotate_backup_key revokes for real."""
        request = AlterBackupRequest(in_=(in_,), subdir=subdir, drop_kms=tuple(drop_kms), old_kms=tuple(old_kms))
        return self.backups.alter(request).written

    def rotate_backup_key(
        self,
        in_: str,
        *,
        subdir: str = LATEST,
        old_kms: Sequence[str] = (),
        new_kms: Sequence[str] = (),
        old_passphrase: str | None = None,
        new_passphrase: str | None = None,
    ) -> str:
        """ALTER BACKUP ... ROTATE DATA KEY WITH OLD_KMS = ... [, NEW_KMS = ...]: the chain re-encrypted
        under a new data key (wrapped by ``new_kms``, else ``old_kms``); a passphrase chain takes
        ``old_passphrase`` and ``new_passphrase`` instead. Returns its new full subdir."""
        request = AlterBackupRequest(
            in_=(in_,),
            subdir=subdir,
            new_kms=tuple(new_kms),
            old_kms=tuple(old_kms),
            rotate=True,
            old_passphrase=old_passphrase,
            new_passphrase=new_passphrase,
        )
        return self.backups.alter(request).written

    # -- managed backups ----------------------------------------------------------------------------
    @property
    def managed_backup_schedule(self) -> Schedule:
        """How often managed backups are taken, and full ones."""
        return self.managed.schedule()

    def set_managed_backup_schedule(
        self,
        *,
        interval: timedelta | None = None,
        full_every: timedelta | None = None,
        enabled: bool | None = None,
        frequency_minutes: int | None = None,
        retention_days: int | None = None,
    ) -> Schedule:
        """Change the managed backup configuration (CockroachDB Cloud's ``enabled``, ``frequency_minutes``
        and ``retention_days``, and Strongroom's ``full_every``); unchanged parts keep their value."""
        return self.managed.set_schedule(
            interval=interval,
            full_every=full_every,
            enabled=enabled,
            frequency_minutes=frequency_minutes,
            retention_days=retention_days,
        )

    def run_due_managed_backups(self, now: datetime | None = None) -> list[TakenBackup]:
        """Take the managed backups due now (what ``strongroom serve``'s scheduler calls)."""
        return self.managed.run_due(now)

    def managed_backup(self, full: bool | None = None) -> list[TakenBackup]:
        """Take a managed backup of every region now: full, incremental, or (None) as scheduled."""
        return self.managed.take_now(full)

    def managed_backups(self) -> list[ManagedBackup]:
        """Every managed backup layer of every region, and whether it can be restored (and why not)."""
        return self.managed.list_backups()

    def restore_managed(
        self,
        subdir: str = LATEST,
        databases: list[str] | None = None,
        new_db_name: str | None = None,
        region: str | None = None,
        as_of: datetime | None = None,
        *,
        tables: list[str] | None = None,
        into_db: str | None = None,
        schema_only: bool = False,
    ) -> JobResult:
        """Restore managed backups into this store (all or nothing; only the store that took them)."""
        result = self.managed.restore(
            subdir, databases, new_db_name, region, as_of, tables=tables, into_db=into_db, schema_only=schema_only
        )
        assert isinstance(result, JobResult)
        return result


#: The module-level names of :meth:`Store.init` and :meth:`Store.open`.
init_store = Store.init
open_store = Store.open


def _cmek_specs(cmek: str | Mapping[str, str] | None, regions: Sequence[str]) -> dict[str, str]:
    if cmek is None:
        return {}
    if isinstance(cmek, str):
        return dict.fromkeys(regions, cmek)
    unknown = [r for r in cmek if r not in regions]
    if unknown:
        raise UsageError(f'region "{unknown[0]}" does not exist\nHINT: valid regions: {", ".join(regions)}')
    return dict(cmek)
