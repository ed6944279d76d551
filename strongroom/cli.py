"""The ``strongroom`` command: thin sugar over the Python API (and the SQL statements it mirrors)."""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import apsw
import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from . import __version__
from .backup import Encryption, JobResult
from .backup import engine as backup_engine
from .errors import StrongroomError, UsageError
from .files import backup_file, restore_file
from .kms import create_key, default_keyring
from .output import render
from .sql import Use, parse
from .sql.executor import Session
from .store import DEFAULT_REGION, Store, init_store, managed, open_store
from .uri import redact

DEFAULT_STORE = "./strongroom-data"
err = Console(stderr=True)
FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)


def _fail(message: str) -> None:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Prints our errors as ``ERROR: ...`` and exits 1; never a traceback unless STRONGROOM_DEBUG is set."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StrongroomError as exc:
            if os.environ.get("STRONGROOM_DEBUG"):
                raise
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted")


def _store_path(store: str | None) -> str:
    return store or os.environ.get("STRONGROOM_STORE") or DEFAULT_STORE


def _encryption(kms: Sequence[str], passphrase: bool, passphrase_file: str | None, confirm: bool = False) -> Encryption:
    """A passphrase never comes from the command line itself (shell history, ps): prompt, file or env."""
    phrase = None
    if passphrase_file:
        phrase = Path(passphrase_file).read_text().rstrip("\n")
    elif passphrase:
        phrase = os.environ.get("STRONGROOM_PASSPHRASE") or click.prompt(
            "Passphrase", hide_input=True, confirmation_prompt=confirm, err=True
        )
    return Encryption(passphrase=phrase, kms=tuple(kms))


def _encryption_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--kms", multiple=True, metavar="URI", help="KMS URI (repeat for several keys).")(f)
    f = click.option(
        "--passphrase",
        is_flag=True,
        help="Encrypt with a passphrase: prompted, or taken from $STRONGROOM_PASSPHRASE.",
    )(f)
    f = click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False), help="Read it from a file.")(f)
    return f


@contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int, str], None] | None]:
    if not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _show_job(result: JobResult, fmt: str) -> None:
    click.echo(render(JobResult.COLUMNS, [result.row()], fmt))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="strongroom")
def main() -> None:
    """Encrypted BACKUP / RESTORE for SQLite, the CockroachDB way."""


_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``720h``, ``90m`` or ``45s``."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"invalid duration {text!r}: use a positive number with s, m, h or d, e.g. 30d")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


def parse_region_uris(values: Sequence[str], regions: Sequence[str]) -> dict[str, str]:
    """``--cmek URI`` (every region) or ``--cmek REGION=URI`` (repeat per region)."""
    out: dict[str, str] = {}
    for value in values:
        region, sep, uri = value.partition("=")
        if sep and "://" not in region and ":" not in region:
            out[region] = uri
        elif len(values) == 1:
            return dict.fromkeys(regions, value)
        else:
            raise UsageError(f"with several --cmek options, write each as REGION=URI (got {redact(value)!r})")
    return out


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--region", "regions", multiple=True, metavar="NAME", help="A store region (repeat; first is primary).")
@click.option("--cmek", multiple=True, metavar="[REGION=]URI", help="The CMEK wrapping the store key (per region).")
@click.option("--rotation-period", default="30d", show_default=True, help="Data key rotation period (e.g. 30d, 720h).")
def init(directory: str, regions: tuple[str, ...], cmek: tuple[str, ...], rotation_period: str) -> None:
    """Create a store in DIRECTORY, encrypted at rest.

    Without --cmek each region's store key is wrapped by a new local key file in the keyring
    ($STRONGROOM_KEYRING or ~/.strongroom/keys): keep a copy of it, the store cannot open without it.
    """
    names = list(regions) or [DEFAULT_REGION]
    store = init_store(
        directory,
        regions=names,
        cmek=parse_region_uris(cmek, names) or None,
        rotation_period=parse_duration(rotation_period),
    )
    click.echo(f"created store {store.path} (id {store.id})")
    for st in store.encryption_status():
        protection = f"CMEK {st.key_uri}" if st.cmek else f"local key file {st.key_uri} (keep a copy of it)"
        click.echo(f"region {st.region}: store key wrapped by {protection}")


