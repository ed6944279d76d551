"""Rollback and deletion are detected (issue #10 part 1).

An attacker with write access to the bucket but no key deletes the newest incremental's manifest,
copies an older LATEST over the newest, or deletes the newest LATEST: RESTORE FROM LATEST,
SHOW BACKUP ... check_files and BACKUP INTO LATEST each refuse with an error that says so. A killed
backup's leftover layer is neither an error nor listed as a backup.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import fill_bank

from strongroom import Encryption, Store
from strongroom.backup import engine, layout
from strongroom.errors import IntegrityError

pytest_plugins = ("cloud_servers",)
COLL = "nodelocal://1/backups"


def _change(store: Store, n: int) -> None:
    conn = store.connect("bank")
    with conn:
        conn.execute("UPDATE accounts SET balance = ? WHERE id % 5 = 0", (n,))
    conn.close()


def _collection(store: Store, enc: Encryption, coll: str = COLL) -> None:
    """Two full backups, each with an incremental on it."""
    plain = not enc.enabled  # an unencrypted collection needs the consent to write one
    fill_bank(store, accounts=300)
    store.backup(coll, encryption=enc, include_unencrypted_data=plain)
    _change(store, 1)
    store.backup(coll, encryption=enc, incremental="LATEST", include_unencrypted_data=plain)
    _change(store, 2)
    store.backup(coll, encryption=enc, include_unencrypted_data=plain)
    _change(store, 3)
    store.backup(coll, encryption=enc, incremental="LATEST", include_unencrypted_data=plain)


def _root(store: Store) -> Path:
    return store.extern_dir / "backups"


def _latest_files(store: Store) -> list[Path]:
    return sorted((_root(store) / "metadata" / "latest").iterdir())  # newest first (descending names)


def delete_newest_incremental_manifest(store: Store) -> None:
    [newest, _older] = sorted(_root(store).glob("incrementals/*/*/*/*/*/BACKUP_MANIFEST"), reverse=True)
    newest.unlink()


def copy_older_latest_over_newest(store: Store) -> None:
    newest, older = _latest_files(store)
    newest.write_bytes(older.read_bytes())


def delete_newest_latest(store: Store) -> None:
    _latest_files(store)[0].unlink()


ATTACKS: dict[str, tuple[Callable[[Store], None], str]] = {
    "manifest-deleted": (delete_newest_incremental_manifest, "BACKUP_MANIFEST is missing"),
    "latest-copied": (copy_older_latest_over_newest, "rolled back: LATEST names"),
    "latest-deleted": (delete_newest_latest, "rolled back: LATEST names"),
}


@pytest.fixture(params=["passphrase", "kms"])
def enc(request: pytest.FixtureRequest, keys: tuple[str, str, str]) -> Encryption:
    if request.param == "passphrase":
        return Encryption(passphrase="password123")
    return Encryption(kms=(keys[0],))


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_is_an_error_for_restore_show_and_backup(store: Store, enc: Encryption, attack: str) -> None:
    _collection(store, enc)
    tamper, message = ATTACKS[attack]
    tamper(store)
    with pytest.raises(IntegrityError, match=message) as exc:
        store.restore(COLL, encryption=enc, databases=["bank"], new_db_name="back")
    print(exc.value)
    with pytest.raises(IntegrityError, match=message):
        store.show_backup(COLL, encryption=enc, check_files=True)
    with pytest.raises(IntegrityError, match=message):
        store.backup(COLL, encryption=enc, incremental="LATEST")


def test_rollback_message_names_both_backups(store: Store) -> None:
    enc = Encryption(passphrase="pw")
    _collection(store, enc)
    older, newer = store.show_backups(COLL)
    delete_newest_latest(store)
    with pytest.raises(IntegrityError) as exc:
        store.restore(COLL, encryption=enc, databases=["bank"], new_db_name="back")
    assert str(exc.value) == (
        f"the collection has been rolled back: LATEST names {older}, but a newer completed backup {newer} exists"
    )


def test_copied_latest_does_not_verify_even_without_a_newer_listing(store: Store) -> None:
    """The sealed manifest names its own LATEST file: a copy over another LATEST name is caught by the key."""
    enc = Encryption(passphrase="pw")
    fill_bank(store, accounts=100)
    store.backup(COLL, encryption=enc)
    [latest] = _latest_files(store)
    forged = latest.with_name(layout.latest_name(datetime.now(UTC)).split("/")[-1])
    forged.write_bytes(latest.read_bytes())
    with pytest.raises(IntegrityError, match="an older LATEST file was copied over a newer one"):
        store.restore(COLL, encryption=enc, databases=["bank"], new_db_name="back")


def test_killed_backup_leftovers_are_neither_an_error_nor_a_backup(store: Store) -> None:
    enc = Encryption(passphrase="pw")
    _collection(store, enc)
    fulls = store.show_backups(COLL)
    newest_full = fulls[-1].strip("/")
    # What a backup killed before its manifest leaves: its lock, and some data, in a new layer dir;
    # once for a full backup (newer than LATEST's) and once for an incremental on the newest full.
    for layer in ("2099/01/01-000000.00", f"incrementals/{newest_full}/20990101/000000.00"):
        d = _root(store) / layer
        (d / "data").mkdir(parents=True)
        (d / "BACKUP-LOCK-1234").write_bytes(b"lock")
        (d / "data" / "0001.pack").write_bytes(b"encrypt\x02partial")
    # a killed full backup after its manifest, before LATEST: manifest and lock, no LATEST
    d = _root(store) / "2099/02/01-000000.00"
    d.mkdir(parents=True)
    (d / "BACKUP_MANIFEST").write_bytes(b"x")
    (d / "BACKUP-LOCK-99").write_bytes(b"lock")
    assert store.show_backups(COLL) == fulls
    detail = engine.show_backups_detail(str(_root(store)))
    assert detail == [
        (fulls[0], "complete"),
        (fulls[1], "complete"),
        ("/2099/01/01-000000.00", "partial"),
        ("/2099/02/01-000000.00", "partial"),
    ]
    shown = store.show_backup(COLL, encryption=enc, check_files=True)
    assert [m.backup_type for m in shown.manifests] == ["full", "incremental"]
    store.backup(COLL, encryption=enc, incremental="LATEST")
    store.restore(COLL, encryption=enc, databases=["bank"], new_db_name="back")
    a, b = store.connect("bank"), store.connect("back")
    q = "SELECT sum(balance) FROM accounts"
    assert a.execute(q).fetchall() == b.execute(q).fetchall()


def test_unencrypted_collection_detects_structural_rollback(store: Store) -> None:
    enc = Encryption()
    _collection(store, enc)
    delete_newest_latest(store)
    with pytest.raises(IntegrityError, match="rolled back"):
        store.restore(COLL, encryption=enc, databases=["bank"], new_db_name="back")


def test_rollback_is_detected_on_s3(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Storage-independent: the same deletion of the newest LATEST on S3 (moto)."""
    import boto3

    import strongroom.storage.s3  # noqa: F401  (registers s3://)
    from strongroom import init_store

    cloud = request.getfixturevalue("moto_s3")
    uri = cloud.uri("rollback-test")
    enc = Encryption(passphrase="pw")
    store = init_store(tmp_path / "s3store")
    _collection(store, enc, uri)
    s3 = boto3.client(
        "s3",
        endpoint_url=cloud.endpoint,
        region_name="us-east-1",
        aws_access_key_id=cloud.params["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=cloud.secret,
    )
    listed = s3.list_objects_v2(Bucket=cloud.bucket, Prefix="rollback-test/metadata/latest/")
    newest = sorted(o["Key"] for o in listed["Contents"])[0]
    s3.delete_object(Bucket=cloud.bucket, Key=newest)
    with pytest.raises(IntegrityError, match="rolled back: LATEST names"):
        store.restore(uri, encryption=enc, databases=["bank"], new_db_name="back")
    with pytest.raises(IntegrityError, match="rolled back: LATEST names"):
        store.backup(uri, encryption=enc, incremental="LATEST")
    store.close()


def test_show_backups_marks_a_killed_backups_dir(store: Store) -> None:
    enc = Encryption(passphrase="show-partial")
    fill_bank(store, accounts=50)
    store.backup(COLL, encryption=enc)
    killed = _root(store) / "2099" / "01" / "01-000000.00"
    (killed / "data").mkdir(parents=True)
    (killed / "BACKUP-LOCK-1").write_bytes(b"lock")  # what a backup killed at its start leaves
    (killed / "data" / "000001.pack").write_bytes(b"partial")
    rows = store.execute(f"SHOW BACKUPS IN '{COLL}'").rows
    assert [status for _path, status in rows] == ["complete", "partial"]
    assert rows[-1][0] == "/2099/01/01-000000.00"
    assert store.show_backups(COLL) == [rows[0][0]]  # the Python list holds complete backups only
