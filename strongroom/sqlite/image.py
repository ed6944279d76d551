"""Restore side: serve a stored page image to SQLite read-only, and write it out as a database.

A backup holds the plaintext page image of a database (see snapshot.py); the backup engine serves it
through :class:`ImageSource`. :func:`open_image` mounts that image as a read-only SQLite database
through an apsw VFS (query a backup, restore one table); :func:`write_database` turns it into a new
database file, keyed or not, without plaintext touching disk when a key is given.
"""

from __future__ import annotations

import fcntl
import glob
import itertools
import os
import threading
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Protocol, TypeVar

import apsw

from ..errors import AlreadyExistsError, IntegrityError, NotFoundError, StrongroomError, UsageError
from .connect import CIPHER_VFS, DEFAULT_CIPHER, check_cipher, connect, key_literal, remove_database_files, scalar_int
from .snapshot import fold_name

_CACHE_BLOCK = 64 * 1024  # a multiple of every page size up to 64 KiB
_CACHE_BYTES = 8 * 1024 * 1024
_BYTES_IMAGE_BLOCK = 1 << 20

T = TypeVar("T")


class ImageSource(Protocol):
    """A database page image: random access plus an in-order stream of the whole thing."""

    page_size: int
    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset``; shorter only at the end of the image."""
        ...

    def iter_blocks(self) -> Iterator[bytes]:
        """The whole image in order, in blocks of any size."""
        ...


def header_page_size(header: bytes) -> int:
    """Page size from a database header (bytes 16-17, big-endian; 1 means 65536)."""
    if len(header) < 18:
        return 4096
    value = int.from_bytes(header[16:18], "big")
    return 65536 if value == 1 else value


class BytesImage:
    """An :class:`ImageSource` over an in-memory image (tests, small databases)."""

    def __init__(self, data: bytes, page_size: int | None = None) -> None:
        self.data = bytes(data)
        self.page_size = page_size if page_size is not None else header_page_size(self.data)
        self.size = len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def iter_blocks(self) -> Iterator[bytes]:
        view = memoryview(self.data)
        for offset in range(0, self.size, _BYTES_IMAGE_BLOCK):
            yield bytes(view[offset : offset + _BYTES_IMAGE_BLOCK])


# -- read-only VFS -------------------------------------------------------------------------------


class _ImageFile:
    """The main database file of an image: reads from the source, writes refused.

    apsw accepts any object with the xMethods; inheriting apsw.VFSFile would open a real file.
    """

    def __init__(self, source: ImageSource) -> None:
        self._source = source
        self._size = source.size
        page_size = max(int(source.page_size), 512)
        # Blocks must be page-aligned: sources such as Snapshot only accept page-aligned reads.
        self._block = max(_CACHE_BLOCK, page_size) // page_size * page_size
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_slots = max(2, _CACHE_BYTES // self._block)

    def _get_block(self, index: int) -> bytes:
        block = self._cache.get(index)
        if block is not None:
            self._cache.move_to_end(index)
            return block
        offset = index * self._block
        block = self._source.read(offset, min(self._block, self._size - offset))
        self._cache[index] = block
        if len(self._cache) > self._cache_slots:
            self._cache.popitem(last=False)
        return block

    def xRead(self, amount: int, offset: int) -> bytes:
        end = min(offset + amount, self._size)
        if offset >= end:
            return b""  # apsw reports a short read; SQLite zero-fills
        first, last = offset // self._block, (end - 1) // self._block
        if first == last:
            start = offset - first * self._block
            return self._get_block(first)[start : start + (end - offset)]
        parts = []
        pos = offset
        for index in range(first, last + 1):
            block = self._get_block(index)
            start = pos - index * self._block
            take = min(end - pos, len(block) - start)
            parts.append(block[start : start + take])
            pos += take
        return b"".join(parts)

    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.ReadOnlyError("backup image is read-only")

    def xTruncate(self, newsize: int) -> None:
        raise apsw.ReadOnlyError("backup image is read-only")

    def xFileSize(self) -> int:
        return self._size

    def xSync(self, flags: int) -> None:
        pass

    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 4096

    def xDeviceCharacteristics(self) -> int:
        return apsw.SQLITE_IOCAP_IMMUTABLE

    def xClose(self) -> None:
        self._cache.clear()


_counter = itertools.count(1)


class ImageVFS(apsw.VFS):
    """A VFS (registered under a unique name) in which one file exists: the image, read-only.

    Any other file (journal, WAL, an ATTACH or ``VACUUM INTO`` target that does not name another VFS)
    cannot be opened, so nothing is ever written through it.
    """

    def __init__(self, source: ImageSource, name: str | None = None) -> None:
        if name is not None and name in apsw.vfs_names():
            # apsw would silently replace the registered VFS of that name (e.g. the default one).
            raise UsageError(f'a VFS named "{name}" is already registered')
        self.source = source
        self.vfs_name = name or f"strongroom-image-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"
        self.filename = f"/{self.vfs_name}.db"
        super().__init__(self.vfs_name, "")

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        if filename != self.filename or not flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            raise apsw.CantOpenError(f"backup image VFS has no file {filename!r}")
        flags[1] = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_MAIN_DB
        return _ImageFile(self.source)  # type: ignore[return-value]  # apsw takes any object with VFSFile's methods

    def xAccess(self, pathname: str, flags: int) -> bool:
        # No journal or WAL exists beside the image; SQLite asks before looking for a hot journal.
        return False

    def xDelete(self, filename: str, syncdir: bool) -> None:
        raise apsw.ReadOnlyError("backup image is read-only")

    def uri(self) -> str:
        """URI of the image file; ``immutable=1`` so SQLite never locks, journals or writes."""
        return f"file:{self.filename}?mode=ro&immutable=1"


class ImageConnection(apsw.Connection):
    """A read-only connection to an image; closing it also unregisters its VFS."""

    def __init__(self, vfs: ImageVFS) -> None:
        super().__init__(vfs.uri(), flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, vfs=vfs.vfs_name)
        self.image_vfs = vfs

    def close(self, force: bool = False) -> None:
        try:
            super().close(force)
        finally:
            self.image_vfs.unregister()


def open_image(source: ImageSource, *, name: str | None = None) -> ImageConnection:
    """Mount ``source`` as a read-only database; ``name`` is the VFS name (unique if omitted)."""
    vfs = ImageVFS(source, name)
    try:
        conn = ImageConnection(vfs)
    except BaseException:
        vfs.unregister()
        raise
    try:
        conn.execute("SELECT count(*) FROM main.sqlite_schema").fetchall()
    except (apsw.NotADBError, apsw.CorruptError):
        conn.close()
        raise IntegrityError("backup image is not a SQLite database (encrypted or damaged)") from None
    except BaseException:
        conn.close()
        raise
    return conn


# -- integrity -----------------------------------------------------------------------------------


def integrity_check(conn: apsw.Connection, *, label: str = "database", schema: str = "main") -> None:
    """Run ``PRAGMA integrity_check``; raise IntegrityError naming the first problems unless 'ok'."""
    try:
        # Index checks look rows up at random: a bounded 32 MiB page cache (instead of SQLite's
        # default 2 MiB) measured ~25% faster on a 461 MB database, and memory stays bounded.
        conn.execute(f'PRAGMA "{schema}".cache_size = -32768').fetchall()
        rows = conn.execute(f'PRAGMA "{schema}".integrity_check').fetchall()
    except (apsw.CorruptError, apsw.NotADBError) as exc:
        raise IntegrityError(f"{label} failed integrity_check: {exc}") from None
    lines = [str(r[0]) for r in rows]
    if lines != ["ok"]:
        first = "; ".join(lines[:5]) + ("; ..." if len(lines) > 5 else "")
        raise IntegrityError(f"{label} failed integrity_check: {first}")


# -- writing a database --------------------------------------------------------------------------


def _fsync_path(path: str | os.PathLike[str], directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _written_back(path: Path, interval: float = 0.25) -> Iterator[None]:
    """While ``path`` is being written, flush what is written so far every ``interval`` seconds (on
    another thread), so the disk writes while the CPU decodes and the final fsync has little left.
    Without it the whole file waited in the page cache for that fsync: measured 0.3 to 2.5 s per
    GiB on this machine's disk, after all the decoding was done."""
    stop = threading.Event()

    def flush() -> None:
        fd = -1
        try:
            while not stop.wait(interval):
                if fd < 0:
                    try:
                        fd = os.open(path, os.O_RDONLY)
                    except FileNotFoundError:
                        continue  # not created yet
                os.fdatasync(fd)
        except OSError:
            pass  # the final fsync reports any write error; this one only starts the work early
        finally:
            if fd >= 0:
                os.close(fd)

    flusher = threading.Thread(target=flush, name="write-back", daemon=True)
    flusher.start()
    try:
        yield
    finally:
        stop.set()
        flusher.join()


