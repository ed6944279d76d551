"""Strongroom: CockroachDB-grade encrypted BACKUP/RESTORE and customer-managed keys for SQLite.

The map:
    crypto/   sealed-file format (CockroachDB's chunked AES-256-GCM), PBKDF2, ENCRYPTION-INFO
    kms/      key management services by URI scheme (local:// is the embedded default)
    storage/  where backups go, by URI scheme (nodelocal://, file paths)
    sqlite/   consistent page snapshots of live databases, restore, backup images as databases
    backup/   collections, manifests, BACKUP / RESTORE / SHOW / ALTER BACKUP
    store/    the store: named SQLite databases
    files.py  back up / restore a plain SQLite file
    cli.py    the ``strongroom`` command
"""

from .backup import Encryption, JobResult
from .errors import StrongroomError
from .files import backup_file, restore_file
from .store import Store, init_store, open_store

__version__ = "0.1.0"
__all__ = [
    "Encryption",
    "JobResult",
    "Store",
    "StrongroomError",
    "__version__",
    "backup_file",
    "init_store",
    "open_store",
    "restore_file",
]
