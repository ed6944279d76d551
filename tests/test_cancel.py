"""Cancellation (issue 12 §2): CANCEL JOB from another process, Ctrl-C and SIGTERM in the CLI, Ctrl-C in the
SQL shell. A canceled BACKUP leaves nothing of its layer in storage (no object, no temp copy, no multipart
upload) and LATEST where it was; a canceled RESTORE leaves no database.

Every job here runs in a real subprocess and is canceled from this one once the registry shows it running
with some progress; the tests poll the registry for that state, never sleep a fixed time. The local
backups and restores run through the public Python API with a progress callback that is slow on
purpose (a slow consumer), so the job is still running when the cancel comes; the S3 ones are slow
enough on their own (moto).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest
from click.testing import CliRunner

pytest.register_assert_rewrite("cloud_servers")

from cloud_servers import BACKUP_BUCKET, S3_SECRET, CloudTarget  # noqa: E402

from strongroom import Encryption, JobCanceledError, NotFoundError, Store, UsageError, open_store  # noqa: E402
from strongroom.cli import main  # noqa: E402

pytest_plugins = ("cloud_servers",)

PASSPHRASE = "cancel-test-passphrase-81f2"
ENC = Encryption(passphrase=PASSPHRASE)
WAIT_S = 120.0
CANCELED_EXIT = 3  # the helper's exit status for a JobCanceledError

# Runs one BACKUP or RESTORE of the store in this subprocess, through the public API. Its progress
# callback sleeps: a slow consumer keeps the job running long enough to be canceled mid-way.
_HELPER = r"""
import sys, time
from strongroom import Encryption, JobCanceledError, open_store
store_path, op, collection, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def slow(done, total, what):
    time.sleep(delay)
store = open_store(store_path)
enc = Encryption(passphrase=sys.argv[5])
try:
    if op == "backup":
        store.backup(collection, databases=["big"], encryption=enc, progress=slow)
    else:
        store.restore(collection, databases=["big"], new_db_name="copy", encryption=enc, progress=slow)
except JobCanceledError as exc:
    print(exc)
    sys.exit(3)
"""


def _env(tmp_path: Path) -> dict[str, str]:
    here = Path(__file__).resolve().parent.parent
    path = os.pathsep.join(p for p in (str(here), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "HOME": str(tmp_path / "home"), "STRONGROOM_PASSPHRASE": PASSPHRASE}


def _fill_big(store: Store, mib: int) -> int:
    """A database of ``mib`` MiB of incompressible rows; returns its row count."""
    store.create_database("big")
    conn = store.connect("big")
    try:
        conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB)")
        with conn:
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO blobs(b) SELECT randomblob(16000) FROM n",
                (mib * 64,),
            )
        return int(conn.execute("SELECT count(*) FROM blobs").fetchall()[0][0])
    finally:
        conn.close()


def _helper(store: Store, op: str, collection: str, delay: float, tmp_path: Path) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", _HELPER, str(store.path), op, collection, str(delay), PASSPHRASE]
    return subprocess.Popen(args, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _job_running_with_progress(store: Store, job_type: str, proc: subprocess.Popen[str] | None = None) -> int:
    """Wait until a ``job_type`` job is running and has reported progress; its id."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for job in store.jobs.list():
            if job.job_type == job_type and job.status == "running" and job.fraction_completed > 0:
                return job.job_id
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job's process ended first ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"no {job_type} job was running with progress within {WAIT_S:.0f} s")


def _ended(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT_S)
    return proc.returncode, out, err


