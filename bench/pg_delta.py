"""A quick look at PostgreSQL incrementals: stored bytes and wall times, not a test.

Starts a throwaway PostgreSQL 15 (as tests/pg_server.py does), fills one table of about ``--mb`` MB
of COPY stream, takes a full backup, then ``--incrementals`` incrementals that each change 1% of the
rows (``scattered``: every 100th id, other ids each time; ``range``: a range of ids plus appended
rows), and restores the last. Prints each incremental's stored bytes against the full's and the wall
times. It measures the checkout ``PYTHONPATH`` names, so two checkouts compare before and after:

    PYTHONPATH=. python bench/pg_delta.py --mb 100 --change scattered,range --incrementals 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg
from pg_server import PgServer, pg_server

from strongroom.backup import engine
from strongroom.backup.keys import Encryption
from strongroom.backup.requests import ShowBackupRequest
from strongroom.postgres import backup_database, restore_database

ROW_BYTES = 85  # a row of the table below in a binary COPY stream


def _sql(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.encode())


def run(server: PgServer, name: str, mb: int, change: str, incrementals: int, work: Path) -> None:
    rows = mb * 1_000_000 // ROW_BYTES
    _sql(server.dsn(), f"CREATE DATABASE {name}")
    db = server.dsn(name)
    _sql(db, "CREATE TABLE events (id int PRIMARY KEY, kind text NOT NULL, payload text NOT NULL)")
    _sql(
        db,
        "INSERT INTO events SELECT g, 'k' || (g % 13), md5(g::text) || md5((g * 7)::text) "
        f"FROM generate_series(1, {rows}) g",
    )
    coll = str(work / f"{name}-coll")
    enc = Encryption(passphrase="bench")
    t = time.perf_counter()
    backup_database(server.dsn(), name, coll, encryption=enc)
    print(f"{change}: full backup in {time.perf_counter() - t:5.1f} s", flush=True)
    for k in range(1, incrementals + 1):
        if change == "scattered":  # other rows each time: every chunk changes in every incremental
            _sql(db, f"UPDATE events SET payload = 'changed-{k}-' || id WHERE id % 100 = {k - 1}")
        else:
            first = 50001 + k * rows // 50
            _sql(db, f"UPDATE events SET payload = 'changed-' || id WHERE id BETWEEN {first} AND {first + rows // 200}")
            new_ids = f"generate_series({rows * (1 + k) + 1}, {rows * (1 + k) + rows // 200})"
            _sql(db, f"INSERT INTO events SELECT g, 'new', md5(g::text) FROM {new_ids} g")
        t = time.perf_counter()
        backup_database(server.dsn(), name, coll, encryption=enc, incremental=True)
        inc_s = time.perf_counter() - t
        manifests = engine.show_backup(ShowBackupRequest(in_=(coll,), subdir="LATEST", encryption=enc)).manifests
        full, inc = manifests[0].databases[0], manifests[-1].databases[0]
        print(
            f"{change}: {full.bytes / 1e6:.1f} MB stream, full stored {full.stored_bytes / 1e6:.2f} MB;"
            f" incremental {k} stored {inc.stored_bytes / 1e6:.3f} MB ({inc.stored_bytes / full.stored_bytes:.2%})"
            f" in {inc_s:5.1f} s",
            flush=True,
        )
    t = time.perf_counter()
    restore_database(server.dsn(), coll, new_db_name=f"{name}_r", encryption=enc)
    print(f"{change}: restore of incremental {incrementals} in {time.perf_counter() - t:5.1f} s", flush=True)
    for d in (name, f"{name}_r"):
        _sql(server.dsn(), f"DROP DATABASE IF EXISTS {d} WITH (FORCE)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--change", default="scattered,range")
    ap.add_argument("--incrementals", type=int, default=1, help="incrementals in a row, each changing other rows")
    args = ap.parse_args()
    fixture = pg_server.__wrapped__()  # type: ignore[attr-defined]  # the session fixture's generator
    server = next(fixture)
    try:
        with tempfile.TemporaryDirectory(prefix="pg-delta-bench-") as work:
            for i, change in enumerate(args.change.split(",")):
                run(server, f"bench{i}", args.mb, change, args.incrementals, Path(work))
    finally:
        fixture.close()


if __name__ == "__main__":
    main()
