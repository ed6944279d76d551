"""Restore side: read-only image VFS, write_database, copy_table (real files, real SQLite)."""

from __future__ import annotations

import os
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from strongroom.errors import (
    AlreadyExistsError,
    EncryptionError,
    IntegrityError,
    NotFoundError,
    StrongroomError,
    UsageError,
)
from strongroom.sqlite import BytesImage, Snapshot, connect, copy_table, integrity_check, open_image, write_database

SRC_KEY = bytes(range(32))
DEST_KEY = bytes(range(100, 132))
MARKER = "MARKER-7f3a9c"

SCHEMA = """
CREATE TABLE people(id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT UNIQUE, age INTEGER, note TEXT);
CREATE INDEX people_adults ON people(age) WHERE age >= 18;
CREATE TABLE audit(person INTEGER, what TEXT);
CREATE TRIGGER people_audit AFTER INSERT ON people BEGIN INSERT INTO audit VALUES (new.id, 'insert'); END;
CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT, tag TEXT UNIQUE) WITHOUT ROWID;
CREATE INDEX kv_v ON kv(v);
CREATE TABLE loose(a TEXT, b BLOB, c INTEGER GENERATED ALWAYS AS (length(a)) VIRTUAL);
CREATE VIEW adults AS SELECT * FROM people WHERE age >= 18;
"""


def open_db(path: Path, key: bytes | None = None, cipher: str = "aegis") -> apsw.Connection:
    conn = apsw.Connection(str(path))
    if key is not None:
        conn.execute(f"PRAGMA cipher='{cipher}'").fetchall()
        conn.execute(f"PRAGMA key=\"x'{key.hex()}'\"").fetchall()
    return conn


def make_source(path: Path, key: bytes | None = None) -> None:
    conn = open_db(path, key)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    for stmt in SCHEMA.strip().split(";\n"):
        conn.execute(stmt)
    with conn:
        conn.executemany(
            "INSERT INTO people(email, age, note) VALUES (?, ?, ?)",
            [(f"p{i}@example.com" if i % 11 else None, i % 70, f"{MARKER} note {i}") for i in range(3000)],
        )
        conn.executemany(
            "INSERT INTO kv VALUES (?, ?, ?)",
            [(f"k{i:05d}", f"v{i % 97}", f"t{i}" if i % 4 else None) for i in range(2000)],
        )
        conn.executemany(
            "INSERT INTO loose(a, b) VALUES (?, ?)", [(f"{MARKER}{i}", os.urandom(i % 3000)) for i in range(400)]
        )
    conn.execute("DELETE FROM people WHERE id % 9 = 0 OR id > 2990")  # gaps and a sequence above max(id)
    conn.execute("DELETE FROM loose WHERE rowid % 5 = 0")  # rowids of a table without an alias
    conn.close()


