"""PostgreSQL as a backup source and restore target, against a real PostgreSQL 15 (tests/pg_server.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pg_server import PgServer, pg_server

from strongroom.backup.keys import Encryption
from strongroom.errors import AlreadyExistsError
from strongroom.postgres import (
    backup_database,
    restore_database,
)

__all__ = ["pg_server"]  # the session fixture, imported so pytest finds it

ACCOUNTS, BALANCE = 200, 1000
_names = itertools.count()


def _sql(server: PgServer, db: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(server.dsn(db), autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


@pytest.fixture
def shop(pg_server: PgServer) -> Iterator[str]:
    """A fresh database: accounts (a sum invariant), orders (serial key, FK, index, check)."""
    name = f"shop{next(_names)}"
    _sql(pg_server, "postgres", f"CREATE DATABASE {name}")
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= -1000000));"
            "CREATE TABLE orders (id serial PRIMARY KEY, account int NOT NULL REFERENCES accounts(id),"
            " note text NOT NULL, amount numeric(10,2), created timestamptz DEFAULT now());"
            "CREATE INDEX orders_by_account ON orders(account);"
            "CREATE UNIQUE INDEX orders_note ON orders(note);"
        )
        conn.execute("INSERT INTO accounts SELECT g, %s FROM generate_series(1, %s) g", (BALANCE, ACCOUNTS))
        conn.execute(
            "INSERT INTO orders (account, note, amount) "
            "SELECT 1 + g %% %s, 'order-' || g || '-' || md5(g::text), g / 7.0 FROM generate_series(1, 20000) g",
            (ACCOUNTS,),
        )
    yield name
    _sql(pg_server, "postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _drop(server: PgServer, name: str) -> None:
    _sql(server, "postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_full_backup_restores_under_a_new_name(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    coll = str(tmp_path / "coll")
    enc = Encryption(passphrase="pg-pass-1")
    result = backup_database(pg_server.dsn(), shop, coll, encryption=enc)
    assert result.rows == ACCOUNTS + 20000
    new = f"{shop}_restored"
    try:
        restored = restore_database(pg_server.dsn(), coll, new_db_name=new, encryption=enc)
        assert restored.rows == ACCOUNTS + 20000
        for q in (
            "SELECT count(*), sum(balance) FROM accounts",
            "SELECT count(*), sum(amount), md5(string_agg(note, ',' ORDER BY id)) FROM orders",
            "SELECT last_value, is_called FROM orders_id_seq",
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
            "SELECT conname, contype FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1",
        ):
            assert _sql(pg_server, new, q) == _sql(pg_server, shop, q), q
        # The sequence continues where it was.
        assert _sql(pg_server, new, "INSERT INTO orders (account, note) VALUES (1, 'next') RETURNING id") == [(20001,)]
        # The constraints hold in the restored copy: the FK refuses an unknown account.
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            _sql(pg_server, new, "INSERT INTO orders (account, note) VALUES (999999, 'x')")
        with pytest.raises(AlreadyExistsError, match="already exists"):
            restore_database(pg_server.dsn(), coll, new_db_name=new, encryption=enc)
    finally:
        _drop(pg_server, new)
