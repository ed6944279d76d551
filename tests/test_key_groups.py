"""k-of-n key groups: the data key split with Shamir's scheme, one share per group, any THRESHOLD groups
(one key of each) open the backup; fewer open nothing. On the embedded default and on AWS KMS."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner
from conftest import fill_bank, table_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kms_servers import AwsKmsServer

from strongroom import Encryption, backup_file, restore_file
from strongroom.backup.key_groups import GROUPS_ID, check_groups, new_grouped_key, unwrap_grouped_key
from strongroom.backup.keys import read_encryption_infos
from strongroom.cli import main
from strongroom.crypto import EncryptionInfo, kms_identity
from strongroom.errors import EncryptionError, KMSError, UsageError
from strongroom.kms import create_key
from strongroom.sql import parse
from strongroom.storage import open_storage
from strongroom.store import Store

pytest_plugins = ("kms_servers",)


def _db(tmp_path: Path) -> Path:
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    with conn:
        conn.executemany("INSERT INTO t(v) VALUES (?)", [(f"row {i}",) for i in range(500)])
    conn.close()
    return db


def _rows(path: Path) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(path))
    try:
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture
def keys() -> list[str]:
    for name in ("a1", "a2", "b1", "c1", "d1"):
        create_key(name)
    return [f"local:///{n}" for n in ("a1", "a2", "b1", "c1")]


def test_any_two_of_three_groups_open_it_one_alone_does_not(tmp_path: Path, keys: list[str]) -> None:
    a1, a2, b1, c1 = keys
    db, coll = _db(tmp_path), str(tmp_path / "coll")
    backup_file(db, coll, encryption=Encryption(groups=((a1, a2), (b1,), (c1,)), threshold=2))
    want = _rows(db)
    for n, pair in enumerate([(a1, b1), (a2, c1), (b1, c1), (a1, a2, c1)]):
        out = tmp_path / f"r{n}.db"
        restore_file(coll, out, encryption=Encryption(kms=pair))
        assert _rows(out) == want
    for alone in ([a1], [a2], [b1], [c1], [a1, a2]):  # a1 and a2 are one group: one share
        with pytest.raises(KMSError) as exc:
            restore_file(coll, tmp_path / "no.db", encryption=Encryption(kms=tuple(alone)))
        assert "split across 3 key groups, any 2 of which open it: the keys given open 1 group;" in str(exc.value)
    assert not (tmp_path / "no.db").exists()
    # An incremental needs the key too: two groups' keys append to the chain.
    conn = apsw.Connection(str(db))
    conn.execute("UPDATE t SET v = 'changed' WHERE id = 7")
    conn.close()
    backup_file(db, coll, encryption=Encryption(kms=(b1, c1)), incremental="LATEST")
    restore_file(coll, tmp_path / "inc.db", encryption=Encryption(kms=(a1, c1)))
    assert _rows(tmp_path / "inc.db") == _rows(db)


def test_what_encryption_info_holds(tmp_path: Path, keys: list[str]) -> None:
    a1, a2, b1, c1 = keys
    coll = str(tmp_path / "coll")
    backup_file(_db(tmp_path), coll, encryption=Encryption(groups=((a1, a2), (b1,), (c1,)), threshold=2))
    storage = open_storage(coll)
    full = storage.list("")
    [full_dir] = {name.rsplit("/", 1)[0] for name, _ in full if name.endswith("ENCRYPTION-INFO")}
    [(_name, info)] = read_encryption_infos(storage, full_dir)
    shape = json.loads(info.encrypted_data_keys[kms_identity(GROUPS_ID)])
    assert (shape["threshold"], shape["groups"]) == (2, 3)
    assert len(info.encrypted_data_keys) == 5  # a wrap per key, and the shape
    # A forged shape (threshold 1) opens nothing: one share does not rebuild the key.
    forged = dict(info.encrypted_data_keys)
    forged[kms_identity(GROUPS_ID)] = json.dumps({**shape, "threshold": 1}).encode()
    with pytest.raises(EncryptionError, match="do not rebuild this backup's key"):
        unwrap_grouped_key(EncryptionInfo(encrypted_data_keys=forged), [b1])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 5), data=st.data())
def test_exactly_threshold_groups_rebuild_the_key(keys: list[str], n: int, data: st.DataObject) -> None:
    pool = [*keys, "local:///d1"]  # five keys, for up to five groups
    threshold = data.draw(st.integers(1, n))
    groups = [(pool[i],) for i in range(n)]
    data_key, info_bytes = new_grouped_key(groups, threshold)
    info = EncryptionInfo.decode(info_bytes)
    for size in range(1, n + 1):
        for chosen in itertools.combinations(range(n), size):
            uris = [pool[i] for i in chosen]
            if size >= threshold:
                assert unwrap_grouped_key(info, uris) == data_key
            else:
                with pytest.raises(KMSError):
                    unwrap_grouped_key(info, uris)


def test_shapes_refused(keys: list[str]) -> None:
    a1, a2, b1, _c1 = keys
    for groups, threshold, message in (
        (((a1,),), 1, "two or more key groups"),
        (((a1,), (b1,)), 3, "THRESHOLD 3: give a number from 1 to 2"),
        (((a1,), (b1,)), 0, "THRESHOLD 0"),
        (((a1, b1), (b1,)), 1, "a KMS URI appears in two key groups"),
        (((a1,), ()), 1, "every key group in GROUPS needs at least one KMS URI"),
    ):
        with pytest.raises(UsageError, match=message):
            check_groups(groups, threshold)
    with pytest.raises(UsageError, match="kms = GROUPS"):
        parse(f"RESTORE FROM LATEST IN 'x' WITH kms = GROUPS(('{a1}',), ('{a2}',)) THRESHOLD 1")


def test_sql_and_cli_with_a_store_and_aws_kms(store: Store, tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    """The statement as the issue writes it; one group on AWS KMS (its secrets redacted everywhere)."""
    fill_bank(store, accounts=300)
    create_key("laptop")
    create_key("hsm-stand-in")
    aws = aws_kms.uri(aws_kms.create_key().key_id)
    coll = "nodelocal://1/grouped"
    stmt = (
        f"BACKUP DATABASE bank INTO '{coll}' WITH kms = GROUPS(('{aws}', 'local:///hsm-stand-in'), "
        "('local:///laptop',)) THRESHOLD 2"
    )
    with store.session() as session:
        [result] = session.execute(stmt)
        assert result.rows[0][1] == "succeeded"
        described = store.jobs.list()[-1].description
        assert "kms = GROUPS((" in described and "THRESHOLD 2" in described and aws_kms.secret not in described
        with pytest.raises(KMSError, match="any 2 of which open it"):
            session.execute(f"RESTORE DATABASE bank FROM LATEST IN '{coll}' WITH kms = '{aws}', new_db_name = b2")
        session.execute(
            f"RESTORE DATABASE bank FROM LATEST IN '{coll}' WITH kms = ('{aws}', 'local:///laptop'), new_db_name = b2"
        )
    assert table_rows(store, "b2", "accounts") == table_rows(store, "bank", "accounts")
    out = CliRunner().invoke(
        main,
        [
            "backup", str(tmp_path / "cli"), "--file", str(_db(tmp_path)),
            "--kms-group", f"{aws},local:///hsm-stand-in", "--kms-group", "local:///laptop", "--threshold", "2",
        ],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(
        main, ["backup", str(tmp_path / "cli"), "--file", str(tmp_path / "app.db"), "--threshold", "2"]
    )
    assert (out.exit_code, out.output) == (2, "ERROR: key groups need both --kms-group (two or more) and --threshold\n")


def test_a_schedule_keeps_its_key_groups(store: Store, keys: list[str]) -> None:
    a1, a2, b1, c1 = keys
    fill_bank(store, accounts=100)
    coll = "nodelocal://1/scheduled-groups"
    with store.session() as session:
        session.execute(
            f"CREATE SCHEDULE g FOR BACKUP DATABASE bank INTO '{coll}' WITH kms = GROUPS(('{a1}', '{a2}'), ('{b1}',), "
            f"('{c1}',)) THRESHOLD 2 RECURRING '@hourly'"
        )
        full = next(r for r in store.schedules.show() if r.kind == "full")
        assert "GROUPS(" in full.statement and "THRESHOLD 2" in full.statement
        assert store.schedules.run_now(full.id).status == "succeeded"
        inc = next(r for r in store.schedules.show() if r.kind == "incremental")
        assert store.schedules.run_now(inc.id).status == "succeeded"
        with pytest.raises(KMSError, match="any 2 of which open it"):
            session.execute(f"RESTORE DATABASE bank FROM LATEST IN '{coll}' WITH kms = '{a1}', new_db_name = x")
        session.execute(f"RESTORE DATABASE bank FROM LATEST IN '{coll}' WITH kms = ('{a2}', '{c1}'), new_db_name = x")
    assert table_rows(store, "x", "accounts") == table_rows(store, "bank", "accounts")
