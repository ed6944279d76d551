"""Managed backups over HTTP in CockroachDB Cloud's shapes: /backups, /backups-config, /restores; every
request and response validated against the official specification."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import fill_bank, table_rows
from fastapi.testclient import TestClient
from official_api import checking_hook

from strongroom import init_store, open_store
from strongroom.server import create_app
from strongroom.store import Store

TOKEN = "backups-api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def bank(tmp_path: Path) -> Store:
    store = init_store(tmp_path / "store", regions=("us-east1", "us-west1"))
    fill_bank(store, accounts=300)
    store.create_database("ledger", region="us-west1")
    conn = store.connect("ledger")
    conn.execute("CREATE TABLE entries(id INTEGER PRIMARY KEY, amount INT); CREATE INDEX e_amount ON entries(amount)")
    conn.execute("INSERT INTO entries(amount) VALUES (10), (20), (30)")
    conn.close()
    return store


def validated(client: TestClient) -> TestClient:
    """Every exchange checked against CockroachDB Cloud's published spec and our served document."""
    client.event_hooks["response"].append(checking_hook(lambda: client.get("/openapi.json").json()))
    return client


@pytest.fixture
def api(bank: Store) -> Iterator[tuple[TestClient, str]]:
    with TestClient(create_app(bank.path, TOKEN), base_url="http://127.0.0.1:8787", headers=AUTH) as client:
        yield validated(client), f"/api/v1/clusters/{bank.id}"


