"""`strongroom prune`: what no completed backup uses goes; a running backup's layer never does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner
from retention_util import ENC, PASS, Built, layers_on_disk

from strongroom import restore_file
from strongroom.backup import engine, layout, lifecycle
from strongroom.backup.owners import lock_content
from strongroom.backup.requests import BackupRequest
from strongroom.backup.retention import RetentionPolicy
from strongroom.cli import main
from strongroom.storage import open_storage
from strongroom.storage.base import TMP_SUFFIX

pytest_plugins = ("cloud_servers",)

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent
RUNNING = "may be running: its lock's owner is alive, or not provably gone and the lock is under 24h old"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "STRONGROOM_PASSPHRASE": PASS}


def _foreign_lock(hours_ago: float, op: str = "backup") -> bytes:
    """A lock as a backup on another host writes it: its owner can never be proved gone from here."""
    taken = time.time() - hours_ago * 3600
    return json.dumps({"host": "elsewhere", "boot_id": "b", "pid": 1, "started": "1", "op": op, "time": taken}).encode()


def _plant_layer(coll: str, layer: str, lock: bytes, files: int = 3) -> None:
    """A layer as a backup leaves it part way: its lock and some data files (through the storage API)."""
    storage = open_storage(coll)
    storage.put(f"{layer}/{layout.LOCK_PREFIX}7", lock)
    for n in range(files):
        storage.put(f"{layer}/data/{n}.pack", os.urandom(100))


def _big_db(path: Path, mib: int) -> list[tuple[int, int]]:
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, n INT, v BLOB)")
    with conn:
        conn.executemany("INSERT INTO t(n, v) VALUES (?, randomblob(65536))", [(i,) for i in range(mib * 16)])
    rows = [(int(r[0]), int(r[1])) for r in conn.execute("SELECT id, n FROM t ORDER BY id")]
    conn.close()
    return rows


CLI = [sys.executable, "-c", "from strongroom.cli import main; main()"]


def _start_backup(db: Path, coll: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "backup", coll, "--file", str(db), "--passphrase"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _files(layer: Path) -> set[Path]:
    """The layer's visible files (a writer's temp file becomes one of them when it commits)."""
    return {p for p in layer.rglob("*") if p.is_file() and not p.name.endswith(TMP_SUFFIX)}


def _wait_for_lock(coll: Path, proc: subprocess.Popen[bytes], known: set[Path]) -> Path:
    """Poll until the backup's BACKUP-LOCK appears (never a fixed sleep); the lock's layer dir."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for lock in coll.rglob(f"{layout.LOCK_PREFIX}*"):
            if lock.parent not in known and not lock.name.endswith(TMP_SUFFIX):
                return lock.parent
        assert proc.poll() is None, f"the backup ended before its lock was seen: {proc.stderr.read()!r}"  # type: ignore[union-attr]
    raise AssertionError("no BACKUP-LOCK appeared")


def test_prune_leaves_a_running_backup_alone_and_it_restores(tmp_path: Path) -> None:
    """Two processes: a real backup runs in a subprocess; prune runs here while it holds its lock,
    removes what is abandoned next to it, and the backup then completes and restores every row."""
    coll = tmp_path / "coll"
    small = Built(str(coll), tmp_path / "small.db")
    small.take(T0)
    old_foreign = "2026/01/04-090000.00"  # another host's backup, its lock 2 days old: taken as gone
    young_foreign = "2026/01/04-100000.00"  # another host's, an hour old: it may be running there
    _plant_layer(str(coll), old_foreign, _foreign_lock(48))
    _plant_layer(str(coll), young_foreign, _foreign_lock(1))
    big = tmp_path / "big.db"
    rows = _big_db(big, 96)
    known = {p.parent for p in coll.rglob(f"{layout.LOCK_PREFIX}*")}
    proc = _start_backup(big, str(coll))
    try:
        running = _wait_for_lock(coll, proc, known)
        files_then = _files(running)
        result = lifecycle.prune(str(coll))
        still_running = proc.poll() is None
        actions = {a.path: (a.action, a.reason) for a in result.actions}
        rel = "/" + running.relative_to(coll).as_posix()
        assert actions[rel] == ("kept", RUNNING)
        assert actions["/" + old_foreign] == ("removed", "a killed or canceled backup")
        assert actions["/" + young_foreign] == ("kept", RUNNING)
        assert not (coll / old_foreign).exists() and (coll / young_foreign / "data" / "0.pack").exists()
        assert files_then <= _files(running)  # the running backup lost nothing
        assert still_running, "the backup finished before prune ran: make the database bigger"
    finally:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    restore_file(str(coll), tmp_path / "restored.db", encryption=ENC)
    conn = apsw.Connection(str(tmp_path / "restored.db"))
    assert [(int(r[0]), int(r[1])) for r in conn.execute("SELECT id, n FROM t ORDER BY id")] == rows
    conn.close()
    # a shorter grace takes the young foreign lock as gone too
    result = lifecycle.prune(str(coll), grace=timedelta(minutes=30))
    assert [a.path for a in result.actions if a.action == "removed"] == ["/" + young_foreign]


