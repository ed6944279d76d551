"""Managed backups: scheduled, per region, under their own data keys, wrapped by the CMEK once enabled."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner
from conftest import fill_bank, table_rows
from test_crash import _big_db

from strongroom import Store, init_store, open_store
from strongroom.backup.keys import read_encryption_infos, unwrap_data_key
from strongroom.cli import main
from strongroom.errors import AlreadyExistsError, EncryptionError, KMSError, NotFoundError, UsageError
from strongroom.kms import create_key
from strongroom.storage import open_storage
from strongroom.store.managed import ManagedBackupError, Schedule

if TYPE_CHECKING:
    from kms_servers import AwsKmsServer

pytest_plugins = ("kms_servers",)  # the AWS KMS protocol server fixture
CMEK = "local:///cmek-key"


def _collection(store: Store, region: str = "local") -> Path:
    return store.path / "managed-backups" / region


def _infos(store: Store, full: str, region: str = "local") -> list[tuple[str, object]]:
    storage = open_storage(str(_collection(store, region)))
    try:
        return read_encryption_infos(storage, full)  # type: ignore[return-value]
    finally:
        storage.close()


def _backup_data_key(store: Store, full: str, key_uri: str, region: str = "local") -> bytes:
    storage = open_storage(str(_collection(store, region)))
    try:
        return unwrap_data_key(read_encryption_infos(storage, full), (key_uri,))
    finally:
        storage.close()


def _all_rows(store: Store) -> dict[tuple[str, str], list[tuple[object, ...]]]:
    return {(db, t): table_rows(store, db, t) for db in store.databases() for t in ("accounts", "audit")}


def _next_second() -> None:
    """Sleep into the next wall-clock second (CMEK enable times are recorded to the second)."""
    time.sleep(1.02 - datetime.now(UTC).microsecond / 1e6)


@pytest.fixture
def bank(store: Store) -> Store:
    fill_bank(store, "bank", accounts=2000, seed=1)
    fill_bank(store, "shop", accounts=700, seed=2)
    return store


# ------------------------------------------------------------------------------------ backup and restore


def test_a_managed_backup_restores_every_database_row_for_row(bank: Store) -> None:
    before = _all_rows(bank)
    [taken] = bank.managed_backup()
    assert (taken.region, taken.backup_type, taken.path) == ("local", "full", taken.full_subdir)
    assert taken.result.rows == 2000 + 1000 + 700 + 350
    assert (_collection(bank) / taken.full_subdir.strip("/") / "BACKUP_MANIFEST").exists()
    for name in ("bank", "shop"):
        bank.drop_database(name)

    result = bank.restore_managed()
    assert result.rows == 2000 + 1000 + 700 + 350
    assert _all_rows(bank) == before
    conn = bank.connect("bank")
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_restore_one_database_under_a_new_name_and_an_incremental_follows_new_databases(bank: Store) -> None:
    bank.managed_backup(full=True)
    fill_bank(bank, "later", accounts=300, seed=3)
    conn = bank.connect("bank")
    with conn:
        conn.execute("UPDATE accounts SET balance = -1 WHERE id <= 10")
    conn.close()
    [inc] = bank.managed_backup(full=False)
    assert inc.backup_type == "incremental" and inc.path.startswith("incrementals/")

    bank.restore_managed(databases=["bank"], new_db_name="bank_copy")
    assert table_rows(bank, "bank_copy", "accounts") == table_rows(bank, "bank", "accounts")
    later = table_rows(bank, "later", "accounts")
    bank.drop_database("later")
    bank.restore_managed(databases=["later"])
    assert table_rows(bank, "later", "accounts") == later

    with pytest.raises(UsageError) as exc:
        bank.restore_managed(databases=["bank", "shop"], new_db_name="x")
    assert str(exc.value) == "new_db_name can only be used to restore a single database"
    with pytest.raises(NotFoundError) as missing:
        bank.restore_managed(databases=["nope"])
    assert str(missing.value) == (
        f'managed backup {inc.full_subdir} of region "local": database "nope" does not exist in the backup'
    )


def test_a_restore_over_an_existing_database_is_refused_and_changes_nothing(bank: Store) -> None:
    bank.managed_backup()
    with pytest.raises(AlreadyExistsError) as exc:
        bank.restore_managed()
    assert str(exc.value) == 'database "bank" already exists'
    assert bank.databases() == ["bank", "shop"]


def test_nothing_to_back_up_and_nothing_to_restore(store: Store) -> None:
    with pytest.raises(UsageError) as exc:
        store.managed_backup()
    assert str(exc.value) == "the store has no databases to back up"
    assert store.run_due_managed_backups() == []
    with pytest.raises(NotFoundError) as none:
        store.restore_managed()
    assert str(none.value) == "this store has no managed backups yet"
    with pytest.raises(UsageError) as inc:
        fill_bank(store, "bank", accounts=10)
        store.managed_backup(full=False)
    assert str(inc.value) == (
        'region "local" has no managed full backup under its current key to add an incremental backup to: '
        "take a full one"
    )


# ------------------------------------------------------------------------------------------------- keys


def test_each_full_backup_has_its_own_data_key_distinct_from_the_stores(bank: Store) -> None:
    [first] = bank.managed_backup(full=True)
    time.sleep(0.02)  # subdir names have 10 ms resolution
    [second] = bank.managed_backup(full=True)
    key_uri = bank.region_keys("local").spec.key_uri
    assert key_uri.startswith(f"local:///strongroom-store-{bank.id}")
    one = _backup_data_key(bank, first.full_subdir, key_uri)
    two = _backup_data_key(bank, second.full_subdir, key_uri)
    store_keys = {dk.key for dk in bank.region_keys("local").registry.data_keys.values()}
    assert len(one) == len(two) == 32
    assert one != two
    assert one not in store_keys and two not in store_keys
    assert bank.database_key("bank") in store_keys  # the comparison is against the keys in use


def test_with_cmek_the_backup_key_is_wrapped_by_the_cmek_and_every_use_is_audited(bank: Store) -> None:
    create_key("cmek-key")
    bank.enable_cmek({"local": CMEK})
    [taken] = bank.managed_backup()
    assert taken.backup_type == "full"
    [(_name, info)] = _infos(bank, taken.full_subdir)
    assert list(info.encrypted_data_keys) == [hashlib.sha256(b"cmek-key").digest()]  # type: ignore[attr-defined]

    managed = [r for r in bank.audit_records() if r.purpose == "managed backup"]
    assert [(r.region, r.operation, r.key, r.result) for r in managed] == [("local", "encrypt", CMEK, "ok")]

    before = _all_rows(bank)
    for name in ("bank", "shop"):
        bank.drop_database(name)
    bank.restore_managed()
    assert _all_rows(bank) == before
    restores = [r for r in bank.audit_records() if r.purpose == "restore managed backup"]
    assert [(r.operation, r.key, r.result) for r in restores] == [("decrypt", CMEK, "ok")]


def test_a_managed_backup_taken_before_cmek_was_enabled_is_refused_after(bank: Store) -> None:
    [old] = bank.managed_backup()
    _next_second()
    create_key("cmek-key")
    bank.enable_cmek({"local": CMEK})
    enabled_at = bank.region_keys("local").spec.cmek_enabled_at
    message = (
        f'managed backup {old.full_subdir} of region "local" was taken before CMEK was enabled ({enabled_at}): '
        "it cannot be restored"
    )
    [listed] = bank.managed_backups()
    assert (listed.restorable, listed.reason) == (False, message)

    with pytest.raises(EncryptionError) as exc:
        bank.restore_managed(subdir=old.full_subdir, databases=["shop"], new_db_name="shop_copy")
    assert str(exc.value) == message
    with pytest.raises(EncryptionError) as latest:
        bank.restore_managed(databases=["shop"], new_db_name="shop_copy")
    assert str(latest.value) == message
    assert "shop_copy" not in bank.databases()

    # The schedule starts a new chain under the CMEK at once, whatever the interval.
    [new] = bank.run_due_managed_backups()
    assert new.backup_type == "full"
    assert [b.restorable for b in bank.managed_backups()] == [False, True]
    bank.restore_managed(databases=["shop"], new_db_name="shop_copy")
    assert table_rows(bank, "shop_copy", "accounts") == table_rows(bank, "shop", "accounts")


def test_after_the_cmek_key_file_is_destroyed_no_managed_backup_restores(bank: Store, _keyring: Path) -> None:
    create_key("cmek-key")
    bank.enable_cmek({"local": CMEK})
    [full] = bank.managed_backup()
    bank.managed_backup(full=False)
    (_keyring / "cmek-key.key").unlink()
    bank.drop_database("bank")

    with pytest.raises(KMSError) as exc:
        bank.restore_managed(databases=["bank"])
    assert str(exc.value) == (
        f'cannot restore managed backup {full.full_subdir} of region "local": its CMEK {CMEK} is not available: '
        f"failed to decrypt data key with KMS '{CMEK}': local KMS key \"cmek-key\" not found in keyring "
        f"{_keyring} (restore the key file from a copy (a new key cannot decrypt what it encrypted))"
    )
    assert "bank" not in bank.databases()
    with pytest.raises(KMSError):
        open_store(bank.path)  # nor does the store itself start
    failed = [r for r in bank.audit_records() if r.purpose == "restore managed backup"]
    assert [(r.operation, r.result.startswith("error: ")) for r in failed] == [("decrypt", True)]


@pytest.mark.parametrize("state", ["PendingDeletion", "Disabled"])
def test_after_the_aws_cmek_is_scheduled_for_deletion_or_disabled_no_managed_backup_restores(
    bank: Store, aws_kms: AwsKmsServer, state: str
) -> None:
    key = aws_kms.create_key("us-east-1")
    uri = aws_kms.uri(key.key_id)
    bank.enable_cmek({"local": uri})
    calls = dict(aws_kms.calls)
    [full] = bank.managed_backup()
    assert aws_kms.calls["Encrypt"] - calls["Encrypt"] == 1  # one wrap of the new backup's data key
    assert aws_kms.calls["Decrypt"] == calls["Decrypt"]
    [(_name, info)] = _infos(bank, full.full_subdir)
    assert list(info.encrypted_data_keys) == [hashlib.sha256(key.key_id.encode()).digest()]  # type: ignore[attr-defined]
    key.state = state
    bank.drop_database("shop")

    with pytest.raises(KMSError) as exc:
        bank.restore_managed()
    message = str(exc.value)
    redacted = uri.replace(aws_kms.secret.replace("+", "%2B"), "redacted")
    reason = "is pending deletion" if state == "PendingDeletion" else "is disabled"
    code = "KMSInvalidStateException" if state == "PendingDeletion" else "DisabledException"
    assert message == (
        f'cannot restore managed backup {full.full_subdir} of region "local": its CMEK {redacted} is not available: '
        f"failed to decrypt data key with KMS '{redacted}': AWS KMS key \"{key.key_id}\" (us-east-1): Decrypt: "
        f"{code}: {key.arn} {reason}."
    )
    assert aws_kms.secret not in message and "fake%2Fsecret" not in message
    assert "shop" not in bank.databases()
    # A scheduled backup fails the same way, naming the region and the redacted key.
    with pytest.raises(KMSError) as backup_exc:
        bank.managed_backup(full=True)
    assert str(backup_exc.value).startswith(
        f'managed backup of region "local" failed: its CMEK {redacted} is not available: '
        f"failed to encrypt data key with KMS '{redacted}'"
    )


def test_regions_keep_their_backups_under_their_own_keys(tmp_path: Path, _keyring: Path) -> None:
    create_key("east-key")
    create_key("west-key")
    store = init_store(tmp_path / "multi", regions=("east", "west"), cmek={"east": "local:///east-key"})
    fill_bank(store, "bank", accounts=300)
    store.execute("CREATE DATABASE orders PRIMARY REGION west")
    conn = store.connect("orders")
    with conn:
        conn.execute("CREATE TABLE o(id INTEGER PRIMARY KEY, what TEXT)")
        conn.executemany("INSERT INTO o(what) VALUES (?)", [(f"order {i}",) for i in range(50)])
    conn.close()
    store.enable_cmek({"east": "local:///east-key", "west": "local:///west-key"})
    taken = {t.region: t for t in store.managed_backup()}
    assert sorted(taken) == ["east", "west"]
    assert taken["east"].result.rows == 450 and taken["west"].result.rows == 50
    for region, key in (("east", b"east-key"), ("west", b"west-key")):
        [(_n, info)] = _infos(store, taken[region].full_subdir, region)
        assert list(info.encrypted_data_keys) == [hashlib.sha256(key).digest()]  # type: ignore[attr-defined]

    # Destroying the east CMEK loses east's backups only.
    (_keyring / "east-key.key").unlink()
    with pytest.raises(ManagedBackupError) as partial:
        store.managed_backup()  # west still backs up; east's failure is reported
    assert str(partial.value) == (
        'managed backup of region "east" failed: its CMEK local:///east-key is not available: '
        "failed to decrypt data key with KMS 'local:///east-key': local KMS key \"east-key\" not found in keyring "
        f"{_keyring} (restore the key file from a copy (a new key cannot decrypt what it encrypted))"
    )
    assert [(t.region, t.backup_type) for t in partial.value.taken] == [("west", "incremental")]
    store.drop_database("orders")
    store.drop_database("bank")
    with pytest.raises(KMSError) as exc:
        store.restore_managed()
    assert str(exc.value).startswith(
        f'cannot restore managed backup {taken["east"].full_subdir} of region "east": its CMEK local:///east-key '
        "is not available: "
    )
    assert store.databases() == []  # all or nothing
    store.restore_managed(region="west")
    assert store.databases() == ["orders"]
    assert store.home_region("orders") == "west"


def test_after_a_move_to_another_cmek_older_managed_backups_restore_with_the_new_key_alone(
    bank: Store, _keyring: Path
) -> None:
    create_key("cmek-key")
    create_key("cmek-2")
    bank.enable_cmek({"local": CMEK})
    [old] = bank.managed_backup()
    bank.rotate_cmek({"local": None})  # a new version of the same key: nothing to re-wrap
    assert [r for r in bank.audit_records() if r.purpose == "re-wrap managed backup keys"] == []

    bank.rotate_cmek({"local": "local:///cmek-2"})
    infos = _infos(bank, old.full_subdir)
    assert [name.rsplit("/", 1)[1] for name, _info in infos] == ["ENCRYPTION-INFO-2", "ENCRYPTION-INFO"]
    assert list(infos[0][1].encrypted_data_keys) == [hashlib.sha256(b"cmek-2").digest()]  # type: ignore[attr-defined]
    rewraps = [r for r in bank.audit_records() if r.purpose == "re-wrap managed backup keys"]
    assert [(r.operation, r.key, r.result) for r in rewraps] == [
        ("decrypt", CMEK, "ok"),
        ("encrypt", "local:///cmek-2", "ok"),
    ]

    (_keyring / "cmek-key.key").unlink()  # the old key is retired
    assert [b.restorable for b in bank.managed_backups()] == [True]
    bank.drop_database("shop")
    bank.restore_managed(subdir=old.full_subdir, databases=["shop"])
    assert len(table_rows(bank, "shop", "accounts")) == 700


def test_a_backup_the_old_cmek_cannot_open_any_more_is_reported_after_the_move(bank: Store, _keyring: Path) -> None:
    create_key("cmek-key")
    create_key("cmek-2")
    bank.enable_cmek({"local": CMEK})
    [old] = bank.managed_backup()
    (_keyring / "cmek-key.key").unlink()
    bank.rotate_cmek({"local": "local:///cmek-2"})  # the store key is in memory: the move itself works

    [status] = bank.encryption_status()
    assert (status.status, status.key_uri) == ("ENABLED", "local:///cmek-2")
    assert status.user_message == (
        f'region "local" now uses CMEK local:///cmek-2, but managed backup {old.full_subdir} could not be wrapped '
        f"with it (keep {CMEK} to restore it): failed to decrypt data key with KMS '{CMEK}': local KMS key "
        f'"cmek-key" not found in keyring {_keyring} '
        "(restore the key file from a copy (a new key cannot decrypt what it encrypted))"
    )
    [listed] = bank.managed_backups()
    assert listed.reason == (
        f'managed backup {old.full_subdir} of region "local" is not encrypted with the region\'s CMEK '
        "local:///cmek-2: it cannot be restored"
    )
    [new] = bank.run_due_managed_backups()  # and the schedule starts a chain under the new key
    assert new.backup_type == "full"


# ------------------------------------------------------------------------------------------- ownership


@pytest.mark.parametrize("shared_cmek", [False, True])
def test_another_store_cannot_restore_this_stores_managed_backups(
    bank: Store, tmp_path: Path, shared_cmek: bool
) -> None:
    if shared_cmek:  # the same CMEK could unwrap the key: only the owner check keeps the stores apart
        create_key("cmek-key")
        bank.enable_cmek({"local": CMEK})
    bank.managed_backup()
    other = init_store(tmp_path / "other", cmek=CMEK if shared_cmek else None)
    shutil.copytree(_collection(bank), _collection(other))
    message = (
        f'the managed backups in {_collection(other)} were taken by store {bank.id} (region "local"), '
        f'not by this store {other.id} (region "local"): managed backups can be restored only to the store '
        "where they were taken"
    )
    with pytest.raises(UsageError) as exc:
        other.restore_managed()
    assert str(exc.value) == message
    assert other.databases() == []
    assert {(b.restorable, b.reason) for b in other.managed_backups()} == {(False, message)}
    fill_bank(other, "mine", accounts=10)
    with pytest.raises(UsageError) as write:
        other.managed_backup()
    assert str(write.value) == message  # nor does it write into them


# -------------------------------------------------------------------------------------------- schedule


def test_run_due_takes_nothing_until_the_interval_passes_then_incrementals_then_a_full(bank: Store) -> None:
    assert bank.managed_backup_schedule == Schedule(timedelta(hours=1), timedelta(days=1))
    bank.set_managed_backup_schedule(interval=timedelta(minutes=10), full_every=timedelta(hours=2))
    assert open_store(bank.path).managed_backup_schedule == Schedule(timedelta(minutes=10), timedelta(hours=2))

    [first] = bank.run_due_managed_backups()
    assert first.backup_type == "full"
    t0 = first.end_time
    assert bank.run_due_managed_backups() == []
    assert bank.run_due_managed_backups(now=t0 + timedelta(minutes=9)) == []
    [inc] = bank.run_due_managed_backups(now=t0 + timedelta(minutes=11))
    assert inc.backup_type == "incremental" and inc.full_subdir == first.full_subdir
    assert bank.run_due_managed_backups(now=inc.end_time + timedelta(minutes=9)) == []
    [full] = bank.run_due_managed_backups(now=t0 + timedelta(hours=2))
    assert full.backup_type == "full" and full.full_subdir != first.full_subdir
    assert [(b.backup_type, b.full_subdir) for b in bank.managed_backups()] == [
        ("full", first.full_subdir),
        ("incremental", first.full_subdir),
        ("full", full.full_subdir),
    ]


def test_run_due_in_real_time(bank: Store) -> None:
    bank.set_managed_backup_schedule(interval=timedelta(seconds=1))
    [first] = bank.run_due_managed_backups()
    assert bank.run_due_managed_backups() == []
    time.sleep(1.05)
    [second] = bank.run_due_managed_backups()
    assert (first.backup_type, second.backup_type) == ("full", "incremental")


def test_backup_configuration_as_cockroachdb_cloud(bank: Store) -> None:
    """enabled, frequency_minutes and retention_days with CockroachDB Cloud's values; retention set
    once, and after that only lengthened."""
    config = bank.managed_backup_schedule
    assert (config.enabled, config.frequency_minutes, config.retention_days) == (True, 60, 30)
    config = bank.set_managed_backup_schedule(frequency_minutes=1440)
    assert (config.interval, config.full_every) == (timedelta(days=1), timedelta(days=1))  # every one is full
    for bad, message in (
        ({"frequency_minutes": 45}, "frequency_minutes 45: valid values are 5, 10, 15, 30, 60, 240, 1440"),
        ({"retention_days": 14}, "retention_days 14: valid values are 2, 7, 30, 90, 365"),
    ):
        with pytest.raises(UsageError) as exc:
            bank.set_managed_backup_schedule(**bad)  # type: ignore[arg-type]
        assert str(exc.value) == message
    assert bank.set_managed_backup_schedule(retention_days=7).retention_days == 7
    with pytest.raises(UsageError, match="retention_days is already set to 7: it can only be set once"):
        bank.set_managed_backup_schedule(retention_days=2)
    assert open_store(bank.path).set_managed_backup_schedule(retention_days=90).retention_days == 90
    assert bank.set_managed_backup_schedule(enabled=False).enabled is False
    assert open_store(bank.path).run_due_managed_backups() == []  # disabled: nothing is due
    assert bank.set_managed_backup_schedule(enabled=True).enabled is True
    assert [t.backup_type for t in bank.run_due_managed_backups()] == ["full"]


def test_expired_managed_backups_are_deleted_by_the_schedule(bank: Store) -> None:
    """retention_days: chains wholly older than that, counted back from the newest backup, go; the
    newest chain, and every layer a kept one needs, stay."""
    bank.set_managed_backup_schedule(retention_days=2)
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    [first] = bank.run_due_managed_backups(now=t0)
    [inc] = bank.run_due_managed_backups(now=t0 + timedelta(hours=2))
    [second] = bank.run_due_managed_backups(now=t0 + timedelta(days=1, hours=1))
    assert (first.backup_type, inc.backup_type, second.backup_type) == ("full", "incremental", "full")
    assert len(bank.managed_backups()) == 3  # nothing is older than two days yet
    assert not [j for j in bank.jobs.list() if j.job_type == "FORGET"]  # and no job was run for nothing
    [third] = bank.run_due_managed_backups(now=t0 + timedelta(days=2, hours=3))  # cutoff: t0 + 3h
    left = [(b.full_subdir, b.backup_type) for b in bank.managed_backups()]
    assert left == [(second.full_subdir, "full"), (third.full_subdir, "full")]  # the first chain went whole
    [forget] = [j for j in bank.jobs.list() if j.job_type == "FORGET"]
    assert forget.status == "succeeded"
    bank.drop_database("shop")
    bank.restore_managed(subdir=second.full_subdir, databases=["shop"])
    assert len(table_rows(bank, "shop", "accounts")) == 700


def test_schedule_errors(bank: Store) -> None:
    with pytest.raises(UsageError) as exc:
        bank.set_managed_backup_schedule(interval=timedelta(hours=2), full_every=timedelta(hours=1))
    assert str(exc.value) == "the full backup period (1h) must not be shorter than the backup interval (2h)"
    with pytest.raises(UsageError) as neg:
        Schedule(timedelta(0))
    assert str(neg.value) == "the managed backup interval must be positive"


def test_a_second_writer_waits_its_turn(bank: Store) -> None:
    """While another process holds the managed-backup lock, the scheduler takes nothing."""
    (bank.path / "managed-backups").mkdir(exist_ok=True)
    fd = os.open(bank.path / "managed-backups" / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert bank.run_due_managed_backups() == []
        assert bank.managed_backups() == []
    finally:
        os.close(fd)
    [taken] = bank.run_due_managed_backups()
    assert taken.backup_type == "full"


CHILD = textwrap.dedent(
    """
    import sys
    from strongroom import open_store
    open_store(sys.argv[1]).managed_backup(full=True)
    print("finished")
    """
)


def test_a_killed_managed_backup_leaves_latest_on_the_previous_good_one(store: Store) -> None:
    big = store
    _big_db(big)
    [good] = big.managed_backup()
    q = "SELECT count(*), sum(length(b)), hex(b) FROM blobs WHERE id = 7"
    conn = big.connect("big")
    expected = conn.execute(q).fetchall()
    with conn:
        conn.execute("UPDATE blobs SET b = randomblob(3000) WHERE id % 7 = 0")
    conn.close()
    latest_dir = _collection(big) / "metadata" / "latest"
    latest = sorted(os.listdir(latest_dir))

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(big.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    before = set(_collection(big).rglob("*"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p not in before for p in _collection(big).rglob("*")):
            break
        time.sleep(0.001)
    time.sleep(0.05)
    assert proc.poll() is None, "the child finished before it could be killed: make the database bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert sorted(os.listdir(latest_dir)) == latest
    assert [b.path for b in big.managed_backups()] == [good.full_subdir]
    big.drop_database("big")
    big.restore_managed()
    conn = big.connect("big")
    assert conn.execute(q).fetchall() == expected
    conn.close()
    # The lock died with the child: the next scheduled run proceeds.
    [after] = big.run_due_managed_backups(now=datetime.now(UTC) + timedelta(days=2))
    assert after.backup_type == "full"


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_run_once_list_set_and_restore(bank: Store) -> None:
    runner = CliRunner()
    store_opt = ["--store", str(bank.path)]

    out = runner.invoke(
        main,
        ["backup-schedule", "set", *store_opt, "--frequency-minutes", "30", "--full-every", "12h", "--format", "json"],
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == [
        {"enabled": True, "frequency_minutes": 30, "retention_days": 30, "full_every": "12h"}
    ]
    assert open_store(bank.path).managed_backup_schedule == Schedule(timedelta(minutes=30), timedelta(hours=12))

    out = runner.invoke(main, ["backup-schedule", "run-once", *store_opt, "--format", "json"])
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.output)
    assert (row["region"], row["backup_type"], row["rows"]) == ("local", "full", 4050)
    out = runner.invoke(main, ["backup-schedule", "run-once", *store_opt])
    assert (out.exit_code, out.output) == (0, "no managed backup is due\n")
    out = runner.invoke(main, ["backup-schedule", "run-once", *store_opt, "--incremental", "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[1].startswith("local,incremental,incrementals/")

    out = runner.invoke(main, ["backup-schedule", "list", *store_opt, "--format", "json"])
    listed = json.loads(out.output)
    assert [(r["backup_type"], r["restorable"], r["reason"]) for r in listed] == [
        ("full", True, None),
        ("incremental", True, None),
    ]
    assert listed[0]["path"] == row["path"]

    bank.drop_database("shop")
    out = runner.invoke(main, ["backup-schedule", "restore", *store_opt, "--database", "shop", row["path"]])
    assert out.exit_code == 0, out.output
    assert "succeeded" in out.output
    assert len(table_rows(bank, "shop", "accounts")) == 700

    out = runner.invoke(main, ["backup-schedule", "restore", *store_opt, "--database", "shop"])
    assert (out.exit_code, out.output) == (1, 'ERROR: database "shop" already exists\n')
    out = runner.invoke(main, ["backup-schedule", "run-once", *store_opt, "--full", "--incremental"])
    assert (out.exit_code, out.output) == (2, "ERROR: use --full or --incremental, not both\n")
    out = runner.invoke(main, ["backup-schedule", "set", *store_opt, "--full-every", "soon"])
    assert out.exit_code == 2
    assert out.output == "ERROR: invalid duration 'soon': use a positive number with s, m, h or d, e.g. 30d\n"
    out = runner.invoke(main, ["backup-schedule", "set", *store_opt, "--frequency-minutes", "7"])
    assert out.exit_code == 2 and "'7' is not one of '5', '10', '15', '30', '60', '240', '1440'" in out.output


def test_managed_backup_and_restore_wait_for_a_key_rotation_in_flight(bank: Store) -> None:
    """A rotation in another process holds the store's rotation lock exclusively: a managed backup
    (which picks each database's key, then pins its snapshot) and a managed restore (whose new
    databases' keys a rotation would drop) wait for it instead of racing it."""

    bank.managed_backup(full=True)

    def held_while(action: Callable[[], object]) -> tuple[bool, bool]:
        fd = os.open(bank.keys_dir / ".rotate.lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        worker = threading.Thread(target=action)
        worker.start()
        worker.join(0.5)
        waited = worker.is_alive()
        os.close(fd)  # the rotation ends
        worker.join(30)
        return waited, worker.is_alive()

    assert held_while(lambda: bank.managed_backup(full=False)) == (True, False)
    bank.drop_database("bank")
    assert held_while(lambda: bank.restore_managed(databases=["bank"])) == (True, False)
    assert len(table_rows(bank, "bank", "accounts")) > 0