def dump(conn: apsw.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {
        "people": conn.execute("SELECT id, email, age, note FROM people ORDER BY id").fetchall(),
        "audit": conn.execute("SELECT rowid, * FROM audit ORDER BY rowid").fetchall(),
        "kv": conn.execute("SELECT * FROM kv ORDER BY k").fetchall(),
        "loose": conn.execute("SELECT rowid, a, b, c FROM loose ORDER BY rowid").fetchall(),
        "adults": conn.execute("SELECT count(*) FROM adults").fetchall(),
        "seq": conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall(),
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, dict[str, list[tuple[object, ...]]]]:
    """An encrypted source database, its plaintext snapshot image and its content."""
    path = tmp_path_factory.mktemp("src") / "src.db"
    make_source(path, SRC_KEY)
    with Snapshot.open(path, key=SRC_KEY) as snap:
        image = b"".join(snap.iter_blocks())
    conn = open_db(path, SRC_KEY)
    content = dump(conn)
    conn.close()
    return path, image, content


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty directory of our own (conftest puts a keyring folder in tmp_path)."""
    d = tmp_path / "out"
    d.mkdir()
    return d


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def assert_no_plaintext(directory: Path) -> None:
    for p in directory.iterdir():
        data = p.read_bytes()
        assert MARKER.encode() not in data, p
        assert b"SQLite format 3\0" not in data, p


# -- write_database ----------------------------------------------------------------------------------


def test_write_database_plain(out: Path, source: tuple[Path, bytes, dict]) -> None:
    _, image, content = source
    dest = out / "restored.db"
    write_database(BytesImage(image), dest)
    assert files_in(out) == {"restored.db"}
    conn = open_db(dest)
    integrity_check(conn)
    assert dump(conn) == content
    assert conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    conn.close()


class SpyImage(BytesImage):
    """Scans the destination directory for plaintext while the restore is reading the image."""

    def __init__(self, data: bytes, watch: Path) -> None:
        super().__init__(data)
        self.watch = watch
        self.calls = 0

    def read(self, offset: int, length: int) -> bytes:
        self.calls += 1
        assert_no_plaintext(self.watch)
        return super().read(offset, length)


@pytest.mark.parametrize("cipher", ["chacha20", "aegis", "sqlcipher"])
def test_write_database_keyed_never_writes_plaintext(out: Path, source: tuple[Path, bytes, dict], cipher: str) -> None:
    _, image, content = source
    assert MARKER.encode() in image  # the image itself is plaintext
    dest = out / "restored.db"
    spy = SpyImage(image, out)
    write_database(spy, dest, key=DEST_KEY, cipher=cipher)
    assert spy.calls > 5
    assert files_in(out) == {"restored.db"}
    assert_no_plaintext(out)

    conn = connect(dest, key=DEST_KEY, cipher=cipher)
    integrity_check(conn)
    assert dump(conn) == content
    assert conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    conn.close()
    assert_no_plaintext(out)
    with pytest.raises(EncryptionError):
        connect(dest, key=SRC_KEY, cipher=cipher)
    with pytest.raises(EncryptionError):
        connect(dest)


def test_write_database_keyed_from_plaintext_source(tmp_path: Path) -> None:
    # Reserve bytes go from 0 (plaintext page layout) to 64 (aegis).
    src = tmp_path / "plain.db"
    make_source(src)
    with Snapshot.open(src) as snap:
        image = BytesImage(b"".join(snap.iter_blocks()))
    out = tmp_path / "restore"
    out.mkdir()
    write_database(image, out / "enc.db", key=DEST_KEY)
    assert_no_plaintext(out)
    conn = connect(out / "enc.db", key=DEST_KEY)
    integrity_check(conn)
    expected = open_db(src)
    assert dump(conn) == dump(expected)
    expected.close()
    conn.close()


def test_write_database_straight_from_a_live_snapshot(tmp_path: Path, source: tuple[Path, bytes, dict]) -> None:
    # A Snapshot is itself an ImageSource: re-key a live database into a new file.
    src, _, content = source
    out = tmp_path / "restore"
    out.mkdir()
    with Snapshot.open(src, key=SRC_KEY) as snap:
        write_database(snap, out / "rekeyed.db", key=DEST_KEY, cipher="aegis")
    assert_no_plaintext(out)
    conn = connect(out / "rekeyed.db", key=DEST_KEY, cipher="aegis")
    assert dump(conn) == content
    conn.close()


@pytest.mark.parametrize("key", [None, DEST_KEY])
def test_write_database_refuses_existing_destination(
    out: Path, source: tuple[Path, bytes, dict], key: bytes | None
) -> None:
    _, image, _ = source
    dest = out / "taken.db"
    dest.write_bytes(b"precious")
    with pytest.raises(AlreadyExistsError, match=r'database file ".*taken\.db" already exists'):
        write_database(BytesImage(image), dest, key=key)
    assert dest.read_bytes() == b"precious"

    # The destination appears while the restore runs: still never overwritten.
    late = out / "late.db"

    class Racing(BytesImage):
        def iter_blocks(self) -> Iterator[bytes]:
            late.write_bytes(b"precious")
            yield from super().iter_blocks()

        def read(self, offset: int, length: int) -> bytes:
            if not late.exists():
                late.write_bytes(b"precious")
            return super().read(offset, length)

    with pytest.raises(AlreadyExistsError):
        write_database(Racing(image), late, key=key)
    assert late.read_bytes() == b"precious"
    assert files_in(out) == {"taken.db", "late.db"}


def test_write_database_errors_never_show_the_key(tmp_path: Path, source: tuple[Path, bytes, dict]) -> None:
    _, image, _ = source
    gone = tmp_path / "gone"
    gone.mkdir()

    class Vanishing(BytesImage):
        def read(self, offset: int, length: int) -> bytes:
            if gone.exists():
                shutil.rmtree(gone)  # VACUUM INTO can no longer create its output
            return super().read(offset, length)

    with pytest.raises(StrongroomError) as caught:
        write_database(Vanishing(image), gone / "x.db", key=DEST_KEY)
    shown = "".join(traceback.format_exception(caught.value))
    assert "unable to open" in shown
    assert DEST_KEY.hex() not in shown


def corrupt_leaf_page(image: bytes, table: str, source_conn: apsw.Connection) -> bytes:
    page_size = int.from_bytes(image[16:18], "big")
    (pageno,) = source_conn.execute(
        "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno LIMIT 1 OFFSET 3", (table,)
    ).fetchall()[0]
    start = (pageno - 1) * page_size
    # Garbage over the cell pointer array: cells now point outside the page or into each other.
    bad = bytearray(image)
    bad[start + 8 : start + 8 + 64] = b"\xfe\x77" * 32
    return bytes(bad)


@pytest.mark.parametrize("key", [None, DEST_KEY])
def test_write_database_detects_corrupt_image(
    tmp_path: Path, source: tuple[Path, bytes, dict], key: bytes | None
) -> None:
    src, image, _ = source
    conn = open_db(src, SRC_KEY)
    bad = corrupt_leaf_page(image, "people", conn)
    conn.close()
    out = tmp_path / "restore"
    out.mkdir()
    with pytest.raises(IntegrityError, match="restored database failed integrity_check"):
        write_database(BytesImage(bad), out / "broken.db", key=key, verify=True)
    assert files_in(out) == set()  # temp file removed, nothing left behind
    # Without verify only the structure is checked: a backup's chunks are authenticated and
    # hash-checked, so a corrupt page here was corrupt in the database that was backed up.
    write_database(BytesImage(bad), out / "as-backed-up.db", key=key)
    assert files_in(out) == {"as-backed-up.db"}


def test_write_database_checks_the_page_count_against_the_file(out: Path, source: tuple[Path, bytes, dict]) -> None:
    _, image, _ = source
    page_size = int.from_bytes(image[16:18], "big")
    with pytest.raises(IntegrityError, match=r"failed its structural check: .* pages of"):
        write_database(BytesImage(image + bytes(page_size)), out / "longer.db")
    assert files_in(out) == set()


def test_write_database_truncated_image(out: Path, source: tuple[Path, bytes, dict]) -> None:
    _, image, _ = source
    short = image[: len(image) // 2]
    with pytest.raises(IntegrityError):
        write_database(BytesImage(short), out / "half.db")
    assert files_in(out) == set()


# -- open_image ------------------------------------------------------------------------------------


def test_query_backup_image_read_only(out: Path, source: tuple[Path, bytes, dict]) -> None:
    _, image, content = source
    conn = open_image(BytesImage(image))
    vfs_name = conn.image_vfs.vfs_name
    assert vfs_name in apsw.vfs_names()
    integrity_check(conn)
    assert dump(conn) == content
    assert conn.execute("SELECT count(*) FROM people WHERE age >= 18").fetchall() == content["adults"]
    for stmt in (
        "INSERT INTO people(email) VALUES ('x')",
        "CREATE TABLE new(a)",
        "DELETE FROM kv",
        "PRAGMA user_version=5",
    ):
        with pytest.raises((apsw.ReadOnlyError, apsw.CantOpenError, apsw.SQLError)):
            conn.execute(stmt).fetchall()
    assert dump(conn) == content
    # Without naming another VFS, no other file can be created through the image's VFS.
    with pytest.raises(apsw.CantOpenError):
        conn.execute(f"VACUUM INTO '{out / 'copy.db'}'")
    assert files_in(out) == set()
    conn.close()
    assert vfs_name not in apsw.vfs_names()


def test_open_image_rejects_non_database_and_taken_names(source: tuple[Path, bytes, dict]) -> None:
    with pytest.raises(IntegrityError):
        open_image(BytesImage(os.urandom(8192), page_size=4096))
    with pytest.raises(UsageError):
        open_image(BytesImage(source[1]), name="unix")
    named = open_image(BytesImage(source[1]), name="my-backup")
    assert named.execute("SELECT count(*) FROM kv").fetchall() == [(len(source[2]["kv"]),)]
    named.close()
    assert "my-backup" not in apsw.vfs_names()
    assert not [n for n in apsw.vfs_names() if n.startswith("strongroom-image-")]


def test_open_image_of_live_snapshot(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    make_source(src)
    writer = open_db(src)
    writer.set_busy_timeout(5000)
    before = dump(writer)
    with Snapshot.open(src) as snap:
        writer.execute("UPDATE people SET note = 'changed'")
        writer.execute("DELETE FROM kv")
        conn = open_image(snap)  # page-aligned reads only: the VFS cache reads whole blocks
        assert dump(conn) == before
        conn.close()
    writer.close()


# -- copy_table ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dest_key", [None, DEST_KEY])
def test_copy_table(tmp_path: Path, source: tuple[Path, bytes, dict], dest_key: bytes | None) -> None:
    _, image_bytes, content = source
    image = open_image(BytesImage(image_bytes))
    dest_path = tmp_path / "dest.db"
    dest = open_db(dest_path, dest_key)
    dest.execute("CREATE TABLE audit(person INTEGER, what TEXT)")  # the trigger's target

    rows, entries = copy_table(image, "people", dest)
    n = len(content["people"])
    adults = sum(1 for r in content["people"] if r[2] >= 18)
    assert (rows, entries) == (n, n + adults)  # UNIQUE(email) autoindex + partial index
    assert dest.execute("SELECT id, email, age, note FROM people ORDER BY id").fetchall() == content["people"]
    assert dest.execute("SELECT name, seq FROM sqlite_sequence").fetchall() == content["seq"]
    names = {r[0] for r in dest.execute("SELECT name FROM sqlite_schema")}
    assert {"people", "people_adults", "people_audit", "sqlite_autoindex_people_1"} <= names
    assert dest.execute("SELECT count(*) FROM audit").fetchall() == [(0,)]  # no trigger fired while copying
    dest.execute("INSERT INTO people(email, age) VALUES ('new@example.com', 30)")
    assert dest.execute("SELECT max(id) FROM people").fetchall()[0][0] == content["seq"][0][1] + 1
    assert dest.execute("SELECT count(*) FROM audit").fetchall() == [(1,)]

    assert copy_table(image, "KV", dest) == (len(content["kv"]), len(content["kv"]) * 2)
    assert dest.execute("SELECT * FROM kv ORDER BY k").fetchall() == content["kv"]
    assert copy_table(image, "loose", dest) == (len(content["loose"]), 0)
    assert dest.execute("SELECT rowid, a, b, c FROM loose ORDER BY rowid").fetchall() == content["loose"]
    integrity_check(dest)

    with pytest.raises(AlreadyExistsError, match='relation "people" already exists'):
        copy_table(image, "people", dest)
    with pytest.raises(NotFoundError, match='table "nope" not found in backup'):
        copy_table(image, "nope", dest)
    with pytest.raises(NotFoundError):
        copy_table(image, "adults", dest)  # a view, not a table
    with pytest.raises(NotFoundError):
        copy_table(image, "sqlite_sequence", dest)
    image.close()
    dest.close()
    if dest_key is not None:
        assert MARKER.encode() not in dest_path.read_bytes()


def test_copy_table_conflicts_leave_dest_unchanged(tmp_path: Path, source: tuple[Path, bytes, dict]) -> None:
    _, image_bytes, _ = source
    image = open_image(BytesImage(image_bytes))
    dest = open_db(tmp_path / "dest.db")
    dest.execute("CREATE VIEW people AS SELECT 1")
    with pytest.raises(AlreadyExistsError, match='relation "people" already exists'):
        copy_table(image, "people", dest)
    dest.execute("CREATE TABLE other(v)")
    dest.execute("CREATE INDEX kv_v ON other(v)")  # clashes with an index of kv
    before = dest.execute("SELECT * FROM sqlite_schema").fetchall()
    with pytest.raises(AlreadyExistsError, match='relation "kv_v" already exists'):
        copy_table(image, "kv", dest)
    assert dest.execute("SELECT * FROM sqlite_schema").fetchall() == before
    image.close()
    dest.close()


def test_bytes_image() -> None:
    conn = apsw.Connection(":memory:")
    conn.execute("PRAGMA page_size=65536")
    conn.execute("CREATE TABLE t(a)")
    conn.execute("INSERT INTO t VALUES (1)")
    data = conn.serialize("main")
    img = BytesImage(data)
    assert img.page_size == 65536 and img.size == len(data)
    assert b"".join(img.iter_blocks()) == data
    assert img.read(65536, 10) == data[65536:65546]
    mounted = open_image(img)
    assert mounted.execute("SELECT a FROM t").fetchall() == [(1,)]
    mounted.close()
