"""Restore a PostgreSQL backup: a whole database under a new name, or one table into an existing one.

Nothing of the backup touches disk: the schema archive is decrypted into pg_restore's stdin, and
each table's COPY stream straight into ``COPY ... FROM STDIN (FORMAT binary)``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from ..backup import engine
from ..backup.jobs import JobResult, new_job_id
from ..backup.keys import Encryption
from ..backup.manifest import DatabaseEntry
from ..backup.reader import BackupReader
from ..errors import AlreadyExistsError, NotFoundError, UsageError, scrub
from .conn import Dsn, PostgresError, check_server_version, failed, quote_ident
from .source import KIND, META_STREAM, SCHEMA_STREAM, qualified
from .streams import StreamReader, read_index

log = logging.getLogger("strongroom.postgres")

#: COPY connections of a whole-database restore, each table in its own transaction.
WORKERS = 2


@dataclass
class _Backup:
    entry: DatabaseEntry
    meta: dict[str, Any]
    reader: StreamReader
    new_reader: Callable[[], StreamReader] | None = None  # another reader of the same streams, per thread


def _open(reader: BackupReader, database: str | None) -> _Backup:
    dbs = [d for d in reader.manifest.databases if d.kind == KIND]
    if database is None:
        if len(dbs) != 1:
            raise UsageError(f"the backup holds {len(dbs)} PostgreSQL databases: say which to restore")
        entry = dbs[0]
    else:
        found = reader.manifest.database(database)
        if found is None or found.kind != KIND:
            raise NotFoundError(f'PostgreSQL database "{database}" does not exist in the backup')
        entry = found
    chunks = read_index(reader.storage_for, entry.index, reader.manifest.packs, reader.keys)
    streams = StreamReader(reader.storage_for, reader.keys, chunks)
    streams.check_files()
    meta = json.loads(b"".join(streams.stream(META_STREAM)))
    return _Backup(entry, meta, streams, lambda: StreamReader(reader.storage_for, reader.keys, chunks))


def _pg_restore(dsn: Dsn, stream: Iterator[bytes], *args: str) -> None:
    """Run pg_restore on the schema archive, fed through its stdin (never a file on disk)."""
    cmd = ["pg_restore", "--exit-on-error", "-d", dsn.libpq, *args]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dsn.env()
    )
    err: list[bytes] = []
    t = threading.Thread(target=lambda: err.append(proc.stderr.read() if proc.stderr else b""), daemon=True)
    t.start()
    assert proc.stdin is not None
    try:
        for block in stream:
            proc.stdin.write(block)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # pg_restore stopped early: its exit status and stderr say why
    finally:
        code = proc.wait()
        t.join()
    if code != 0:
        lines = b"".join(err).decode(errors="replace").strip().splitlines()
        raise PostgresError(f"pg_restore into {dsn.display} failed: {scrub(lines[0]) if lines else f'exit {code}'}")


def _server_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0])


def _copy_in(
    conn: psycopg.Connection[Any], spec: dict[str, Any], data: Iterator[bytes], into: str | None = None
) -> int:
    cols = ", ".join(quote_ident(c) for c in spec["columns"])
    target = into or qualified(spec["schema"], spec["table"])
    cur = conn.cursor()
    with cur.copy(f"COPY {target} ({cols}) FROM STDIN (FORMAT binary)") as copy:
        for block in data:
            copy.write(block)
    return cur.rowcount


def restore_database(
    dsn: str,
    collection: str,
    *,
    new_db_name: str,
    database: str | None = None,
    subdir: str = "LATEST",
    encryption: Encryption | None = None,
) -> JobResult:
    """Restore a PostgreSQL database of a backup as ``new_db_name`` (refused if it exists):
    CREATE DATABASE, the schema's pre-data section, every table's rows, sequence values, then the
    post-data section (indexes, constraints, triggers). A failure drops the new database."""
    server = Dsn.parse(dsn)
    if not new_db_name:
        raise UsageError("name the database to restore into (new_db_name)")
    with engine.open_backup(collection, subdir=subdir, encryption=encryption or Encryption()) as reader:
        bk = _open(reader, database)
        try:
            admin = server.connect()
            try:
                check_server_version(bk.meta["server_version_num"], _server_version(admin))
                if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (new_db_name,)).fetchone():
                    raise AlreadyExistsError(f'database "{new_db_name}" already exists on {server.display}')
                admin.execute(
                    f"CREATE DATABASE {quote_ident(new_db_name)} TEMPLATE template0 ENCODING %s "
                    "LC_COLLATE %s LC_CTYPE %s".replace("%s", "{}").format(
                        *(_literal(bk.meta[k]) for k in ("encoding", "collate", "ctype"))
                    )
                )
            except psycopg.Error as exc:
                raise failed(f"creating database {new_db_name} on {server.display}", exc) from None
            finally:
                admin.close()
            target = server.for_database(new_db_name)
            try:
                rows = _fill(target, bk)
            except BaseException:
                _best_effort(
                    server, f"DROP DATABASE IF EXISTS {quote_ident(new_db_name)} WITH (FORCE)"
                )  # all or nothing
                raise
        finally:
            bk.reader.close()
    return JobResult(
        new_job_id(), "succeeded", 1.0, rows, 0, bk.entry.bytes, encryption=(encryption or Encryption()).kind
    )


def _fill(target: Dsn, bk: _Backup) -> int:
    _pg_restore(target, bk.reader.stream(SCHEMA_STREAM), "--section=pre-data")
    rows = _copy_tables(target, bk, WORKERS)
    conn = target.connect(autocommit=False)
    try:
        try:
            for schema, seq, value, called in bk.meta["sequences"]:
                conn.execute("SELECT pg_catalog.setval(%s, %s, %s)", (qualified(schema, seq), value, called))
            conn.commit()
        except psycopg.Error as exc:
            raise failed(f"restoring into {target.display}", exc) from None
    finally:
        conn.close()
    # Indexes, constraints (foreign keys validated against the rows now there) and triggers.
    _pg_restore(target, bk.reader.stream(SCHEMA_STREAM), "--section=post-data")
    return rows


class _Stopped(Exception):
    """Another table's COPY failed: this one ends (COPY FAIL) and its transaction rolls back."""