# -- keys ---------------------------------------------------------------------------------------------
@main.group()
def keys() -> None:
    """Local key files: the embedded default KMS (local:///<name>)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--keyring",
    type=click.Path(file_okay=False),
    help="Key folder (default $STRONGROOM_KEYRING or ~/.strongroom/keys).",
)
def keys_create(name: str, keyring: str | None) -> None:
    """Make a new 256-bit key NAME; use it as kms = 'local:///NAME'."""
    path = create_key(name, keyring)
    uri = f"local:///{name}" + (f"?KEYRING={Path(keyring).absolute()}" if keyring else "")
    click.echo(f"created key {path} (mode 0600)\nuse it as: kms = '{uri}'")


@keys.command("list")
@click.option("--keyring", type=click.Path(file_okay=False))
def keys_list(keyring: str | None) -> None:
    """List the local keys of a keyring."""
    folder = Path(keyring) if keyring else default_keyring()
    for p in sorted(folder.glob("*.key")):
        click.echo(p.stem)


# -- databases ------------------------------------------------------------------------------------------
STORE = click.option("--store", metavar="DIR", help=f"Store directory (default $STRONGROOM_STORE or {DEFAULT_STORE}).")


@main.group()
def db() -> None:
    """Databases of a store."""


@db.command("create")
@click.argument("name")
@click.option("--region", metavar="NAME", help="Home region (default: the store's primary region).")
@STORE
def db_create(name: str, region: str | None, store: str | None) -> None:
    """CREATE DATABASE NAME [PRIMARY REGION "R"]: its data key comes from its home region."""
    opened = open_store(_store_path(store))
    opened.create_database(name, region=region)
    click.echo(f"created database {name} in region {opened.home_region(name)}")


@db.command("list")
@STORE
@FORMAT
def db_list(store: str | None, fmt: str) -> None:
    """Databases and their home regions."""
    opened = open_store(_store_path(store))
    rows = [(name, opened.home_region(name)) for name in opened.databases()]
    click.echo(render(("database_name", "region"), rows, fmt))


@db.command("drop")
@click.argument("name")
@STORE
def db_drop(name: str, store: str | None) -> None:
    open_store(_store_path(store)).drop_database(name)
    click.echo(f"dropped database {name}")


# -- backup / restore / show / alter --------------------------------------------------------------------
@main.command()
@click.argument("collection")
@STORE
@click.option("--database", "databases", multiple=True, help="Back up only this database (repeatable).")
@click.option("--table", "tables", multiple=True, metavar="DB.TABLE", help="Back up only this table (repeatable).")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False), help="Back up a plain SQLite file.")
@click.option("--incremental", is_flag=True, help="Add an incremental backup onto LATEST.")
@click.option("--onto", metavar="SUBDIR", help="Add an incremental backup onto this full backup.")
@_encryption_options
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
    """BACKUP INTO COLLECTION (a URI such as nodelocal://1/backups or /srv/backups)."""
    if incremental and onto:
        raise UsageError("use --incremental (onto LATEST) or --onto SUBDIR, not both")
    inc = onto if onto else ("LATEST" if incremental else None)
    enc = _encryption(kms, passphrase, passphrase_file, confirm=inc is None)
    with _progress_bar("backing up") as progress:
        if file_:
            if databases or tables:
                raise UsageError("--file backs up one file: drop --database/--table")
            result = backup_file(file_, collection, encryption=enc, incremental=inc, progress=progress)
        else:
            s = open_store(_store_path(store))
            result = s.backup(
                collection,
                databases=list(databases) or None,
                tables=list(tables) or None,
                encryption=enc,
                incremental=inc,
                progress=progress,
            )
    _show_job(result, fmt)


@main.command()
@click.argument("collection")
@STORE
@click.option("--from", "subdir", default="LATEST", show_default=True, help="LATEST or a full backup's subdir.")
@click.option("--database", "databases", multiple=True, help="Restore only this database (repeatable).")
@click.option("--table", "tables", multiple=True, metavar="DB.TABLE", help="Restore only this table (repeatable).")
@click.option("--new-db-name", help="Restore the one database under a new name.")
@click.option("--into-db", help="Restore tables into this existing database.")
@click.option("--file", "file_", type=click.Path(dir_okay=False), help="Restore to a plain SQLite file at this path.")
@_encryption_options
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
    enc = _encryption(kms, passphrase, passphrase_file)
    with _progress_bar("restoring") as progress:
        if file_:
            if tables or new_db_name or into_db or len(databases) > 1:
                raise UsageError("--file restores one database: use at most one --database")
            result = restore_file(
                collection,
                file_,
                subdir=subdir,
                database=databases[0] if databases else None,
                encryption=enc,
                progress=progress,
            )
        else:
            s = open_store(_store_path(store))
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
    _show_job(result, fmt)


def _maybe_store(store: str | None) -> Store | None:
    path = _store_path(store)
    return open_store(path) if Path(path, "STRONGROOM-STORE").exists() else None


@main.group()
def show() -> None:
    """SHOW BACKUPS / SHOW BACKUP."""


@show.command("backups")
@click.argument("collection")
@STORE
@FORMAT
def show_backups(collection: str, store: str | None, fmt: str) -> None:
    """List the full backups of COLLECTION (SHOW BACKUPS IN)."""
    s = _maybe_store(store)
    paths = s.show_backups(collection) if s else backup_engine.show_backups(collection)
    click.echo(render(("path",), [(p,) for p in paths], fmt))


@show.command("backup")
@click.argument("collection")
@STORE
@click.option("--from", "subdir", default="LATEST", show_default=True)
@click.option("--check-files", is_flag=True, help="Verify every file's presence, size and SHA-256.")
@_encryption_options
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
    enc = _encryption(kms, passphrase, passphrase_file)
    s = _maybe_store(store)
    context = s.storage_context if s else None
    result = backup_engine.show_backup(
        collection, subdir=subdir, encryption=enc, check_files=check_files, context=context
    )
    click.echo(render(result.columns, result.rows, fmt))


@main.command("alter-backup")
@click.argument("collection")
@STORE
@click.option("--from", "subdir", default="LATEST", show_default=True)
@click.option("--new-kms", multiple=True, required=True, metavar="URI")
@click.option("--old-kms", multiple=True, required=True, metavar="URI")
def alter_backup(
    collection: str, store: str | None, subdir: str, new_kms: tuple[str, ...], old_kms: tuple[str, ...]
) -> None:
    """ALTER BACKUP ... ADD NEW_KMS = ... WITH OLD_KMS = ...: let new keys open an existing chain."""
    s = _maybe_store(store)
    context = s.storage_context if s else None
    name = backup_engine.alter_backup_add_kms(
        collection, subdir=subdir, new_kms=new_kms, old_kms=old_kms, context=context
    )
    click.echo(f"wrote {name}")


# -- managed backups -----------------------------------------------------------------------------------
@main.group("backup-schedule")
def backup_schedule() -> None:
    """Managed backups: the store's own scheduled backups (strongroom serve runs the schedule)."""


@backup_schedule.command("run-once")
@STORE
@click.option("--full", is_flag=True, help="Take a full backup of every region now.")
@click.option("--incremental", is_flag=True, help="Take an incremental backup of every region now.")
@FORMAT
def backup_schedule_run_once(store: str | None, full: bool, incremental: bool, fmt: str) -> None:
    """Take the managed backups that are due (for cron), or force one with --full / --incremental."""
    if full and incremental:
        raise UsageError("use --full or --incremental, not both")
    s = open_store(_store_path(store))
    taken = s.managed_backup(full=full) if full or incremental else s.run_due_managed_backups()
    if not taken:
        click.echo("no managed backup is due")
        return
    click.echo(render(managed.TAKEN_COLUMNS, [t.row() for t in taken], fmt))


@backup_schedule.command("set")
@STORE
@click.option("--interval", help="Back up every INTERVAL (e.g. 1h).")
@click.option("--full-every", help="Take a full backup when the last full one is this old (e.g. 24h).")
def backup_schedule_set(store: str | None, interval: str | None, full_every: str | None) -> None:
    """Change the managed backup schedule."""
    s = open_store(_store_path(store), unlock=False)
    new = s.set_managed_backup_schedule(
        interval=parse_duration(interval) if interval else None,
        full_every=parse_duration(full_every) if full_every else None,
    )
    click.echo(
        f"managed backups every {managed.format_duration(new.interval)}, "
        f"a full one every {managed.format_duration(new.full_every)}"
    )


@backup_schedule.command("list")
@STORE
@FORMAT
def backup_schedule_list(store: str | None, fmt: str) -> None:
    """List managed backups per region, and whether each can be restored (and why not)."""
    s = open_store(_store_path(store), unlock=False)
    click.echo(render(managed.LIST_COLUMNS, [b.row() for b in s.managed_backups()], fmt))


@backup_schedule.command("restore")
@click.argument("subdir", default="LATEST")
@STORE
@click.option("--database", "databases", multiple=True, help="Restore only this database (repeatable).")
@click.option("--new-db-name", help="Restore the one database under a new name.")
@click.option("--region", help="The region whose managed backups to restore from.")
@FORMAT
def backup_schedule_restore(
    subdir: str,
    store: str | None,
    databases: tuple[str, ...],
    new_db_name: str | None,
    region: str | None,
    fmt: str,
) -> None:
    """Restore managed backups (LATEST, or a full backup's SUBDIR) into this store."""
    s = open_store(_store_path(store))
    result = s.restore_managed(subdir, list(databases) or None, new_db_name, region)
    _show_job(result, fmt)


# -- sql shell ------------------------------------------------------------------------------------------
_MISSING_PARAM = re.compile(r"no value provided for placeholder: \$(\d+)")


def _run_statements(session: Session, text: str, params: list[str], fmt: str, interactive: bool) -> bool:
    """Run ``text``; print each result. In the shell, ask (hidden) for any ``$n`` not given. True if ok."""
    values = list(params)
    while True:
        try:
            statements = parse(text, values)
            break
        except UsageError as exc:
            m = _MISSING_PARAM.fullmatch(str(exc))
            if not (interactive and m):
                click.echo(f"ERROR: {exc}", err=True)
                return False
            while len(values) < int(m.group(1)):
                values.append(getpass.getpass(f"${len(values) + 1}: "))
    for stmt in statements:
        try:
            result = session.run(stmt, values)
        except StrongroomError as exc:
            click.echo(f"ERROR: {exc}", err=True)
            return False
        click.echo(result.render(fmt))
        if interactive and result.columns and fmt == "table":
            click.echo()
    return True


def _shell(session: Session, fmt: str) -> None:
    import readline

    history = Path.home() / ".strongroom" / "sql_history"
    history.parent.mkdir(parents=True, exist_ok=True)
    with suppress(OSError):
        readline.read_history_file(history)
    click.echo("# Strongroom SQL shell. Statements end with ';'. \\q quits. $1, $2... prompt for hidden values.")
    buffer: list[str] = []
    while True:
        prompt = f"{session.database or ''}> " if not buffer else "  -> "
        try:
            line = input(prompt)
        except EOFError:
            click.echo()
            break
        except KeyboardInterrupt:
            click.echo()
            buffer.clear()
            continue
        if not buffer and line.strip() in ("\\q", "quit", "exit"):
            break
        buffer.append(line)
        text = "\n".join(buffer)
        if not text.strip():
            buffer.clear()
        elif apsw.complete(text):  # SQLite's own "is this a whole statement" (quotes, triggers)
            buffer.clear()
            _run_statements(session, text, [], fmt, interactive=True)
    with suppress(OSError):
        readline.write_history_file(history)


@main.command()
@STORE
@click.option("-e", "--execute", "statements", multiple=True, help="Run these statements and exit (repeatable).")
@click.option("-d", "--database", help="Start with this current database (USE).")
@click.option(
    "--param-env",
    "param_env",
    multiple=True,
    metavar="VAR",
    help="Take $1, $2... from these environment variables (keeps passphrases out of history).",
)
@FORMAT
def sql(
    store: str | None, statements: tuple[str, ...], database: str | None, param_env: tuple[str, ...], fmt: str
) -> None:
    """The SQL shell: BACKUP, RESTORE, SHOW BACKUP(S), ALTER BACKUP, and SQLite for everything else."""
    params = []
    for var in param_env:
        if var not in os.environ:
            raise UsageError(f"--param-env {var}: no such environment variable")
        params.append(os.environ[var])
    s = open_store(_store_path(store))
    with s.session() as session:
        if database is not None:
            session.run(Use(database))
        if not statements:
            _shell(session, fmt)
            return
        for text in statements:
            if not _run_statements(session, text, params, fmt, interactive=False):
                sys.exit(1)


@main.command()
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False), help="Where to put the demo (default: a new temp dir)."
)
def demo(directory: str | None) -> None:
    """Tell the seed's story on the embedded default: passphrase and multi-KMS backups, restore, verify."""
    from .demo import run_demo

    run_demo(directory)


if __name__ == "__main__":
    main()