def test_prune_removes_a_killed_backup_and_its_temp_files(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    Built(str(coll), tmp_path / "small.db").take(T0)
    big = tmp_path / "big.db"
    _big_db(big, 48)
    proc = _start_backup(big, str(coll))
    layer = _wait_for_lock(coll, proc, set())
    while proc.poll() is None and not any(p.suffix == ".pack" or TMP_SUFFIX in p.name for p in layer.rglob("*")):
        pass  # until it is writing data
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert dict(engine.show_backups_detail(str(coll)))["/" + layer.relative_to(coll).as_posix()] == "partial"
    code = CliRunner().invoke(main, ["prune", str(coll), "--format", "json"])
    assert code.exit_code == 0, code.output
    [action] = json.loads(code.output)
    assert (action["action"], action["reason"]) == ("removed", "a killed or canceled backup") and action["objects"] >= 1
    assert not layer.exists()  # files, temp files, lock and dir
    assert [s for _p, s in engine.show_backups_detail(str(coll))] == ["complete"]


def test_prune_finishes_a_forget_and_removes_orphans_and_stale_latest_files(tmp_path: Path) -> None:
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    first = b.take(T0)
    b.take(T0 + timedelta(hours=1), incremental=True)
    second = b.take(T0 + timedelta(days=1))
    inc = b.take(T0 + timedelta(days=1, hours=1), incremental=True)
    b.take(T0 + timedelta(days=2))
    storage = open_storage(b.coll)
    # a forget killed after marking the second chain's incremental and removing its manifest
    storage.put(f"{inc.strip('/')}/{layout.LOCK_PREFIX}9", _foreign_lock(30, op="forget"))
    storage.delete(f"{inc.strip('/')}/{layout.MANIFEST}")
    # the first full's dir removed by hand: its incremental and LATEST file are orphans
    for name, _size in storage.list(first.strip("/") + "/"):
        storage.delete(name)
    result = lifecycle.prune(b.coll)
    got = {(a.path, a.action, a.reason) for a in result.actions}
    assert (inc, "removed", "a forget was interrupted: finished") in got
    orphan = next(p for p in b.rows if p.startswith("/" + layout.incrementals_prefix(first)))
    assert (orphan, "removed", f"its full backup {first} is gone") in got
    assert any(a.reason == f"it names {first}, which is gone" for a in result.actions)
    assert layers_on_disk(b.coll) == {second, b.fulls[-1]}
    assert set(layout.latest_contents(storage)) == {second, b.fulls[-1]}
    for point in (second, b.fulls[-1]):
        assert b.restore_rows(point, tmp_path / "r.db") == b.rows[point]
    assert lifecycle.prune(b.coll).actions == []  # nothing left to do


def test_a_layer_that_lost_its_manifest_is_reported_not_removed(tmp_path: Path) -> None:
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    b.take(T0)
    inc = b.take(T0 + timedelta(hours=1), incremental=True)
    (Path(b.coll) / inc.strip("/") / layout.MANIFEST).unlink()
    [action] = lifecycle.prune(b.coll).actions
    assert (action.path, action.action) == (inc, "kept") and "strongroom check" in action.reason
    assert (Path(b.coll) / inc.strip("/") / "data").is_dir()


def test_locality_aware_files_are_forgotten_everywhere_or_pruned(tmp_path: Path) -> None:
    main_dir, west_dir = tmp_path / "main", tmp_path / "west"
    uris = (f"file://{main_dir}?COCKROACH_LOCALITY=default", f"file://{west_dir}?COCKROACH_LOCALITY=region%3Dus-west1")
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    rows = {}
    for day in range(3):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"day {day}",))
        rows[day] = conn.execute("SELECT count(*) FROM t").fetchall()[0][0]
        request = BackupRequest(into=uris, encryption=ENC)
        source = engine.DatabaseSource("app", db, region="us-west1")
        engine.backup(request, [source], clock=lambda day=day: T0 + timedelta(days=day))
    conn.close()
    fulls = [layout.full_subdir(T0 + timedelta(days=d)).strip("/") for d in range(3)]
    assert all((west_dir / f).is_dir() for f in fulls)
    # forget given every location removes a layer's files at each
    lifecycle.forget(uris, RetentionPolicy(last=2))
    assert not (main_dir / fulls[0]).exists() and not (west_dir / fulls[0]).exists()
    # given only the default location, the other's files stay, and prune with both removes them
    lifecycle.forget(str(main_dir), RetentionPolicy(last=1))
    assert not (main_dir / fulls[1]).exists() and any((west_dir / fulls[1]).rglob("*.pack"))
    [action] = lifecycle.prune(uris).actions
    assert (action.path, action.location, action.action) == ("/" + fulls[1], "region=us-west1", "removed")
    assert not (west_dir / fulls[1]).exists() and any((west_dir / fulls[2]).rglob("*.pack"))
    with engine.open_backup(uris, encryption=ENC) as reader:  # reads the packs at west: they are all there
        conn = reader.connect("app")
        assert conn.execute("SELECT count(*) FROM t").fetchall()[0][0] == rows[2]
        conn.close()


