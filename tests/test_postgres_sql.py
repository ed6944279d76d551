"""The PostgreSQL issue's statements, verbatim but for URIs, in ``strongroom sql --postgres``.

Against a real PostgreSQL 15 (tests/pg_server.py): on the embedded default (a local collection,
local key files as the KMS) and on S3 (moto) with an AWS and a GCP KMS key (our protocol servers),
each ``kms = (...)`` list of which any one key restores. The jobs are the store's (SHOW JOBS), a
schedule runs a PostgreSQL backup, and the server's password is in no output and no store file.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from pg_server import PASSWORD, PgServer, pg_server

from strongroom import init_store
from strongroom.cli import main
from strongroom.kms import create_key

if TYPE_CHECKING:
    from cloud_servers import CloudTarget
    from kms_servers import AwsKmsServer, GcpKmsServer

pytest_plugins = ("cloud_servers", "kms_servers")
__all__ = ["pg_server"]  # the session fixture, imported so pytest finds it

_names = itertools.count()


def _sql(server: PgServer, db: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(server.dsn(db), autocommit=True) as conn:
        cur = conn.execute(sql.encode())
        return cur.fetchall() if cur.description else []


@pytest.fixture
def shop(pg_server: PgServer) -> Iterator[str]:
    """A database named like the issue's (``shop``, made unique), with an FK, an index and a sequence."""
    name = f"shop{next(_names)}_{uuid.uuid4().hex[:6]}"
    _sql(pg_server, "postgres", f"CREATE DATABASE {name}")
    _sql(
        pg_server,
        name,
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);"
        "CREATE TABLE orders (id serial PRIMARY KEY, customer int NOT NULL REFERENCES customers(id),"
        " note text NOT NULL, amount numeric(10,2));"
        "CREATE INDEX orders_by_customer ON orders(customer);"
        "INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 100) g;"
        "INSERT INTO orders (customer, note, amount) SELECT 1 + g % 100, 'order ' || g, g / 4.0 "
        "FROM generate_series(1, 5000) g;",
    )
    yield name
    rows = _sql(pg_server, "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{name}%'")
    for (db,) in rows:
        _sql(pg_server, "postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


class Shell:
    """``strongroom --store S sql --postgres DSN -e ...``, the password in PGPASSWORD (the README's way)."""

    def __init__(self, store: Path, server: PgServer) -> None:
        self.store, self.server = store, server
        self.runner = CliRunner()
        self.outputs: list[str] = []
        self.last_stderr = ""

    def cli(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(main, ["--store", str(self.store), *args], env={"PGPASSWORD": PASSWORD})
        self.outputs.append(result.output)
        self.last_stderr = result.stderr
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def sql(self, statement: str, ok: bool = True) -> list[dict[str, object]]:
        dsn = f"postgresql://postgres@{self.server.host}:{self.server.port}/postgres"
        result = self.cli("sql", "--postgres", dsn, "--format", "json", "-e", statement, ok=ok)
        if not ok:
            assert result.exit_code != 0
            return []
        text = result.stdout.strip()
        return json.loads(text) if text.startswith("[") else []


def _orders(server: PgServer, db: str) -> list[tuple[object, ...]]:
    return _sql(server, db, "SELECT id, customer, note, amount FROM orders ORDER BY id")


def _run_the_issue(
    shell: Shell, server: PgServer, shop: str, coll: str, kms_both: str, kms_one: str, kms_other: str
) -> None:
    """The issue's six statements, then checks of what each did."""
    full = shell.sql(f"BACKUP DATABASE {shop} INTO '{coll}' WITH kms = ({kms_both});")
    assert full[0]["status"] == "succeeded" and full[0]["rows"] == 5100
    _sql(
        server,
        shop,
        "UPDATE orders SET amount = amount + 1 WHERE id <= 50; INSERT INTO orders (customer, note) VALUES (7, 'late')",
    )
    expected = _orders(server, shop)
    inc = shell.sql(f"BACKUP INTO LATEST IN '{coll}' WITH kms = {kms_one};")
    assert inc[0]["status"] == "succeeded"
    _sql(server, shop, "DELETE FROM orders WHERE id > 100")  # after the backup: must not show in a restore

    shown = shell.sql(f"SHOW BACKUP LATEST IN '{coll}' WITH kms = {kms_other}, check_files;")
    tables = {(r["database_name"], r["object_name"]): r for r in shown if r["object_type"] == "table"}
    assert tables[(shop, "public.orders")]["rows"] == 5001
    assert {r["backup_type"] for r in shown} == {"full", "incremental"}

    shell.sql(f"CREATE DATABASE {shop}_audit;")
    restored = shell.sql(
        f"RESTORE TABLE {shop}.public.orders FROM LATEST IN '{coll}' WITH kms = {kms_other}, "
        f"into_db = '{shop}_audit', skip_missing_foreign_keys;"
    )
    assert restored[0]["status"] == "succeeded" and restored[0]["rows"] == 5001
    assert 'NOTE: foreign key "orders_customer_fkey" references public.customers' in shell.last_stderr
    assert _orders(server, f"{shop}_audit") == expected
    shell.sql(
        f"RESTORE DATABASE {shop} FROM LATEST IN '{coll}' WITH kms = {kms_other}, new_db_name = '{shop}_yesterday';"
    )
    assert _orders(server, f"{shop}_yesterday") == expected
    # The whole database came back: its FK (validated), index and sequence.
    assert _sql(server, f"{shop}_yesterday", "SELECT convalidated FROM pg_constraint WHERE contype = 'f'") == [(True,)]
    assert _sql(
        server, f"{shop}_yesterday", "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_by_customer'"
    ) == [(1,)]
    assert _sql(server, f"{shop}_yesterday", "SELECT nextval('orders_id_seq')") == [(5002,)]
    # Nothing is overwritten: the same RESTORE again is refused, naming what exists.
    again = shell.cli(
        "sql",
        "--postgres",
        f"postgresql://postgres@{server.host}:{server.port}/postgres",
        "-e",
        f"RESTORE DATABASE {shop} FROM LATEST IN '{coll}' WITH kms = {kms_other}, new_db_name = '{shop}_yesterday';",
        ok=False,
    )
    assert again.exit_code == 1 and f'database "{shop}_yesterday" already exists' in again.output


def test_the_issue_statements_on_the_embedded_default(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    init_store(store)
    for name in ("east", "west", "third"):
        create_key(name)
    shell = Shell(store, pg_server)
    coll = "nodelocal://1/pg"
    _run_the_issue(
        shell, pg_server, shop, coll, "'local:///east', 'local:///west'", "'local:///east'", "'local:///west'"
    )

    # ALTER BACKUP ... ADD NEW_KMS works on a PostgreSQL chain like any other.
    shell.sql(f"ALTER BACKUP LATEST IN '{coll}' ADD NEW_KMS = 'local:///third' WITH OLD_KMS = 'local:///west';")
    r = shell.sql(
        f"RESTORE DATABASE {shop} FROM LATEST IN '{coll}' WITH kms = 'local:///third', new_db_name = '{shop}_third';"
    )
    assert r[0]["rows"] == 5101

    # Every one of those was a job of the store, described with the server (password redacted).
    jobs = shell.sql("SHOW JOBS;")
    kinds = [(j["job_type"], j["status"]) for j in jobs]
    assert kinds.count(("BACKUP", "succeeded")) == 2 and kinds.count(("RESTORE", "succeeded")) == 3
    assert ("RESTORE", "failed") in kinds
    backup_job = next(j for j in jobs if j["job_type"] == "BACKUP")
    assert f"BACKUP DATABASE {shop} INTO 'nodelocal://1/pg'" in str(backup_job["description"])
    assert f"-- PostgreSQL postgresql://postgres@{pg_server.host}" in str(backup_job["description"])

    # check, forget and prune take a PostgreSQL collection as any other.
    shell.sql(f"BACKUP DATABASE {shop} INTO '{coll}' WITH kms = 'local:///east';")  # a second chain
    checked = shell.cli("check", coll, "--read-data", "--kms", "local:///east", "--format", "json")
    assert json.loads(checked.output) and all(c["status"] == "ok" for c in json.loads(checked.output))
    shell.cli("forget", coll, "--keep-last", "1", "--prune")
    assert len(shell.sql(f"SHOW BACKUPS IN '{coll}';")) == 1
    r = shell.sql(
        f"RESTORE DATABASE {shop} FROM LATEST IN '{coll}' WITH kms = 'local:///east', new_db_name = '{shop}_kept';"
    )
    assert r[0]["rows"] == 100 + 100

    # A schedule backs up the PostgreSQL database later, from its sealed DSN.
    made = shell.sql(
        f"CREATE SCHEDULE nightly FOR BACKUP DATABASE {shop} INTO 'nodelocal://1/pg-nightly' "
        "WITH kms = 'local:///east' RECURRING '@daily';"
    )
    assert {m["label"] for m in made} == {"nightly"}
    shell.cli("schedules", "run-due")
    listed = shell.sql("SHOW BACKUPS IN 'nodelocal://1/pg-nightly';")
    assert len(listed) == 1 and listed[0]["status"] == "complete"
    r = shell.sql(
        f"RESTORE DATABASE {shop} FROM LATEST IN 'nodelocal://1/pg-nightly' WITH kms = 'local:///east', "
        f"new_db_name = '{shop}_nightly';"
    )
    assert r[0]["rows"] == 100 + 100  # the rows after the DELETE: the schedule backed up the server as it is now

    # The session's other statements go to the server.
    assert shell.sql(f"SELECT count(*) AS n FROM {shop}_nightly.public.orders;", ok=False) == []  # cross-db: PG's error
    assert {"database_name": f"{shop}_nightly", "primary_region": None} in shell.sql("SHOW DATABASES;")

    for text in shell.outputs:
        assert PASSWORD not in text
    for path in store.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_a_dsn_password_given_in_the_statement_line_is_sealed_and_redacted(
    pg_server: PgServer, shop: str, tmp_path: Path
) -> None:
    """A DSN with its password (not the README's way, but it happens): still in no output and no
    store file, and a schedule made with it runs."""
    store = tmp_path / "store"
    init_store(store)
    create_key("k")
    runner = CliRunner()
    outputs = []
    for statement in (
        f"CREATE SCHEDULE s FOR BACKUP DATABASE {shop} INTO 'nodelocal://1/pw' WITH kms = 'local:///k' "
        "RECURRING '@hourly';",
        "SHOW SCHEDULES;",
    ):
        r = runner.invoke(main, ["--store", str(store), "sql", "--postgres", pg_server.dsn(), "-e", statement])
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
    r = runner.invoke(main, ["--store", str(store), "schedules", "run-due"], env={"PGPASSWORD": None})
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["--store", str(store), "sql", "-e", "SHOW JOBS;"])
    outputs += [r.output]
    assert "BACKUP" in r.output and "succeeded" in r.output and "postgres:redacted@" in r.output
    for text in outputs:
        assert PASSWORD not in text
    for path in store.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_the_issue_statements_on_s3_with_aws_and_gcp_keys(
    pg_server: PgServer,
    shop: str,
    tmp_path: Path,
    moto_s3: CloudTarget,
    aws_kms: AwsKmsServer,
    gcp_kms: GcpKmsServer,
) -> None:
    store = tmp_path / "store"
    init_store(store)
    aws = aws_kms.uri(aws_kms.create_key("us-east-1").key_id)
    gcp = gcp_kms.uri(gcp_kms.create_key(key=f"pg-{uuid.uuid4().hex[:6]}"))
    coll = moto_s3.uri(f"pg-{uuid.uuid4().hex[:8]}")
    shell = Shell(store, pg_server)
    _run_the_issue(shell, pg_server, shop, coll, f"'{aws}', '{gcp}'", f"'{aws}'", f"'{gcp}'")
    for text in shell.outputs:
        assert PASSWORD not in text and moto_s3.secret not in text and aws_kms.secret not in text


def test_a_locality_aware_postgres_backup(pg_server: PgServer, shop: str, tmp_path: Path, moto_s3: CloudTarget) -> None:
    """Locality-aware destinations: a PostgreSQL server is one place, so its data goes to the
    default locality (a store database goes to its home region's); the chain and RESTORE take the
    whole set of locations as CockroachDB's do."""
    store = tmp_path / "store"
    init_store(store)
    create_key("k")
    shell = Shell(store, pg_server)
    default = moto_s3.uri(f"pg-loc-{uuid.uuid4().hex[:8]}", COCKROACH_LOCALITY="default")
    eu = f"nodelocal://1/pg-eu?COCKROACH_LOCALITY={'region%3Deu-west1'}"
    dests = f"('{default}', '{eu}')"
    shell.sql(f"BACKUP DATABASE {shop} INTO {dests} WITH kms = 'local:///k';")
    shell.sql(f"BACKUP INTO LATEST IN {dests} WITH kms = 'local:///k';")
    r = shell.sql(
        f"RESTORE DATABASE {shop} FROM LATEST IN {dests} WITH kms = 'local:///k', new_db_name = '{shop}_loc';"
    )
    assert r[0]["rows"] == 5100
    assert _orders(pg_server, f"{shop}_loc") == _orders(pg_server, shop)
    assert not [p for p in (store / "extern" / "pg-eu").rglob("*") if p.is_file()]


def test_cancel_job_from_another_process_stops_a_postgres_backup(
    pg_server: PgServer, shop: str, tmp_path: Path
) -> None:
    """CANCEL JOB of a PostgreSQL BACKUP running in another process: the job ends canceled, LATEST
    never moves and nothing is left in the collection. Deterministic: a transaction holding a lock
    on a table keeps the backup waiting inside the server until the cancel is recorded."""
    import subprocess
    import sys
    import time

    from strongroom import open_store

    store_dir = tmp_path / "store"
    store = init_store(store_dir)
    create_key("k")
    dsn = f"postgresql://postgres@{pg_server.host}:{pg_server.port}/postgres"
    locker = psycopg.connect(pg_server.dsn(shop))
    locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # held until the rollback below
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    statement = f"BACKUP DATABASE {shop} INTO 'nodelocal://1/canceled' WITH kms = 'local:///k'"
    proc = subprocess.Popen(
        [sys.executable, "-m", "strongroom.cli", "--store", str(store_dir), "sql", "--postgres", dsn, "-e", statement],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def waiting_backup() -> int | None:
            running = [j for j in store.jobs.list() if j.job_type == "BACKUP" and j.status == "running"]
            blocked = _sql(
                pg_server,
                "postgres",
                f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{shop}' AND wait_event_type = 'Lock'",
            )
            return running[0].job_id if running and blocked[0][0] else None

        deadline = time.monotonic() + 60
        while (job_id := waiting_backup()) is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the backup never reached the locked table"
            time.sleep(0.05)
        store.jobs.cancel(job_id)
        assert store.jobs.list(job_id)[0].status == "cancel-requested"
    finally:
        locker.rollback()
        locker.close()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "canceled" in err, err
    job = open_store(store_dir).jobs.list(job_id)[0]
    assert job.status == "canceled"
    assert open_store(store_dir).backups.show_backups("nodelocal://1/canceled") == []
    left = [p for p in (store_dir / "extern" / "canceled").rglob("*") if p.is_file()]
    assert left == [], left
    assert PASSWORD not in err


@settings(max_examples=300, deadline=None)
@given(
    dsn=st.one_of(
        st.text(),
        st.builds(lambda a, b: f"postgresql://{a}:{b}@h/db", st.text(), st.text()),
        st.builds(lambda a: f"host=h password={a} dbname=x", st.text()),
    )
)
def test_any_dsn_parses_or_is_one_clear_error_without_its_password(dsn: str) -> None:
    """A DSN of any text: parsed, or one UsageError naming it, its password never shown."""
    from strongroom.errors import StrongroomError, clear_secrets
    from strongroom.postgres import Dsn

    clear_secrets()
    try:
        parsed = Dsn.parse(dsn)
    except StrongroomError as exc:
        assert "PostgreSQL connection string" in str(exc)
        return
    if parsed.password:
        assert parsed.password not in parsed.display or parsed.password in "redacted"
        assert "password" not in parsed.libpq


def test_restore_as_of_system_time_picks_the_layer_of_that_time(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    """``RESTORE ... AS OF SYSTEM TIME`` on a PostgreSQL chain: the newest layer at or before it."""
    store = tmp_path / "store"
    init_store(store)
    create_key("k")
    shell = Shell(store, pg_server)
    coll = "nodelocal://1/asof"
    shell.sql(f"BACKUP DATABASE {shop} INTO '{coll}' WITH kms = 'local:///k';")
    at_full = _orders(pg_server, shop)
    _sql(pg_server, shop, "DELETE FROM orders WHERE id % 2 = 0")
    shell.sql(f"BACKUP INTO LATEST IN '{coll}' WITH kms = 'local:///k';")
    layers = shell.sql(f"SHOW BACKUP LATEST IN '{coll}' WITH kms = 'local:///k';")
    full_end = next(r["end_time"] for r in layers if r["backup_type"] == "full")
    shell.sql(
        f"RESTORE DATABASE {shop} FROM LATEST IN '{coll}' AS OF SYSTEM TIME '{full_end}' "
        f"WITH kms = 'local:///k', new_db_name = '{shop}_then';"
    )
    assert _orders(pg_server, f"{shop}_then") == at_full
    shell.sql(f"RESTORE DATABASE {shop} FROM LATEST IN '{coll}' WITH kms = 'local:///k', new_db_name = '{shop}_now';")
    assert _orders(pg_server, f"{shop}_now") == _orders(pg_server, shop)


def test_restore_of_several_targets_is_all_or_nothing(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    """Several tables or databases: one that exists refuses the whole RESTORE before anything is
    written, as CockroachDB does."""
    store = tmp_path / "store"
    init_store(store)
    create_key("k")
    shell = Shell(store, pg_server)
    coll = "nodelocal://1/several"
    shell.sql(f"BACKUP DATABASE {shop} INTO '{coll}' WITH kms = 'local:///k';")
    shell.sql(f"CREATE DATABASE {shop}_x;")
    _sql(pg_server, f"{shop}_x", "CREATE TABLE customers (id int)")
    refused = shell.cli(
        "sql",
        "--postgres",
        f"postgresql://postgres@{pg_server.host}:{pg_server.port}/postgres",
        "-e",
        f"RESTORE TABLE {shop}.public.orders, {shop}.public.customers FROM LATEST IN '{coll}' "
        f"WITH kms = 'local:///k', into_db = '{shop}_x', skip_missing_foreign_keys",
        ok=False,
    )
    assert 'relation "public.customers" already exists' in refused.output
    assert _sql(pg_server, f"{shop}_x", "SELECT to_regclass('public.orders')") == [(None,)]
    missing = shell.cli(
        "sql",
        "--postgres",
        f"postgresql://postgres@{pg_server.host}:{pg_server.port}/postgres",
        "-e",
        f"RESTORE TABLE {shop}.public.orders FROM LATEST IN '{coll}' WITH kms = 'local:///k', into_db = 'nowhere'",
        ok=False,
    )
    assert 'database "nowhere" to restore public.orders into does not exist' in missing.output


def test_several_databases_back_up_and_come_back_under_their_names(
    pg_server: PgServer, shop: str, tmp_path: Path
) -> None:
    """``BACKUP DATABASE a, b``: each in its own snapshot (PostgreSQL shares one only within a
    database); ``RESTORE FROM LATEST IN`` brings every database back under its own name."""
    store = tmp_path / "store"
    init_store(store)
    create_key("k")
    shell = Shell(store, pg_server)
    other = f"{shop}_two"
    shell.sql(f"CREATE DATABASE {other};")
    _sql(pg_server, other, "CREATE TABLE t (k text PRIMARY KEY); INSERT INTO t VALUES ('a'), ('b')")
    coll = "nodelocal://1/two"
    before = _orders(pg_server, shop)
    r = shell.sql(f"BACKUP DATABASE {shop}, {other} INTO '{coll}' WITH kms = 'local:///k';")
    assert r[0]["rows"] == 5100 + 2
    shell.sql(f"BACKUP INTO LATEST IN '{coll}' WITH kms = 'local:///k';")
    shown = shell.sql(f"SHOW BACKUP LATEST IN '{coll}' WITH kms = 'local:///k';")
    assert {r["database_name"] for r in shown} >= {shop, other}
    shell.sql(f"DROP DATABASE {shop};")
    shell.sql(f"DROP DATABASE {other};")
    r = shell.sql(f"RESTORE FROM LATEST IN '{coll}' WITH kms = 'local:///k';")
    assert r[0]["rows"] == 5100 + 2
    assert _orders(pg_server, shop) == before
    assert _sql(pg_server, other, "SELECT k FROM t ORDER BY k") == [("a",), ("b",)]


def test_ownership_and_grants_come_back_where_their_roles_exist(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    """A restore keeps owners and grants when every role they name is on the server; when one is
    gone, the restore still succeeds, everything owned by the restoring user (not a failure on the
    first ALTER ... OWNER TO)."""
    suffix = uuid.uuid4().hex[:6]
    owner, reader, gone = f"owner_{suffix}", f"reader_{suffix}", f"gone_{suffix}"
    for role in (owner, reader, gone):
        _sql(pg_server, "postgres", f"CREATE ROLE {role}")
    try:
        _sql(pg_server, shop, f"ALTER TABLE orders OWNER TO {owner}; GRANT SELECT ON customers TO {reader}")
        store = tmp_path / "store"
        init_store(store)
        create_key("k")
        shell = Shell(store, pg_server)
        shell.sql(f"BACKUP DATABASE {shop} INTO 'nodelocal://1/own' WITH kms = 'local:///k';")
        shell.sql(
            f"RESTORE DATABASE {shop} FROM LATEST IN 'nodelocal://1/own' WITH kms = 'local:///k', "
            f"new_db_name = '{shop}_own';"
        )
        assert _sql(pg_server, f"{shop}_own", "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'") == [
            (owner,)
        ]
        assert _sql(pg_server, f"{shop}_own", f"SELECT has_table_privilege('{reader}', 'customers', 'SELECT')") == [
            (True,)
        ]

        _sql(pg_server, shop, f"ALTER TABLE customers OWNER TO {gone}")
        shell.sql(f"BACKUP DATABASE {shop} INTO 'nodelocal://1/gone' WITH kms = 'local:///k';")
        _sql(pg_server, shop, f"REASSIGN OWNED BY {gone} TO postgres; DROP OWNED BY {gone}")
        _sql(pg_server, "postgres", f"DROP ROLE {gone}")
        shell.sql(
            f"RESTORE DATABASE {shop} FROM LATEST IN 'nodelocal://1/gone' WITH kms = 'local:///k', "
            f"new_db_name = '{shop}_gone';"
        )
        owners = _sql(
            pg_server, f"{shop}_gone", "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        )
        assert owners == [("postgres",)]
        assert len(_sql(pg_server, f"{shop}_gone", "SELECT * FROM orders")) == 5000
    finally:
        for (db,) in _sql(pg_server, "postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{shop}%'"):
            _sql(pg_server, "postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for role in (owner, reader, gone):
            _sql(pg_server, "postgres", f"DROP ROLE IF EXISTS {role}")


def test_a_write_only_postgres_backup_is_refused_with_one_clear_error(
    pg_server: PgServer, shop: str, tmp_path: Path
) -> None:
    """Public-key recipients (write-only hosts) are not supported for PostgreSQL yet: refused before
    anything is written, naming the alternative, never a traceback."""
    pyrage = pytest.importorskip("pyrage")
    recipient = f"age:///{pyrage.x25519.Identity.generate().to_public()}"
    store = tmp_path / "store"
    init_store(store)
    shell = Shell(store, pg_server)
    shell.sql(f"BACKUP DATABASE {shop} INTO 'nodelocal://1/wo' WITH kms = '{recipient}';", ok=False)
    assert "cannot be written with public-key recipients" in shell.outputs[-1]
    assert "Traceback" not in shell.outputs[-1]
    assert not [p for p in (store / "extern").rglob("*") if p.is_file()]


def test_a_killed_jobs_process_leaves_no_job_running_for_ever(pg_server: PgServer, shop: str, tmp_path: Path) -> None:
    """kill -9 of the process running a BACKUP: SHOW JOBS shows the job failed (its process is
    provably gone), not running for ever, and the next backup into the collection removes what the
    killed one wrote."""
    import signal
    import subprocess
    import sys
    import time

    from strongroom import open_store
    from strongroom.store.jobs import ORPHAN_MESSAGE

    store_dir = tmp_path / "store"
    store = init_store(store_dir)
    create_key("k")
    dsn = f"postgresql://postgres@{pg_server.host}:{pg_server.port}/postgres"
    locker = psycopg.connect(pg_server.dsn(shop))
    locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    statement = f"BACKUP DATABASE {shop} INTO 'nodelocal://1/killed' WITH kms = 'local:///k'"
    proc = subprocess.Popen(
        [sys.executable, "-m", "strongroom.cli", "--store", str(store_dir), "sql", "--postgres", dsn, "-e", statement],
        env={**os.environ, "PGPASSWORD": PASSWORD},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not [j for j in store.jobs.list() if j.status == "running"]:
            assert proc.poll() is None and time.monotonic() < deadline, "the backup never started"
            time.sleep(0.05)
        (job,) = store.jobs.list()
        assert job.status == "running"  # its process is alive: running, as it is
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        locker.rollback()
        locker.close()
    (job,) = open_store(store_dir).jobs.list()
    assert job.status == "failed" and job.error == ORPHAN_MESSAGE
    # The next backup into the collection cleans up what the killed one left, and succeeds.
    shell = Shell(store_dir, pg_server)
    shell.sql(f"BACKUP DATABASE {shop} INTO 'nodelocal://1/killed' WITH kms = 'local:///k';")
    assert [b["status"] for b in shell.sql("SHOW BACKUPS IN 'nodelocal://1/killed';")] == ["complete"]
