"""BACKUP / RESTORE / SHOW / ALTER end to end on the embedded default: real files, real keys."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import MARKER, fill_bank, table_rows

from strongroom import Encryption, Store, StrongroomError, backup_file, restore_file
from strongroom.backup import BackupRequest, engine, layout
from strongroom.errors import (
    AlreadyExistsError,
    EncryptionError,
    IntegrityError,
    KMSError,
    NotFoundError,
    UsageError,
)

COLL = "nodelocal://1/backups"
PASS = Encryption(passphrase="password123")


def coll_dir(store: Store, name: str = "backups") -> Path:
    return store.extern_dir / name


def stored_files(store: Store) -> list[Path]:
    return [p for p in coll_dir(store).rglob("*") if p.is_file()]


def test_passphrase_full_backup_and_restore_under_new_name(store: Store) -> None:
    fill_bank(store)
    result = store.backup(COLL, encryption=PASS)
    assert result.status == "succeeded" and result.fraction_completed == 1
    assert result.rows == 3000 + 1500 and result.index_entries == 3000 + 1500 and result.bytes > 0
    assert len(str(result.job_id)) == 19

    restored = store.restore(COLL, encryption=PASS, databases=["bank"], new_db_name="bank2")
    assert (restored.rows, restored.index_entries) == (result.rows, result.index_entries)
    assert table_rows(store, "bank2", "accounts") == table_rows(store, "bank", "accounts")
    assert table_rows(store, "bank2", "audit") == table_rows(store, "bank", "audit")


def test_layout_is_cockroachdbs(store: Store) -> None:
    fill_bank(store, accounts=100)
    store.backup(COLL, encryption=PASS)
    [full] = store.show_backups(COLL)
    assert layout.normalize_subdir(full) == full
    root = coll_dir(store)
    names = {
        p.relative_to(root / full.strip("/")).as_posix() for p in (root / full.strip("/")).rglob("*") if p.is_file()
    }
    assert {"BACKUP_MANIFEST", "BACKUP_MANIFEST-CHECKSUM", "ENCRYPTION-INFO"} <= names
    assert any(n.startswith("data/") and n.endswith(".pack") for n in names)
    [latest] = list((root / "metadata" / "latest").iterdir())
    assert latest.name.startswith("LATEST-13") and latest.read_text() == full
    assert not any(n.startswith("BACKUP-LOCK") for n in names)


def test_no_plaintext_in_any_backup_file(store: Store, keys: tuple[str, str, str]) -> None:
    fill_bank(store)
    store.backup(COLL, encryption=PASS)
    store.backup("nodelocal://1/kms", encryption=Encryption(kms=keys[:2]))
    for path in [p for p in store.extern_dir.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert MARKER.encode() not in data, path
        assert b"CREATE TABLE" not in data, path


def test_kms_two_keys_either_restores(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, _ = keys
    fill_bank(store)
    store.backup(COLL, encryption=Encryption(kms=(east, west)))
    for i, key in enumerate(
        (
            east,
            west,
        )
    ):
        store.restore(COLL, encryption=Encryption(kms=(key,)), databases=["bank"], new_db_name=f"copy{i}")
        assert table_rows(store, f"copy{i}", "accounts") == table_rows(store, "bank", "accounts")


def test_kms_uri_not_in_base_is_refused(store: Store, keys: tuple[str, str, str]) -> None:
    east, _west, stranger = keys
    fill_bank(store, accounts=50)
    store.backup(COLL, encryption=Encryption(kms=(east,)))
    expected = (
        "one of the provided URIs was not used when encrypting the base BACKUP: "
        "could not find an entry in the encryptedDataKeyMap"
    )
    for enc in (Encryption(kms=(stranger,)), Encryption(kms=(east, stranger))):
        with pytest.raises(EncryptionError) as exc:
            store.restore(COLL, encryption=enc, databases=["bank"], new_db_name="x")
        assert str(exc.value) == expected
        with pytest.raises(EncryptionError, match="was not used when encrypting"):
            store.backup(COLL, encryption=enc, incremental="LATEST")
        with pytest.raises(EncryptionError, match="was not used when encrypting"):
            store.show_backup(COLL, encryption=enc)


def test_incremental_chain_stores_only_changes_and_restores_latest(store: Store) -> None:
    fill_bank(store, accounts=20000)
    full = store.backup(COLL, encryption=PASS)
    conn = store.connect("bank")
    with conn:
        conn.execute("UPDATE accounts SET balance = -1 WHERE id > 19900")
    conn.close()
    inc = store.backup(COLL, encryption=PASS, incremental="LATEST")
    assert inc.rows < full.rows // 10  # only rows on changed pages are counted in the layer
    shown = store.show_backup(COLL, encryption=PASS)
    full_m, inc_m = shown.manifests
    assert inc_m.backup_type == "incremental" and inc_m.start_time == full_m.end_time
    db_full, db_inc = full_m.databases[0], inc_m.databases[0]
    assert db_inc.chunks_written < db_full.chunks_written // 4
    assert db_inc.stored_bytes < db_full.stored_bytes // 4
    inc_dirs = [p for p in (coll_dir(store) / "incrementals").rglob("BACKUP_MANIFEST")]
    assert len(inc_dirs) == 1 and not (inc_dirs[0].parent / "ENCRYPTION-INFO").exists()

    store.restore(COLL, encryption=PASS, databases=["bank"], new_db_name="restored")
    assert table_rows(store, "restored", "accounts") == table_rows(store, "bank", "accounts")
    assert table_rows(store, "restored", "accounts")[-1][2] == -1


def test_incremental_onto_named_subdir_and_restore_from_subdir(store: Store) -> None:
    fill_bank(store, accounts=500)
    store.backup(COLL, encryption=PASS)
    [first] = store.show_backups(COLL)
    before = table_rows(store, "bank", "accounts")
    conn = store.connect("bank")
    with conn:
        conn.execute("DELETE FROM accounts WHERE id <= 100")
    conn.close()
    store.backup(COLL, encryption=PASS)
    assert len(store.show_backups(COLL)) == 2
    store.backup(COLL, encryption=PASS, incremental=first)  # onto the older full
    # restoring the older chain gives the state after the delete (its incremental holds it)
    store.restore(COLL, subdir=first, encryption=PASS, databases=["bank"], new_db_name="old")
    assert len(table_rows(store, "old", "accounts")) == len(before) - 100


def test_incremental_with_other_passphrase_is_refused(store: Store) -> None:
    fill_bank(store, accounts=100)
    store.backup(COLL, encryption=PASS)
    with pytest.raises(EncryptionError) as exc:
        store.backup(COLL, encryption=Encryption(passphrase="not-the-same"), incremental="LATEST")
    assert str(exc.value).endswith("failed to decrypt — maybe incorrect key")
    assert "not-the-same" not in str(exc.value)
    assert len(list((coll_dir(store)).rglob("BACKUP_MANIFEST"))) == 1


def test_wrong_passphrase_exact_message(store: Store) -> None:
    fill_bank(store, accounts=100)
    store.backup(COLL, encryption=PASS)
    [full] = store.show_backups(COLL)
    with pytest.raises(EncryptionError) as exc:
        store.restore(COLL, encryption=Encryption(passphrase="hunter2"), databases=["bank"], new_db_name="x")
    assert str(exc.value) == f"reading {full}/BACKUP_MANIFEST: failed to decrypt — maybe incorrect key"
    assert not store.has_database("x")


def test_encrypted_backup_read_without_key(store: Store, keys: tuple[str, str, str]) -> None:
    fill_bank(store, accounts=100)
    store.backup(COLL, encryption=Encryption(kms=(keys[0],)))
    msg = 'file appears encrypted -- try specifying one of "encryption_passphrase" or "kms"'
    with pytest.raises(EncryptionError) as exc:
        store.restore(COLL, databases=["bank"], new_db_name="x")
    assert str(exc.value) == msg
    with pytest.raises(EncryptionError) as exc:
        store.show_backup(COLL)
    assert str(exc.value) == msg


def test_passphrase_on_kms_backup_and_kms_on_passphrase_backup(store: Store, keys: tuple[str, str, str]) -> None:
    fill_bank(store, accounts=10)
    store.backup("nodelocal://1/k", encryption=Encryption(kms=(keys[0],)))
    store.backup("nodelocal://1/p", encryption=PASS)
    with pytest.raises(EncryptionError) as exc:
        store.show_backup("nodelocal://1/k", encryption=PASS)
    assert str(exc.value) == 'this backup was encrypted with KMS keys, not a passphrase: specify "kms"'
    with pytest.raises(EncryptionError, match="was not used when encrypting the base BACKUP"):
        store.show_backup("nodelocal://1/p", encryption=Encryption(kms=(keys[0],)))


def test_options_on_unencrypted_backup(store: Store) -> None:
    fill_bank(store, accounts=10)
    store.backup(COLL, include_unencrypted_data=True)
    with pytest.raises(EncryptionError) as exc:
        store.show_backup(COLL, encryption=PASS)
    assert str(exc.value) == "could not find or read encryption information: no ENCRYPTION-INFO files found"
    assert store.show_backup(COLL).rows  # and without options it reads fine


def test_both_passphrase_and_kms() -> None:
    with pytest.raises(UsageError) as exc:
        Encryption(passphrase="x", kms=("local:///a",))
    assert str(exc.value) == "cannot have both encryption_passphrase and kms option set"


def test_restore_over_existing_database_is_refused(store: Store) -> None:
    fill_bank(store, accounts=10)
    store.backup(COLL, encryption=PASS)
    with pytest.raises(AlreadyExistsError) as exc:
        store.restore(COLL, encryption=PASS)
    assert str(exc.value) == 'database "bank" already exists'


def test_full_backup_into_existing_subdir_is_refused(store: Store) -> None:
    fill_bank(store, accounts=10)
    t = datetime(2026, 11, 23, 12, 0, 0, 120000, tzinfo=UTC)
    request = BackupRequest(into=(COLL,), encryption=Encryption())
    sources = [engine.DatabaseSource("bank", store.database_path("bank"), store.database_key("bank"))]
    engine.backup(request, sources, context=store.storage_context, clock=lambda: t)
    with pytest.raises(AlreadyExistsError) as exc:
        engine.backup(request, sources, context=store.storage_context, clock=lambda: t)
    assert str(exc.value).startswith("A full backup already exists in /2026/11/23-120000.12.")


def _one_pack(store: Store) -> Path:
    return sorted(p for p in coll_dir(store).rglob("*.pack"))[0]


def test_missing_truncated_swapped_files_are_caught(store: Store) -> None:
    fill_bank(store, accounts=4000)
    store.backup(COLL, encryption=PASS)
    conn = store.connect("bank")
    with conn:
        conn.execute("UPDATE accounts SET balance = 0")
    conn.close()
    store.backup(COLL, encryption=PASS, incremental="LATEST")
    packs = sorted(coll_dir(store).rglob("*.pack"))
    assert len(packs) == 2
    full_pack, inc_pack = packs if "incrementals" not in str(packs[0]) else packs[::-1]
    saved = full_pack.read_bytes()

    def attempt() -> str:
        with pytest.raises(IntegrityError) as exc:
            store.restore(COLL, encryption=PASS, databases=["bank"], new_db_name="x")
        assert not store.has_database("x")
        return str(exc.value)

    full_pack.unlink()
    assert attempt().endswith("is missing")
    full_pack.write_bytes(saved[:-100])
    assert "truncated or replaced" in attempt()
    full_pack.write_bytes(inc_pack.read_bytes()[: len(saved)].ljust(len(saved), b"\0"))
    assert "swapped or replaced" in attempt()
    full_pack.write_bytes(saved)
    store.restore(COLL, encryption=PASS, databases=["bank"], new_db_name="x")  # intact again: works
    assert store.has_database("x")


def test_tampered_manifest_and_checksum(store: Store) -> None:
    fill_bank(store, accounts=10)
    store.backup(COLL, encryption=PASS)
    [manifest] = list(coll_dir(store).rglob("BACKUP_MANIFEST"))
    data = bytearray(manifest.read_bytes())
    data[40] ^= 1
    manifest.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"checksum mismatch; expected [0-9a-f]{8}, got [0-9a-f]{8}"):
        store.show_backup(COLL, encryption=PASS)


def test_manifest_swapped_between_layers_is_caught(store: Store) -> None:
    fill_bank(store, accounts=10)
    store.backup(COLL, encryption=PASS)
    store.backup(COLL, encryption=PASS, incremental="LATEST")
    a, b = sorted(coll_dir(store).rglob("BACKUP_MANIFEST"), key=lambda p: len(str(p)))
    for suffix in ("", "-CHECKSUM"):
        Path(str(b) + suffix).write_bytes(Path(str(a) + suffix).read_bytes())
    with pytest.raises(IntegrityError, match="files were moved or swapped"):
        store.show_backup(COLL, encryption=PASS)


def test_check_files_reports_a_corrupted_pack(store: Store) -> None:
    fill_bank(store, accounts=2000)
    store.backup(COLL, encryption=PASS)
    shown = store.show_backup(COLL, encryption=PASS, check_files=True)
    assert shown.columns[-1] == "file_bytes"
    pack = _one_pack(store)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x40
    pack.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its SHA-256 in the manifest"):
        store.show_backup(COLL, encryption=PASS, check_files=True)
    with pytest.raises(StrongroomError):  # restore refuses too: the chunk fails to authenticate
        store.restore(COLL, encryption=PASS, databases=["bank"], new_db_name="x")
    assert not store.has_database("x")


def test_show_backup_rows_like_cockroachdb(store: Store) -> None:
    fill_bank(store, accounts=100)
    store.backup(COLL, encryption=PASS)
    shown = store.show_backup(COLL, encryption=PASS)
    assert shown.columns == engine.SHOW_BACKUP_COLUMNS
    kinds = [(r[0], r[1], r[2], r[3]) for r in shown.rows]
    assert kinds[:2] == [(None, None, "bank", "database"), ("bank", None, "public", "schema")]
    tables = {r[2]: r for r in shown.rows if r[3] == "table"}
    assert tables["accounts"][8] == 100 and tables["audit"][8] == 50
    assert all(r[4] == "full" and r[5] is None and r[9] is True for r in shown.rows)


def test_table_backup_holds_only_that_table_and_restores_into_db(store: Store) -> None:
    fill_bank(store, accounts=300)
    result = store.backup(COLL, tables=["bank.audit"], encryption=PASS)
    assert result.rows == 150
    shown = store.show_backup(COLL, encryption=PASS)
    assert [r[2] for r in shown.rows] == ["audit"]
    store.create_database("other")
    store.restore(COLL, encryption=PASS, tables=["bank.audit"], into_db="other")
    assert table_rows(store, "other", "audit") == table_rows(store, "bank", "audit")
    conn = store.connect("other")
    assert conn.execute("SELECT name FROM sqlite_schema WHERE type='index'").fetchall() == [("audit_account",)]
    conn.close()
    with pytest.raises(AlreadyExistsError, match='relation "audit" already exists'):
        store.restore(COLL, encryption=PASS, tables=["bank.audit"], into_db="other")


def test_restore_one_table_from_whole_database_backup(store: Store) -> None:
    fill_bank(store, accounts=300)
    store.backup(COLL, encryption=PASS)
    conn = store.connect("bank")
    conn.execute("DROP TABLE accounts")
    conn.close()
    store.restore(COLL, encryption=PASS, tables=["bank.accounts"])
    assert len(table_rows(store, "bank", "accounts")) == 300
    with pytest.raises(NotFoundError, match=r'table "bank\.nope" does not exist in the backup'):
        store.restore(COLL, encryption=PASS, tables=["bank.nope"])


def test_alter_backup_new_key_alone_restores_whole_chain(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, stranger = keys
    fill_bank(store, accounts=300)
    store.backup(COLL, encryption=Encryption(kms=(east,)))
    conn = store.connect("bank")
    with conn:
        conn.execute("DELETE FROM audit")
    conn.close()
    store.backup(COLL, encryption=Encryption(kms=(east,)), incremental="LATEST")
    with pytest.raises(EncryptionError) as exc:
        store.alter_backup(COLL, new_kms=(west,), old_kms=(stranger,))
    assert str(exc.value) == "no key in OLD_KMS matches a key that was previously used to encrypt the backup"
    name = store.alter_backup(COLL, new_kms=(west,), old_kms=(east,))
    assert name.endswith("/ENCRYPTION-INFO-2")
    store.restore(COLL, encryption=Encryption(kms=(west,)), databases=["bank"], new_db_name="viawest")
    assert table_rows(store, "viawest", "audit") == []
    store.backup(COLL, encryption=Encryption(kms=(west,)), incremental="LATEST")  # new key extends the chain
    assert store.alter_backup(COLL, new_kms=(stranger,), old_kms=(west,)).endswith("/ENCRYPTION-INFO-3")


def test_unknown_scheme_and_parameter(store: Store) -> None:
    fill_bank(store, accounts=10)
    with pytest.raises(UsageError, match='unsupported storage scheme "ftp"'):
        store.backup("ftp://host/x")
    with pytest.raises(UsageError, match='no KMS found for scheme "gopher"'):
        store.backup(COLL, encryption=Encryption(kms=("gopher:///k",)))
    with pytest.raises(UsageError) as exc:
        store.backup(COLL, encryption=Encryption(kms=("local:///east?REGION=x&AUTH=implicit",)))
    assert str(exc.value) == "unknown KMS query parameters: AUTH, REGION"
    with pytest.raises(UsageError, match="unknown nodelocal query parameters: FOO"):
        store.backup("nodelocal://1/x?FOO=1")
    assert not (store.extern_dir / "x").exists()


def test_missing_kms_key_file(store: Store) -> None:
    fill_bank(store, accounts=10)
    with pytest.raises(KMSError) as exc:
        store.backup(COLL, encryption=Encryption(kms=("local:///ghost",)))
    assert str(exc.value).startswith(
        "failed to encrypt data key with KMS 'local:///ghost': local KMS key \"ghost\" not found in keyring"
    )
    assert not coll_dir(store).exists() or not list(coll_dir(store).rglob("BACKUP_MANIFEST"))


def test_secrets_never_in_errors_or_reprs(store: Store) -> None:
    secret = "correct horse battery staple"
    fill_bank(store, accounts=10)
    store.backup(COLL, encryption=Encryption(passphrase=secret))
    assert secret not in repr(Encryption(passphrase=secret))
    for attempt in (
        lambda: store.restore(COLL, encryption=Encryption(passphrase=secret + "!")),
        lambda: store.backup(COLL, encryption=Encryption(passphrase=secret + "!"), incremental="LATEST"),
        lambda: store.backup("s3x://b/p?AWS_SECRET_ACCESS_KEY=" + secret.replace(" ", "+")),
    ):
        with pytest.raises(StrongroomError) as exc:
            attempt()
        assert secret not in str(exc.value) and secret.replace(" ", "+") not in str(exc.value)


def test_plain_file_backup_and_restore(tmp_path: Path) -> None:
    import apsw

    src = tmp_path / "app.db"
    conn = apsw.Connection(str(src))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE t(x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    backups = str(tmp_path / "backups")
    backup_file(src, backups, encryption=PASS)
    conn.execute("INSERT INTO t VALUES (1000)")
    backup_file(src, backups, encryption=PASS, incremental="LATEST")
    conn.close()
    out = tmp_path / "out.db"
    result = restore_file(backups, out, encryption=PASS)
    assert result.rows == 1001
    check = apsw.Connection(str(out))
    assert check.execute("SELECT count(*), max(x) FROM t").fetchall() == [(1001, 1000)]
    with pytest.raises(AlreadyExistsError):
        restore_file(backups, out, encryption=PASS)


def test_failed_backup_leaves_latest_alone(store: Store) -> None:
    fill_bank(store, accounts=50)
    store.backup(COLL, encryption=PASS)
    before = sorted(os.listdir(coll_dir(store) / "metadata" / "latest"))
    with pytest.raises(NotFoundError):
        store.backup(COLL, encryption=PASS, databases=["bank", "ghost"])
    assert sorted(os.listdir(coll_dir(store) / "metadata" / "latest")) == before
    assert len(store.show_backups(COLL)) == 1


def test_failed_multi_database_restore_creates_nothing(store: Store) -> None:
    fill_bank(store, "a", accounts=200)
    fill_bank(store, "b", accounts=4000)
    store.backup(COLL, encryption=PASS)
    store.execute("DROP DATABASE a; DROP DATABASE b")
    manifest = store.show_backup(COLL, encryption=PASS).manifests[-1]
    b_index = next(d.index.path for d in manifest.databases if d.name == "b")
    (coll_dir(store) / b_index).unlink()  # database b cannot be restored
    with pytest.raises(IntegrityError, match="is missing"):
        store.restore(COLL, encryption=PASS)
    assert store.databases() == []


def test_backup_while_a_writer_keeps_committing(store: Store) -> None:
    """The backup is one transaction-consistent moment: every committed batch whole, none half."""
    import threading
    import time

    fill_bank(store, accounts=20000)
    stop = threading.Event()
    committed: list[int] = []

    def writer() -> None:
        conn = store.connect("bank")
        batch = 0
        while not stop.is_set():
            batch += 1
            with conn:  # each batch: 50 rows in one transaction, tagged with its batch number
                conn.executemany(
                    "INSERT INTO audit(account, what) VALUES (?, ?)", [(batch, f"batch {batch}") for _ in range(50)]
                )
            committed.append(batch)
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(committed) < 5:
            time.sleep(0.001)
        store.backup(COLL, encryption=PASS)
    finally:
        stop.set()
        thread.join()
    store.restore(COLL, encryption=PASS, databases=["bank"], new_db_name="copy")
    conn = store.connect("copy")
    batches = conn.execute("SELECT account, count(*) FROM audit WHERE what LIKE 'batch %' GROUP BY account").fetchall()
    conn.close()
    assert batches, "the writer committed before the snapshot, so some batches must be in the backup"
    assert all(n == 50 for _b, n in batches)  # no batch is cut in half
    numbers = sorted(b for b, _n in batches)
    assert numbers == list(range(1, len(numbers) + 1))  # a prefix of the commit order: no gaps
    assert len(numbers) <= len(committed)
