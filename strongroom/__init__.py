"""Strongroom: CockroachDB-grade encrypted BACKUP/RESTORE and customer-managed keys for SQLite.

The map (dependencies point down the list):
    crypto/   sealed-file format (CockroachDB's chunked AES-256-GCM), PBKDF2, ENCRYPTION-INFO, chunk hashes
    kms/      key management services by URI scheme: local:// (the embedded default), aws, gs/gcp-kms,
              azure-kms, pkcs11
    storage/  where backups go, by URI scheme: nodelocal:// and paths, s3://, gs://, azure://
    sqlite/   consistent page snapshots of live databases, restore, backup images as databases
    backup/   collections and their layout, locality-aware destinations, manifests, packs and chunk
              indexes, keys; BACKUP / RESTORE / SHOW / ALTER BACKUP (engine.py)
    store/    the store: named SQLite databases in regions, encrypted at rest (data keys → store key →
              CMEK, keys.py), rotation, revocation, status, managed backups, audit log, job registry
    sql/      the statement grammar and the executor behind ``strongroom sql`` and ``Store.execute``
    server/   ``strongroom serve``: CockroachDB Cloud's CMEK API (FastAPI) and the schedule
    files.py  back up / restore a plain SQLite file
    output.py result tables as CockroachDB prints them, CSV, JSON
    cli.py    the ``strongroom`` command; demo.py is ``strongroom demo``
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
