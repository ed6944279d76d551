"""The HTTP API checks who you are before it reads what you sent (issue #10 part 6).

A real uvicorn process on loopback for the size and memory cases (a raw socket streams the body, so
the test sees the answer arrive while it is still sending); the in-process server of test_server for
the rest.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server import AUTH, TOKEN, Api, free_port, region_specs, serving, statuses, wait_until

import strongroom
from strongroom import init_store

pytest_plugins = ("kms_servers",)

MiB = 1 << 20


@pytest.fixture
def api(tmp_path: Path, keys: tuple[str, str, str]) -> Iterator[Api]:
    east, west, _ = keys
    store = init_store(tmp_path / "store", regions=("us", "eu"), cmek={"us": east, "eu": west})
    with serving(store.path) as running:
        yield running


# -- unknown fields ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "body", "field"),
    [
        ("PUT", {"region_specs": [{"region": "us", "key_spec": {"type": "LOCAL_KEY_FILE", "uri": "local:///west",
                                                                "evil": True}}]}, "region_specs.0.key_spec.evil"),
        ("PUT", {"region_specs": [{"region": "us", "key_spec": {"type": "LOCAL_KEY_FILE", "uri": "local:///west"},
                                   "force": 1}]}, "region_specs.0.force"),
        ("POST", {**region_specs({"us": "local:///east", "eu": "local:///west"}), "dry_run": False}, "dry_run"),
        ("PATCH", {"action": "REVOKE", "also": "x"}, "also"),
    ],
)  # fmt: skip
def test_unknown_fields_are_400_naming_the_field_and_change_nothing(
    api: Api, method: str, body: object, field: str
) -> None:
    before = api.get()
    r = api.call(method, body=body)
    assert (r.status_code, r.json()) == (
        400,
        {"code": 400, "message": f"invalid request: {field}: unknown field", "details": []},
    )
    assert api.service.operation is None and api.get() == before
    # the same request without the extra field is accepted: responses still validate
    r = api.call("PUT", body=region_specs({"us": "local:///west"}))
    assert (r.status_code, r.json()["status"]) == (200, "ROTATING")
    assert statuses(api.settle()) == {"us": "ENABLED", "eu": "ENABLED"}


# -- methods -------------------------------------------------------------------------------------------------


def test_options_and_missing_methods_are_405_with_every_method_of_the_path(api: Api) -> None:
    paths = {
        api.cmek: "GET, POST, PUT, PATCH",
        api.cmek + "/audit": "GET",
        f"/api/v1/clusters/{api.cluster_id}/encryption-status": "GET",
    }
    for path, allow in paths.items():
        for headers in ({}, AUTH):  # OPTIONS (a preflight) needs no token: the methods are public in /openapi.json
            r = api.client.options(path, headers=headers)
            assert r.status_code == 405 and r.headers["allow"] == allow, (path, headers)
            assert r.json() == {
                "code": 405,
                "message": f"method OPTIONS is not allowed here; allowed: {allow}",
                "details": [],
            }
        for method in ("DELETE", "TRACE", "FROB"):
            assert api.client.request(method, path).status_code == 401  # any other method: who first
            r = api.client.request(method, path, headers=AUTH)
            assert (r.status_code, r.headers["allow"]) == (405, allow), (method, path)
            assert r.json()["code"] == 405
    # OPTIONS on another cluster id shows nothing more than on the real one
    r = api.client.options("/api/v1/clusters/other/cmek")
    assert (r.status_code, r.headers["allow"]) == (405, paths[api.cmek])


# -- authentication before the body ---------------------------------------------------------------------------


def test_an_unauthenticated_request_is_401_even_with_a_body_that_does_not_parse(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = api.client.put(api.cmek, content=b"{not json", headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert r.json()["code"] == 401


def test_a_body_over_1_mib_is_413_and_one_under_is_read(api: Api) -> None:
    big = json.dumps({"action": "REVOKE", "pad": "x" * MiB}).encode()
    for content in (big, iter([big[i : i + 65536] for i in range(0, len(big), 65536)])):  # known length, chunked
        r = api.client.patch(api.cmek, content=content, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.json() == {"code": 413, "message": f"the request body is larger than {MiB} bytes", "details": []}
    small = json.dumps({"action": "REVOKE", "pad": "x" * (MiB - 100)}).encode()
    r = api.client.patch(api.cmek, content=small, headers={**AUTH, "Content-Type": "application/json"})
    assert (r.status_code, r.json()["message"]) == (400, "invalid request: pad: unknown field")
    assert statuses(api.get()) == {"us": "ENABLED", "eu": "ENABLED"}


# -- a real server process: time and memory -------------------------------------------------------------------


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid``, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[int, int, str]]:
    """``create_app`` under uvicorn in its own process: (pid, port, cluster id)."""
    store = init_store(tmp_path / "proc", regions=("us",))
    port = free_port()
    code = (
        "import sys, uvicorn; from strongroom.server import create_app; "
        "uvicorn.run(create_app(sys.argv[1], sys.argv[2]), host='127.0.0.1', port=int(sys.argv[3]), "
        "log_level='warning')"
    )
    root = str(Path(strongroom.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(store.path), TOKEN, str(port)], env=env)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(base + "/openapi.json", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert wait_until(up, 30), proc.poll()
        # warm up (imports, the first request's allocations) before any measurement
        cmek = f"{base}/api/v1/clusters/{store.id}/cmek"
        for _ in range(3):
            assert httpx.get(cmek, headers=AUTH).status_code == 200
        yield proc.pid, port, store.id
    finally:
        proc.terminate()
        proc.wait(30)


def _stream(port: int, head: str, total: int, timeout: float) -> tuple[int, int, float]:
    """Send ``head`` then up to ``total`` body bytes (chunked), stopping as soon as an answer arrives.

    Returns (HTTP status, body bytes sent, seconds until the answer).
    """
    chunk = b"x" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    started = time.monotonic()
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        while b"\r\n" not in answer and time.monotonic() - started < timeout:
            writable = [sock] if sent < total else []
            readable, ready, _ = select.select([sock], writable, [], 1)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            elif ready:
                try:
                    sock.sendall(frame)
                except (BrokenPipeError, ConnectionResetError):
                    writable = []
                    total = sent
                    continue
                sent += len(chunk)
                if sent >= total:
                    sock.sendall(b"0\r\n\r\n")
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split()[1]), sent, elapsed


@pytest.mark.parametrize(
    ("auth", "status"),
    [("", 401), ("Authorization: Bearer wrong\r\n", 401), (f"Authorization: Bearer {TOKEN}\r\n", 413)],
)
def test_a_50_mib_body_is_refused_quickly_without_the_server_holding_it(
    server_process: tuple[int, int, str], auth: str, status: int
) -> None:
    pid, port, cluster = server_process
    before = _memory(pid)
    head = (
        f"PUT /api/v1/clusters/{cluster}/cmek HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    answered, sent, elapsed = _stream(port, head, 50 * MiB, timeout=30)
    after = _memory(pid)
    assert answered == status
    assert sent < 10 * MiB and elapsed < 2, (sent, elapsed)  # answered long before the body was all sent
    assert after["VmHWM"] - before["VmHWM"] < 20 * MiB, (before, after)  # peak, not only the RSS left at the end
    assert after["VmRSS"] - before["VmRSS"] < 20 * MiB, (before, after)


def test_a_50_mib_content_length_is_413_before_any_body_is_sent(server_process: tuple[int, int, str]) -> None:
    _, port, cluster = server_process
    head = (
        f"PUT /api/v1/clusters/{cluster}/cmek HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {50 * MiB}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            assert data, answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
