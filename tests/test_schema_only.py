"""RESTORE ... WITH schema_only [, verify_backup_table_data], as CockroachDB defines them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import fill_bank

from strongroom import Store
from strongroom.cli import main
from strongroom.errors import IntegrityError, UsageError

BACKUP = "BACKUP INTO 'nodelocal://1/s' WITH encryption_passphrase = 'a long passphrase'"
FROM = "FROM LATEST IN 'nodelocal://1/s' WITH encryption_passphrase = 'a long passphrase'"


def _schema(store: Store, db: str) -> list[tuple[object, ...]]:
    conn = store.connect(db)
    try:
        return sorted((str(t), str(n), str(s)) for t, n, s in conn.execute("SELECT type, name, sql FROM sqlite_schema"))
    finally:
        conn.close()


def _count(store: Store, db: str, table: str) -> int:
    conn = store.connect(db)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    finally:
        conn.close()


def test_schema_only_creates_the_schema_and_no_rows(store: Store) -> None:
    fill_bank(store, accounts=300)
    conn = store.connect("bank")
    conn.execute("CREATE VIEW rich AS SELECT * FROM accounts WHERE balance > 500000")
    conn.execute("CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, x); INSERT INTO seq(x) VALUES (1)")
    conn.execute(
        "CREATE TRIGGER audit_it AFTER INSERT ON accounts BEGIN INSERT INTO audit(account) VALUES (new.id); END"
    )
    conn.close()
    store.execute(BACKUP)
    r = store.execute(f"RESTORE DATABASE bank {FROM}, schema_only, new_db_name = empty")
    assert r.rows[0][1] == "succeeded" and r.rows[0][3:6] == (0, 0, 0)
    assert _schema(store, "empty") == _schema(store, "bank")
    assert _count(store, "empty", "accounts") == _count(store, "empty", "audit") == 0
    # the schema works: the trigger fires, the AUTOINCREMENT table starts afresh
    conn = store.connect("empty")
    conn.execute("INSERT INTO accounts(owner, balance) VALUES ('x', 1)")
    assert conn.execute("SELECT count(*) FROM audit").fetchall() == [(1,)]
    conn.close()
    shown = store.execute("SHOW JOBS").rows[-1]
    assert "schema_only" in str(shown[2])


def test_verify_backup_table_data_reads_every_row(store: Store) -> None:
    fill_bank(store, accounts=300)
    store.execute(BACKUP)
    store.execute(f"RESTORE DATABASE bank {FROM}, schema_only, verify_backup_table_data, new_db_name = ok")
    assert _count(store, "ok", "accounts") == 0
    [pack] = [p for p in (Path(store.extern_dir) / "s").rglob("*.pack")]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 1  # a chunk of table data
    pack.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="failed authentication"):
        store.execute(f"RESTORE DATABASE bank {FROM}, schema_only, verify_backup_table_data, new_db_name = bad")
    assert "bad" not in store.databases()


def test_the_rules_and_the_cli(store: Store, tmp_path: Path) -> None:
    fill_bank(store, accounts=30)
    store.execute(BACKUP)
    with pytest.raises(UsageError, match="schema_only option must be set"):
        store.execute(f"RESTORE DATABASE bank {FROM}, verify_backup_table_data, new_db_name = x")
    with pytest.raises(UsageError, match="whole databases"):
        store.execute(f"RESTORE TABLE bank.accounts {FROM}, schema_only, into_db = bank")
    out = CliRunner().invoke(
        main,
        ["--store", str(store.path), "restore", "nodelocal://1/s", "--database", "bank", "--new-db-name", "cli",
         "--schema-only", "--verify-backup-table-data", "--passphrase"],
        env={"STRONGROOM_PASSPHRASE": "a long passphrase"},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert _schema(store, "cli") == _schema(store, "bank") and _count(store, "cli", "accounts") == 0
