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
from ..backup.jobs import Cancel, JobResult, Progress, checking, foreground, new_job_id
from ..backup.keys import Encryption
from ..backup.manifest import DatabaseEntry
from ..backup.reader import BackupReader
from ..backup.requests import RestoreRequest
from ..errors import AlreadyExistsError, NotFoundError, UsageError, scrub
from ..storage import StorageContext
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


def run_restore(
    request: RestoreRequest,
    *,
    context: StorageContext | None = None,
    progress: Progress | None = None,
    job_id: int | None = None,
) -> JobResult:
    """RESTORE into the PostgreSQL server ``request.postgres`` names, as CockroachDB restores:

    - ``RESTORE DATABASE d``: ``d`` recreated under its own name, or ``new_db_name``;
    - ``RESTORE TABLE d.s.t``: ``t`` created in database ``into_db`` (default ``d``), which exists;
    - ``RESTORE FROM ...``: every database of the backup under its own name.

    Nothing is overwritten: a database or table that exists is refused before anything is written.
    The store runs this as a job; :func:`restore_database` and :func:`restore_table` without one."""
    assert request.postgres is not None
    server = Dsn.parse(request.postgres)
    enc = request.encryption
    rows = size = 0
    notes: tuple[str, ...] = ()
    with engine.open_backup(
        request.collection, subdir=request.subdir, as_of=request.as_of, encryption=enc, context=context
    ) as reader:
        names = [d.name for d in reader.manifest.databases]
        undo: list[tuple[Dsn, str]] = []  # what to drop if a later target fails: all or nothing
        try:
            if request.tables:
                targets = [_split_table(t, names) for t in request.tables]
                for database, schema, table in targets:
                    _check_free(server.for_database(request.into_db or database), (schema, table))
                deferred: dict[str, list[bytes]] = {}
                for n, (database, schema, table) in enumerate(targets):
                    into = request.into_db or database
                    together = {(s, t) for d, s, t in targets if (request.into_db or d) == into}
                    done = _table_into(reader, server, database, schema, table, into, request, together)
                    undo.append((server.for_database(into), f"DROP TABLE IF EXISTS {qualified(schema, table)} CASCADE"))
                    rows, size, notes = rows + done.rows, size + done.size, notes + done.notes
                    deferred.setdefault(into, []).extend(done.deferred)
                    if progress:
                        progress(n + 1, len(targets), f"restored {schema}.{table} into {into}")
                for into, statements in deferred.items():  # keys between tables restored together
                    _run_all(server.for_database(into), statements)
            else:
                databases = list(request.databases or names)
                for database in databases:
                    _check_free(server, None, request.new_db_name or database)
                for n, database in enumerate(databases):
                    new_name = request.new_db_name or database
                    r, b = _database_into(reader, server, database, new_name, progress)
                    undo.append((server, f"DROP DATABASE IF EXISTS {quote_ident(new_name)} WITH (FORCE)"))
                    rows, size = rows + r, size + b
                    if progress:
                        progress(n + 1, len(databases), f"restored {database}")
        except BaseException:
            for dsn, sql in reversed(undo):
                _best_effort(dsn, sql)
            raise
    return JobResult(job_id or new_job_id(), "succeeded", 1.0, rows, 0, size, encryption=enc.kind, notes=notes)


def _run_all(target: Dsn, statements: list[bytes]) -> None:
    conn = target.connect(autocommit=False)
    try:
        for stmt in statements:
            conn.execute(stmt)
        conn.commit()
    except psycopg.Error as exc:
        raise failed(f"adding foreign keys in {target.display}", exc) from None
    finally:
        conn.close()


def _check_free(server: Dsn, table: tuple[str, str] | None, database: str | None = None) -> None:
    """Refuse, before anything is written, a target that exists (a database, or a table in its
    database, which must exist)."""
    try:
        conn = server.connect()
    except PostgresError as exc:
        if table is not None and "does not exist" in str(exc):
            raise NotFoundError(
                f'database "{server.params.get("dbname")}" to restore {".".join(table)} into does not exist '
                f"on {server.display}"
            ) from None
        raise
    database_of = server.params.get("dbname")
    try:
        if database is not None:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                raise AlreadyExistsError(f'database "{database}" already exists on {server.display}')
        elif table is not None and conn.execute("SELECT to_regclass(%s)", (qualified(*table),)).fetchone() != (None,):
            raise AlreadyExistsError(f'relation "{".".join(table)}" already exists in database "{database_of}"')
    except psycopg.Error as exc:
        raise failed(f"checking {server.display}", exc) from None
    finally:
        conn.close()


