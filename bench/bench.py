#!/usr/bin/env python3
"""Strongroom vs restic vs borg on one SQLite file, same disk, side by side, against this machine's limits.

    python bench/bench.py [--scenario plain,store,scaling,postgres] [--size-gib 1.0] [--scale-gib 4] [--scattered]
                          [--tools strongroom,restic,borg] [--work DIR] [--skip-build] [--json PATH] [--keep]

For each tool: full backup of a copy of the base database, a deterministic change to 1% of its rows,
an incremental backup, and a restore of the latest state, each step timed as a child process (wall
seconds, peak RSS from ``os.wait4``) followed by an ``os.sync()``; a step's durable time includes that
sync, and every ratio, ranking and goal uses durable time. The limits of the machine (read, zstd -1 and
copy of the same file, each with an fsync) are measured in the same run. Scenarios: a plain file, a
store database encrypted at rest, and the same absolute change at two sizes. Warm page cache throughout
(dropping it is not reliable here); see bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apsw

from strongroom import open_store

HERE = Path(__file__).resolve().parent
PASSPHRASE = "bench"
SEED = 20240601
CHANGE_FRACTION = 0.01
MB = 1_000_000
GIB = 1 << 30
ALL_TOOLS = ("strongroom", "strongroom-s3", "restic", "borg")
S3_MODULES = ("boto3", "moto")  # strongroom-s3 needs both (moto's server stands in for S3)
STORE_REGION = "us-east1"
STORE_DB = "orders"  # the store database that is backed up
RESTORED_DB = "restored"  # strongroom restores it under this name, next to it
SCENARIOS = ("plain", "store", "scaling", "postgres")
PG_TOOLS = ("strongroom", "pg_dump", "pgbackrest")  # --scenario postgres (bench/pg_scenario.py)
CLI_START_RUNS = 20


def console_script(name: str) -> str:
    """``name`` as installed next to this interpreter, else from PATH: a version manager's shim (pyenv) adds its
    own start-up time (~0.1 s) to every call."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name


STRONGROOM = console_script("strongroom")


# ---------------------------------------------------------------------------------------------- running a step


@dataclass
class Step:
    """One measured child process."""

    name: str
    seconds: float
    peak_rss_bytes: int
    sync_seconds: float = 0.0  # the os.sync() right after the step (raw `seconds` exclude it)
    repo_bytes: int = 0  # repository / collection size after the step
    db_bytes: int = 0
    cpu_seconds: float = 0.0  # user + system time of the child and the children it waited for (wait4)

    @property
    def durable_seconds(self) -> float:
        """Until the step's writes are on disk: the step, then the sync that follows it."""
        return self.seconds + self.sync_seconds

    @property
    def mb_per_s(self) -> float:
        """Database bytes over durable seconds."""
        return self.db_bytes / MB / self.durable_seconds if self.durable_seconds > 0 else float("nan")

    def figures(self) -> dict[str, Any]:
        return {**asdict(self), "durable_seconds": self.durable_seconds, "mb_per_s": self.mb_per_s}


# A fork child's ru_maxrss starts at the forking parent's RSS (Linux records the old mm's high-water mark at
# exec), so the bench process itself, large after building the database, must not fork the tools. This small
# launcher (a bare interpreter, ~10 MB) forks, execs, and reports wait4's figures for its own child; its RSS is the
# floor of every measurement (printed as "RSS floor").
LAUNCHER = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(out, "w") as f:
    code, cpu = os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "cpu_s": cpu, "code": code}, f)
"""


class StepFailed(RuntimeError):
    """A measured child process exited non-zero."""

    def __init__(self, cmd: list[str], code: int, log: Path) -> None:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        self.summary = f"{Path(cmd[0]).name} exited {code}: {lines[-1].strip() if lines else '(no output)'} (log {log})"
        super().__init__(self.summary + "\n" + "\n".join(lines[-40:]))


def run_child(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, log: Path) -> Step:
    """Run ``cmd`` to completion: wall seconds and the child's own peak RSS (wait4 ru_maxrss, KiB on Linux)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    figures = log.with_suffix(".wait4.json")
    with log.open("wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        subprocess.run(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(figures), *cmd],
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            check=True,
        )
    got = json.loads(figures.read_text())
    if got["code"] != 0:
        raise StepFailed(cmd, got["code"], log)
    return Step(
        name=log.stem, seconds=got["seconds"], peak_rss_bytes=got["maxrss_kib"] * 1024, cpu_seconds=got["cpu_s"]
    )


def synced(step: Step) -> Step:
    """Time the os.sync() that follows ``step`` (so its write-back does not slow the next step)."""
    start = time.perf_counter()
    os.sync()
    step.sync_seconds = time.perf_counter() - start
    return step


def rss_floor(work: Path) -> int:
    """What the launcher alone shows as peak RSS (a child that allocates nothing)."""
    return run_child(["true"], log=work / "rss-floor.log").peak_rss_bytes


