"""A consistent plaintext page image of a live SQLite database, taken while writers keep writing.

How it stays consistent (WAL mode)
----------------------------------
1. Connection A runs ``BEGIN IMMEDIATE``: it holds the WAL write lock, so no transaction can commit,
   no WAL restart can happen and no RESTART/TRUNCATE checkpoint can run (all three need that lock).
2. While A holds it, reader B runs ``BEGIN`` plus a read. B's snapshot is the wal-index header as of
   that moment: ``mxFrame`` (last committed frame) and ``nPage``. Because nothing can commit before A
   lets go, the header we then read from ``-shm`` is exactly B's snapshot; we also read ``nBackfill``
   (how many frames a checkpoint has already copied into the db file). Then A rolls back.
3. If ``nBackfill == mxFrame`` every committed page is in the db file. B may then read without any WAL
   read mark (SQLite's "read lock 0"), so the WAL may be restarted and overwritten later, but no
   checkpoint can write into the db file while B holds read lock 0 or a read mark, so the db file
   alone is the image and we never touch the WAL.
4. Otherwise ``nBackfill < mxFrame`` was already true when B began (nBackfill only grows until a WAL
   restart, and a restart needs the write lock A held), so B holds a read mark >= 1.
   While it does, (a) the WAL cannot be restarted (that needs every read mark exclusively), so frames
   1..mxFrame stay on disk unchanged, and (b) checkpoints copy only frames <= B's read mark (<=
   mxFrame) into the db file, i.e. only pages whose latest version we take from the WAL anyway;
   a db-file page without a frame <= mxFrame is never written. A checkpoint may truncate the file
   only to ``nPage`` of the same snapshot. So: page in the frame map -> read its latest frame
   <= mxFrame from the WAL; any other page -> read it from the db file. Frames after mxFrame, and
   frames whose salts differ from the WAL header's (a previous WAL generation), are never used.

The ``-shm`` header is read by a child process: POSIX locks belong to the process, and closing any
descriptor of a file drops all of the process's locks on it, SQLite's WAL locks included (see
:func:`_read_prefix_elsewhere`). For the same reason nothing here opens the database file itself.

Rollback-journal mode: B's read transaction holds a SHARED lock, so no writer can change the db file
until we close (writers wait; that is inherent to the mode).

``apsw.Connection.read`` goes through the VFS, so for a sqlite3mc-encrypted database a page-sized,
page-aligned read returns plaintext (larger reads come back as ciphertext, hence page-by-page reads
there). dbstat runs on B inside the same read transaction, so counts describe the same snapshot.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Self

import apsw

from ..errors import StrongroomError
from .census import PageReader, Pages, count_trees
from .connect import DEFAULT_CIPHER, connect, scalar_int

DEFAULT_BLOCK_SIZE = 1 << 20  # a multiple of every legal page size

WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_WAL_HEADER = struct.Struct(">IIIIII")  # magic, version, page size, ckpt seq, (salts as raw bytes)
_WAL_FRAME_HEADER = struct.Struct(">II")  # page number, db size in pages after commit (0 if not)

# WalIndexHdr, native endian, stored twice at the start of -shm; then WalCkptInfo begins (nBackfill).
_SHM_HEADER = struct.Struct("=IIIBBHII8s8s8s")
_SHM_HEADER_SIZE = 48
_SHM_NBACKFILL = struct.Struct("=I")
_WAL_INDEX_VERSION = 3007000


PENDING_BYTE = 0x40000000  # SQLite's lock bytes sit at 1 GiB; the page holding them is never used


@dataclass
class SchemaEntry:
    type: str
    name: str
    tbl_name: str
    sql: str | None
    rootpage: int = 0  # 0 for views, triggers and virtual tables


@dataclass
class ObjectStats:
    name: str
    type: str  # 'table' | 'view'
    rows: int
    index_entries: int
    bytes: int
    sql: str | None


@dataclass
class DatabaseStats:
    objects: list[ObjectStats] = field(default_factory=list)
    rows: int = 0
    index_entries: int = 0
    bytes: int = 0


@dataclass
class _WalIndex:
    mx_frame: int
    n_page: int
    page_size: int
    salt: bytes
    n_backfill: int


_READ_PREFIX_PY = (
    "import os,sys;fd=os.open(sys.argv[1],os.O_RDONLY);sys.stdout.buffer.write(os.pread(fd,int(sys.argv[2]),0))"
)


def _read_prefix_elsewhere(path: str, n: int) -> bytes:
    """The first ``n`` bytes of ``path``, read by a child process.

    POSIX record locks belong to the process, and closing *any* descriptor of a file drops every lock
    the process holds on it: opening and closing ``-shm`` here would silently release SQLite's WAL
    locks (our reader's read mark, connection A's write lock, and those of any other connection in
    this process), letting other processes restart the WAL or truncate the shm under us (seen as
    SIGBUS in tests). A child's descriptor carries no such risk. ``head`` costs ~1.5 ms.
    """
    head = shutil.which("head")
    cmd = [head, "-c", str(n), path] if head else [sys.executable, "-I", "-S", "-c", _READ_PREFIX_PY, path, str(n)]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()
        raise StrongroomError(f'cannot read WAL index "{path}": {detail}')
    return proc.stdout


def _read_wal_index(shm_path: str) -> _WalIndex:
    """Read the wal-index header from ``-shm``; only stable while someone holds the write lock."""
    if not os.path.exists(shm_path):
        raise StrongroomError(f'WAL index "{shm_path}" not found (exclusive locking mode?)')
    raw = _read_prefix_elsewhere(shm_path, 2 * _SHM_HEADER_SIZE + _SHM_NBACKFILL.size)
    if len(raw) < 2 * _SHM_HEADER_SIZE + _SHM_NBACKFILL.size:
        raise StrongroomError(f'WAL index "{shm_path}" is too short')
    first, second = raw[:_SHM_HEADER_SIZE], raw[_SHM_HEADER_SIZE : 2 * _SHM_HEADER_SIZE]
    version, _unused, _change, is_init, _big_end, sz_page, mx_frame, n_page, _fck, salt, _ck = _SHM_HEADER.unpack(first)
    if first != second or not is_init or version != _WAL_INDEX_VERSION:
        raise StrongroomError(f'WAL index "{shm_path}" is not in a consistent state')
    # szPage is a u16: 65536 is stored as 1.
    page_size = 65536 if sz_page == 1 else sz_page
    (n_backfill,) = _SHM_NBACKFILL.unpack_from(raw, 2 * _SHM_HEADER_SIZE)
    return _WalIndex(mx_frame, n_page, page_size, salt, n_backfill)


class Snapshot:
    """A pinned read transaction on a database and a reader of its plaintext page image."""

    path: str
    page_size: int
    page_count: int
    size: int
    encrypted: bool
    journal_mode: str
    #: Frames overlaid from the WAL (0 when the db file alone is the image).
    wal_frames: int

    def __init__(
        self,
        *,
        path: str,
        conn: apsw.Connection,
        counter: apsw.Connection,
        encrypted: bool,
        page_size: int,
        page_count: int,
        journal_mode: str,
        wal_map: dict[int, int],
        wal_frames: int,
    ) -> None:
        """Internal: use :meth:`Snapshot.open`."""
        self.path = path
        self._conn: apsw.Connection | None = conn
        # A second reader pinned to the same snapshot, so stats() can run in another thread while
        # pages stream from the first (one apsw connection serialises its callers).
        self._counter: apsw.Connection | None = counter
        self.encrypted = encrypted
        self.page_size = page_size
        self.page_count = page_count
        self.size = page_size * page_count
        self.journal_mode = journal_mode
        self.wal_frames = wal_frames
        self._wal_map = wal_map
        self._wal_pages = sorted(p for p in wal_map if p <= page_count)
        self._raw_fd: int | None = None

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, key: bytes | None = None, cipher: str = DEFAULT_CIPHER) -> Self:
        """Pin a consistent snapshot of ``path`` (keyed with the raw ``key`` if given)."""
        path = os.fspath(path)
        writer = connect(path, key=key, cipher=cipher)
        reader: apsw.Connection | None = None
        counter: apsw.Connection | None = None
        try:
            # Opened (and keyed) before taking the write lock, to keep the writers' pause short.
            reader = connect(path, key=key, cipher=cipher, readonly=True)
            counter = connect(path, key=key, cipher=cipher, readonly=True)
            try:
                writer.execute("BEGIN IMMEDIATE")
            except apsw.BusyError:
                raise StrongroomError(
                    f'database "{path}" stayed locked by another writer; cannot take a snapshot'
                ) from None
            reader.execute("BEGIN")
            # The first read starts B's read transaction: from here on B's snapshot is fixed.
            reader.execute("SELECT count(*) FROM main.sqlite_schema").fetchall()
            # Begun under the same write lock, the counter's snapshot is B's.
            counter.execute("BEGIN")
            counter.execute("SELECT count(*) FROM main.sqlite_schema").fetchall()
            journal_mode = str(reader.execute("PRAGMA main.journal_mode").fetchall()[0][0]).lower()
            page_size = scalar_int(reader, "PRAGMA main.page_size")
            page_count = scalar_int(reader, "PRAGMA main.page_count")
            wal_index = None
            if journal_mode == "wal":
                # Still under A's write lock, so this header is B's snapshot (see module docstring).
                wal_index = _read_wal_index(reader.filename + "-shm")
            writer.execute("ROLLBACK")
            writer.close()

            wal_map: dict[int, int] = {}
            wal_frames = 0
            if wal_index is not None and wal_index.mx_frame > 0:
                if wal_index.n_page != page_count or wal_index.page_size != page_size:
                    raise StrongroomError(
                        f'database "{path}": WAL index disagrees with the read transaction '
                        f"({wal_index.n_page} pages of {wal_index.page_size} bytes, "
                        f"expected {page_count} of {page_size})"
                    )
                if wal_index.n_backfill < wal_index.mx_frame:
                    wal_map = _read_wal_frames(reader, path, wal_index)
                    wal_frames = wal_index.mx_frame
            snap = cls(
                path=path,
                conn=reader,
                counter=counter,
                encrypted=key is not None,
                page_size=page_size,
                page_count=page_count,
                journal_mode=journal_mode,
                wal_map=wal_map,
                wal_frames=wal_frames,
            )
            reader = counter = None
            return snap
        finally:
            writer.close()  # idempotent in apsw
            for conn in (reader, counter):
                if conn is not None:
                    conn.close()

    # -- context management --------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the read transactions (writers and checkpoints proceed freely again)."""
        conns = (self._conn, self._counter)
        self._conn = self._counter = None
        if self._raw_fd is not None:
            os.close(self._raw_fd)
            self._raw_fd = None
        for conn in conns:
            if conn is not None:
                try:
                    if not conn.get_autocommit():
                        conn.execute("ROLLBACK")
                finally:
                    conn.close()

    @property
    def _c(self) -> apsw.Connection:
        if self._conn is None:
            raise StrongroomError("snapshot is closed")
        return self._conn

    # -- pages ---------------------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        ps = self.page_size
        if offset < 0 or length < 0 or offset % ps or length % ps:
            raise ValueError(f"snapshot reads must be page-aligned (page size {ps})")
        if offset + length > self.size:
            raise ValueError(f"read beyond the end of the image ({offset}+{length} > {self.size})")

    def _frame_offset(self, frame: int) -> int:
        return WAL_HEADER_SIZE + (frame - 1) * (WAL_FRAME_HEADER_SIZE + self.page_size) + WAL_FRAME_HEADER_SIZE

    def page(self, pgno: int) -> bytes:
        """One page (1-based), from its latest WAL frame in the snapshot or else from the db file."""
        ps = self.page_size
        if self.encrypted and pgno == PENDING_BYTE // ps + 1:
            # The lock-byte page (the file's second GiB starts with it): SQLite never writes it,
            # so sqlite3mc has nothing to decrypt there. Its content is never read, as zeros here.
            return bytes(ps)
        frame = self._wal_map.get(pgno)
        if frame is not None:
            ok, data = self._c.read("main", 1, self._frame_offset(frame), ps)
        else:
            ok, data = self._c.read("main", 0, (pgno - 1) * ps, ps)
        if not ok:
            raise StrongroomError(f'database "{self.path}": short read of page {pgno}')
        return data

    def read(self, offset: int, length: int) -> bytes:
        """Plaintext bytes of the snapshot image; ``offset`` and ``length`` must be page-aligned."""
        self._check_range(offset, length)
        if length == 0:
            return b""
        ps = self.page_size
        first = offset // ps + 1
        n = length // ps
        if self.encrypted:
            # sqlite3mc only decrypts page-sized, page-aligned reads.
            return b"".join([self.page(p) for p in range(first, first + n)])
        ok, data = self._c.read("main", 0, offset, length)
        if not ok:
            # The db file is shorter than the image: pages past its end must come from the WAL.
            return b"".join([self.page(p) for p in range(first, first + n)])
        lo = bisect.bisect_left(self._wal_pages, first)
        hi = bisect.bisect_left(self._wal_pages, first + n)
        if lo == hi:
            return data
        buf = bytearray(data)
        for pgno in self._wal_pages[lo:hi]:
            start = (pgno - first) * ps
            buf[start : start + ps] = self.page(pgno)
        return bytes(buf)

    def stored(self, offset: int, length: int) -> bytes:
        """The database file's own bytes at ``offset`` (ciphertext, for an encrypted database): shorter
        past the end of the file. Stable for the snapshot's life wherever no page of the range is in
        :meth:`wal_pages` (a checkpoint only copies frames the snapshot reads from the WAL)."""
        if self._raw_fd is None:
            self._c  # noqa: B018  (raises once the snapshot is closed)
            self._raw_fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._raw_fd, length, offset)

    def wal_pages(self) -> list[int]:
        """The pages the snapshot reads from the WAL rather than the database file, in order."""
        return list(self._wal_pages)

    def iter_blocks(self, block_size: int = DEFAULT_BLOCK_SIZE) -> Iterator[bytes]:
        """The whole image in order, in blocks of ``block_size`` bytes (the last one shorter)."""
        if block_size <= 0 or block_size % self.page_size:
            raise ValueError(f"block size must be a positive multiple of the page size {self.page_size}")
        for offset in range(0, self.size, block_size):
            yield self.read(offset, min(block_size, self.size - offset))

    # -- catalogue -----------------------------------------------------------------------------

    def schema(self) -> list[SchemaEntry]:
        """The snapshot's sqlite_schema rows, in storage order."""
        rows = self._c.execute("SELECT type, name, tbl_name, sql FROM main.sqlite_schema").fetchall()
        return [SchemaEntry(str(t), str(n), str(tn), None if s is None else str(s)) for t, n, tn, s in rows]

    def stats(self, chunks: Collection[int] | None = None, pages_per_chunk: int = 1) -> DatabaseStats:
        """Rows, index entries and payload bytes per table (dbstat, same snapshot as the image).

        With ``chunks`` only cells and payload on those pages count: chunk ``i`` is pages
        ``i*pages_per_chunk + 1 .. (i+1)*pages_per_chunk`` (1-based), so a single page is ``pages_per_chunk=1``.
        """
        if self._counter is None:
            raise StrongroomError("snapshot is closed")
        return compute_stats(self._counter, chunks, pages_per_chunk)

    def census(self, wanted: Pages, children: dict[int, list[int]] | None = None) -> DatabaseStats:
        """What :meth:`stats` counts, on the ``wanted`` pages (None: all), parsed from those
        pages and the interior pages above them (cost follows the pages, not the database)."""
        return census_stats(self._c, self.page, self.page_count, wanted, children)


