"""PostgreSQL as a backup source and restore target, against a real PostgreSQL 15 (tests/pg_server.py)."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pg_server import PASSWORD, PgServer, pg_server, wait_until

from strongroom.backup import engine
from strongroom.backup.keys import Encryption
from strongroom.backup.lifecycle import prune
from strongroom.backup.manifest import Manifest
from strongroom.backup.requests import ShowBackupRequest
from strongroom.errors import AlreadyExistsError, NotFoundError, UsageError
from strongroom.kms import create_key
from strongroom.postgres import (
    PostgresError,
    ServerVersionError,
    backup_database,
    check_server_version,
    restore_database,
    restore_table,
)
from strongroom.postgres.streams import read_index

__all__ = ["pg_server"]  # the session fixture, imported so pytest finds it

ACCOUNTS, BALANCE = 200, 1000
_names = itertools.count()


def _sql(server: PgServer, db: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(server.dsn(db), autocommit=True) as conn:
        cur = conn.execute(sql.encode(), params or None)
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
            "CREATE TABLE withdrawals (id serial PRIMARY KEY, account int NOT NULL, amount int NOT NULL);"
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
    _sql(pg_server, shop, "UPDATE orders SET note = note || '-plaintext-marker-7f3a' WHERE id = 77")
    ticks: list[tuple[int, int]] = []
    result = backup_database(pg_server.dsn(), shop, coll, encryption=enc, progress=lambda d, t, w: ticks.append((d, t)))
    assert result.rows == ACCOUNTS + 20000
    assert ticks and all(d <= t for d, t in ticks) and ticks[-1][1] > 1_000_000  # a real total, not 100% at once
    # Every byte written is sealed: neither rows nor the schema are readable in the collection.
    for f in Path(coll).rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert b"plaintext-marker-7f3a" not in data and b"orders_by_account" not in data, f
    assert [r.status for r in engine.check(coll, enc)] == ["ok"]
    assert [(r.status, r.chunks_read > 0) for r in engine.check(coll, enc, read_data=True)] == [("ok", True)]
    new = f"{shop}_restored"
    try:
        restored = restore_database(pg_server.dsn(), coll, new_db_name=new, encryption=enc)
        assert restored.rows == ACCOUNTS + 20000
        for q in (
            "SELECT count(*), sum(balance) FROM accounts",
            "SELECT count(*) FROM withdrawals",
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


class Transfers:
    """A writer moving money between accounts, one transaction per transfer: the total never changes,
    so any restored copy whose total differs was not one snapshot."""

    def __init__(self, server: PgServer, db: str) -> None:
        self.conn = psycopg.connect(server.dsn(db), autocommit=True)
        self.done = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        try:
            while not self.stop.is_set():
                a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
                amount = rng.randint(1, 50)
                with self.conn.transaction():
                    self.conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, a))
                    self.conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount - 1, b))
                    # One unit leaves into another table, read by another COPY: only one snapshot for
                    # every table keeps balances + withdrawals at the starting total.
                    self.conn.execute("INSERT INTO withdrawals (account, amount) VALUES (%s, 1)", (b,))
                self.done += 1
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Transfers:
        self.thread.start()
        wait_until(lambda: self.done >= 20, what="the writer to commit transfers")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        self.conn.close()
        assert self.error is None, self.error


def _layers(coll: str, enc: Encryption) -> list[Manifest]:
    return engine.show_backup(ShowBackupRequest(in_=(coll,), subdir="LATEST", encryption=enc)).manifests


def test_full_and_incremental_while_writing_are_each_one_snapshot(
    pg_server: PgServer, shop: str, tmp_path: Path
) -> None:
    coll = str(tmp_path / "coll")
    create_key("pgkey")
    enc = Encryption(kms=("local:///pgkey",))
    with Transfers(pg_server, shop) as writer:
        backup_database(pg_server.dsn(), shop, coll, encryption=enc)
        seen = writer.done
        wait_until(lambda: writer.done >= seen + 20, what="more transfers after the full backup")
        backup_database(pg_server.dsn(), shop, coll, encryption=enc, incremental=True)
    assert len(_layers(coll, enc)) == 2
    name = f"{shop}_inc"
    try:
        restore_database(pg_server.dsn(), coll, new_db_name=name, encryption=enc)
        total = _sql(
            pg_server, name, "SELECT (SELECT sum(balance) FROM accounts) + (SELECT sum(amount) FROM withdrawals)"
        )
        assert total == [(ACCOUNTS * BALANCE,)]
        assert _sql(pg_server, name, "SELECT count(*) FROM withdrawals")[0][0] >= 40  # taken mid-writes
    finally:
        _drop(pg_server, name)
    # Without the key the backup does not open.
    with pytest.raises(Exception, match=r"passphrase|kms|KMS|encrypt"):
        restore_database(pg_server.dsn(), coll, new_db_name=f"{shop}_nokey")
    assert _sql(pg_server, "postgres", "SELECT count(*) FROM pg_database WHERE datname = %s", (f"{shop}_nokey",)) == [
        (0,)
    ]


@pytest.mark.parametrize("change", ["range", "scattered"])
def test_incremental_after_one_percent_changed_stores_a_few_percent(
    pg_server: PgServer, shop: str, tmp_path: Path, change: str
) -> None:
    rows = 200_000
    _sql(
        pg_server,
        shop,
        "CREATE TABLE events (id int PRIMARY KEY, kind text NOT NULL, payload text NOT NULL);"
        "INSERT INTO events SELECT g, 'k' || (g % 13), md5(g::text) || md5((g * 7)::text) "
        f"FROM generate_series(1, {rows}) g",
    )
    coll = str(tmp_path / "coll")
    enc = Encryption(passphrase="cdc-pass")
    backup_database(pg_server.dsn(), shop, coll, encryption=enc)
    if change == "range":
        # 1% of the rows change: an update of a range of ids and a few appended rows.
        _sql(
            pg_server,
            shop,
            f"UPDATE events SET payload = 'changed-' || id WHERE id BETWEEN 50001 AND {50000 + rows // 200}",
        )
        new_ids = f"generate_series({rows + 1}, {rows + rows // 200})"
        _sql(pg_server, shop, f"INSERT INTO events SELECT g, 'new', md5(g::text) FROM {new_ids} g")
    else:
        # 1% of the rows change, scattered over the whole table: every ~16 KiB chunk holds one or two
        # of them, so each is stored as a delta against the full's chunk at its place. The rows
        # shrink (the stream's offsets drift) and a table sorting first shifts every stream number.
        _sql(pg_server, shop, "UPDATE events SET payload = 'changed-' || id WHERE id % 100 = 0")
        _sql(pg_server, shop, "CREATE TABLE aaa (id int PRIMARY KEY); INSERT INTO aaa VALUES (1)")
    backup_database(pg_server.dsn(), shop, coll, encryption=enc, incremental=True)
    full, inc = (m.databases[0] for m in _layers(coll, enc))
    assert full.stored_bytes > 5_000_000
    share = inc.stored_bytes / full.stored_bytes
    print(f"{change}: incremental stored {inc.stored_bytes} of the full's {full.stored_bytes} bytes ({share:.2%})")
    assert share < (0.04 if change == "range" else 0.05)
    events = next(o for o in inc.objects if o.name == "public.events")
    assert events.rows == (rows + rows // 200 if change == "range" else rows)
    if change == "scattered":
        # The deltas' bases are the full's chunks; their packs are in the incremental's manifest,
        # which is what check verifies and what keeps prune (whole layers only) from removing them.
        with engine.open_backup(coll, encryption=enc) as reader:
            entry = reader.manifest.databases[0]
            chunks = read_index(reader.storage_for, entry.index, reader.manifest.packs, reader.keys)
            listed = {p.path for p in reader.manifest.packs}
        bases = {c.base.pack.path for c in chunks if c.base is not None}
        assert bases and bases <= listed and all("/incrementals/" not in "/" + b for b in bases)
        assert [a for a in prune(coll).actions if a.action != "kept"] == []
    assert [(r.status, r.chunks_read > 0) for r in engine.check(coll, enc, read_data=True)] == [("ok", True)]
    name = f"{shop}_cdc"
    try:
        restore_database(pg_server.dsn(), coll, new_db_name=name, encryption=enc)
        q = "SELECT count(*), md5(string_agg(payload, ',' ORDER BY id)) FROM events"
        assert _sql(pg_server, name, q) == _sql(pg_server, shop, q)
    finally:
        _drop(pg_server, name)


def test_one_table_into_an_existing_database(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    coll = str(tmp_path / "coll")
    backup_database(pg_server.dsn(), shop, coll)
    other = f"{shop}_other"
    _sql(pg_server, "postgres", f"CREATE DATABASE {other}")
    try:
        # orders references accounts, which is not in the other database: refused, naming both,
        # before anything is created ...
        with pytest.raises(NotFoundError, match=r'foreign key "orders_account_fkey" references public\.accounts'):
            restore_table(pg_server.dsn(), coll, "orders", into_db=other)
        assert _sql(pg_server, other, "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'") == [(0,)]
        # ... unless that constraint is left out, which the result says.
        result = restore_table(pg_server.dsn(), coll, "orders", into_db=other, skip_missing_foreign_keys=True)
        assert result.rows == 20000
        assert len(result.notes) == 1 and '"orders_account_fkey"' in result.notes[0]
        assert _sql(pg_server, other, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == [(0,)]
        q = "SELECT count(*), md5(string_agg(note, ',' ORDER BY id)) FROM orders"
        assert _sql(pg_server, other, q) == _sql(pg_server, shop, q)
        idx = "SELECT indexname FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1"
        assert _sql(pg_server, other, idx) == [("orders_by_account",), ("orders_note",), ("orders_pkey",)]
        assert _sql(pg_server, other, "SELECT count(*) FROM pg_tables WHERE tablename = 'accounts'") == [(0,)]
        with pytest.raises(AlreadyExistsError, match=r'relation "public\.orders" already exists'):
            restore_table(pg_server.dsn(), coll, "orders", into_db=other, skip_missing_foreign_keys=True)
        with pytest.raises(NotFoundError, match="does not exist in the backup"):
            restore_table(pg_server.dsn(), coll, "nope", into_db=other)
    finally:
        _drop(pg_server, other)


def test_one_table_restore_adds_its_foreign_keys_validated(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    _sql(
        pg_server,
        shop,
        "ALTER TABLE withdrawals ADD CONSTRAINT withdrawals_account FOREIGN KEY (account) "
        "REFERENCES accounts(id); INSERT INTO withdrawals (account, amount) VALUES (3, 5), (7, 1)",
    )
    coll = str(tmp_path / "coll")
    backup_database(pg_server.dsn(), shop, coll)
    other = f"{shop}_fkt"
    _sql(pg_server, "postgres", f"CREATE DATABASE {other}")
    fks = "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass ORDER BY 1"
    try:
        # The referenced table restored first: the foreign key comes back, validated, and holds.
        assert restore_table(pg_server.dsn(), coll, "accounts", into_db=other).rows == ACCOUNTS
        result = restore_table(pg_server.dsn(), coll, "orders", into_db=other)
        assert result.rows == 20000 and result.notes == ()
        assert _sql(pg_server, other, fks, ("public.orders",)) == [("orders_account_fkey", True)]
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            _sql(pg_server, other, "INSERT INTO orders (id, account, note) VALUES (0, 999999, 'x')")
        # A referenced table that exists but lacks the referenced rows: the validation fails the
        # restore, which leaves no table behind.
        _sql(pg_server, other, "DELETE FROM orders WHERE account = 7; DELETE FROM accounts WHERE id = 7")
        with pytest.raises(PostgresError, match="withdrawals_account"):
            restore_table(pg_server.dsn(), coll, "withdrawals", into_db=other)
        assert _sql(pg_server, other, "SELECT count(*) FROM pg_tables WHERE tablename = 'withdrawals'") == [(0,)]
    finally:
        _drop(pg_server, other)


def test_server_gone_mid_copy_fails_cleanly_and_leaves_latest(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    # A table larger than the socket buffers, so the server is still sending when the backend dies.
    _sql(
        pg_server,
        shop,
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g+1)::text) AS v FROM generate_series(1, 300000) g",
    )
    coll = str(tmp_path / "coll")
    backup_database(pg_server.dsn(), shop, coll)
    fulls = engine.show_backups(coll)
    killer = psycopg.connect(pg_server.dsn(), autocommit=True)
    killed: list[int] = []

    def kill_the_copy(done: int, total: int, what: str) -> None:
        if killed:
            return
        # Called between ~1 MiB batches of the backup's streams: end the backend while its COPY runs.
        row = killer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'COPY (SELECT %%big%%' AND state = 'active' AND datname = %s",
            (shop,),
        ).fetchone()
        if row and row[0]:
            killed.append(1)

    try:
        with pytest.raises(PostgresError, match=r"closed the connection|terminat") as info:
            backup_database(pg_server.dsn(), shop, coll, progress=kill_the_copy)
        assert killed
        assert PASSWORD not in str(info.value)
        assert engine.show_backups(coll) == fulls  # the failed full left no layer, LATEST unmoved
        assert [p for p, _s in engine.show_backups_detail(coll)] == fulls
        killed.clear()
        with pytest.raises(PostgresError):
            backup_database(pg_server.dsn(), shop, coll, incremental=True, progress=kill_the_copy)
        assert killed
        assert len(_layers(coll, Encryption())) == 1  # the chain is still the full alone
    finally:
        killer.close()
    name = f"{shop}_after"
    try:
        restore_database(pg_server.dsn(), coll, new_db_name=name)
        assert _sql(pg_server, name, "SELECT count(*) FROM big") == [(300000,)]
    finally:
        _drop(pg_server, name)


def test_older_server_major_version_is_refused() -> None:
    check_server_version(150004, 150010)
    check_server_version(140009, 150004)
    with pytest.raises(ServerVersionError, match="PostgreSQL 16; the target server runs PostgreSQL 15, an older major"):
        check_server_version(160001, 150004)


def test_bad_dsn_and_wrong_password_give_one_clear_error(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    coll = str(tmp_path / "coll")
    with pytest.raises(UsageError, match="not a PostgreSQL connection string") as bad:
        backup_database("host=localhost password=hunter2-xyz junk", shop, coll)
    assert "hunter2-xyz" not in str(bad.value)
    wrong = pg_server.dsn(password="wrong-pw-9931")
    with pytest.raises(PostgresError, match="cannot connect to PostgreSQL at postgresql://postgres:redacted@") as e:
        backup_database(wrong, shop, coll)
    assert "wrong-pw-9931" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PostgresError, match="cannot connect"):
        backup_database(f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/postgres", shop, coll)
    with pytest.raises(PostgresError, match=f'database "{shop}x" does not exist'):
        backup_database(pg_server.dsn(), shop + "x", coll)
    assert not Path(coll).exists() or engine.show_backups(coll) == []  # no layer was left behind


def test_cli_backup_and_restore_never_show_the_password(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from strongroom.cli import main

    runner = CliRunner()
    coll = str(tmp_path / "coll")
    pw = tmp_path / "pass"
    pw.write_text("cli-pass-77\n")
    dsn = pg_server.dsn()
    outputs = []
    for args in (
        ["backup", coll, "--postgres", dsn, "--database", shop, "--passphrase-file", str(pw), "--format", "json"],
        ["backup", coll, "--postgres", dsn, "--database", shop, "--passphrase-file", str(pw), "--incremental"],
        ["restore", coll, "--postgres", dsn, "--new-db-name", f"{shop}_cli", "--passphrase-file", str(pw)],
    ):
        result = runner.invoke(main, args)
        outputs.append(result.output)
        assert result.exit_code == 0, result.output
    try:
        assert '"rows": 20200' in outputs[0]
        assert _sql(pg_server, f"{shop}_cli", "SELECT count(*) FROM orders") == [(20000,)]
        # Again: the target exists now, and a wrong password; each one clear line, password redacted.
        again = runner.invoke(
            main,
            ["restore", coll, "--postgres", dsn, "--new-db-name", f"{shop}_cli", "--passphrase-file", str(pw)],
        )
        assert again.exit_code != 0 and "already exists" in again.output
        bad = runner.invoke(
            main, ["backup", coll, "--postgres", pg_server.dsn(password="nope-4411"), "--database", shop]
        )
        assert bad.exit_code != 0 and "cannot connect to PostgreSQL at postgresql://postgres:redacted@" in bad.output
        outputs += [again.output, bad.output]
        for text in outputs:
            assert PASSWORD not in text and "nope-4411" not in text
    finally:
        _drop(pg_server, f"{shop}_cli")


# Unequal sizes, each COPY larger than a worker's read-ahead (8 MiB): a worker holding a ledger's
# COPY open waits while the coordinator stores a larger table, so the COPYs overlap for certain.
LEDGERS = {"ledger_a": 100000, "ledger_b": 80000, "ledger_c": 60000, "ledger_d": 40000}


def test_parallel_copy_workers_read_one_snapshot_while_a_writer_commits(
    pg_server: PgServer, shop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each writer transaction adds one row to every ledger table; the tables are read by separate
    COPY workers at different times (a large one first), so only one shared snapshot keeps the
    ledgers' new-row counts equal in the restored copy."""
    from strongroom.postgres import source

    monkeypatch.setattr(source, "WORKERS", 3)
    ddl = "CREATE TABLE pad AS SELECT g AS id, md5(g::text) || md5((g+1)::text) AS v FROM generate_series(1, 300000) g;"
    for t, n in LEDGERS.items():
        ddl += (
            f"CREATE TABLE {t} (id bigserial PRIMARY KEY, batch bigint NOT NULL, v text NOT NULL);"
            f"INSERT INTO {t} (batch, v) SELECT 0, repeat(md5(g::text), 5) FROM generate_series(1, {n}) g;"
        )
    _sql(pg_server, shop, ddl)
    stop = threading.Event()
    batches: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with psycopg.connect(pg_server.dsn(shop), autocommit=True) as conn:
                for batch in itertools.count(1):
                    if stop.is_set():
                        return
                    with conn.transaction():
                        for t in LEDGERS:
                            conn.execute(f"INSERT INTO {t} (batch, v) VALUES (%s, 'new')", (batch,))
                    batches.append(batch)
        except BaseException as exc:
            errors.append(exc)

    watcher = psycopg.connect(pg_server.dsn(), autocommit=True)
    concurrent: list[int] = []

    def progress(done: int, total: int, what: str) -> None:
        row = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND query LIKE 'COPY (SELECT %%'",
            (shop,),
        ).fetchone()
        concurrent.append(int(row[0]) if row else 0)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    coll = str(tmp_path / "coll")
    try:
        wait_until(lambda: len(batches) >= 20, what="the writer to commit")
        backup_database(pg_server.dsn(), shop, coll, progress=progress)
        seen = len(batches)
        wait_until(lambda: len(batches) >= seen + 20, what="the writer to commit after the full")
        backup_database(pg_server.dsn(), shop, coll, incremental=True, progress=progress)
    finally:
        stop.set()
        writer.join(30)
        watcher.close()
    assert not errors, errors
    assert max(concurrent) >= 2  # the COPYs did run side by side, on separate connections
    name = f"{shop}_par"
    try:
        restore_database(pg_server.dsn(), coll, new_db_name=name)
        new_rows = [_sql(pg_server, name, f"SELECT count(*) - {n}, max(batch) FROM {t}")[0] for t, n in LEDGERS.items()]
        assert len(set(new_rows)) == 1, new_rows  # a torn read would show different counts
        assert int(str(new_rows[0][0])) >= 40 and new_rows[0][0] == new_rows[0][1]
        assert _sql(pg_server, name, "SELECT count(*) FROM pad") == [(300000,)]
    finally:
        _drop(pg_server, name)