def tree_bytes(path: Path) -> int:
    """Apparent size of every file under ``path`` (du -sb)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(path) for f in files)


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def output_of(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError as exc:
        return f"unavailable ({exc})"


# ---------------------------------------------------------------------------------------------- the limits

#: What this machine can do with the same file, each timed like a tool and followed by the same sync.
#: name -> (the step it bounds, label, shell command; {db} the database file, {out} a scratch file).
LIMITS: dict[str, tuple[str, str, str]] = {
    "read": ("incremental", "cat > /dev/null", "cat {db} > /dev/null"),
    "zstd": ("full", "zstd -1 + fsync", "zstd -1 -T0 -q -c {db} > {out} && sync {out}"),
    "copy": ("restore", "cp + fsync", "cp {db} {out} && sync {out}"),
}
LIMIT_FOR_STEP = {step: name for name, (step, _, _) in LIMITS.items()}


def measure_limits(db: Path, scratch: Path) -> dict[str, Step]:
    out = scratch / "limit.out"
    with db.open("rb") as f:  # warm, like the tools' fresh copies: a reused base may have left the page cache
        while f.read(1 << 24):
            pass
    steps = {}
    for name, (_, label, template) in LIMITS.items():
        print(f"  limit {label} ...", end=" ", flush=True)
        cmd = template.format(db=shlex.quote(str(db)), out=shlex.quote(str(out)))
        step = synced(run_child(["sh", "-c", cmd], log=scratch / "logs" / f"limit-{name}.log"))
        step.name, step.db_bytes = name, db.stat().st_size
        out.unlink(missing_ok=True)
        print(f"{step.durable_seconds:.2f} s durable, {step.peak_rss_bytes / MB:.0f} MB RSS")
        steps[name] = step
    return steps


def cli_start(work: Path) -> dict[str, float]:
    """Median wall seconds of ``strongroom --version`` and of ``python3 -c pass``, through the same launcher."""

    def median(cmd: list[str], name: str) -> float:
        return statistics.median(
            run_child(cmd, log=work / "logs" / f"cli-{name}.log").seconds for _ in range(CLI_START_RUNS)
        )

    return {
        "strongroom_version_s": median([STRONGROOM, "--version"], "strongroom"),
        "python_pass_s": median([sys.executable, "-c", "pass"], "python"),
        "runs": CLI_START_RUNS,
    }


# ---------------------------------------------------------------------------------------------- the tools


@dataclass
class Target:
    """What a tool backs up: a plain SQLite file, or the database `orders` of a store (``file`` is then the
    store's encrypted database file, which restic and borg back up as it is)."""

    file: Path
    store: Path | None = None


class Tool(ABC):
    """One backup tool behind the same four calls; every call that does work returns a measured Step."""

    name: str

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        self.logs = root / "logs"

    def env(self) -> dict[str, str]:
        return {}

    def run(self, step: str, cmd: list[str], cwd: Path | None = None) -> Step:
        return run_child(cmd, env=self.env(), cwd=cwd, log=self.logs / f"{step}.log")

    def init(self) -> Step | None:
        """Create the repository, if the tool needs that (timed separately, not part of `full`)."""
        return None

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def full(self, target: Target) -> Step: ...

    @abstractmethod
    def incremental(self, target: Target) -> Step: ...

    @abstractmethod
    def restore(self, target: Target, dest: Path) -> Step:
        """Restore the latest backup: a file tool puts the database file at ``dest``."""

    def repo_size(self) -> int:
        return tree_bytes(self.repo)


def _move_restored_file(tree: Path, dest: Path) -> None:
    """restic and borg recreate the source's absolute path under the target: move the one file to ``dest``."""
    found = [Path(d) / f for d, _, files in os.walk(tree) for f in files]
    if len(found) != 1:
        raise RuntimeError(f"expected one restored file under {tree}, found {found}")
    found[0].rename(dest)
    shutil.rmtree(tree)


class Restic(Tool):
    name = "restic"

    def env(self) -> dict[str, str]:
        return {"RESTIC_PASSWORD": PASSPHRASE, "RESTIC_CACHE_DIR": str(self.root / "cache")}

    def version(self) -> str:
        return output_of(["restic", "version"])

    def init(self) -> Step:
        return self.run("init", ["restic", "init", "--repo", str(self.repo)])

    def full(self, target: Target) -> Step:
        return self.run("full", ["restic", "backup", "--repo", str(self.repo), str(target.file)])

    def incremental(self, target: Target) -> Step:
        # restic always deduplicates against the parent snapshot of the same path
        return self.run("incremental", ["restic", "backup", "--repo", str(self.repo), str(target.file)])

    def restore(self, target: Target, dest: Path) -> Step:
        tree = dest.parent / "restic-target"
        step = self.run("restore", ["restic", "restore", "latest", "--repo", str(self.repo), "--target", str(tree)])
        _move_restored_file(tree, dest)
        return step


class Borg(Tool):
    name = "borg"

    def env(self) -> dict[str, str]:
        return {
            "BORG_PASSPHRASE": PASSPHRASE,
            "BORG_BASE_DIR": str(self.root / "home"),  # keys, security info and chunk cache stay in work/
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def version(self) -> str:
        return output_of(["borg", "--version"])

    def init(self) -> Step:
        return self.run("init", ["borg", "init", "-e", "repokey-blake2", str(self.repo)])

    def full(self, target: Target) -> Step:
        return self.run("full", ["borg", "create", f"{self.repo}::full", str(target.file)])

    def incremental(self, target: Target) -> Step:
        return self.run("incremental", ["borg", "create", f"{self.repo}::inc", str(target.file)])

    def restore(self, target: Target, dest: Path) -> Step:
        tree = dest.parent / "borg-target"
        tree.mkdir(parents=True)
        step = self.run("restore", ["borg", "extract", f"{self.repo}::inc"], cwd=tree)
        _move_restored_file(tree, dest)
        return step


class Strongroom(Tool):
    """A plain file with ``--file``; a store database with ``--store S ... --database orders``, restored into the
    same store as ``restored`` (``--new-db-name``)."""

    name = "strongroom"

    def env(self) -> dict[str, str]:
        return {"STRONGROOM_PASSPHRASE": PASSPHRASE}

    def version(self) -> str:
        out = output_of([STRONGROOM, "--version"])
        if out and "rror" not in out:
            return out
        from importlib.metadata import version

        return f"strongroom {version('strongroom')}"

    @property
    def collection(self) -> str:
        return str(self.repo)

    @staticmethod
    def command(target: Target) -> list[str]:
        return [STRONGROOM] if target.store is None else [STRONGROOM, "--store", str(target.store)]

    def backup(self, target: Target) -> list[str]:
        what = ["--file", str(target.file)] if target.store is None else ["--database", STORE_DB]
        return [*self.command(target), "backup", self.collection, *what, "--passphrase"]

    def full(self, target: Target) -> Step:
        return self.run("full", self.backup(target))

    def incremental(self, target: Target) -> Step:
        return self.run("incremental", [*self.backup(target), "--incremental"])

    def restore(self, target: Target, dest: Path) -> Step:
        into = ["--file", str(dest)] if target.store is None else ["--database", STORE_DB, "--new-db-name", RESTORED_DB]
        return self.run("restore", [*self.command(target), "restore", self.collection, *into, "--passphrase"])


class StrongroomS3(Strongroom):
    """strongroom into S3: moto's server on this machine (the same protocol and multipart uploads as AWS)."""

    name = "strongroom-s3"
    bucket = "bench"

    def init(self) -> Step | None:
        import atexit
        import socket

        import boto3

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.logs.mkdir(parents=True, exist_ok=True)
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=open(self.logs / "moto.log", "wb"),  # noqa: SIM115 (lives as long as the server)
            stderr=subprocess.STDOUT,
        )
        atexit.register(server.terminate)
        self.endpoint = f"http://127.0.0.1:{port}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        for _ in range(100):
            try:
                self.s3.create_bucket(Bucket=self.bucket)
                break
            except Exception:  # the server is still starting
                time.sleep(0.1)
        return None

    @property
    def collection(self) -> str:
        return (
            f"s3://{self.bucket}/collection?AWS_ACCESS_KEY_ID=bench&AWS_SECRET_ACCESS_KEY=bench"
            f"&AWS_ENDPOINT={self.endpoint}"
        )

    def repo_size(self) -> int:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sum(obj["Size"] for page in pages for obj in page.get("Contents", []))


TOOL_CLASSES: dict[str, type[Tool]] = {
    "strongroom": Strongroom,
    "strongroom-s3": StrongroomS3,
    "restic": Restic,
    "borg": Borg,
}


def s3_missing() -> list[str]:
    """The modules strongroom-s3 needs that are not importable here."""
    return [m for m in S3_MODULES if importlib.util.find_spec(m) is None]


def default_tools() -> list[str]:
    return [t for t in ALL_TOOLS if t != "strongroom-s3" or not s3_missing()]


# ---------------------------------------------------------------------------------------------- install


def ensure_installed(tools: list[str]) -> None:
    """restic, borgbackup and pgbackrest from the distribution, as root, if they are missing."""
    packages = {"restic": "restic", "borg": "borgbackup", "pgbackrest": "pgbackrest"}
    missing = [packages[t] for t in tools if t in packages and shutil.which(t) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: run as root, or `sudo apt-get install -y {' '.join(missing)}`")
    policy = output_of(["apt-cache", "policy", *missing])
    if "Candidate: (none)" in policy or "Candidate:" not in policy:
        print("apt-get update ...", flush=True)
        subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
    print(f"apt-get install -y {' '.join(missing)} ...", flush=True)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


# ---------------------------------------------------------------------------------------------- the database

_WORDS_TEXT = (
    "order shipped delayed customer requested invoice payment received pending refund partial warehouse "
    "north south east west express standard priority gift wrap fragile handle with care leave at door "
    "signature required call before delivery backorder restock supplier confirmed cancelled returned "
    "damaged replaced discount coupon applied loyalty points tax exempt wholesale retail bulk sample "
    "color size small medium large extra blue red green black white silver gold cotton steel plastic "
    "the a and for to of on in by from please note that this item was packed checked approved"
)
_FIRST_TEXT = (
    "Alice Bob Carol David Erin Frank Grace Heidi Ivan Judy Karl Laura Mallory Nina Oscar Peggy Quentin "
    "Rupert Sybil Trent Uma Victor Wendy Xavier Yvonne Zach Ahmed Bea Chen Dmitri Elena Fatima Goran Hana"
)
_LAST_TEXT = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
    "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Kim"
)
WORDS, FIRST, LAST = _WORDS_TEXT.split(), _FIRST_TEXT.split(), _LAST_TEXT.split()
CREATED_EPOCH = 1_577_836_800  # 2020-01-01T00:00:00Z


def make_note(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(6, 22)))


