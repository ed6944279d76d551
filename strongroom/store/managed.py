"""Managed backups: the store backs itself up on a schedule, under backup keys of its own.

CockroachDB Cloud backs every cluster up on a schedule; those *managed* backups cover every
database, can be restored only to the cluster where they were taken, and are encrypted with data
keys distinct from the cluster's. Once CMEK is enabled their data keys are wrapped by the CMEK, the
CMEK must be available to restore, and backups taken before CMEK was enabled can no longer be
restored. Here:

- **Where**: ``<store>/managed-backups/<region>/``, one backup collection per region in CockroachDB's
  layout, written by the backup engine, holding only the databases whose home region it is. Each
  region's backups are therefore under that region's key alone: destroying one region's CMEK makes
  exactly that region's backups unrecoverable (data domiciling).
- **Keys**: each full backup gets a fresh random data key (the engine's KMS mode: it is never one of
  the store's data keys), wrapped by the region's CMEK when enabled, else by the region's store key
  file. Incrementals use their full backup's key. Every call to that key is in the audit log.
- **Whose**: ``MANAGED-BY`` at the root of each collection names the store and region that write
  it; a store restores only its own. (Cryptographically, a store without CMEK cannot unwrap another
  store's backups anyway: its key file is its own. Two stores sharing one CMEK are kept apart by
  this check.)
- **CMEK**: a backup whose data key is not wrapped by the region's current key (one taken before
  CMEK was enabled) is refused, and the next scheduled backup of the region is a full one. When a
  region moves to another CMEK, its managed backups' data keys are wrapped by the new key too
  (ALTER BACKUP ... ADD NEW_KMS), so they stay restorable after the old key is retired.
- **Schedule**: every ``interval`` (default 1 h) a backup is due per region, a full one when the
  last full is ``full_every`` old (default 24 h; CockroachDB Cloud's daily full plus hourly
  incrementals), an incremental otherwise. What is due is read from the collections themselves (the
  backups' subdir names are their end times), so a missed run or a restarted scheduler catches up.
- **One writer**: ``managed-backups/.lock`` (flock) serialises writers across processes; a killed
  backup leaves a partial layer that nothing lists or uses, and LATEST moves only after every file
  of a backup is durable.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..backup import engine, layout, lifecycle
from ..backup.jobs import JobResult
from ..backup.keys import Encryption, KMSOpener, add_kms, read_encryption_infos
from ..backup.requests import LATEST, BackupRequest, RestoreRequest, ShowBackupRequest
from ..backup.retention import RetentionPolicy, Within, plan_forget
from ..crypto import kms_identity
from ..errors import EncryptionError, KMSError, NotFoundError, StrongroomError, UsageError
from ..kms import KMS, open_kms
from ..storage import ExternalStorage, StorageContext, open_storage
from ..uri import redact
from .audit import AuditedKMS
from .backups import Backups
from .cmek import KeyHierarchy
from .databases import Databases
from .jobs import JobRunner
from .keys import REVOKED, RegionSpec
from .meta import StoreMeta, check_database_name

MANAGED_DIR = "managed-backups"
OWNER_MARKER = "MANAGED-BY"
SCHEDULE_META = "managed_backups"
DEFAULT_INTERVAL = timedelta(hours=1)
DEFAULT_FULL_EVERY = timedelta(days=1)
FULL, INCREMENTAL = "full", "incremental"
BACKUP_PURPOSE = "managed backup"
RESTORE_PURPOSE = "restore managed backup"
REWRAP_PURPOSE = "re-wrap managed backup keys"
LIST_COLUMNS = ("region", "path", "backup_type", "end_time", "restorable", "reason")
TAKEN_COLUMNS = ("region", "backup_type", "path", "end_time", "rows", "bytes")


class ManagedBackupError(StrongroomError):
    """Several regions' managed backups failed, or some failed and others succeeded (``taken``).
    (When the only region to back up fails, its own error is raised.)"""

    def __init__(self, message: str, taken: list[TakenBackup]) -> None:
        super().__init__(message)
        self.taken = taken


# -------------------------------------------------------------------------------------------- schedule


def format_duration(value: timedelta) -> str:
    """``1d``, ``6h``, ``30m`` or ``45s``: the largest unit that divides the duration."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