# -- helpers shared with the restore side ----------------------------------------------------------


def _read_wal_frames(conn: apsw.Connection, path: str, wal_index: _WalIndex) -> dict[int, int]:
    """Map page number -> latest frame <= mxFrame, checking every frame belongs to this WAL generation."""
    ps = wal_index.page_size
    ok, header = conn.read("main", 1, 0, WAL_HEADER_SIZE)
    if not ok:
        raise StrongroomError(f'database "{path}": WAL shorter than its index says')
    magic, _version, wal_page_size, _seq = _WAL_HEADER.unpack_from(header)[:4]
    if magic not in _WAL_MAGIC or wal_page_size != ps or header[16:24] != wal_index.salt:
        raise StrongroomError(f'database "{path}": WAL header does not match the WAL index')
    wal_map: dict[int, int] = {}
    stride = WAL_FRAME_HEADER_SIZE + ps
    commit_size = 0
    for frame in range(1, wal_index.mx_frame + 1):
        ok, fh = conn.read("main", 1, WAL_HEADER_SIZE + (frame - 1) * stride, WAL_FRAME_HEADER_SIZE)
        if not ok or fh[8:16] != wal_index.salt:
            # Cannot happen while our read mark pins the WAL; refuse rather than guess.
            raise StrongroomError(f'database "{path}": WAL frame {frame} is not part of the snapshot')
        pgno, commit_size = _WAL_FRAME_HEADER.unpack_from(fh)
        wal_map[pgno] = frame
    if commit_size != wal_index.n_page:
        raise StrongroomError(f'database "{path}": WAL frame {wal_index.mx_frame} is not a commit frame')
    return wal_map


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_name(name: str) -> str:
    """SQLite identifiers compare case-insensitively for ASCII letters only."""
    return name.translate(_ASCII_LOWER)


