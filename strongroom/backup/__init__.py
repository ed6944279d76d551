"""Encrypted BACKUP / RESTORE of SQLite databases into CockroachDB-style backup collections."""

from .engine import (
    SHOW_BACKUP_COLUMNS,
    DatabaseSource,
    RestoreTarget,
    ShowBackupResult,
    alter_backup,
    backup,
    open_backup,
    restore,
    show_backup,
    show_backups,
)
from .jobs import JobResult, Progress, new_job_id
from .keys import Encryption
from .reader import BackupReader
from .requests import LATEST, AlterBackupRequest, BackupRequest, RestoreRequest, ShowBackupRequest

__all__ = [
    "LATEST",
    "SHOW_BACKUP_COLUMNS",
    "AlterBackupRequest",
    "BackupReader",
    "BackupRequest",
    "DatabaseSource",
    "Encryption",
    "JobResult",
    "Progress",
    "RestoreRequest",
    "RestoreTarget",
    "ShowBackupRequest",
    "ShowBackupResult",
    "alter_backup",
    "backup",
    "new_job_id",
    "open_backup",
    "restore",
    "show_backup",
    "show_backups",
]
