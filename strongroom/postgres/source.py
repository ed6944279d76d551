"""Back up one PostgreSQL database in one consistent snapshot into a backup collection.

One REPEATABLE READ, READ ONLY transaction exports its snapshot (pg_export_snapshot); pg_dump reads
the schema in that same snapshot (``--snapshot``), and each table's rows are read in it with binary
COPY. So the schema, every table and the row counts are one point in time, whatever writers do.
"""

from __future__ import annotations

import json
import queue
import select
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq, sql

from ..backup import engine
from ..backup.jobs import Cancel, JobResult, Progress, checking, foreground
from ..backup.keys import Encryption
from ..backup.manifest import DatabaseEntry, Manifest, ObjectInfo
from ..backup.requests import BackupRequest
from ..backup.writeonly import wants_write_only_chain
from ..errors import NotFoundError, UsageError, scrub
from ..storage import StorageContext
from .conn import Dsn, PostgresError, failed, quote_ident
from .streams import PreviousStreams, StreamReader, StreamWriter, read_index

KIND = "postgres"
SCHEMA_STREAM, META_STREAM, FIRST_TABLE_STREAM = 0, 1, 2
_READ = 1 << 20
#: COPY connections of one backup, all in the coordinator's exported snapshot (write_database's
#: ``workers`` when not given).
WORKERS = 2
_QUEUED_BLOCKS = 8  # ~1 MiB blocks read ahead per table in flight: memory stays flat

_TABLES = """
SELECT n.nspname, c.relname, c.oid,
       array(SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum) AS cols,
       array(SELECT a.attname FROM pg_index i
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord) AS pk
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""
_SEQUENCES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


_FOREIGN_KEYS = """
SELECT c.conname, rn.nspname, r.relname, pg_get_constraintdef(c.oid)
FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
WHERE c.conrelid = %(oid)s::oid AND c.contype = 'f' ORDER BY c.conname
"""
_POST_DATA = """
SELECT format('ALTER TABLE ONLY %%s ADD CONSTRAINT %%I %%s', %(t)s::text, c.conname, pg_get_constraintdef(c.oid))
FROM pg_constraint c WHERE c.conrelid = %(oid)s::oid AND c.contype IN ('p', 'u', 'x')
UNION ALL
SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
WHERE i.indrelid = %(oid)s::oid AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                                           AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x'))
"""


# The roles the schema names: owners of the database's own objects and grantees of their ACLs.
# A restore keeps ownership and grants only where every one of them exists on the target.
_ROLES = """
WITH objs AS (
    SELECT c.relowner AS owner, c.relacl AS acl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
    UNION ALL
    SELECT nspowner, nspacl FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname NOT LIKE 'pg_%%'
    UNION ALL
    SELECT p.proowner, p.proacl FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT t.typowner, t.typacl FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
)
SELECT DISTINCT r.rolname FROM (
    SELECT owner AS id FROM objs
    UNION SELECT (aclexplode(acl)).grantee FROM objs WHERE acl IS NOT NULL
) ids JOIN pg_roles r ON r.oid = ids.id
ORDER BY 1
"""


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


class _SchemaDump:
    """pg_dump's custom-format, schema-only archive, streamed from its stdout straight into the
    sealed packs: the schema is never written to disk in plaintext (no -f, no temp file)."""

    def __init__(self, dsn: Dsn, snapshot: str) -> None:
        self.dsn = dsn
        args = ["pg_dump", "--schema-only", "-Fc", "-Z", "0", f"--snapshot={snapshot}", "-d", dsn.libpq]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dsn.env())
        self._stderr = b""
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr = self.proc.stderr.read()

    def blocks(self) -> Iterator[bytes]:
        assert self.proc.stdout is not None
        while block := self.proc.stdout.read(_READ):
            yield block
        self._reader.join()
        if self.proc.wait() != 0:
            lines = self._stderr.decode(errors="replace").strip().splitlines()
            detail = scrub(lines[-1]) if lines else ""
            raise PostgresError(
                f"pg_dump of {self.dsn.display} failed: {detail or 'exit ' + str(self.proc.returncode)}"
            )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)


def _previous_streams(layer: engine.LayerWriter, prev: Manifest | None, name: str) -> PreviousStreams | None:
    """The previous layer's streams of ``name``: every chunk its stream index holds, by keyed hash and
    by table and position (the delta bases), read back from its packs one chunk at a time."""
    entry = prev.database(name) if prev is not None else None
    if prev is None or entry is None or entry.kind != KIND:
        return None
    chunks = read_index(layer.dests.storage_for, entry.index, prev.packs, layer.keys)
    reader = StreamReader(layer.dests.storage_for, layer.keys, chunks)
    try:
        meta = json.loads(b"".join(reader.stream(META_STREAM)))
    except BaseException:
        reader.close()
        raise
    # A table's stream number shifts when a table sorting before it is added or dropped: bases are
    # found by what a stream holds (as write_database names it), never by its number.
    streams = {f"#{SCHEMA_STREAM}": SCHEMA_STREAM, f"#{META_STREAM}": META_STREAM}
    streams.update({qualified(t["schema"], t["table"]): int(t["stream"]) for t in meta["tables"]})
    return PreviousStreams(chunks, reader, streams)


@dataclass
class _Table:
    """One table's COPY: read by a worker into ``blocks`` (bounded), stored by the coordinator."""

    number: int  # its stream
    name: str  # schema.table, for messages
    sql: str
    size: int  # pg_table_size, for largest first
    blocks: queue.Queue[bytes | None] = field(default_factory=lambda: queue.Queue(_QUEUED_BLOCKS))
    rows: int = 0


