"""The ``strongroom`` command: thin sugar over the Python API (and the SQL statements it mirrors)."""

from __future__ import annotations

import getpass
import logging
import os
import re
import secrets
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
from .backup import AlterBackupRequest, Encryption, JobResult, ShowBackupRequest
from .backup import engine as backup_engine
from .errors import EncryptionError, KMSError, StrongroomError, UsageError
from .files import backup_file, restore_file
from .kms import create_key, default_keyring
from .output import render
from .sql import Use, parse
from .sql.executor import Session
from .store import DEFAULT_REGION, Store, encryption_status_table, init_store, managed, open_store
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
def region() -> None:
    """Regions of a store: each has its own store key and data keys."""


@region.command("add")
@click.argument("name")
@STORE
def region_add(name: str, store: str | None) -> None:
    """Add region NAME. Like CockroachDB Cloud, a new region is not protected by the other regions'
    CMEK: give it one with `strongroom cmek rotate --cmek NAME=URI`."""
    opened = open_store(_store_path(store))
    opened.add_region(name)
    [st] = [st for st in opened.encryption_status() if st.region == name]
    click.echo(f"added region {name}: store key wrapped by local key file {st.key_uri}")
    if any(other.cmek for other in opened.encryption_status()):
        click.echo(f"NOTE: region {name} is not protected by CMEK yet: strongroom cmek rotate --cmek {name}=<URI>")


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
    request = ShowBackupRequest(in_=(collection,), subdir=subdir, encryption=enc, check_files=check_files)
    result = s.backups.show_backup(request) if s else backup_engine.show_backup(request)
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
    request = AlterBackupRequest(in_=(collection,), subdir=subdir, new_kms=new_kms, old_kms=old_kms)
    name = s.backups.alter_backup(request) if s else backup_engine.alter_backup(request)
    click.echo(f"wrote {name}")


# -- CMEK, key rotation and the API server ----------------------------------------------------------------
def _open_for_cmek(store: str | None) -> tuple[Store, str | None]:
    """The store with its keys if they open, else (revoked, KMS unreachable) without them, and why:
    CMEK can be reported on, enabled and rotated on a store that cannot start."""
    path = _store_path(store)
    try:
        return open_store(path), None
    except (KMSError, EncryptionError) as exc:
        return open_store(path, unlock=False), str(exc)


def _echo_regions(s: Store, regions: Sequence[str] | None = None) -> None:
    for st in s.encryption_status():
        if regions is None or st.region in regions:
            click.echo(f"region {st.region}: {st.status}, store key {st.store_key_id[:16]} wrapped by {st.key_uri}")


@main.group()
def cmek() -> None:
    """Customer-managed encryption keys: enable, rotate, revoke, status, audit (CockroachDB Cloud's CMEK)."""


@cmek.command("enable")
@click.option("--cmek", "uris", multiple=True, required=True, metavar="[REGION=]URI", help="One for every region.")
@click.option("--auth-principal", metavar="P", help="Who the store acts as at the KMS (an IAM role, an account).")
@STORE
def cmek_enable(uris: tuple[str, ...], auth_principal: str | None, store: str | None) -> None:
    """Enable CMEK: each region gets a new store key wrapped by its CMEK (also re-enables a revoked store)."""
    s, _locked = _open_for_cmek(store)
    s.enable_cmek(parse_region_uris(uris, s.regions), auth_principal=auth_principal)
    _echo_regions(s)


@cmek.command("rotate")
@click.option("--region", "regions", multiple=True, metavar="NAME", help="Default: every region with CMEK.")
@click.option("--cmek", "uris", multiple=True, metavar="[REGION=]URI", help="A new key (default: its new version).")
@click.option("--auth-principal", metavar="P", help="Who the store acts as at the KMS.")
@STORE
def cmek_rotate(regions: tuple[str, ...], uris: tuple[str, ...], auth_principal: str | None, store: str | None) -> None:
    """Re-wrap store keys with a new version of their CMEK (rotated in the KMS), or with a new key."""
    s, _locked = _open_for_cmek(store)
    targets = list(regions) or [st.region for st in s.encryption_status() if st.cmek]
    specs: dict[str, str | None] = dict.fromkeys(targets)
    specs.update(parse_region_uris(uris, targets or s.regions))
    if not specs:
        raise UsageError("CMEK is not enabled on this store: there is nothing to rotate (strongroom cmek enable)")
    s.rotate_cmek(specs, auth_principal=auth_principal)
    _echo_regions(s, list(specs))


