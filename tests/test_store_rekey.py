"""Data key rotation re-keys databases online: nobody waits long, nobody fails, nothing is lost.

While ``rotate_data_keys`` re-keys a 48 MB database, readers and a writer in this process and a
reader/writer in another keep going on connections opened before the rotation. Afterwards the
file opens with the new key only, the old key is gone from the registry, and the WAL holds no
frame from before the re-key. Also: a long read transaction keeps its snapshot (and writers are
not held up by it), back-to-back rotations, the schedule (``if_due``), data keys kept exactly as
long as a file uses them, and a backup taken in the middle of a re-key.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import apsw
import pytest
from store_workload import DATABASES, REGIONS, Child, RowLog, Writer, build_store, commit_row

from strongroom import Encryption, Store
from strongroom.errors import EncryptionError
from strongroom.sqlite import apply_key
from strongroom.sqlite.connect import connect
from strongroom.store.keys import FileKey, Registry, generations

BIG_MB = 48
PASS = Encryption(passphrase="rekey-backup")
COLL = "nodelocal://1/rekey"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = build_store(tmp_path / "store", big_mb=BIG_MB)
    yield store
    store.close()


class Reader(threading.Thread):
    """Counts ``committed`` rows and reads blobs in a loop, noting when each read ended."""

    def __init__(self, store: Store) -> None:
        super().__init__(daemon=True)
        self.conn = store.connect("big")
        self.counts: list[tuple[float, int]] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                (count,) = self.conn.execute("SELECT count(*) FROM committed").fetchall()[0]
                self.conn.execute("SELECT sum(length(b)) FROM blobs WHERE id % 97 = ?", (len(self.counts) % 97,))
                self.counts.append((time.monotonic(), count))
        except BaseException as exc:
            self.errors.append(exc)

    def finish(self) -> list[BaseException]:
        self.stop.set()
        self.join()
        self.conn.close()
        return self.errors


def ids(store: Store, name: str) -> set[int]:
    conn = store.connect(name)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM committed")}
    finally:
        conn.close()


def opens_with(path: Path, key: bytes) -> bool:
    """Whether a raw connection keyed with ``key`` reads the database (its WAL included)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        apply_key(conn, key)
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        return True
    except apsw.NotADBError:
        return False
    finally:
        conn.close()


def wal_frames(path: Path) -> tuple[int, int]:
    """(frames of the current WAL generation, frames left over from older ones) in ``path``-wal."""
    data = Path(f"{path}-wal").read_bytes() if Path(f"{path}-wal").exists() else b""
    if len(data) < 32:
        return 0, 0
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    current = stale = 0
    for offset in range(32, len(data) - 24 - page_size + 1, 24 + page_size):
        if data[offset + 8 : offset + 16] == salts:
            current += 1
        else:
            stale += 1
    return current, stale


def page_count(store: Store, name: str) -> int:
    conn = store.connect(name)
    try:
        return int(conn.execute("PRAGMA page_count").fetchall()[0][0])
    finally:
        conn.close()


def registry(store: Store, region: str) -> Registry:
    keys = store.region_keys(region)
    keys.refresh()
    return keys.registry


def test_rekey_under_load_from_threads_and_another_process(store: Store, tmp_path: Path) -> None:
    big = store.database_path("big")
    old_keys = {name: store.database_key(name) for name in DATABASES}
    log = RowLog(tmp_path / "rows.log")
    other = Child()
    other.start(store.path, "read_write", tmp_path / "other.log")
    readers = [Reader(store) for _ in range(2)]
    writer = Writer(store, DATABASES, log)
    for thread in (*readers, writer):
        thread.start()
    writer.wait_for(30)

    started = time.monotonic()
    rekeyed = store.rotate_data_keys()
    ended = time.monotonic()
    writer.wait_for(writer.committed + 30)  # everyone goes on after the rotation, on the new key
    time.sleep(0.1)
    errors = [e for r in readers for e in r.finish()] + writer.finish()
    report = other.stop()
    log.close()

    assert rekeyed == {"east": ["big", "ledger"], "west": ["accounts"]}
    assert errors == [] and report["errors"] == []
    logged, _events = RowLog.read(tmp_path / "rows.log")
    for name in DATABASES:
        assert logged[name] <= ids(store, name), name
    assert set(report["written"]) <= ids(store, "big")  # type: ignore[arg-type]
    for counts in [[c for _t, c in r.counts] for r in readers] + [report["counts"]]:
        assert counts == sorted(counts)  # type: ignore[type-var]
    for r in readers:  # each reader read while the database was being re-keyed, and after
        assert any(started < t < ended for t, _c in r.counts)
        assert any(t > ended for t, _c in r.counts)

    # Only the new key opens the files; the old data keys left the registry.
    for name in DATABASES:
        path, new_key = store.database_path(name), store.database_key(name)
        assert new_key != old_keys[name]
        assert opens_with(path, new_key) and not opens_with(path, old_keys[name])
        with pytest.raises(EncryptionError, match="wrong key or cipher"):
            connect(path, key=old_keys[name])
    for region in REGIONS:
        reg = registry(store, region)
        assert set(reg.data_keys) == {reg.active_data_key_id}
        assert {f.key_id for f in reg.files.values()} == {reg.active_data_key_id}
        assert not any(f.rekey_to for f in reg.files.values())

    # The WAL was restarted after the re-key: no frame of an older WAL generation is left in the
    # file, and far fewer frames than the re-key wrote (one per page), so none from before it either.
    conn = store.connect("big")  # an open connection keeps the WAL from being deleted
    try:
        conn.execute("SELECT count(*) FROM committed").fetchall()
        current, stale = wal_frames(big)
        assert stale == 0 and current < page_count(store, "big") // 4, (current, stale)
    finally:
        conn.close()