class _Stopped(Exception):
    """The backup failed elsewhere: a worker leaves its COPY mid-stream (its connection is closed after)."""


class _CopyWorkers:
    """``n`` connections COPY the tables, each in a REPEATABLE READ, READ ONLY transaction that
    imports the coordinator's exported snapshot (SET TRANSACTION SNAPSHOT), so every table is read
    at the one point in time the schema dump and the catalog queries see.

    Each free worker takes the next table of ``tables`` (largest first) and reads it ahead into
    that table's bounded queue. The StreamWriter (and the PackWriter under it) is not thread-safe,
    so the coordinator alone chunks, hashes, compresses and stores, one table after another in the
    same order: a table's chunks are one run of its stream in the index, and the layout does not
    depend on which worker was faster. A worker's error stops the others and is raised to the
    coordinator at its next wait."""

    def __init__(self, dsn: Dsn, snapshot: str, tables: list[_Table], n: int, what: str) -> None:
        self._tables, self._what = tables, what
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._conns: list[psycopg.Connection[Any]] = []
        self._threads: list[threading.Thread] = []
        try:
            for _ in range(min(max(1, n), len(tables))):
                conn = dsn.connect()
                self._conns.append(conn)
                try:
                    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                except psycopg.Error as exc:
                    raise failed(f"{what}: importing the snapshot into a COPY worker", exc) from None
        except BaseException:
            self.close()
            raise
        for conn in self._conns:
            thread = threading.Thread(target=self._run, args=(conn,), name="pg-copy", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, conn: psycopg.Connection[Any]) -> None:
        table: _Table | None = None
        try:
            while True:
                with self._lock:
                    if self._stop.is_set() or self._next >= len(self._tables):
                        return
                    table = self._tables[self._next]
                    self._next += 1
                table.rows = _copy_out(conn, table.sql, partial(self._put, table), self._stop)
                self._put(table, None)
        except _Stopped:
            pass
        except BaseException as exc:
            error = exc
            if isinstance(exc, psycopg.Error):
                where = f"{self._what}: table {table.name}" if table is not None else self._what
                error = failed(where, exc)
            with self._lock:
                self._error = self._error or error
            self._stop.set()

    def _put(self, table: _Table, block: bytes | None) -> None:
        """Queue ``block`` (None: the table's end) unless the backup is given up."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                table.blocks.put(block, timeout=0.05)
                return
            except queue.Full:
                continue

    def blocks(self, table: _Table) -> Iterator[bytes]:
        """``table``'s COPY stream, as its worker reads it."""
        while True:
            try:
                block = table.blocks.get(timeout=0.05)
            except queue.Empty:
                if self._error is not None:
                    raise self._error from None
                continue
            if block is None:
                return
            yield block

    def close(self) -> None:
        """Stop (or wait for) the workers, then end their transactions."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        for conn in self._conns:
            conn.close()


def _copy_out(conn: psycopg.Connection[Any], query: str, put: Callable[[bytes], None], stop: threading.Event) -> int:
    """Run ``COPY ... TO STDOUT`` and hand its data to ``put`` in ~1 MiB blocks; returns the rows.

    libpq hands a COPY over one row at a time; psycopg's Copy iterator costs several generator
    steps a row, about as much client CPU as chunking, hashing and compressing the same bytes, so
    the rows are taken from libpq directly (PQgetCopyData, non-blocking, waiting on the socket
    with the GIL released). On ``stop`` (or an error in ``put``) the COPY is abandoned mid-stream:
    the caller closes the connection."""
    pg = conn.pgconn
    with conn.lock:  # psycopg's own: nothing else may use the connection meanwhile
        pg.send_query(query.encode())
        result = _wait_result(pg, stop)
        if result.status != pq.ExecStatus.COPY_OUT:
            raise _error(conn, result)
        pending = bytearray()
        while True:
            nbytes, data = pg.get_copy_data(1)
            if nbytes > 0:
                pending += data
                if len(pending) >= _READ:
                    put(bytes(pending))
                    pending.clear()
            elif nbytes == 0:
                _wait_readable(pg, stop)
            else:
                break  # -1: the COPY ended; -2: an error, which the result below holds
        result = _wait_result(pg, stop)
        while _wait_result(pg, stop, final=True) is not None:
            pass
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise _error(conn, result)
        if pending:
            put(bytes(pending))
        return int(result.command_tuples or 0)


def _wait_readable(pg: Any, stop: threading.Event) -> None:
    while not select.select([pg.socket], [], [], 0.5)[0]:
        if stop.is_set():
            raise _Stopped
    pg.consume_input()


def _wait_result(pg: Any, stop: threading.Event, *, final: bool = False) -> Any:
    """The next PGresult of the running query (None after the last one)."""
    pg.consume_input()
    while pg.is_busy():
        _wait_readable(pg, stop)
    result = pg.get_result()
    if result is None and not final:
        raise psycopg.OperationalError(pg.error_message.decode(errors="replace") or "no result from the server")
    return result


def _error(conn: psycopg.Connection[Any], result: Any) -> psycopg.Error:
    if result.status == pq.ExecStatus.FATAL_ERROR:
        return psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
    message = conn.pgconn.error_message.decode(errors="replace")
    return psycopg.OperationalError(message or f"unexpected result {result.status} of COPY")


def _table_specs(
    conn: psycopg.Connection[Any], tables: list[tuple[Any, ...]], what: str
) -> tuple[list[dict[str, Any]], list[_Table]]:
    """Each table's metadata (columns, stream, post-data, foreign keys) and its COPY, in stream order."""
    specs, copies = [], []
    for number, (schema, table, oid, cols, pk, size) in enumerate(tables, start=FIRST_TABLE_STREAM):
        schema, table = str(schema), str(table)
        columns = [str(c) for c in cols]
        key = [str(c) for c in pk]
        col_sql = ", ".join(quote_ident(c) for c in columns)
        # Ordered by primary key, an updated row stays where it was in the stream (heap order
        # would move it), so the incremental's changed chunks are only those around it.
        order = f" ORDER BY {', '.join(quote_ident(c) for c in key)}" if key else ""
        copy = f"COPY (SELECT {col_sql} FROM {qualified(schema, table)}{order}) TO STDOUT (FORMAT binary)"
        try:
            # The table's own keys and indexes, for a table restored into another database
            # (the whole-database restore applies pg_dump's post-data section instead).
            post = [str(r[0]) for r in conn.execute(_POST_DATA, {"t": qualified(schema, table), "oid": oid})]
        except psycopg.Error as exc:
            raise failed(f"{what}: table {schema}.{table}", exc) from None
        specs.append({"schema": schema, "table": table, "columns": columns, "stream": number, "post": post})
        copies.append(_Table(number, f"{schema}.{table}", copy, int(str(size))))
    try:
        # Its foreign keys apart, each with the table it references, so that a one-table restore
        # can add those whose referenced table exists. An empty search_path (for the rest of this
        # read-only transaction) makes pg_get_constraintdef name every table with its schema.
        conn.execute("SELECT set_config('search_path', '', true)")
        for spec, (*_, oid, _cols, _pk, _size) in zip(specs, tables, strict=True):
            spec["foreign_keys"] = [
                {"name": str(r[0]), "references": [str(r[1]), str(r[2])], "definition": str(r[3])}
                for r in conn.execute(_FOREIGN_KEYS, {"oid": oid})
            ]
    except psycopg.Error as exc:
        raise failed(f"{what}: foreign keys", exc) from None
    return specs, copies


