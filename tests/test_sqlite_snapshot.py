"""Snapshot: consistent page images of live databases (real files, real concurrent writers)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time
from pathlib import Path

import apsw
import pytest

from strongroom.errors import EncryptionError, NotFoundError
from strongroom.sqlite import Snapshot, integrity_check
from strongroom.sqlite.snapshot import compute_stats

KEY = bytes(range(32))
SEED_VERSIONS = 1500


# -- a deterministic workload: the content after version k is a pure function of k ----------------


def payload(k: int) -> bytes:
    # Every 50th row overflows a 4 KiB page.
    n = 5000 if k % 50 == 0 else 40 + (k * 37) % 400
    return (k.to_bytes(8, "big") * (n // 8 + 1))[:n]


def apply_version(conn: apsw.Connection, k: int) -> None:
    conn.execute("INSERT INTO t(id, val, payload) VALUES (?, ?, ?)", (k, k, payload(k)))
    conn.execute("UPDATE t SET val = val + ? WHERE id = ?", (k, k // 2))
    if k % 7 == 0:
        conn.execute("DELETE FROM t WHERE id = ?", (k - 50,))
    conn.execute("UPDATE state SET version = ? WHERE id = 1", (k,))


def expected_rows(version: int) -> list[tuple[int, int, bytes]]:
    rows: dict[int, list[int]] = {}
    for k in range(1, version + 1):
        rows[k] = [k]
        if k // 2 in rows:
            rows[k // 2][0] += k
        if k % 7 == 0:
            rows.pop(k - 50, None)
    return [(i, v[0], payload(i)) for i, v in sorted(rows.items())]


def open_db(path: str | Path, key: bytes | None) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(30_000)
    if key is not None:
        conn.execute("PRAGMA cipher='aegis'").fetchall()
        conn.execute(f"PRAGMA key=\"x'{key.hex()}'\"").fetchall()
    return conn


def make_workload_db(path: Path, key: bytes | None, versions: int = SEED_VERSIONS) -> None:
    conn = open_db(path, key)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, val INTEGER, payload BLOB)")
    conn.execute("CREATE INDEX t_val ON t(val)")
    conn.execute("CREATE TABLE state(id INTEGER PRIMARY KEY, version INTEGER)")
    conn.execute("INSERT INTO state VALUES (1, 0)")
    with conn:
        for k in range(1, versions + 1):
            apply_version(conn, k)
    conn.close()


def commit_versions(conn: apsw.Connection, count: int) -> int:
    k = 0
    for _ in range(count):
        conn.execute("BEGIN IMMEDIATE")
        k = conn.execute("SELECT version FROM state").fetchall()[0][0] + 1
        apply_version(conn, k)
        conn.execute("COMMIT")
    return k


def writer_loop(path: str, key_hex: str | None, stop, last, autocheckpoint: int, mine) -> None:  # type: ignore[no-untyped-def]
    """Commit versions until told to stop; ``last`` tracks the newest committed version."""
    conn = open_db(path, bytes.fromhex(key_hex) if key_hex else None)
    conn.execute("PRAGMA synchronous=OFF").fetchall()
    conn.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}").fetchall()
    deadline = time.monotonic() + 60  # never outlive a crashed test run
    parent = os.getppid()
    while not stop.is_set() and time.monotonic() < deadline and os.getppid() == parent:
        k = commit_versions(conn, 1)
        with last.get_lock():
            last.value = max(last.value, k)
        with mine.get_lock():
            mine.value += 1
    conn.close()


def checkpointer_loop(path: str, key: bytes | None, stop) -> None:  # type: ignore[no-untyped-def]
    conn = open_db(path, key)
    conn.set_busy_timeout(5)  # RESTART/TRUNCATE would otherwise wait for our snapshot's reader
    i = 0
    while not stop.is_set():
        mode = "TRUNCATE" if i % 10 == 9 else "PASSIVE"
        conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        i += 1
        time.sleep(0.001)
    conn.close()


def read_image(path: Path) -> tuple[int, list[tuple[int, int, bytes]]]:
    conn = apsw.Connection(str(path))
    integrity_check(conn)
    version = conn.execute("SELECT version FROM state").fetchall()[0][0]
    rows = [(i, v, bytes(p)) for i, v, p in conn.execute("SELECT id, val, payload FROM t ORDER BY id")]
    conn.close()
    return version, rows


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "writers made no progress"
        time.sleep(0.001)


# -- consistency under concurrent writers -----------------------------------------------------------


class Writers:
    """A writer thread, a writer process and optionally a checkpointer thread on one database."""

    def __init__(self, db: Path, key: bytes | None, autocheckpoint: int, checkpointer: bool) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.last = ctx.Value("q", 0)  # newest committed version, by either writer
        self.by_process = ctx.Value("q", 0)  # commits per writer
        self.by_thread = ctx.Value("q", 0)
        key_hex = key.hex() if key else None
        self.process = ctx.Process(
            target=writer_loop,
            args=(str(db), key_hex, self.stop, self.last, autocheckpoint, self.by_process),
            daemon=True,
        )
        self.threads = [
            threading.Thread(
                target=writer_loop, args=(str(db), key_hex, self.stop, self.last, autocheckpoint, self.by_thread)
            )
        ]
        if checkpointer:
            self.threads.append(threading.Thread(target=checkpointer_loop, args=(str(db), key, self.stop)))

    def __enter__(self) -> Writers:
        self.process.start()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        self.process.join(30)
        assert self.process.exitcode == 0

    def counts(self) -> tuple[int, int]:
        return self.by_process.value, self.by_thread.value

    def wait_both(self) -> None:
        """Wait until both the process and the thread have committed again."""
        p, t = self.counts()
        wait_for(lambda: self.by_process.value > p and self.by_thread.value > t)


@pytest.mark.parametrize(
    ("mode", "encrypted"),
    [("wal_only", False), ("checkpointing", False), ("backfilled", False), ("checkpointing", True)],
)
def test_snapshot_consistent_while_thread_and_process_write(tmp_path: Path, mode: str, encrypted: bool) -> None:
    key = KEY if encrypted else None
    db = tmp_path / "live.db"
    make_workload_db(db, key)
    # `holder` stays open: closing the last connection would checkpoint and delete the WAL.
    holder = open_db(db, key)
    holder.execute("PRAGMA wal_autocheckpoint=0").fetchall()
    writers = Writers(db, key, autocheckpoint=0 if mode == "wal_only" else 20, checkpointer=mode != "wal_only")
    snap = None
    image = tmp_path / "image.db"
    if mode == "backfilled":
        # Every frame copied into the db file before the snapshot: the reader then takes no WAL read
        # mark, so the writers restart the WAL (overwriting its frames) while the snapshot is open.
        commit_versions(holder, 30)
        busy, wal_frames, backfilled = holder.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        assert busy == 0 and wal_frames == backfilled > 0
        wal_header = (tmp_path / "live.db-wal").read_bytes()[:32]
        v_before = holder.execute("SELECT version FROM state").fetchall()[0][0]
        snap = Snapshot.open(db, key=key)
        assert snap.wal_frames == 0
    try:
        with writers:
            if snap is None:
                wait_for(lambda: writers.last.value > SEED_VERSIONS + 50)
                v_before = writers.last.value
                snap = Snapshot.open(db, key=key)
            v_open = holder.execute("SELECT version FROM state").fetchall()[0][0]
            assert snap.encrypted is encrypted
            if mode == "wal_only":
                # Same pages rewritten by many commits: more frames than pages in the snapshot.
                assert snap.wal_frames > snap.page_count
            during = writers.counts()
            with open(image, "wb") as f:
                for i, block in enumerate(snap.iter_blocks(snap.page_size * 4)):
                    f.write(block)
                    if i % 8 == 0:  # both writers keep committing during the whole iteration
                        writers.wait_both()
            stats = snap.stats()
            after = writers.counts()
            v_end = writers.last.value
    finally:
        if snap is not None:
            snap.close()
    assert after[0] > during[0] and after[1] > during[1] and v_end > v_open + 5
    if mode == "backfilled":
        # The WAL was restarted (new salts) over the frames that existed at snapshot time.
        assert (tmp_path / "live.db-wal").read_bytes()[:32] != wal_header

    version, rows = read_image(image)
    assert v_before <= version <= v_open
    assert rows == expected_rows(version)
    assert image.stat().st_size == snap.size
    by_name = {o.name: o for o in stats.objects}
    assert by_name["t"].rows == len(rows)
    assert by_name["t"].index_entries == len(rows)
    assert by_name["state"].rows == 1
    # The live database went on: later commits are not in the image.
    assert holder.execute("SELECT version FROM state").fetchall()[0][0] > version
    holder.close()


def test_encrypted_snapshot_yields_plaintext_pages(tmp_path: Path) -> None:
    db = tmp_path / "enc.db"
    conn = open_db(db, KEY)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA wal_autocheckpoint=0").fetchall()
    conn.execute("CREATE TABLE s(id INTEGER PRIMARY KEY, note TEXT)")
    with conn:
        conn.executemany("INSERT INTO s(note) VALUES (?)", [(f"MARKER-PLAIN-{i}",) for i in range(3000)])
    conn.execute("UPDATE s SET note = note || '-updated' WHERE id % 10 = 0")  # frames in the WAL
    # (Reading the -wal is harmless; opening the db file itself here would drop conn's POSIX locks.)
    assert b"MARKER-PLAIN" not in (tmp_path / "enc.db-wal").read_bytes()

    with Snapshot.open(db, key=KEY) as snap:
        assert snap.encrypted and snap.wal_frames > 0
        assert snap.read(0, snap.page_size).startswith(b"SQLite format 3\0")
        data = b"".join(snap.iter_blocks(snap.page_size * 16))
        assert data[: snap.page_size * 3] == snap.read(0, snap.page_size * 3)
    assert b"MARKER-PLAIN-2999" in data
    image = tmp_path / "plain.db"
    image.write_bytes(data)
    plain = apsw.Connection(str(image))  # no key: the image is plaintext
    integrity_check(plain)
    got = plain.execute("SELECT id, note FROM s ORDER BY id").fetchall()
    assert got == conn.execute("SELECT id, note FROM s ORDER BY id").fetchall()
    assert got[9] == (10, "MARKER-PLAIN-9-updated")
    plain.close()
    conn.close()
    raw = db.read_bytes()
    assert b"MARKER-PLAIN" not in raw and not raw.startswith(b"SQLite format 3\0")


def test_wrong_or_missing_key(tmp_path: Path) -> None:
    db = tmp_path / "enc.db"
    conn = open_db(db, KEY)
    conn.execute("CREATE TABLE x(a)")
    conn.close()
    with pytest.raises(EncryptionError):
        Snapshot.open(db, key=bytes(32))
    with pytest.raises(EncryptionError):
        Snapshot.open(db)
    with pytest.raises(NotFoundError):
        Snapshot.open(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


# -- WAL shapes -----------------------------------------------------------------------------------


def dump(conn: apsw.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT id, val, payload FROM t ORDER BY id").fetchall()


def image_rows(snap: Snapshot, path: Path) -> list[tuple[object, ...]]:
    path.write_bytes(b"".join(snap.iter_blocks()))
    conn = apsw.Connection(str(path))
    integrity_check(conn)
    rows = dump(conn)
    conn.close()
    return rows


def test_stale_wal_generation_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    make_workload_db(db, None, versions=200)
    conn = open_db(db, None)
    conn.execute("PRAGMA wal_autocheckpoint=0").fetchall()
    commit_versions(conn, 150)  # a long WAL
    wal_size = (tmp_path / "w.db-wal").stat().st_size
    assert conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()[0][0] == 0
    commit_versions(conn, 2)  # restarts the WAL: two short commits, then frames of the old generation
    assert (tmp_path / "w.db-wal").stat().st_size == wal_size
    with Snapshot.open(db) as snap:
        assert 0 < snap.wal_frames < 20
        assert image_rows(snap, tmp_path / "img.db") == dump(conn) == expected_rows(352)
    conn.close()


def test_no_wal_file_and_empty_wal(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    make_workload_db(db, None, versions=100)  # closed cleanly: -wal removed
    assert not (tmp_path / "w.db-wal").exists()
    with Snapshot.open(db) as snap:
        assert snap.journal_mode == "wal" and snap.wal_frames == 0
        assert image_rows(snap, tmp_path / "img.db") == expected_rows(100)


def test_hot_wal_without_shm_is_recovered(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    make_workload_db(src, None, versions=100)
    conn = open_db(src, None)
    conn.execute("PRAGMA wal_autocheckpoint=0").fetchall()
    commit_versions(conn, 40)
    # A crashed writer's files: db + WAL, no -shm. (Copying closes a descriptor of src.db, which drops
    # this process's POSIX locks on it; harmless here as nothing else uses src.db.)
    shutil.copy(src, tmp_path / "crash.db")
    shutil.copy(tmp_path / "src.db-wal", tmp_path / "crash.db-wal")
    conn.close()
    with Snapshot.open(tmp_path / "crash.db") as snap:
        assert snap.wal_frames > 0
        assert image_rows(snap, tmp_path / "img.db") == expected_rows(140)


def test_rollback_journal_and_empty_databases(tmp_path: Path) -> None:
    db = tmp_path / "rj.db"
    conn = open_db(db, None)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, val INTEGER, payload BLOB)")
    conn.execute("CREATE TABLE state(id INTEGER PRIMARY KEY, version INTEGER)")
    conn.execute("INSERT INTO state VALUES (1, 0)")
    with conn:
        for k in range(1, 301):
            apply_version(conn, k)
    with Snapshot.open(db) as snap:
        assert snap.journal_mode == "delete" and snap.wal_frames == 0
        # Writers wait while the snapshot's read transaction holds the SHARED lock.
        conn.set_busy_timeout(50)
        with pytest.raises(apsw.BusyError):
            commit_versions(conn, 1)  # COMMIT cannot get the EXCLUSIVE lock
        conn.execute("ROLLBACK")
        assert image_rows(snap, tmp_path / "img.db") == expected_rows(300)
    conn.set_busy_timeout(5000)
    commit_versions(conn, 1)
    conn.close()

    empty = tmp_path / "empty.db"
    apsw.Connection(str(empty)).close()  # a zero-byte database
    with Snapshot.open(empty) as snap:
        assert snap.page_count == 0 and snap.size == 0
        assert list(snap.iter_blocks()) == []
        assert snap.stats().objects == [] and snap.schema() == []

    blank = tmp_path / "blank.db"
    conn = open_db(blank, KEY)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.close()
    with Snapshot.open(blank, key=KEY) as snap:
        assert snap.page_count == 1
        page = snap.read(0, snap.page_size)
        assert page.startswith(b"SQLite format 3\0")
        assert snap.stats().rows == 0


def test_read_argument_checks(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    make_workload_db(db, None, versions=50)
    with Snapshot.open(db) as snap:
        with pytest.raises(ValueError):
            snap.read(1, snap.page_size)
        with pytest.raises(ValueError):
            snap.read(0, snap.size + snap.page_size)
        with pytest.raises(ValueError):
            list(snap.iter_blocks(snap.page_size + 1))
        assert snap.read(snap.page_size, 0) == b""


# -- stats ---------------------------------------------------------------------------------------


STATS_SCHEMA = """
CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB);
CREATE TABLE people(id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT UNIQUE, age INTEGER, note TEXT);
CREATE INDEX people_adults ON people(age) WHERE age >= 18;
CREATE INDEX people_note ON people(note);
CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT, tag TEXT UNIQUE) WITHOUT ROWID;
CREATE INDEX kv_v ON kv(v);
CREATE TABLE nopk(a, b);
CREATE VIEW adults AS SELECT * FROM people WHERE age >= 18;
"""
BLOB_LEN = 5000
N_BLOBS = 40


def make_stats_db(path: Path, journal: str = "DELETE") -> apsw.Connection:
    conn = open_db(path, None)
    conn.execute(f"PRAGMA journal_mode={journal}").fetchall()
    for stmt in STATS_SCHEMA.strip().split(";\n"):
        conn.execute(stmt)
    with conn:
        conn.executemany("INSERT INTO blobs(data) VALUES (?)", [(bytes([i]) * BLOB_LEN,) for i in range(N_BLOBS)])
        conn.executemany(
            "INSERT INTO people(email, age, note) VALUES (?, ?, ?)",
            [(f"p{i}@example.com" if i % 13 else None, i % 60, "n" * (i % 90)) for i in range(4000)],
        )
        conn.executemany(
            "INSERT INTO kv VALUES (?, ?, ?)",
            [(f"key-{i:06d}-" + "k" * 60, f"value {i}" * 3, f"tag{i}" if i % 3 else None) for i in range(3000)],
        )
        conn.executemany("INSERT INTO nopk VALUES (?, ?)", [(i, str(i)) for i in range(500)])
    conn.execute("DELETE FROM people WHERE id % 17 = 0")
    return conn


def count(conn: apsw.Connection, sql: str) -> int:
    return int(conn.execute(sql).fetchall()[0][0])


@pytest.mark.parametrize("journal", ["DELETE", "WAL"])
def test_stats_exact(tmp_path: Path, journal: str) -> None:
    db = tmp_path / "stats.db"
    conn = make_stats_db(db, journal)
    n_people = count(conn, "SELECT count(*) FROM people")
    n_adults = count(conn, "SELECT count(*) FROM people WHERE age >= 18")
    n_kv = count(conn, "SELECT count(*) FROM kv")
    with Snapshot.open(db) as snap:
        stats = snap.stats()
        schema = snap.schema()
    by_name = {o.name: o for o in stats.objects}
    assert [o.name for o in stats.objects] == ["blobs", "people", "kv", "nopk", "adults"]  # no sqlite_sequence
    assert (by_name["blobs"].rows, by_name["blobs"].index_entries) == (N_BLOBS, 0)
    # record = header (size byte, NULL for the rowid alias, 2-byte blob type) + the blob
    assert by_name["blobs"].bytes == N_BLOBS * (4 + BLOB_LEN)
    # UNIQUE autoindex (NULL emails included), partial index, plain index
    assert by_name["people"].rows == n_people
    assert by_name["people"].index_entries == n_people + n_adults + n_people
    # WITHOUT ROWID: the primary-key b-tree holds the rows; UNIQUE(tag) and kv_v are indexes
    assert by_name["kv"].rows == n_kv
    assert by_name["kv"].index_entries == 2 * n_kv
    assert (by_name["nopk"].rows, by_name["nopk"].index_entries) == (500, 0)
    adults = by_name["adults"]
    assert (adults.type, adults.rows, adults.index_entries, adults.bytes) == ("view", 0, 0, 0)
    assert adults.sql is not None and adults.sql.startswith("CREATE VIEW")
    assert stats.rows == N_BLOBS + n_people + n_kv + 500
    assert stats.index_entries == sum(o.index_entries for o in stats.objects)
    # bytes per object = dbstat's own per-b-tree aggregation over the table and its indexes
    agg = dict(conn.execute("SELECT name, payload FROM dbstat WHERE aggregate = TRUE").fetchall())
    assert by_name["people"].bytes == sum(
        agg[n] for n in ("people", "sqlite_autoindex_people_1", "people_adults", "people_note")
    )
    assert by_name["kv"].bytes == sum(agg[n] for n in ("kv", "sqlite_autoindex_kv_2", "kv_v"))
    assert stats.bytes == sum(o.bytes for o in stats.objects)
    assert {e.name for e in schema} >= {"people", "sqlite_autoindex_people_1", "people_adults", "adults"}
    conn.close()


def test_stats_include_page(tmp_path: Path) -> None:
    db = tmp_path / "stats.db"
    conn = make_stats_db(db)
    pages: dict[str, set[int]] = {}
    for name, pageno in conn.execute("SELECT name, pageno FROM dbstat"):
        pages.setdefault(name, set()).add(pageno)
    people_pages = pages["people"]
    with Snapshot.open(db) as snap:
        full = snap.stats()
        # chunks are 0-based: with one page per chunk, chunk i is page i + 1
        assert snap.stats(set(range(snap.page_count))) == full
        assert snap.stats(set(range(-(-snap.page_count // 4))), pages_per_chunk=4) == full
        none = snap.stats(set())
        only_people = snap.stats({p - 1 for p in people_pages})
        first_four = snap.stats({0}, pages_per_chunk=4)
        leaf_pages = {
            p
            for name, p, kind in conn.execute("SELECT name, pageno, pagetype FROM dbstat WHERE name = 'people'")
            if kind == "leaf"
        }
        half = set(sorted(leaf_pages)[::2])
        half_stats = snap.stats({p - 1 for p in half})
    assert (none.rows, none.index_entries, none.bytes) == (0, 0, 0)
    in_first_four = count(
        conn, "SELECT coalesce(sum(payload), 0) FROM dbstat WHERE pageno <= 4 AND name <> 'sqlite_schema'"
    )
    assert first_four.bytes == in_first_four
    assert len(none.objects) == len(full.objects)
    by_name = {o.name: o for o in only_people.objects}
    assert by_name["people"].rows == count(conn, "SELECT count(*) FROM people")
    assert by_name["people"].index_entries == 0
    assert by_name["kv"].rows == 0 and by_name["blobs"].bytes == 0
    in_half = ",".join(map(str, half))
    expected_half = count(
        conn, f"SELECT sum(ncell) FROM dbstat WHERE name = 'people' AND pagetype = 'leaf' AND pageno IN ({in_half})"
    )
    assert half_stats.rows == expected_half < by_name["people"].rows
    conn.close()


def test_stats_same_snapshot_as_image(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    make_workload_db(db, None, versions=300)
    writer = open_db(db, None)
    with Snapshot.open(db) as snap:
        commit_versions(writer, 50)  # after the snapshot: invisible to both image and stats
        stats = snap.stats()
        image = tmp_path / "img.db"
        image.write_bytes(b"".join(snap.iter_blocks()))
    img = apsw.Connection(str(image))
    assert compute_stats(img) == stats
    assert stats.rows == len(expected_rows(300)) + 1
    img.close()
    writer.close()


def test_snapshot_closed(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    make_workload_db(db, None, versions=10)
    snap = Snapshot.open(db)
    snap.close()
    snap.close()
    with pytest.raises(Exception, match="closed"):
        snap.read(0, snap.page_size)
    assert os.path.exists(db)


def test_64k_pages_and_python_shm_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The wal-index stores a 65536-byte page size as 1; without `head` the -shm header is read by a
    # child Python instead (never by this process: see snapshot._read_prefix_elsewhere).
    monkeypatch.setattr("strongroom.sqlite.snapshot.shutil.which", lambda name: None)
    db = tmp_path / "big-pages.db"
    conn = open_db(db, None)
    conn.execute("PRAGMA page_size=65536")
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA wal_autocheckpoint=0").fetchall()
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, val INTEGER, payload BLOB)")
    conn.execute("CREATE TABLE state(id INTEGER PRIMARY KEY, version INTEGER)")
    conn.execute("INSERT INTO state VALUES (1, 0)")
    commit_versions(conn, 120)
    with Snapshot.open(db) as snap:
        assert snap.page_size == 65536 and snap.wal_frames > 0
        assert image_rows(snap, tmp_path / "img.db") == expected_rows(120)
    conn.close()
