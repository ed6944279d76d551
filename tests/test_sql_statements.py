"""The seed document's statements through Store.execute and `strongroom sql`: columns, shape, effects."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import fill_bank, table_rows

from strongroom import Store
from strongroom.cli import main
from strongroom.errors import EncryptionError, NotFoundError, UsageError

JOB_COLUMNS = ("job_id", "status", "fraction_completed", "rows", "index_entries", "bytes", "encryption")
EAST, WEST = "local:///east?KEYRING={ring}", "local:///west?KEYRING={ring}"


@pytest.fixture
def ring(keys: tuple[str, str, str], _keyring: Path) -> str:
    return str(_keyring)


def test_seed_kms_examples(store: Store, ring: str) -> None:
    fill_bank(store, accounts=2689)
    east, west = EAST.format(ring=ring), WEST.format(ring=ring)
    # "Take an encrypted backup" (AWS KMS example, with a local key in place of aws:///)
    r = store.execute(f"BACKUP INTO 'nodelocal://1/kms-single' WITH kms = '{east}';")
    assert r.columns == JOB_COLUMNS and len(r.rows) == 1
    job_id, status, fraction, rows, index_entries, nbytes, encryption = r.rows[0]
    assert status == "succeeded" and fraction == 1 and rows == 2689 + 1344 and nbytes > 0 and encryption == "kms"
    # "Take a backup with multi-region encryption"
    r = store.execute(
        f"""BACKUP INTO 'nodelocal://1/kms-multi'
    WITH KMS=(
      '{east}',
      '{west}'
    );"""
    )
    assert r.rows[0][1] == "succeeded"
    # "Restore from an encrypted backup": any subset of the URIs
    store.execute("DROP DATABASE bank")
    r = store.execute(f"RESTORE FROM LATEST IN 'nodelocal://1/kms-multi' WITH kms = '{west}';")
    assert r.columns == JOB_COLUMNS and r.rows[0][1:] == ("succeeded", 1.0, rows, index_entries, r.rows[0][5], "kms")
    assert r.rows[0][0] != job_id
    assert len(table_rows(store, "bank", "accounts")) == 2689


def test_seed_passphrase_examples(store: Store) -> None:
    fill_bank(store, accounts=2597)
    r = store.execute("BACKUP INTO 'nodelocal://1/pw' WITH encryption_passphrase = 'password123';")
    assert r.rows[0][1] == "succeeded" and r.rows[0][3] == 2597 + 1298
    store.execute("DROP DATABASE bank")
    r = store.execute("RESTORE FROM LATEST IN 'nodelocal://1/pw' WITH encryption_passphrase = 'password123';")
    assert r.rows[0][1] == "succeeded" and r.rows[0][3] == 2597 + 1298
    # "To restore from a specific backup, use RESTORE FROM {subdirectory} IN ..."
    [sub] = [row[0] for row in store.execute("SHOW BACKUPS IN 'nodelocal://1/pw'").rows]
    r = store.execute(
        f"RESTORE DATABASE bank FROM '{sub}' IN 'nodelocal://1/pw' "
        "WITH encryption_passphrase = 'password123', new_db_name = 'bank_copy'"
    )
    assert table_rows(store, "bank_copy", "audit") == table_rows(store, "bank", "audit")


def test_incremental_show_and_alter(store: Store, ring: str) -> None:
    east, west = EAST.format(ring=ring), WEST.format(ring=ring)
    fill_bank(store, accounts=500)
    store.execute(f"BACKUP DATABASE bank INTO 'nodelocal://1/c' WITH kms = '{east}'")
    store.execute("USE bank; UPDATE accounts SET balance = 0 WHERE id < 10")
    r = store.execute(f"BACKUP DATABASE bank INTO LATEST IN 'nodelocal://1/c' WITH kms = '{east}'")
    assert r.rows[0][1] == "succeeded"
    shown = store.execute(f"SHOW BACKUP FROM LATEST IN 'nodelocal://1/c' WITH kms = '{east}'")
    assert shown.columns[:4] == ("database_name", "parent_schema_name", "object_name", "object_type")
    assert {row[4] for row in shown.rows} == {"full", "incremental"}
    store.execute(f"ALTER BACKUP LATEST IN 'nodelocal://1/c' ADD NEW_KMS = '{west}' WITH OLD_KMS = '{east}'")
    checked = store.execute(f"SHOW BACKUP LATEST IN 'nodelocal://1/c' WITH kms = '{west}', check_files")
    assert checked.columns[-1] == "file_bytes"
    store.execute(f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/c' WITH kms = '{west}', new_db_name = b2")
    assert table_rows(store, "b2", "accounts") == table_rows(store, "bank", "accounts")


def test_table_backup_and_restore_into_db(store: Store) -> None:
    fill_bank(store, accounts=100)
    store.execute("USE bank")
    store.execute("BACKUP TABLE audit INTO 'nodelocal://1/t' WITH encryption_passphrase = $1", ["pw"])
    store.execute("CREATE DATABASE other")
    r = store.execute(
        "RESTORE TABLE bank.audit FROM LATEST IN 'nodelocal://1/t' WITH encryption_passphrase = $1, into_db = 'other'",
        ["pw"],
    )
    assert r.rows[0][3] == 50
    assert store.execute("USE other; SHOW TABLES").rows == [("public", "audit", "table", 50)]


def test_jobs_are_kept_and_secrets_redacted(store: Store, ring: str) -> None:
    fill_bank(store, accounts=10)
    secret = "s3cr3t-passphrase"
    store.execute(f"BACKUP INTO 'nodelocal://1/j' WITH encryption_passphrase = '{secret}'")
    with pytest.raises(EncryptionError):
        store.execute(
            "RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/j' "
            "WITH encryption_passphrase = 'nope', new_db_name = x"
        )
    jobs = store.execute("SHOW JOBS")
    assert jobs.columns[:6] == ("job_id", "job_type", "description", "statement", "user_name", "status")
    assert [(row[1], row[5]) for row in jobs.rows] == [("BACKUP", "succeeded"), ("RESTORE", "failed")]
    assert "failed to decrypt" in jobs.rows[1][12]
    assert "encryption_passphrase = '*****'" in jobs.rows[0][2]
    assert secret not in repr(jobs.rows) and "nope" not in repr(jobs.rows)
    one = store.execute(f"SHOW JOB {jobs.rows[0][0]}")
    assert one.rows == [jobs.rows[0]]


def test_detached_returns_job_id_at_once(store: Store) -> None:
    fill_bank(store, accounts=20000)
    with store.session() as session:
        [r] = session.execute("BACKUP INTO 'nodelocal://1/d' WITH encryption_passphrase = 'x', detached")
        assert r.columns == ("job_id",)
        job_id = r.rows[0][0]
        session.wait_for_jobs()
    deadline = time.monotonic() + 30
    while store.jobs.list(job_id)[0].status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.jobs.list(job_id)[0].status == "succeeded"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("BACKUP INTO 'nodelocal://1/x' WITH foo = 'bar'", 'unknown option "foo"'),
        (
            "BACKUP INTO 'nodelocal://1/x' WITH encryption_passphrase = 'a', encryption_passphrase = 'b'",
            '"encryption_passphrase" specified multiple times',
        ),
        (
            "BACKUP INTO 'nodelocal://1/x' WITH encryption_passphrase = 'a', kms = 'local:///east'",
            "cannot have both encryption_passphrase and kms option set",
        ),
        ("BACKUP INTO 'nodelocal:/1' WITH detached", "nodelocal URI must name a node, like nodelocal://1/backups"),
        ("BACKUP INTO 'nowhere'", "malformed URI 'nowhere': missing scheme (such as nodelocal://, s3://)"),
        ("SELECT 1", "no database is selected: USE <database> first (SHOW DATABASES lists them)"),
    ],
)
def test_statement_errors(store: Store, sql: str, message: str) -> None:
    fill_bank(store, accounts=1)
    with pytest.raises(UsageError) as exc:
        store.execute(sql)
    assert str(exc.value).startswith(message)


def test_cli_sql_shell_script_mode(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("STRONGROOM_STORE", str(store.path))
    monkeypatch.setenv("PW", "password123")
    out = runner.invoke(main, ["sql", "-e", "CREATE DATABASE d; USE d; CREATE TABLE t(x); INSERT INTO t VALUES (1)"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(
        main, ["sql", "--param-env", "PW", "-e", "BACKUP INTO 'nodelocal://1/s' WITH encryption_passphrase = $1"]
    )
    assert out.exit_code == 0 and "| succeeded |" in out.output and out.output.rstrip().endswith("(1 row)")
    out = runner.invoke(main, ["sql", "-e", "SHOW BACKUPS IN 'nodelocal://1/s'", "--format", "csv"])
    assert out.output.splitlines()[0] == "path,status" and out.output.splitlines()[1].endswith(",complete")
    assert len(out.output.splitlines()) == 2
    out = runner.invoke(main, ["sql", "-d", "d", "-e", "SELECT x FROM t", "--format", "json"])
    assert json.loads(out.output) == [{"x": 1}]
    out = runner.invoke(main, ["sql", "-e", "BACKUP DATABASE INTO 'x'"])
    assert out.exit_code == 1
    assert out.output.startswith('ERROR: at or near "into": syntax error\nDETAIL: source SQL:\nBACKUP DATABASE INTO')


def test_restore_as_of_system_time_picks_the_layer(store: Store) -> None:
    fill_bank(store, accounts=100)
    store.execute("BACKUP INTO 'nodelocal://1/t' WITH encryption_passphrase = 'pw'")
    shown = store.execute("SHOW BACKUP LATEST IN 'nodelocal://1/t' WITH encryption_passphrase = 'pw'")
    full_end = shown.rows[0][6]
    time.sleep(0.05)
    store.execute("USE bank; DELETE FROM accounts WHERE id <= 40")
    store.execute("BACKUP INTO LATEST IN 'nodelocal://1/t' WITH encryption_passphrase = 'pw'")
    store.execute(
        f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/t' AS OF SYSTEM TIME '{full_end}' "
        "WITH encryption_passphrase = 'pw', new_db_name = asof"
    )
    store.execute(
        "RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/t' WITH encryption_passphrase = 'pw', new_db_name = now"
    )
    assert len(table_rows(store, "asof", "accounts")) == 100
    assert len(table_rows(store, "now", "accounts")) == 60
    with pytest.raises(UsageError, match="AS OF SYSTEM TIME 'yesterday'"):
        store.execute("RESTORE FROM LATEST IN 'nodelocal://1/t' AS OF SYSTEM TIME 'yesterday'")


def test_statements_naming_one_backup_by_its_uri(store: Store) -> None:
    fill_bank(store, accounts=30)
    store.execute("BACKUP INTO 'nodelocal://1/u' WITH encryption_passphrase = 'pw'")
    [sub] = [row[0] for row in store.execute("SHOW BACKUPS IN 'nodelocal://1/u'").rows]
    shown = store.execute(f"SHOW BACKUP 'nodelocal://1/u{sub}' WITH encryption_passphrase = 'pw'")
    assert [r[2] for r in shown.rows if r[3] == "table"] == ["accounts", "audit"]
    store.execute(
        f"RESTORE DATABASE bank FROM 'nodelocal://1/u{sub}' WITH encryption_passphrase = 'pw', new_db_name = u"
    )
    assert len(table_rows(store, "u", "accounts")) == 30
    with pytest.raises(UsageError) as exc:
        store.execute("RESTORE FROM 'nodelocal://1/u' WITH encryption_passphrase = 'pw'")
    assert str(exc.value).startswith("RESTORE FROM 'nodelocal://1/u' names no backup: use RESTORE FROM LATEST IN")


def test_restore_as_of_an_interval_back_from_now(store: Store) -> None:
    fill_bank(store, accounts=50)
    store.execute("BACKUP INTO 'nodelocal://1/r' WITH encryption_passphrase = 'pw'")
    store.execute("USE bank; DELETE FROM accounts WHERE id <= 10")
    store.execute("BACKUP INTO LATEST IN 'nodelocal://1/r' WITH encryption_passphrase = 'pw'")
    store.execute(
        "RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/r' AS OF SYSTEM TIME '-1us' "
        "WITH encryption_passphrase = 'pw', new_db_name = recent"
    )
    assert len(table_rows(store, "recent", "accounts")) == 40  # both layers are older than 1 µs ago
    with pytest.raises(NotFoundError, match="is as old as"):
        store.execute(
            "RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/r' AS OF SYSTEM TIME '-1000 days' "
            "WITH encryption_passphrase = 'pw', new_db_name = never"
        )
    with pytest.raises(UsageError, match="must reach into the past"):
        store.execute("RESTORE FROM LATEST IN 'nodelocal://1/r' AS OF SYSTEM TIME '+1h'")