def write_database(
    dsn: Dsn,
    name: str,
    layer: engine.LayerWriter,
    prev: Manifest | None,
    progress: Progress | None,
    number: int = 0,
    *,
    workers: int | None = None,
) -> DatabaseEntry:
    """Read database ``dsn`` in one snapshot into ``layer`` as the database entry ``name`` (the
    layer's ``number``-th database), the tables by ``workers`` COPY connections in that snapshot
    (default WORKERS)."""
    previous = _previous_streams(layer, prev, name)  # before the connection: nothing to close if it fails
    conn = dsn.connect()
    dump: _SchemaDump | None = None
    copiers: _CopyWorkers | None = None
    locality = layer.dests.locality_for_region(None)
    packs = layer.packs(locality)
    index_path = f"{layer.layer_dir}/data/pg-{number:04}.idx"
    writer = StreamWriter(
        layer.dests.storage_for(locality),
        index_path,
        layer.keys,
        packs,
        layer.table,
        previous.known if previous is not None else {},
        locality,
        bases=previous,
    )
    done = 0
    expected = 1  # the tables' on-disk size, once known: COPY's bytes come close to it

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, max(done, expected), f"backing up {name}")

    what = f"backing up {dsn.display}"
    try:
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT pg_export_snapshot(), current_setting('server_version_num')::int").fetchone()
            assert row is not None
            snapshot, version = str(row[0]), int(str(row[1]))
            enc_row = conn.execute(
                "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                "WHERE datname = current_database()"
            ).fetchone()
            assert enc_row is not None
            tables = [(*t, 0) for t in conn.execute(_TABLES).fetchall()]
            if tables:
                size_rows = conn.execute(
                    "SELECT oid, pg_table_size(oid) FROM unnest(%s::oid[]) oid", ([t[2] for t in tables],)
                ).fetchall()
                sizes = {r[0]: r[1] for r in size_rows}
                tables = [(*t[:5], int(str(sizes.get(t[2]) or 0))) for t in tables]
            expected = max(1, sum(int(str(t[5])) for t in tables))
            sequences = []
            for schema, seq in conn.execute(_SEQUENCES).fetchall():
                r = conn.execute(f"SELECT last_value, is_called FROM {qualified(str(schema), str(seq))}").fetchone()
                assert r is not None
                sequences.append([schema, seq, int(str(r[0])), bool(r[1])])
            roles = [str(r[0]) for r in conn.execute(_ROLES).fetchall()]
        except psycopg.Error as exc:
            raise failed(what, exc) from None
        meta_tables, copies = _table_specs(conn, tables, what)
        # Largest first: the last table to finish is a small one, so the workers end together.
        order = sorted(copies, key=lambda c: -c.size)
        # The workers start reading ahead (bounded) while the schema is dumped and stored.
        copiers = _CopyWorkers(dsn, snapshot, order, WORKERS if workers is None else workers, what)
        dump = _SchemaDump(dsn, snapshot)
        writer.write_stream(SCHEMA_STREAM, dump.blocks(), tick)
        sizes_written: dict[int, int] = {}
        # Each stream names its table, so the next incremental finds its delta bases by table.
        identity = {int(t["stream"]): qualified(str(t["schema"]), str(t["table"])) for t in meta_tables}
        for copy in order:
            blocks = copiers.blocks(copy)
            sizes_written[copy.number] = writer.write_stream(copy.number, blocks, tick, identity[copy.number])
        copiers.close()
        objects = [
            ObjectInfo(c.name, "table", c.rows, 0, sizes_written[c.number], json.dumps(spec))
            for c, spec in zip(copies, meta_tables, strict=True)
        ]
        logical = sum(sizes_written.values())
        meta = {
            "server_version_num": version,
            "encoding": enc_row[0],
            "collate": enc_row[1],
            "ctype": enc_row[2],
            "sequences": sequences,
            "tables": meta_tables,
            "roles": roles,
        }
        writer.write_stream(META_STREAM, [json.dumps(meta).encode()], tick)
        with _suppress_closed():
            conn.execute("COMMIT")
        ref = writer.finish()
    finally:
        if copiers is not None:
            copiers.close()
        if dump is not None:
            dump.close()
        writer.close()
        conn.close()
    layer.written.append((locality, ref.path))
    rows = sum(o.rows for o in objects)
    return DatabaseEntry(
        name=name,
        page_size=0,
        page_count=0,
        index=ref,
        objects=objects,
        rows=rows,
        index_entries=0,
        bytes=logical,
        chunks_written=writer.chunks_written,
        stored_bytes=writer.stored_bytes,
        total_rows=rows,
        total_index_entries=0,
        total_bytes=logical,
        kind=KIND,
    )