def make_rows(rng: random.Random, first_id: int, count: int) -> list[tuple[Any, ...]]:
    choices, randint, randbytes, uniform = rng.choices, rng.randint, rng.randbytes, rng.uniform
    rows = []
    for i in range(first_id, first_id + count):
        customer = f"{FIRST[randint(0, len(FIRST) - 1)]} {LAST[randint(0, len(LAST) - 1)]} #{randint(1, 4000)}"
        sku = f"SKU-{randint(0, 19999):05d}"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(CREATED_EPOCH + i * 20 + randint(0, 19)))
        note = " ".join(choices(WORDS, k=randint(6, 22)))
        # payload: ~half random bytes (images, ciphertext, ids), ~half repetitive (serialized records)
        n = randint(160, 480)
        record = f"{{sku:{sku},qty:{i % 7},status:ok}};".encode()
        payload = randbytes(n // 2) + (record * (n // len(record) + 1))[: n - n // 2]
        rows.append((i, customer, sku, randint(1, 50), round(uniform(1, 500), 2), created, note, payload))
    return rows


SCHEMA = """
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, sku TEXT, qty INTEGER, price REAL,
                    created TEXT, note TEXT, payload BLOB);
"""
INDEXES = """
CREATE INDEX orders_customer ON orders(customer);
CREATE INDEX orders_created ON orders(created);
"""


def scalar(conn: apsw.Connection, sql: str) -> int:
    value = conn.execute(sql).fetchall()[0][0]
    assert isinstance(value, int), (sql, value)
    return value


def fill_database(conn: apsw.Connection, size_bytes: int, start: float) -> int:
    """One transaction, batched executemany, no journal and no syncs; WAL mode and checkpointed at the end."""
    rng = random.Random(SEED)
    for pragma in (
        "page_size=4096",
        "journal_mode=OFF",
        "synchronous=OFF",
        "temp_store=MEMORY",
        "cache_size=-1048576",
    ):  # a 1 GiB cache keeps the index inserts in RAM
        conn.execute(f"PRAGMA {pragma}").fetchall()
    conn.execute(SCHEMA + INDEXES)
    rows, batch = 0, 20_000
    conn.execute("BEGIN")
    while True:
        conn.executemany("INSERT INTO orders VALUES(?,?,?,?,?,?,?,?)", make_rows(rng, rows + 1, batch))
        rows += batch
        pages = scalar(conn, "PRAGMA page_count")
        if pages * 4096 >= size_bytes:
            break
        if rows % 200_000 == 0:
            print(f"  {rows:,} rows, {pages * 4096 / MB:,.0f} MB, {time.perf_counter() - start:.0f} s", flush=True)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return rows


def build_plain(path: Path, size_bytes: int) -> int:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(apsw.Connection(str(path))) as conn:
        return fill_database(conn, size_bytes, time.perf_counter())


def build_store(store: Path, size_bytes: int) -> int:
    """``strongroom init`` (local key file), ``db create orders``, then the same rows through ``store.connect``."""
    if store.exists():
        shutil.rmtree(store)
    for cmd in (
        [STRONGROOM, "init", str(store), "--region", STORE_REGION],
        [STRONGROOM, "--store", str(store), "db", "create", STORE_DB],
    ):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with store_connection(store, STORE_DB) as conn:  # the authorizer allows every pragma fill_database uses
        return fill_database(conn, size_bytes, time.perf_counter())


@contextmanager
def store_connection(store_dir: Path, name: str) -> Iterator[apsw.Connection]:
    store = open_store(store_dir)
    try:
        with closing(store.connect(name)) as conn:
            yield conn
    finally:
        store.close()


def store_file(store_dir: Path, name: str = STORE_DB) -> Path:
    store = open_store(store_dir)
    try:
        return store.database_path(name)
    finally:
        store.close()


def connect(target: Target, name: str = STORE_DB) -> AbstractContextManager[apsw.Connection]:
    """A connection to the target's database (for a store, ``name`` of that store)."""
    if target.store is None:
        return closing(apsw.Connection(str(target.file)))
    return store_connection(target.store, name)


def base_database(work: Path, kind: str, size_gib: float, skip_build: bool) -> tuple[Target, dict[str, Any]]:
    """The base plain file or store of this size, built once (``--skip-build`` reuses a complete one)."""
    if kind == "store":
        path = work / f"store-base-{size_gib:g}GiB"
        target = Target(file=path / "databases" / f"{STORE_DB}.db", store=path)
    else:
        path = work / f"base-{size_gib:g}GiB.sqlite"
        target = Target(file=path)
    marker = work / f"{kind}-base-{size_gib:g}GiB.json"
    if skip_build and target.file.exists() and marker.exists():
        info = json.loads(marker.read_text())
        if info.get("bytes") == target.file.stat().st_size:
            print(f"reusing {path} ({info['rows']:,} rows, {info['bytes'] / MB:,.0f} MB)")
            return target, info
    marker.unlink(missing_ok=True)
    print(f"building {path} (>= {size_gib:g} GiB) ...", flush=True)
    start = time.perf_counter()
    rows = (build_store if kind == "store" else build_plain)(path, int(size_gib * GIB))
    os.sync()
    if target.store is not None and store_file(target.store) != target.file:
        raise RuntimeError(f"the store keeps {STORE_DB} at {store_file(target.store)}, not {target.file}")
    info = {"rows": rows, "bytes": target.file.stat().st_size, "build_seconds": round(time.perf_counter() - start, 1)}
    marker.write_text(json.dumps(info))
    print(f"built {info['rows']:,} rows, {info['bytes'] / MB:,.0f} MB in {info['build_seconds']} s")
    return target, info


def change_rows(conn: apsw.Connection, count: int, scattered: bool) -> None:
    """Update ``count`` rows, the same way every time: a contiguous block of the newest ids, or uniform at random;
    then a TRUNCATE checkpoint, so the database file alone holds the change."""
    rng = random.Random(SEED + 1)
    top = scalar(conn, "SELECT max(id) FROM orders")
    ids = sorted(rng.sample(range(1, top + 1), count)) if scattered else list(range(top - count + 1, top + 1))
    with conn:
        conn.executemany("UPDATE orders SET qty=qty+1, note=? WHERE id=?", [(make_note(rng), i) for i in ids])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def changed_fraction(before: Path, after: Path) -> dict[str, float]:
    """Share of 4 KiB pages and of 64 KiB blocks that differ (what an incremental has to find)."""
    page, block = 4096, 65536
    pages = pages_changed = blocks = blocks_changed = 0
    with before.open("rb") as a, after.open("rb") as b:
        while True:
            x, y = a.read(block), b.read(block)
            if not x and not y:
                break
            blocks += 1
            if x != y:
                blocks_changed += 1
                for off in range(0, max(len(x), len(y)), page):
                    pages += 1
                    pages_changed += x[off : off + page] != y[off : off + page]
            else:
                pages += (len(x) + page - 1) // page
    return {"pages_changed": pages_changed / pages, "blocks_64k_changed": blocks_changed / blocks}


def db_facts(conn: apsw.Connection) -> tuple[dict[str, Any], float]:
    """integrity_check, row count and sum(qty); and how long integrity_check took (with a 32 MiB cache, as
    strongroom's ``restore --verify`` runs it)."""
    conn.execute("PRAGMA cache_size = -32768").fetchall()
    start = time.perf_counter()
    check = conn.execute("PRAGMA integrity_check").fetchall()[0][0]
    seconds = time.perf_counter() - start
    rows, qty = conn.execute("SELECT count(*), sum(qty) FROM orders").fetchall()[0]
    return {"integrity_check": check, "rows": rows, "sum_qty": qty}, seconds


# ---------------------------------------------------------------------------------------------- one tool's run


@dataclass
class ToolResult:
    tool: str
    version: str
    steps: dict[str, Step] = field(default_factory=dict)
    rows_changed: int = 0
    source_sha256: str = ""
    restored_sha256: str = ""
    byte_identical: bool = False
    verified: bool = False
    verify_detail: str = ""
    change: dict[str, float] = field(default_factory=dict)
    integrity_check_seconds: float = 0.0

    @property
    def peak_rss_bytes(self) -> int:
        """Peak over full, incremental and restore (repository init is reported on its own row)."""
        return max(s.peak_rss_bytes for name, s in self.steps.items() if name != "init")

    def figures(self) -> dict[str, Any]:
        steps = {k: s.figures() for k, s in self.steps.items()}
        return {**asdict(self), "steps": steps, "peak_rss_bytes": self.peak_rss_bytes}


def timed_step(tool: Tool, step: str, db_bytes: int, call: Callable[..., Step], *args: Any) -> Step:
    print(f"  {tool.name} {step} ...", end=" ", flush=True)
    result = synced(call(*args))
    result.name, result.db_bytes, result.repo_bytes = step, db_bytes, tool.repo_size()
    print(
        f"{result.seconds:.2f} s (+{result.sync_seconds:.2f} s sync), {result.peak_rss_bytes / MB:.0f} MB RSS, "
        f"repo {result.repo_bytes / MB:,.0f} MB"
    )
    return result


def fresh_copy(base: Target, root: Path) -> Target:
    """The tool's own copy of the base file or store (a store opens from any path: keys are in the keyring)."""
    if base.store is None:
        db = root / "db.sqlite"
        shutil.copyfile(base.file, db)
        return Target(file=db)
    shutil.copytree(base.store, root / "store")
    return Target(file=store_file(root / "store"), store=root / "store")


def bench_tool(tool: Tool, base: Target, count: int, scattered: bool, keep: bool, measure_change: bool) -> ToolResult:
    if tool.root.exists():
        shutil.rmtree(tool.root)
    tool.root.mkdir(parents=True)
    target = fresh_copy(base, tool.root)
    os.sync()
    result = ToolResult(tool=tool.name, version=tool.version())
    size = target.file.stat().st_size
    if (init := tool.init()) is not None:
        result.steps["init"] = init
        init.name, init.repo_bytes = "init", tool.repo_size()
        print(f"  {tool.name} init {init.seconds:.2f} s")
    result.steps["full"] = timed_step(tool, "full", size, tool.full, target)
    with connect(target) as conn:
        change_rows(conn, count, scattered)
    result.rows_changed = count
    os.sync()
    size = target.file.stat().st_size
    if measure_change:
        result.change = changed_fraction(base.file, target.file)
    result.steps["incremental"] = timed_step(tool, "incremental", size, tool.incremental, target)
    result.source_sha256 = sha256(target.file)  # after the tool has read it (a backup must not change the file)
    with connect(target) as conn:
        want, _ = db_facts(conn)
    dest = tool.root / "restored" / "db.sqlite"
    dest.parent.mkdir()
    result.steps["restore"] = timed_step(tool, "restore", size, tool.restore, target, dest)
    into_store = isinstance(tool, Strongroom) and target.store is not None  # restored as RESTORED_DB in the store
    restored = store_file(target.store, RESTORED_DB) if into_store and target.store else dest
    result.restored_sha256 = sha256(restored)
    result.byte_identical = result.restored_sha256 == result.source_sha256
    if target.store is None or into_store:
        with connect(Target(file=restored, store=target.store), RESTORED_DB) as conn:
            got, result.integrity_check_seconds = db_facts(conn)
        result.verified = got == want and got["integrity_check"] == "ok"
        result.verify_detail = f"source {want}, restored {got}"
    else:  # restic or borg restored the store's encrypted file: only its bytes can be compared here
        result.verified = result.byte_identical
        result.verify_detail = f"source {want}; the restored encrypted file is compared byte for byte"
    if not isinstance(tool, Strongroom):  # they restore files: nothing less than the same bytes will do
        result.verified = result.verified and result.byte_identical
    print(f"  {tool.name} restore verified={result.verified} byte-identical={result.byte_identical}")
    if not keep:
        if target.store is not None:
            shutil.rmtree(target.store)
        else:
            target.file.unlink()
        dest.unlink(missing_ok=True)
    return result


# ---------------------------------------------------------------------------------------------- goals


@dataclass
class Goal:
    name: str
    status: str  # "ok", "MISS", or "--" (cannot be computed in this run)
    detail: str

    def line(self) -> str:
        tag = {"ok": "[ok]  ", "MISS": "[MISS]", "--": "[ -- ]"}[self.status]
        return f"  {tag} {self.name}: {self.detail}"


def unknown(name: str, why: str) -> Goal:
    return Goal(name, "--", why)


def at_most(
    name: str, mine: float, theirs: float, theirs_label: str, factor: float, mine_label: str = "strongroom"
) -> Goal:
    """``mine`` (a durable time) <= ``factor`` x ``theirs``."""
    r = mine / theirs
    ok = "ok" if r <= factor else "MISS"
    return Goal(name, ok, f"{mine_label} {mine:.2f} s / {theirs_label} {theirs:.2f} s = x{r:.3f} (goal <= x{factor:g})")


def faster(name: str, mine: float, theirs: float, theirs_label: str, factor: float) -> Goal:
    """Durable throughput at least ``factor`` x theirs on the same file, i.e. ``theirs / mine >= factor``."""
    r = theirs / mine
    detail = f"strongroom {mine:.2f} s vs {theirs_label} {theirs:.2f} s: throughput x{r:.3f} (goal >= x{factor:g})"
    return Goal(name, "ok" if r >= factor else "MISS", detail)


def step_goals(
    kind: str, scattered: bool, results: list[ToolResult], failed: dict[str, str], limits: dict[str, Step]
) -> list[Goal]:
    """The issue's goals for one scenario run, on durable time (see bench/README.md)."""
    by = {r.tool: r for r in results}

    def why(tool: str) -> str:
        return f"{tool} failed: {failed[tool]}" if tool in failed else f"{tool} not selected (--tools)"

    s = by.get("strongroom")
    if s is None:
        return [unknown("all goals", why("strongroom"))]
    mine = {step: s.steps[step].durable_seconds for step in ("full", "incremental", "restore")}

    def theirs(tool: str, step: str) -> float | None:
        return by[tool].steps[step].durable_seconds if tool in by else None

    def absent(name: str, tool: str) -> Goal:
        return unknown(name, why(tool))

    goals: list[Goal] = []
    for tool in ("restic", "borg"):
        name = f"restore <= 0.8x {tool}"
        other = theirs(tool, "restore")
        goals.append(absent(name, tool) if other is None else at_most(name, mine["restore"], other, tool, 0.8))
    goals.append(
        at_most("restore <= 1.3x copy+fsync", mine["restore"], limits["copy"].durable_seconds, "cp+fsync", 1.3)
    )
    full_targets = [("restic", 2.0)] if kind == "store" else [("restic", 3.0), ("borg", 1.5)]
    for tool, factor in full_targets:
        name = f"full throughput >= {factor:g}x {tool}" + (" (same encrypted file)" if kind == "store" else "")
        other = theirs(tool, "full")
        goals.append(absent(name, tool) if other is None else faster(name, mine["full"], other, tool, factor))
    if kind == "plain":
        zstd = limits["zstd"].durable_seconds
        goals.append(at_most("full <= 1.5x zstd+fsync", mine["full"], zstd, "zstd -1+fsync", 1.5))
    factor = 0.3 if kind == "store" else 0.6
    name = f"incremental (newest 1% changed) <= {factor:g}x restic"
    other = theirs("restic", "incremental")
    if scattered:
        goals.append(unknown(name, "the goal is for the newest 1% (contiguous change); this run is --scattered"))
    else:
        goals.append(
            absent(name, "restic") if other is None else at_most(name, mine["incremental"], other, "restic", factor)
        )
    rss = {step: s.steps[step].peak_rss_bytes for step in ("full", "incremental", "restore")}
    detail = ", ".join(f"{step} {b / MB:.0f} MB" for step, b in rss.items())
    goals.append(Goal("peak RSS < 200 MB in every step", "ok" if max(rss.values()) < 200 * MB else "MISS", detail))
    goals.append(Goal("restore verified", "ok" if s.verified else "MISS", s.verify_detail))
    return goals


def scaling_goals(small: ScenarioRun, large: ScenarioRun) -> list[Goal]:
    a, b = ({r.tool: r for r in run.results}.get("strongroom") for run in (small, large))
    inc_name, rss_name = "incremental at the larger size <= 1.3x the smaller", "peak RSS at the larger size <= 1.1x"
    if a is None or b is None:
        why = "strongroom not selected or failed at one size"
        return [unknown(inc_name, why), unknown(rss_name, why)]
    ta, tb = a.steps["incremental"].durable_seconds, b.steps["incremental"].durable_seconds
    ra, rb = a.peak_rss_bytes, b.peak_rss_bytes
    return [
        at_most(inc_name, tb, ta, f"{small.size_gib:g} GiB", 1.3, f"{large.size_gib:g} GiB"),
        Goal(
            rss_name + " the smaller (no growth, 10% allowed for noise)",
            "ok" if rb <= 1.1 * ra else "MISS",
            f"{large.size_gib:g} GiB {rb / MB:.0f} MB / {small.size_gib:g} GiB {ra / MB:.0f} MB = x{rb / ra:.3f}",
        ),
    ]


def cli_goal(cli: dict[str, float]) -> Goal:
    return at_most(
        "CLI start: strongroom --version <= 2.5x python3 -c pass",
        cli["strongroom_version_s"],
        cli["python_pass_s"],
        "python3 -c pass",
        2.5,
        "strongroom --version",
    )


# ---------------------------------------------------------------------------------------------- scenarios


@dataclass
class ScenarioRun:
    name: str
    kind: str  # "plain" or "store"
    size_gib: float
    scattered: bool
    database: dict[str, Any]
    rows_changed: int
    limits: dict[str, Step]
    results: list[ToolResult]
    failed: dict[str, str] = field(default_factory=dict)  # tool -> why (its results are left out)
    goals: list[Goal] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "size_gib": self.size_gib,
            "change": "scattered" if self.scattered else "contiguous",
            "rows_changed": self.rows_changed,
            "database": self.database,
            "limits": {k: s.figures() for k, s in self.limits.items()},
            "results": [r.figures() for r in self.results],
            "failed": self.failed,
            "goals": [asdict(g) for g in self.goals],
        }


