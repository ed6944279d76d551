#!/usr/bin/env python3
"""Strongroom vs restic vs borg on one SQLite file, same disk, side by side.

    python bench/bench.py [--size-gib 1.0] [--work DIR] [--skip-build] [--tools strongroom,restic,borg]
                          [--scattered] [--json PATH] [--keep]

For each tool: full backup of a copy of the base database, a deterministic change to 1% of its rows,
an incremental backup, and a restore of the latest state into a fresh path, each step timed as a child
process (wall seconds, peak RSS from ``os.wait4``) with the repository size after it. Warm page cache
throughout (dropping it is not reliable here); see bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apsw

HERE = Path(__file__).resolve().parent
PASSPHRASE = "bench"
SEED = 20240601
CHANGE_FRACTION = 0.01
MB = 1_000_000
GIB = 1 << 30
ALL_TOOLS = ("strongroom", "strongroom-s3", "restic", "borg")


# ---------------------------------------------------------------------------------------------- running a step


@dataclass
class Step:
    """One measured child process."""

    name: str
    seconds: float
    peak_rss_bytes: int
    sync_seconds: float = 0.0  # os.sync() right after the step, untimed in `seconds`
    repo_bytes: int = 0  # repository / collection size after the step
    db_bytes: int = 0

    @property
    def mb_per_s(self) -> float:
        return self.db_bytes / MB / self.seconds if self.seconds > 0 else float("nan")


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
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}, f)
"""


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
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[0]} exited {got['code']} (log {log}):\n{tail}")
    return Step(name=log.stem, seconds=got["seconds"], peak_rss_bytes=got["maxrss_kib"] * 1024)


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


# ---------------------------------------------------------------------------------------------- the tools


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
    def full(self, db: Path) -> Step: ...

    @abstractmethod
    def incremental(self, db: Path) -> Step: ...

    @abstractmethod
    def restore(self, dest: Path) -> Step:
        """Restore the latest backup so that the database file ends up at ``dest``."""

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

    def full(self, db: Path) -> Step:
        return self.run("full", ["restic", "backup", "--repo", str(self.repo), str(db)])

    def incremental(self, db: Path) -> Step:
        # restic always deduplicates against the parent snapshot of the same path
        return self.run("incremental", ["restic", "backup", "--repo", str(self.repo), str(db)])

    def restore(self, dest: Path) -> Step:
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

    def full(self, db: Path) -> Step:
        return self.run("full", ["borg", "create", f"{self.repo}::full", str(db)])

    def incremental(self, db: Path) -> Step:
        return self.run("incremental", ["borg", "create", f"{self.repo}::inc", str(db)])

    def restore(self, dest: Path) -> Step:
        tree = dest.parent / "borg-target"
        tree.mkdir(parents=True)
        step = self.run("restore", ["borg", "extract", f"{self.repo}::inc"], cwd=tree)
        _move_restored_file(tree, dest)
        return step


class Strongroom(Tool):
    name = "strongroom"

    def env(self) -> dict[str, str]:
        return {"STRONGROOM_PASSPHRASE": PASSPHRASE}

    def version(self) -> str:
        out = output_of(["strongroom", "--version"])
        if out and "rror" not in out:
            return out
        from importlib.metadata import version

        return f"strongroom {version('strongroom')}"

    def full(self, db: Path) -> Step:
        return self.run("full", ["strongroom", "backup", str(self.repo), "--file", str(db), "--passphrase"])

    def incremental(self, db: Path) -> Step:
        return self.run(
            "incremental", ["strongroom", "backup", str(self.repo), "--file", str(db), "--incremental", "--passphrase"]
        )

    def restore(self, dest: Path) -> Step:
        return self.run("restore", ["strongroom", "restore", str(self.repo), "--file", str(dest), "--passphrase"])


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

    def full(self, db: Path) -> Step:
        return self.run("full", ["strongroom", "backup", self.collection, "--file", str(db), "--passphrase"])

    def incremental(self, db: Path) -> Step:
        cmd = ["strongroom", "backup", self.collection, "--file", str(db), "--incremental", "--passphrase"]
        return self.run("incremental", cmd)

    def restore(self, dest: Path) -> Step:
        return self.run("restore", ["strongroom", "restore", self.collection, "--file", str(dest), "--passphrase"])

    def repo_size(self) -> int:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sum(obj["Size"] for page in pages for obj in page.get("Contents", []))