def test_prune_on_s3(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cloud = request.getfixturevalue("moto_s3")
    b = Built(cloud.uri(f"prune-{os.getpid()}-{time.monotonic_ns()}"), tmp_path / "app.db")
    full = b.take(T0)
    inc = b.take(T0 + timedelta(hours=1), incremental=True)
    _plant_layer(b.coll, "2026/01/04-090000.00", _foreign_lock(30))
    _plant_layer(b.coll, "2026/01/06-090000.00", lock_content())  # this process: running
    result = CliRunner().invoke(main, ["prune", b.coll, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert cloud.secret not in result.output
    got = {(a["path"], a["action"]) for a in json.loads(result.output)}
    assert got == {("/2026/01/04-090000.00", "removed"), ("/2026/01/06-090000.00", "kept")}
    storage = open_storage(b.coll)
    assert not list(storage.list("2026/01/04-090000.00/")) and list(storage.list("2026/01/06-090000.00/"))
    assert layers_on_disk(b.coll) == {full, inc}
    assert b.restore_rows(inc, tmp_path / "r.db") == b.rows[inc]


def test_prune_finishes_a_full_whose_forget_was_killed_right_after_its_lock(tmp_path: Path) -> None:
    """Killed between (a) and (b): the old full still has its manifest and its LATEST file. Prune
    removes both, and never the newest LATEST file."""
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    old = b.take(T0)
    new = b.take(T0 + timedelta(days=1))
    storage = open_storage(b.coll)
    latest_before = layout.latest_files(storage)
    assert [named for _n, named in latest_before] == [new, old]
    storage.put(f"{old.strip('/')}/{layout.LOCK_PREFIX}5", _foreign_lock(30, op="forget"))
    [action] = lifecycle.prune(b.coll).actions
    assert (action.path, action.action, action.reason) == (old, "removed", "a forget was interrupted: finished")
    assert layout.latest_files(storage) == latest_before[:1]
    assert layers_on_disk(b.coll) == {new} and not (Path(b.coll) / old.strip("/")).exists()
    assert b.restore_rows(new, tmp_path / "r.db") == b.rows[new]
