"""``GET /metrics`` in Prometheus' format (parsed with prometheus-client's own parser), and the CLI's
log lines: one per finished job when stderr is not a terminal, JSON with --log-format json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from conftest import fill_bank
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from strongroom import Encryption, init_store
from strongroom.errors import NotFoundError
from strongroom.server import create_app
from strongroom.store import Store

TOKEN = "metrics-test-token-0123456789abcdef"
PASS = "correct horse battery staple"


@pytest.fixture
def bank(tmp_path: Path) -> Store:
    store = init_store(tmp_path / "store", regions=("us-east1", "eu-west1"))
    fill_bank(store, accounts=300)
    return store


@pytest.fixture
def client(bank: Store) -> Iterator[TestClient]:
    with TestClient(create_app(bank.path, TOKEN)) as c:
        yield c


def scrape(client: TestClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_metrics_need_the_token_and_parse(client: TestClient, bank: Store, tmp_path: Path) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    coll = str(tmp_path / "coll")
    bank.backup(coll, encryption=Encryption(passphrase=PASS))
    bank.backup(coll, encryption=Encryption(passphrase=PASS), incremental="LATEST")
    with pytest.raises(NotFoundError):
        bank.backup(coll, databases=["nope"], encryption=Encryption(passphrase=PASS))
    with bank.session() as session:
        session.execute(
            f"CREATE SCHEDULE m FOR BACKUP INTO '{tmp_path}/sched' WITH encryption_passphrase = $1 "
            "RECURRING '@weekly' FULL BACKUP ALWAYS",
            [PASS],
        )
    [sid] = [row.id for row in bank.schedules.show()]
    bank.schedules.run_now(sid)
    metrics = scrape(client)
    jobs = {(labels["type"], labels["status"]): value for labels, value in metrics["strongroom_jobs"]}
    assert jobs[("BACKUP", "succeeded")] == 3
    [(labels, stored)] = [s for s in metrics["strongroom_last_backup_bytes"] if s[0]["collection"] == coll]
    full, incremental = [
        j for j in bank.jobs.list() if j.job_type == "BACKUP" and j.collection == coll and j.status == "succeeded"
    ]
    assert stored == incremental.bytes == 0  # the newest: an incremental of nothing changed
    assert full.bytes is not None and full.bytes > 10_000
    assert [s[0]["collection"] for s in metrics["strongroom_last_backup_duration_seconds"]] == sorted(
        [coll, f"{tmp_path}/sched"]
    )
    [(labels, age)] = metrics["strongroom_schedule_last_success_age_seconds"]
    assert labels == {"schedule_id": str(sid), "label": "m", "backup_type": "full"} and 0 <= age < 60
    calls = {(s[0]["region"], s[0]["operation"], s[0]["result"]): s[1] for s in metrics["strongroom_kms_calls_total"]}
    assert {r for r, _op, _res in calls} == {"us-east1", "eu-west1"} and all(v >= 1 for v in calls.values())
    ages = {s[0]["region"]: s[1] for s in metrics["strongroom_data_key_age_seconds"]}
    assert set(ages) == {"us-east1", "eu-west1"} and all(0 <= a < 3600 for a in ages.values())
    assert {(s[0]["region"], s[0]["status"]) for s in metrics["strongroom_cmek_status"]} == {
        ("us-east1", "DISABLED"),
        ("eu-west1", "DISABLED"),
    }
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert PASS not in text and TOKEN not in text


def _cli(store: Path, *args: str, log_format: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STRONGROOM_PASSPHRASE": PASS}
    env.pop("STRONGROOM_LOG_FORMAT", None)
    if log_format:
        env["STRONGROOM_LOG_FORMAT"] = log_format
    return subprocess.run(
        [sys.executable, "-m", "strongroom.cli", *args, "--store", str(store)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_one_log_line_per_job_when_stderr_is_not_a_terminal(bank: Store, tmp_path: Path) -> None:
    coll = str(tmp_path / "logged")
    done = _cli(bank.path, "backup", coll, "--passphrase", log_format="json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    [line] = [entry for entry in lines if entry["logger"] == "strongroom.jobs"]
    assert (line["job_type"], line["status"], line["level"]) == ("BACKUP", "succeeded", "INFO")
    assert line["job_id"] == str(bank.jobs.list()[-1].job_id) and line["bytes"] > 0
    assert coll in line["description"] and PASS not in done.stderr
    failed = _cli(bank.path, "backup", coll, "--database", "nope", "--passphrase", log_format=None)
    assert failed.returncode == 1
    [text] = [entry for entry in failed.stderr.splitlines() if "strongroom.jobs" in entry]
    assert "WARNING strongroom.jobs: job" in text and 'failed: database "nope" does not exist' in text
    quiet = _cli(bank.path, "-q", "backup", coll, "--incremental", "--passphrase", log_format="json")
    assert quiet.returncode == 0 and "strongroom.jobs" not in quiet.stderr


def test_on_a_terminal_job_lines_only_with_verbose(bank: Store, tmp_path: Path) -> None:
    env = {**os.environ, "STRONGROOM_PASSPHRASE": PASS}
    env.pop("STRONGROOM_LOG_FORMAT", None)
    outputs = []
    for verbose in ([], ["-v"]):
        child = pexpect.spawn(
            sys.executable,
            [
                "-m",
                "strongroom.cli",
                *verbose,
                "backup",
                str(tmp_path / "tty"),
                "--passphrase",
                "--store",
                str(bank.path),
            ],
            env=env,
            encoding="utf-8",
            timeout=120,
        )
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        outputs.append(child.before or "")
    assert "strongroom.jobs" not in outputs[0]
    assert "INFO strongroom.jobs: job" in outputs[1]