TOOL_CLASSES: dict[str, type[Tool]] = {
    "strongroom": Strongroom,
    "strongroom-s3": StrongroomS3,
    "restic": Restic,
    "borg": Borg,
}


# ---------------------------------------------------------------------------------------------- install


def ensure_installed(tools: list[str]) -> None:
    """restic and borgbackup from the distribution, as root, if they are missing."""
    packages = {"restic": "restic", "borg": "borgbackup"}
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


def build_database(path: Path, size_bytes: int) -> dict[str, Any]:
    """One transaction, batched executemany, no journal and no syncs; WAL mode and checkpointed at the end."""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    start = time.perf_counter()
    conn = apsw.Connection(str(path))
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
        pages = conn.execute("PRAGMA page_count").fetchall()[0][0]
        if pages * 4096 >= size_bytes:
            break
        if rows % 200_000 == 0:
            print(f"  {rows:,} rows, {pages * 4096 / MB:,.0f} MB, {time.perf_counter() - start:.0f} s", flush=True)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    os.sync()
    info = {"rows": rows, "bytes": path.stat().st_size, "build_seconds": round(time.perf_counter() - start, 1)}
    return info


def base_database(work: Path, size_gib: float, skip_build: bool) -> tuple[Path, dict[str, Any]]:
    path = work / f"base-{size_gib:g}GiB.sqlite"
    marker = path.with_suffix(".json")
    if skip_build and path.exists() and marker.exists():
        info = json.loads(marker.read_text())
        if info.get("bytes") == path.stat().st_size:
            print(f"reusing {path} ({info['rows']:,} rows, {info['bytes'] / MB:,.0f} MB)")
            return path, info
    marker.unlink(missing_ok=True)
    print(f"building {path} (>= {size_gib:g} GiB) ...", flush=True)
    info = build_database(path, int(size_gib * GIB))
    marker.write_text(json.dumps(info))
    print(f"built {info['rows']:,} rows, {info['bytes'] / MB:,.0f} MB in {info['build_seconds']} s")
    return path, info


def change_rows(db: Path, scattered: bool) -> int:
    """Update 1% of the rows, the same way every time: a contiguous block of the newest ids, or uniform at random."""
    rng = random.Random(SEED + 1)
    conn = apsw.Connection(str(db))
    top = conn.execute("SELECT max(id) FROM orders").fetchall()[0][0]
    count = max(1, int(top * CHANGE_FRACTION))
    ids = sorted(rng.sample(range(1, top + 1), count)) if scattered else list(range(top - count + 1, top + 1))
    with conn:
        conn.executemany("UPDATE orders SET qty=qty+1, note=? WHERE id=?", [(make_note(rng), i) for i in ids])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    return count


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


def integrity_check_seconds(db: Path) -> float:
    """How long PRAGMA integrity_check takes on ``db``, as strongroom's restore runs it (32 MiB cache)."""
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.execute("PRAGMA cache_size = -32768").fetchall()
        start = time.perf_counter()
        conn.execute("PRAGMA integrity_check").fetchall()
        return time.perf_counter() - start
    finally:
        conn.close()


def db_facts(db: Path) -> dict[str, Any]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchall()[0][0]
        rows, qty = conn.execute("SELECT count(*), sum(qty) FROM orders").fetchall()[0]
    finally:
        conn.close()
    return {"integrity_check": check, "rows": rows, "sum_qty": qty}


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


def timed_step(tool: Tool, step: str, db_bytes: int, call: Any, *args: Any) -> Step:
    print(f"  {tool.name} {step} ...", end=" ", flush=True)
    result: Step = call(*args)
    start = time.perf_counter()
    os.sync()  # so this step's dirty pages are not written back during the next one
    result.sync_seconds = time.perf_counter() - start
    result.name, result.db_bytes, result.repo_bytes = step, db_bytes, tool.repo_size()
    print(f"{result.seconds:.2f} s, {result.peak_rss_bytes / MB:.0f} MB RSS, repo {result.repo_bytes / MB:,.0f} MB")
    return result


