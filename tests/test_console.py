"""The web console of ``strongroom serve``: login, session cookie, CSRF, pages, actions, and a real
browser (Debian's chromium, driven by Playwright) going through an operator's day."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import fill_bank, table_rows
from fastapi.testclient import TestClient

from strongroom import init_store, open_store
from strongroom.kms import create_key
from strongroom.server import create_app
from strongroom.store import Store

TOKEN = "console-test-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def two_regions(tmp_path: Path) -> Store:
    create_key("east")
    create_key("west")
    store = init_store(tmp_path / "store", regions=("us-east1", "us-west1"))
    store.enable_cmek({"us-east1": "local:///east", "us-west1": "local:///west"})
    fill_bank(store, accounts=200)
    store.create_database("ledger", region="us-west1")
    conn = store.connect("ledger")
    conn.execute("CREATE TABLE entries(id INTEGER PRIMARY KEY, amount INT)")
    conn.execute("INSERT INTO entries(amount) VALUES (1), (2), (3)")
    conn.close()
    return store


@pytest.fixture
def client(two_regions: Store) -> Iterator[TestClient]:
    with TestClient(create_app(two_regions.path, TOKEN), base_url="http://127.0.0.1:8787") as c:
        yield c


def login(client: TestClient) -> str:
    r = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    page = client.get("/")
    m = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert m
    return m.group(1)


def test_login_sets_a_strict_http_only_session_cookie(client: TestClient) -> None:
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    bad = client.post("/login", data={"token": "wrong"})
    assert bad.status_code == 401 and "That is not the API token." in bad.text
    r = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("strongroom_session=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie
    page = client.get("/")
    assert page.status_code == 200 and "Region us-east1" in page.text and "Region us-west1" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-store"


def test_an_action_without_a_session_is_refused_before_its_body_is_read(two_regions: Store) -> None:
    read = []

    def body() -> Iterator[bytes]:
        read.append(True)
        yield b"csrf=x"

    with TestClient(create_app(two_regions.path, TOKEN), base_url="http://127.0.0.1:8787") as c:
        r = c.post(
            "/actions/managed-backup", content=body(), headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
    assert r.status_code == 401 and r.json()["message"] == "not logged in"
    assert read == []  # the guard answered from the headers alone


def test_csrf_and_origin_are_checked_on_every_action(client: TestClient, two_regions: Store) -> None:
    csrf = login(client)
    for data, headers, status in (
        ({}, {}, 403),
        ({"csrf": "guess"}, {}, 403),
        ({"csrf": csrf}, {"Origin": "https://evil.example"}, 403),
    ):
        r = client.post("/actions/managed-backup", data=data, headers=headers, follow_redirects=False)
        assert r.status_code == status, r.text
    assert two_regions.managed_backups() == []  # none of them did anything
    r = client.post("/actions/managed-backup", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/backups?started=managed-backup"
    r = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303  # the session is gone


def test_audit_filters(client: TestClient, two_regions: Store) -> None:
    login(client)
    page = client.get("/audit", params={"region": "us-west1"})
    rows = re.findall(r"<tr><td>[^<]+</td><td>[^<]+</td><td>([^<]+)</td>", page.text)
    assert rows and set(rows) == {"us-west1"}
    everything = client.get("/audit").text
    assert "us-east1" in everything and "us-west1" in everything


def test_no_docs_page_that_needs_a_cdn(client: TestClient) -> None:
    assert client.get("/docs").status_code in (303, 404)
    assert client.get("/openapi.json").status_code == 200


# --------------------------------------------------------------------------------------- a browser


def _serve(store: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "strongroom.cli", "serve", "--store", str(store), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "STRONGROOM_API_TOKEN": TOKEN},
    )
    return proc, f"http://127.0.0.1:{port}"


def test_an_operators_day_in_a_real_browser(two_regions: Store, tmp_path: Path) -> None:
    """Log in, see both regions, take a managed backup, see it appear, restore it under a new name,
    see the job succeed; no token or key material anywhere in the pages."""
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: ./scripts/test.sh installs it"
    path = two_regions.path
    two_regions.close()
    proc, base = _serve(path, tmp_path)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            deadline_ms = 60_000

            def up() -> bool:
                try:
                    return httpx.get(base + "/console/health", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            for _ in range(400):
                if up():
                    break
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                page.wait_for_timeout(50)
            page.goto(base + "/")
            expect(page).to_have_url(base + "/login")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            expect(page.locator("section.region")).to_have_count(2)
            expect(page.locator("section.region h2").first).to_contain_text("us-east1")
            expect(page.locator("section.region h2").nth(1)).to_contain_text("ENABLED")

            page.click("text=Backups")
            page.click("text=Take a managed backup now")
            # Live: the page's own refresh shows the backups as they land, one per region.
            expect(page.locator("#managed tbody tr[data-path]")).to_have_count(2, timeout=deadline_ms)
            expect(page.locator("#jobs .job-status").first).to_have_text("succeeded", timeout=deadline_ms)

            west = page.locator("#managed tbody tr[data-path]").filter(has_text="us-west1")
            west.locator("select[name=database]").select_option("ledger")
            west.locator("input[name=new_db_name]").fill("ledger_yesterday")
            west.locator("button", has_text="Restore").click()
            restore_job = page.locator("#jobs tbody tr").filter(has_text="RESTORE")
            expect(restore_job.locator(".job-status")).to_have_text("succeeded", timeout=deadline_ms)

            texts = [page.content()]
            for where in ("/", "/audit"):
                page.goto(base + where)
                texts.append(page.content())
            cookies = page.context.cookies()
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert [c["httpOnly"] for c in cookies] == [True] and cookies[0]["sameSite"] == "Strict"
    keyring = Path(os.environ["STRONGROOM_KEYRING"])
    secrets = [TOKEN, *(f.read_bytes().hex() for f in keyring.glob("*.key"))]
    for text in [*texts, out]:
        assert not any(s in text for s in secrets)
    restored = open_store(path)
    assert table_rows(restored, "ledger_yesterday", "entries") == table_rows(restored, "ledger", "entries")


def test_run_a_schedule_now_and_rotate_data_keys(client: TestClient, two_regions: Store) -> None:
    import time

    with two_regions.session() as session:
        [result] = session.execute(
            "CREATE SCHEDULE weekly FOR BACKUP DATABASE bank INTO 'nodelocal://1/weekly' "
            "WITH kms = 'local:///east' RECURRING '@weekly' FULL BACKUP ALWAYS"
        )
    schedule_id = result.rows[0][0]
    before = {st.region: st.active_data_key_id for st in two_regions.encryption_status()}
    csrf = login(client)
    r = client.post(
        "/actions/run-schedule", data={"csrf": csrf, "schedule_id": str(schedule_id)}, follow_redirects=False
    )
    assert r.status_code == 303
    r = client.post("/actions/run-schedule", data={"csrf": csrf, "schedule_id": "12"}, follow_redirects=False)
    assert (r.status_code, r.text) == (400, "schedule 12 does not exist")
    deadline = time.monotonic() + 60
    while not str(open_store(two_regions.path).schedules.get(schedule_id).state).startswith("succeeded"):
        assert time.monotonic() < deadline, open_store(two_regions.path).schedules.get(schedule_id).state
        time.sleep(0.05)
    assert client.post("/actions/rotate-data-keys", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    while True:
        after = {st.region: st.active_data_key_id for st in open_store(two_regions.path).encryption_status()}
        if all(after[r] != before[r] for r in before):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    page = client.get("/backups")
    assert "weekly" in page.text and "succeeded at" in page.text
