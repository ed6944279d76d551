"""End to end through the real engine on each cloud backend: the seed's passphrase statements ("Take and Restore
Encrypted Backups", "Use a passphrase"), verbatim except for the bucket, credentials and test endpoint."""

from __future__ import annotations

import random
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.register_assert_rewrite("cloud_servers")

from cloud_servers import AZURITE_ACCOUNT, BACKUP_BUCKET, S3_KEY_ID, CloudTarget  # noqa: E402

# Imported explicitly so the schemes register (strongroom.storage does not import the cloud backends itself).
import strongroom.storage.azure  # noqa: E402
import strongroom.storage.gcs  # noqa: E402
import strongroom.storage.s3  # noqa: E402, F401
from strongroom import Store, init_store  # noqa: E402
from strongroom.errors import EncryptionError, StrongroomError  # noqa: E402

pytest_plugins = ("cloud_servers",)

BACKENDS = {"s3": "moto_s3", "azure": "azurite", "gs": "gcs_emulator"}


def seed_uri(cloud: CloudTarget, bucket: str = BACKUP_BUCKET) -> str:
    """The seed's URI for the scheme, plus only the endpoint parameter that points at the local server."""
    if cloud.scheme == "s3":
        return (
            f"s3://{bucket}?AWS_ACCESS_KEY_ID={S3_KEY_ID}&AWS_SECRET_ACCESS_KEY={cloud.secret}"
            f"&AWS_ENDPOINT={cloud.endpoint}"
        )
    if cloud.scheme == "gs":
        # {ENCODED KEY}: the base64 key file pasted as is, as the seed shows it (not URL-encoded).
        return f"gs://{bucket}?AUTH=specified&CREDENTIALS={cloud.extra['encoded']}&GCS_ENDPOINT={cloud.endpoint}"
    return (
        f"azure://{bucket}?AZURE_ACCOUNT_NAME={AZURITE_ACCOUNT}&AZURE_ACCOUNT_KEY={quote(cloud.secret, safe='')}"
        f"&AZURE_ENDPOINT={cloud.endpoint}"
    )


def make_bank(store: Store, accounts: int) -> None:
    rng = random.Random(7)
    store.create_database("bank")
    conn = store.connect("bank")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER, note BLOB)")
    conn.execute("CREATE INDEX accounts_owner ON accounts(owner)")
    with conn:
        conn.executemany(
            "INSERT INTO accounts(owner, balance, note) VALUES (?, ?, ?)",
            [(f"owner-{i}", rng.randrange(10**6), rng.randbytes(rng.randrange(10, 400))) for i in range(accounts)],
        )
    conn.close()


def rows(store: Store) -> list[tuple[object, ...]]:
    conn = store.connect("bank")
    try:
        return [tuple(r) for r in conn.execute("SELECT * FROM accounts ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_seed_passphrase_statements(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    cloud: CloudTarget = request.getfixturevalue(BACKENDS[backend])
    uri = seed_uri(cloud)
    secrets = [cloud.secret, str(cloud.extra.get("encoded", cloud.secret))]
    store = init_store(tmp_path / "s")
    make_bank(store, accounts=3000)

    r = store.execute(f"BACKUP INTO '{uri}' WITH encryption_passphrase = 'password123';")
    assert r.rows[0][1] == "succeeded" and r.rows[0][3] == 3000
    conn = store.connect("bank")
    with conn:
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0")
        conn.execute("INSERT INTO accounts(owner, balance) VALUES ('late', 1)")
    conn.close()
    r = store.execute(f"BACKUP INTO LATEST IN '{uri}' WITH encryption_passphrase = 'password123';")
    assert r.rows[0][1] == "succeeded"
    expected = rows(store)

    [(subdir, status)] = store.execute(f"SHOW BACKUPS IN '{uri}'").rows
    assert status == "complete"
    assert subdir.startswith("/")
    shown = store.execute(f"SHOW BACKUP LATEST IN '{uri}' WITH encryption_passphrase = 'password123', check_files")
    assert shown.columns[-1] == "file_bytes"
    assert {row[4] for row in shown.rows} == {"full", "incremental"}

    with pytest.raises(EncryptionError) as wrong:
        store.execute(
            f"RESTORE DATABASE bank FROM LATEST IN '{uri}' WITH encryption_passphrase = 'nope', new_db_name = x"
        )
    with pytest.raises(StrongroomError) as missing:
        store.execute(
            f"RESTORE FROM LATEST IN '{seed_uri(cloud, 'no-such-bucket-zz')}' "
            "WITH encryption_passphrase = 'password123'"
        )

    store.execute("DROP DATABASE bank")
    r = store.execute(f"RESTORE FROM LATEST IN '{uri}' WITH encryption_passphrase = 'password123';")
    assert r.rows[0][1] == "succeeded"
    assert rows(store) == expected

    jobs = store.execute("SHOW JOBS")
    assert [(row[1], row[5]) for row in jobs.rows] == [
        ("BACKUP", "succeeded"),
        ("BACKUP", "succeeded"),
        ("RESTORE", "failed"),
        ("RESTORE", "failed"),
        ("RESTORE", "succeeded"),
    ]
    assert "redacted" in jobs.rows[0][2]
    everything = repr(jobs.rows) + jobs.render() + str(wrong.value) + repr(wrong.value) + str(missing.value)
    for secret in secrets:
        assert secret not in everything
    assert "password123" not in repr(jobs.rows)
    print(jobs.render(), missing.value, sep="\n")  # shown with -s: what a user sees
    store.close()