def compute_stats(
    conn: apsw.Connection,
    chunks: Collection[int] | None = None,
    pages_per_chunk: int = 1,
    schema: str = "main",
) -> DatabaseStats:
    """Per-table rows / index entries / payload bytes of ``schema`` of ``conn`` using dbstat.

    rows: cells on leaf pages of a rowid table's b-tree, or on all pages of a WITHOUT ROWID table's
    (index-shaped) b-tree, whose interior cells are real entries. index_entries: cells on all pages
    of the table's other indexes (autoindexes of UNIQUE constraints included). bytes: dbstat payload
    over all of those b-trees, overflow pages included.
    """
    entries, without_rowid = schema_facts(conn, schema)
    # Per b-tree name: (cells on leaf pages, cells on all pages, payload bytes). One aggregate per
    # b-tree, each walking only that b-tree (dbstat honours name=): no GROUP BY, so no sorter whose
    # memory would grow with the database (measured: 35 MB at 1 GiB, 85 MB at 4 GiB with GROUP BY).
    per_tree: dict[str, tuple[int, int, int]] = {}
    query = (
        "SELECT coalesce(sum(ncell) FILTER (WHERE pagetype = 'leaf'), 0), coalesce(sum(ncell), 0), "
        f"coalesce(sum(payload), 0) FROM dbstat('{schema}') WHERE name = ?"
    )
    args: tuple[object, ...] = ()
    if chunks is not None:
        # The filter runs inside SQLite: a Python callback per page costs ~5x the dbstat walk itself.
        query += " AND (pageno - 1) / ? IN (SELECT value FROM json_each(?))"
        args = (pages_per_chunk, json.dumps(sorted(chunks)))
    trees = [e.name for e in entries if e.type in ("table", "index")]
    if chunks is None or chunks:  # with no chunk at all there is nothing to count: skip the walk
        for name in trees:
            leaf, cells, payload = conn.execute(query, (name, *args)).fetchall()[0]
            per_tree[fold_name(name)] = (_int(leaf), _int(cells), _int(payload))

    return assemble_stats(entries, without_rowid, per_tree)