def bench_tool(tool: Tool, base: Path, scattered: bool, keep: bool, measure_change: bool) -> ToolResult:
    if tool.root.exists():
        shutil.rmtree(tool.root)
    tool.root.mkdir(parents=True)
    db = tool.root / "db.sqlite"
    shutil.copyfile(base, db)
    os.sync()
    result = ToolResult(tool=tool.name, version=tool.version())
    size = db.stat().st_size
    if (init := tool.init()) is not None:
        result.steps["init"] = init
        init.name, init.repo_bytes = "init", tool.repo_size()
        print(f"  {tool.name} init {init.seconds:.2f} s")
    result.steps["full"] = timed_step(tool, "full", size, tool.full, db)
    result.rows_changed = change_rows(db, scattered)
    os.sync()
    size = db.stat().st_size
    if measure_change:
        result.change = changed_fraction(base, db)
    result.steps["incremental"] = timed_step(tool, "incremental", size, tool.incremental, db)
    result.source_sha256 = sha256(db)  # after the tool has read it (a backup must not change the file)
    dest = tool.root / "restored" / "db.sqlite"
    dest.parent.mkdir()
    result.steps["restore"] = timed_step(tool, "restore", size, tool.restore, dest)
    result.restored_sha256 = sha256(dest)
    result.byte_identical = result.restored_sha256 == result.source_sha256
    want, got = db_facts(db), db_facts(dest)
    result.integrity_check_seconds = integrity_check_seconds(dest)
    result.verified = got == want and got["integrity_check"] == "ok"
    result.verify_detail = f"source {want}, restored {got}"
    if tool.name in ("restic", "borg"):  # they restore files: nothing less than the same bytes will do
        result.verified = result.verified and result.byte_identical
    print(f"  {tool.name} restore verified={result.verified} byte-identical={result.byte_identical}")
    if not keep:
        db.unlink()
        dest.unlink()
    return result


# ---------------------------------------------------------------------------------------------- report


def fmt(x: float, spec: str = ".2f") -> str:
    return "-" if x != x else format(x, spec)  # NaN -> "-"


