"""``strongroom demo``: the seed document's story, on the embedded default, printing what it does.

A store with a small bank, a passphrase-encrypted backup, a backup wrapped by two KMS keys (one per
"region"), an incremental taken with just one of them, a restore with the other, and a check that
every row came back. Then the store's own encryption at rest: CMEK enabled, data keys rotated
online, the CMEK revoked (the store refuses to start) and enabled again. Each step prints the SQL
statement it stands for and the result table.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

import click

from .errors import StrongroomError
from .kms import create_key
from .output import format_table
from .store import Store, encryption_status_table, init_store, open_store


def _say(text: str) -> None:
    click.secho(text, fg="cyan", bold=True)


def _run(store: Store, sql: str, columns: tuple[str, ...] | None = None) -> None:
    """Print a statement, run it through the SQL engine, print its result (or its error)."""
    click.echo(f"> {sql}")
    try:
        result = store.execute(sql)
    except StrongroomError as exc:
        click.secho(f"ERROR: {exc}\n", fg="red")
        return
    if columns:
        idx = [result.columns.index(c) for c in columns]
        click.echo(format_table(columns, [tuple(r[i] for i in idx) for r in result.rows]) + "\n")
    else:
        click.echo(result.render() + "\n")


def _fill(store: Store, rng: random.Random) -> None:
    store.create_database("bank")
    conn = store.connect("bank")
    try:
        conn.execute(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL, "
            "opened TEXT NOT NULL)"
        )
        conn.execute("CREATE INDEX accounts_owner ON accounts(owner)")
        conn.execute(
            "CREATE TABLE transfers (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER, memo BLOB)"
        )
        conn.execute("CREATE INDEX transfers_src ON transfers(src)")
        with conn:
            conn.executemany(
                "INSERT INTO accounts(owner, balance, opened) VALUES (?, ?, ?)",
                [(f"owner-{i:05d}", rng.randrange(10**6), f"2026-{1 + i % 12:02d}-01") for i in range(2000)],
            )
            conn.executemany(
                "INSERT INTO transfers(src, dst, amount, memo) VALUES (?, ?, ?, ?)",
                [
                    (rng.randrange(2000), rng.randrange(2000), rng.randrange(10**4), rng.randbytes(64))
                    for _ in range(700)
                ],
            )
    finally:
        conn.close()


def _fingerprint(store: Store, db: str) -> str:
    conn = store.connect(db)
    try:
        h = hashlib.sha256()
        for table in ("accounts", "transfers"):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY id"):
                h.update(repr(row).encode())
        return h.hexdigest()[:16]
    finally:
        conn.close()


def _status(store: Store) -> None:
    columns, rows = encryption_status_table(store.encryption_status(), short_ids=True)
    keep = ("region", "status", "key_type", "store_key_id", "data_key_id", "active", "under_cmek", "files", "bytes")
    idx = [columns.index(c) for c in keep]
    click.echo(format_table(keep, [tuple(r[i] for i in idx) for r in rows]) + "\n")


def _cmek_story(root: Path, store: Store, keyring: Path, expected: str) -> None:
    """Encryption at rest: the store's own files, CMEK, online data key rotation, revocation."""
    _say("10. The store itself is encrypted at rest: data keys encrypt the databases, a store key the data keys")
    leaked = [
        p
        for p in (root / "store").rglob("*")
        if p.is_file() and "extern" not in p.parts and b"owner-00001" in p.read_bytes()
    ]
    click.echo(f"   store files containing plaintext rows: {len(leaked)}")
    _status(store)

    _say("11. Enable CMEK: a new store key wrapped by the customer's key, a new data key for new data")
    create_key("customer-cmek", keyring)
    cmek = f"local:///customer-cmek?KEYRING={keyring}"
    store.enable_cmek({store.primary_region: cmek})
    _run(store, "CREATE DATABASE ledger;")
    click.echo("   bank keeps its data key (enabling CMEK has no impact on existing data); ledger uses the new one:")
    _status(store)

    _say("12. Rotate the data keys: every database is re-keyed online, an open connection keeps working")
    conn = store.connect("bank")
    conn.execute("SELECT count(*) FROM accounts").fetchall()
    store.rotate_data_keys()
    rows = conn.execute("SELECT count(*) FROM accounts").fetchall()[0][0]
    conn.close()
    click.echo(f"   the connection opened before the rotation still reads {rows} accounts")
    _status(store)

    _say("13. Revoke the CMEK: the store refuses to start")
    store.revoke_cmek()
    try:
        open_store(root / "store")
    except StrongroomError as exc:
        click.secho(f"ERROR: {exc}\n", fg="red")
    else:
        raise click.ClickException("demo verification FAILED: a revoked store opened")

    _say("14. Access restored: enable the CMEK again, the store opens with every row")
    open_store(root / "store", unlock=False).enable_cmek({store.primary_region: cmek})
    reopened = open_store(root / "store")
    restored = _fingerprint(reopened, "bank")
    click.echo(f"   fingerprint: {restored}")
    if restored != expected or leaked:
        raise click.ClickException("demo verification FAILED")