def census_stats(
    conn: apsw.Connection,
    read_page: PageReader,
    page_count: int,
    wanted: Pages,
    children: dict[int, list[int]] | None = None,
) -> DatabaseStats:
    """What compute_stats counts, on the ``wanted`` pages only, parsed from the pages ``read_page``
    serves (see census.py); ``conn`` reads the schema of the same snapshot."""
    entries, without_rowid = schema_facts(conn)
    roots = {fold_name(e.name): e.rootpage for e in entries if e.type in ("table", "index") and e.rootpage > 0}
    return assemble_stats(entries, without_rowid, count_trees(read_page, roots, page_count, wanted, children))


def schema_facts(conn: apsw.Connection, schema: str = "main") -> tuple[list[SchemaEntry], set[str]]:
    """The schema's rows (with root pages) and the folded names of its WITHOUT ROWID tables."""
    rows = conn.execute(f'SELECT type, name, tbl_name, sql, rootpage FROM "{schema}".sqlite_schema').fetchall()
    entries = [
        SchemaEntry(str(t), str(n), str(tn), None if s is None else str(s), int(r) if isinstance(r, int) else 0)
        for t, n, tn, s, r in rows
    ]
    without_rowid = {
        fold_name(str(name))
        for sch, name, _type, _ncol, wr, _strict in conn.execute(f'PRAGMA "{schema}".table_list').fetchall()
        if sch == schema and wr
    }
    return entries, without_rowid


