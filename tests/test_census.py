"""The page census (sqlite/census.py) counts what dbstat counts, on any set of pages."""

from __future__ import annotations

import os
import random
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sqlite_snapshot import make_stats_db

from strongroom.errors import IntegrityError
from strongroom.sqlite import Snapshot
from strongroom.sqlite.census import count_trees
from strongroom.sqlite.snapshot import compute_stats


def dbstat_trees(conn: apsw.Connection, pages: set[int] | None = None) -> dict[str, tuple[int, int, int]]:
    """dbstat's own per-b-tree figures (cells on leaves, cells, payload), on ``pages`` or all."""
    out: dict[str, list[int]] = {}
    for name, pageno, pagetype, ncell, payload in conn.execute(
        "SELECT name, pageno, pagetype, ncell, payload FROM dbstat WHERE name <> 'sqlite_schema'"
    ):
        if pages is not None and pageno not in pages:
            continue
        row = out.setdefault(str(name).lower(), [0, 0, 0])
        row[0] += ncell if pagetype == "leaf" else 0
        row[1] += ncell
        row[2] += payload
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def roots_of(conn: apsw.Connection) -> dict[str, int]:
    return {
        str(name).lower(): int(root)
        for name, root in conn.execute(
            "SELECT name, rootpage FROM sqlite_schema WHERE type IN ('table', 'index') AND rootpage > 0"
        )
    }


def overflowing(conn: apsw.Connection) -> set[str]:
    return {str(n).lower() for (n,) in conn.execute("SELECT DISTINCT name FROM dbstat WHERE pagetype = 'overflow'")}


@pytest.mark.parametrize("journal", ["DELETE", "WAL"])
def test_census_of_every_page_is_dbstat(tmp_path: Path, journal: str) -> None:
    db = tmp_path / "stats.db"
    conn = make_stats_db(db, journal)  # overflowing blobs, WITHOUT ROWID, partial and UNIQUE indexes
    assert overflowing(conn) == {"blobs"}
    with Snapshot.open(db) as snap:
        assert snap.census(None) == snap.stats()
        trees = count_trees(snap.page, roots_of(conn), snap.page_count, None)
    expected = dbstat_trees(conn)
    assert {k: v for k, v in trees.items() if v != (0, 0, 0)} == {k: v for k, v in expected.items() if v != (0, 0, 0)}
    conn.close()


def test_census_of_some_pages_is_dbstat_on_those_pages(tmp_path: Path) -> None:
    db = tmp_path / "stats.db"
    conn = make_stats_db(db)
    with Snapshot.open(db) as snap:
        rng = random.Random(7)
        for _ in range(20):
            pages = {p for p in range(1, snap.page_count + 1) if rng.random() < 0.3}
            trees = count_trees(snap.page, roots_of(conn), snap.page_count, pages)
            expected = dbstat_trees(conn, pages)
            for name, (leaf, cells, payload) in trees.items():
                want = expected.get(name, (0, 0, 0))
                assert (leaf, cells) == want[:2], name
                if name != "blobs":  # dbstat counts an overflowing record on its overflow pages
                    assert payload == want[2], name
        assert count_trees(snap.page, roots_of(conn), snap.page_count, set()) == dict.fromkeys(
            roots_of(conn), (0, 0, 0)
        )
    conn.close()


ROW = st.tuples(
    st.integers(min_value=-(2**62), max_value=2**62),
    st.one_of(st.none(), st.text(max_size=40), st.binary(min_size=0, max_size=9000)),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(ROW, min_size=0, max_size=400),
    page_size=st.sampled_from([512, 1024, 4096, 65536]),
    delete_every=st.integers(min_value=0, max_value=5),
)
def test_census_matches_dbstat_for_any_content(
    tmp_path: Path, rows: list[tuple[int, object]], page_size: int, delete_every: int
) -> None:
    db = tmp_path / f"h{os.getpid()}-{random.getrandbits(32)}.db"
    conn = apsw.Connection(str(db))
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("CREATE TABLE t(k INTEGER, v); CREATE INDEX t_k ON t(k); CREATE INDEX t_v ON t(v)")
    conn.execute("CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, ?)", rows)
        conn.executemany("INSERT OR REPLACE INTO w VALUES (?, ?)", [(str(k), v) for k, v in rows])
        if delete_every:
            conn.execute("DELETE FROM t WHERE rowid % ? = 0", (delete_every + 1,))
    try:
        with Snapshot.open(db) as snap:
            assert snap.census(None) == compute_stats(conn)
    finally:
        conn.close()
        db.unlink()