def report(results: list[ToolResult], machine: dict[str, Any], db_info: dict[str, Any], scenario: str) -> str:
    lines: list[str] = []
    out = lines.append
    out("")
    out(f"machine: {machine['nproc']} cores, {machine['mem_gb']:.0f} GB RAM, {machine['platform']}")
    out(f"python {machine['python']}, SQLite {machine['sqlite']}")
    for r in results:
        out(f"  {r.tool}: {r.version}")
    out(
        f"database: {db_info['bytes'] / MB:,.1f} MB ({db_info['bytes'] / GIB:.2f} GiB), {db_info['rows']:,} rows, "
        f"WAL mode; change: {scenario}"
    )
    if results and results[0].change:
        c = results[0].change
        out(
            f"  the change rewrote {c['pages_changed']:.1%} of the 4 KiB pages, "
            f"{c['blocks_64k_changed']:.1%} of the 64 KiB blocks"
        )
    out("warm cache: every step reads a file that is in the page cache; same disk for source, repo and restore.")
    out(
        "MB = 10^6 bytes; MB/s = database bytes / wall seconds; RSS = the child's peak resident set (wait4);"
        f" RSS floor (what a child that allocates nothing shows) {machine['rss_floor_bytes'] / MB:.0f} MB."
    )
    out("")
    width = 26
    header = f"{'step':<12}" + "".join(f"{r.tool:>{width}}" for r in results)
    sub = f"{'':<12}" + "".join(f"{'s':>8}{'MB/s':>9}{'RSS MB':>9}" for _ in results)
    out(header)
    out(sub)
    for step in ("init", "full", "incremental", "restore"):
        cells = []
        for r in results:
            s = r.steps.get(step)
            if s is None:
                cells.append(f"{'-':>8}{'-':>9}{'-':>9}")
            else:
                mbps = s.mb_per_s if step != "init" else float("nan")
                cells.append(f"{s.seconds:>8.2f}{fmt(mbps, '.0f'):>9}{s.peak_rss_bytes / MB:>9.0f}")
        out(f"{step:<12}" + "".join(cells))
    out(
        f"{'sync after':<12}"
        + "".join(f"{sum(s.sync_seconds for s in r.steps.values()):>8.2f}{'':>18}" for r in results)
    )
    out("")
    out("repository size (MB, du -sb)")
    for step in ("full", "incremental"):
        out(f"  after {step:<12}" + "".join(f"{r.tool:>12} {r.steps[step].repo_bytes / MB:>9,.1f}" for r in results))
    out(
        "  incremental added "
        + "".join(
            f"{r.tool:>12} {(r.steps['incremental'].repo_bytes - r.steps['full'].repo_bytes) / MB:>9,.1f}"
            for r in results
        )
    )
    out("")
    out("restore check")
    for r in results:
        out(f"  {r.tool:<11} verified={r.verified}  byte-identical={r.byte_identical}  {r.verify_detail}")
    out("")
    out("ratios")
    by = {r.tool: r for r in results}
    for r in results:
        inc = r.steps["incremental"].seconds / r.steps["full"].seconds
        out(f"  {r.tool:<11} incremental / full time = {inc:.3f}   peak RSS {r.peak_rss_bytes / MB:.0f} MB")
    if "restic" in by:
        base = by["restic"]
        for r in results:
            if r.tool == "restic":
                continue
            full = r.steps["full"].mb_per_s / base.steps["full"].mb_per_s
            inc = base.steps["incremental"].seconds / r.steps["incremental"].seconds
            rest = r.steps["restore"].mb_per_s / base.steps["restore"].mb_per_s
            out(
                f"  {r.tool:<11} vs restic: full throughput x{full:.2f}, incremental x{inc:.2f} faster, "
                f"restore throughput x{rest:.2f}"
            )
    if "strongroom" in by:
        s = by["strongroom"]
        out("")
        out("strongroom goals")
        inc = s.steps["incremental"].seconds / s.steps["full"].seconds
        checks = [
            (f"incremental < 15% of full time: {inc:.1%}", inc < 0.15),
            (f"peak RSS < 200 MB: {s.peak_rss_bytes / MB:.0f} MB", s.peak_rss_bytes < 200 * MB),
            (f"restore verified: {s.verified}", s.verified),
        ]
        if "restic" in by:
            full = s.steps["full"].mb_per_s / by["restic"].steps["full"].mb_per_s
            rest = s.steps["restore"].mb_per_s / by["restic"].steps["restore"].mb_per_s
            checks.insert(0, (f"full >= 3x restic's throughput: x{full:.2f}", full >= 3))
            checks.insert(2, (f"restore >= 2x restic's throughput: x{rest:.2f}", rest >= 2))
        for text, ok in checks:
            out(f"  [{'ok' if ok else 'MISS'}] {text}")
        check = s.integrity_check_seconds
        out(
            f"  note: strongroom's restore runs a structural check; PRAGMA integrity_check is opt-in "
            f"(restore --verify), and would add {check:.2f} s on the restored file "
            "(restic and borg check nothing of the kind)"
        )
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=1.0, help="database size to build (default 1)")
    ap.add_argument("--work", type=Path, default=HERE / "work", help="scratch directory (default bench/work)")
    ap.add_argument("--skip-build", action="store_true", help="reuse the base database of this size if present")
    ap.add_argument(
        "--tools", default=",".join(ALL_TOOLS), help="comma-separated: strongroom,strongroom-s3,restic,borg"
    )
    ap.add_argument("--scattered", action="store_true", help="change 1%% of rows chosen at random, not the newest")
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    ap.add_argument("--build-only", action="store_true", help="build (or reuse) the base database, then stop")
    ap.add_argument("--keep", action="store_true", help="keep the per-tool database copies and restored files")
    args = ap.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if unknown := set(tools) - set(ALL_TOOLS):
        ap.error(f"unknown tools: {', '.join(sorted(unknown))}")

    started = time.perf_counter()
    ensure_installed(tools)
    work = args.work.resolve()
    instances = [TOOL_CLASSES[t](work / t) for t in tools]
    for t in instances:
        print(f"{t.name}: {t.version()}")
    base, db_info = base_database(work, args.size_gib, args.skip_build)
    if args.build_only:
        return 0
    scenario = "1% of rows at random (--scattered)" if args.scattered else "the newest 1% of rows (contiguous)"
    results = []
    for i, tool in enumerate(instances):
        print(f"{tool.name}:", flush=True)
        results.append(bench_tool(tool, base, args.scattered, args.keep, measure_change=i == 0))
    machine = machine_info(work)
    print(report(results, machine, db_info, scenario))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        doc = {
            "machine": machine,
            "database": db_info,
            "scenario": "scattered" if args.scattered else "contiguous",
            "warm_cache": True,
            "results": [
                {**asdict(r), "steps": {k: {**asdict(s), "mb_per_s": s.mb_per_s} for k, s in r.steps.items()}}
                for r in results
            ],
        }
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(r.verified for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