def wait_for(client: httpx.Client, url: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        body = client.get(url).json()
        if body["status"] == status:
            return body
        assert body["status"] == "PENDING" and time.monotonic() < deadline, body
        time.sleep(0.05)


def test_backups_list_with_time_range_and_pagination(api: tuple[TestClient, str], bank: Store) -> None:
    client, base = api
    assert client.get(base + "/backups").json() == {"backups": [], "pagination": {}}
    bank.managed_backup(full=True)
    bank.managed_backup(full=False)
    listed = client.get(base + "/backups").json()["backups"]
    assert len(listed) == 4  # two regions, a full and an incremental each
    times = [datetime.fromisoformat(b["as_of_time"].replace("Z", "+00:00")) for b in listed]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert len({b["id"] for b in listed}) == 4
    assert client.get(base + "/backups").json()["backups"] == listed  # ids are stable
    # Keyset pages of one, both ways.
    seen, page = [], None
    while True:
        params = {"pagination.limit": "1", **({"pagination.page": page} if page else {})}
        body = client.get(base + "/backups", params=params).json()
        seen += body["backups"]
        page = body["pagination"].get("next_page")
        if not page:
            break
    assert seen == listed
    desc = client.get(base + "/backups", params={"pagination.sort_order": "DESC"}).json()["backups"]
    assert desc == list(reversed(listed))
    # start_time inclusive, end_time exclusive.
    start = listed[2]["as_of_time"]
    assert client.get(base + "/backups", params={"start_time": start}).json()["backups"] == listed[2:]
    assert client.get(base + "/backups", params={"end_time": start}).json()["backups"] == listed[:2]
    bad = client.get(base + "/backups", params={"start_time": "yesterday"})
    assert bad.status_code == 400 and bad.json()["message"] == "start_time: 'yesterday' is not an RFC 3339 time"
    bad = client.get(base + "/backups", params={"pagination.page": "%%%"})
    assert bad.status_code == 400


def test_backups_config_get_and_patch(api: tuple[TestClient, str], bank: Store) -> None:
    client, base = api
    assert client.get(base + "/backups-config").json() == {
        "enabled": True,
        "frequency_minutes": 60,
        "retention_days": 30,
    }
    r = client.patch(base + "/backups-config", json={"frequency_minutes": 15, "retention_days": 7})
    assert r.json() == {"enabled": True, "frequency_minutes": 15, "retention_days": 7}
    assert open_store(bank.path, unlock=False).managed_backup_schedule.interval == timedelta(minutes=15)
    r = client.patch(base + "/backups-config", json={"frequency_minutes": 7})
    assert r.status_code == 400
    assert r.json()["message"] == "frequency_minutes 7: valid values are 5, 10, 15, 30, 60, 240, 1440"
    r = client.patch(base + "/backups-config", json={"retention_days": 2})
    assert r.status_code == 400 and "can only be set once" in r.json()["message"]
    r = client.patch(base + "/backups-config", json={"enabled": False})
    assert r.json()["enabled"] is False
    r = client.patch(base + "/backups-config", json={"colour": "blue"})
    assert r.status_code == 400 and "colour: unknown field" in r.json()["message"]


def test_restore_a_database_under_a_new_name_as_a_job(api: tuple[TestClient, str], bank: Store) -> None:
    client, base = api
    bank.managed_backup(full=True)
    r = client.post(
        base + "/restores",
        json={"type": "DATABASE", "objects": [{"database": "bank"}], "restore_opts": {"new_db_name": "bank_copy"}},
    )
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["type"] == "DATABASE" and created["status"] in ("PENDING", "SUCCESS")
    done = wait_for(client, f"{base}/restores/{created['id']}", "SUCCESS")
    assert done["completion_percent"] == 1 and done["completed_at"]
    assert done["objects"] == [{"database": "bank"}] and done["restore_opts"] == {"new_db_name": "bank_copy"}
    latest = max(client.get(base + "/backups").json()["backups"], key=lambda b: b["as_of_time"])
    east = [b for b in bank.managed_backups() if b.region == "us-east1"]
    assert done["backup_id"] in {b["id"] for b in client.get(base + "/backups").json()["backups"]}
    assert latest["as_of_time"] >= done["backup_end_time"]
    assert len(east) == 1
    job = [j for j in bank.jobs.list() if str(j.job_id) == done["crdb_job_id"]]
    assert job and job[0].job_type == "RESTORE" and job[0].status == "succeeded"  # a job like any other
    assert table_rows(bank, "bank_copy", "accounts") == table_rows(bank, "bank", "accounts")
    assert [r["id"] for r in client.get(base + "/restores").json()["restores"]] == [created["id"]]


def test_restore_a_table_from_a_named_backup_into_another_database(api: tuple[TestClient, str], bank: Store) -> None:
    client, base = api
    [_east, west] = bank.managed_backup(full=True)
    conn = bank.connect("ledger")
    conn.execute("INSERT INTO entries(amount) VALUES (40)")  # after the backup: not restored
    conn.close()
    bank.managed_backup(full=False)
    listed = client.get(base + "/backups").json()["backups"]
    backups = {b.path: b for b in bank.managed_backups()}
    from strongroom.server.backups_api import backup_id

    first_west = backup_id(bank.id, backups[west.path])
    assert first_west in {b["id"] for b in listed}
    bank.create_database("audit", region="us-west1")
    r = client.post(
        base + "/restores",
        json={
            "type": "TABLE",
            "backup_id": first_west,
            "objects": [{"database": "ledger", "schema": "public", "table": "entries"}],
            "restore_opts": {"into_db": "audit", "skip_missing_foreign_keys": True},
        },
    )
    assert r.status_code == 200, r.text
    wait_for(client, f"{base}/restores/{r.json()['id']}", "SUCCESS")
    assert table_rows(bank, "audit", "entries") == [(1, 10), (2, 20), (3, 30)]


def test_restore_refusals_and_a_failed_job(api: tuple[TestClient, str], bank: Store) -> None:
    client, base = api
    r = client.post(base + "/restores", json={"type": "CLUSTER"})
    assert (r.status_code, r.json()["message"]) == (404, "this cluster has no restorable backup yet")
    bank.managed_backup(full=True)
    for body, message in (
        ({"type": "DATABASE"}, "objects is required for a DATABASE restore"),
        ({"type": "CLUSTER", "source_cluster_id": "other"}, 'source_cluster_id "other": managed backups restore'),
        ({"type": "TABLE", "objects": [{"database": "bank"}]}, "every object of a TABLE restore names a table"),
        ({"type": "DATABASE", "backup_id": "nope", "objects": [{"database": "bank"}]}, 'backup "nope" not found'),
        ({"type": "SOMETHING"}, "invalid request: type: Input should be"),
    ):
        r = client.post(base + "/restores", json=body)
        assert r.status_code in (400, 404) and r.json()["message"].startswith(message), (body, r.json())
    # The database exists: the job runs and fails, and the restore says why.
    r = client.post(base + "/restores", json={"type": "DATABASE", "objects": [{"database": "bank"}]})
    failed = wait_for(client, f"{base}/restores/{r.json()['id']}", "FAILED")
    assert failed["client_error_message"] == 'database "bank" already exists'


def test_restores_survive_a_restart_of_the_server(bank: Store) -> None:
    bank.managed_backup(full=True)
    bank.drop_database("ledger")
    with TestClient(create_app(bank.path, TOKEN), headers=AUTH) as first:
        base = f"/api/v1/clusters/{bank.id}"
        created = (
            validated(first)
            .post(base + "/restores", json={"type": "DATABASE", "objects": [{"database": "ledger"}]})
            .json()
        )
        wait_for(first, f"{base}/restores/{created['id']}", "SUCCESS")
    with TestClient(create_app(bank.path, TOKEN), headers=AUTH) as second:
        listed = (
            validated(second)
            .get(base + "/restores", params={"start_time": (datetime.now(UTC) - timedelta(hours=1)).isoformat()})
            .json()
        )
    assert [(r["id"], r["status"]) for r in listed["restores"]] == [(created["id"], "SUCCESS")]
    assert len(table_rows(open_store(bank.path), "ledger", "entries")) == 3
