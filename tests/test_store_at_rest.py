"""Encryption at rest: no plaintext of a store database reaches the disk, and apps never hold a key.

The search is real: every file under the store is read byte for byte while connections are open
(WAL files not checkpointed) and while temp-heavy queries run (their temp files are found through
the process's open file descriptors, which is the only place SQLite's unlinked temp files live).
Each search runs once against the same workload on plain SQLite first, to prove it finds the marker
when it is there.
"""

from __future__ import annotations

import base64
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
import pytest
from conftest import MARKER, fill_bank, table_rows

from strongroom import Store, init_store
from strongroom.errors import EncryptionError
from strongroom.sqlite.connect import connect

NEEDLE = MARKER.encode()
DATABASES = ("bank", "ledger", "archive")
AEGIS_RESERVE = 64  # bytes reserved per page by sqlite3mc's AEGIS-256 (nonce and tag); chacha20 reserves 32


def files_holding(root: Path, needle: bytes = NEEDLE) -> list[str]:
    """Every file under ``root`` (recursively, hidden ones too) whose bytes contain ``needle``."""
    found = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if needle in path.read_bytes():
                found.append(str(path.relative_to(root)))
    return sorted(found)


class TempFileWatch:
    """Reads, while queries run, every unlinked file the process holds open that was not open before
    (SQLite unlinks its temp files at once, so their descriptors are the only way to see them)."""

    def __init__(self) -> None:
        self.before = {target for _fd, target in self._unlinked()}  # pytest's capture files and the like
        self.seen: set[str] = set()
        self.holding_needle: set[str] = set()

    @staticmethod
    def _unlinked() -> Iterator[tuple[str, str]]:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # closed since listdir
            if target.endswith("(deleted)"):
                yield fd, target

    def scan(self) -> int:
        for fd, target in self._unlinked():
            if target in self.before:
                continue
            self.seen.add(target)
            try:
                with open(f"/proc/self/fd/{fd}", "rb") as f:
                    if NEEDLE in f.read():
                        self.holding_needle.add(target)
            except OSError:
                continue
        return 0  # 0: let the statement go on

    @contextmanager
    def watching(self, conn: apsw.Connection) -> Iterator[None]:
        conn.set_progress_handler(self.scan, 50_000)
        try:
            yield
        finally:
            conn.set_progress_handler(None)


def temp_heavy_queries(conn: apsw.Connection) -> None:
    """Sorts and temp tables many times the page cache, so SQLite would spill them to temp files."""
    conn.execute("PRAGMA cache_size=-256; PRAGMA temp.cache_size=-256").fetchall()  # 256 KiB caches
    # 20 copies of every account with a filler, sorted on unindexed expressions: ~10 MB through the sorter.
    big = (
        "WITH RECURSIVE copies(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM copies WHERE n < 20)"
        " SELECT a.owner || '/' || copies.n AS tag, printf('%0300d', a.balance) || a.owner AS payload"
        " FROM accounts a, copies"
    )
    sorted_rows = sum(1 for _row in conn.execute(f"{big} ORDER BY payload DESC, tag"))
    assert sorted_rows >= 20 * 3000
    conn.execute(f"CREATE TEMP TABLE tags AS {big} ORDER BY tag").fetchall()
    conn.execute("CREATE INDEX temp.tags_payload ON tags(payload)").fetchall()
    assert conn.execute("SELECT count(DISTINCT tag) FROM temp.tags").fetchall() == [(sorted_rows,)]
    conn.execute("DROP TABLE temp.tags").fetchall()


def write_more(conn: apsw.Connection, first: int) -> None:
    """Commit rows with the marker that stay in the WAL (no checkpoint while the connection is open)."""
    with conn:
        conn.executemany(
            "INSERT INTO accounts(owner, balance, note) VALUES (?, ?, ?)",
            [(f"{MARKER}-wal-{i}", i, NEEDLE * 3) for i in range(first, first + 500)],
        )


def test_the_search_finds_plaintext_in_plain_sqlite(tmp_path: Path) -> None:
    """The control: the same workload on plain SQLite leaves the marker in the file, its WAL and temp files."""
    plain = tmp_path / "plain"
    plain.mkdir()
    conn = apsw.Connection(str(plain / "bank.db"))
    conn.execute("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA temp_store=FILE").fetchall()
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER, note BLOB)")
    with conn:
        conn.executemany(
            "INSERT INTO accounts(owner, balance, note) VALUES (?, ?, ?)",
            [(f"{MARKER}-{i}", i, os.urandom(200)) for i in range(3000)],
        )
    write_more(conn, 0)
    watch = TempFileWatch()
    with watch.watching(conn):
        temp_heavy_queries(conn)
    assert watch.holding_needle, "plain SQLite spilled no temp file holding the marker: the watch proves nothing"
    assert files_holding(plain) == ["bank.db-wal"]  # nothing was checkpointed into bank.db yet
    conn.close()
    assert files_holding(plain) == ["bank.db"]


