"""A quick timing of a PostgreSQL full backup and a whole-database restore (issue 15, parts 2 and 4).

Starts a throwaway PostgreSQL 15 (as tests/pg_server.py does), builds a multi-table database of a
few hundred MB once per run, then times ``backup_database`` and ``restore_database`` (best of
``--repeat``), and with ``--profile`` prints where the client's time goes (cProfile, cumulative).
Also times the bare COPY (server + libpq + psycopg, rows thrown away) as the floor of the reads.

    PYTHONPATH=. python bench/pg_bench.py --mb 300 --workers 1,2 --profile

Not a unit test: figures depend on the machine (the server runs on the same cores as the client).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_server import BIN, PASSWORD, PgServer, _as_postgres, _free_port, wait_until

from strongroom.backup.keys import Encryption
from strongroom.postgres import backup_database, restore_database


@contextmanager
def server() -> Iterator[PgServer]:
    root = Path(tempfile.mkdtemp(prefix="strongroom-pgbench-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    datadir, sockdir, pwfile = root / "data", root / "sock", root / "pwfile"
    _as_postgres(["mkdir", str(sockdir)])
    _as_postgres(["sh", "-c", f"umask 077 && printf '%s' '{PASSWORD}' > {pwfile}"])
    _as_postgres([str(BIN / "initdb"), "-D", str(datadir), "-U", "postgres", "--pwfile", str(pwfile), "-A", "md5"])
    port = _free_port()
    srv = PgServer("127.0.0.1", port, datadir)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockdir} -c fsync=off -c max_wal_size=4GB"
    _as_postgres([str(BIN / "pg_ctl"), "-D", str(datadir), "-o", opts, "-l", str(root / "log"), "-w", "start"])
    try:
        wait_until(srv.ready, 60, "PostgreSQL")
        yield srv
    finally:
        runas = ["runuser", "-u", "postgres", "--"] * (os.geteuid() == 0)
        stop = [*runas, str(BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"]
        os.system(" ".join(stop) + " >/dev/null")
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _running(dsn: str) -> Iterator[PgServer]:
    rest = dsn.split("@", 1)[1].split("/", 1)[0]
    host, port = rest.rsplit(":", 1)
    yield PgServer(host, int(port), Path())


def build(srv: PgServer, mb: int) -> None:
    """Six tables of unequal sizes (one large, two medium, three small), ~``mb`` MB of COPY data."""
    n = mb * 1_000_000 // 200  # rows of ~200 bytes in binary COPY, split across the tables
    with psycopg.connect(srv.dsn(), autocommit=True) as c:
        c.execute("CREATE DATABASE bench")
    with psycopg.connect(srv.dsn("bench"), autocommit=True) as c:
        c.execute(
            "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE);"
            "CREATE TABLE events (id bigint PRIMARY KEY, customer int REFERENCES customers, kind text,"
            " payload text, at timestamptz);"
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer int REFERENCES customers, amount numeric(12,2),"
            " note text);"
            "CREATE TABLE lines (order_id bigint, line int, sku text, qty int, PRIMARY KEY (order_id, line));"
            "CREATE TABLE audit (id bigserial PRIMARY KEY, what text);"
            "CREATE TABLE tags (id int PRIMARY KEY, tag text);"
        )
        cust = max(1000, n // 50)
        c.execute(f"INSERT INTO customers SELECT g, 'c' || g, 'c' || g || '@x.test' FROM generate_series(1, {cust}) g")
        c.execute(
            "INSERT INTO events SELECT g, 1 + g %% %s, 'k' || (g %% 17), md5(g::text) || md5((g*3)::text) || "
            "md5((g*7)::text), now() - g * interval '1 second' FROM generate_series(1, %s) g",
            (cust, n // 2),
        )
        c.execute(
            "INSERT INTO orders SELECT g, 1 + g %% %s, g / 3.0, 'order ' || md5(g::text) FROM generate_series(1, %s) g",
            (cust, n // 4),
        )
        c.execute(
            "INSERT INTO lines SELECT g / 4, g %% 4, 'sku-' || (g %% 9973), g %% 7 FROM generate_series(1, %s) g",
            (n // 4,),
        )
        c.execute("INSERT INTO audit (what) SELECT md5(g::text) FROM generate_series(1, %s) g", (n // 40,))
        c.execute("INSERT INTO tags SELECT g, 't' || g FROM generate_series(1, 5000) g")
        c.execute("CREATE INDEX events_by_customer ON events(customer)")
        c.execute("CREATE INDEX orders_by_customer ON orders(customer)")
        c.execute("VACUUM ANALYZE")
        size = c.execute("SELECT pg_size_pretty(pg_database_size('bench'))").fetchone()
    print(f"built database bench: {size[0] if size else '?'}", flush=True)


def bare_copy(srv: PgServer) -> float:
    """Every table's binary COPY ordered by its key, on one connection, bytes thrown away."""
    t = time.perf_counter()
    with psycopg.connect(srv.dsn("bench"), autocommit=True) as c:
        for name, key in (
            ("customers", "id"),
            ("events", "id"),
            ("orders", "id"),
            ("lines", "order_id, line"),
            ("audit", "id"),
            ("tags", "id"),
        ):
            with c.cursor().copy(f"COPY (SELECT * FROM {name} ORDER BY {key}) TO STDOUT (FORMAT binary)") as cp:
                for _ in cp:
                    pass
    return time.perf_counter() - t