def _structural_check(conn: apsw.Connection, plain_file: Path | None) -> None:
    """The cheap check of a restored database: a header SQLite accepts, a page count that matches
    the file (plain files; a keyed file was just written by SQLite itself), a schema it can read."""
    page_size = scalar_int(conn, "PRAGMA page_size")
    pages = scalar_int(conn, "PRAGMA page_count")
    if plain_file is not None and pages * page_size != plain_file.stat().st_size:
        raise IntegrityError(
            f"restored database failed its structural check: {pages} pages of {page_size} bytes "
            f"in a file of {plain_file.stat().st_size} bytes"
        )
    conn.execute("SELECT count(*) FROM main.sqlite_schema").fetchall()


def _schema_rows(conn: apsw.Connection) -> list[tuple[object, ...]]:
    return sorted(conn.execute("SELECT type, name, tbl_name, sql FROM main.sqlite_schema").fetchall(), key=repr)


def _vacuum_into_keyed(source: ImageSource, temp: Path, key: bytes, cipher: str) -> list[tuple[object, ...]]:
    """Copy the image into a new sqlite3mc file at ``temp``; plaintext only ever lives in memory.

    VACUUM INTO would open its target through the image VFS (the connection's), so the URI names the
    sqlite3mc VFS; ``cipher``/``key`` URI parameters key the new file before its first write.
    Returns the image's schema, to compare with the result.
    """
    if CIPHER_VFS not in apsw.vfs_names():
        raise StrongroomError("SQLite3 Multiple Ciphers (apsw-sqlite3mc) is required for a keyed restore")
    target = (
        f"file:{urllib.parse.quote(str(temp))}?vfs={CIPHER_VFS}&cipher={check_cipher(cipher)}&key={key_literal(key)}"
    )
    image = open_image(source)
    try:
        expected = _schema_rows(image)
        # SQL string literal: quotes doubled (the key literal x'..' contains two).
        image.execute("VACUUM INTO '" + target.replace("'", "''") + "'")
    except apsw.Error as exc:
        # SQLite puts the whole URI, key included, into some messages (e.g. "unable to open database:").
        detail = str(exc).replace(target, str(temp)).replace(bytes(key).hex(), "<redacted>")
        if isinstance(exc, apsw.CorruptError | apsw.NotADBError):
            raise IntegrityError(f"restored database failed integrity_check: {detail}") from None
        raise StrongroomError(f'cannot write restored database "{temp}": {detail}') from None
    finally:
        image.close()
    return expected


