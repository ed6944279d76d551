"""CockroachDB Cloud's managed-backup API over a store: ``/backups``, ``/backups-config`` and ``/restores``.

Shapes and rules are the official specification's (``BackupSummary``, ``BackupConfiguration``,
``Restore``...). What a store adds to them:

- **A backup** is one layer (a full backup or an incremental on it) of one region's managed
  backups. Its ``id`` is a UUID derived from the store id, the region and the layer, so it stays
  the same across restarts and is never reused; ``as_of_time`` is the layer's end time.
- **A restore** runs as a job of the store (``SHOW JOBS``; ``crdb_job_id`` is its id): PENDING while
  it runs, then SUCCESS or FAILED with the job's error. ``source_cluster_id``, if given, must be this
  store: managed backups restore only into the store that took them. ``CLUSTER`` restores every
  database of the backup's region (without ``backup_id``: of every region, from the latest);
  ``DATABASE`` the ``objects``' databases (one, under ``restore_opts.new_db_name``); ``TABLE`` the
  ``objects``' tables, into ``restore_opts.into_db`` or their own database. The ``skip_*`` options
  are accepted: a SQLite restore has no locality, foreign-key, sequence or view check to skip.
- **Pagination** is keyset pagination as the specification describes it: ``pagination.limit`` (at
  most 500, default 100), ``pagination.sort_order`` ASC (default) or DESC, and ``next_page``, an
  opaque token to pass back as ``pagination.page``.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from ..errors import NotFoundError, UsageError
from ..store.audit import acting_as
from ..store.managed import FREQUENCY_MINUTES, RETENTION_DAYS, ManagedBackup
from ..store.restores import RestoreRecord

if TYPE_CHECKING:
    from ..store import Store
    from .app import StoreService

MAX_LIMIT, DEFAULT_LIMIT = 500, 100


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------- models


class BackupConfiguration(BaseModel):
    enabled: bool
    frequency_minutes: int
    retention_days: int


class UpdateBackupConfigurationSpec(_Body):
    enabled: bool | None = None
    frequency_minutes: int | None = Field(None, description=f"Valid values are {list(FREQUENCY_MINUTES)}.")
    retention_days: int | None = Field(
        None,
        description=f"Valid values are {list(RETENTION_DAYS)}. Once set, only a longer retention is accepted.",
    )


class BackupSummary(BaseModel):
    id: str
    as_of_time: str


class KeysetPaginationResponse(BaseModel):
    next_page: str | None = None


class ListBackupsResponse(BaseModel):
    backups: list[BackupSummary]
    pagination: KeysetPaginationResponse


class RestoreType(StrEnum):
    CLUSTER = "CLUSTER"
    DATABASE = "DATABASE"
    TABLE = "TABLE"


class RestoreStatus(StrEnum):
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class RestoreItem(_Body):
    database: str
    schema_: str | None = Field(None, alias="schema")
    table: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RestoreOpts(_Body):
    into_db: str | None = None
    new_db_name: str | None = None
    schema_only: bool | None = None
    skip_localities_check: bool | None = None
    skip_missing_foreign_keys: bool | None = None
    skip_missing_sequences: bool | None = None
    skip_missing_views: bool | None = None


class CreateRestoreRequest(_Body):
    type: RestoreType
    backup_id: str | None = None
    source_cluster_id: str | None = None
    objects: list[RestoreItem] | None = None
    restore_opts: RestoreOpts | None = None


class Restore(BaseModel):
    id: str
    backup_id: str
    status: RestoreStatus
    created_at: str
    type: RestoreType
    completion_percent: float
    source_cluster_name: str
    destination_cluster_name: str
    backup_end_time: str
    crdb_job_id: str | None = None
    completed_at: str | None = None
    client_error_message: str | None = None
    objects: list[dict[str, str]] | None = None
    restore_opts: dict[str, Any] | None = None


class ListRestoresResponse(BaseModel):
    restores: list[Restore]
    pagination: KeysetPaginationResponse


# ------------------------------------------------------------------------------------------ backups


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{name}: {value!r} is not an RFC 3339 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Found:
    id: str
    backup: ManagedBackup


def backup_id(store_id: str, backup: ManagedBackup) -> str:
    """A backup's id: stable, unique to this store, region and layer."""
    return str(uuid.uuid5(uuid.UUID(store_id), f"{backup.region}\x00{backup.path}"))


def managed_backups(store: Store) -> list[Found]:
    return [Found(backup_id(store.id, b), b) for b in store.managed_backups()]