def server_cpu(srv: PgServer) -> float:
    """CPU seconds of the whole cluster so far: the postmaster's own and its reaped children's
    (every backend that has exited, so measure after the run's connections closed)."""
    with psycopg.connect(srv.dsn(), autocommit=True) as c:
        row = c.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    ppid = Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1]
    fields = Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


CPU: dict[str, float] = {}


def timed(fn: Callable[[], object], profile: bool, srv: PgServer | None = None) -> tuple[float, str]:
    prof = cProfile.Profile() if profile else None
    before = os.times()
    server_before = server_cpu(srv) if srv else 0.0
    t = time.perf_counter()
    if prof:
        prof.enable()
    fn()
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - t
    after = os.times()
    CPU["client"] = after.user + after.system - before.user - before.system
    CPU["children"] = after.children_user + after.children_system - before.children_user - before.children_system
    CPU["server"] = server_cpu(srv) - server_before if srv else 0.0
    text = ""
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
        text = out.getvalue()
    return elapsed, text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--workers", default="1,2", help="COPY workers to try (ignored by code without them)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--serve", action="store_true", help="start the server, build, print its DSN and wait")
    ap.add_argument("--dsn", help="use this running server (from --serve) instead of starting one")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so a killed --serve still stops its server
    from strongroom.postgres import source, target

    has_workers = hasattr(source, "WORKERS")
    enc = Encryption(passphrase="bench-pass")
    work = Path(tempfile.mkdtemp(prefix="strongroom-pgbench-coll-"))
    with server() if args.dsn is None else _running(args.dsn) as srv:
        if args.dsn is None:
            t = time.perf_counter()
            build(srv, args.mb)
            print(f"build {time.perf_counter() - t:.1f}s", flush=True)
        if args.serve:
            print(srv.dsn(), flush=True)
            while True:
                time.sleep(60)
        if args.repeat:
            print(f"bare COPY of every table (1 connection): {min(bare_copy(srv) for _ in range(args.repeat)):.2f}s")
        for w in [int(x) for x in args.workers.split(",")] if has_workers else [None]:
            label = f"workers={w}" if w is not None else "sequential (no workers argument)"
            if w is not None:  # the COPY workers of a backup and of a restore (module defaults)
                source.WORKERS = target.WORKERS = w
            best_b = best_r = float("inf")
            cpu_b: dict[str, float] = {}
            cpu_r: dict[str, float] = {}
            prof_b = prof_r = ""
            for i in range(args.repeat + args.profile):
                profiling = args.profile and i == args.repeat  # one more run, under cProfile, not timed
                coll = str(work / f"coll-{w}-{i}")
                restored = f"bench_r_{w}_{i}".replace("None", "s")
                tb, pb = timed(partial(backup_database, srv.dsn(), "bench", coll, encryption=enc), profiling, srv)
                cb = dict(CPU)
                restore = partial(restore_database, srv.dsn(), coll, new_db_name=restored, encryption=enc)
                tr, pr = timed(restore, profiling, srv)
                cr = dict(CPU)
                with psycopg.connect(srv.dsn(), autocommit=True) as c:
                    c.execute(f"DROP DATABASE {restored}")
                shutil.rmtree(coll)
                if profiling:
                    prof_b, prof_r = pb, pr
                    continue
                if tb < best_b:
                    best_b, cpu_b = tb, cb
                if tr < best_r:
                    best_r, cpu_r = tr, cr
            if args.repeat:
                print(f"{label}: full backup {best_b:.2f}s, restore {best_r:.2f}s", flush=True)
            for what, cpu in (("backup", cpu_b), ("restore", cpu_r)) if args.repeat else ():
                print(
                    f"    {what} CPU: client {cpu['client']:.2f}s, pg_dump/pg_restore {cpu['children']:.2f}s, "
                    f"server {cpu['server']:.2f}s",
                    flush=True,
                )
            if args.profile:
                print(f"--- backup profile ({label}; the caller's thread only) ---\n{prof_b}")
                print(f"--- restore profile ({label}; the caller's thread only) ---\n{prof_r}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