def write_database(
    source: ImageSource,
    dest: str | os.PathLike[str],
    *,
    key: bytes | None = None,
    cipher: str = DEFAULT_CIPHER,
    verify: bool = False,
    inspect: Callable[[apsw.Connection], T] | None = None,
) -> T | None:
    """Create database ``dest`` from ``source``: a plain copy, or a sqlite3mc file keyed with ``key``.

    Never overwrites: the result is built in a temp file beside ``dest`` and hard-linked into place,
    which fails if ``dest`` appeared meanwhile. The result is in WAL mode.

    Every chunk of a backup image is authenticated (AES-GCM) and checked against its keyed hash
    before it gets here, so the image is the snapshot byte for byte; what is checked here is that
    it is a database at all: its header, its page count against its size, and a readable schema
    (which a keyed restore also compares with the backup's). ``verify`` adds SQLite's full
    ``PRAGMA integrity_check``, which reads every page and every index entry again and costs more
    than the restore itself.

    ``inspect`` (for example counting rows) runs on the new file while its fsync is under way, so
    the CPU work overlaps the disk's; its result is returned.
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise AlreadyExistsError(f'database file "{dest}" already exists')
    if not dest.parent.is_dir():
        raise NotFoundError(f'directory "{dest.parent}" not found')
    if key is not None:
        key_literal(key)  # validate before doing any work
        check_cipher(cipher)
    remove_abandoned_restores(dest)
    temp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.restoring"
    # Held for as long as this restore runs: a later one that can take it knows this one is gone.
    owner = os.open(f"{temp}.lock", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(owner, fcntl.LOCK_EX)
    try:
        expected = None
        with _written_back(temp):
            if key is None:
                written = 0
                with open(temp, "xb") as f:
                    for block in source.iter_blocks():
                        f.write(block)
                        written += len(block)
                if written != source.size:
                    raise IntegrityError(f"backup image is {written} bytes, expected {source.size}")
            else:
                expected = _vacuum_into_keyed(source, temp, key, cipher)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync") as fsync_pool:
            # The page cache holds the whole file now: the checks below read it from memory while
            # the disk writes it out.
            synced = fsync_pool.submit(_fsync_path, temp)
            result = _check_restored(temp, key, cipher, verify, expected, inspect)
            synced.result()
        _fsync_path(temp)  # the switch to WAL rewrote the header
        try:
            os.link(temp, dest)
        except FileExistsError:
            raise AlreadyExistsError(f'database file "{dest}" already exists') from None
        os.unlink(temp)
        _fsync_path(dest.parent, directory=True)
        return result
    finally:
        with suppress(OSError):  # cleanup must never hide the error that got us here
            remove_database_files(temp)
        with suppress(OSError):
            os.unlink(f"{temp}.lock")
        os.close(owner)


def _check_restored(
    temp: Path,
    key: bytes | None,
    cipher: str,
    verify: bool,
    expected: list[tuple[object, ...]] | None,
    inspect: Callable[[apsw.Connection], T] | None,
) -> T | None:
    """Open the restored file, check it (structurally or fully), run ``inspect``, switch it to WAL."""
    try:
        conn = connect(temp, key=key, cipher=cipher)
    except (StrongroomError, apsw.Error) as exc:
        raise IntegrityError(f"restored database failed integrity_check: {exc}") from None
    try:
        if verify:
            integrity_check(conn, label="restored database")
        else:
            _structural_check(conn, temp if key is None else None)
        if expected is not None and _schema_rows(conn) != expected:
            raise IntegrityError("restored database failed integrity_check: schema differs from backup")
        result = inspect(conn) if inspect is not None else None
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        return result
    except apsw.Error as exc:
        raise IntegrityError(f"restored database failed integrity_check: {exc}") from None
    finally:
        conn.close()  # last connection: checkpoints and removes temp's -wal/-shm


_SCHEMA_ORDER = "CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid"


def schema_image(source: ImageSource, *, read_rows: bool = False) -> tuple[BytesImage, int]:
    """An image of a database with ``source``'s schema (tables, indexes, views, triggers) and no rows,
    built in memory; with ``read_rows`` every row of every table of ``source`` is read first (each
    page authenticated and hash-checked on the way). Returns the image and the rows read."""
    image = open_image(source)
    rows_read = 0
    try:
        page_size = scalar_int(image, "PRAGMA page_size")
        user_version = scalar_int(image, "PRAGMA user_version")
        entries = image.execute(
            f"SELECT type, name, sql FROM main.sqlite_schema WHERE sql IS NOT NULL ORDER BY {_SCHEMA_ORDER}"
        ).fetchall()
        if read_rows:
            for type_, name, _sql in entries:
                if type_ == "table" and not str(name).startswith("sqlite_"):
                    for _row in image.execute(f"SELECT * FROM main.{_quote(str(name))}"):
                        rows_read += 1
    except (apsw.CorruptError, apsw.NotADBError) as exc:
        raise IntegrityError(f"backup image failed to read: {exc}") from None
    finally:
        image.close()
    mem = apsw.Connection(":memory:")
    try:
        mem.execute(f"PRAGMA page_size = {page_size}")
        mem.execute(f"PRAGMA user_version = {user_version}")
        for _type, name, sql in entries:
            exists = mem.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (name,)).fetchall()
            if exists or str(name).startswith("sqlite_"):
                continue  # made by SQLite itself: sqlite_sequence, a virtual table's shadow tables
            mem.execute(str(sql))
        return BytesImage(mem.serialize("main"), page_size), rows_read
    finally:
        mem.close()


def remove_abandoned_restores(dest: Path) -> list[Path]:
    """Remove the temp files of restores into ``dest`` that were killed: those whose lock no process
    holds any more (a restore running now holds its own). Returns the temp files removed."""
    removed = []
    for lock in dest.parent.glob(f".{glob.escape(dest.name)}.*.restoring.lock"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue  # finished meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its restore is still running
            temp = Path(str(lock).removesuffix(".lock"))
            remove_database_files(temp)
            lock.unlink(missing_ok=True)
            removed.append(temp)
        finally:
            os.close(fd)
    return removed


# -- table-level restore ---------------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def copy_table(image: apsw.Connection, table: str, dest: apsw.Connection) -> tuple[int, int]:
    """Recreate ``table`` (rows, indexes, triggers) from ``image`` in ``dest``, in one transaction.

    Rows stream from a cursor into ``executemany`` (memory stays flat) with their rowids kept.
    Returns (rows, index_entries) as restored.
    """
    found = image.execute(
        "SELECT name, sql FROM main.sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE",
        (table,),
    ).fetchall()
    if not found or str(found[0][0]).startswith("sqlite_") or found[0][1] is None:
        raise NotFoundError(f'table "{table}" not found in backup')
    name, create_sql = str(found[0][0]), str(found[0][1])
    related = image.execute(
        "SELECT type, name, sql FROM main.sqlite_schema "
        "WHERE type IN ('index', 'trigger') AND tbl_name = ? COLLATE NOCASE AND sql IS NOT NULL "
        "ORDER BY type = 'trigger', rowid",
        (name,),
    ).fetchall()

    existing = dest.execute(
        "SELECT name FROM main.sqlite_schema WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE",
        (name,),
    ).fetchall()
    if existing:
        raise AlreadyExistsError(f'relation "{table}" already exists')
    for _type, rel_name, _sql in related:
        if dest.execute("SELECT 1 FROM main.sqlite_schema WHERE name = ? COLLATE NOCASE", (rel_name,)).fetchall():
            raise AlreadyExistsError(f'relation "{rel_name}" already exists')

    qname = _quote(name)
    columns = [
        str(col_name)
        for _cid, col_name, _type, _notnull, _dflt, _pk, hidden in image.execute(
            f"PRAGMA main.table_xinfo({qname})"
        ).fetchall()
        if hidden == 0  # generated columns (hidden 2/3) are recomputed, not inserted
    ]
    without_rowid = any(
        wr
        for sch, tname, _t, _n, wr, _s in image.execute("PRAGMA main.table_list").fetchall()
        if sch == "main" and fold_name(str(tname)) == fold_name(name)
    )
    # Keep rowids (other tables may refer to them) unless every alias is shadowed by a column.
    folded = {fold_name(c) for c in columns}
    rowid_alias = None
    if not without_rowid and not create_sql.upper().startswith("CREATE VIRTUAL"):
        rowid_alias = next((a for a in ("rowid", "_rowid_", "oid") if a not in folded), None)
    targets = ([rowid_alias] if rowid_alias else []) + columns
    column_list = ", ".join(a if a == rowid_alias else _quote(a) for a in targets)
    select_sql = f"SELECT {column_list} FROM main.{qname}"
    insert_sql = f"INSERT INTO main.{qname} ({column_list}) VALUES ({', '.join('?' * len(targets))})"

    seq = None
    if image.execute("SELECT 1 FROM main.sqlite_schema WHERE name = 'sqlite_sequence'").fetchall():
        found_seq = image.execute(
            "SELECT seq FROM main.sqlite_sequence WHERE name = ? COLLATE NOCASE", (name,)
        ).fetchall()
        seq = found_seq[0][0] if found_seq else None

    counter = itertools.count()

    def rows() -> Iterator[tuple[object, ...]]:
        for row in image.execute(select_sql):
            next(counter)
            yield row

    with dest:  # a savepoint: everything or nothing
        dest.execute(create_sql)
        if targets:
            dest.executemany(insert_sql, rows())
        n_rows = next(counter)
        if seq is not None:
            # AUTOINCREMENT must never reuse ids the backup had already handed out.
            dest.execute("UPDATE main.sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, name))
            if dest.changes() == 0:
                dest.execute("INSERT INTO main.sqlite_sequence(name, seq) VALUES (?, ?)", (name, seq))
        # Indexes after the rows (one sort instead of per-row updates), triggers last so none fires.
        for _type, _rel_name, sql in related:
            dest.execute(str(sql))
        index_names = [
            str(r[0])
            for r in dest.execute(
                "SELECT name FROM main.sqlite_schema WHERE type = 'index' AND tbl_name = ? COLLATE NOCASE",
                (name,),
            ).fetchall()
        ]
        index_entries = 0
        for idx in index_names:
            index_entries += scalar_int(
                dest, "SELECT coalesce(sum(ncell), 0) FROM dbstat('main') WHERE name = ?", (idx,)
            )
    return n_rows, index_entries