def test_incremental_right_after_a_full_stores_almost_nothing(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    """Parallel reads lay the layer out the same way each time: with no change in between, the
    incremental stores no table chunk (only pg_dump's archive header, which holds the dump's time)."""
    _sql(
        pg_server,
        shop,
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g;"
        "CREATE TABLE mid AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g",
    )
    coll = str(tmp_path / "coll")
    backup_database(pg_server.dsn(), shop, coll)
    backup_database(pg_server.dsn(), shop, coll, incremental=True)
    full, inc = (m.databases[0] for m in _layers(coll, Encryption()))
    print(f"full: {full.chunks_written} chunks, {full.stored_bytes} B;", end=" ")
    print(f"incremental: {inc.chunks_written} chunks, {inc.stored_bytes} B")
    assert full.chunks_written > 500
    assert inc.chunks_written <= 2 and inc.stored_bytes < 64 * 1024
    assert [(o.name, o.rows, o.bytes) for o in inc.objects] == [(o.name, o.rows, o.bytes) for o in full.objects]


def test_parallel_restore_validates_foreign_keys_and_fails_whole(
    pg_server: PgServer, shop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coll = str(tmp_path / "coll")
    backup_database(pg_server.dsn(), shop, coll)
    new = f"{shop}_fk"
    fk = (
        "SELECT conname, convalidated FROM pg_constraint "
        "WHERE contype = 'f' AND conrelid = 'public.orders'::regclass ORDER BY 1"
    )
    try:
        restore_database(pg_server.dsn(), coll, new_db_name=new)
        assert _sql(pg_server, new, fk) == [("orders_account_fkey", True)]
        for q in ("SELECT count(*), sum(balance) FROM accounts", "SELECT count(*), sum(amount) FROM orders"):
            assert _sql(pg_server, new, q) == _sql(pg_server, shop, q)
    finally:
        _drop(pg_server, new)
    # A COPY that fails in one worker stops the others and drops the new database.
    from strongroom.postgres import target

    real = target._copy_in

    def failing(conn: psycopg.Connection[tuple[object, ...]], spec: dict[str, object], data: Iterator[bytes]) -> int:
        if spec["table"] == "accounts":
            raise psycopg.errors.DataException("injected failure")
        return real(conn, spec, data)

    monkeypatch.setattr(target, "_copy_in", failing)
    with pytest.raises(PostgresError, match=r"table public\.accounts.*injected failure"):
        restore_database(pg_server.dsn(), coll, new_db_name=new)
    assert _sql(pg_server, "postgres", "SELECT count(*) FROM pg_database WHERE datname = %s", (new,)) == [(0,)]
