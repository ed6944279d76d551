"""Backup schedules: CockroachDB's CREATE SCHEDULE FOR BACKUP, SHOW SCHEDULES, PAUSE / RESUME / DROP,
run by ``strongroom schedules run-due`` (and serve's scheduler), with their secrets sealed in the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import fill_bank, table_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.backup.keys import Encryption
from strongroom.backup.owners import _started, lock_content
from strongroom.cli import main
from strongroom.errors import NotFoundError, UsageError
from strongroom.kms import create_key
from strongroom.sql import Result
from strongroom.store import Store
from strongroom.store.schedules import (
    CREATE_COLUMNS,
    SHOW_COLUMNS,
    WAITING_FOR_FULL,
    check_crontab,
    default_full_recurrence,
    next_run,
)

pytest_plugins = ("cloud_servers",)

PASS = "correct horse battery staple"
NOW = datetime(2026, 12, 2, 3, 30, tzinfo=UTC)


def q(store: Store, sql: str, params: list[object] | None = None) -> list[Result]:
    """Every statement's result (Store.execute gives a lone statement's result bare)."""
    with store.session() as session:
        return session.execute(sql, params)


def create(store: Store, sql: str, *params: object) -> list[dict[str, object]]:
    [result] = q(store, sql, list(params) or None)
    assert result.columns == CREATE_COLUMNS
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def shown(store: Store) -> list[dict[str, object]]:
    [result] = q(store, "SHOW SCHEDULES")
    assert result.columns == SHOW_COLUMNS
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


@pytest.fixture
def bank(store: Store) -> Store:
    fill_bank(store, accounts=500)
    return store


def coll_of(store: Store) -> str:
    return f"{store.path}/../coll"


def test_create_schedule_makes_cockroachdbs_two_schedules(bank: Store) -> None:
    coll = coll_of(bank)
    rows = create(
        bank,
        f"CREATE SCHEDULE nightly FOR BACKUP DATABASE bank INTO '{coll}' "
        "WITH encryption_passphrase = $1 RECURRING '@hourly'",
        PASS,
    )
    # The incremental first, paused until the first full succeeds; the full runs now.
    assert [r["status"] for r in rows] == [f"PAUSED: {WAITING_FOR_FULL}", "ACTIVE"]
    assert [r["schedule"] for r in rows] == ["@hourly", "@daily"]  # hourly incrementals: daily fulls
    assert rows[0]["first_run"] is None and rows[1]["first_run"] is not None
    assert rows[0]["backup_stmt"] == (
        f"BACKUP DATABASE bank INTO LATEST IN '{coll}' WITH OPTIONS (encryption_passphrase = '*****', detached)"
    )
    assert rows[1]["backup_stmt"] == (
        f"BACKUP DATABASE bank INTO '{coll}' WITH OPTIONS (encryption_passphrase = '*****', detached)"
    )
    listed = shown(bank)
    assert {r["id"] for r in listed} == {r["schedule_id"] for r in rows}
    full = next(r for r in listed if r["recurrence"] == "@daily")
    command = json.loads(str(full["command"]))
    assert command["backup_type"] == 0 and command["dependent_schedule_id"] == str(rows[0]["schedule_id"])
    assert all(r["label"] == "nightly" and r["jobsrunning"] == 0 for r in listed)


@pytest.mark.parametrize(
    ("recurring", "full", "expected"),
    [
        ("'*/15 * * * *'", "", ["@daily"]),
        ("'@daily'", "", ["@weekly"]),
        ("'@weekly'", "", []),  # rarer than daily: every backup is full
        ("'@hourly'", "FULL BACKUP ALWAYS", []),
        ("'@hourly'", "FULL BACKUP '0 2 * * 0'", ["0 2 * * 0"]),
    ],
)
def test_full_backup_cadence_defaults_as_cockroachdb(
    bank: Store, recurring: str, full: str, expected: list[str]
) -> None:
    rows = create(
        bank,
        f"CREATE SCHEDULE s FOR BACKUP INTO '{coll_of(bank)}' WITH encryption_passphrase = $1 "
        f"RECURRING {recurring} {full}",
        PASS,
    )
    if not expected:
        assert len(rows) == 1 and rows[0]["status"] == "ACTIVE" and rows[0]["schedule"] == recurring.strip("'")
    else:
        assert [r["schedule"] for r in rows] == [recurring.strip("'"), *expected]


def test_runs_take_full_then_incrementals_and_restore(bank: Store, tmp_path: Path) -> None:
    coll = coll_of(bank)
    rows = create(
        bank,
        f"CREATE SCHEDULE s FOR BACKUP DATABASE bank INTO '{coll}' WITH encryption_passphrase = $1 RECURRING '@hourly'",
        PASS,
    )
    inc_id, full_id = (r["schedule_id"] for r in rows)
    assert bank.schedules.run_due(NOW - timedelta(days=1)) == []  # the full's first run is now, not then
    [run] = bank.schedules.run_due()
    assert (run.schedule_id, run.backup_type, run.status) == (full_id, "full", "succeeded")
    # The full resumed the incremental: due at the next hour.
    inc = bank.schedules.get(int(str(inc_id)))
    assert inc.status == "ACTIVE" and inc.next_run is not None
    assert bank.schedules.run_due() == []  # nothing due until the next hour
    q(bank, "USE bank; INSERT INTO accounts(id, owner, balance) VALUES (100000, 'late', 1)")
    [run] = bank.schedules.run_due(datetime.now(UTC) + timedelta(hours=1, minutes=1))
    assert (run.schedule_id, run.backup_type, run.status) == (inc_id, "incremental", "succeeded")
    jobs = {j.job_id: j for j in bank.jobs.list()}
    assert run.job_id is not None
    assert jobs[run.job_id].status == "succeeded" and "INTO LATEST IN" in jobs[run.job_id].description
    q(
        bank,
        f"RESTORE DATABASE bank FROM LATEST IN '{coll}' WITH encryption_passphrase = $1, new_db_name = bank2",
        [PASS],
    )
    assert table_rows(bank, "bank2", "accounts") == table_rows(bank, "bank", "accounts")
    state = bank.schedules.get(int(str(inc_id))).state
    assert state is not None and state.startswith("succeeded at ") and str(run.job_id) in state


def test_secrets_are_sealed_never_on_disk_or_shown(bank: Store, request: pytest.FixtureRequest) -> None:
    """The passphrase and the collection's credentials: sealed under the store key, nowhere in plaintext."""
    cloud = request.getfixturevalue("moto_s3")
    coll = cloud.uri("scheduled")
    [row] = create(
        bank,
        f"CREATE SCHEDULE s3 FOR BACKUP DATABASE bank INTO '{coll}' WITH encryption_passphrase = $1 "
        "RECURRING '@weekly'",
        PASS,
    )
    for text in (str(row), str(shown(bank)), str(bank.jobs.list())):
        assert PASS not in text and cloud.secret not in text
    [run] = bank.schedules.run_due()
    assert run.status == "succeeded", run.error
    assert q(bank, f"SHOW BACKUPS IN '{coll}'")[0].rows  # it went to S3
    for path in Path(bank.path).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert PASS.encode() not in data and cloud.secret.encode() not in data, path
    # ... and it is in the region's registry, sealed under the store key.
    sealed = bank.region_keys(bank.primary_region).registry.secrets
    assert [json.loads(v)["passphrase"] for v in sealed.values()] == [PASS]
    q(bank, f"DROP SCHEDULE {row['schedule_id']}")
    assert bank.region_keys(bank.primary_region).secret(f"schedule:{row['schedule_id']}") is None
    assert shown(bank) == []