def run_demo(directory: str | None) -> None:
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="strongroom-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    keyring = root / "keys"
    rng = random.Random(2026)

    _say(f"1. A store at {root / 'store'}, with a small bank in it")
    store = init_store(root / "store", keyring=keyring)
    _fill(store, rng)
    before = _fingerprint(store, "bank")
    click.echo(f"   database bank: 2000 accounts, 700 transfers (fingerprint {before})\n")

    _say("2. An encrypted backup with a passphrase (PBKDF2, 64,000 iterations; AES-256-GCM)")
    _run(store, "BACKUP INTO 'nodelocal://1/passphrase-backups' WITH encryption_passphrase = 'password123';")

    _say("3. Two KMS keys, one per region (local key files: the embedded default KMS)")
    for name in ("us-east-1", "us-west-1"):
        path = create_key(name, keyring)
        click.echo(f"   strongroom keys create {name}  ->  {path}")
    east = f"local:///us-east-1?KEYRING={keyring}"
    west = f"local:///us-west-1?KEYRING={keyring}"
    click.echo()

    _say("4. A backup with multi-region encryption: the data key is wrapped by both keys")
    _run(store, f"BACKUP INTO 'nodelocal://1/kms-backups' WITH KMS=(\n    '{east}',\n    '{west}'\n  );")

    _say("5. More business, then an incremental backup with just one of the keys (any subset works)")
    conn = store.connect("bank")
    with conn:
        conn.execute("UPDATE accounts SET balance = balance + 100 WHERE id % 50 = 0")
        conn.executemany(
            "INSERT INTO transfers(src, dst, amount, memo) VALUES (?, ?, ?, ?)",
            [(rng.randrange(2000), rng.randrange(2000), rng.randrange(10**4), rng.randbytes(64)) for _ in range(100)],
        )
    conn.close()
    after = _fingerprint(store, "bank")
    _run(store, f"BACKUP INTO LATEST IN 'nodelocal://1/kms-backups' WITH kms = '{east}';")

    _say("6. What the collection holds")
    _run(store, "SHOW BACKUPS IN 'nodelocal://1/kms-backups';")
    _run(
        store,
        f"SHOW BACKUP LATEST IN 'nodelocal://1/kms-backups' WITH kms = '{west}', check_files;",
        ("database_name", "object_name", "object_type", "backup_type", "size_bytes", "rows", "file_bytes"),
    )

    _say("7. Without the key, or with the wrong passphrase, nothing opens")
    _run(store, "RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/kms-backups' WITH new_db_name = 'bank2';")
    _run(
        store,
        "RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/passphrase-backups' "
        "WITH encryption_passphrase = 'wrong', new_db_name = 'bank2';",
    )

    _say("8. Disaster: the database is dropped. Restore the whole chain with the other region's key")
    _run(store, "DROP DATABASE bank;")
    _run(store, f"RESTORE FROM LATEST IN 'nodelocal://1/kms-backups' WITH kms = '{west}';")
    _run(store, "SHOW JOBS;", ("job_id", "job_type", "status", "description"))

    _say("9. Verify")
    restored = _fingerprint(store, "bank")
    ok = restored == after
    click.echo(f"   fingerprint after step 5: {after}\n   fingerprint restored:     {restored}")
    conn = store.connect("bank")
    check = conn.execute("PRAGMA integrity_check").fetchall()[0][0]
    conn.close()
    click.echo(f"   PRAGMA integrity_check: {check}")
    leaked = [p for p in (root / "store" / "extern").rglob("*") if p.is_file() and b"owner-00001" in p.read_bytes()]
    click.echo(f"   backup files containing plaintext rows: {len(leaked)}")
    if not ok or check != "ok" or leaked:
        raise click.ClickException("demo verification FAILED")
    _cmek_story(root, store, keyring, after)
    click.secho("\nEverything came back, byte for byte. The demo lives in " + str(root), fg="green", bold=True)
    if os.environ.get("STRONGROOM_DEMO_KEEP") is None and directory is None:
        click.echo("(a temp dir; delete it when done)")
