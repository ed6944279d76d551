"""Every key operation survives kill -9 at any point: the store opens and no committed row is lost.

A child process (tests/store_workload.py) opens a store of two regions and three databases (one of
them 16 MB, so re-keying it takes a measurable time), commits numbered rows into every database,
logging each id after its commit, and runs one operation. The parent first lets the operation
finish to measure it, then kills it with SIGKILL at fractions of that duration and right after
each key-file commit (found by polling the key folders for a new generation). After every kill:
the store opens (or, for a revocation, refuses with the revocation error until the revocation is
completed and CMEK enabled again), every logged row is in its database, ``integrity_check`` is ok,
the interrupted operation runs to completion, and the rows are still all there.

Then the states a kill leaves in windows too narrow to hit by timing, made on purpose: temp key
files (complete, or torn) and an older generation left beside a newer one; a drop killed between
its unlinks; a create killed the moment its file appears.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_workload import CMEK, DATABASES, OTHER_CMEK, REGIONS, SCRATCH, Child, RowLog, build_store, operations

from strongroom import Encryption, Store
from strongroom.errors import KMSError
from strongroom.kms import create_key
from strongroom.store.keys import ENABLED, REVOKED, generations

BIG_MB = 16
PASS = Encryption(passphrase="crash-test")
COLL = "nodelocal://1/crash"
FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
REVOKED_ERROR = re.compile(
    r'region "(east|west)" cannot start: its CMEK local:///cmek was revoked \([0-9T:+-]+\); after restoring '
    r"the store's access to the key, enable it again \(strongroom cmek enable\)"
)


def commits(store: Path) -> int:
    """Key-file generations committed so far, over every region."""
    return sum((generations(store / "keys" / r) or [0])[0] for r in REGIONS)


def kill_after(child: Child, store: Path, before: int, nth: int, delay: float, timeout: float = 10) -> bool:
    """SIGKILL ``delay`` s after the ``nth`` key-file commit since ``before`` (at once for 0)."""
    deadline = time.monotonic() + timeout
    while commits(store) < before + nth and child.proc.poll() is None and time.monotonic() < deadline:
        pass  # poll as fast as we can: the kill should land right after the link
    time.sleep(delay)
    return child.kill()


def all_rows(store: Store, name: str) -> set[int]:
    """The ids in ``name`` (none if its table was not created yet), after checking the file."""
    conn = store.connect(name)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], name
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)], name
        if not conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'committed'").fetchall():
            return set()
        return {r[0] for r in conn.execute("SELECT id FROM committed")}
    finally:
        conn.close()


def check_rows(store: Store, log: Path) -> None:
    """Every logged row of every database is there, and every database passes integrity_check."""
    logged, events = RowLog.read(log)
    for name in DATABASES:
        missing = logged.get(name, set()) - all_rows(store, name)
        assert not missing, f"{name}: committed rows lost: {sorted(missing)[:10]}"
    if store.has_database(SCRATCH):  # created, or dropped only in part: it opens and is whole
        rows = all_rows(store, SCRATCH)
        if f"dropping {SCRATCH}" not in events:
            assert logged.get(SCRATCH, set()) <= rows
    else:  # never created, or the drop began
        assert f"dropping {SCRATCH}" in events or not logged.get(SCRATCH)


def reopen(path: Path, op: str) -> Store:
    """Open the store after a kill; a revocation must be completed first (and CMEK enabled again)."""
    try:
        return Store.open(path)
    except KMSError as exc:
        assert op == "revoke_cmek", exc
        assert REVOKED_ERROR.fullmatch(str(exc)), str(exc)
    locked = Store.open(path, unlock=False)
    locked.revoke_cmek()  # completes it: every region revoked
    for region in REGIONS:
        assert locked.keys.spec_on_disk(region).status == REVOKED
    with pytest.raises(KMSError) as refused:
        Store.open(path)
    assert REVOKED_ERROR.fullmatch(str(refused.value)), str(refused.value)
    Store.open(path, unlock=False).enable_cmek(dict.fromkeys(REGIONS, CMEK))
    return Store.open(path)


def complete(store: Store, op: str, log: RowLog) -> None:
    """Run the operation again to completion and check it took effect."""
    if op == "revoke_cmek":
        store.revoke_cmek()
        Store.open(store.path, unlock=False).enable_cmek(dict.fromkeys(REGIONS, CMEK))
        store = Store.open(store.path)
    elif op == "create_drop":
        store.drop_database(SCRATCH, if_exists=True)
        store.create_database(SCRATCH, region="west")  # a new, empty database: nothing of the dropped one
        conn = store.connect(SCRATCH)
        assert conn.execute("SELECT name FROM sqlite_schema").fetchall() == []
        conn.close()
        store.drop_database(SCRATCH)
        operations(store, log)["create_drop"]()
        assert not store.has_database(SCRATCH)
    else:
        operations(store, log)[op]()
    status = {s.region: s for s in store.encryption_status()}
    if op in ("enable_cmek", "rotate_cmek_version", "revoke_cmek"):
        assert all(status[r].cmek and status[r].status == ENABLED and status[r].key_uri == CMEK for r in REGIONS)
    if op == "rotate_cmek_uri":
        assert all(status[r].status == ENABLED and status[r].key_uri == OTHER_CMEK for r in REGIONS)
    if op == "rotate_data_keys":  # every database is on its region's active data key, the old keys are gone
        for r in REGIONS:
            [key] = status[r].data_keys
            assert key.active and key.files == sum(1 for region in DATABASES.values() if region == r)


def make_template(path: Path, *, cmek: str | None) -> Path:
    create_key("cmek")
    create_key("cmek-next")
    build_store(path, big_mb=BIG_MB, cmek=cmek).close()
    return path


@pytest.fixture
def template(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    op = request.node.callspec.params["op"]
    cmek = CMEK if op in ("rotate_cmek_uri", "rotate_cmek_version", "revoke_cmek") else None
    return make_template(tmp_path / "template", cmek=cmek)


@pytest.fixture
def template_plain(tmp_path: Path) -> Path:
    return make_template(tmp_path / "template", cmek=None)


class Runs:
    """Fresh copies of the template store, each with a child spawned ahead for it."""

    def __init__(self, template: Path, root: Path) -> None:
        self.template, self.root = template, root
        self.count = 0
        self.next_child = Child()

    def __iter__(self) -> Iterator[tuple[Path, Path, Child]]:
        return self

    def __next__(self) -> tuple[Path, Path, Child]:
        self.count += 1
        path = self.root / f"run{self.count}"
        shutil.copytree(self.template, path)
        child, self.next_child = self.next_child, Child()
        return path, self.root / f"rows{self.count}.log", child

    def close(self) -> None:
        self.next_child.proc.kill()
        self.next_child.proc.communicate()


OPS = ("rotate_data_keys", "rotate_store_key", "enable_cmek", "rotate_cmek_uri", "rotate_cmek_version", "revoke_cmek")


@pytest.mark.parametrize("op", [*OPS, "create_drop"])
def test_killed_key_operation_loses_no_committed_row(template: Path, tmp_path: Path, op: str) -> None:
    runs = Runs(template, tmp_path)
    try:
        # Measure: the operation runs to completion with the writer going, no error anywhere.
        path, log, child = next(runs)
        before = commits(path)
        child.start(path, op, log)
        duration = child.finish()
        commit_points = commits(path) - before
        assert commit_points >= len(REGIONS)
        store = reopen(path, op)
        check_rows(store, log)

        # (commits to wait for, then seconds to wait): fractions of the duration; each commit point;
        # and halfway to the next commit after the first ones (fast operations have short gaps).
        gap = duration / commit_points
        kills = [(0, f * duration) for f in FRACTIONS] + [(n, 0.0) for n in range(1, commit_points + 1)]
        kills += [(n, gap / 2) for n in range(1, min(commit_points, 3))]
        interrupted = half_done = mid_rekey = 0

        def kill_and_check(nth: int, delay: float) -> None:
            nonlocal interrupted, half_done, mid_rekey
            path, log, child = next(runs)
            before = commits(path)
            child.start(path, op, log)
            interrupted += kill_after(child, path, before, nth, delay)
            half_done += 0 < commits(path) - before < commit_points
            store = reopen(path, op)
            if op == "rotate_data_keys":
                mid_rekey += any(f.rekey_to for r in REGIONS for f in store.region_keys(r).registry.files.values())
            check_rows(store, log)
            rows = RowLog(log)
            try:
                complete(store, op, rows)
            finally:
                rows.close()
            check_rows(Store.open(path), log)
            assert not list(path.glob("keys/*/.KEYS-*.tmp"))  # no second name of a retired generation

        for nth, delay in kills:
            kill_and_check(nth, delay)
        # Fast operations leave a window of a few milliseconds between commits; on a busy machine
        # the kill right after the first commit can miss it, so try that point a few more times.
        # The same holds for kills at fractions of a duration measured on a busy machine: retry the
        # kill right after the first commit (the operation has more to do then) until enough landed.
        for _retry in range(12):
            if half_done >= 2 and interrupted >= 4:
                break
            kill_and_check(1, 0.0)
        # The kills did land inside the operation, between its commits, and inside a re-key.
        assert interrupted >= 4, f"only {interrupted} of {len(kills)} kills interrupted {op}"
        assert half_done >= 2, f"only {half_done} kills left {op} between its first and last commit"
        assert mid_rekey >= 2 or op != "rotate_data_keys", f"only {mid_rekey} kills landed inside a re-key"
    finally:
        runs.close()


def key_files(store: Store, region: str) -> list[str]:
    return sorted(os.listdir(store.keys_dir / region))


def test_temp_key_files_left_by_a_kill_neither_break_open_nor_outlive_the_next_commit(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store", big_mb=1)
    east = store.keys_dir / "east"
    [gen] = generations(east)
    old = (east / f"KEYS-{gen:06d}").read_bytes()
    old_wrapped = json.loads(old)["wrapped_store_key"]
    # Killed between link and unlink: the committed generation under its temp name too.
    os.link(east / f"KEYS-{gen:06d}", east / f".KEYS-{gen:06d}.tmp")
    # Killed while writing the next generation: a torn temp file, never linked.
    torn = old.replace(b'"generation": %d' % gen, b'"generation": %d' % (gen + 1))[:300]
    (east / f".KEYS-{gen + 1:06d}.tmp").write_bytes(torn)

    reopened = Store.open(store.path)
    assert reopened.region_keys("east").generation == gen
    for name in DATABASES:
        all_rows(reopened, name)

    reopened.rotate_store_key(region="east")  # retires the old store key: no copy of it may stay
    assert key_files(reopened, "east") == [".lock", f"KEYS-{gen + 1:06d}"]
    assert all(old_wrapped not in p.read_text() for p in east.iterdir() if p.is_file())
    for name in DATABASES:
        all_rows(Store.open(store.path), name)


def test_a_complete_newer_generation_wins_over_an_older_one_left_behind(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store", big_mb=1)
    west = store.keys_dir / "west"
    [gen] = generations(west)
    older = (west / f"KEYS-{gen:06d}").read_bytes()
    store.rotate_store_key(region="west")
    newer = store.region_keys("west").spec.store_key_id
    # Killed after linking the new generation, before deleting the old one.
    (west / f"KEYS-{gen:06d}").write_bytes(older)

    reopened = Store.open(store.path)
    assert reopened.region_keys("west").spec.store_key_id == newer
    assert {s.region: s.store_key_id for s in reopened.encryption_status()}["west"] == newer
    all_rows(reopened, "accounts")
    reopened.rotate_data_keys(region="west")
    assert generations(west) == [gen + 5]  # new data key, re-key begin and end, forget: and only it
    all_rows(Store.open(store.path), "accounts")


def test_a_drop_killed_after_its_first_unlink_brings_no_row_back(tmp_path: Path) -> None:
    """The killed drop leaves the database's -wal; a database made later under the name must not replay it."""
    store = build_store(tmp_path / "store", big_mb=1)
    store.backup(COLL, encryption=PASS, databases=["big"])

    def leave_wal_of_dropped_big(log: Path) -> None:
        # Each run logs to a file of its own: waiting on the rows a previous run logged would kill
        # this child before its first commit, with nothing in the -wal yet.
        child = Child()  # writes rows into "big" until killed: its last frames stay in the -wal
        child.start(store.path, "read_write", log)
        while len(RowLog.read(log)[0].get("big", ())) < 200:
            assert child.proc.poll() is None, "the writer died before it committed 200 rows"
            time.sleep(0.01)
        child.kill()
        assert Path(f"{store.database_path('big')}-wal").stat().st_size > 0
        store.database_path("big").unlink()  # the drop's first step, then the kill

    leave_wal_of_dropped_big(tmp_path / "rows-1.log")
    store.restore(COLL, encryption=PASS, databases=["big"])
    assert all_rows(store, "big") == set()

    leave_wal_of_dropped_big(tmp_path / "rows-2.log")
    store.create_database("big")
    conn = store.connect("big")
    assert conn.execute("SELECT name FROM sqlite_schema").fetchall() == []
    conn.close()


def test_a_create_killed_when_its_file_appears_leaves_a_wal_database(template_plain: Path, tmp_path: Path) -> None:
    """Every database is in WAL mode (re-keys stay online only then), even one whose create was killed."""
    runs = Runs(template_plain, tmp_path)
    try:
        for _ in range(6):
            path, log, child = next(runs)
            scratch = path / "databases" / f"{SCRATCH}.db"
            child.start(path, "create_drop", log)
            while not scratch.exists() and child.proc.poll() is None:
                pass
            child.kill()
            store = Store.open(path)
            check_rows(store, log)  # the journal mode of each database, scratch included
            store.drop_database(SCRATCH, if_exists=True)
            store.create_database(SCRATCH)
    finally:
        runs.close()
