"""Incrementals of encrypted databases skip chunks whose ciphertext is unchanged (data.FingerprintWriter):
whatever happens between two backups (writes still in the WAL, checkpoints, a data-key rotation that
re-encrypts every page, a new index), every restore point restores exactly."""

from __future__ import annotations

import random
from datetime import datetime

from conftest import fill_bank, table_rows

from strongroom import Encryption, Store
from strongroom.backup.data import NO_FINGERPRINT, iter_fingerprints
from strongroom.backup.keys import existing_backup_keys
from strongroom.backup.manifest import Manifest
from strongroom.storage import open_storage

COLL = "nodelocal://1/inc"
PASS = Encryption(passphrase="a long enough passphrase")


def _snapshot_rows(store: Store, db: str) -> dict[str, list[tuple[object, ...]]]:
    return {t: table_rows(store, db, t) for t in ("accounts", "audit")}


def test_every_restore_point_of_an_encrypted_database(store: Store) -> None:
    fill_bank(store, accounts=4000)
    rng = random.Random(5)
    store.backup(COLL, encryption=PASS)
    expected = [_snapshot_rows(store, "bank")]
    conn = store.connect("bank")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # the first rounds leave their pages in the WAL
    changes = [
        lambda: conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id % 97 = 0"),
        lambda: conn.execute("INSERT INTO audit(account, what) VALUES (1, 'opened'), (2, 'closed')"),
        lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"),
        lambda: conn.execute("DELETE FROM accounts WHERE id > 3900"),
        lambda: store.rotate_data_keys(),
        lambda: conn.execute("UPDATE accounts SET note = randomblob(300) WHERE id = ?", (rng.randrange(1, 3900),)),
        lambda: conn.execute("CREATE INDEX accounts_balance ON accounts(balance)"),
    ]
    for change in changes:
        change()
        store.backup(COLL, encryption=PASS, incremental="LATEST")
        expected.append(_snapshot_rows(store, "bank"))
    conn.close()
    for n, want in enumerate(expected):
        as_of = datetime.fromisoformat(_manifests(store)[n].end_time)
        name = f"copy{n}"
        store.restore(COLL, encryption=PASS, databases=["bank"], new_db_name=name, as_of=as_of)
        assert _snapshot_rows(store, name) == want, f"restore point {n}"


def _manifests(store: Store) -> list[Manifest]:
    return store.show_backup(COLL, encryption=PASS).manifests


def test_unchanged_ciphertext_is_fingerprinted_and_wal_pages_are_not(store: Store) -> None:
    fill_bank(store, accounts=2000)
    store.backup(COLL, encryption=PASS)
    conn = store.connect("bank")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("UPDATE accounts SET balance = 0 WHERE id = 1")  # one page, in the WAL
    store.backup(COLL, encryption=PASS, incremental="LATEST")
    conn.close()
    full, manifest = _manifests(store)
    assert full.databases[0].fingerprints is not None  # a full backup writes them for the next one
    storage = open_storage(COLL, store.storage_context)
    keys = existing_backup_keys(storage, full.full_subdir, PASS)
    [entry] = manifest.databases
    assert entry.fingerprints is not None and entry.fingerprints in manifest.files()
    marks = list(iter_fingerprints(lambda _loc: storage, entry.fingerprints, keys))
    assert len(marks) == -(-entry.size // manifest.chunk_size)
    blank = [i for i, m in enumerate(marks) if m == NO_FINGERPRINT]
    assert 1 <= len(blank) <= 3  # the chunks holding WAL pages (the row's leaf, its b-tree's parents)
    assert entry.chunks_written == len(blank)  # only those were stored again
    # every other chunk's ciphertext is what the full backup saw: that is how it was skipped unread
    before = list(iter_fingerprints(lambda _loc: storage, full.databases[0].fingerprints, keys))
    assert [m for i, m in enumerate(marks) if i not in blank] == [m for i, m in enumerate(before) if i not in blank]
    assert NO_FINGERPRINT not in before


def test_an_encrypted_database_past_one_gib(store: Store) -> None:
    """SQLite never writes the page holding its lock bytes (at 1 GiB), so sqlite3mc cannot decrypt
    it: a snapshot must not try (found by the benchmark: every store database over 1 GiB failed)."""
    store.create_database("big")
    conn = store.connect("big")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB)")
    with conn:  # 1030 rows of 1 MiB: the file passes 1 GiB, rows on both sides of the lock page
        conn.executemany("INSERT INTO t(pad) VALUES (zeroblob(1048576))", [()] * 1030)
    conn.close()
    store.backup(COLL, encryption=PASS)
    conn = store.connect("big")
    conn.execute("UPDATE t SET pad = randomblob(100) WHERE id IN (1, 1030)")
    conn.close()
    store.backup(COLL, encryption=PASS, incremental="LATEST")
    store.restore(COLL, encryption=PASS, databases=["big"], new_db_name="big2")
    check = "SELECT count(*), sum(length(pad)), sum(pad = zeroblob(1048576)) FROM t"
    source, copy = store.connect("big"), store.connect("big2")
    try:
        assert (
            copy.execute(check).fetchall() == source.execute(check).fetchall() == [(1030, 1028 * 1048576 + 200, 1028)]
        )
    finally:
        source.close()
        copy.close()
