"""The `strongroom` command: init, keys, db, backup/restore/show/alter-backup, demo."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner

from strongroom.cli import main
from strongroom.store import open_store


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("STRONGROOM_STORE", str(tmp_path / "store"))
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(tmp_path / "store")]).exit_code == 0
    return runner


def ok(runner: CliRunner, *args: str, **kw: object) -> str:
    result = runner.invoke(main, list(args), **kw)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return result.output


def seed(path: Path) -> None:
    store = open_store(path)
    store.create_database("app")
    conn = store.connect("app")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [(f"value {i}",) for i in range(500)])
    conn.close()


def test_keys_create_is_0600_and_refuses_overwrite(cli: CliRunner, _keyring: Path) -> None:
    out = ok(cli, "keys", "create", "east")
    assert "use it as: kms = 'local:///east'" in out
    key = _keyring / "east.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    again = cli.invoke(main, ["keys", "create", "east"])
    assert again.exit_code == 1 and again.output == f'ERROR: local key "east" already exists in {_keyring}\n'
    assert "east" in ok(cli, "keys", "list").split()


def test_backup_restore_show_alter(cli: CliRunner, tmp_path: Path) -> None:
    seed(tmp_path / "store")
    ok(cli, "keys", "create", "east")
    ok(cli, "keys", "create", "west")
    out = ok(cli, "backup", "nodelocal://1/b", "--kms", "local:///east", "--format", "json")
    [job] = json.loads(out)
    assert job["status"] == "succeeded" and job["rows"] == 500
    assert isinstance(job["job_id"], str) and len(job["job_id"]) == 19  # > 2^53: a number would lose digits
    ok(cli, "backup", "nodelocal://1/b", "--incremental", "--kms", "local:///east")
    paths = json.loads(ok(cli, "show", "backups", "nodelocal://1/b", "--format", "json"))
    assert len(paths) == 1
    shown = json.loads(ok(cli, "show", "backup", "nodelocal://1/b", "--kms", "local:///east", "--format", "json"))
    assert {r["backup_type"] for r in shown} == {"full", "incremental"}
    ok(cli, "alter-backup", "nodelocal://1/b", "--new-kms", "local:///west", "--old-kms", "local:///east")
    out = ok(cli, "restore", "nodelocal://1/b", "--database", "app", "--new-db-name", "app2", "--kms", "local:///west")
    assert "| succeeded |" in out
    assert json.loads(ok(cli, "db", "list", "--format", "json")) == [
        {"database_name": "app", "region": "local"},
        {"database_name": "app2", "region": "local"},
    ]
    fail = cli.invoke(main, ["restore", "nodelocal://1/b", "--kms", "local:///west"])
    assert fail.exit_code == 1 and fail.output == 'ERROR: database "app" already exists\n'


def test_passphrase_never_on_the_command_line(cli: CliRunner, tmp_path: Path) -> None:
    seed(tmp_path / "store")
    out = ok(cli, "backup", "/" + str(tmp_path / "coll").lstrip("/"), "--passphrase", input="pw-1\npw-1\n")
    assert "pw-1" not in out
    phrase = tmp_path / "phrase"
    phrase.write_text("pw-1\n")
    dest = tmp_path / "out.db"
    ok(cli, "restore", str(tmp_path / "coll"), "--file", str(dest), "--passphrase-file", str(phrase))
    assert apsw.Connection(str(dest)).execute("SELECT count(*) FROM t").fetchall() == [(500,)]
    wrong = cli.invoke(
        main,
        ["restore", str(tmp_path / "coll"), "--file", str(tmp_path / "x.db"), "--passphrase"],
        env={"STRONGROOM_PASSPHRASE": "pw-2"},
    )
    assert wrong.exit_code == 1 and wrong.output.endswith("failed to decrypt — maybe incorrect key\n")
    assert "pw-2" not in wrong.output


def test_plain_file_without_store(tmp_path: Path) -> None:
    src = tmp_path / "plain.db"
    conn = apsw.Connection(str(src))
    conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (42)")
    conn.close()
    runner = CliRunner()
    env = {"STRONGROOM_PASSPHRASE": "secret", "STRONGROOM_STORE": str(tmp_path / "none")}
    for args in (
        ["backup", str(tmp_path / "c"), "--file", str(src), "--passphrase"],
        ["restore", str(tmp_path / "c"), "--file", str(tmp_path / "r.db"), "--passphrase"],
    ):
        result = runner.invoke(main, args, env=env)
        assert result.exit_code == 0, result.output
    assert apsw.Connection(str(tmp_path / "r.db")).execute("SELECT x FROM t").fetchall() == [(42,)]


def test_errors_are_one_line_no_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["db", "list", "--store", str(tmp_path / "missing")])
    assert result.exit_code == 1
    missing = tmp_path / "missing"
    assert result.output == f"ERROR: {missing} is not a Strongroom store (create one with: strongroom init {missing})\n"


def test_demo_tells_the_story(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in (
        "BACKUP INTO 'nodelocal://1/passphrase-backups' WITH encryption_passphrase = 'password123';",
        "WITH KMS=(",
        "BACKUP INTO LATEST IN 'nodelocal://1/kms-backups'",
        'ERROR: file appears encrypted -- try specifying one of "encryption_passphrase" or "kms"',
        "failed to decrypt — maybe incorrect key",
        "PRAGMA integrity_check: ok",
        "backup files containing plaintext rows: 0",
        "Everything came back",
    ):
        assert expected in out
    assert os.path.isdir(tmp_path / "demo" / "store" / "extern" / "kms-backups" / "incrementals")


def test_init_regions_cmek_and_db_regions(tmp_path: Path, _keyring: Path) -> None:
    runner = CliRunner()
    ok(runner, "keys", "create", "west-cmek")
    out = ok(
        runner,
        "init",
        str(tmp_path / "s"),
        "--region",
        "us-east1",
        "--region",
        "us-west1",
        "--cmek",
        "us-west1=local:///west-cmek",
        "--rotation-period",
        "7d",
    )
    lines = out.splitlines()
    assert lines[1].startswith("region us-east1: store key wrapped by local key file local:///strongroom-store-")
    assert lines[1].endswith("(keep a copy of it)")
    assert lines[2] == "region us-west1: store key wrapped by CMEK local:///west-cmek"
    store = str(tmp_path / "s")
    assert ok(runner, "db", "create", "orders", "--region", "us-west1", "--store", store) == (
        "created database orders in region us-west1\n"
    )
    bad = runner.invoke(main, ["db", "create", "x", "--region", "mars", "--store", store])
    assert (
        bad.exit_code == 2
        and bad.output == 'ERROR: region "mars" does not exist\nHINT: valid regions: us-east1, us-west1\n'
    )
    period = runner.invoke(main, ["init", str(tmp_path / "t"), "--rotation-period", "1 month"])
    assert period.exit_code == 2
    assert period.output == "ERROR: invalid duration '1 month': use a positive number with s, m, h or d, e.g. 30d\n"
    assert open_store(store).encryption_status()[0].rotation_period_s == 7 * 86400