def test_pause_resume_drop(bank: Store) -> None:
    [row] = create(
        bank,
        f"CREATE SCHEDULE p FOR BACKUP INTO '{coll_of(bank)}' WITH encryption_passphrase = $1 RECURRING '@weekly'",
        PASS,
    )
    sid = row["schedule_id"]
    q(bank, f"PAUSE SCHEDULE {sid}")
    [s] = shown(bank)
    assert (s["schedule_status"], s["next_run"]) == ("PAUSED", None)
    assert bank.schedules.run_due(NOW + timedelta(days=30)) == []
    assert [r[0] for r in q(bank, "SHOW PAUSED SCHEDULES")[0].rows] == [sid]
    assert q(bank, "SHOW RUNNING SCHEDULES")[0].rows == []
    q(bank, "RESUME SCHEDULE $1", [str(sid)])
    [s] = shown(bank)
    after = next_run("@weekly", datetime.now(UTC))
    assert s["schedule_status"] == "ACTIVE" and datetime.fromisoformat(str(s["next_run"])) == after
    q(bank, f"DROP SCHEDULE {sid}")
    with pytest.raises(NotFoundError, match=f"schedule {sid} does not exist"):
        q(bank, f"SHOW SCHEDULE {sid}")


def _failing(store: Store, mode: str) -> int:
    store.create_database("gone")
    [row] = create(
        store,
        f"CREATE SCHEDULE f FOR BACKUP DATABASE gone INTO '{coll_of(store)}' WITH encryption_passphrase = $1 "
        f"RECURRING '@weekly' WITH SCHEDULE OPTIONS on_execution_failure = '{mode}'",
        PASS,
    )
    store.drop_database("gone")  # every run now fails
    return int(str(row["schedule_id"]))


