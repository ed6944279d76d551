"""``strongroom backup``, ``restore``, ``show`` and ``alter-backup``: one engine or store call each."""

from __future__ import annotations

import click

from ..backup import engine as backup_engine
from ..errors import UsageError
from ..files import backup_file, restore_file
from .common import (
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


@click.command()
@click.argument("collection")
@STORE
@click.option("--database", "databases", multiple=True, help="Back up only this database (repeatable).")
@click.option("--table", "tables", multiple=True, metavar="DB.TABLE", help="Back up only this table (repeatable).")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False), help="Back up a plain SQLite file.")
@click.option("--incremental", is_flag=True, help="Add an incremental backup onto LATEST.")
@click.option("--onto", metavar="SUBDIR", help="Add an incremental backup onto this full backup.")
@encryption_options("Encrypt")
@FORMAT
def backup(
    collection: str,
    store: str | None,
    databases: tuple[str, ...],
    tables: tuple[str, ...],
    file_: str | None,
    incremental: bool,
    onto: str | None,
    kms: tuple[str, ...],
    passphrase: bool,
    passphrase_file: str | None,
    fmt: str,
) -> None:
    """BACKUP INTO COLLECTION (a URI such as nodelocal://1/backups, or a path such as /srv/backups or ./backups)."""
    if incremental and onto:
        raise UsageError("use --incremental (onto LATEST) or --onto SUBDIR, not both")
    if file_ and (databases or tables):
        raise UsageError("--file backs up one file: drop --database/--table")
    collection = resolve_collection(collection)
    inc = onto if onto else ("LATEST" if incremental else None)
    enc = encryption(kms, passphrase, passphrase_file, confirm=inc is None)
    with progress_bar("backing up") as progress:
        if file_:
            result = backup_file(file_, collection, encryption=enc, incremental=inc, progress=progress)
        else:
            s = open_store(store)
            result = s.backup(
                collection,
                databases=list(databases) or None,
                tables=list(tables) or None,
                encryption=enc,
                incremental=inc,
                progress=progress,
            )
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
    kms: tuple[str, ...],
    passphrase: bool,
    passphrase_file: str | None,
    fmt: str,
) -> None:
    """RESTORE FROM LATEST IN COLLECTION (or --from SUBDIR)."""
    if file_ and (tables or new_db_name or into_db or len(databases) > 1):
        raise UsageError("--file restores one database: use at most one --database")
    collection = resolve_collection(collection)
    enc = encryption(kms, passphrase, passphrase_file)
    with progress_bar("restoring") as progress:
        if file_:
            result = restore_file(
                collection,
                file_,
                subdir=subdir,
                database=databases[0] if databases else None,
                encryption=enc,
                progress=progress,
            )
        else:
            s = open_store(store)
            result = s.restore(
                collection,
                subdir=subdir,
                databases=list(databases) or None,
                tables=list(tables) or None,
                new_db_name=new_db_name,
                into_db=into_db,
                encryption=enc,
                progress=progress,
            )
    show_job(result, fmt)


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
    paths = s.show_backups(collection) if s else backup_engine.show_backups(collection)
    echo_table(("path",), [(p,) for p in paths], fmt)


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
    context = s.storage_context if s else None
    result = backup_engine.show_backup(
        collection, subdir=subdir, encryption=enc, check_files=check_files, context=context
    )
    echo_table(result.columns, result.rows, fmt)


@click.command("alter-backup")
@click.argument("collection")
@STORE
@click.option("--from", "subdir", default="LATEST", show_default=True, help="LATEST or a full backup's subdir.")
@click.option("--new-kms", multiple=True, required=True, metavar="URI", help="A KMS key to add (repeatable).")
@click.option(
    "--old-kms", multiple=True, required=True, metavar="URI", help="A KMS key that opens the backup now (repeatable)."
)
def alter_backup(
    collection: str, store: str | None, subdir: str, new_kms: tuple[str, ...], old_kms: tuple[str, ...]
) -> None:
    """ALTER BACKUP ... ADD NEW_KMS = ... WITH OLD_KMS = ...: let new keys open an existing chain."""
    collection = resolve_collection(collection)
    s = maybe_store(store)
    context = s.storage_context if s else None
    name = backup_engine.alter_backup_add_kms(
        collection, subdir=subdir, new_kms=new_kms, old_kms=old_kms, context=context
    )
    click.echo(f"wrote {name}")