@cmek.command("revoke")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@STORE
def cmek_revoke(yes: bool, store: str | None) -> None:
    """Stop using the CMEK: the store closes and will not open until CMEK is enabled again.

    Revoke the store's access to the key in the KMS too; without the key, the data cannot be read.
    """
    s = open_store(_store_path(store), unlock=False)  # no KMS call: revoking must work when the KMS does not
    if not yes:
        click.confirm(f"Revoke CMEK on store {s.path}? It will not open until CMEK is enabled again", abort=True)
    s.revoke_cmek()
    click.echo("revoked CMEK: the store will not open until CMEK is enabled again (strongroom cmek enable)")


@cmek.command("status")
@STORE
@FORMAT
def cmek_status(store: str | None, fmt: str) -> None:
    """Per region: status, key, store key, and per data key the databases and bytes it protects."""
    s, locked = _open_for_cmek(store)
    if locked:
        click.echo(f"NOTE: the store's keys are locked, data keys are not shown: {locked}", err=True)

    columns, rows = encryption_status_table(s.encryption_status(), short_ids=fmt == "table")
    click.echo(render(columns, rows, fmt))


@cmek.command("audit")
@STORE
@click.option("--last", type=click.IntRange(min=1), help="Only the last N records.")
@FORMAT
def cmek_audit(store: str | None, last: int | None, fmt: str) -> None:
    """Every use of the store's keys: when, who, which region and key, what for, and the result."""
    records = open_store(_store_path(store), unlock=False).audit_records()
    columns = ("time", "actor", "region", "operation", "purpose", "key", "result")
    rows = [tuple(getattr(r, c) for c in columns) for r in (records[-last:] if last else records)]
    click.echo(render(columns, rows, fmt))


@main.group()
def rotate() -> None:
    """Rotate a store's data keys (re-keys databases online) or store keys (re-wraps data keys)."""


@rotate.command("data-keys")
@click.option("--region", metavar="NAME", help="Default: every region.")
@click.option("--if-due", is_flag=True, help="Only regions whose data key is older than the rotation period.")
@STORE
def rotate_data_keys(region: str | None, if_due: bool, store: str | None) -> None:
    """Make a new data key per region and re-key every database of the region onto it."""
    s = open_store(_store_path(store))
    done = s.rotate_data_keys(region, if_due=if_due)
    if not done:
        click.echo("no data key rotation is due")
    for st in s.encryption_status():
        if st.region in done:
            names = done[st.region]
            rekeyed = f"re-keyed {len(names)} database(s)" + (f": {', '.join(names)}" if names else "")
            click.echo(f"region {st.region}: new data key {(st.active_data_key_id or '')[:16]}; {rekeyed}")


@rotate.command("store-key")
@click.option("--region", metavar="NAME", help="Default: every region.")
@STORE
def rotate_store_key(region: str | None, store: str | None) -> None:
    """Make a new store key per region, wrapped by the same CMEK or key file (and a new data key under it)."""
    s = open_store(_store_path(store))
    s.rotate_store_key(region)
    _echo_regions(s, [region] if region else None)


def _api_token(store: Path, token_file: str | None) -> str:
    """Never from the command line (ps, shell history): a file, $STRONGROOM_API_TOKEN, or the store's own."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise UsageError(f"the token file {token_file} is empty")
        return token
    if token := os.environ.get("STRONGROOM_API_TOKEN", "").strip():
        return token
    path = store / "api-token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if not token:
            raise UsageError(f"the token file {path} is empty: delete it to have a new token made") from None
        click.echo(f"API token: {path}", err=True)
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    click.echo(f"made an API token in {path} (mode 0600); send it as Authorization: Bearer <token>", err=True)
    return token


@main.command()
@STORE
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    help="The API token (default $STRONGROOM_API_TOKEN, else <store>/api-token, made on first use).",
)
@click.option(
    "--schedule-interval",
    default=60,
    show_default=True,
    type=click.IntRange(min=1),
    help="Seconds between scheduler runs (due data key rotations, managed backups).",
)
def serve(store: str | None, host: str, port: int, token_file: str | None, schedule_interval: int) -> None:
    """Serve CockroachDB Cloud's CMEK API for the store (/api/v1/clusters/<store id>/cmek) and run its schedule."""
    import uvicorn

    from .server import create_app

    s = open_store(_store_path(store), unlock=False)  # not a store: say so before anything else
    token = _api_token(s.path, token_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(s.path, token, schedule_interval=schedule_interval)
    click.echo(f"serving http://{host}:{port}/api/v1/clusters/{s.id}/cmek (OpenAPI: /openapi.json)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


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