@pytest.mark.parametrize("mode", ["retry", "reschedule", "pause"])
def test_on_execution_failure(bank: Store, mode: str) -> None:
    sid = _failing(bank, mode)
    [run] = bank.schedules.run_due()
    assert run.status == "failed" and run.error == 'database "gone" does not exist'
    row = bank.schedules.get(sid)
    assert row.state == f'{mode}: database "gone" does not exist'
    if mode == "pause":
        assert (row.status, row.next_run) == ("PAUSED", None)
    elif mode == "retry":
        [again] = bank.schedules.run_due()  # due at once
        assert again.status == "failed"
    else:
        assert row.status == "ACTIVE" and bank.schedules.run_due() == []
        assert datetime.fromisoformat(str(row.next_run)) == next_run("@weekly", datetime.now(UTC))
    failed = [j for j in bank.jobs.list() if j.status == "failed"]
    assert failed and all(j.error == 'database "gone" does not exist' for j in failed)


def _claimed_by_live_process(store: Store, sid: int) -> subprocess.Popen[bytes]:
    """A run in progress elsewhere: a claim naming another live process of this host and boot."""
    other = subprocess.Popen(["sleep", "600"])
    owner = json.loads(lock_content())
    owner.update(pid=other.pid, started=_started(other.pid))
    claim = json.dumps({"owner": json.dumps(owner), "claimed": "now"})
    with store.schedules.table.transaction() as conn:
        store.schedules.table.set(conn, sid, running=claim)
    return other


@pytest.mark.parametrize("mode", ["wait", "skip", "start"])
def test_on_previous_running(bank: Store, mode: str) -> None:
    [row] = create(
        bank,
        f"CREATE SCHEDULE r FOR BACKUP INTO '{coll_of(bank)}' WITH encryption_passphrase = $1 "
        f"RECURRING '@weekly' WITH SCHEDULE OPTIONS on_previous_running = '{mode}'",
        PASS,
    )
    sid = int(str(row["schedule_id"]))
    other = _claimed_by_live_process(bank, sid)
    try:
        assert bank.schedules.get(sid).jobs_running() == 1
        runs = bank.schedules.run_due()
        if mode == "wait":
            assert runs == [] and bank.schedules.get(sid).next_run == row["first_run"]  # still due
        elif mode == "skip":
            assert [r.status for r in runs] == ["skipped"] and not q(bank, f"SHOW BACKUPS IN '{coll_of(bank)}'")[0].rows
        else:
            assert [r.status for r in runs] == ["succeeded"]
    finally:
        other.kill()
        other.wait()
    # The other process is gone: its claim no longer holds anything back.
    assert bank.schedules.get(sid).jobs_running() == 0
    if mode == "wait":
        assert [r.status for r in bank.schedules.run_due()] == ["succeeded"]