class _suppress_closed:
    """COMMIT of a read-only transaction: nothing to lose if the server went away after the reads."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], psycopg.Error)  # type: ignore[arg-type]


def run_backup(
    request: BackupRequest,
    *,
    context: StorageContext | None = None,
    progress: Progress | None = None,
    job_id: int | None = None,
) -> JobResult:
    """BACKUP of the PostgreSQL server ``request.postgres`` names: each database in its own snapshot
    (PostgreSQL shares a snapshot only within one database). An incremental that names no database
    follows its chain's. The store runs this as a job; :func:`backup_database` without one."""
    assert request.postgres is not None
    server = Dsn.parse(request.postgres)
    if request.incremental is None and wants_write_only_chain(request.encryption):
        # A write-only host keeps a view of each layer to deduplicate against; PostgreSQL's stream
        # indexes (and their delta bases, which need the previous plaintext) have none yet.
        raise UsageError(
            "a PostgreSQL backup cannot be written with public-key recipients (age://, AWS asymmetric keys) yet: "
            "use KMS keys that can decrypt, or a passphrase"
        )
    names = list(request.databases or ())
    sources = [engine.DatabaseSource(n, Path()) for n in names]  # named for the chain's targets check

    def write(layer: engine.LayerWriter, prev: Manifest | None, progress: Progress | None) -> list[DatabaseEntry]:
        if prev is not None and any(d.kind != KIND for d in prev.databases):
            raise UsageError(
                "this chain holds SQLite databases, not PostgreSQL ones: take a full backup of the "
                "PostgreSQL databases with BACKUP DATABASE ... INTO"
            )
        targets = names or ([d.name for d in prev.databases] if prev is not None else [])
        return [
            write_database(server.for_database(n), n, layer, prev, progress, number=i) for i, n in enumerate(targets)
        ]

    result = engine.backup(request, sources, context=context, progress=progress, job_id=job_id, write_databases=write)
    return replace(result, encryption=request.encryption.kind)


