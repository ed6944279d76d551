"""One route: every BACKUP, RESTORE, ALTER BACKUP and managed backup is a job in SHOW JOBS,
whichever surface started it (CLI, Python API, SQL), described the same way with secrets redacted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner
from conftest import fill_bank

from strongroom import BackupRequest, Encryption, EncryptionError, NotFoundError, Store, open_store
from strongroom.backup.jobs import new_job_id
from strongroom.cli import main

SECRET = "correct-horse-battery-staple"


def _jobs(store: Store) -> list[tuple[object, ...]]:
    return list(store.execute("SHOW JOBS").rows)


def test_a_cli_backup_and_restore_show_up_in_show_jobs(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    fill_bank(store, accounts=50)
    monkeypatch.setenv("STRONGROOM_PASSPHRASE", SECRET)
    runner = CliRunner()
    for args in (
        ["backup", "nodelocal://1/cli", "--store", str(store.path), "--passphrase"],
        [
            "restore",
            "nodelocal://1/cli",
            "--store",
            str(store.path),
            "--passphrase",
            "--database",
            "bank",
            "--new-db-name",
            "bank2",
        ],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    rows = _jobs(open_store(store.path))
    assert [(r[1], r[5]) for r in rows] == [("BACKUP", "succeeded"), ("RESTORE", "succeeded")]
    assert rows[0][2] == "BACKUP INTO 'nodelocal://1/cli' WITH OPTIONS (encryption_passphrase = '*****')"
    assert rows[1][2] == (
        "RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/cli' "
        "WITH OPTIONS (encryption_passphrase = '*****', new_db_name = 'bank2')"
    )
    assert SECRET not in repr(rows)


def test_python_and_sql_describe_a_backup_the_same_way(store: Store) -> None:
    fill_bank(store, accounts=20)
    store.backup("nodelocal://1/py", databases=["bank"], encryption=Encryption(passphrase=SECRET))
    store.execute(f"BACKUP DATABASE bank INTO 'nodelocal://1/py' WITH encryption_passphrase = '{SECRET}'")
    first, second = _jobs(store)
    assert (
        first[2]
        == second[2]
        == BackupRequest(
            into=("nodelocal://1/py",), databases=("bank",), encryption=Encryption(passphrase=SECRET)
        ).describe()
    )
    assert SECRET not in first[2]


def test_a_failed_python_restore_is_a_failed_job_with_its_error(store: Store) -> None:
    fill_bank(store, accounts=20)
    store.backup("nodelocal://1/f", encryption=Encryption(passphrase=SECRET))
    with pytest.raises(EncryptionError) as exc:
        store.restore("nodelocal://1/f", databases=["bank"], new_db_name="x", encryption=Encryption(passphrase="no"))
    last = _jobs(store)[-1]
    assert (last[1], last[5], last[12]) == ("RESTORE", "failed", str(exc.value))


def test_alter_backup_and_managed_backups_are_jobs(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, _ = keys
    fill_bank(store, accounts=20)
    store.backup("nodelocal://1/k", encryption=Encryption(kms=(east,)))
    store.alter_backup("nodelocal://1/k", new_kms=(west,), old_kms=(east,))
    [taken] = store.managed_backup(full=True)
    store.restore_managed(databases=["bank"], new_db_name="from_managed")
    kinds = [(r[1], r[5]) for r in _jobs(store)]
    assert kinds == [
        ("BACKUP", "succeeded"),
        ("ALTER BACKUP", "succeeded"),
        ("BACKUP", "succeeded"),
        ("RESTORE", "succeeded"),
    ]
    descriptions = [str(r[2]) for r in _jobs(store)]
    assert descriptions[1] == (
        "ALTER BACKUP LATEST IN 'nodelocal://1/k' ADD NEW_KMS = ('local:///west') WITH OLD_KMS = ('local:///east')"
    )
    assert descriptions[2].startswith(f"managed backup of region {taken.region}: BACKUP INTO ")
    assert descriptions[3].startswith("restore managed backups: RESTORE DATABASE bank FROM ")


def test_a_store_without_jobs_makes_no_job_registry(tmp_path: Path, store: Store) -> None:
    store.create_database("x")
    assert not (store.path / "system.db").exists()


_ID_MAKER = """
import sys, time
from strongroom.backup.jobs import new_job_id
start = float(sys.argv[1])
while time.time() < start:
    pass
