"""The PostgreSQL scenario of bench/bench.py (``--scenario postgres``): strongroom vs pg_dump vs pgBackRest.

One PostgreSQL 15 cluster (Debian's postgresql-15) holds database ``bench`` (~``--size-gib`` GiB: customers,
orders, order items; primary keys, secondary indexes, foreign keys), built once in SQL and copied for each run.
Every tool backs up that same running server in turn (full), then one deterministic change of 1% of the orders,
then the incrementals (strongroom, pgBackRest; pg_dump has none), then each tool restores: strongroom and
pg_restore into a second, empty server, pgBackRest into a new data directory. The machine's own limits (the
server's COPY read rate, that stream through zstd, that stream written and fsynced) are measured in the same run.
See bench/README.md.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench import (
    FIRST,
    GIB,
    LAST,
    MB,
    STRONGROOM,
    WORDS,
    Goal,
    Step,
    StepFailed,
    at_most,
    output_of,
    run_child,
    synced,
    tree_bytes,
)

BIN = Path("/usr/lib/postgresql/15/bin")
PG_TOOLS = ("strongroom", "pg_dump", "pgbackrest")
PG_PASSWORD = "bench-pg"  # the superuser's password (loopback only)
STRONGROOM_PASSPHRASE = "bench"
PGBACKREST_CIPHER_PASS = "bench-cipher-pass"
DB = "bench"  # the database that is backed up
SR_RESTORED, DUMP_RESTORED = "sr_restored", "dump_restored"  # the restored copies, on the target server
STANZA = "bench"
TABLES = ("customers", "orders", "order_items")
HEAP_SHARE = 0.82  # stop loading rows at this share of the goal size: the indexes built afterwards add the rest
BATCH = 200_000  # at most this many orders per INSERT ... SELECT while building
ORDER_BYTES = 650  # about what an order takes with its items, before indexes (sizes a small build's batches)
NOTES = 10_000  # distinct note texts (picked by a hash of the order id)
# The running servers: WAL archiving for pgBackRest (archive_command set per run), no autovacuum (a vacuum
# starting in the middle of a step would make it noisy, and would change pages pgBackRest then copies again).
SERVER_SETTINGS = {
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "autovacuum": "off",
    "listen_addresses": "127.0.0.1",
}
# The build only: no WAL for the tables created and filled in the same transaction, no fsyncs.
BUILD_SETTINGS = {**SERVER_SETTINGS, "wal_level": "minimal", "max_wal_senders": "0", "fsync": "off"}


# ---------------------------------------------------------------------------------------------- servers


def as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses root, and pgBackRest must read the data directory: run those as the postgres OS user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def chown_postgres(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A PostgreSQL 15 cluster in ``root``/data, owned by the postgres OS user, on a loopback port."""

    root: Path
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def env(self) -> dict[str, str]:
        """libpq's environment for psql, pg_dump and pg_restore run by the benchmark (as root, over TCP)."""
        return {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": "postgres", "PGPASSWORD": PG_PASSWORD}

    def initdb(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        chown_postgres(self.root)
        pwfile = self.root / "pwfile"
        pwfile.write_text(PG_PASSWORD)
        pwfile.chmod(0o644)
        # local (socket) connections trusted for the postgres OS user: pgBackRest connects that way
        cmd = [str(BIN / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--pwfile", str(pwfile)]
        subprocess.run(
            as_postgres([*cmd, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        pwfile.unlink()

    def start(self) -> None:
        self.port = self.port or free_port()
        chown_postgres(self.sockdir)
        opts = [f"-p {self.port}", f"-k {self.sockdir}"] + [f"-c {k}={v}" for k, v in self.settings.items()]
        cmd = [str(BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.root / "server.log"), "-w", "-t", "120"]
        subprocess.run(as_postgres([*cmd, "-o", " ".join(opts), "start"]), check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        cmd = [str(BIN / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
        subprocess.run(as_postgres(cmd), check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @contextmanager
    def running(self) -> Iterator[Server]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def connect(self, dbname: str = DB) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(dbname), autocommit=True)


def scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None, sql
    return row[0]


# ---------------------------------------------------------------------------------------------- the database

SCHEMA = """
CREATE TABLE notes(k int PRIMARY KEY, note text NOT NULL);
CREATE TABLE customers(id bigint NOT NULL, name text NOT NULL, email text NOT NULL, region text NOT NULL,
                       created timestamptz NOT NULL);
CREATE TABLE orders(id bigint NOT NULL, customer_id bigint NOT NULL, sku text NOT NULL, qty int NOT NULL,
                    price numeric(10,2) NOT NULL, created timestamptz NOT NULL, status text NOT NULL,
                    note text NOT NULL, payload bytea NOT NULL);
CREATE TABLE order_items(order_id bigint NOT NULL, line int NOT NULL, sku text NOT NULL, qty int NOT NULL,
                         price numeric(10,2) NOT NULL);
"""
# After the rows (faster than maintaining them row by row), then frozen, so that no later read sets hint bits
# and dirties pages (which pgBackRest, copying changed files, would then see as changed).
CONSTRAINTS = """
ALTER TABLE customers ADD PRIMARY KEY (id);
ALTER TABLE orders ADD PRIMARY KEY (id);
ALTER TABLE order_items ADD PRIMARY KEY (order_id, line);
CREATE INDEX orders_customer ON orders(customer_id);
CREATE INDEX orders_created ON orders(created);
CREATE INDEX customers_email ON customers(email);
ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers(id);
ALTER TABLE order_items ADD FOREIGN KEY (order_id) REFERENCES orders(id);
DROP TABLE notes;
"""


def h(expr: str, salt: int) -> str:
    """A deterministic non-negative 63-bit hash of ``expr`` (the fixed seed of the build: no random())."""
    return f"(hashint8extended(({expr})::bigint, {salt}) & 9223372036854775807)"


def sql_array(words: list[str]) -> str:
    return "ARRAY[" + ",".join(f"'{w}'" for w in words) + "]"


def notes_sql() -> str:
    words = sql_array(WORDS)
    pick = f"({words})[1 + {h('k * 100 + j', 11)} % {len(WORDS)}]"
    return (
        f"INSERT INTO notes SELECT k, array_to_string(ARRAY(SELECT {pick} "
        f"FROM generate_series(1, 6 + k % 17) j), ' ') FROM generate_series(0, {NOTES - 1}) k"
    )


def orders_sql(lo: int, hi: int, customers: int = 1 << 62) -> str:
    """Orders ``lo``..``hi`` (ids increase with time; customers among those that existed by then), ~500 bytes each:
    a payload of ~half hash bytes (incompressible, like images or ciphertext) and ~half a repeated record.
    ``customers``: how many exist (the change appends orders, not customers)."""
    n = f"(80 + {h('g', 8)} % 160)::int"
    record = "'{sku:' || sku || ',qty:' || (g % 7) || ',status:ok};'"
    rand = "sha512(int8send(g)) || sha512(int8send(-g)) || sha512(int8send(g) || '\\x00'::bytea)"
    return f"""
INSERT INTO orders
SELECT g, 1 + {h("g", 1)} % least(1 + g / 20, {customers}), sku, 1 + {h("g", 3)} % 50,
       (100 + {h("g", 4)} % 49900) / 100.0,
       timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => g * 20 + {h("g", 5)} % 20),
       (ARRAY['new','paid','shipped','delivered','returned'])[1 + {h("g", 6)} % 5], n.note,
       substring({rand} from 1 for {n}) || substring(convert_to(repeat({record}, 12), 'UTF8') from 1 for {n})
FROM generate_series({lo}, {hi}) g
CROSS JOIN LATERAL (SELECT 'SKU-' || lpad(({h("g", 2)} % 20000)::text, 5, '0') AS sku) s
JOIN notes n ON n.k = {h("g", 7)} % {NOTES};
INSERT INTO order_items
SELECT g, l, 'SKU-' || lpad(({h("g * 8 + l", 9)} % 20000)::text, 5, '0'), 1 + {h("g * 8 + l", 10)} % 10,
       (100 + {h("g * 8 + l", 12)} % 49900) / 100.0
FROM generate_series({lo}, {hi}) g CROSS JOIN LATERAL generate_series(1, (1 + {h("g", 13)} % 4)::int) l;
"""


def customers_sql(count: int) -> str:
    first, last = sql_array(FIRST), sql_array(LAST)
    return f"""
INSERT INTO customers
SELECT c, ({first})[1 + {h("c", 21)} % {len(FIRST)}] || ' ' || ({last})[1 + {h("c", 22)} % {len(LAST)}]
          || ' #' || c, 'customer' || c || '@example.com',
       (ARRAY['north','south','east','west'])[1 + {h("c", 23)} % 4],
       timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => c * 400)
FROM generate_series(1, {count}) c
"""


def build(base: Server, size_bytes: int) -> dict[str, Any]:
    """initdb, then database ``bench`` in SQL: one transaction loading batches of orders (WAL skipped:
    wal_level=minimal, tables created in the same transaction) until the heap is HEAP_SHARE of the goal, then
    customers, keys, indexes, foreign keys, VACUUM (FREEZE, ANALYZE), a clean shutdown."""
    start = time.perf_counter()
    base.initdb()
    base.settings = BUILD_SETTINGS
    with base.running():
        with closing(base.connect("postgres")) as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        with closing(base.connect()) as conn:
            conn.autocommit = False
            conn.execute(SCHEMA)
            conn.execute(notes_sql())
            top, batch = 0, max(5_000, min(BATCH, int(HEAP_SHARE * size_bytes / ORDER_BYTES / 5)))
            while True:
                conn.execute(orders_sql(top + 1, top + batch))
                top += batch
                size = scalar(conn, "SELECT pg_database_size(current_database())")
                print(f"  {top:,} orders, {size / MB:,.0f} MB, {time.perf_counter() - start:.0f} s", flush=True)
                if size >= HEAP_SHARE * size_bytes:
                    break
            conn.execute(customers_sql(1 + top // 20))
            conn.commit()
            conn.autocommit = True
            print(f"  keys, indexes, foreign keys ... {time.perf_counter() - start:.0f} s", flush=True)
            conn.execute("SET maintenance_work_mem = '512MB'")
            conn.execute(CONSTRAINTS)
            conn.execute("VACUUM (FREEZE, ANALYZE)")
            conn.execute("CHECKPOINT")
            info = db_facts(conn)
    os.sync()
    info["build_seconds"] = round(time.perf_counter() - start, 1)
    return info


def db_facts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What a restore must give back: row counts, sum(qty), and the database's size."""
    facts: dict[str, Any] = {t: scalar(conn, f"SELECT count(*) FROM {t}") for t in TABLES}
    facts["orders_sum_qty"] = int(scalar(conn, "SELECT coalesce(sum(qty), 0) FROM orders"))
    facts["items_sum_qty"] = int(scalar(conn, "SELECT coalesce(sum(qty), 0) FROM order_items"))
    facts["bytes"] = int(scalar(conn, "SELECT pg_database_size(current_database())"))
    return facts


def same_rows(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in (*TABLES, "orders_sum_qty", "items_sum_qty"))


def base_cluster(work: Path, size_gib: float, skip_build: bool) -> tuple[Server, dict[str, Any]]:
    """The base cluster of this size (``work/pg-base-<N>GiB``), built once; ``--skip-build`` reuses a complete one."""
    base = Server(work / f"pg-base-{size_gib:g}GiB")
    marker = work / f"pg-base-{size_gib:g}GiB.json"
    if skip_build and marker.exists() and (base.datadir / "PG_VERSION").exists():
        info = json.loads(marker.read_text())
        print(f"reusing {base.root} ({info['orders']:,} orders, {info['bytes'] / MB:,.0f} MB)")
        return base, info
    marker.unlink(missing_ok=True)
    print(f"building {base.root} (>= {size_gib:g} GiB) ...", flush=True)
    info = build(base, int(size_gib * GIB))
    marker.write_text(json.dumps(info))
    print(f"built {info['orders']:,} orders, {info['bytes'] / MB:,.0f} MB in {info['build_seconds']} s")
    return base, info


# ---------------------------------------------------------------------------------------------- the change


def change_sql(count: int, scattered: bool) -> tuple[str, int]:
    """Update ``count`` orders (and their items) and append a quarter as many new ones: the newest ids (a range:
    the hot end of an OLTP table), or with ``--scattered`` every hundredth id, all over the table."""
    appended = max(1, count // 4)
    if scattered:
        where, items_where = "id % 100 = 0", "order_id % 100 = 0"
    else:
        where = f"id > (SELECT max(id) FROM orders) - {count}"
        items_where = f"order_id > (SELECT max(id) FROM orders) - {count}"
    sql = f"""
UPDATE order_items SET qty = qty + 1 WHERE {items_where};
UPDATE orders SET qty = qty + 1, status = 'amended', note = note || ' amended by support' WHERE {where};
CREATE TEMP TABLE notes AS SELECT k, 'appended order ' || k AS note FROM generate_series(0, {NOTES - 1}) k;
"""
    return sql, appended


def apply_change(server: Server, count: int, scattered: bool) -> int:
    sql, appended = change_sql(count, scattered)
    with closing(server.connect()) as conn:
        top = int(scalar(conn, "SELECT max(id) FROM orders"))
        customers = int(scalar(conn, "SELECT count(*) FROM customers"))
        with conn.transaction():
            conn.execute(sql)
            conn.execute(orders_sql(top + 1, top + appended, customers))  # its JOIN finds the temporary notes first
        conn.execute("DROP TABLE pg_temp.notes")
    return appended


def wait_archived(server: Server, timeout: float = 300) -> None:
    """Switch to a new WAL segment and wait until the archiver has pushed every finished one (so pgBackRest's
    archive-push of the change does not run during the next tool's step)."""
    with closing(server.connect("postgres")) as conn:
        want = scalar(conn, "SELECT pg_walfile_name(pg_switch_wal())")  # the segment the switch finished
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver").fetchone()
            assert row is not None
            if row[0] is not None and row[0] >= want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"WAL archiving did not catch up (last archived {row[0]}, failed {row[1]})")
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------------- limits

#: name -> (the step it bounds, label, shell command); {copy} runs each table's binary COPY in turn to stdout.
PG_LIMITS: dict[str, tuple[str, str, str]] = {
    "read": ("incremental", "COPY > /dev/null", "{copy} > /dev/null"),
    "read-ordered": ("", "COPY ORDER BY pk > /dev/null", "{ordered} > /dev/null"),
    "zstd": ("full", "COPY | zstd -1 + fsync", "{copy} | zstd -1 -T0 -q > {out} && sync {out}"),
    "write": ("", "COPY > file + fsync", "{copy} > {out} && sync {out}"),
}
PRIMARY_KEYS = {"customers": "id", "orders": "id", "order_items": "order_id, line"}


def copy_all(ordered: bool) -> str:
    def one(table: str) -> str:
        source = f"(SELECT * FROM {table} ORDER BY {PRIMARY_KEYS[table]})" if ordered else table
        return f"psql -X -q -d {DB} -c {shlex.quote(f'COPY {source} TO STDOUT (FORMAT binary)')}"

    return "{ " + "; ".join(one(t) for t in TABLES) + "; }"


def measure_limits(server: Server, scratch: Path) -> dict[str, Step]:
    out = scratch / "limit.out"
    steps: dict[str, Step] = {}
    for name, (_, label, template) in PG_LIMITS.items():
        print(f"  limit {label} ...", end=" ", flush=True)
        cmd = template.format(copy=copy_all(False), ordered=copy_all(True), out=shlex.quote(str(out)))
        step = synced(run_child(["sh", "-c", cmd], env=server.env(), log=scratch / "logs" / f"limit-{name}.log"))
        step.name = name
        if name == "write":
            step.db_bytes = out.stat().st_size  # the COPY stream's size: what a logical backup reads
        out.unlink(missing_ok=True)
        print(f"{step.durable_seconds:.2f} s durable, {step.peak_rss_bytes / MB:.0f} MB RSS")
        steps[name] = step
    for step in steps.values():
        step.db_bytes = steps["write"].db_bytes
    return steps


# ---------------------------------------------------------------------------------------------- the tools


class PgTool:
    """One tool; each call runs one measured child process."""

    name: str

    def __init__(self, root: Path, source: Server, target: Server) -> None:
        self.root, self.source, self.target = root, source, target
        self.repo = root / "repo"
        self.logs = root / "logs"

    def run(self, step: str, cmd: list[str], env: dict[str, str] | None = None) -> Step:
        return run_child(cmd, env=env, log=self.logs / f"{step}.log")

    def version(self) -> str:
        raise NotImplementedError

    def init(self) -> Step | None:
        return None

    def full(self) -> Step:
        raise NotImplementedError

    def incremental(self) -> Step | None:
        return None

    def restore(self) -> Step:
        raise NotImplementedError

    def restored_facts(self) -> dict[str, Any]:
        """Row counts of what ``restore`` gave back."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Drop what the restore made (the next run starts clean)."""

    def repo_size(self) -> int:
        return tree_bytes(self.repo)


class StrongroomPg(PgTool):
    """``strongroom backup C --postgres DSN --database bench``; restore under a new name on the target server."""

    name = "strongroom"

    def passphrase_file(self) -> Path:
        path = self.root / "passphrase"
        if not path.exists():
            path.write_text(STRONGROOM_PASSPHRASE + "\n")
            path.chmod(0o600)
        return path

    def version(self) -> str:
        return output_of([STRONGROOM, "--version"])

    def backup(self, step: str, *extra: str) -> Step:
        pw = ["--passphrase-file", str(self.passphrase_file())]
        cmd = [STRONGROOM, "backup", str(self.repo), "--postgres", self.source.dsn(), "--database", DB, *pw, *extra]
        return self.run(step, cmd)

    def full(self) -> Step:
        return self.backup("full")

    def incremental(self) -> Step:
        return self.backup("incremental", "--incremental")

    def restore(self) -> Step:
        pw = ["--passphrase-file", str(self.passphrase_file())]
        cmd = [STRONGROOM, "restore", str(self.repo), "--postgres", self.target.dsn(), "--new-db-name", SR_RESTORED]
        return self.run("restore", [*cmd, *pw])

    def restored_facts(self) -> dict[str, Any]:
        with closing(self.target.connect(SR_RESTORED)) as conn:
            return db_facts(conn)

    def cleanup(self) -> None:
        with closing(self.target.connect("postgres")) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {SR_RESTORED}")


class PgDump(PgTool):
    """``pg_dump -Fd -j 2 -Z 0`` (PG15's pg_dump has no zstd), then the directory through ``tar | zstd -1 -T2 | age``
    into one encrypted file; restore: ``age -d | zstd -d | tar -x``, ``createdb``, ``pg_restore -j 2``. The
    plaintext dump directory is deleted once encrypted (inside the timed step)."""

    name = "pg_dump"

    def version(self) -> str:
        return output_of(["pg_dump", "--version"])

    def init(self) -> Step:
        self.repo.mkdir(parents=True, exist_ok=True)
        return self.run("init", ["age-keygen", "-o", str(self.root / "age.key")])

    def recipient(self) -> str:
        lines = (self.root / "age.key").read_text().splitlines()
        return next(line.split(": ", 1)[1] for line in lines if line.startswith("# public key: "))

    def full(self) -> Step:
        plain, out = self.root / "plain", self.repo / "dump.tar.zst.age"
        shutil.rmtree(plain, ignore_errors=True)
        q = shlex.quote
        cmd = (
            f"pg_dump -Fd -j 2 -Z 0 -d {DB} -f {q(str(plain))}"
            f" && tar -C {q(str(plain))} -cf - . | zstd -1 -T2 -q | age -r {q(self.recipient())} > {q(str(out))}"
            f" && rm -rf {q(str(plain))} && sync {q(str(out))}"
        )
        return self.run("full", ["sh", "-c", cmd], env=self.source.env())

    def restore(self) -> Step:
        plain, src = self.root / "restore-plain", self.repo / "dump.tar.zst.age"
        q = shlex.quote
        cmd = (
            f"rm -rf {q(str(plain))} && mkdir {q(str(plain))}"
            f" && age -d -i {q(str(self.root / 'age.key'))} {q(str(src))} | zstd -d -q | tar -C {q(str(plain))} -xf -"
            f" && createdb {DUMP_RESTORED} && pg_restore -j 2 --exit-on-error -d {DUMP_RESTORED} {q(str(plain))}"
            f" && rm -rf {q(str(plain))}"
        )
        return self.run("restore", ["sh", "-c", cmd], env=self.target.env())

    def restored_facts(self) -> dict[str, Any]:
        with closing(self.target.connect(DUMP_RESTORED)) as conn:
            return db_facts(conn)

    def cleanup(self) -> None:
        with closing(self.target.connect("postgres")) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DUMP_RESTORED}")


class PgBackRest(PgTool):
    """pgBackRest (Debian's) with an encrypted repository (``repo1-cipher-type=aes-256-cbc``), zstd level 1 (as the
    others), two processes, ``start-fast`` (an immediate checkpoint, not a wait for the next one), WAL archived by
    the source server's ``archive_command``. A physical backup: the whole cluster, every database. Restore:
    ``pgbackrest restore --type=immediate`` into a new data directory (the files and the recovery settings); then,
    untimed, a server is started on it to replay the WAL to consistency and count the rows."""

    name = "pgbackrest"

    def __init__(self, root: Path, source: Server, target: Server) -> None:
        super().__init__(root, source, target)
        self.conf = root / "pgbackrest.conf"
        self.restored = Server(root / "restored")
        self.recovery_seconds = 0.0

    def configure(self) -> None:
        """Before the source server starts: its archive_command names this configuration."""
        for d in (self.root, self.repo, self.root / "log", self.root / "lock", self.root / "spool"):
            chown_postgres(d)
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.repo}\n"
            "repo1-cipher-type=aes-256-cbc\n"
            f"repo1-cipher-pass={PGBACKREST_CIPHER_PASS}\n"
            "repo1-retention-full=2\n"
            "compress-type=zst\n"
            "compress-level=1\n"
            "process-max=2\n"
            "start-fast=y\n"
            f"log-path={self.root / 'log'}\n"
            f"lock-path={self.root / 'lock'}\n"
            f"spool-path={self.root / 'spool'}\n"
            "log-level-console=warn\n"
            "log-level-file=info\n"
            f"[{STANZA}]\n"
            f"pg1-path={self.source.datadir}\n"
            f"pg1-port={self.source.port}\n"
            f"pg1-socket-path={self.source.sockdir}\n"
        )
        self.conf.chmod(0o644)

    def archive_command(self) -> str:
        return f"pgbackrest --config={self.conf} --stanza={STANZA} archive-push %p"

    def pgbackrest(self, *args: str) -> list[str]:
        return as_postgres(["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args])

    def version(self) -> str:
        return output_of(["pgbackrest", "version"])

    def init(self) -> Step:
        step = self.run("init", self.pgbackrest("stanza-create"))
        self.run("check", self.pgbackrest("check"))  # the archive_command works: a backup would wait for it
        return step

    def full(self) -> Step:
        return self.run("full", self.pgbackrest("--type=full", "backup"))

    def incremental(self) -> Step:
        return self.run("incremental", self.pgbackrest("--type=incr", "backup"))

    def restore(self) -> Step:
        if self.restored.root.exists():
            shutil.rmtree(self.restored.root)
        chown_postgres(self.restored.root)
        chown_postgres(self.restored.datadir)
        self.restored.datadir.chmod(0o700)
        args = (f"--pg1-path={self.restored.datadir}", "--type=immediate", "--target-action=promote", "restore")
        return self.run("restore", self.pgbackrest(*args))

    def restored_facts(self) -> dict[str, Any]:
        """Start a server on the restored directory and wait until it has replayed the WAL to the backup's
        consistent point and promoted: ``recovery_seconds`` (not part of the timed restore, reported beside it)."""
        self.restored.settings = {**SERVER_SETTINGS, "archive_mode": "off"}
        start = time.perf_counter()
        self.restored.start()
        try:
            with closing(self.restored.connect("postgres")) as conn:
                deadline = time.monotonic() + 600
                while scalar(conn, "SELECT pg_is_in_recovery()"):  # promoted once consistent
                    if time.monotonic() > deadline:
                        raise TimeoutError("the pgBackRest restore did not finish recovery")
                    time.sleep(0.05)
            self.recovery_seconds = time.perf_counter() - start
            with closing(self.restored.connect(DB)) as conn:
                return db_facts(conn)
        finally:
            self.restored.stop()

    def cleanup(self) -> None:
        shutil.rmtree(self.restored.root, ignore_errors=True)


PG_TOOL_CLASSES: dict[str, type[PgTool]] = {"strongroom": StrongroomPg, "pg_dump": PgDump, "pgbackrest": PgBackRest}


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class PgResult:
    tool: str
    version: str
    steps: dict[str, Step] = field(default_factory=dict)
    verified: bool = False
    verify_detail: str = ""
    extra: dict[str, float] = field(default_factory=dict)  # pgBackRest: recovery seconds, backup/WAL bytes

    @property
    def peak_rss_bytes(self) -> int:
        return max(s.peak_rss_bytes for name, s in self.steps.items() if name != "init")

    def figures(self) -> dict[str, Any]:
        steps = {k: s.figures() for k, s in self.steps.items()}
        return {**asdict(self), "steps": steps, "peak_rss_bytes": self.peak_rss_bytes}


@dataclass
class PgRun:
    name: str
    size_gib: float
    scattered: bool
    database: dict[str, Any]
    rows_changed: int
    rows_appended: int
    limits: dict[str, Step]
    results: list[PgResult]
    failed: dict[str, str] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "postgres",
            "size_gib": self.size_gib,
            "change": "scattered" if self.scattered else "contiguous",
            "rows_changed": self.rows_changed,
            "rows_appended": self.rows_appended,
            "database": self.database,
            "limits": {k: s.figures() for k, s in self.limits.items()},
            "results": [r.figures() for r in self.results],
            "failed": self.failed,
            "goals": [asdict(g) for g in self.goals],
        }


def measured(tool: PgTool, step: str, db_bytes: int, call: Any) -> Step | None:
    print(f"  {tool.name} {step} ...", end=" ", flush=True)
    got = call()
    if got is None:
        print("n/a")
        return None
    got = synced(got)
    got.name, got.db_bytes, got.repo_bytes = step, db_bytes, tool.repo_size()
    print(
        f"{got.seconds:.2f} s (+{got.sync_seconds:.2f} s sync), {got.peak_rss_bytes / MB:.0f} MB RSS, "
        f"stored {got.repo_bytes / MB:,.0f} MB"
    )
    return got


def run_postgres(name: str, size_gib: float, tools: list[str], work: Path, scattered: bool, skip_build: bool) -> PgRun:
    """Build (or reuse) the base cluster, copy it, run every tool's full, the change, the incrementals, the
    restores (in that order, all tools on the same running server), and verify each restore."""
    print(f"\n== scenario {name} ==", flush=True)
    load = {"load_before": os.getloadavg()[0]}
    base, info = base_cluster(work, size_gib, skip_build)
    root = work / name
    if root.exists():
        shutil.rmtree(root)
    chown_postgres(root)
    source, target = Server(root / "source"), Server(root / "target")
    print("  copying the base cluster, initdb of the restore target ...", flush=True)
    chown_postgres(source.root)
    subprocess.run(["cp", "-a", str(base.datadir), str(source.datadir)], check=True)
    target.initdb()
    source.port, target.port = free_port(), free_port()
    instances = {t: PG_TOOL_CLASSES[t](root / t, source, target) for t in tools}
    backrest = instances.get("pgbackrest")
    source.settings = dict(SERVER_SETTINGS)
    if isinstance(backrest, PgBackRest):
        backrest.configure()
        source.settings.update(archive_mode="on", archive_command=shlex.quote(backrest.archive_command()))
    target.settings = dict(SERVER_SETTINGS)
    results = {t: PgResult(t, tool.version()) for t, tool in instances.items()}
    failed: dict[str, str] = {}

    def step(tool: PgTool, what: str, db_bytes: int, call: Any) -> None:
        if tool.name in failed:
            return
        try:
            got = measured(tool, what, db_bytes, call)
        except StepFailed as exc:  # the other tools still run; the report and the exit status say so
            print(f"FAILED\n{exc}", flush=True)
            failed[tool.name] = exc.summary
            return
        if got is not None:
            results[tool.name].steps[what] = got

    with source.running(), target.running():
        limits = measure_limits(source, root)
        for tool in instances.values():
            tool.logs.mkdir(parents=True, exist_ok=True)
            try:
                init = tool.init()
            except StepFailed as exc:  # e.g. pgBackRest's check: its archive_command does not work
                print(f"  {tool.name} init FAILED\n{exc}", flush=True)
                failed[tool.name] = exc.summary
                continue
            if init is not None:
                results[tool.name].steps["init"] = init
                print(f"  {tool.name} init {init.seconds:.2f} s")
        size = info["bytes"]
        for tool in instances.values():
            step(tool, "full", size, tool.full)
            if isinstance(backrest, PgBackRest):
                wait_archived(source)
        with closing(source.connect()) as conn:
            at_full = db_facts(conn)
        count = max(1, at_full["orders"] // 100)
        print(f"  change: {count:,} orders ({'every 100th id' if scattered else 'the newest'}) ...", flush=True)
        appended = apply_change(source, count, scattered)
        if isinstance(backrest, PgBackRest):
            wait_archived(source)
        os.sync()
        with closing(source.connect()) as conn:
            at_incr = db_facts(conn)
        for tool in instances.values():
            step(tool, "incremental", at_incr["bytes"], tool.incremental)
        for tool in instances.values():
            step(tool, "restore", at_incr["bytes"], tool.restore)
            if tool.name in failed:
                continue
            want = at_full if isinstance(tool, PgDump) else at_incr  # pg_dump restores its full (no incremental)
            try:
                got = tool.restored_facts()
                results[tool.name].verified = same_rows(want, got)
                results[tool.name].verify_detail = f"source {row_summary(want)}, restored {row_summary(got)}"
            except (psycopg.Error, subprocess.CalledProcessError, TimeoutError) as exc:
                results[tool.name].verify_detail = f"cannot read the restored database: {exc}"
            if isinstance(tool, PgBackRest):
                results[tool.name].extra = {
                    "recovery_seconds": tool.recovery_seconds,
                    "backup_bytes": tree_bytes(tool.repo / "backup"),
                    "archive_bytes": tree_bytes(tool.repo / "archive"),
                }
            print(f"  {tool.name} restore verified={results[tool.name].verified}", flush=True)
            tool.cleanup()
    load["load_after"] = os.getloadavg()[0]
    info = {**info, **load}
    done = [r for r in results.values() if r.tool not in failed]
    run = PgRun(
        name,
        size_gib,
        scattered,
        {**info, "bytes_at_incremental": at_incr["bytes"]},
        count,
        appended,
        limits,
        done,
        failed,
    )
    run.goals = pg_goals(run)
    return run


def row_summary(facts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {facts[k]:,}" for k in (*TABLES, "orders_sum_qty"))


# ---------------------------------------------------------------------------------------------- goals, report


def pg_goals(run: PgRun) -> list[Goal]:
    by = {r.tool: r for r in run.results}
    s = by.get("strongroom")
    if s is None:
        return [Goal("all goals", "--", run.failed.get("strongroom", "strongroom not selected (--tools)"))]

    def dur(tool: str, step: str) -> float | None:
        got = by[tool].steps.get(step) if tool in by else None
        return got.durable_seconds if got is not None else None

    def against(name: str, step: str, tool: str, label: str, factor: float) -> Goal:
        mine, theirs = dur("strongroom", step), dur(tool, step)
        if mine is None or theirs is None:
            return Goal(name, "--", run.failed.get(tool, f"{tool} not selected (--tools)"))
        return at_most(name, mine, theirs, label, factor)

    rss = {step: s.steps[step].peak_rss_bytes for step in ("full", "incremental", "restore") if step in s.steps}
    return [
        against("full <= pg_dump -j 2 + zstd + age", "full", "pg_dump", "pg_dump", 1.0),
        against("restore <= age -d + zstd -d + pg_restore -j 2", "restore", "pg_dump", "pg_restore", 1.0),
        against("full <= 1.5x pgBackRest full", "full", "pgbackrest", "pgBackRest", 1.5),
        Goal(
            "peak RSS < 200 MB in every step",
            "ok" if max(rss.values()) < 200 * MB else "MISS",
            ", ".join(f"{k} {v / MB:.0f} MB" for k, v in rss.items()),
        ),
        Goal("restore verified", "ok" if s.verified else "MISS", s.verify_detail),
    ]


def pg_report(run: PgRun) -> str:
    lines: list[str] = []
    out = lines.append
    db = run.database
    change = "every 100th order id (--scattered)" if run.scattered else "the newest orders (an id range)"
    out("")
    out(f"=== {run.name}: PostgreSQL 15, database {DB!r} on a running server")
    out(
        f"database: {db['bytes'] / MB:,.1f} MB ({db['bytes'] / GIB:.2f} GiB, pg_database_size), "
        f"{db['customers']:,} customers, {db['orders']:,} orders, {db['order_items']:,} order items; "
        f"change: {run.rows_changed:,} orders updated ({change}, 1%) with their items, {run.rows_appended:,} appended"
    )
    out("")
    out(
        f"1-minute load average: {db.get('load_before', float('nan')):.2f} before the run, "
        f"{db.get('load_after', float('nan')):.2f} after ({os.cpu_count()} cores; above ~0.5 another process competed)"
    )
    out("")
    out("limits of this machine on the same server (each table's binary COPY in turn, same launcher and sync after)")
    for name, (bounds, label, _) in PG_LIMITS.items():
        s = run.limits[name]
        tail = f"   bounds {bounds}" if bounds else ""
        out(
            f"  {label:<30} {s.durable_seconds:>7.2f} s durable {s.db_bytes / MB / s.durable_seconds:>6.0f} MB/s"
            f" {s.peak_rss_bytes / MB:>5.0f} MB RSS{tail}"
        )
    out(f"  (the COPY stream is {run.limits['write'].db_bytes / MB:,.0f} MB)")
    out("")
    out("durable seconds (the step + the os.sync() after it); stored = repository / collection bytes (du -sb)")
    out(
        f"{'tool':<12}{'full s':>9}{'incr s':>9}{'restore s':>11}{'stored full MB':>16}{'stored incr MB':>16}"
        f"{'incr added MB':>15}{'peak RSS MB':>13}"
    )
    for r in run.results:
        full, inc, res = (r.steps.get(k) for k in ("full", "incremental", "restore"))

        def sec(s: Step | None) -> str:
            return "n/a" if s is None else f"{s.durable_seconds:.2f}"

        added = "n/a" if inc is None or full is None else f"{(inc.repo_bytes - full.repo_bytes) / MB:,.1f}"
        out(
            f"{r.tool:<12}{sec(full):>9}{sec(inc):>9}{sec(res):>11}"
            f"{(full.repo_bytes / MB if full else 0):>16,.1f}"
            f"{(f'{inc.repo_bytes / MB:,.1f}' if inc else 'n/a'):>16}{added:>15}{r.peak_rss_bytes / MB:>13.0f}"
        )
    out("")
    out("per step: raw seconds (without the sync), CPU seconds of the tool's processes (not the server's), peak RSS")
    for r in run.results:
        out(
            f"  {r.tool:<12}"
            + "  ".join(
                f"{k} {s.seconds:.2f} s, {s.cpu_seconds:.2f} CPU s, {s.peak_rss_bytes / MB:.0f} MB"
                for k, s in r.steps.items()
            )
        )
    by = {r.tool: r for r in run.results}
    if "strongroom" in by:
        sr = by["strongroom"]
        out("")
        out("strongroom against the limits (durable time / limit)")
        for step, limit in (("full", "zstd"), ("incremental", "read"), ("full", "read"), ("full", "read-ordered")):
            if step in sr.steps:
                lim = run.limits[limit]
                out(
                    f"  {step:<12} {sr.steps[step].durable_seconds:.2f} s / {PG_LIMITS[limit][1]} "
                    f"{lim.durable_seconds:.2f} s = x{sr.steps[step].durable_seconds / lim.durable_seconds:.2f}"
                )
    out("")
    for tool, why in run.failed.items():
        out(f"FAILED {tool}: {why}")
    out("restore check (row counts and sum(qty) against the source at that backup)")
    for r in run.results:
        out(f"  {r.tool:<12} verified={r.verified}  {r.verify_detail}")
    out("")
    if "pgbackrest" in by and by["pgbackrest"].extra:
        e = by["pgbackrest"].extra
        out(
            f"pgBackRest: its restore (above) writes the files; starting a server on them, replaying the WAL to the "
            f"backup's consistent point and promoting took another {e['recovery_seconds']:.2f} s (untimed above). "
            f"Its repository: {e['backup_bytes'] / MB:,.1f} MB of backups, {e['archive_bytes'] / MB:,.1f} MB of WAL."
        )
    out("pgBackRest is a physical backup of the whole cluster (every database, WAL to consistency); pg_dump and")
    out("strongroom are logical backups of the one database. pg_dump has no incremental (n/a).")
    out("")
    out(f"goals ({run.name}, durable time)")
    lines.extend(g.line() for g in run.goals)
    return "\n".join(lines)