def backup_database(
    dsn: str,
    database: str,
    collection: str,
    *,
    encryption: Encryption | None = None,
    incremental: bool | str = False,
    progress: Progress | None = None,
) -> JobResult:
    """Back up PostgreSQL database ``database`` (on the server ``dsn`` names) into ``collection``,
    with no store (a store runs the same as a job: ``store.backups.backup(BackupRequest(...,
    postgres=dsn))`` or ``BACKUP`` in ``strongroom sql --postgres``).

    ``incremental``: True (onto LATEST) or a full backup's subdir; the incremental stores only the
    content-defined chunks of each table's COPY stream that no earlier layer of the chain holds.
    """
    if not database:
        raise UsageError("name the PostgreSQL database to back up")
    onto = "LATEST" if incremental is True else (incremental or None)
    request = BackupRequest(
        into=(collection,),
        databases=(database,),
        encryption=encryption or Encryption(),
        incremental=onto,
        postgres=dsn,
    )
    with foreground(cancel := Cancel()):  # as files.backup_file: Ctrl-C stops at a progress point
        return run_backup(request, progress=checking(progress, cancel))


def check_databases(request: BackupRequest) -> None:
    """Each database ``request`` names is on its server (a schedule checks at creation, not at 3 a.m.)."""
    assert request.postgres is not None
    server = Dsn.parse(request.postgres)
    conn = server.connect()
    try:
        for name in request.databases or ():
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                raise NotFoundError(f'database "{name}" does not exist on {server.display}')
    except psycopg.Error as exc:
        raise failed(f"checking the databases on {server.display}", exc) from None
    finally:
        conn.close()


TickFn = Callable[[int], None]