#: CockroachDB Cloud's backup configuration allows these values, and so do we.
FREQUENCY_MINUTES = (5, 10, 15, 30, 60, 240, 1440)
RETENTION_DAYS = (2, 7, 30, 90, 365)
DEFAULT_RETENTION_DAYS = 30
CONFIG_COLUMNS = ("enabled", "frequency_minutes", "retention_days", "full_every")


@dataclass(frozen=True)
class Schedule:
    """CockroachDB Cloud's backup configuration (``enabled``, ``frequency_minutes``, ``retention_days``),
    plus Strongroom's ``full_every``: a backup of each region every ``interval``, a full one when the
    last full is ``full_every`` old, and backups older than ``retention_days`` deleted."""

    interval: timedelta = DEFAULT_INTERVAL
    full_every: timedelta = DEFAULT_FULL_EVERY
    enabled: bool = True
    retention_days: int = DEFAULT_RETENTION_DAYS
    #: Set once by the user: CockroachDB Cloud then refuses further changes. Here a longer
    #: retention is still accepted (it deletes nothing); a shorter one, which would delete backups
    #: sooner than promised, is refused.
    retention_set: bool = False

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0):
            raise UsageError("the managed backup interval must be positive")
        if self.full_every < self.interval:
            raise UsageError(
                f"the full backup period ({format_duration(self.full_every)}) must not be shorter than "
                f"the backup interval ({format_duration(self.interval)})"
            )
        if self.retention_days not in RETENTION_DAYS:
            raise UsageError(
                f"retention_days {self.retention_days}: valid values are {', '.join(map(str, RETENTION_DAYS))}"
            )

    @property
    def frequency_minutes(self) -> int:
        return max(1, int(self.interval.total_seconds() // 60))

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.retention_days)

    def row(self) -> tuple[object, ...]:
        return (self.enabled, self.frequency_minutes, self.retention_days, format_duration(self.full_every))

    def to_meta(self) -> dict[str, object]:
        return {
            "interval_s": int(self.interval.total_seconds()),
            "full_every_s": int(self.full_every.total_seconds()),
            "enabled": self.enabled,
            "retention_days": self.retention_days,
            "retention_set": self.retention_set,
        }

    @classmethod
    def from_meta(cls, doc: object) -> Schedule:
        if not isinstance(doc, dict):
            return cls()
        return cls(
            timedelta(seconds=int(doc["interval_s"])),
            timedelta(seconds=int(doc["full_every_s"])),
            enabled=bool(doc.get("enabled", True)),
            retention_days=int(doc.get("retention_days", DEFAULT_RETENTION_DAYS)),
            retention_set=bool(doc.get("retention_set", False)),
        )

    def changed(
        self,
        *,
        interval: timedelta | None = None,
        full_every: timedelta | None = None,
        enabled: bool | None = None,
        frequency_minutes: int | None = None,
        retention_days: int | None = None,
    ) -> Schedule:
        """This configuration with the given parts changed (CockroachDB Cloud's PATCH /backups-config)."""
        if frequency_minutes is not None:
            if frequency_minutes not in FREQUENCY_MINUTES:
                raise UsageError(
                    f"frequency_minutes {frequency_minutes}: valid values are {', '.join(map(str, FREQUENCY_MINUTES))}"
                )
            interval = timedelta(minutes=frequency_minutes)
        retention_set = self.retention_set
        if retention_days is not None and retention_days != self.retention_days:
            if self.retention_set and retention_days < self.retention_days:
                raise UsageError(
                    f"retention_days is already set to {self.retention_days}: it can only be set once, and a "
                    f"shorter retention ({retention_days}) would delete backups sooner than promised "
                    "(a longer one is accepted)"
                )
            retention_set = True
        new_interval = interval or self.interval
        full = full_every or self.full_every
        if full_every is None and full < new_interval:
            full = new_interval  # a rarer backup than the full period: every backup is a full one
        return Schedule(
            new_interval,
            full,
            enabled=self.enabled if enabled is None else enabled,
            retention_days=self.retention_days if retention_days is None else retention_days,
            retention_set=retention_set,
        )


def _shown(end: datetime) -> str:
    """An end time as listed: to the hundredth of a second, as precise as the backup's name."""
    return end.strftime("%Y-%m-%d %H:%M:%S.%f")[:-4]


@dataclass(frozen=True)
class ManagedBackup:
    """One layer (a full backup or an incremental on it) of a region's managed backups."""

    region: str
    full_subdir: str
    path: str  # the full subdir, or the incremental's collection-relative dir
    backup_type: str
    end_time: datetime  # from the layer's name: to the hundredth of a second, UTC
    restorable: bool
    reason: str | None  # why not, when not restorable

    def row(self) -> tuple[object, ...]:
        return (self.region, self.path, self.backup_type, _shown(self.end_time), self.restorable, self.reason)

    @property
    def as_of(self) -> datetime:
        """The AS OF time that restores exactly this layer. Its name floors its end time to the
        hundredth of a second, and layers' names are distinct, so the next layer ends no sooner
        than a hundredth after this name: anything below that and at or after the real end picks
        this one."""
        return self.end_time + timedelta(microseconds=9_999)


@dataclass(frozen=True)
class TakenBackup:
    """A managed backup a run took."""

    region: str
    backup_type: str
    full_subdir: str
    path: str
    end_time: datetime
    result: JobResult

    def row(self) -> tuple[object, ...]:
        return (self.region, self.backup_type, self.path, _shown(self.end_time), self.result.rows, self.result.bytes)


def _full_time(full: str) -> datetime:
    return datetime.strptime(full.strip("/"), "%Y/%m/%d-%H%M%S.%f").replace(tzinfo=UTC)


def _incremental_time(layer_dir: str) -> datetime:
    day, clock = layer_dir.rsplit("/", 2)[-2:]
    return datetime.strptime(f"{day}/{clock}", "%Y%m%d/%H%M%S.%f").replace(tzinfo=UTC)


def _latest_full(storage: ExternalStorage) -> str | None:
    try:
        return layout.read_latest(storage)
    except NotFoundError:
        return None


def _key_name(spec: RegionSpec) -> str:
    return "CMEK" if spec.cmek else "store key file"


def _wrapped_by(storage: ExternalStorage, full: str, key_uri: str) -> bool:
    """Is the full backup's data key wrapped by ``key_uri``? (ENCRYPTION-INFO only: no KMS call.)"""
    kms = open_kms(key_uri)
    try:
        identity = kms_identity(kms.master_key_id)
    finally:
        kms.close()
    return any(identity in info.encrypted_data_keys for _name, info in read_encryption_infos(storage, full))


def _unrestorable(storage: ExternalStorage, full: str, spec: RegionSpec) -> str | None:
    """Why a chain cannot be restored now, or None (decided without any KMS call)."""
    what = f'managed backup {full} of region "{spec.region}"'
    if spec.status == REVOKED:
        return f"{what} cannot be restored: the region's CMEK {redact(spec.key_uri)} was revoked"
    if spec.cmek and spec.cmek_enabled_at and _full_time(full) < datetime.fromisoformat(spec.cmek_enabled_at):
        return f"{what} was taken before CMEK was enabled ({spec.cmek_enabled_at}): it cannot be restored"
    if not _wrapped_by(storage, full, spec.key_uri):
        # Taken under another key: before CMEK was enabled (within the same second), or before the
        # region moved to another CMEK.
        key = f"{_key_name(spec)} {redact(spec.key_uri)}"
        return f"{what} is not encrypted with the region's {key}: it cannot be restored"
    return None


class ManagedBackups:
    """A store's managed backups: schedule, take, list, restore, and re-wrap after a CMEK move."""

    def __init__(
        self,
        root: Path,
        meta: StoreMeta,
        keys: KeyHierarchy,
        databases: Databases,
        backups: Backups,
        jobs: JobRunner,
        context: StorageContext,
    ) -> None:
        self.root = root
        self.meta = meta
        self.keys = keys
        self.databases = databases
        self.backups = backups
        self.jobs = jobs
        self.context = context

    def schedule(self) -> Schedule:
        return Schedule.from_meta(self.meta.doc.get(SCHEDULE_META))

    def set_schedule(
        self,
        *,
        interval: timedelta | None = None,
        full_every: timedelta | None = None,
        enabled: bool | None = None,
        frequency_minutes: int | None = None,
        retention_days: int | None = None,
    ) -> Schedule:
        """Change the configuration (unchanged parts keep their value); stored in the store metadata."""
        made: list[Schedule] = []

        def change(meta: dict[str, object]) -> None:
            current = Schedule.from_meta(meta.get(SCHEDULE_META))
            made.append(
                current.changed(
                    interval=interval,
                    full_every=full_every,
                    enabled=enabled,
                    frequency_minutes=frequency_minutes,
                    retention_days=retention_days,
                )
            )
            meta[SCHEDULE_META] = made[0].to_meta()

        self.meta.update(change)
        return made[0]

    # -- collections -------------------------------------------------------------------------------

    def collection_dir(self, region: str) -> Path:
        return self.root / MANAGED_DIR / region

    @contextmanager
    def _collection(self, region: str) -> Iterator[ExternalStorage]:
        storage = open_storage(str(self.collection_dir(region)), self.context)
        try:
            yield storage
        finally:
            storage.close()

    def _check_owner(self, region: str, storage: ExternalStorage) -> None:
        """Refuse a collection another store (or another region) wrote: managed backups stay where taken."""
        where = self.collection_dir(region)
        try:
            owner = json.loads(storage.get(OWNER_MARKER))
            owner_store, owner_region = str(owner["store_id"]), str(owner["region"])
        except NotFoundError:
            raise NotFoundError(f"{where} has no {OWNER_MARKER} file: it is not a managed backup collection") from None
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{where}/{OWNER_MARKER} is malformed") from None
        if owner_store != self.meta.id or owner_region != region:
            raise UsageError(
                f'the managed backups in {where} were taken by store {owner_store} (region "{owner_region}"), '
                f'not by this store {self.meta.id} (region "{region}"): managed backups can be restored only '
                "to the store where they were taken"
            )

    def _claim(self, region: str, storage: ExternalStorage) -> None:
        """Write MANAGED-BY before a region's first managed backup, else check it (under the writer lock)."""
        if not storage.exists(OWNER_MARKER):
            doc = {"store_id": self.meta.id, "region": region, "created": datetime.now(UTC).isoformat()}
            storage.put(OWNER_MARKER, (json.dumps(doc) + "\n").encode(), create_only=True)
        self._check_owner(region, storage)

    def list_backups(self) -> list[ManagedBackup]:
        """Every managed backup layer of every region, oldest first per region (no KMS call)."""
        out: list[ManagedBackup] = []
        for region in self.meta.regions:
            if not self.collection_dir(region).is_dir():
                continue
            spec = self.keys.current_spec(region)
            with self._collection(region) as storage:
                try:
                    self._check_owner(region, storage)
                    foreign = None
                except StrongroomError as exc:
                    foreign = str(exc)
                for full in layout.list_fulls(storage):
                    reason = foreign or _unrestorable(storage, full, spec)
                    layers = [(full, FULL, _full_time(full))]
                    layers += [(d, INCREMENTAL, _incremental_time(d)) for d in layout.list_incrementals(storage, full)]
                    for path, kind, end in layers:
                        out.append(ManagedBackup(region, full, path, kind, end, reason is None, reason))
        return out

    # -- backup ------------------------------------------------------------------------------------

    def _opener(self, region: str, purpose: str) -> KMSOpener:
        def open_audited(uri: str) -> KMS:
            return AuditedKMS(open_kms(uri), self.keys.audit, region, purpose)

        return open_audited

    @contextmanager
    def _writer_lock(self, *, wait: bool) -> Iterator[bool]:
        """Hold the store's managed-backup lock (yields False, without waiting, if another holds it)."""
        folder = self.root / MANAGED_DIR
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _due(
        self, region: str, storage: ExternalStorage, sched: Schedule, now: datetime | None, full: bool | None
    ) -> str | None:
        """FULL, INCREMENTAL or None (nothing due). ``now`` None: a forced run (the interval is ignored)."""
        latest = _latest_full(storage)
        usable = latest is not None and _wrapped_by(storage, latest, self.keys.current_spec(region).key_uri)
        if full is False and not usable:
            raise UsageError(
                f'region "{region}" has no managed full backup under its current key to add an incremental '
                "backup to: take a full one"
            )
        if full is not None:
            return FULL if full else INCREMENTAL
        if not usable:
            return FULL  # the first backup, or the region's key changed (CMEK enabled): a new chain
        assert latest is not None
        last_full = _full_time(latest)
        increments = layout.list_incrementals(storage, latest)
        last = _incremental_time(increments[-1]) if increments else last_full
        if now is not None and now - last < sched.interval:
            return None
        return FULL if (now or datetime.now(UTC)) - last_full >= sched.full_every else INCREMENTAL

    def _take(
        self, region: str, storage: ExternalStorage, kind: str, names: list[str], clock: engine.Clock
    ) -> TakenBackup:
        spec = self.keys.current_spec(region)
        # No databases named: the chain follows every database of the region (is_full_cluster).
        request = BackupRequest(
            into=(str(self.collection_dir(region)),),
            encryption=Encryption(kms=(spec.key_uri,), kms_opener=self._opener(region, BACKUP_PURPOSE)),
            incremental=LATEST if kind == INCREMENTAL else None,
        )
        sources = [self.backups.source(name) for name in names]
        try:
            result = self.jobs.run(
                "BACKUP",
                f"managed backup of region {region}: {request.describe()}",
                lambda job_id, progress: engine.backup(
                    request, sources, context=self.context, progress=progress, job_id=job_id, clock=clock
                ),
                collection=request.shown_collection,
            )
        except KMSError as exc:
            raise KMSError(
                f'managed backup of region "{region}" failed: its {_key_name(spec)} {redact(spec.key_uri)} '
                f"is not available: {exc}"
            ) from None
        full = _latest_full(storage)
        assert full is not None
        if kind == FULL:
            return TakenBackup(region, FULL, full, full, _full_time(full), result)
        path = layout.list_incrementals(storage, full)[-1]  # the newest: no one else writes under the lock
        return TakenBackup(region, INCREMENTAL, full, path, _incremental_time(path), result)

    def _run(
        self, now: datetime | None, full: bool | None, *, wait: bool, clock: engine.Clock = engine.utcnow
    ) -> list[TakenBackup]:
        """Back up each region that is due (every region with databases, when ``now`` is None);
        ``clock`` stamps the backups."""
        taken: list[TakenBackup] = []
        errors: list[StrongroomError] = []
        with self._writer_lock(wait=wait) as locked:
            if not locked:
                return taken  # another process is writing managed backups now: it takes what is due
            sched = self.schedule()
            for region in self.meta.regions:
                names = self.databases.in_region(region)
                if not names:
                    continue
                try:
                    with self._collection(region) as storage:
                        self._claim(region, storage)
                        kind = self._due(region, storage, sched, now, full)
                        if kind is not None:
                            # Shared with creates, drops and other backups; a key rotation waits (and
                            # is waited for), so no database is re-keyed between key pick and snapshot.
                            with self.databases.lock.shared():
                                taken.append(self._take(region, storage, kind, names, clock))
                        if now is not None:  # the schedule's run, not a forced one
                            self._expire(region, storage, sched)
                except StrongroomError as exc:
                    errors.append(exc)  # regions are independent: one region's failure stops no other
        if len(errors) == 1 and not taken:
            raise errors[0]
        if errors:
            raise ManagedBackupError("; ".join(str(e) for e in errors), taken)
        return taken

    def _expire(self, region: str, storage: ExternalStorage, sched: Schedule) -> None:
        """Delete the region's managed backups older than ``retention_days`` (CockroachDB Cloud's
        retention), as a FORGET job, only when one is due to go. Counted back from the newest backup
        (restic's keep-within), not from now: backups that stopped being taken are not deleted for it."""
        policy = RetentionPolicy(within=Within(days=sched.retention_days))
        points, latest = lifecycle.restore_points(storage)
        if all(d.keep for d in plan_forget(points, policy, latest_full=latest)):
            return
        self.backups.forget(str(self.collection_dir(region)), policy)

    def run_due(self, now: datetime | None = None) -> list[TakenBackup]:
        """Take every managed backup that is due at ``now`` (default: the current time), then delete the
        expired ones; [] if none is due, if managed backups are disabled, or if another process is
        taking them at this moment."""
        if not self.schedule().enabled:
            return []
        # A run "as at" a given time (what-if, tests) stamps its backups with that time too, so what
        # is due next, and what expires, follow from it as they would in real time.
        at = now
        return self._run(now or datetime.now(UTC), None, wait=False, clock=(lambda: at) if at else engine.utcnow)

    def take_now(self, full: bool | None = None) -> list[TakenBackup]:
        """Take a managed backup of every region with databases now: full, incremental, or (None) the
        kind the schedule would take. Waits for another process's managed backup to finish first."""
        taken = self._run(None, full, wait=True)
        if not taken:
            raise UsageError("the store has no databases to back up")
        return taken

    # -- restore -----------------------------------------------------------------------------------

    def _regions_to_restore(
        self, subdir: str, databases: list[str] | None, region: str | None
    ) -> tuple[list[str], dict[str, str]]:
        """The regions to restore from, and each named database's region (where its backup is)."""
        if region is not None:
            return [self.meta.check_region(region)], {}
        with_backups = [r for r in self.meta.regions if (self.collection_dir(r) / OWNER_MARKER).exists()]
        if subdir.upper() != "LATEST":
            full = layout.normalize_subdir(subdir).strip("/")
            holding = [r for r in with_backups if (self.collection_dir(r) / full / layout.MANIFEST).exists()]
            if not holding:
                raise NotFoundError(f"no managed backup {subdir} in this store (strongroom backup-schedule list)")
            if len(holding) > 1:
                raise UsageError(f"managed backup {subdir} exists in regions {', '.join(holding)}: name one")
            return holding, dict.fromkeys(databases or [], holding[0])
        if databases:
            where: dict[str, str] = {}
            for name in databases:
                if self.databases.exists(name):
                    where[name] = self.meta.home_region(name)
                    continue
                if len(with_backups) <= 1:  # the one place it can be: the engine says if it is not there
                    where[name] = with_backups[0] if with_backups else self.meta.home_region(name)
                    continue
                # Dropped since: its home region is forgotten; the region whose backup holds it is found.
                holding = [r for r in with_backups if name in self._backed_up_databases(r, subdir)]
                if not holding:
                    raise NotFoundError(f'database "{name}" is in no managed backup {subdir} of this store')
                where[name] = holding[0]
            return sorted(set(where.values()), key=self.meta.regions.index), where
        if not with_backups:
            raise NotFoundError("this store has no managed backups yet")
        return with_backups, {}

    def _backed_up_databases(self, region: str, subdir: str) -> set[str]:
        """The databases in a region's managed backup ``subdir`` (LATEST: its newest), from its manifest."""
        with self._collection(region) as storage:
            full = _latest_full(storage) if subdir.upper() == LATEST else layout.normalize_subdir(subdir)
        if full is None:
            return set()
        spec = self.keys.current_spec(region)
        encryption = Encryption(kms=(spec.key_uri,), kms_opener=self._opener(region, RESTORE_PURPOSE))
        request = ShowBackupRequest(in_=(str(self.collection_dir(region)),), subdir=full, encryption=encryption)
        try:
            shown = self.backups.show_backup(request)
        except StrongroomError:
            return set()  # unreadable under the current key: restore reports why, region by region
        return {d.name for d in shown.manifests[-1].databases}

    def restore(
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
        detached: bool = False,
    ) -> JobResult | int:
        """Restore managed backups into this store: every database of every region (LATEST), or some
        databases, or some tables (``database.table``, into ``into_db`` or their own database).

        All or nothing: every chain is checked (owner, CMEK) before a byte is restored, and databases
        restored from one region are removed again if another region's restore fails. ``detached``:
        the checks run now, the restore in the background; its job id is returned at once.
        """
        if new_db_name is not None:
            check_database_name(new_db_name)
            if not databases or len(databases) != 1:
                raise UsageError("new_db_name can only be used to restore a single database")
        if tables and databases:
            raise UsageError("restore either databases or tables, not both")
        table_dbs = sorted({t.split(".", 1)[0] for t in tables}) if tables else None
        plan: list[tuple[str, RestoreRequest, RegionSpec]] = []
        regions, where = self._regions_to_restore(subdir, databases or table_dbs, region)
        for r in regions:
            if not self.collection_dir(r).is_dir():
                raise NotFoundError(f'region "{r}" has no managed backups yet')
            with self._collection(r) as storage:
                self._check_owner(r, storage)
                full = _latest_full(storage) if subdir.upper() == LATEST else layout.normalize_subdir(subdir)
                if full is None:
                    raise NotFoundError(f'region "{r}" has no managed backup yet')
                spec = self.keys.current_spec(r)
                reason = _unrestorable(storage, full, spec)
                if reason:
                    raise KMSError(reason) if spec.status == REVOKED else EncryptionError(reason)
            wanted = [d for d in databases if region or where.get(d) == r] if databases else None
            wanted_tables = [t for t in tables if region or where.get(t.split(".", 1)[0]) == r] if tables else None
            request = RestoreRequest(
                from_=(str(self.collection_dir(r)),),
                subdir=full,
                databases=tuple(wanted) if wanted else None,
                tables=tuple(wanted_tables) if wanted_tables else None,
                new_db_name=new_db_name,
                into_db=into_db,
                encryption=Encryption(kms=(spec.key_uri,), kms_opener=self._opener(r, RESTORE_PURPOSE)),
                as_of=as_of,
                schema_only=schema_only,
            )
            plan.append((r, request, spec))
        description = "restore managed backups: " + "; ".join(req.describe() for _r, req, _s in plan)

        def work(job_id: int, progress: object) -> JobResult:
            # A rotation running meanwhile would drop the keys of the databases being restored.
            with self.databases.lock.shared():
                return self._restore_plan(plan, job_id)

        if detached:
            return self.jobs.detach("RESTORE", description, work)
        return self.jobs.run("RESTORE", description, work)

    def _restore_plan(self, plan: list[tuple[str, RestoreRequest, RegionSpec]], job_id: int) -> JobResult:
        restored: set[str] = set()
        results: list[JobResult] = []
        try:
            for r, request, spec in plan:
                full = request.subdir
                before = set(self.databases.names())
                try:
                    result = engine.restore(request, self.databases, context=self.context, job_id=job_id)
                except KMSError as exc:
                    raise KMSError(
                        f'cannot restore managed backup {full} of region "{r}": its {_key_name(spec)} '
                        f"{redact(spec.key_uri)} is not available: {exc}"
                    ) from None
                except NotFoundError as exc:
                    raise NotFoundError(f'managed backup {full} of region "{r}": {exc}') from None
                restored |= set(self.databases.names()) - before
                results.append(result)
        except BaseException:
            for name in restored:  # the engine already undid the failing region's own databases
                self.databases.discard_database(name)
            raise
        rows, index_entries = sum(r.rows for r in results), sum(r.index_entries for r in results)
        return JobResult(job_id, "succeeded", 1.0, rows, index_entries, sum(r.bytes for r in results))

    # -- change ------------------------------------------------------------------------------------

    def rewrap_for_new_cmek(self, region: str, old_uri: str) -> list[str]:
        """After region ``region`` moved from CMEK ``old_uri`` to another key: wrap the data key of each
        managed full backup that ``old_uri`` wraps with the region's new key too (one decrypt and one
        encrypt each, audited), as ALTER BACKUP ... ADD NEW_KMS does. Returns the full backups done."""
        if not self.collection_dir(region).is_dir():
            return []
        new_uri = self.keys.current_spec(region).key_uri
        done: list[str] = []
        with self._writer_lock(wait=True), self._collection(region) as storage:
            for full in layout.list_fulls(storage):
                if _wrapped_by(storage, full, new_uri) or not _wrapped_by(storage, full, old_uri):
                    continue
                try:
                    add_kms(storage, full, (new_uri,), (old_uri,), self._opener(region, REWRAP_PURPOSE))
                except StrongroomError as exc:
                    raise KMSError(
                        f'region "{region}" now uses CMEK {redact(new_uri)}, but managed backup {full} could not be '
                        f"wrapped with it (keep {redact(old_uri)} to restore it): {exc}"
                    ) from None
                done.append(full)
        return done