def _page(
    items: list[Any], key: Callable[[Any], str], page: str | None, limit: int | None, order: str | None
) -> tuple[list[Any], str | None]:
    """Keyset pagination over ``items``: sorted by ``key``; ``page`` is the key after which to continue."""
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"pagination.limit: {limit} is not between 1 and {MAX_LIMIT}")
    descending = (order or "ASC").upper() == "DESC"
    if (order or "ASC").upper() not in ("ASC", "DESC"):
        raise UsageError(f"pagination.sort_order: {order!r} is not ASC or DESC")
    ordered = sorted(items, key=key, reverse=descending)
    if page:
        try:
            after = base64.b64decode(page.encode(), altchars=b"-_", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            after = ""
        if "|" not in after:
            raise UsageError("pagination.page: not a page token this server gave")
        ordered = [i for i in ordered if (key(i) < after if descending else key(i) > after)]
    size = limit or DEFAULT_LIMIT
    shown, more = ordered[:size], len(ordered) > size
    token = base64.urlsafe_b64encode(key(shown[-1]).encode()).decode() if more and shown else None
    return shown, token


@dataclass(frozen=True)
class Listing:
    """A list request's window: the time range (start inclusive, end exclusive), the listing as it
    stood at ``as_of`` (``pagination.as_of_time``: nothing newer, so pages stay consistent while
    backups are added), and the page."""

    page: str | None
    limit: int | None
    order: str | None
    start: datetime | None
    end: datetime | None
    as_of: datetime | None

    def admits(self, at: datetime) -> bool:
        return (
            (self.start is None or at >= self.start)
            and (self.end is None or at < self.end)
            and (self.as_of is None or at <= self.as_of)
        )

    def paged(self, items: list[Any], key: Callable[[Any], str]) -> tuple[list[Any], str | None]:
        return _page(items, key, self.page, self.limit, self.order)


def listing(
    page: str | None = Query(None, alias="pagination.page"),
    limit: int | None = Query(None, alias="pagination.limit"),
    order: str | None = Query(None, alias="pagination.sort_order"),
    as_of_time: str | None = Query(None, alias="pagination.as_of_time"),
    start_time: str | None = None,
    end_time: str | None = None,
) -> Listing:
    return Listing(
        page,
        limit,
        order,
        _time(start_time, "start_time"),
        _time(end_time, "end_time"),
        _time(as_of_time, "pagination.as_of_time"),
    )


# ------------------------------------------------------------------------------------------ restores


_STATUS = {"running": RestoreStatus.PENDING, "succeeded": RestoreStatus.SUCCESS}


def restore_view(store: Store, record: RestoreRecord) -> Restore:
    jobs = store.jobs.list(record.job_id)
    job = jobs[0] if jobs else None
    status = _STATUS.get(job.status, RestoreStatus.FAILED) if job else RestoreStatus.PENDING
    name = store.path.name
    finished = job.finished if job and job.finished else None
    return Restore(
        id=record.id,
        backup_id=record.backup_id,
        status=status,
        created_at=record.created_at,
        type=RestoreType(record.type),
        completion_percent=float(job.fraction_completed) if job else 0.0,
        source_cluster_name=name,
        destination_cluster_name=name,
        backup_end_time=record.backup_end_time,
        crdb_job_id=str(record.job_id),
        completed_at=rfc3339(datetime.fromisoformat(finished).replace(tzinfo=UTC)) if finished else None,
        client_error_message=(job.error or "the restore failed") if job and status == RestoreStatus.FAILED else None,
        objects=record.objects_list() or None,
        restore_opts=record.opts() or None,
    )


def _created(record: RestoreRecord) -> datetime:
    return datetime.fromisoformat(record.created_at.replace("Z", "+00:00"))


def start_restore(store: Store, body: CreateRestoreRequest, who: str) -> RestoreRecord:
    """Check the request, start its job, and record it."""
    if body.source_cluster_id is not None and body.source_cluster_id != store.id:
        raise UsageError(
            f'source_cluster_id "{body.source_cluster_id}": managed backups restore only into the store that '
            f"took them ({store.id})"
        )
    opts = body.restore_opts or RestoreOpts()
    objects = body.objects or []
    if body.type != RestoreType.CLUSTER and not objects:
        raise UsageError(f"objects is required for a {body.type} restore")
    if body.type == RestoreType.CLUSTER and objects:
        raise UsageError("objects cannot be given for a CLUSTER restore")
    if body.type != RestoreType.TABLE and opts.into_db is not None:
        raise UsageError("restore_opts.into_db is for TABLE restores")
    if body.type != RestoreType.DATABASE and opts.new_db_name is not None:
        raise UsageError("restore_opts.new_db_name is for DATABASE restores")
    found = managed_backups(store)
    if body.backup_id is not None:
        chosen = next((f for f in found if f.id == body.backup_id), None)
        if chosen is None:
            raise NotFoundError(f'backup "{body.backup_id}" not found')
        if not chosen.backup.restorable:
            raise UsageError(f'backup "{chosen.id}" cannot be restored: {chosen.backup.reason}')
    else:
        # The latest: of the region holding the first object's database, or of any region.
        home = objects[0].database if objects and store.has_database(objects[0].database) else None
        region = store.database_region(home) if home else None
        restorable = [f for f in found if f.backup.restorable and region in (None, f.backup.region)]
        if not restorable:
            raise NotFoundError("this cluster has no restorable backup yet")
        chosen = max(restorable, key=lambda f: f.backup.end_time)
    backup = chosen.backup
    databases = tables = None
    if body.type == RestoreType.DATABASE:
        if any(o.table for o in objects):
            raise UsageError("a DATABASE restore names databases only: give TABLE to restore tables")
        databases = [o.database for o in objects]
    elif body.type == RestoreType.TABLE:
        if not all(o.table for o in objects):
            raise UsageError("every object of a TABLE restore names a table")
        for o in objects:
            if o.schema_ not in (None, "", "public"):
                raise UsageError(f'schema "{o.schema_}": a SQLite database has the one schema "public"')
        tables = [f"{o.database}.{o.table}" for o in objects]
    # With a backup named: that layer of that region. Without one: the latest of each region that
    # holds what is restored (for CLUSTER, of every region, as a restore of the whole cluster would).
    whole = body.backup_id is None
    with acting_as(who):
        job_id = store.managed.restore(
            "LATEST" if whole else backup.full_subdir,
            databases,
            opts.new_db_name,
            None if whole else backup.region,
            None if whole else backup.as_of,
            tables=tables,
            into_db=opts.into_db,
            schema_only=bool(opts.schema_only),
            detached=True,
        )
    assert isinstance(job_id, int)
    record = RestoreRecord(
        id=str(uuid.uuid4()),
        backup_id=chosen.id,
        type=body.type.value,
        objects=json.dumps([o.model_dump(by_alias=True, exclude_none=True) for o in objects]),
        restore_opts=json.dumps(opts.model_dump(exclude_none=True)),
        created_at=rfc3339(datetime.now(UTC)),
        backup_end_time=rfc3339(backup.end_time),
        job_id=job_id,
    )
    store.restores.add(record)
    return record


# ------------------------------------------------------------------------------------------- routes


def backups_router(service: StoreService, cluster: Callable[..., str]) -> APIRouter:
    """The routes; ``cluster`` is the app's dependency that authenticates and checks the cluster id."""
    # Dependencies as defaults, not Annotated aliases: this module's annotations are strings, which
    # FastAPI resolves in the module's globals, where a local alias is not.
    router = APIRouter()
    base = "/api/v1/clusters/{cluster_id}"
    actor, listed = Depends(cluster), Depends(listing)

    @router.get(
        base + "/backups",
        response_model=ListBackupsResponse,
        response_model_exclude_none=True,
        summary="List managed backups",
    )
    def list_backups(who: str = actor, window: Listing = listed) -> ListBackupsResponse:
        found = [f for f in managed_backups(service.view()) if window.admits(f.backup.end_time)]
        shown, token = window.paged(found, lambda f: f"{rfc3339(f.backup.end_time)}|{f.id}")
        return ListBackupsResponse(
            backups=[BackupSummary(id=f.id, as_of_time=rfc3339(f.backup.end_time)) for f in shown],
            pagination=KeysetPaginationResponse(next_page=token),
        )

    @router.get(
        base + "/backups-config",
        response_model=BackupConfiguration,
        response_model_exclude_none=True,
        summary="Managed backup configuration",
    )
    def get_config(who: str = actor) -> BackupConfiguration:
        config = service.view().managed_backup_schedule
        return BackupConfiguration(
            enabled=config.enabled, frequency_minutes=config.frequency_minutes, retention_days=config.retention_days
        )

    @router.patch(
        base + "/backups-config",
        response_model=BackupConfiguration,
        response_model_exclude_none=True,
        summary="Change it",
    )
    def update_config(body: UpdateBackupConfigurationSpec, who: str = actor) -> BackupConfiguration:
        config = service.view().set_managed_backup_schedule(
            enabled=body.enabled, frequency_minutes=body.frequency_minutes, retention_days=body.retention_days
        )
        return BackupConfiguration(
            enabled=config.enabled, frequency_minutes=config.frequency_minutes, retention_days=config.retention_days
        )

    @router.post(
        "/api/v1/clusters/{cluster_id}/restores",
        response_model=Restore,
        response_model_exclude_none=True,
        summary="Create a restore",
    )
    def create_restore(body: CreateRestoreRequest, who: str = actor) -> Restore:
        with service.lock:
            record = start_restore(service.store, body, who)
        return restore_view(service.view(), record)

    @router.get(
        base + "/restores",
        response_model=ListRestoresResponse,
        response_model_exclude_none=True,
        summary="List restores",
    )
    def list_restores(who: str = actor, window: Listing = listed) -> ListRestoresResponse:
        view = service.view()
        records = [r for r in view.restores.list() if window.admits(_created(r))]
        shown, token = window.paged(records, lambda r: f"{r.created_at}|{r.id}")
        return ListRestoresResponse(
            restores=[restore_view(view, r) for r in shown], pagination=KeysetPaginationResponse(next_page=token)
        )

    @router.get(
        base + "/restores/{restore_id}",
        response_model=Restore,
        response_model_exclude_none=True,
        summary="Get a restore",
    )
    def get_restore(restore_id: str, who: str = actor) -> Restore:
        view = service.view()
        return restore_view(view, view.restores.get(restore_id))

    return router