def _copy_tables(target: Dsn, bk: _Backup, workers: int) -> int:
    """Every table's rows, by ``workers`` connections (largest tables first), each table's COPY in
    its own transaction: the database is new and dropped whole if anything fails. Each worker reads
    the streams with its own StreamReader (they are not thread-safe)."""
    sizes = {o.name: o.bytes for o in bk.entry.objects}
    tables = sorted(bk.meta["tables"], key=lambda t: -sizes.get(f"{t['schema']}.{t['table']}", 0))
    lock = threading.Lock()
    stop = threading.Event()
    todo = iter(tables)
    counts: list[int] = []
    errors: list[BaseException] = []

    def checked(blocks: Iterator[bytes]) -> Iterator[bytes]:
        for block in blocks:
            if stop.is_set():
                raise _Stopped
            yield block

    def run() -> None:
        spec: dict[str, Any] | None = None
        reader = bk.new_reader() if bk.new_reader is not None and workers > 1 else bk.reader
        try:
            conn = target.connect(autocommit=False)
            try:
                while not stop.is_set():
                    with lock:
                        spec = next(todo, None)
                    if spec is None:
                        return
                    counts.append(_copy_in(conn, spec, checked(reader.stream(spec["stream"]))))
                    conn.commit()
            finally:
                conn.close()
                if reader is not bk.reader:
                    reader.close()
        except _Stopped:
            pass
        except BaseException as exc:
            if isinstance(exc, psycopg.Error):
                where = f" table {spec['schema']}.{spec['table']}" if spec is not None else ""
                exc = failed(f"restoring{where} into {target.display}", exc)
            with lock:
                errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, name="pg-restore") for _ in range(min(max(1, workers), len(tables)))]
    started: list[threading.Thread] = []
    try:
        for t in threads:
            t.start()
            started.append(t)
        for t in started:
            while t.is_alive():  # a wait that Ctrl-C can interrupt
                t.join(0.2)
    finally:
        stop.set()
        for t in started:
            t.join()
    if errors:
        raise errors[0]
    return sum(counts)