def _split_table(qualified_name: str, databases: list[str]) -> tuple[str, str, str]:
    """``db.schema.table``, ``db.table`` (schema public), or ``table`` / ``schema.table`` when the
    backup holds one database: (database, schema, table)."""
    parts = qualified_name.split(".")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2 and parts[0] in databases:
        return parts[0], "public", parts[1]
    if len(databases) == 1 and len(parts) <= 2:
        return databases[0], parts[0] if len(parts) == 2 else "public", parts[-1]
    raise UsageError(f'qualify table "{qualified_name}" with its database, as database.schema.table')


def _database_into(
    reader: BackupReader, server: Dsn, database: str, new_db_name: str, progress: Progress | None = None
) -> tuple[int, int]:
    """Recreate ``database`` of the backup as ``new_db_name`` (refused if it exists): CREATE
    DATABASE, the schema's pre-data section, every table's rows, sequence values, then the
    post-data section (indexes, constraints, triggers). A failure drops the new database."""
    if not new_db_name:
        raise UsageError("name the database to restore into (new_db_name)")
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
            rows = _fill(target, bk, progress)
        except BaseException:
            _best_effort(server, f"DROP DATABASE IF EXISTS {quote_ident(new_db_name)} WITH (FORCE)")  # all or nothing
            raise
    finally:
        bk.reader.close()
    return rows, bk.entry.bytes


def ownership(target: Dsn, meta: dict[str, Any]) -> tuple[str, ...]:
    """pg_restore's arguments for ownership and grants: kept as backed up when every role they
    name exists on the target; otherwise left out (``--no-owner --no-privileges``: the restoring
    user owns everything), rather than failing the restore on the first missing role."""
    roles = meta.get("roles")
    if roles is None:  # a backup from before roles were recorded: the safe choice
        return ("--no-owner", "--no-privileges")
    try:
        conn = target.connect()
        try:
            found = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,))}
        finally:
            conn.close()
    except psycopg.Error as exc:
        raise failed(f"reading the roles of {target.display}", exc) from None
    missing = sorted(set(roles) - found)
    if missing:
        log.warning(
            "roles %s are not on %s: the restored objects are owned by the restoring user, without grants",
            ", ".join(missing),
            target.display,
        )
        return ("--no-owner", "--no-privileges")
    return ()


def _fill(target: Dsn, bk: _Backup, progress: Progress | None = None) -> int:
    owner_args = ownership(target, bk.meta)
    _pg_restore(target, bk.reader.stream(SCHEMA_STREAM), "--section=pre-data", *owner_args)
    rows = _copy_tables(target, bk, WORKERS, progress)
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
    _pg_restore(target, bk.reader.stream(SCHEMA_STREAM), "--section=post-data", *owner_args)
    return rows


class _Stopped(Exception):
    """Another table's COPY failed: this one ends (COPY FAIL) and its transaction rolls back."""


def _copy_tables(target: Dsn, bk: _Backup, workers: int, progress: Progress | None = None) -> int:
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
    copied = [0]  # bytes handed to COPY so far, for the progress the waiting thread reports

    def checked(blocks: Iterator[bytes]) -> Iterator[bytes]:
        for block in blocks:
            if stop.is_set():
                raise _Stopped
            copied[0] += len(block)
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
            while t.is_alive():  # a wait that Ctrl-C, and a CANCEL JOB at a progress point, interrupt
                t.join(0.2)
                if progress:
                    total = max(1, bk.entry.bytes)
                    progress(min(copied[0], total), total, f"restoring {bk.entry.name}")
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


@dataclass
class _TableDone:
    rows: int
    size: int
    notes: tuple[str, ...]
    #: ALTER TABLE ... ADD FOREIGN KEY statements that wait for other tables of the same RESTORE.
    deferred: list[bytes]