def assemble_stats(
    entries: list[SchemaEntry], without_rowid: set[str], per_tree: dict[str, tuple[int, int, int]]
) -> DatabaseStats:
    """Per-table figures from per-b-tree ones (folded name -> cells on leaf pages, cells on all pages,
    payload bytes): a rowid table's rows are its leaf cells, a WITHOUT ROWID table's all its cells;
    its indexes' cells are its index entries; bytes are the payload of the table and its indexes."""
    indexes: dict[str, list[str]] = {}
    for e in entries:
        if e.type == "index":
            indexes.setdefault(fold_name(e.tbl_name), []).append(fold_name(e.name))

    result = DatabaseStats()
    for e in entries:
        type_, name, sql = e.type, e.name, e.sql
        if type_ == "view":
            result.objects.append(ObjectStats(name, "view", 0, 0, 0, sql))
            continue
        if type_ != "table" or name.startswith("sqlite_"):
            continue
        key = fold_name(name)
        leaf, cells, payload = per_tree.get(key, (0, 0, 0))
        rows_n = cells if key in without_rowid else leaf
        index_entries = 0
        nbytes = payload
        for idx in indexes.get(key, ()):
            _leaf, icells, ipayload = per_tree.get(idx, (0, 0, 0))
            index_entries += icells
            nbytes += ipayload
        result.objects.append(ObjectStats(name, "table", rows_n, index_entries, nbytes, sql))
        result.rows += rows_n
        result.index_entries += index_entries
        result.bytes += nbytes
    return result


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected an integer from SQLite, got {value!r}")
    return value
