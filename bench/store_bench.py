#!/usr/bin/env python3
"""The cost of encryption at rest: a Strongroom store database against plain SQLite, side by side.

    python bench/store_bench.py [--rows 400000] [--rekey-gib 1.0] [--work DIR] [--json PATH]

The same workload runs on a plain SQLite file and on a store database (SQLite3 Multiple Ciphers,
AEGIS, raw 256-bit data key), both in WAL mode with the same pragmas, on the same disk:

- bulk insert: ``--rows`` rows in 10,000-row transactions (the bench.py row shape, ~300 bytes);
- point reads: 100,000 random primary-key lookups;
- range scans: 1,000 scans of 500 consecutive rows;
- index lookups: 20,000 equality lookups through a secondary index;
- updates: 500 transactions of 20 random single-row updates;
- full scan: 5 passes of ``SELECT count(*), sum(length(payload))``.

Then the store's own costs: opening a store (one KMS decrypt per region; local key file KMS), and
re-keying a ``--rekey-gib`` database online (``Store.rotate_data_keys``). Each workload step is the
best of ``--repeat`` runs in a fresh process-warm state (the OS page cache is warm for both).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import apsw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from strongroom import init_store, open_store  # noqa: E402

SEED = 20261124
MB = 1_000_000
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]
SCHEMA = (
    "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, sku TEXT, qty INTEGER, price REAL, "
    "created TEXT, note TEXT, payload BLOB)",
    "CREATE INDEX orders_customer ON orders(customer)",
)
#: The same on both sides; SQLite's defaults otherwise (2 MiB page cache, synchronous=FULL in WAL).
PRAGMAS = ("PRAGMA journal_mode=WAL",)


def row(rng: random.Random, i: int) -> tuple[object, ...]:
    note = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 22)))
    payload = rng.randbytes(rng.randrange(80, 240)) + (b"rec%08d" % i) * rng.randrange(8, 24)
    return (i, f"customer-{rng.randrange(50_000)}", f"sku-{rng.randrange(5000)}", rng.randrange(1, 9),
            rng.random() * 100, f"2026-11-{1 + i % 28:02d}T{i % 86400:05d}", note, payload)  # fmt: skip


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def workload(conn: apsw.Connection, rows: int) -> dict[str, float]:
    """Run every step once on ``conn`` (an empty database); seconds per step."""
    for stmt in (*PRAGMAS, *SCHEMA):
        conn.execute(stmt).fetchall()
    rng = random.Random(SEED)
    out: dict[str, float] = {}

    def insert() -> None:
        for start in range(0, rows, 10_000):
            with conn:
                conn.executemany(
                    "INSERT INTO orders VALUES (?,?,?,?,?,?,?,?)",
                    [row(rng, i) for i in range(start, min(rows, start + 10_000))],
                )

    out["bulk insert"] = timed(insert)
    keys = [rng.randrange(rows) for _ in range(100_000)]

    def point() -> None:
        for k in keys:
            conn.execute("SELECT customer, payload FROM orders WHERE id=?", (k,)).fetchall()

    out["point reads"] = timed(point)
    starts = [rng.randrange(rows - 500) for _ in range(1000)]

    def ranges() -> None:
        for s in starts:
            sql = "SELECT sum(qty), sum(length(note)) FROM orders WHERE id BETWEEN ? AND ?"
            conn.execute(sql, (s, s + 499)).fetchall()

    out["range scans"] = timed(ranges)
    customers = [f"customer-{rng.randrange(50_000)}" for _ in range(20_000)]

    def index() -> None:
        for c in customers:
            conn.execute("SELECT count(*) FROM orders WHERE customer=?", (c,)).fetchall()

    out["index lookups"] = timed(index)
    updates = [[rng.randrange(rows) for _ in range(20)] for _ in range(500)]

    def update() -> None:
        for batch in updates:
            with conn:
                conn.executemany("UPDATE orders SET qty = qty + 1 WHERE id=?", [(k,) for k in batch])

    out["updates"] = timed(update)

    def scan() -> None:
        for _ in range(5):
            conn.execute("SELECT count(*), sum(length(payload)) FROM orders").fetchall()

    out["full scan"] = timed(scan)
    return out


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run_workloads(work: Path, rows: int, repeat: int) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    plain: dict[str, list[float]] = {}
    enc: dict[str, list[float]] = {}
    size = 0
    for n in range(repeat):
        path = work / "plain.sqlite"
        remove_db(path)
        conn = apsw.Connection(str(path))
        for k, v in workload(conn, rows).items():
            plain.setdefault(k, []).append(v)
        conn.close()
        size = path.stat().st_size
        store_dir = work / f"store-{n}"
        shutil.rmtree(store_dir, ignore_errors=True)
        store = init_store(store_dir)
        store.create_database("bench")
        conn = store.connect("bench")
        for k, v in workload(conn, rows).items():
            enc.setdefault(k, []).append(v)
        conn.close()
        store.close()
        shutil.rmtree(store_dir)
    remove_db(work / "plain.sqlite")
    return plain, enc, size


def open_times(work: Path, regions: int, n: int = 20) -> float:
    store_dir = work / f"open-{regions}"
    shutil.rmtree(store_dir, ignore_errors=True)
    init_store(store_dir, regions=[f"region-{i}" for i in range(regions)]).close()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        open_store(store_dir).close()
        times.append(time.perf_counter() - t)
    shutil.rmtree(store_dir)
    return statistics.median(times)


def rekey_time(work: Path, gib: float) -> tuple[float, int]:
    store_dir = work / "rekey"
    shutil.rmtree(store_dir, ignore_errors=True)
    store = init_store(store_dir)
    store.create_database("big")
    conn = store.connect("big")
    for stmt in (*PRAGMAS, *SCHEMA):
        conn.execute(stmt).fetchall()
    rng = random.Random(SEED)
    target, i = int(gib * (1 << 30)), 0
    path = store.database_path("big")
    while path.stat().st_size < target:
        with conn:
            conn.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?)", [row(rng, i + j) for j in range(20_000)])
        i += 20_000
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    size = path.stat().st_size
    seconds = timed(lambda: store.rotate_data_keys())
    store.close()
    shutil.rmtree(store_dir)
    return seconds, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rekey-gib", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.work))
    os.environ.setdefault("STRONGROOM_KEYRING", str(work / "keyring"))
    try:
        plain, enc, size = run_workloads(work, args.rows, args.repeat)
        print(f"workload: {args.rows:,} rows, {size / MB:.0f} MB database, best of {args.repeat}")
        print(f"{'step':<16}{'plain SQLite':>14}{'store (AEGIS)':>15}{'ratio':>8}")
        results: dict[str, object] = {"rows": args.rows, "db_bytes": size, "steps": {}}
        for step in plain:
            p, e = min(plain[step]), min(enc[step])
            print(f"{step:<16}{p:>13.3f}s{e:>14.3f}s{e / p:>7.2f}x")
            results["steps"][step] = {"plain_s": p, "store_s": e, "ratio": e / p}  # type: ignore[index]
        for regions in (1, 3):
            t = open_times(work, regions)
            print(f"open a store with {regions} region(s): {t * 1000:.1f} ms (median of 20)")
            results[f"open_{regions}_regions_s"] = t
        if args.rekey_gib > 0:
            seconds, rsize = rekey_time(work, args.rekey_gib)
            rate = rsize / MB / seconds
            print(f"re-key {rsize / MB:.0f} MB online (rotate_data_keys): {seconds:.2f} s ({rate:.0f} MB/s)")
            results["rekey"] = {"bytes": rsize, "seconds": seconds}
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