def test_a_damaged_tree_is_an_integrity_error(tmp_path: Path) -> None:
    db = tmp_path / "stats.db"
    make_stats_db(db).close()
    with Snapshot.open(db) as snap:
        roots = {"people": 0}
        page_size = snap.page_size
        good = snap.page

        def zeroed(pgno: int) -> bytes:  # every page reads as zeros: type 0 is no b-tree page
            return bytes(page_size) if pgno > 1 else good(pgno)

        with pytest.raises(IntegrityError, match="outside the database"):
            count_trees(snap.page, roots, snap.page_count, None)
        with pytest.raises(IntegrityError, match="corrupt"):
            count_trees(zeroed, {"people": 2}, snap.page_count, None)

        def loop(pgno: int) -> bytes:  # an interior page whose children are itself
            page = bytearray(page_size)
            page[0], page[3:5], page[8:12] = 5, (1).to_bytes(2, "big"), pgno.to_bytes(4, "big")
            page[12:14] = (100).to_bytes(2, "big")
            page[100:104] = pgno.to_bytes(4, "big")
            return bytes(page)

        with pytest.raises(IntegrityError, match="levels deep"):
            count_trees(loop, {"t": 2}, snap.page_count, None)


# -- an incremental chain carries the database's totals ----------------------------------------------


def _figures(path: Path) -> tuple[int, int, int]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        stats = compute_stats(conn)
    finally:
        conn.close()
    return stats.rows, stats.index_entries, stats.bytes


def test_incremental_totals_follow_every_kind_of_change(tmp_path: Path) -> None:
    """Inserts, updates, deletes, overflowing records, a new table, a dropped index, a VACUUM: after each
    incremental, RESTORE reports exactly what dbstat counts in the source and in the restored file
    (the manifest's carried totals: nothing is counted at restore)."""
    from strongroom import Encryption, backup_file, restore_file

    db = tmp_path / "app.db"
    conn = make_stats_db(db, "WAL")
    coll = str(tmp_path / "coll")
    enc = Encryption(passphrase="correct horse battery")
    series = "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < {}) "
    steps = [
        series.format(300) + "INSERT INTO people(email, age, note) SELECT 'x' || value, value % 70, 'new' FROM n",
        "UPDATE people SET note = printf('%.*c', 80, 'u') WHERE id % 7 = 0",
        "DELETE FROM kv WHERE k LIKE 'key-0001%'",
        series.format(20) + "INSERT INTO blobs(data) SELECT randomblob(7000) FROM n",
        "CREATE TABLE extra(a INTEGER PRIMARY KEY, b TEXT)",
        series.format(500) + "INSERT INTO extra SELECT value, 'b' FROM n",
        "DROP INDEX people_note",
        "VACUUM",
    ]
    backup_file(db, coll, encryption=enc)
    expected = [_figures(db)]
    for sql in steps:
        conn.execute(sql)
        if len(expected) % 2:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # half the changes still in the WAL
        result = backup_file(db, coll, encryption=enc, incremental="LATEST")
        expected.append(_figures(db))
        out = tmp_path / f"restored-{len(expected)}.db"
        restored = restore_file(coll, out, encryption=enc)
        assert (restored.rows, restored.index_entries, restored.bytes) == expected[-1] == _figures(out), sql
        assert result.rows <= expected[-1][0]  # an incremental's own rows: what its changed pages hold
    conn.close()
