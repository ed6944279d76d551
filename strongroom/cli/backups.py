"""``strongroom backup``, ``restore``, ``show`` and ``alter-backup``: each builds the request every other
surface builds and hands it to the store (which runs it as a job), or, with no store, to the engine."""

from __future__ import annotations

from datetime import datetime

import click

from ..backup import engine as backup_engine
from ..backup import rekey
from ..backup.jobs import Cancel, JobResult, Progress, checking, foreground
from ..backup.keys import Encryption
from ..backup.requests import AlterBackupRequest, BackupRequest, RestoreRequest, ShowBackupRequest
from ..errors import UsageError
from ..files import backup_file, restore_file
from ..store.backups import load_database_kinds
from ..uri import redact
from .common import (
    AS_OF,
    FORMAT,
    STORE,
    echo_table,
    encryption,
    encryption_options,
    maybe_store,
    open_store,
    progress_bar,
    resolve_collection,
    show_job,
)

POSTGRES = click.option(
    "--postgres",
    "postgres_dsn",
    metavar="DSN",
    help="A PostgreSQL server (postgresql://user@host/db or key=value) whose databases (--database) to back up or "
    "restore into; its password is never shown: give it in PGPASSWORD or ~/.pgpass (argv is visible to ps).",
)


@click.command()
@click.argument("collection")
@STORE
@click.option("--database", "databases", multiple=True, help="Back up only this database (repeatable).")
@click.option("--table", "tables", multiple=True, metavar="DB.TABLE", help="Back up only this table (repeatable).")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False), help="Back up a plain SQLite file.")
@POSTGRES
@click.option("--incremental", is_flag=True, help="Add an incremental backup onto LATEST.")
@click.option("--onto", metavar="SUBDIR", help="Add an incremental backup onto this full backup.")
@click.option(
    "--include-unencrypted-data",
    is_flag=True,
    help="Write the store's encrypted databases into a backup without encryption (refused without this).",
)
@encryption_options("Encrypt")
@click.option(
    "--kms-group",
    "kms_groups",
    multiple=True,
    metavar="URI[,URI...]",
    help="A key group (repeat for each): with --threshold K, any K groups, one key of each, open the backup.",
)
@click.option("--threshold", type=int, help="How many --kms-group groups it takes to open the backup.")
@FORMAT
def backup(
    collection: str,
    store: str | None,
    databases: tuple[str, ...],
    tables: tuple[str, ...],
    file_: str | None,
    postgres_dsn: str | None,
    incremental: bool,
    onto: str | None,
    include_unencrypted_data: bool,
    kms: tuple[str, ...],
    passphrase: bool,
    passphrase_file: str | None,
    kms_groups: tuple[str, ...],
    threshold: int | None,
    fmt: str,
) -> None:
    """BACKUP INTO COLLECTION (a URI such as nodelocal://1/backups, or a path such as /srv/backups or ./backups)."""
    if bool(kms_groups) != (threshold is not None):
        raise UsageError("key groups need both --kms-group (two or more) and --threshold")
    if kms_groups and (kms or passphrase or passphrase_file):
        raise UsageError("--kms-group replaces --kms and --passphrase: give the keys in their groups")
    if incremental and onto:
        raise UsageError("use --incremental (onto LATEST) or --onto SUBDIR, not both")
    if file_ and (databases or tables):
        raise UsageError("--file backs up one file: drop --database/--table")
    collection = resolve_collection(collection)
    inc = onto if onto else ("LATEST" if incremental else None)
    if kms_groups:
        groups = tuple(tuple(u.strip() for u in g.split(",") if u.strip()) for g in kms_groups)
        enc = Encryption(groups=groups, threshold=threshold or 0)
    else:
        enc = encryption(kms, passphrase, passphrase_file, confirm=inc is None)
    if postgres_dsn is not None and (file_ or tables):
        raise UsageError("--postgres backs up whole databases: name them with --database (no --file, --table)")
    with progress_bar("backing up") as progress:
        if postgres_dsn is not None:
            request = BackupRequest(
                into=(collection,), databases=databases or None, encryption=enc, incremental=inc, postgres=postgres_dsn
            )
            result = _postgres_job(store, request, progress)
        elif file_:
            result = backup_file(file_, collection, encryption=enc, incremental=inc, progress=progress)
        else:
            request = BackupRequest(
                into=(collection,),
                databases=databases or None,
                tables=tables or None,
                encryption=enc,
                incremental=inc,
                include_unencrypted_data=include_unencrypted_data,
            )
            result = open_store(store).backups.backup(request, progress)
    show_job(result, fmt)