def _best_effort(server: Dsn, sql: str) -> None:
    """Undo a restore that failed part way; the original error is what the user needs to read."""
    try:
        conn = server.connect()
        try:
            conn.execute(sql.encode())
        finally:
            conn.close()
    except (psycopg.Error, PostgresError):
        pass


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def restore_table(
    dsn: str,
    collection: str,
    table: str,
    *,
    into_db: str,
    database: str | None = None,
    subdir: str = "LATEST",
    encryption: Encryption | None = None,
    skip_missing_foreign_keys: bool = False,
) -> JobResult:
    """Restore one table (``schema.table``, or ``table`` for public) into the existing database
    ``into_db``: its CREATE TABLE (pg_restore -t), rows, then its primary key, unique constraints,
    indexes and foreign keys (validated against the rows of the tables they reference).

    As CockroachDB's RESTORE TABLE: a foreign key whose referenced table does not exist in
    ``into_db`` fails the restore before anything is created, naming the constraint and the table,
    unless ``skip_missing_foreign_keys``, which leaves that constraint out (``JobResult.notes`` says
    which). Column defaults that name other objects (sequences) are not restored."""
    server = Dsn.parse(dsn).for_database(into_db)
    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    with engine.open_backup(collection, subdir=subdir, encryption=encryption or Encryption()) as reader:
        bk = _open(reader, database)
        try:
            spec = next((t for t in bk.meta["tables"] if (t["schema"], t["table"]) == (schema, name)), None)
            if spec is None:
                raise NotFoundError(f'table "{schema}.{name}" does not exist in the backup')
            post = next(o for o in bk.entry.objects if o.name == f"{schema}.{name}")
            conn = server.connect(autocommit=False)
            try:
                check_server_version(bk.meta["server_version_num"], _server_version(conn))
                found = conn.execute(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s",
                    (schema, name),
                ).fetchone()
                foreign_keys, missing = _foreign_keys(conn, spec)
                conn.rollback()
            except psycopg.Error as exc:
                raise failed(f"restoring table {schema}.{name} into {server.display}", exc) from None
            finally:
                conn.close()
            if found:
                raise AlreadyExistsError(f'relation "{schema}.{name}" already exists in database "{into_db}"')
            notes = _missing_foreign_keys(spec, missing, into_db, skip_missing_foreign_keys)
            _pg_restore(server, bk.reader.stream(SCHEMA_STREAM), "--section=pre-data", "-n", schema, "-t", name)
            conn = server.connect(autocommit=False)
            try:
                try:
                    rows = _copy_in(conn, spec, bk.reader.stream(spec["stream"]))
                    for stmt in spec.get("post", []):
                        conn.execute(stmt)
                    for fk in foreign_keys:  # ADD CONSTRAINT checks every row (unless NOT VALID was backed up)
                        conn.execute(
                            f"ALTER TABLE ONLY {qualified(schema, name)} ADD CONSTRAINT "
                            f"{quote_ident(fk['name'])} {fk['definition']}".encode()
                        )
                    conn.commit()
                except psycopg.Error as exc:
                    raise failed(f"restoring table {schema}.{name} into {server.display}", exc) from None
            except BaseException:
                conn.close()
                _best_effort(server, f"DROP TABLE IF EXISTS {qualified(schema, name)}")  # all or nothing
                raise
            finally:
                conn.close()
        finally:
            bk.reader.close()
    return JobResult(
        new_job_id(), "succeeded", 1.0, rows, 0, post.bytes, encryption=(encryption or Encryption()).kind, notes=notes
    )


def _foreign_keys(
    conn: psycopg.Connection[Any], spec: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The table's backed-up foreign keys whose referenced table exists in the target database (or
    is the table itself), and those whose referenced table does not."""
    present: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for fk in spec.get("foreign_keys", []):
        ref_schema, ref_table = fk["references"]
        if (ref_schema, ref_table) == (spec["schema"], spec["table"]):
            present.append(fk)
            continue
        row = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (ref_schema, ref_table),
        ).fetchone()
        (present if row else missing).append(fk)
    return present, missing


def _missing_foreign_keys(
    spec: dict[str, Any], missing: list[dict[str, Any]], into_db: str, skip: bool
) -> tuple[str, ...]:
    """Refuse (or, with ``skip``, note) the foreign keys whose referenced table is not in ``into_db``."""
    table = f"{spec['schema']}.{spec['table']}"
    if "foreign_keys" not in spec:  # a backup taken before foreign keys were recorded per table
        return (f"{table}: this backup does not record the table's foreign keys; none were restored",)
    named = [f'"{fk["name"]}" references {".".join(fk["references"])}' for fk in missing]
    if missing and not skip:
        raise NotFoundError(
            f'cannot restore {table} into database "{into_db}": foreign key {"; foreign key ".join(named)}, '
            "which does not exist there: restore the referenced table first, or skip_missing_foreign_keys "
            "to restore the table without that constraint"
        )
    notes = tuple(
        f"foreign key {n} of {table} was not restored (skip_missing_foreign_keys): no such table in {into_db}"
        for n in named
    )
    for note in notes:
        log.warning("%s", note)
    return notes
