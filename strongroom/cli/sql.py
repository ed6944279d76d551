"""``strongroom sql``: the SQL shell."""

from __future__ import annotations

import getpass
import os
import re
import sys
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import apsw
import click

from ..backup import engine as backup_engine
from ..errors import JobCanceledError, StrongroomError, UsageError
from ..sql import Use, parse
from ..sql.executor import BackupSession, Session
from ..sql.parser import check_sql_text
from .common import AS_OF, FORMAT, STORE, encryption, encryption_options, maybe_store, open_store, resolve_collection
from .group import take_signal

_MISSING_PARAM = re.compile(r"no value provided for placeholder: \$(\d+)")


def _is_text(value: str) -> bool:
    """Does ``value`` (from the environment or argv, decoded with surrogateescape) hold real text?"""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


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
        except JobCanceledError as exc:
            if not interactive:
                raise  # the command's exit status says whether Ctrl-C (130) or a CANCEL JOB (1) did it
            take_signal()
            click.echo(f"ERROR: {exc}", err=True)  # the job undid its work; the session goes on
            return False
        except StrongroomError as exc:
            click.echo(f"ERROR: {exc}", err=True)
            return False
        except KeyboardInterrupt:
            if not interactive:
                raise
            # Ctrl-C during a statement that is not a job (a wait, a query): stop it, keep the session.
            click.echo("ERROR: query execution canceled", err=True)
            return False
        click.echo(result.render(fmt))
        for notice in result.notices:
            click.echo(f"NOTE: {notice}", err=True)
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
            continue
        try:
            check_sql_text(text)  # before apsw.complete, which cannot take NUL or undecodable bytes
        except UsageError as exc:
            click.echo(f"ERROR: {exc}", err=True)
            buffer.clear()
            continue
        if apsw.complete(text):  # SQLite's own "is this a whole statement" (quotes, triggers)
            buffer.clear()
            try:
                _run_statements(session, text, [], fmt, interactive=True)
            except KeyboardInterrupt:  # at a hidden $n prompt: drop the statement, keep the session
                click.echo()
    with suppress(OSError):
        readline.write_history_file(history)


@click.command()
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
@click.option(
    "--backup",
    "backup_collection",
    metavar="COLLECTION",
    help="Query the databases of a backup in place, read-only (nothing is restored or written).",
)
@click.option(
    "--postgres",
    "postgres_dsn",
    metavar="DSN",
    help="Run against a PostgreSQL server (postgresql://user@host/db): BACKUP reads its databases, RESTORE writes "
    "into it, other statements go to it; jobs and schedules are the store's. Password: PGPASSWORD or ~/.pgpass.",
)
@click.option("--from", "subdir", default="LATEST", show_default=True, help="With --backup: LATEST or a full subdir.")
@AS_OF
@encryption_options("With --backup: open the backup (decrypt it)")
@FORMAT
def sql(
    store: str | None,
    statements: tuple[str, ...],
    database: str | None,
    param_env: tuple[str, ...],
    backup_collection: str | None,
    postgres_dsn: str | None,
    subdir: str,
    as_of: datetime | None,
    kms: tuple[str, ...],
    passphrase: bool,
    passphrase_file: str | None,
    fmt: str,
) -> None:
    """The SQL shell: BACKUP, RESTORE, SHOW BACKUP(S), ALTER BACKUP, and SQLite for everything else;
    with --backup, read-only SQL on a backup where it lies."""
    params = []
    for var in param_env:
        if var not in os.environ:
            raise UsageError(f"--param-env {var}: no such environment variable")
        value = os.environ[var]
        if not _is_text(value):
            raise UsageError(f"--param-env {var}: the value is not valid UTF-8 text")
        params.append(value)
    if backup_collection is not None and postgres_dsn is not None:
        raise UsageError("--backup opens a backup of SQLite databases; restore a PostgreSQL backup with --postgres")
    if backup_collection is None and (kms or passphrase or passphrase_file or as_of or subdir != "LATEST"):
        raise UsageError("--from, --as-of, --kms and --passphrase go with --backup")
    session: Session
    if backup_collection is not None:
        enc = encryption(kms, passphrase, passphrase_file)
        collection = resolve_collection(backup_collection)
        s = maybe_store(store)
        reader = (
            s.open_backup(collection, subdir=subdir, as_of=as_of, encryption=enc)
            if s
            else backup_engine.open_backup(collection, subdir=subdir, as_of=as_of, encryption=enc)
        )
        session = BackupSession(reader)
    elif postgres_dsn is not None:
        from ..sql.postgres import PostgresSession  # psycopg is the optional `postgres` extra

        session = PostgresSession(open_store(store), postgres_dsn)
    else:
        session = Session(open_store(store))
    with session:
        if database is not None:
            session.run(Use(database))
        if not statements:
            _shell(session, fmt)
            return
        for text in statements:
            if not _run_statements(session, text, params, fmt, interactive=False):
                sys.exit(1)