@click.command()
@click.argument("collection")
@STORE
@click.option("--from", "subdir", default="LATEST", show_default=True, help="LATEST or a full backup's subdir.")
@click.option("--database", "databases", multiple=True, help="Restore only this database (repeatable).")
@click.option("--table", "tables", multiple=True, metavar="DB.TABLE", help="Restore only this table (repeatable).")
@click.option("--new-db-name", help="Restore the one database under a new name.")
@click.option("--into-db", help="Restore tables into this existing database.")
@click.option("--file", "file_", type=click.Path(dir_okay=False), help="Restore to a plain SQLite file at this path.")
@POSTGRES
@click.option(
    "--verify", is_flag=True, help="Also run SQLite's full integrity_check on each restored database (slower)."
)
@click.option("--schema-only", is_flag=True, help="Create the databases' tables, indexes and views, with no rows.")
@click.option(
    "--verify-backup-table-data",
    is_flag=True,
    help="With --schema-only: first read every row of the backup (each page decrypted and hash-checked).",
)
@click.option(
    "--skip-missing-foreign-keys",
    is_flag=True,
    help="With --table: leave out a foreign key whose referenced table is not in the target database.",
)
@AS_OF
@encryption_options("Decrypt the backup")
@FORMAT
def restore(
    collection: str,
    store: str | None,
    subdir: str,
    databases: tuple[str, ...],
    tables: tuple[str, ...],
    new_db_name: str | None,
    into_db: str | None,
    file_: str | None,
    postgres_dsn: str | None,
    verify: bool,
    schema_only: bool,
    verify_backup_table_data: bool,
    skip_missing_foreign_keys: bool,
    as_of: datetime | None,
    kms: tuple[str, ...],
    passphrase: bool,
    passphrase_file: str | None,
    fmt: str,
) -> None:
    """RESTORE FROM LATEST IN COLLECTION (or --from SUBDIR)."""
    if file_ and (tables or new_db_name or into_db or len(databases) > 1):
        raise UsageError("--file restores one database: use at most one --database")
    if file_ and schema_only:
        raise UsageError("--schema-only restores into the store: drop --file")
    collection = resolve_collection(collection)
    enc = encryption(kms, passphrase, passphrase_file)
    if postgres_dsn is not None and (file_ or verify or schema_only):
        raise UsageError("--postgres restores into the server: drop --file, --verify and --schema-only")
    with progress_bar("restoring") as progress:
        if postgres_dsn is not None:
            if new_db_name and not databases and not tables:
                from ..postgres.target import only_database  # the one database of the backup

                databases = (only_database(collection, subdir, enc),)
            request = RestoreRequest(
                from_=(collection,),
                subdir=subdir,
                databases=None if tables else databases or None,
                tables=tuple(_in_database(t, databases) for t in tables) or None,
                new_db_name=new_db_name,
                into_db=into_db,
                encryption=enc,
                as_of=as_of,
                skip_missing_foreign_keys=skip_missing_foreign_keys,
                postgres=postgres_dsn,
            )
            result = _postgres_job(store, request, progress)
        elif file_:
            result = restore_file(
                collection,
                file_,
                subdir=subdir,
                database=databases[0] if databases else None,
                encryption=enc,
                verify=verify,
                as_of=as_of,
                progress=progress,
            )
        else:
            request = RestoreRequest(
                from_=(collection,),
                subdir=subdir,
                databases=databases or None,
                tables=tables or None,
                new_db_name=new_db_name,
                into_db=into_db,
                encryption=enc,
                verify=verify,
                as_of=as_of,
                schema_only=schema_only,
                verify_backup_table_data=verify_backup_table_data,
            )
            result = open_store(store).backups.restore(request, progress)
    show_job(result, fmt)


def _in_database(table: str, databases: tuple[str, ...]) -> str:
    """``--database shop --table orders`` (or ``public.orders``): the table as shop.public.orders."""
    if len(databases) > 1:
        raise UsageError("--table with --postgres takes at most one --database (the table's)")
    if not databases:
        return table
    parts = table.split(".")
    return ".".join([databases[0], *(["public"] if len(parts) == 1 else []), *parts]) if len(parts) < 3 else table


def _postgres_job(store: str | None, request: BackupRequest | RestoreRequest, progress: Progress | None) -> JobResult:
    """A PostgreSQL BACKUP or RESTORE: a job of the store when there is one (SHOW JOBS, CANCEL JOB),
    else run here, as a plain file's backup is."""
    s = maybe_store(store)
    if s is not None:
        return (
            s.backups.backup(request, progress)
            if isinstance(request, BackupRequest)
            else s.backups.restore(request, progress)
        )
    from ..postgres import run_backup, run_restore  # psycopg is the optional `postgres` extra

    with foreground(cancel := Cancel()):  # Ctrl-C or SIGTERM stops it at a progress point
        if isinstance(request, BackupRequest):
            return run_backup(request, progress=checking(progress, cancel))
        return run_restore(request, progress=checking(progress, cancel))


