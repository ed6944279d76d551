"""A backup killed with SIGKILL at any moment never leaves LATEST (or a chain) pointing at a partial backup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from strongroom import Encryption, Store

PASS = Encryption(passphrase="crash-test")
COLL = "nodelocal://1/backups"

CHILD = textwrap.dedent(
    """
    import sys
    from strongroom import open_store, Encryption
    store = open_store(sys.argv[1])
    inc = sys.argv[2] if sys.argv[2] != "-" else None
    store.backup("nodelocal://1/backups", encryption=Encryption(passphrase="crash-test"), incremental=inc)
    print("finished")
    """
)


def _big_db(store: Store) -> None:
    store.create_database("big")
    conn = store.connect("big")
    conn.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)")
    with conn:
        conn.execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 24000) "
            "INSERT INTO blobs(b) SELECT randomblob(3000) FROM s"
        )
    conn.close()


def _kill_after(store: Store, incremental: str, delay: float) -> bool:
    """Start a backup in a child; SIGKILL it ``delay`` s after it starts writing. True if it was killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store.path), incremental],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    before = {p for p in (store.extern_dir / "backups").rglob("*")}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p not in before for p in (store.extern_dir / "backups").rglob("*")):
            break
        time.sleep(0.001)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def _latest_files(store: Store) -> list[str]:
    return sorted(os.listdir(store.extern_dir / "backups" / "metadata" / "latest"))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.35])
def test_killed_full_and_incremental_backups_leave_the_chain_usable(store: Store, fraction: float) -> None:
    _big_db(store)
    started = time.monotonic()
    store.backup(COLL, encryption=PASS)
    # Kill points are fractions of how long a backup takes here, whatever this machine's speed.
    delay = (time.monotonic() - started) * fraction
    latest = _latest_files(store)
    [full] = store.show_backups(COLL)
    conn = store.connect("big")
    with conn:
        conn.execute("UPDATE blobs SET b = randomblob(3000) WHERE id % 7 = 0")
    conn.close()

    killed_full = _kill_after(store, "-", delay)
    killed_inc = _kill_after(store, "LATEST", delay)
    assert killed_full or killed_inc, "the child finished before it could be killed: make the database bigger"

    if killed_full and _latest_files(store) == latest:
        assert store.show_backups(COLL) == [full]  # the partial full is neither LATEST nor listed
    elif killed_full:
        # Killed in the moment between writing LATEST and removing its lock: a complete backup.
        assert len(store.show_backups(COLL)) == 2 and len(_latest_files(store)) == len(latest) + 1
    chain = store.show_backup(COLL, encryption=PASS).manifests
    assert chain[0].backup_type == "full"
    assert chain[0].full_subdir == store.show_backups(COLL)[-1]

    # The collection still works: a new incremental and a restore of the newest complete layer.
    store.backup(COLL, encryption=PASS, incremental="LATEST")
    store.restore(COLL, encryption=PASS, databases=["big"], new_db_name="back")
    a, b = store.connect("big"), store.connect("back")
    q = "SELECT count(*), sum(length(b)), hex(b) FROM blobs WHERE id = 7"
    assert a.execute(q).fetchall() == b.execute(q).fetchall()
    assert b.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


RESTORE_CHILD = textwrap.dedent(
    """
    import sys
    from strongroom import open_store, Encryption
    store = open_store(sys.argv[1])
    store.restore("nodelocal://1/backups", encryption=Encryption(passphrase="crash-test"), databases=["big"],
                  new_db_name="copy")
    print("finished")
    """
)


def test_a_killed_restore_leaves_temp_files_the_next_restore_removes(store: Store) -> None:
    _big_db(store)
    store.backup(COLL, encryption=PASS)
    proc = subprocess.Popen(
        [sys.executable, "-c", RESTORE_CHILD, str(store.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    deadline = time.monotonic() + 60
    temps: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None and not temps:
        temps = [p for p in store.databases_dir.glob(".copy.db.*.restoring") if p.stat().st_size > 0]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert temps, "the restore never started writing"
    assert Path(f"{temps[0]}.lock").exists()  # left behind by the kill
    result = store.restore(COLL, encryption=PASS, databases=["big"], new_db_name="copy")
    assert result.status == "succeeded"
    assert [p.name for p in store.databases_dir.iterdir() if p.name.startswith(".")] == []


def test_a_running_restores_temp_files_are_left_alone(tmp_path: Path) -> None:
    import fcntl

    from strongroom.sqlite.image import remove_abandoned_restores

    dest = tmp_path / "db.db"
    running, gone = tmp_path / ".db.db.aaaa.restoring", tmp_path / ".db.db.bbbb.restoring"
    for temp in (running, gone):
        temp.write_bytes(b"partial")
        Path(f"{temp}.lock").touch()
    held = os.open(f"{running}.lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the restore that is still writing it does
    try:
        assert remove_abandoned_restores(dest) == [gone]
    finally:
        os.close(held)
    assert running.exists() and Path(f"{running}.lock").exists()
    assert not gone.exists() and not Path(f"{gone}.lock").exists()


def test_the_next_backup_removes_what_a_killed_backup_left(store: Store) -> None:
    """A backup killed with SIGKILL leaves its lock and partial files; the next backup on this host
    proves the owner gone (same boot, no such process) and removes them. A lock of a process that
    still runs, or of another host, is left alone."""
    _big_db(store)
    store.backup(COLL, encryption=PASS)
    coll = store.extern_dir / "backups"
    before = {p for p in coll.rglob("*") if p.is_file()}
    assert _kill_after(store, "-", 0.05), "the child finished before it could be killed"
    locks = [p for p in coll.rglob("BACKUP-LOCK-*")]
    assert locks, "the killed backup left no lock"
    alive = coll / "2099" / "01" / "01-000000.00" / "BACKUP-LOCK-7"
    alive.parent.mkdir(parents=True)
    from strongroom.backup.owners import lock_content

    alive.write_bytes(lock_content())  # this very process: alive
    foreign = coll / "2099" / "01" / "02-000000.00" / "BACKUP-LOCK-8"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b'{"host": "elsewhere", "boot_id": "x", "pid": 1, "started": "1"}')

    store.backup(COLL, encryption=PASS, incremental="LATEST")
    left = {p for p in coll.rglob("*") if p.is_file()} - before
    assert not any(p in left for p in locks)
    assert alive in left and foreign in left
    killed_layer = locks[0].parent
    assert not [p for p in killed_layer.rglob("*") if p.is_file()]  # temp files of its writers too