def test_no_plaintext_on_disk_with_wal_files_and_temp_heavy_queries(tmp_path: Path) -> None:
    store = init_store(tmp_path / "store", regions=("east", "west"))
    for i, name in enumerate(DATABASES):
        fill_bank(store, name, seed=i)
    store.execute('CREATE DATABASE eu PRIMARY REGION "west"')
    conns = {name: store.connect(name) for name in (*DATABASES, "eu")}
    conns["eu"].execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER, note BLOB)")
    watch = TempFileWatch()
    for i, (name, conn) in enumerate(conns.items()):
        conn.execute("PRAGMA wal_autocheckpoint=0").fetchall()  # keep every new commit in the WAL
        write_more(conn, i * 1000)
        with watch.watching(conn):
            if name != "eu":
                temp_heavy_queries(conn)
    for name in conns:
        wal = store.database_path(name).with_name(f"{name}.db-wal")
        assert wal.stat().st_size > 500 * 3 * len(NEEDLE), f"{name}: the new rows are not in its WAL"
    assert watch.seen == set()  # no temp file at all: temp tables and sorts stay in memory
    assert files_holding(store.path) == []
    for conn in conns.values():
        conn.close()
    assert files_holding(store.path) == []
    assert len(table_rows(store, "bank", "accounts")) == 3500  # and the data is all there


def test_apps_use_connect_and_never_see_a_key(tmp_path: Path) -> None:
    store = init_store(tmp_path / "store", regions=("east", "west"))
    fill_bank(store, "bank", accounts=50)
    conn = store.connect("bank")
    assert conn.execute("SELECT count(*) FROM accounts").fetchall() == [(50,)]
    conn.close()
    secrets: list[bytes] = [p.read_bytes() for p in Path(os.environ["STRONGROOM_KEYRING"]).glob("*.key")]
    shown = [repr(store), str(store)]
    for region in store.regions:
        keys = store.region_keys(region)
        secrets += [keys._store_key, *(k.key for k in keys.registry.data_keys.values())]
        shown += [repr(keys), str(keys), repr(keys.registry), repr(keys.spec)]
    assert len(secrets) == 5  # the local key file, and per region a store key and a data key
    for text in shown:
        for secret in secrets:
            for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]):
                assert form not in text, f"a key is shown in {text[:60]!r}"


def test_a_database_file_opens_only_with_its_own_data_key(tmp_path: Path) -> None:
    store = init_store(tmp_path / "store", regions=("east", "west"))
    fill_bank(store, "bank", accounts=50)
    store.execute('CREATE DATABASE other PRIMARY REGION "west"')  # another region, so another data key
    path = store.database_path("bank")
    with pytest.raises(EncryptionError) as exc:
        connect(path)
    assert str(exc.value) == f'cannot open database "{path}": not a SQLite database, or encrypted and no key was given'
    with pytest.raises(EncryptionError) as exc:
        connect(path, key=store.database_key("other"))
    assert str(exc.value) == (
        f'cannot open database "{path}": wrong key or cipher, or not an encrypted SQLite database'
    )
    with pytest.raises(sqlite3.DatabaseError) as plain:
        sqlite3.connect(path).execute("SELECT * FROM accounts")
    assert str(plain.value) == "file is not a database"
    connect(path, key=store.database_key("bank"), readonly=True).close()  # its own key opens it


def test_the_cipher_is_aegis(store: Store) -> None:
    fill_bank(store, "bank", accounts=50)
    path = store.database_path("bank")
    header = path.read_bytes()[:100]
    # sqlite3mc leaves header bytes 16-23 readable: page size, file format (2 = WAL), reserve per page.
    assert int.from_bytes(header[16:18], "big") == 4096 and header[18:20] == b"\x02\x02"
    assert header[20] == AEGIS_RESERVE
    assert header[:16] != b"SQLite format 3\x00"  # the rest of the header is encrypted
    key = store.database_key("bank")
    with pytest.raises(EncryptionError, match="wrong key or cipher"):
        connect(path, key=key, cipher="chacha20", readonly=True)
    conn = connect(path, key=key, readonly=True)  # a raw sqlite3mc connection (store ones refuse the pragma)
    assert conn.execute("PRAGMA cipher").fetchall() == [("aegis",)]
    conn.close()
