"""No plaintext backup of encrypted data without consent; every result says which encryption it used."""

from __future__ import annotations

import stat
from pathlib import Path

import apsw
import pytest
from conftest import fill_bank

from strongroom import Encryption, NotFoundError, Store, UsageError, backup_file, restore_file

REFUSED = (
    "refusing to write an unencrypted backup of databases that are encrypted at rest: "
    "give encryption_passphrase = '...' or kms = '...' (or, to write them in plain text, "
    "WITH include_unencrypted_data)"
)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_a_store_backup_without_a_key_is_refused_and_writes_nothing(store: Store) -> None:
    fill_bank(store, accounts=20)
    with pytest.raises(UsageError) as exc:
        store.backup("nodelocal://1/plain")
    assert str(exc.value) == REFUSED
    with pytest.raises(UsageError) as sql_exc:
        store.execute("BACKUP INTO 'nodelocal://1/plain'")
    assert str(sql_exc.value) == REFUSED
    with pytest.raises(UsageError):
        store.execute("BACKUP INTO 'nodelocal://1/plain' WITH detached")
    assert _files(store.extern_dir / "plain") == []
    assert store.execute("SHOW JOBS").rows == []  # refused while planning: no job ran


def test_consent_writes_plaintext_and_every_output_says_so(store: Store) -> None:
    fill_bank(store, accounts=20)
    r = store.execute("BACKUP INTO 'nodelocal://1/plain' WITH include_unencrypted_data")
    assert r.columns[-1] == "encryption" and r.rows[0][-1] == "none"
    packs = [p for p in _files(store.extern_dir / "plain") if p.suffix == ".pack"]
    assert packs and not any(p.read_bytes().startswith(b"encrypt") for p in packs)  # not sealed: as consented
    shown = store.show_backup("nodelocal://1/plain")
    assert shown.columns[shown.columns.index("encryption")] == "encryption"
    assert {row[shown.columns.index("encryption")] for row in shown.rows} == {"none"}
    [job] = store.execute("SHOW JOBS").rows
    assert job[2] == "BACKUP INTO 'nodelocal://1/plain' WITH OPTIONS (include_unencrypted_data)"
    inc = store.execute("BACKUP INTO LATEST IN 'nodelocal://1/plain' WITH include_unencrypted_data = true")
    assert inc.rows[0][-1] == "none"
    with pytest.raises(UsageError):
        store.execute("BACKUP INTO LATEST IN 'nodelocal://1/plain' WITH include_unencrypted_data = false")


@pytest.mark.parametrize(
    ("encryption", "kind"),
    [(Encryption(passphrase="pw"), "passphrase"), (Encryption(kms=("local:///east",)), "kms")],
)
def test_results_and_show_backup_name_the_encryption(
    store: Store, keys: tuple[str, str, str], encryption: Encryption, kind: str
) -> None:
    fill_bank(store, accounts=20)
    assert store.backup("nodelocal://1/c", encryption=encryption).encryption == kind
    shown = store.show_backup("nodelocal://1/c", encryption=encryption)
    assert {row[shown.columns.index("encryption")] for row in shown.rows} == {kind}
    restored = store.restore("nodelocal://1/c", encryption=encryption, databases=["bank"], new_db_name="b2")
    assert restored.row()[-1] == kind


def test_a_plain_file_may_be_backed_up_unencrypted_by_choice(tmp_path: Path, store: Store) -> None:
    src = tmp_path / "app.db"
    conn = apsw.Connection(str(src))
    conn.execute("CREATE TABLE t(v); INSERT INTO t VALUES ('x')")
    conn.close()
    result = backup_file(src, str(tmp_path / "coll"))
    assert result.encryption == "none"
    restored = restore_file(str(tmp_path / "coll"), tmp_path / "back.db")
    assert restored.encryption == "none"
    assert apsw.Connection(str(tmp_path / "back.db")).execute("SELECT v FROM t").fetchall() == [("x",)]


def test_store_files_that_hold_jobs_or_errors_are_the_owners_alone(store: Store) -> None:
    fill_bank(store, accounts=20)
    with pytest.raises(NotFoundError):  # a failed job: its error is recorded in system.db
        store.restore("nodelocal://1/none", encryption=Encryption(passphrase="x"))
    store.execute("BACKUP INTO 'nodelocal://1/m' WITH encryption_passphrase = 'x'")
    for folder in (store.path, store.databases_dir, store.extern_dir, store.keys_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for name in ("system.db", "system.db-wal", "STRONGROOM-STORE", "audit.log"):
        path = store.path / name
        if path.exists() or name == "system.db":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_the_cli_refuses_a_plaintext_store_backup_unless_told(store: Store) -> None:
    from click.testing import CliRunner

    from strongroom.cli import main

    fill_bank(store, accounts=20)
    runner = CliRunner()
    refused = runner.invoke(main, ["backup", "nodelocal://1/cli", "--store", str(store.path)])
    assert (refused.exit_code, refused.output) == (2, f"ERROR: {REFUSED}\n")
    done = runner.invoke(
        main,
        ["backup", "nodelocal://1/cli", "--store", str(store.path), "--include-unencrypted-data", "--format", "csv"],
    )
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[0].endswith(",encryption") and done.output.splitlines()[1].endswith(",none")
    restored = runner.invoke(
        main,
        [
            "restore",
            "nodelocal://1/cli",
            "--store",
            str(store.path),
            "--database",
            "bank",
            "--new-db-name",
            "b2",
            "--verify",
        ],
    )
    assert restored.exit_code == 0, restored.output
    assert store.execute("SHOW JOBS").rows[-1][2].endswith("new_db_name = 'b2', verify)")
