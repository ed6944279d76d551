"""The statements Strongroom understands, as parsed by :mod:`strongroom.sql.parser`.

Every node is a frozen dataclass whose option values are already decoded. ``repr`` never shows a
passphrase or a URI credential: passphrases print as ``'redacted'`` and URIs go through
:func:`strongroom.uri.redact`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Literal

from ..uri import REDACTED, redact

# ``subdir`` value meaning "the most recent full backup of the collection" (``LATEST IN ...``).
LATEST = "LATEST"
# ``FULL BACKUP ALWAYS``: every scheduled backup is a full one.
ALWAYS_FULL = "ALWAYS"


def _redact_uri(uri: str) -> str:
    """Redact one URI, falling back to hiding it whole if redaction itself fails."""
    try:
        return redact(uri)
    except Exception:
        return REDACTED


def _redact_uris(uris: Iterable[str]) -> tuple[str, ...]:
    return tuple(_redact_uri(u) for u in uris)


def _repr(obj: object, **shown: object) -> str:
    """``Name(field=value, ...)`` in field order, with ``shown`` replacing the values to print."""
    parts = []
    for f in fields(obj):  # type: ignore[arg-type]
        value = shown[f.name] if f.name in shown else getattr(obj, f.name)
        parts.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class Statement:
    """Base class of every parsed statement."""

    __slots__ = ()


@dataclass(frozen=True)
class Options:
    """Decoded ``WITH`` options of BACKUP, RESTORE and SHOW BACKUP."""

    kms: tuple[str, ...] = ()
    #: ``kms = GROUPS((...), (...)) THRESHOLD n`` (Strongroom's k-of-n key groups); ``kms`` then
    #: holds every group's URIs.
    kms_groups: tuple[tuple[str, ...], ...] = ()
    kms_threshold: int = 0
    encryption_passphrase: str | None = None
    new_db_name: str | None = None
    into_db: str | None = None
    check_files: bool = False
    detached: bool = False
    include_unencrypted_data: bool = False  # Strongroom's addition: consent to a plaintext backup
    verify: bool = False  # Strongroom's addition: RESTORE runs SQLite's full integrity_check
    schema_only: bool = False  # RESTORE creates the databases' schema, no rows
    verify_backup_table_data: bool = False  # with schema_only: read every row of the backup first
    skip_missing_foreign_keys: bool = False  # RESTORE TABLE leaves out FKs to tables not restored

    def __repr__(self) -> str:
        return _repr(
            self,
            kms=_redact_uris(self.kms),
            kms_groups=tuple(_redact_uris(g) for g in self.kms_groups),
            encryption_passphrase=None if self.encryption_passphrase is None else REDACTED,
        )


@dataclass(frozen=True)
class Targets:
    """``DATABASE a, b`` or ``TABLE t, db.t, db.public.t`` (names folded, parts joined by ``.``)."""

    kind: Literal["database", "table"]
    names: tuple[str, ...]


@dataclass(frozen=True)
class Backup(Statement):
    """``BACKUP [targets] INTO ...``; ``subdir`` None = new full backup, else LATEST or a subdir (incremental)."""

    targets: Targets | None = None
    destinations: tuple[str, ...] = ()
    subdir: str | None = None
    as_of: str | None = None
    options: Options = field(default_factory=Options)

    def __repr__(self) -> str:
        return _repr(self, destinations=_redact_uris(self.destinations))


@dataclass(frozen=True)
class Restore(Statement):
    """``RESTORE [targets] FROM ...``; ``subdir`` None = the backup at exactly ``destinations``."""

    targets: Targets | None = None
    destinations: tuple[str, ...] = ()
    subdir: str | None = None
    as_of: str | None = None
    options: Options = field(default_factory=Options)

    def __repr__(self) -> str:
        return _repr(self, destinations=_redact_uris(self.destinations))


@dataclass(frozen=True)
class ShowBackups(Statement):
    """``SHOW BACKUPS IN <collection>``."""

    destinations: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return _repr(self, destinations=_redact_uris(self.destinations))


@dataclass(frozen=True)
class ShowBackup(Statement):
    """``SHOW BACKUP [FROM] LATEST|'<subdir>' IN ...`` or ``SHOW BACKUP '<uri>'`` (``subdir`` None)."""

    destinations: tuple[str, ...] = ()
    subdir: str | None = None
    options: Options = field(default_factory=Options)

    def __repr__(self) -> str:
        return _repr(self, destinations=_redact_uris(self.destinations))


@dataclass(frozen=True)
class AlterBackup(Statement):
    """``ALTER BACKUP ... ADD NEW_KMS = ... WITH OLD_KMS = ...``, ``... DROP KMS = ... WITH OLD_KMS =
    ...`` or ``... ROTATE DATA KEY WITH OLD_KMS = ... [, NEW_KMS = ...]``."""

    destinations: tuple[str, ...] = ()
    subdir: str | None = None
    new_kms: tuple[str, ...] = ()
    old_kms: tuple[str, ...] = ()
    drop_kms: tuple[str, ...] = ()
    rotate: bool = False

    def __repr__(self) -> str:
        return _repr(
            self,
            destinations=_redact_uris(self.destinations),
            new_kms=_redact_uris(self.new_kms),
            old_kms=_redact_uris(self.old_kms),
            drop_kms=_redact_uris(self.drop_kms),
        )


@dataclass(frozen=True)
class CreateDatabase(Statement):
    """``CREATE DATABASE [IF NOT EXISTS] name [PRIMARY REGION "region"]`` (the database's home region)."""

    name: str
    if_not_exists: bool = False
    region: str | None = None


@dataclass(frozen=True)
class DropDatabase(Statement):
    """``DROP DATABASE [IF EXISTS] name [CASCADE|RESTRICT]``."""

    name: str
    if_exists: bool = False


@dataclass(frozen=True)
class ShowDatabases(Statement):
    """``SHOW DATABASES``."""


@dataclass(frozen=True)
class ShowTables(Statement):
    """``SHOW TABLES [FROM database]``."""

    database: str | None = None


@dataclass(frozen=True)
class Use(Statement):
    """``USE name`` or ``SET database = name``."""

    name: str


@dataclass(frozen=True)
class ShowJobs(Statement):
    """``SHOW JOBS`` (``job_id`` None), ``SHOW JOB <id>``, or ``SHOW JOB[S] WHEN COMPLETE`` (``when_complete``:
    the jobs to wait for, then show)."""

    job_id: int | None = None
    when_complete: tuple[int, ...] = ()


@dataclass(frozen=True)
class CreateSchedule(Statement):
    """``CREATE SCHEDULE [IF NOT EXISTS] [label] FOR BACKUP [targets] INTO ... [WITH ...] RECURRING ...
    [FULL BACKUP ...|ALWAYS] [WITH SCHEDULE OPTIONS ...]``. ``recurrence`` None is ``RECURRING NEVER``
    (accepted by CockroachDB's grammar, refused here: a schedule that never runs is not one)."""

    label: str | None = None
    if_not_exists: bool = False
    targets: Targets | None = None
    destinations: tuple[str, ...] = ()
    options: Options = field(default_factory=Options)
    recurrence: str | None = None
    full_backup: str | None = None  # a crontab, ALWAYS, or None (CockroachDB's default cadence)
    schedule_options: tuple[tuple[str, object], ...] = ()

    def __repr__(self) -> str:
        return _repr(self, destinations=_redact_uris(self.destinations))


@dataclass(frozen=True)
class ShowSchedules(Statement):
    """``SHOW [RUNNING | PAUSED] SCHEDULES [FOR BACKUP]`` or ``SHOW SCHEDULE <id>``."""

    schedule_id: int | None = None
    status: str | None = None  # ACTIVE (RUNNING) or PAUSED


@dataclass(frozen=True)
class ControlSchedule(Statement):
    """``PAUSE SCHEDULE <id>``, ``RESUME SCHEDULE <id>`` or ``DROP SCHEDULE <id>``."""

    action: Literal["PAUSE", "RESUME", "DROP"]
    schedule_id: int


@dataclass(frozen=True)
class CancelJob(Statement):
    """``CANCEL JOB <id>``: stop a running BACKUP or RESTORE, in any process using the store."""

    job_id: int


@dataclass(frozen=True)
class Passthrough(Statement):
    """Any other statement, as written, for SQLite to run in the current database."""

    sql: str


__all__ = [
    "ALWAYS_FULL",
    "LATEST",
    "AlterBackup",
    "Backup",
    "CancelJob",
    "ControlSchedule",
    "CreateDatabase",
    "CreateSchedule",
    "DropDatabase",
    "Options",
    "Passthrough",
    "Restore",
    "ShowBackup",
    "ShowBackups",
    "ShowDatabases",
    "ShowJobs",
    "ShowSchedules",
    "ShowTables",
    "Statement",
    "Targets",
    "Use",
]