def _local_objects(root: Path) -> set[str]:
    """Every file under a local collection, temp files included."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _s3(cloud: CloudTarget):  # type: ignore[no-untyped-def]  # boto3's client has no static type here
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=cloud.endpoint,
        region_name="us-east-1",
        aws_access_key_id=cloud.params["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_SECRET,
    )


def _s3_state(cloud: CloudTarget, prefix: str) -> tuple[set[str], list[str]]:
    """Every object under ``prefix`` (hidden temp copies included) and every unfinished multipart upload."""
    s3 = _s3(cloud)
    objects: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BACKUP_BUCKET, Prefix=prefix):
        objects.update(o["Key"] for o in page.get("Contents", []))
    uploads = s3.list_multipart_uploads(Bucket=BACKUP_BUCKET, Prefix=prefix).get("Uploads", [])
    return objects, [u["Key"] for u in uploads]


def _assert_canceled(store: Store, job_id: int) -> None:
    job = store.jobs.list(job_id)[0]
    assert (job.status, job.error) == ("canceled", "job canceled by user")
    assert job.finished is not None


def _assert_restores(store: Store, collection: str, rows: int) -> None:
    """The backup LATEST names still restores, whole."""
    store.restore(collection, databases=["big"], new_db_name="again", encryption=ENC)
    conn = store.connect("again")
    try:
        assert conn.execute("SELECT count(*) FROM blobs").fetchall()[0][0] == rows
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ CANCEL JOB


def test_cancel_job_stops_a_local_backup_from_another_process(store: Store, tmp_path: Path) -> None:
    rows = _fill_big(store, 48)
    coll = "nodelocal://1/local"
    store.backup(coll, databases=["big"], encryption=ENC)
    root = store.path / "extern" / "local"
    before = _local_objects(root)
    proc = _helper(store, "backup", coll, 0.05, tmp_path)  # ~1 MiB a tick: a few seconds in all
    job_id = _job_running_with_progress(store, "BACKUP", proc)
    assert store.execute("CANCEL JOB $1", [str(job_id)]).status == "CANCEL JOBS 1"
    # WHEN COMPLETE waits through cancel-requested, until the job has undone its work.
    assert store.execute(f"SHOW JOB WHEN COMPLETE {job_id}").rows[0][5] == "canceled"
    code, out, err = _ended(proc)
    assert (code, out.strip()) == (CANCELED_EXIT, "job canceled by user"), err
    _assert_canceled(store, job_id)
    assert _local_objects(root) == before  # nothing of the canceled layer, not even its lock; LATEST as it was
    assert len(store.show_backups(coll)) == 1
    _assert_restores(store, coll, rows)


def test_cancel_job_stops_an_s3_backup_and_aborts_its_multipart_upload(
    store: Store, tmp_path: Path, moto_s3: CloudTarget
) -> None:
    rows = _fill_big(store, 64)  # two packs' worth: a multipart upload is in flight at any moment
    prefix = f"cancel-{tmp_path.name}"
    coll = moto_s3.uri(prefix, bucket=BACKUP_BUCKET)
    store.backup(coll, databases=["big"], encryption=ENC)
    before, uploads = _s3_state(moto_s3, prefix + "/")
    assert uploads == [] and any("/data/" in o for o in before)
    proc = _helper(store, "backup", coll, 0.0, tmp_path)
    job_id = _job_running_with_progress(store, "BACKUP", proc)
    store.jobs.cancel(job_id)  # the Python API: the same request CANCEL JOB records
    code, out, err = _ended(proc)
    assert code == CANCELED_EXIT, (out, err)
    _assert_canceled(store, job_id)
    after, uploads = _s3_state(moto_s3, prefix + "/")
    assert uploads == []
    assert after == before  # no pack, no temp copy, no lock of the canceled layer; LATEST as it was
    job = store.jobs.list(job_id)[0]
    assert S3_SECRET not in repr(job) and PASSPHRASE not in repr(job)
    _assert_restores(store, coll, rows)


def test_a_canceled_restore_leaves_no_database(store: Store, tmp_path: Path) -> None:
    _fill_big(store, 24)
    coll = "nodelocal://1/r"
    store.backup(coll, databases=["big"], encryption=ENC)
    proc = _helper(store, "restore", coll, 0.01, tmp_path)  # ~64 KiB a tick
    job_id = _job_running_with_progress(store, "RESTORE", proc)
    store.execute(f"CANCEL JOB {job_id}")
    code, out, err = _ended(proc)
    assert code == CANCELED_EXIT, (out, err)
    _assert_canceled(store, job_id)
    again = open_store(store.path)
    assert "copy" not in [r[0] for r in again.execute("SHOW DATABASES").rows]
    assert not list((store.path).rglob("copy*")) and not list(store.path.rglob("*.restoring"))


def test_cancel_job_errors_are_cockroachdbs(store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"^job with ID 12345 does not exist$"):
        store.execute("CANCEL JOB 12345")
    _fill_big(store, 1)
    result = store.backup("nodelocal://1/done", databases=["big"], encryption=ENC)
    with pytest.raises(UsageError, match=r"^job with status succeeded cannot be requested to be canceled$"):
        store.execute("CANCEL JOB $1", [result.job_id])
    assert store.jobs.list(result.job_id)[0].status == "succeeded"
    runner = CliRunner()
    out = runner.invoke(main, ["job", "cancel", "12345", "--store", str(store.path)])
    assert (out.exit_code, out.output.strip()) == (1, "ERROR: job with ID 12345 does not exist")
    out = runner.invoke(main, ["sql", "--store", str(store.path), "-e", f"CANCEL JOB {result.job_id}"])
    assert (out.exit_code, out.output.strip()) == (
        1,
        "ERROR: job with status succeeded cannot be requested to be canceled",
    )
    running = store.jobs.registry.start("RESTORE", "RESTORE FROM LATEST IN 'nodelocal://1/done'")  # another process's
    out = runner.invoke(main, ["job", "cancel", str(running), "--store", str(store.path)])
    assert (out.exit_code, out.output.strip()) == (0, f"job {running}: cancel requested")
    assert store.jobs.list(running)[0].status == "cancel-requested"
    out = runner.invoke(main, ["job", "cancel", "12x", "--store", str(store.path)])
    assert (out.exit_code, out.output.strip()) == (2, "ERROR: not a job ID: '12x'")


def test_canceling_a_job_again_is_no_error(store: Store) -> None:
    """As in CockroachDB: a job already cancel-requested or canceled is left as it is."""
    registry = store.jobs.registry
    job_id = registry.start("BACKUP", "BACKUP INTO 'nodelocal://1/x'")  # a job of another process, still running
    store.jobs.cancel(job_id)
    assert store.jobs.list(job_id)[0].status == "cancel-requested"
    store.jobs.cancel(job_id)
    registry.finish_canceled(job_id)  # what that process does once it has undone its work
    store.execute(f"CANCEL JOB {job_id}")
    _assert_canceled(store, job_id)


def _cancel_at_first_progress(store: Store, seen: list[int]) -> Callable[[int, int, str], None]:
    """A progress callback that cancels its own job (in this process: nothing races)."""

    def progress(done: int, total: int, what: str) -> None:
        if not seen:
            seen.append(next(j.job_id for j in store.jobs.list() if j.status == "running"))
            store.jobs.cancel(seen[0])

    return progress


def test_a_canceled_jobs_row_holds_no_secret(store: Store, moto_s3: CloudTarget, tmp_path: Path) -> None:
    _fill_big(store, 2)
    coll = moto_s3.uri(f"secret-{tmp_path.name}", bucket=BACKUP_BUCKET)
    seen: list[int] = []
    with pytest.raises(JobCanceledError) as exc:
        store.backup(coll, databases=["big"], encryption=ENC, progress=_cancel_at_first_progress(store, seen))
    row = store.execute(f"SHOW JOB {seen[0]}").rows[0]
    assert (row[5], row[12]) == ("canceled", "job canceled by user")
    assert "AWS_SECRET_ACCESS_KEY=redacted" in row[2] and "encryption_passphrase = '*****'" in row[2]
    for text in (repr(row), str(exc.value)):
        assert S3_SECRET not in text and PASSPHRASE not in text


# --------------------------------------------------------------------------------- Ctrl-C, SIGTERM


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_a_cli_backup_cancels_it(
    store: Store, tmp_path: Path, moto_s3: CloudTarget, signum: int, status: int
) -> None:
    _fill_big(store, 64)
    prefix = f"sig-{tmp_path.name}"
    coll = moto_s3.uri(prefix, bucket=BACKUP_BUCKET)
    args = [sys.executable, "-m", "strongroom.cli", "backup", coll, "--store", str(store.path), "--passphrase"]
    proc = subprocess.Popen(args, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = _job_running_with_progress(store, "BACKUP", proc)
    proc.send_signal(signum)
    code, out, err = _ended(proc)
    assert code == status, (out, err)
    assert err.strip() == "ERROR: job canceled by user"
    assert S3_SECRET not in out + err and "Traceback" not in err
    _assert_canceled(store, job_id)
    assert _s3_state(moto_s3, prefix + "/") == (set(), [])  # the first backup of the collection: nothing left


def test_ctrl_c_in_the_sql_shell_cancels_the_statement_and_keeps_the_session(
    store: Store, tmp_path: Path, moto_s3: CloudTarget
) -> None:
    rows = _fill_big(store, 64)
    prefix = f"shell-{tmp_path.name}"
    coll = moto_s3.uri(prefix, bucket=BACKUP_BUCKET)
    env = {**_env(tmp_path), "STRONGROOM_STORE": str(store.path), "TERM": "dumb"}
    shell = pexpect.spawn(sys.executable, ["-m", "strongroom.cli", "sql"], env=env, encoding="utf-8", timeout=60)
    try:
        shell.expect_exact("\\q quits")
        shell.sendline("USE big;")
        shell.expect_exact("big> ")
        shell.sendline(f"BACKUP DATABASE big INTO '{coll}' WITH encryption_passphrase = $1;")
        shell.expect_exact("$1: ")
        shell.sendline(PASSPHRASE)
        job_id = _job_running_with_progress(store, "BACKUP")
        shell.sendintr()  # a real SIGINT, from the terminal's Ctrl-C
        shell.expect_exact("ERROR: job canceled by user")
        shell.expect_exact("big> ")  # the session goes on, its USE too
        _assert_canceled(store, job_id)
        assert _s3_state(moto_s3, prefix + "/") == (set(), [])
        shell.sendline("SELECT count(*) AS n FROM blobs;")
        shell.expect_exact("(1 row)")
        assert f"  {rows}" in shell.before
        shell.expect_exact("big> ")
        shell.sendintr()  # at an empty prompt: a new prompt, as in a shell
        shell.expect_exact("big> ")
        shell.sendeof()  # Ctrl-D ends the shell
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 0
    history = (tmp_path / "home" / ".strongroom" / "sql_history").read_text()
    assert "USE big;" in history and "SELECT count(*) AS n FROM blobs;" in history  # the session's history kept
    assert PASSPHRASE not in history


def test_a_python_caller_sees_job_canceled_error(store: Store) -> None:
    """In-process: a CANCEL JOB made in this process (here from the job's own progress callback, so
    nothing races) stops the job at its next progress point."""
    _fill_big(store, 8)
    seen: list[int] = []
    with pytest.raises(JobCanceledError, match=r"^job canceled by user$"):
        store.backup(
            "nodelocal://1/py", databases=["big"], encryption=ENC, progress=_cancel_at_first_progress(store, seen)
        )
    _assert_canceled(store, seen[0])
    assert not [p for p in (store.path / "extern" / "py").rglob("*") if p.is_file()]


def test_cancel_job_parses_an_id_or_a_placeholder() -> None:
    from strongroom.sql import parse
    from strongroom.sql.ast import CancelJob

    assert parse("CANCEL JOB 42; cancel job $1", ["7"]) == [CancelJob(42), CancelJob(7)]
    with pytest.raises(UsageError, match=r"^placeholder \$1: expected a job ID$"):
        parse("CANCEL JOB $1", ["abc"])
    with pytest.raises(UsageError, match="syntax error"):
        parse("CANCEL JOB")