def _table_into(
    reader: BackupReader,
    server_dsn: Dsn,
    database: str,
    schema: str,
    name: str,
    into_db: str,
    request: RestoreRequest,
    together: set[tuple[str, str]],
) -> _TableDone:
    """Restore table ``schema.name`` of ``database`` into the existing database ``into_db``: its
    CREATE TABLE (pg_restore -t), rows, then its primary key, unique constraints, indexes and
    foreign keys (validated against the rows of the tables they reference).

    As CockroachDB's RESTORE TABLE: a foreign key whose referenced table is neither in ``into_db``
    nor restored by the same RESTORE (``together``; those keys are added once all are in) fails the
    restore before anything is created, naming the constraint and the table, unless
    ``skip_missing_foreign_keys``, which leaves that constraint out (the notes say which). Column
    defaults that name other objects (sequences) are not restored."""
    server = server_dsn.for_database(into_db)
    bk = _open(reader, database)
    try:
        spec = next((t for t in bk.meta["tables"] if (t["schema"], t["table"]) == (schema, name)), None)
        if spec is None:
            raise NotFoundError(f'table "{database}.{schema}.{name}" does not exist in the backup')
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
        later = [fk for fk in missing if tuple(fk["references"]) in together]
        missing = [fk for fk in missing if tuple(fk["references"]) not in together]
        notes = _missing_foreign_keys(spec, missing, into_db, request.skip_missing_foreign_keys)
        owner_args = ownership(server, bk.meta)
        _pg_restore(
            server, bk.reader.stream(SCHEMA_STREAM), "--section=pre-data", "-n", schema, "-t", name, *owner_args
        )
        conn = server.connect(autocommit=False)
        try:
            try:
                rows = _copy_in(conn, spec, bk.reader.stream(spec["stream"]))
                for stmt in spec.get("post", []):
                    conn.execute(stmt)
                for fk in foreign_keys:  # ADD CONSTRAINT checks every row (unless NOT VALID was backed up)
                    conn.execute(_add_foreign_key(schema, name, fk))
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
    return _TableDone(rows, post.bytes, notes, [_add_foreign_key(schema, name, fk) for fk in later])


def _add_foreign_key(schema: str, table: str, fk: dict[str, Any]) -> bytes:
    return (
        f"ALTER TABLE ONLY {qualified(schema, table)} ADD CONSTRAINT {quote_ident(fk['name'])} {fk['definition']}"
    ).encode()


def restore_database(
    dsn: str,
    collection: str,
    *,
    new_db_name: str,
    database: str | None = None,
    subdir: str = "LATEST",
    encryption: Encryption | None = None,
) -> JobResult:
    """Restore a PostgreSQL database of a backup as ``new_db_name`` (refused if it exists), with no
    store (a store runs the same as a job: ``RESTORE DATABASE`` in ``strongroom sql --postgres``)."""
    if not new_db_name:
        raise UsageError("name the database to restore into (new_db_name)")
    enc = encryption or Encryption()
    request = RestoreRequest(
        from_=(collection,),
        subdir=subdir,
        databases=(database or only_database(collection, subdir, enc),),
        new_db_name=new_db_name,
        encryption=enc,
        postgres=dsn,
    )
    return _foreground(request)


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
    ``into_db``, with no store; its foreign keys as RESTORE TABLE's (see :func:`_table_into`)."""
    if not into_db:
        raise UsageError("name the existing database to restore the table into (into_db)")
    enc = encryption or Encryption()
    database = database or only_database(collection, subdir, enc)
    schema, _, name = table.rpartition(".")
    request = RestoreRequest(
        from_=(collection,),
        subdir=subdir,
        tables=(f"{database}.{schema or 'public'}.{name}",),
        into_db=into_db,
        encryption=enc,
        skip_missing_foreign_keys=skip_missing_foreign_keys,
        postgres=dsn,
    )
    return _foreground(request)


def only_database(collection: str, subdir: str, enc: Encryption) -> str:
    """The name of the one PostgreSQL database a backup holds (refused if it holds several)."""
    with engine.open_backup(collection, subdir=subdir, encryption=enc) as reader:
        dbs = [d.name for d in reader.manifest.databases if d.kind == KIND]
    if len(dbs) != 1:
        raise UsageError(f"the backup holds {len(dbs)} PostgreSQL databases: say which")
    return dbs[0]


def _foreground(request: RestoreRequest) -> JobResult:
    with foreground(cancel := Cancel()):  # as files.restore_file: Ctrl-C stops at a progress point
        return run_restore(request, progress=checking(None, cancel))


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
