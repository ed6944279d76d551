"""Back up one PostgreSQL database in one consistent snapshot into a backup collection.

One REPEATABLE READ, READ ONLY transaction exports its snapshot (pg_export_snapshot); pg_dump reads
the schema in that same snapshot (``--snapshot``), and each table's rows are read in it with binary
COPY. So the schema, every table and the row counts are one point in time, whatever writers do.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg

from ..backup import engine
from ..backup.jobs import Cancel, JobResult, Progress, checking, foreground
from ..backup.keys import Encryption
from ..backup.manifest import DatabaseEntry, Manifest, ObjectInfo
from ..backup.requests import BackupRequest
from ..errors import NotFoundError, UsageError, scrub
from .conn import Dsn, PostgresError, failed, quote_ident
from .streams import PreviousStreams, StreamReader, StreamWriter, read_index

KIND = "postgres"
SCHEMA_STREAM, META_STREAM, FIRST_TABLE_STREAM = 0, 1, 2
_READ = 1 << 20

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


_POST_DATA = """
SELECT format('ALTER TABLE ONLY %%s ADD CONSTRAINT %%I %%s', %(t)s::text, c.conname, pg_get_constraintdef(c.oid))
FROM pg_constraint c WHERE c.conrelid = %(oid)s::oid AND c.contype IN ('p', 'u', 'x')
UNION ALL
SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
WHERE i.indrelid = %(oid)s::oid AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                                           AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x'))
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


def write_database(
    dsn: Dsn, name: str, layer: engine.LayerWriter, prev: Manifest | None, progress: Progress | None
) -> DatabaseEntry:
    """Read database ``dsn`` in one snapshot into ``layer`` as the database entry ``name``."""
    conn = dsn.connect()
    dump: _SchemaDump | None = None
    locality = layer.dests.locality_for_region(None)
    packs = layer.packs(locality)
    index_path = f"{layer.layer_dir}/data/pg-0000.idx"
    previous = _previous_streams(layer, prev, name)
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
            tables = conn.execute(_TABLES).fetchall()
            size_row = conn.execute(
                "SELECT coalesce(sum(pg_table_size(oid)), 0) FROM unnest(%s::oid[]) oid", ([t[2] for t in tables],)
            ).fetchone()
            expected = max(1, int(str(size_row[0]))) if size_row else 1
            sequences = []
            for schema, seq in conn.execute(_SEQUENCES).fetchall():
                r = conn.execute(f"SELECT last_value, is_called FROM {qualified(str(schema), str(seq))}").fetchone()
                assert r is not None
                sequences.append([schema, seq, int(str(r[0])), bool(r[1])])
        except psycopg.Error as exc:
            raise failed(what, exc) from None
        dump = _SchemaDump(dsn, snapshot)
        writer.write_stream(SCHEMA_STREAM, dump.blocks(), tick)
        objects: list[ObjectInfo] = []
        meta_tables = []
        logical = 0
        for number, (schema, table, _oid, cols, pk) in enumerate(tables, start=FIRST_TABLE_STREAM):
            columns = [str(c) for c in cols]  # type: ignore[attr-defined]
            key = [str(c) for c in pk]  # type: ignore[attr-defined]
            col_sql = ", ".join(quote_ident(c) for c in columns)
            # Ordered by primary key, an updated row stays where it was in the stream (heap order
            # would move it), so the incremental's changed chunks are only those around it.
            order = f" ORDER BY {', '.join(quote_ident(c) for c in key)}" if key else ""
            sql = f"COPY (SELECT {col_sql} FROM {qualified(str(schema), str(table))}{order}) TO STDOUT (FORMAT binary)"
            try:
                cur = conn.cursor()
                with cur.copy(sql) as copy:
                    size = writer.write_stream(number, iter(copy), tick, qualified(str(schema), str(table)))
                rows = cur.rowcount
            except psycopg.Error as exc:
                raise failed(f"{what}: table {schema}.{table}", exc) from None
            logical += size
            try:
                # The table's own keys and indexes, for a table restored into another database
                # (the whole-database restore applies pg_dump's post-data section instead).
                post = [
                    str(r[0]) for r in conn.execute(_POST_DATA, {"t": qualified(str(schema), str(table)), "oid": _oid})
                ]
            except psycopg.Error as exc:
                raise failed(f"{what}: table {schema}.{table}", exc) from None
            spec = {"schema": schema, "table": table, "columns": columns, "stream": number, "post": post}
            meta_tables.append(spec)
            objects.append(ObjectInfo(f"{schema}.{table}", "table", rows, 0, size, json.dumps(spec)))
        meta = {
            "server_version_num": version,
            "encoding": enc_row[0],
            "collate": enc_row[1],
            "ctype": enc_row[2],
            "sequences": sequences,
            "tables": meta_tables,
        }
        writer.write_stream(META_STREAM, [json.dumps(meta).encode()], tick)
        with _suppress_closed():
            conn.execute("COMMIT")
        ref = writer.finish()
    finally:
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


def backup_database(
    dsn: str,
    database: str,
    collection: str,
    *,
    encryption: Encryption | None = None,
    incremental: bool | str = False,
    progress: Progress | None = None,
) -> JobResult:
    """Back up PostgreSQL database ``database`` (on the server ``dsn`` names) into ``collection``.

    ``incremental``: True (onto LATEST) or a full backup's subdir; the incremental stores only the
    content-defined chunks of each table's COPY stream that no earlier layer of the chain holds.
    """
    parsed = Dsn.parse(dsn).for_database(database)
    if not database:
        raise UsageError("name the PostgreSQL database to back up")
    onto = "LATEST" if incremental is True else (incremental or None)
    request = BackupRequest(
        into=(collection,), databases=(database,), encryption=encryption or Encryption(), incremental=onto
    )
    source = engine.DatabaseSource(database, Path(), None)  # names the database for the chain check

    def write(layer: engine.LayerWriter, prev: Manifest | None, progress: Progress | None) -> list[DatabaseEntry]:
        return [write_database(parsed, database, layer, prev, progress)]

    with foreground(cancel := Cancel()):  # as files.backup_file: Ctrl-C stops at a progress point
        result = engine.backup(request, [source], progress=checking(progress, cancel), write_databases=write)
    return replace(result, encryption=request.encryption.kind)


def missing_database(dsn: Dsn, database: str) -> NotFoundError:
    return NotFoundError(f'database "{database}" does not exist on {dsn.display}')


TickFn = Callable[[int], None]
