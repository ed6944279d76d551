"""The store's BACKUP, RESTORE, SHOW BACKUP(S) and ALTER BACKUP: the one route every surface takes.

Each operation takes the request a surface built (backup/requests.py), resolves it against the
store (which databases, with which at-rest keys), runs it in the backup engine as a job of the
store's job registry (BACKUP, RESTORE and ALTER BACKUP; SHOW is a read), and holds the rotation
lock shared meanwhile, so no database is re-keyed between key pick and snapshot.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import replace
from datetime import datetime, timedelta

from ..backup import engine, lifecycle, rekey
from ..backup.destinations import open_destinations
from ..backup.engine import DatabaseSource, ShowBackupResult
from ..backup.jobs import JobResult, Progress
from ..backup.keys import Encryption
from ..backup.reader import BackupReader
from ..backup.requests import (
    DROP_KMS,
    DROP_KMS_CAVEAT,
    AlterBackupRequest,
    BackupRequest,
    RestoreRequest,
    ShowBackupRequest,
)
from ..backup.retention import RetentionPolicy
from ..cloud.extras import import_extra
from ..errors import NotFoundError, UsageError
from ..kms import open_kms
from ..storage import StorageContext
from ..uri import redact
from .databases import Databases
from .jobs import JobRunner
from .meta import check_database_name


class Backups:
    def __init__(self, databases: Databases, jobs: JobRunner, context: StorageContext) -> None:
        self.databases = databases
        self.jobs = jobs
        self.context = context

    # -- jobs -------------------------------------------------------------------------------------
    def backup(self, request: BackupRequest, progress: Progress | None = None) -> JobResult:
        self.plan(request)
        return self.jobs.run(
            "BACKUP",
            request.describe(),
            lambda job_id, p: self._backup(request, p, job_id),
            progress,
            collection=request.shown_collection,
        )

    def restore(self, request: RestoreRequest, progress: Progress | None = None) -> JobResult:
        self.plan(request)
        return self.jobs.run(
            "RESTORE", request.describe(), lambda job_id, p: self._restore(request, p, job_id), progress
        )

    def detach(self, request: BackupRequest | RestoreRequest) -> int:
        """Start a BACKUP or RESTORE in the background (``WITH detached``) and return its job id;
        planning errors surface now, not in the job."""
        self.plan(request)
        if isinstance(request, BackupRequest):
            return self.jobs.detach(
                "BACKUP",
                request.describe(),
                lambda job_id, p: self._backup(request, p, job_id),
                collection=request.shown_collection,
            )
        return self.jobs.detach("RESTORE", request.describe(), lambda job_id, p: self._restore(request, p, job_id))

    def alter_backup(self, request: AlterBackupRequest) -> str:
        """ALTER BACKUP ... ADD NEW_KMS; returns the ENCRYPTION-INFO file written."""
        return self.alter(request).written

    def alter(self, request: AlterBackupRequest, progress: Progress | None = None) -> rekey.AlterResult:
        """Any ALTER BACKUP (ADD NEW_KMS, DROP KMS, ROTATE DATA KEY), as an ALTER BACKUP job. A DROP
        KMS job's description says what it cannot undo (copies of the old wraps)."""
        description = request.describe()
        if request.action == DROP_KMS:
            description += f" -- note: {DROP_KMS_CAVEAT}"
        return self.jobs.run(
            "ALTER BACKUP",
            description,
            lambda job_id, p: rekey.alter(request, context=self.context, progress=p, job_id=job_id),
            progress,
            collection=redact(request.in_[0]),
        )

    def forget(
        self,
        collection: str | tuple[str, ...],
        policy: RetentionPolicy,
        *,
        dry_run: bool = False,
        prune: bool = False,
        grace: timedelta = lifecycle.DEFAULT_GRACE,
    ) -> lifecycle.ForgetResult:
        """Remove the restore points ``policy`` does not keep (a FORGET job); with ``prune`` a PRUNE
        job follows if any point was removed (restic's ``forget --prune``). A dry run changes nothing
        and is still a job, so SHOW JOBS says who looked."""
        result = self.jobs.run(
            "FORGET",
            lifecycle.describe_forget(collection, policy, dry_run),
            lambda job_id, p: lifecycle.forget(
                collection, policy, dry_run=dry_run, context=self.context, job_id=job_id, grace=grace
            ),
        )
        if prune and result.removed:
            result.prune = self.prune(collection, grace=grace)
        return result

    def prune(
        self, collection: str | tuple[str, ...], *, grace: timedelta = lifecycle.DEFAULT_GRACE
    ) -> lifecycle.PruneResult:
        """Remove what no completed backup of the collection uses (a PRUNE job)."""
        return self.jobs.run(
            "PRUNE",
            lifecycle.describe_prune(collection, grace),
            lambda job_id, p: lifecycle.prune(collection, grace=grace, context=self.context, job_id=job_id),
        )

    # -- reads ------------------------------------------------------------------------------------
    def show_backups(self, collection: str | tuple[str, ...]) -> list[str]:
        """The complete full backups of a collection, oldest first."""
        return engine.show_backups(collection, context=self.context)

    def show_backups_detail(self, collection: str | tuple[str, ...]) -> list[tuple[str, str]]:
        """Every full backup dir with its state (complete, partial, manifest missing): SHOW BACKUPS."""
        return engine.show_backups_detail(collection, context=self.context)

    def show_backup(self, request: ShowBackupRequest) -> ShowBackupResult:
        return engine.show_backup(request, context=self.context)

    def open_backup(
        self,
        collection: str | tuple[str, ...],
        *,
        subdir: str = "LATEST",
        as_of: datetime | None = None,
        encryption: Encryption | None = None,
    ) -> BackupReader:
        """A restore point's databases as read-only connections, read in place (no restore)."""
        return engine.open_backup(collection, subdir=subdir, as_of=as_of, encryption=encryption, context=self.context)

    def check(
        self,
        collection: str | tuple[str, ...],
        encryption: Encryption,
        *,
        read_data: bool = False,
        progress: Progress | None = None,
    ) -> list[engine.CheckReport]:
        """``strongroom check``: every chain of the collection, its files, and with ``read_data`` every chunk."""
        load_database_kinds()
        return engine.check(collection, encryption, read_data=read_data, context=self.context, progress=progress)

    def plan(self, request: BackupRequest | RestoreRequest) -> None:
        """Planning errors surface before a job starts, as CockroachDB reports them: a bad URI, an
        unknown scheme or parameter (every storage and KMS the request names is opened and closed,
        no object is read or written), and a plaintext backup of encrypted data without consent."""
        if request.postgres is not None:
            for module in ("psycopg", "pyfastcdc"):
                import_extra(module, "postgres", "PostgreSQL")
        open_destinations(request.collection, self.context).close()
        for uri in request.encryption.kms:
            open_kms(uri).close()
        if isinstance(request, BackupRequest) and request.postgres is None:
            check_consent(request)  # a PostgreSQL server's data is not the store's, nor encrypted by it

    # -- the work ---------------------------------------------------------------------------------
    def _backup(self, request: BackupRequest, progress: Progress, job_id: int) -> JobResult:
        if request.postgres is not None:
            from ..postgres.source import run_backup  # psycopg is the optional `postgres` extra

            return run_backup(request, context=self.context, progress=progress, job_id=job_id)
        with self.databases.lock.shared():
            result = engine.backup(
                request, self.sources(request), context=self.context, progress=progress, job_id=job_id
            )
        return replace(result, encryption=request.encryption.kind)

    def _restore(self, request: RestoreRequest, progress: Progress, job_id: int) -> JobResult:
        if request.postgres is not None:
            from ..postgres.target import run_restore  # psycopg is the optional `postgres` extra

            return run_restore(request, context=self.context, progress=progress, job_id=job_id)
        if request.new_db_name is not None:
            check_database_name(request.new_db_name)
        with self.databases.lock.shared():
            result = engine.restore(request, self.databases, context=self.context, progress=progress, job_id=job_id)
        return replace(result, encryption=request.encryption.kind)

    def check_targets(self, request: BackupRequest) -> None:
        """Every database (or table) ``request`` names exists: in the store, or on its PostgreSQL server."""
        if request.postgres is not None:
            from ..postgres.source import check_databases  # psycopg is the optional `postgres` extra

            check_databases(request)
        else:
            self.sources(request)

    def sources(self, request: BackupRequest) -> list[DatabaseSource]:
        """The databases (or tables) ``request`` names, each with its file, key and home region."""
        dbs = self.databases
        if request.tables:
            grouped: dict[str, list[str]] = {}
            for qualified in request.tables:
                parts = qualified.split(".")
                if len(parts) == 3 and parts[1] == "public":
                    parts = [parts[0], parts[2]]
                if len(parts) != 2:
                    raise UsageError(f'qualify table "{qualified}" with its database, as database.table')
                grouped.setdefault(parts[0], []).append(parts[1])
            return [self.source(db, tuple(names)) for db, names in grouped.items()]
        names = list(request.databases or dbs.names())
        if not names:
            raise UsageError("the store has no databases to back up")
        return [self.source(db) for db in names]

    def source(self, name: str, tables: tuple[str, ...] | None = None) -> DatabaseSource:
        dbs = self.databases
        if not dbs.exists(name):
            raise NotFoundError(f'database "{name}" does not exist')
        return DatabaseSource(
            name, dbs.database_path(name), dbs.database_key(name), tables, dbs.meta.database_region(name)
        )


def load_database_kinds() -> None:
    """Register the readers of non-SQLite backups whose extras are installed (strongroom.postgres
    registers how ``check --read-data`` decodes its streams when it is imported)."""
    with suppress(ImportError):
        import strongroom.postgres  # noqa: F401


def check_consent(request: BackupRequest) -> None:
    """A store's databases are encrypted at rest: a backup of them is encrypted too, unless the
    user says otherwise in so many words (WAL-G and Litestream both shipped silent plaintext)."""
    if not request.encryption.enabled and not request.include_unencrypted_data:
        raise UsageError(
            "refusing to write an unencrypted backup of databases that are encrypted at rest: "
            "give encryption_passphrase = '...' or kms = '...' (or, to write them in plain text, "
            "WITH include_unencrypted_data)"
        )