def run_scenario(
    name: str, kind: str, size_gib: float, tools: list[str], args: argparse.Namespace, count: int | None = None
) -> ScenarioRun:
    """Build (or reuse) the base, measure the limits on it, then every tool on its own copy; ``count`` rows change
    (default 1% of the rows)."""
    print(f"\n== scenario {name} ==", flush=True)
    work = args.work.resolve()
    base, db_info = base_database(work, kind, size_gib, args.skip_build)
    count = count or max(1, int(db_info["rows"] * CHANGE_FRACTION))
    limits = measure_limits(base.file, work / name)
    results: list[ToolResult] = []
    failed: dict[str, str] = {}
    for tool_name in tools:
        tool = TOOL_CLASSES[tool_name](work / name / tool_name)
        print(f"{tool.name}:", flush=True)
        try:
            results.append(bench_tool(tool, base, count, args.scattered, args.keep, measure_change=not results))
        except StepFailed as exc:  # the other tools still run; the report and the exit status say so
            print(f"FAILED\n{exc}", flush=True)
            failed[tool.name] = exc.summary
    run = ScenarioRun(name, kind, size_gib, args.scattered, db_info, count, limits, results, failed)
    run.goals = step_goals(kind, args.scattered, results, failed, limits)
    return run


# ---------------------------------------------------------------------------------------------- report


