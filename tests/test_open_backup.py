"""Query a backup without restoring it: `strongroom.open_backup`, `Store.open_backup`, `strongroom sql --backup`."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner
from conftest import fill_bank, table_rows

from strongroom import Encryption, Store, backup_file, open_backup
from strongroom.cli import main
from strongroom.errors import IntegrityError, NotFoundError

pytest_plugins = ("cloud_servers",)

PASS = "correct horse battery"
ENC = Encryption(passphrase=PASS)


def _chain(tmp_path: Path, blob_mb: int = 1) -> tuple[str, str]:
    """A full backup of 500 rows, then an incremental after 100 more; returns (collection, full end)."""
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); CREATE TABLE u(x)")
    with conn:
        conn.executemany("INSERT INTO t(v) VALUES (randomblob(?))", [(blob_mb * 2000,)] * 500)
    coll = str(tmp_path / "coll")
    backup_file(db, coll, encryption=ENC)
    with conn:
        conn.executemany("INSERT INTO t(v) VALUES (randomblob(10))", [()] * 100)
    conn.close()
    backup_file(db, coll, encryption=ENC, incremental="LATEST")
    with open_backup(coll, encryption=ENC) as reader:
        return coll, (reader.manifest.previous_layers and _full_end(coll)) or ""


def _full_end(coll: str) -> str:
    from strongroom.backup import engine
    from strongroom.backup.requests import ShowBackupRequest

    return engine.show_backup(ShowBackupRequest(in_=(coll,), encryption=ENC)).manifests[0].end_time


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_query_the_latest_and_an_earlier_restore_point(tmp_path: Path) -> None:
    coll, full_end = _chain(tmp_path)
    before = _files_under(tmp_path)
    with open_backup(coll, encryption=ENC) as reader:
        assert reader.databases == ["app"]
        conn = reader.connect("app")
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(600,)]
        with pytest.raises(apsw.ReadOnlyError):
            conn.execute("DELETE FROM t")
        with pytest.raises(NotFoundError, match='"nope" is not in this backup'):
            reader.connect("nope")
    with open_backup(coll, encryption=ENC, as_of=datetime.fromisoformat(full_end)) as reader:
        assert reader.connect("app").execute("SELECT count(*) FROM t").fetchall() == [(500,)]
    assert _files_under(tmp_path) == before  # nothing written: no temp file, no plaintext


def test_a_point_query_reads_a_few_packs(tmp_path: Path) -> None:
    coll, _ = _chain(tmp_path, blob_mb=60)  # ~120 KiB random rows: 60 MB, two packs at least
    packs = list(Path(coll).rglob("*.pack"))
    assert len(packs) >= 2
    with open_backup(coll, encryption=ENC) as reader:
        conn = reader.connect("app")
        assert conn.execute("SELECT id FROM t WHERE id = 3").fetchall() == [(3,)]
        [(_conn, image)] = reader._open
        assert len(image._open) < len(packs)  # only the packs holding the pages the query touched


def test_a_tampered_pack_is_named_when_read(tmp_path: Path) -> None:
    coll, _ = _chain(tmp_path)
    [pack, *_] = sorted(Path(coll).rglob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 1
    pack.write_bytes(bytes(data))
    with open_backup(coll, encryption=ENC) as reader, pytest.raises((IntegrityError, apsw.Error)) as err:
        reader.connect("app").execute("SELECT sum(length(v)) FROM t").fetchall()
    assert "failed authentication" in str(err.value) and pack.name in str(err.value)


def test_the_sql_shell_on_a_backup(tmp_path: Path) -> None:
    coll, full_end = _chain(tmp_path)
    env = {"STRONGROOM_PASSPHRASE": PASS}
    runner = CliRunner()

    def sql(*args: str) -> tuple[int, str]:
        out = runner.invoke(main, ["sql", "--backup", coll, "--passphrase", *args], env=env)
        return out.exit_code, out.output

    assert sql("-e", "SELECT count(*) AS n FROM t", "--format", "csv") == (0, "n\n600\n")
    code, out = sql("--as-of", full_end, "-e", "SELECT count(*) AS n FROM t", "--format", "csv")
    assert (code, out) == (0, "n\n500\n")
    code, out = sql("-e", "SHOW DATABASES", "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("app")
    code, out = sql("-e", "DELETE FROM t")
    assert code == 1 and "read-only" in out
    code, out = sql("-e", "BACKUP INTO 'nodelocal://1/x'")
    assert code == 1 and "BACKUP is not available on a backup opened read-only" in out
    wrong = runner.invoke(main, ["sql", "--as-of", "-1h", "-e", "SELECT 1"])
    assert wrong.exit_code == 2 and "go with --backup" in wrong.output


def test_store_open_backup(store: Store) -> None:
    fill_bank(store, accounts=200)
    store.backup("nodelocal://1/q", encryption=ENC)
    with store.open_backup("nodelocal://1/q", encryption=ENC) as reader:
        conn = reader.connect("bank")
        assert [tuple(r) for r in conn.execute("SELECT * FROM accounts ORDER BY 1")] == table_rows(
            store, "bank", "accounts"
        )
    assert not [p for p in Path(store.path).rglob("*") if p.name.endswith((".restoring", "-journal"))]
    assert os.path.isdir(store.path)


def test_check_query_and_as_of_on_s3(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The same on S3 (moto): check --read-data, a query in place, and a restore AS OF an interval."""
    from strongroom import restore_file
    from strongroom.backup import engine

    cloud = request.getfixturevalue("moto_s3")
    coll = cloud.uri("inplace")
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    with conn:
        conn.executemany("INSERT INTO t(v) VALUES (randomblob(500))", [()] * 400)
    backup_file(db, coll, encryption=ENC)
    conn.execute("DELETE FROM t WHERE id > 300")
    conn.close()
    backup_file(db, coll, encryption=ENC, incremental="LATEST")
    [report] = engine.check(coll, ENC, read_data=True)
    assert report.status == "ok" and report.layers == 2 and report.chunks_read > 0
    with open_backup(coll, encryption=ENC) as reader:
        assert reader.connect("app").execute("SELECT count(*) FROM t").fetchall() == [(300,)]
    out = CliRunner().invoke(
        main,
        ["restore", coll, "--file", str(tmp_path / "r.db"), "--passphrase", "--as-of", "-1us"],
        env={"STRONGROOM_PASSPHRASE": PASS},
    )
    assert out.exit_code == 0, out.output
    assert cloud.secret not in out.output
    restored = apsw.Connection(str(tmp_path / "r.db"))
    assert restored.execute("SELECT count(*) FROM t").fetchall() == [(300,)]
    restored.close()
    restore_file(coll, tmp_path / "py.db", encryption=ENC)