def test_a_long_read_keeps_its_snapshot_and_holds_up_no_writer(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store", big_mb=8)
    reader = store.connect("big")
    reader.execute("BEGIN")
    (before,) = reader.execute("SELECT count(*) FROM committed").fetchall()[0]
    digest = reader.execute("SELECT sum(length(b)), max(id) FROM blobs").fetchall()

    stalls: list[float] = []
    stop = threading.Event()
    log = RowLog(tmp_path / "rows.log")

    def write() -> None:
        conn = store.connect("big")
        while not stop.is_set():
            began = time.monotonic()
            commit_row(conn, log, "big")
            stalls.append(time.monotonic() - began)
            time.sleep(0.005)
        conn.close()

    rotation: dict[str, object] = {}
    writer = threading.Thread(target=write)
    rotator = threading.Thread(target=lambda: rotation.update(store.rotate_data_keys()))
    writer.start()
    rotator.start()
    held = time.monotonic()
    while time.monotonic() - held < 2.5:  # the reader's snapshot stays readable, and unchanged
        assert reader.execute("SELECT count(*) FROM committed").fetchall()[0][0] == before
        assert reader.execute("SELECT sum(length(b)), max(id) FROM blobs").fetchall() == digest
        time.sleep(0.05)
    reader.execute("COMMIT")
    after = reader.execute("SELECT count(*) FROM committed").fetchall()[0][0]  # follows the new key
    rotator.join()
    stop.set()
    writer.join()
    log.close()

    assert rotation == {"east": ["big", "ledger"], "west": ["accounts"]}
    assert after > before
    assert max(stalls) < 1.5, f"a writer waited {max(stalls):.2f} s for the long reader"
    reader.close()


def test_two_rotations_in_a_row(store: Store, tmp_path: Path) -> None:
    conn = store.connect("ledger")  # opened before both rotations
    log = RowLog(tmp_path / "rows.log")
    keys = [store.database_key("ledger")]
    for _ in range(2):
        store.rotate_data_keys()
        keys.append(store.database_key("ledger"))
        commit_row(conn, log, "ledger")
    log.close()
    assert len(set(keys)) == 3
    path = store.database_path("ledger")
    assert [opens_with(path, k) for k in keys] == [False, False, True]
    reg = registry(store, "east")
    assert set(reg.data_keys) == {reg.active_data_key_id}
    assert RowLog.read(tmp_path / "rows.log")[0]["ledger"] <= ids(store, "ledger")
    conn.close()


def test_scheduled_rotation_runs_only_when_due(tmp_path: Path) -> None:
    # A period of two seconds, not one: a data key's creation time is kept to the second, so a key
    # may look up to a second older than it is.
    store = build_store(tmp_path / "store", big_mb=1, rotation_period=timedelta(seconds=2))
    created = time.monotonic()
    east_key = registry(store, "east").active_data_key_id
    assert store.rotate_data_keys(if_due=True) == {}
    time.sleep(1.5)
    store.rotate_data_keys(region="west")  # west's key is younger than east's: not due with it
    west_key = registry(store, "west").active_data_key_id
    time.sleep(created + 2.2 - time.monotonic())
    assert store.rotate_data_keys(if_due=True) == {"east": ["big", "ledger"]}
    assert registry(store, "east").active_data_key_id != east_key
    assert registry(store, "west").active_data_key_id == west_key
    assert store.rotate_data_keys(region="east", if_due=True) == {}  # its new key is not due


def test_data_keys_stay_exactly_as_long_as_a_file_uses_them() -> None:
    reg = Registry(store_key_id="s", active_data_key_id="")
    old, moving_to, active = (reg.add_data_key(under_cmek=False) for _ in range(3))
    unused = reg.add_data_key(under_cmek=False)
    reg.active_data_key_id = active
    reg.files = {"a": FileKey(old, rekey_to=moving_to), "b": FileKey(active)}
    assert reg.drop_unused_data_keys() == [unused]
    assert set(reg.data_keys) == {old, moving_to, active}
    reg.files = {"a": FileKey(active), "b": FileKey(active)}
    assert sorted(reg.drop_unused_data_keys()) == sorted([old, moving_to])
    assert set(reg.data_keys) == {active}


def test_an_interrupted_rekey_keeps_both_keys_until_a_rotation_completes(store: Store, tmp_path: Path) -> None:
    east = store.keys_dir / "east"
    first = registry(store, "east").active_data_key_id
    child = Child()
    before = generations(east)[0]
    child.start(store.path, "rotate_data_keys", tmp_path / "rows.log")
    while generations(east)[0] < before + 2 and child.proc.poll() is None:
        pass  # generation 2 of the rotation records that "big" moves to the new key
    assert child.kill(), "the rotation finished before it could be interrupted"

    store = Store.open(store.path)
    reg = registry(store, "east")
    second = reg.active_data_key_id
    assert second != first
    assert reg.files["big"] in (FileKey(first, rekey_to=second), FileKey(second))
    assert reg.files["ledger"].key_id == first  # not re-keyed yet: the old key must stay
    assert {first, second} <= set(reg.data_keys)
    assert reg.copy().drop_unused_data_keys() == []
    store.rotate_store_key(region="east")  # another change to the registry keeps them too
    assert {first, second} <= set(registry(store, "east").data_keys)
    for name in DATABASES:
        assert ids(store, name) >= RowLog.read(tmp_path / "rows.log")[0].get(name, set())

    store.rotate_data_keys(region="east")
    reg = registry(store, "east")
    assert set(reg.data_keys) == {reg.active_data_key_id}
    assert first not in reg.data_keys and second not in reg.data_keys


@pytest.mark.parametrize("offset", [0.0, 0.3, 0.6])
def test_a_backup_taken_during_a_rekey_restores(store: Store, offset: float) -> None:
    def digest(name: str) -> str:
        conn = store.connect(name)
        h = hashlib.sha256()
        for row in conn.execute("SELECT id, b FROM blobs ORDER BY id"):
            h.update(str(row[0]).encode() + row[1])
        conn.close()
        return h.hexdigest()

    expected = digest("big")
    started = time.monotonic()
    store.rotate_data_keys(region="east")
    rekey_seconds = time.monotonic() - started

    rotator = threading.Thread(target=store.rotate_data_keys, kwargs={"region": "east"})
    rotator.start()
    time.sleep(offset * rekey_seconds)
    store.backup(COLL, encryption=PASS, databases=["big"])
    rotator.join()
    store.restore(COLL, encryption=PASS, databases=["big"], new_db_name="restored")
    assert digest("restored") == expected


def test_a_rotation_waits_for_a_restore_writing_a_database_of_its_region(store: Store) -> None:
    """A rotation forgets the keys of files that do not exist: not of one a restore is still writing."""
    store.backup(COLL, encryption=PASS, databases=["big"])
    east = store.keys_dir / "east"
    before = generations(east)[0]
    failed: list[BaseException] = []

    def restore() -> None:
        try:
            store.restore(COLL, encryption=PASS, databases=["big"], new_db_name="copy")
        except BaseException as exc:
            failed.append(exc)

    restorer = threading.Thread(target=restore)
    restorer.start()
    while generations(east)[0] == before and restorer.is_alive():
        time.sleep(0.001)  # the restore recorded the new database's key: it is writing the file now
    assert store.rotate_data_keys(region="east") == {"east": ["big", "copy", "ledger"]}
    restorer.join()
    assert failed == []
    assert store.database_key("copy") == store.database_key("big")
    conn = store.connect("copy")
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT count(*) FROM blobs").fetchall() == [(BIG_MB * (1 << 20) // 4000,)]
    conn.close()


def test_a_connection_follows_a_rekey_whose_end_was_never_recorded(store: Store, tmp_path: Path) -> None:
    """Killed after SQLite committed the re-key, before the registry said so: the file's recorded key
    no longer opens it, the one it was moving to does, and an old connection must find that one."""
    conn = store.connect("big")
    before_rows = conn.execute("SELECT count(*) FROM committed").fetchall()
    east, path = store.keys_dir / "east", store.database_path("big")
    first = registry(store, "east").files["big"].key_id
    child = Child()
    before = generations(east)[0]
    child.start(store.path, "rotate_data_keys", tmp_path / "rows.log")
    while generations(east)[0] < before + 2 and child.proc.poll() is None:
        pass  # generation 2 of the rotation records that "big" moves to the new key
    second = registry(store, "east").files["big"].rekey_to
    assert second is not None
    new_key = registry(store, "east").data_keys[second].key
    while not opens_with(path, new_key) and child.proc.poll() is None:
        pass  # until SQLite committed the re-key
    assert child.kill(), "the rotation finished before it could be interrupted"
    assert registry(store, "east").files["big"] == FileKey(first, rekey_to=second)

    assert conn.execute("SELECT count(*) FROM committed").fetchall() >= before_rows
    log = RowLog(tmp_path / "after.log")
    commit_row(conn, log, "big")  # and writes under the new key
    log.close()
    conn.close()
    assert store.database_key("big") == new_key