def fmt(x: float, spec: str = ".2f") -> str:
    return "-" if x != x else format(x, spec)  # NaN -> "-"


SCENARIO_TEXT = {
    "plain": "a plain SQLite file",
    "store": f"store database {STORE_DB!r}, encrypted at rest (restic and borg back up its encrypted file)",
}


def report(run: ScenarioRun) -> str:
    lines: list[str] = []
    out = lines.append
    db = run.database
    change = "rows at random (--scattered)" if run.scattered else "newest rows (contiguous)"
    out("")
    out(f"=== {run.name}: {SCENARIO_TEXT[run.kind]}")
    out(
        f"database: {db['bytes'] / MB:,.1f} MB ({db['bytes'] / GIB:.2f} GiB), {db['rows']:,} rows, WAL mode; "
        f"change: {run.rows_changed:,} {change} ({run.rows_changed / db['rows']:.2%} of the rows)"
    )
    if run.results and run.results[0].change:
        c = run.results[0].change
        out(
            f"  the change rewrote {c['pages_changed']:.1%} of the 4 KiB pages, "
            f"{c['blocks_64k_changed']:.1%} of the 64 KiB blocks"
        )
    out("")
    out("limits of this machine on the same file (child process, same launcher, same sync after)")
    for name, (step, label, template) in LIMITS.items():
        s = run.limits[name]
        out(
            f"  {label:<17} {s.seconds:>7.2f} s raw {s.durable_seconds:>7.2f} s durable"
            f" {fmt(s.mb_per_s, '.0f'):>6} MB/s {s.peak_rss_bytes / MB:>5.0f} MB RSS"
            f"   bounds {step}: {template.format(db='DB', out='OUT')}"
        )
    out("")
    out("raw s = the tool's wall time; dur s = raw + the os.sync() after it; MB/s = database MB / dur s")
    header = f"{'step':<12}" + "".join(f"{r.tool:>30}" for r in run.results) + f"{'limit':>20}{'sr/limit':>10}"
    sub = f"{'':<12}" + "".join(f"{'raw s':>8}{'dur s':>8}{'MB/s':>7}{'RSS MB':>7}" for _ in run.results)
    out(header)
    out(sub + f"{'dur s':>20}{'(dur)':>10}")
    by = {r.tool: r for r in run.results}
    for step in ("init", "full", "incremental", "restore"):
        cells = []
        for r in run.results:
            got = r.steps.get(step)
            if got is None:
                cells.append(f"{'-':>8}{'-':>8}{'-':>7}{'-':>7}")
            else:
                mbps = got.mb_per_s if step != "init" else float("nan")
                rss = got.peak_rss_bytes / MB
                cells.append(f"{got.seconds:>8.2f}{got.durable_seconds:>8.2f}{fmt(mbps, '.0f'):>7}{rss:>7.0f}")
        limit, tail = run.limits.get(LIMIT_FOR_STEP.get(step, "")), ""
        if limit is not None:
            label = f"{limit.name} {limit.durable_seconds:.2f}"
            ratio = "-"
            if "strongroom" in by:
                ratio = f"x{by['strongroom'].steps[step].durable_seconds / limit.durable_seconds:.2f}"
            tail = f"{label:>20}{ratio:>10}"
        out(f"{step:<12}" + "".join(cells) + tail)
    out("")
    out("repository size (MB, du -sb)")
    for step in ("full", "incremental"):
        out(
            f"  after {step:<12}" + "".join(f"{r.tool:>14} {r.steps[step].repo_bytes / MB:>9,.1f}" for r in run.results)
        )
    out(
        "  incremental added "
        + "".join(
            f"{r.tool:>14} {(r.steps['incremental'].repo_bytes - r.steps['full'].repo_bytes) / MB:>9,.1f}"
            for r in run.results
        )
    )
    out("")
    for tool, why in run.failed.items():
        out(f"FAILED {tool}: {why}")
    if not run.results:
        return "\n".join(lines)
    out("restore check")
    for r in run.results:
        out(f"  {r.tool:<13} verified={r.verified}  byte-identical={r.byte_identical}  {r.verify_detail}")
    out("")
    out("ranking on durable time (x = time / the fastest tool's), and strongroom against the limit")
    for step in ("full", "incremental", "restore"):
        ranked = sorted(run.results, key=lambda r: r.steps[step].durable_seconds)
        best = ranked[0].steps[step].durable_seconds
        cells = [
            f"{r.tool} {r.steps[step].durable_seconds:.2f} s x{r.steps[step].durable_seconds / best:.2f}"
            for r in ranked
        ]
        out(f"  {step:<12} " + " < ".join(cells))
    for r in run.results:
        inc = r.steps["incremental"].durable_seconds / r.steps["full"].durable_seconds
        out(f"  {r.tool:<13} incremental / full = {inc:.3f}   peak RSS {r.peak_rss_bytes / MB:.0f} MB")
    if "strongroom" in by and by["strongroom"].integrity_check_seconds:
        out(
            f"  note: strongroom's restore runs a structural check; PRAGMA integrity_check is opt-in "
            f"(restore --verify), and would add {by['strongroom'].integrity_check_seconds:.2f} s on the restored "
            "database (restic and borg check nothing of the kind)"
        )
    out("")
    out(f"goals ({run.name}, durable time)")
    lines.extend(g.line() for g in run.goals)
    return "\n".join(lines)