def test_revoking_the_cmek_stops_every_schedule(bank: Store, tmp_path: Path) -> None:
    create_key("cmek-key")
    bank.enable_cmek({"local": "local:///cmek-key"})
    create(
        bank,
        f"CREATE SCHEDULE c FOR BACKUP INTO '{coll_of(bank)}' WITH encryption_passphrase = $1 RECURRING '@daily'",
        PASS,
    )
    path = bank.path
    bank.revoke_cmek()
    bank.close()
    out = CliRunner().invoke(main, ["schedules", "run-due", "--store", str(path), "--format", "json"])
    assert out.exit_code == 1
    assert "was revoked" in out.output
    locked = Store.open(path, unlock=False)
    states = {(r.status, r.next_run) for r in locked.schedules.show()}
    assert states == {("PAUSED", None)}
    assert all(
        "CMEK was revoked" in str(r.state) and "RESUME SCHEDULE" in str(r.state) for r in locked.schedules.show()
    )


def test_two_processes_running_due_schedules_take_one_backup(bank: Store) -> None:
    coll = coll_of(bank)
    create(
        bank,
        f"CREATE SCHEDULE once FOR BACKUP INTO '{coll}' WITH encryption_passphrase = $1 RECURRING '@weekly'",
        PASS,
    )
    cmd = [sys.executable, "-m", "strongroom.cli", "schedules", "run-due", "--store", str(bank.path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len(q(bank, f"SHOW BACKUPS IN '{coll}'")[0].rows) == 1
    assert len([j for j in bank.jobs.list() if j.job_type == "BACKUP"]) == 1
    assert sorted(b"no schedule is due" in o for o, _ in outs) == [False, True]


def test_create_schedule_refusals(bank: Store) -> None:
    coll = coll_of(bank)
    base = f"CREATE SCHEDULE x FOR BACKUP INTO '{coll}' WITH encryption_passphrase = '{PASS}' RECURRING "
    cases = {
        "'every day'": "RECURRING 'every day': not a crontab expression",
        "'@fortnightly'": "RECURRING '@fortnightly': unknown macro",
        "NEVER": "RECURRING NEVER: a backup schedule needs a crontab",
        "'@daily' WITH SCHEDULE OPTIONS on_execution_failure = 'explode'": "on_execution_failure = 'explode'",
        "'@daily' WITH SCHEDULE OPTIONS on_previous_running = 'maybe'": "on_previous_running = 'maybe'",
        "'@daily' WITH SCHEDULE OPTIONS first_run = 'soonish'": "first_run = 'soonish'",
        "'@daily' WITH SCHEDULE OPTIONS colour = 'blue'": 'unknown schedule option "colour"',
    }
    for tail, message in cases.items():
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("*", r"\*")) as exc:
            q(bank, base + tail)
        assert PASS not in str(exc.value)
    with pytest.raises(UsageError, match="refusing to write an unencrypted backup"):
        q(bank, f"CREATE SCHEDULE x FOR BACKUP INTO '{coll}' RECURRING '@daily'")
    with pytest.raises(NotFoundError, match='database "nope" does not exist'):
        q(
            bank,
            f"CREATE SCHEDULE x FOR BACKUP DATABASE nope INTO '{coll}' WITH encryption_passphrase = '{PASS}' "
            "RECURRING '@daily'",
        )
    assert shown(bank) == []
    bank.backup(coll, encryption=Encryption(passphrase=PASS))
    with pytest.raises(UsageError, match=r"backups already created in .*ignore_existing_backups"):
        q(bank, base + "'@daily'")
    created = create(bank, base + "'@daily' WITH SCHEDULE OPTIONS ignore_existing_backups")
    assert len(created) == 2
    assert (
        create(
            bank,
            base.replace("SCHEDULE x", "SCHEDULE IF NOT EXISTS x")
            + "'@daily' WITH SCHEDULE OPTIONS ignore_existing_backups",
        )
        == []
    )
    assert len(shown(bank)) == 2
    assert len(bank.region_keys(bank.primary_region).registry.secrets) == 1  # IF NOT EXISTS kept no secret


def test_cli_lists_pauses_resumes_and_runs(bank: Store) -> None:
    [row] = create(
        bank,
        f"CREATE SCHEDULE cli FOR BACKUP INTO '{coll_of(bank)}' WITH encryption_passphrase = $1 RECURRING '@weekly'",
        PASS,
    )
    sid = str(row["schedule_id"])
    store = ["--store", str(bank.path)]
    runner = CliRunner()
    out = runner.invoke(main, ["schedules", "list", *store, "--format", "json"])
    assert out.exit_code == 0 and json.loads(out.output)[0]["id"] == sid  # a string: jq keeps it whole
    assert runner.invoke(main, ["schedules", "pause", sid, *store]).output == f"paused schedule {sid}\n"
    out = runner.invoke(main, ["schedules", "run-due", *store])
    assert (out.exit_code, out.output) == (0, "no schedule is due\n")
    assert runner.invoke(main, ["schedules", "resume", sid, *store]).exit_code == 0
    out = runner.invoke(main, ["schedules", "list", *store, "--status", "active", "--format", "json"])
    [listed] = json.loads(out.output)
    # Due next week: run it as if then, through the same path the timer takes.
    with bank.schedules.table.transaction() as conn:
        bank.schedules.table.set(conn, int(sid), next_run=str(datetime.now(UTC) - timedelta(seconds=1)))
    out = runner.invoke(main, ["schedules", "run-due", *store, "--format", "json"])
    assert out.exit_code == 0, out.output
    [ran] = json.loads(out.output)
    assert (ran["schedule_id"], ran["backup_type"], ran["status"]) == (sid, "full", "succeeded")
    out = runner.invoke(main, ["schedules", "show", "12345", *store])
    assert (out.exit_code, out.output) == (1, "ERROR: schedule 12345 does not exist\n")
    assert listed["schedule_status"] == "ACTIVE"


def test_serve_scheduler_runs_due_schedules(bank: Store) -> None:
    from strongroom.server.app import StoreService
    from strongroom.server.scheduler import Scheduler

    [row] = create(
        bank,
        f"CREATE SCHEDULE srv FOR BACKUP INTO '{coll_of(bank)}' WITH encryption_passphrase = $1 RECURRING '@weekly'",
        PASS,
    )
    service = StoreService(Path(bank.path))
    try:
        Scheduler(service, 60).run_once()
    finally:
        service.store.close()
    assert bank.schedules.get(int(str(row["schedule_id"]))).state.startswith("succeeded at ")  # type: ignore[union-attr]
    assert len(q(bank, f"SHOW BACKUPS IN '{coll_of(bank)}'")[0].rows) == 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_crontab_text_is_taken_or_refused_with_one_clear_error(text: str) -> None:
    try:
        expr = check_crontab(text, "RECURRING")
    except UsageError as exc:
        assert str(exc).startswith("RECURRING ")
        return
    at = next_run(expr, NOW)
    assert at > NOW
    assert default_full_recurrence(expr, NOW) in (None, "@daily", "@weekly")


def test_schedule_files_are_private(bank: Store) -> None:
    create(
        bank,
        f"CREATE SCHEDULE m FOR BACKUP INTO '{coll_of(bank)}' WITH encryption_passphrase = $1 RECURRING '@weekly'",
        PASS,
    )
    assert os.stat(Path(bank.path) / "system.db").st_mode & 0o077 == 0


def test_a_schedules_retention_runs_after_each_success(bank: Store) -> None:
    coll = coll_of(bank)
    [row] = create(
        bank,
        f"CREATE SCHEDULE kept FOR BACKUP INTO '{coll}' WITH encryption_passphrase = $1 RECURRING '@weekly' "
        "WITH SCHEDULE OPTIONS retention = 'keep-last=2'",
        PASS,
    )
    assert json.loads(str(shown(bank)[0]["command"]))["retention"] == "keep-last=2"
    sid = int(str(row["schedule_id"]))
    for _ in range(3):
        assert bank.schedules.run_now(sid).status == "succeeded"
    assert len(q(bank, f"SHOW BACKUPS IN '{coll}'")[0].rows) == 2
    forgets = [j for j in bank.jobs.list() if j.job_type == "FORGET"]
    assert len(forgets) == 3 and all(j.status == "succeeded" for j in forgets)
    with pytest.raises(UsageError, match="invalid retention 'keep-daily'"):
        q(
            bank,
            f"CREATE SCHEDULE bad FOR BACKUP INTO '{coll}' WITH encryption_passphrase = $1 RECURRING '@weekly' "
            "WITH SCHEDULE OPTIONS retention = 'keep-daily', ignore_existing_backups",
            [PASS],
        )