@click.group()
def show() -> None:
    """SHOW BACKUPS / SHOW BACKUP."""


@show.command("backups")
@click.argument("collection")
@STORE
@FORMAT
def show_backups(collection: str, store: str | None, fmt: str) -> None:
    """List the full backups of COLLECTION (SHOW BACKUPS IN)."""
    collection = resolve_collection(collection)
    s = maybe_store(store)
    rows = s.backups.show_backups_detail(collection) if s else backup_engine.show_backups_detail(collection)
    echo_table(("path", "status"), rows, fmt)


@show.command("backup")
@click.argument("collection")
@STORE
@click.option("--from", "subdir", default="LATEST", show_default=True, help="LATEST or a full backup's subdir.")
@click.option("--check-files", is_flag=True, help="Verify every file's presence, size and SHA-256.")
@encryption_options("Open the backup (decrypt it)")
@FORMAT
def show_backup(
    collection: str,
    store: str | None,
    subdir: str,
    check_files: bool,
    kms: tuple[str, ...],
    passphrase: bool,
    passphrase_file: str | None,
    fmt: str,
) -> None:
    """Describe a backup chain (SHOW BACKUP ... IN)."""
    collection = resolve_collection(collection)
    enc = encryption(kms, passphrase, passphrase_file)
    s = maybe_store(store)
    request = ShowBackupRequest(in_=(collection,), subdir=subdir, encryption=enc, check_files=check_files)
    result = s.backups.show_backup(request) if s else backup_engine.show_backup(request)
    echo_table(result.columns, result.rows, fmt)


@click.command()
@click.argument("collection")
@STORE
@click.option("--read-data", is_flag=True, help="Also decrypt every chunk and check it against its hash (slower).")
@encryption_options("Open the backups (decrypt them)")
@FORMAT
def check(
    collection: str,
    store: str | None,
    read_data: bool,
    kms: tuple[str, ...],
    passphrase: bool,
    passphrase_file: str | None,
    fmt: str,
) -> None:
    """Check every backup in COLLECTION: manifests, chain links and LATEST (rollback), every file's presence,
    size and SHA-256; with --read-data every chunk. Exits 1 if anything is wrong."""
    collection = resolve_collection(collection)
    enc = encryption(kms, passphrase, passphrase_file)
    s = maybe_store(store)
    with progress_bar("checking") as progress:
        if s:
            reports = s.backups.check(collection, enc, read_data=read_data, progress=progress)
        else:
            load_database_kinds()
            reports = backup_engine.check(collection, enc, read_data=read_data, progress=progress)
    rows = [(r.path, r.layers, r.files, r.file_bytes, r.chunks_read, r.status) for r in reports]
    echo_table(backup_engine.CHECK_COLUMNS, rows, fmt)
    if not reports:
        raise UsageError(f"no backups in {redact(collection)}")
    if any(r.status not in ("ok", "partial") for r in reports):
        raise click.exceptions.Exit(1)


@click.command("alter-backup")
@click.argument("collection")
@STORE
@click.option("--from", "subdir", default="LATEST", show_default=True, help="LATEST or a full backup's subdir.")
@click.option(
    "--new-kms", multiple=True, metavar="URI", help="A KMS key to add, or to wrap a rotated key (repeatable)."
)
@click.option(
    "--old-kms", multiple=True, required=True, metavar="URI", help="A KMS key that opens the backup now (repeatable)."
)
@click.option("--drop-kms", multiple=True, metavar="URI", help="Remove this KMS key's wrap (DROP KMS; repeatable).")
@click.option(
    "--rotate-data-key",
    is_flag=True,
    help="Re-encrypt the whole chain under a new data key (ROTATE DATA KEY), wrapped by --new-kms or --old-kms.",
)
def alter_backup(
    collection: str,
    store: str | None,
    subdir: str,
    new_kms: tuple[str, ...],
    old_kms: tuple[str, ...],
    drop_kms: tuple[str, ...],
    rotate_data_key: bool,
) -> None:
    """ALTER BACKUP: add a KMS key (--new-kms), drop one (--drop-kms), or rotate the data key."""
    collection = resolve_collection(collection)
    s = maybe_store(store)
    request = AlterBackupRequest(
        in_=(collection,), subdir=subdir, new_kms=new_kms, old_kms=old_kms, drop_kms=drop_kms, rotate=rotate_data_key
    )
    if s is not None:
        with progress_bar("rotating data key" if rotate_data_key else "altering backup") as bar:
            done = s.backups.alter(request, bar)
    else:
        done = rekey.alter(request)
    click.echo(f"wrote {done.written}" if done.action != "rotate data key" else f"rotated: {done.written}")
    if done.note:
        click.echo(f"note: {done.note}")