def scaling_report(small: ScenarioRun, large: ScenarioRun, goals: list[Goal]) -> str:
    which = "random" if small.scattered else "newest"
    lines = [
        "",
        f"=== scaling: the same {small.rows_changed:,} {which} rows changed at {small.size_gib:g} GiB and at "
        f"{large.size_gib:g} GiB",
        f"{'tool':<14}{'incremental dur s':>26}{'ratio':>8}{'incremental RSS MB':>26}{'ratio':>8}"
        f"{'peak RSS MB':>20}{'ratio':>8}",
    ]
    big = {r.tool: r for r in large.results}
    for a in small.results:
        if (b := big.get(a.tool)) is None:
            continue
        ta, tb = a.steps["incremental"].durable_seconds, b.steps["incremental"].durable_seconds
        ia, ib = a.steps["incremental"].peak_rss_bytes, b.steps["incremental"].peak_rss_bytes
        pa, pb = a.peak_rss_bytes, b.peak_rss_bytes
        lines.append(
            f"{a.tool:<14}{f'{ta:.2f} -> {tb:.2f}':>26}{tb / ta:>8.2f}{f'{ia / MB:.0f} -> {ib / MB:.0f}':>26}"
            f"{ib / ia:>8.2f}{f'{pa / MB:.0f} -> {pb / MB:.0f}':>20}{pb / pa:>8.2f}"
        )
    lines.append("")
    lines.append("goals (scaling)")
    lines.extend(g.line() for g in goals)
    return "\n".join(lines)


