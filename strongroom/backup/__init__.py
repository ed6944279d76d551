"""Encrypted BACKUP / RESTORE of SQLite databases into CockroachDB-style backup collections."""

from .engine import (
    SHOW_BACKUP_COLUMNS,
    DatabaseSource,
    RestoreTarget,
    ShowBackupResult,
    alter_backup_add_kms,
    backup,
    restore,
    show_backup,
    show_backups,
)
from .jobs import JobResult, Progress, new_job_id
from .keys import Encryption

__all__ = [
    "SHOW_BACKUP_COLUMNS",
    "DatabaseSource",
    "Encryption",
    "JobResult",
    "Progress",
    "RestoreTarget",
    "ShowBackupResult",
    "alter_backup_add_kms",
    "backup",
    "new_job_id",
    "restore",
    "show_backup",
    "show_backups",
]
