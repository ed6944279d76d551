"""Strongroom: CockroachDB-grade encrypted BACKUP/RESTORE and customer-managed keys for SQLite,
and the same BACKUP/RESTORE for PostgreSQL servers.

The map (dependencies point down the list; ``lint-imports`` checks it, see pyproject.toml):
    cli/      the ``strongroom`` command, one module per command group; demo.py is ``strongroom demo``
    server/   ``strongroom serve``: CockroachDB Cloud's CMEK API (FastAPI), its token, the schedule
    sql/      the statement grammar and the executor behind ``strongroom sql`` and ``Store.execute``;
              postgres.py, the session of ``strongroom sql --postgres`` (its databases a server's)
    store/    the store: named SQLite databases in regions, encrypted at rest (data keys → store key →
              CMEK); a facade (core.py) over one part per concern: meta, cmek, databases, rotation,
              status, backups (BACKUP/RESTORE/SHOW/ALTER as jobs), managed backups, jobs, audit
    files.py  back up / restore a plain SQLite file, no store
    postgres/ a PostgreSQL server as a source (one snapshot, pg_dump's schema, parallel binary COPY)
              and target (CREATE DATABASE or one table), its tables as content-defined chunk streams
              with delta chunks (streams.py); run by the store as jobs, or alone
    backup/   the engine: collections and their layout, locality-aware destinations, manifests, packs
              and chunk indexes, keys; the request objects every surface builds (requests.py);
              retention policies (retention.py), FORGET and PRUNE (lifecycle.py); write-only chains,
              appended to by a host holding only public keys (chainkeys.py, writeonly.py)
    sqlite/   consistent page snapshots of live databases, restore, backup images as databases
    kms/      key management services by URI scheme: local:// (the embedded default), aws, gs/gcp-kms,
              azure-kms, pkcs11, vault (HashiCorp Vault's transit engine), age (public-key recipients)
    storage/  where backups go, by URI scheme: nodelocal:// and paths, s3://, gs://, azure://
    cloud/    credentials per cloud (AWS, GCP, Azure) from URI parameters, hints for missing extras, and
              the one secret scrubber (by position, and by value through errors.register_secret)
    crypto/   sealed-file format (CockroachDB's chunked AES-256-GCM), PBKDF2, ENCRYPTION-INFO, chunk hashes
    output.py result tables as CockroachDB prints them, CSV, JSON; uri.py, errors.py: shared by all

One route: every surface (CLI, Python, SQL, HTTP, schedules) builds the same request object
(``BackupRequest``, ``RestoreRequest``, ...) and calls the same operation of the store, which runs
it as a job (``SHOW JOBS``).
"""

import logging
from typing import TYPE_CHECKING, Any

# A library logs, an application decides where to: without a handler of its own, Python's last-resort
# handler would print every failed job's WARNING line to a Python caller's stderr.
logging.getLogger("strongroom").addHandler(logging.NullHandler())

__version__ = "0.1.0"

# Public name -> the module that defines it. Imported on first use (PEP 562), so a command that
# needs little (``strongroom --version``) does not pay for the engine, the SQL grammar or the SDKs.
_EXPORTS = {
    "AlterBackupRequest": "backup",
    "BackupReader": "backup",
    "BackupRequest": "backup",
    "Encryption": "backup",
    "JobResult": "backup",
    "RestoreRequest": "backup",
    "ShowBackupRequest": "backup",
    "open_backup": "backup",
    "AlreadyExistsError": "errors",
    "EncryptionError": "errors",
    "IntegrityError": "errors",
    "JobCanceledError": "errors",
    "KMSError": "errors",
    "NotFoundError": "errors",
    "StorageError": "errors",
    "StrongroomError": "errors",
    "UsageError": "errors",
    "backup_file": "files",
    "restore_file": "files",
    "create_key": "kms",
    "Store": "store",
    "init_store": "store",
    "open_store": "store",
}
__all__ = [
    "AlreadyExistsError",
    "AlterBackupRequest",
    "BackupReader",
    "BackupRequest",
    "Encryption",
    "EncryptionError",
    "IntegrityError",
    "JobCanceledError",
    "JobResult",
    "KMSError",
    "NotFoundError",
    "RestoreRequest",
    "ShowBackupRequest",
    "StorageError",
    "Store",
    "StrongroomError",
    "UsageError",
    "__version__",
    "backup_file",
    "create_key",
    "init_store",
    "open_backup",
    "open_store",
    "restore_file",
]

if TYPE_CHECKING:
    from .backup import (
        AlterBackupRequest,
        BackupReader,
        BackupRequest,
        Encryption,
        JobResult,
        RestoreRequest,
        ShowBackupRequest,
        open_backup,
    )
    from .errors import (
        AlreadyExistsError,
        EncryptionError,
        IntegrityError,
        JobCanceledError,
        KMSError,
        NotFoundError,
        StorageError,
        StrongroomError,
        UsageError,
    )
    from .files import backup_file, restore_file
    from .kms import create_key
    from .store import Store, init_store, open_store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'strongroom' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