def machine_info(work: Path) -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "nproc": os.cpu_count(),
        "mem_gb": mem / 1e9,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "apsw": apsw.apsw_version(),
        "rss_floor_bytes": rss_floor(work),
    }


def machine_report(machine: dict[str, Any], versions: dict[str, str]) -> str:
    lines = [
        "",
        f"machine: {machine['nproc']} cores, {machine['mem_gb']:.0f} GB RAM, {machine['platform']}",
        f"python {machine['python']}, SQLite {machine['sqlite']}",
        *(f"  {tool}: {version}" for tool, version in versions.items()),
        "warm cache: every step reads a file that is in the page cache; same disk for source, repo and restore.",
        "MB = 10^6 bytes; RSS = the child's peak resident set (wait4); RSS floor (what a child that allocates "
        f"nothing shows) {machine['rss_floor_bytes'] / MB:.0f} MB.",
    ]
    return "\n".join(lines)


def pg_scenario() -> Any:
    """bench/pg_scenario.py, imported when a run needs it (it imports psycopg, and its helpers from this module:
    it must find this very module as ``bench``, not load a second copy of it)."""
    sys.modules.setdefault("bench", sys.modules[__name__])
    import pg_scenario

    return pg_scenario


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--scenario",
        default="plain",
        help="comma-separated: plain, store, scaling, postgres (default plain); one table each",
    )
    ap.add_argument("--size-gib", type=float, default=1.0, help="database size to build (default 1)")
    ap.add_argument("--scale-gib", type=float, default=4.0, help="the larger size of --scenario scaling (default 4)")
    ap.add_argument("--work", type=Path, default=HERE / "work", help="scratch directory (default bench/work)")
    ap.add_argument("--skip-build", action="store_true", help="reuse the base database of this size if present")
    ap.add_argument(
        "--tools",
        default=None,
        help=f"comma-separated, of strongroom,strongroom-s3,restic,borg (default {','.join(default_tools())}; -s3 "
        "needs boto3, moto); for --scenario postgres of strongroom,pg_dump,pgbackrest (default all three)",
    )
    ap.add_argument("--scattered", action="store_true", help="change 1%% of rows chosen at random, not the newest")
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    ap.add_argument("--build-only", action="store_true", help="build (or reuse) the base databases, then stop")
    ap.add_argument("--keep", action="store_true", help="keep the per-tool database copies and restored files")
    args = ap.parse_args(argv)
    args.tools_given = args.tools is not None
    args.tools = args.tools or ",".join(default_tools())
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    # --scenario postgres runs the tools of PG_TOOLS that --tools names (all three by default)
    pg_tools = [t for t in PG_TOOLS if t in tools] if args.tools_given else list(PG_TOOLS)
    tools = [t for t in tools if t in ALL_TOOLS or t not in PG_TOOLS]
    if unknown_tools := set(tools) - set(ALL_TOOLS):
        ap.error(f"unknown tools: {', '.join(sorted(unknown_tools))}")
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    if bad := set(scenarios) - set(SCENARIOS):
        ap.error(f"unknown scenarios: {', '.join(sorted(bad))}")
    if "strongroom-s3" in tools and (missing := s3_missing()):
        print(f"skipping strongroom-s3: {', '.join(missing)} not importable (pip install boto3 'moto[server]')")
        tools.remove("strongroom-s3")

    started = time.perf_counter()
    if scenarios == ["postgres"]:
        tools = [t for t in tools if t.startswith("strongroom")][:1]  # only its version line
    ensure_installed(tools + (pg_tools if "postgres" in scenarios else []))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("STRONGROOM_KEYRING", str(work / "keyring"))  # the bench stores' local key files
    if args.build_only:
        sqlite_scenarios = [s for s in scenarios if s != "postgres"]
        for kind in dict.fromkeys("store" if s == "store" else "plain" for s in sqlite_scenarios):
            base_database(work, kind, args.size_gib, args.skip_build)
        if "postgres" in scenarios:
            pg_scenario().base_cluster(work, args.size_gib, args.skip_build)
        if "scaling" in scenarios:
            base_database(work, "plain", args.scale_gib, args.skip_build)
        return 0
    versions = {t: TOOL_CLASSES[t](work / t).version() for t in tools}
    for tool, version in versions.items():
        print(f"{tool}: {version}")
    runs: list[ScenarioRun] = []
    pg_runs: list[Any] = []  # pg_scenario.PgRun
    scaling: dict[str, Any] | None = None
    texts: list[str] = []
    for scenario in scenarios:
        suffix = "-scattered" if args.scattered else ""
        if scenario == "postgres":
            pg_run = pg_scenario().run_postgres(
                scenario + suffix, args.size_gib, pg_tools, work, args.scattered, args.skip_build
            )
            pg_runs.append(pg_run)
            texts.append(pg_scenario().pg_report(pg_run))
        elif scenario == "scaling":
            small = run_scenario(f"scaling-{args.size_gib:g}GiB{suffix}", "plain", args.size_gib, tools, args)
            large_name = f"scaling-{args.scale_gib:g}GiB{suffix}"
            large = run_scenario(large_name, "plain", args.scale_gib, tools, args, count=small.rows_changed)
            goals = scaling_goals(small, large)
            runs += [small, large]
            texts += [report(small), report(large), scaling_report(small, large, goals)]
            scaling = {"small": small.name, "large": large.name, "goals": [asdict(g) for g in goals]}
        else:
            run = run_scenario(scenario + suffix, scenario, args.size_gib, tools, args)
            runs.append(run)
            texts.append(report(run))
    print("\nCLI start ...", flush=True)
    cli = cli_start(work)
    machine = machine_info(work)
    print(machine_report(machine, versions))
    for text in texts:
        print(text)
    goal = cli_goal(cli)
    print("")
    print(
        f"=== CLI start (median of {cli['runs']}): strongroom --version {cli['strongroom_version_s'] * 1000:.0f} ms, "
        f"python3 -c pass {cli['python_pass_s'] * 1000:.0f} ms, "
        f"x{cli['strongroom_version_s'] / cli['python_pass_s']:.2f}"
    )
    print(goal.line())
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        doc = {
            "machine": machine,
            "versions": versions,
            "warm_cache": True,
            "cli_start": {**cli, "goal": asdict(goal)},
            "scenarios": [r.figures() for r in runs] + [r.figures() for r in pg_runs],
            "scaling": scaling,
        }
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    every = [*runs, *pg_runs]
    ok = all(r.verified for run in every for r in run.results) and not any(run.failed for run in every)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