print(" ".join(str(new_job_id()) for _ in range(20000)))
"""


def test_job_ids_made_at_the_same_moment_by_two_processes_never_collide() -> None:
    """CockroachDB's unique_rowid() layout with a node id per process: two backups started at once
    by two processes (or machines) into one collection must not share a job id (and BACKUP-LOCK)."""
    start = time.time() + 1.0  # both children spin until the same instant, then draw ids flat out
    children = [
        subprocess.Popen([sys.executable, "-c", _ID_MAKER, str(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [c.communicate(timeout=60)[0] for c in children]
    assert all(c.returncode == 0 for c in children)
    first, second = ({int(x) for x in out.split()} for out in outputs)
    assert len(first) == len(second) == 20000
    assert not first & second
    assert all(0 < i < 2**63 for i in first | second)


def test_the_registry_draws_again_when_an_id_is_taken(store: Store) -> None:
    """Ids that another process with the same node id recorded for the next second of ticks: every
    draw in that window collides, and the registry keeps drawing until it finds a free one."""
    registry = store.jobs.registry
    registry.start("BACKUP", "first")  # makes the table
    now = new_job_id()
    node, tick = now & 0x7FFF, now >> 15
    taken = [(t << 15 | node, "BACKUP", "another process", "running", "x") for t in range(tick, tick + 100_000)]
    with apsw.Connection(str(store.path / "system.db")) as conn:
        conn.executemany("INSERT INTO jobs(job_id, job_type, description, status, created) VALUES (?,?,?,?,?)", taken)
    job_id = registry.start("BACKUP", "mine")
    assert job_id > taken[-1][0]
    assert [j.description for j in registry.list(job_id)] == ["mine"]


def test_the_public_surface_is_documented() -> None:
    """What a user needs is exported from ``strongroom`` with a docstring, and so is every public
    method of Store (issue 9: a tiny curated surface, one exception root)."""
    import inspect

    import strongroom

    for name in strongroom.__all__:
        if not name.startswith("_"):
            assert (getattr(strongroom, name).__doc__ or "").strip(), name
    for name, member in inspect.getmembers(strongroom.Store):
        if not name.startswith("_") and callable(member):
            assert (member.__doc__ or "").strip(), f"Store.{name}"
    assert all(
        issubclass(getattr(strongroom, n), strongroom.StrongroomError)
        for n in strongroom.__all__
        if n.endswith("Error")
    )


def test_show_jobs_has_cockroachdbs_columns(store: Store) -> None:
    from strongroom.backup.jobs import NODE_ID

    fill_bank(store, accounts=20)
    store.backup("nodelocal://1/cols", encryption=Encryption(passphrase=SECRET))
    shown = store.execute("SHOW JOBS")
    assert shown.columns == (
        "job_id", "job_type", "description", "statement", "user_name", "status", "running_status", "created",
        "started", "finished", "modified", "fraction_completed", "error", "coordinator_id",
    )  # fmt: skip
    job = dict(zip(shown.columns, shown.rows[-1], strict=True))
    assert job["status"] == "succeeded" and job["running_status"] is None and job["fraction_completed"] == 1
    assert job["statement"] == job["description"] and SECRET not in str(job)
    assert job["created"] <= job["started"] <= job["finished"] <= job["modified"]
    assert job["user_name"] and job["coordinator_id"] == NODE_ID


def test_show_jobs_when_complete_waits_for_a_detached_job(store: Store) -> None:
    fill_bank(store, accounts=300)
    [(job_id,)] = store.execute(
        f"BACKUP INTO 'nodelocal://1/wait' WITH encryption_passphrase = '{SECRET}', detached"
    ).rows
    done = store.execute(f"SHOW JOBS WHEN COMPLETE ({job_id})")  # returns only once the job has ended
    assert [(r[0], r[5]) for r in done.rows] == [(job_id, "succeeded")]
    assert store.execute(f"SHOW JOB WHEN COMPLETE {job_id}").rows == done.rows
    with pytest.raises(NotFoundError, match="does not exist"):
        store.execute("SHOW JOBS WHEN COMPLETE (1, 2)")


def test_an_older_job_table_gains_the_new_columns(tmp_path: Path) -> None:
    import apsw

    from strongroom.store.jobs import JobRegistry

    path = tmp_path / "system.db"
    conn = apsw.Connection(str(path))
    conn.execute(
        "CREATE TABLE jobs (job_id INTEGER PRIMARY KEY, job_type TEXT NOT NULL, description TEXT NOT NULL, "
        "status TEXT NOT NULL, created TEXT NOT NULL, finished TEXT, fraction_completed REAL NOT NULL DEFAULT 0, "
        "error TEXT); INSERT INTO jobs VALUES (7, 'BACKUP', 'BACKUP INTO x', 'succeeded', '2026-11-01', "
        "'2026-11-01', 1, NULL)"
    )
    conn.close()
    registry = JobRegistry(path)
    [old] = registry.list(7)
    assert (old.status, old.statement, old.started) == ("succeeded", None, None)
    new = registry.start("RESTORE", "RESTORE FROM x")
    assert registry.list(new)[0].statement == "RESTORE FROM x"
