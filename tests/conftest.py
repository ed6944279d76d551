"""Shared fixtures: a fresh store, a private keyring, and a database with realistic rows."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom import Store, init_store
from strongroom.errors import clear_secrets
from strongroom.kms import create_key

MARKER = "plaintext-marker-7f3a"


@pytest.fixture(autouse=True)
def _keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tests never touch ~/.strongroom: the default keyring is a temp folder (set by environment)."""
    ring = tmp_path / "keyring"
    ring.mkdir()
    monkeypatch.setenv("STRONGROOM_KEYRING", str(ring))
    monkeypatch.delenv("STRONGROOM_PASSPHRASE", raising=False)
    monkeypatch.delenv("STRONGROOM_STORE", raising=False)
    # The CLI logs a line per job when stderr is not a terminal, as under a test; the tests that
    # read those lines ask for them (test_logs.py), the rest compare the commands' own output.
    monkeypatch.setenv("STRONGROOM_LOG_FORMAT", "none")
    return ring


@pytest.fixture(autouse=True)
def _fresh_secret_registry() -> Iterator[None]:
    """Each test starts with no secret registered by value: one test's secret must neither garble
    nor (worse) hide what another test's messages show."""
    clear_secrets()
    yield
    clear_secrets()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield init_store(tmp_path / "store")


def fill_bank(store: Store, name: str = "bank", accounts: int = 3000, seed: int = 1) -> None:
    rng = random.Random(seed)
    store.create_database(name)
    conn = store.connect(name)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER, note BLOB)")
    conn.execute("CREATE INDEX accounts_owner ON accounts(owner)")
    conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, account INTEGER, what TEXT)")
    conn.execute("CREATE INDEX audit_account ON audit(account)")
    with conn:
        conn.executemany(
            "INSERT INTO accounts(owner, balance, note) VALUES (?, ?, ?)",
            [(f"{MARKER}-{i}", rng.randrange(10**6), rng.randbytes(rng.randrange(10, 400))) for i in range(accounts)],
        )
        conn.executemany(
            "INSERT INTO audit(account, what) VALUES (?, ?)", [(i, f"opened {i}") for i in range(accounts // 2)]
        )
    conn.close()


def table_rows(store: Store, db: str, table: str) -> list[tuple[object, ...]]:
    conn = store.connect(db)
    try:
        return [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
    finally:
        conn.close()


@pytest.fixture
def keys() -> tuple[str, str, str]:
    """Three local KMS keys: two 'regions' and a stranger."""
    for name in ("east", "west", "stranger"):
        create_key(name)
    return "local:///east", "local:///west", "local:///stranger"
