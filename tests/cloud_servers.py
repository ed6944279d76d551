"""Real local servers for the cloud storage tests: moto (S3 + STS), Azurite (Azure Blob), gcp-storage-emulator (GCS).

A pytest plugin: test modules load it with ``pytest_plugins = ("cloud_servers",)``. Every server listens on
127.0.0.1 on a port picked at runtime, lives for the session, and is stopped at teardown. Each fixture yields a
:class:`CloudTarget` that builds Strongroom URIs for its bucket/container, with a distinctive secret so tests can
check that it never leaks into messages.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

AZURITE = Path(__file__).resolve().parent.parent / ".tools" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented by Microsoft); it is the only key Azurite accepts.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# moto accepts any key pair; a distinctive secret lets tests search messages for it.
S3_KEY_ID = "testing"
S3_SECRET = "S3cr3t-moto-Q7vZ2xK9pL"
START_TIMEOUT = 30.0
# Every server also gets this empty bucket/container for the end-to-end backup tests (their URIs name no path).
BACKUP_BUCKET = "strongroom-backups"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, what: str, alive: Path | subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(alive, subprocess.Popen) and alive.poll() is not None:
            raise RuntimeError(f"{what} exited with status {alive.returncode} before listening on port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


@dataclass(frozen=True)
class CloudTarget:
    """A bucket/container on a running server, and how to write URIs for it."""

    scheme: str
    bucket: str
    endpoint: str
    params: dict[str, str]
    secret: str  # the credential that must never appear in a message
    extra: dict[str, object] = field(default_factory=dict)

    def uri(self, path: str = "", *, bucket: str | None = None, **overrides: str | None) -> str:
        """``<scheme>://<bucket>/<path>?...``; an override of None drops that parameter."""
        params = {**self.params, **overrides}
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items() if v is not None)
        path = path.strip("/")
        return f"{self.scheme}://{bucket or self.bucket}{'/' + path if path else ''}?{query}"


# -- S3: moto ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_s3() -> Iterator[CloudTarget]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_for_port(port, START_TIMEOUT, "moto server")
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
        )
        for bucket in ("strongroom-test", BACKUP_BUCKET):
            s3.create_bucket(Bucket=bucket)
        params = {"AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_ENDPOINT": endpoint}
        yield CloudTarget("s3", "strongroom-test", endpoint, params, S3_SECRET)
    finally:
        server.stop()


# -- Azure: Azurite ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudTarget]:
    from azure.storage.blob import BlobServiceClient

    exe = str(AZURITE) if AZURITE.exists() else shutil.which("azurite-blob")
    if not exe:
        pytest.fail(
            f"Azurite is not installed: expected {AZURITE} (scripts/test.sh installs it with "
            "`npm install --prefix .tools azurite`) or azurite-blob on PATH",
            pytrace=False,
        )
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    log = open(workdir / "azurite.log", "wb")  # noqa: SIM115 (closed at teardown)
    # --disableTelemetry: otherwise Azurite tries to reach applicationinsights.azure.com.
    cmd = [
        exe,
        "--disableTelemetry",
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--loose",
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
    ]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        try:
            wait_for_port(port, START_TIMEOUT, "Azurite", proc)
        except RuntimeError as exc:
            tail = (workdir / "azurite.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"{exc}\n--- azurite.log ---\n{tail}", pytrace=False)
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        service = BlobServiceClient(endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
        for container in ("strongroom-test", BACKUP_BUCKET):
            service.create_container(container)
        service.close()
        params = {"AZURE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_ACCOUNT_KEY": AZURITE_KEY, "AZURE_ENDPOINT": endpoint}
        yield CloudTarget("azure", "strongroom-test", endpoint, params, AZURITE_KEY)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# -- GCS: gcp-storage-emulator + a local OAuth token endpoint -----------------------------------------------------
class _TokenHandler(BaseHTTPRequestHandler):
    """Google's OAuth2 token endpoint, reduced to what a service-account JWT exchange needs.

    gcp-storage-emulator ignores authentication, but the real client still signs a JWT with the key file's private
    key and exchanges it at the key file's ``token_uri``. Pointing ``token_uri`` here keeps that whole code path
    real (no AnonymousCredentials special case in Strongroom). A key whose client_email starts with ``revoked``
    is refused, as Google refuses a deleted key, so tests can provoke an authentication failure.
    """

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        assertion = dict(p.split("=", 1) for p in body.split("&") if "=" in p).get("assertion", "")
        claims_b64 = assertion.split(".")[1] if assertion.count(".") == 2 else ""
        claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=" * (-len(claims_b64) % 4)) or b"{}")
        if str(claims.get("iss", "")).startswith("revoked"):
            status, reply = 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        else:
            status, reply = 200, {"access_token": "local-token", "expires_in": 3600, "token_type": "Bearer"}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def service_account_json(email: str, token_uri: str) -> str:
    """A genuine service-account key file (fresh RSA key), as ``gcloud iam service-accounts keys create`` makes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info = {
        "type": "service_account",
        "project_id": "strongroom-test",
        "private_key_id": "k1",
        "private_key": pem.decode(),
        "client_email": email,
        "client_id": "1",
        "token_uri": token_uri,
    }
    return json.dumps(info)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[CloudTarget]:
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="strongroom-test")
    server.start()
    token_server = ThreadingHTTPServer(("127.0.0.1", free_port()), _TokenHandler)
    thread = threading.Thread(target=token_server.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for_port(port, START_TIMEOUT, "gcp-storage-emulator")
        endpoint = f"http://127.0.0.1:{port}"
        admin = storage.Client(
            project="strongroom-test", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        )
        admin.create_bucket(BACKUP_BUCKET)
        admin.close()
        token_uri = f"http://127.0.0.1:{token_server.server_address[1]}/token"
        key_json = service_account_json("backup@strongroom-test.iam.gserviceaccount.com", token_uri)
        encoded = base64.b64encode(key_json.encode()).decode()
        revoked = base64.b64encode(
            service_account_json("revoked@strongroom-test.iam.gserviceaccount.com", token_uri).encode()
        ).decode()
        params = {"AUTH": "specified", "CREDENTIALS": encoded, "GCS_ENDPOINT": endpoint}
        # The secret to look for is the private key inside the key file (and the encoded key file itself).
        private_key = json.loads(key_json)["private_key"]
        secret_line = private_key.splitlines()[1]
        yield CloudTarget(
            "gs", "strongroom-test", endpoint, params, secret_line, extra={"encoded": encoded, "revoked": revoked}
        )
    finally:
        token_server.shutdown()
        token_server.server_close()
        server.stop()
