"""A store database's encryption cannot be changed or bypassed through SQL."""

from __future__ import annotations

import apsw
import pytest
from conftest import MARKER

from strongroom import Store
from strongroom.errors import UsageError

REFUSED = (
    "not authorized: a store database's keys and encryption are managed by the store "
    "(key and cipher pragmas, temp files on disk, ATTACH and VACUUM INTO are refused)"
)


@pytest.mark.parametrize(
    "sql",
    [
        "PRAGMA rekey=''",
        "PRAGMA key='guess'",
        "PRAGMA hexrekey='00'",
        "PRAGMA cipher='chacha20'",
        "PRAGMA cipher_page_size",
        "PRAGMA kdf_iter=1",
        "PRAGMA temp_store=FILE",
        "PRAGMA temp_store_directory='/tmp'",
        "ATTACH 'plain.db' AS plain",
        "VACUUM INTO 'copy.db'",
    ],
)
def test_sql_cannot_touch_keys_or_write_plaintext(store: Store, sql: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store.create_database("app")
    store.execute(f"USE app; CREATE TABLE t(v TEXT); INSERT INTO t VALUES ('{MARKER}')")
    with pytest.raises(UsageError) as exc:
        store.execute(sql)
    assert str(exc.value) == REFUSED
    assert not (tmp_path / "plain.db").exists() and not (tmp_path / "copy.db").exists()
    assert store.execute("SELECT v FROM t").rows == [(MARKER,)]


def test_everyday_pragmas_still_work(store: Store) -> None:
    store.create_database("app")
    assert store.execute("USE app; PRAGMA journal_mode").rows == [("wal",)]
    assert store.execute("PRAGMA temp_store=MEMORY; PRAGMA temp_store").rows == [(2,)]
    store.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")
    assert [r[1] for r in store.execute("PRAGMA table_info('t')").rows] == ["a", "b"]


def test_app_connection_is_guarded_too(store: Store) -> None:
    store.create_database("app")
    conn = store.connect("app")
    with pytest.raises(apsw.AuthError):
        conn.execute("PRAGMA rekey=''")
    assert conn.execute("PRAGMA temp_store").fetchall() == [(2,)]  # temp tables stay in memory
