"""A real PostgreSQL server for the tests: Debian's postgresql-15, started once per session.

initdb refuses to run as root (CI runs as root), so the cluster belongs to the ``postgres`` OS user
and lives in a temp dir that user owns. The server listens on loopback only, on a port chosen at
runtime (and on a private Unix socket dir), and readiness is polled with ``pg_isready``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "pg-secret-Zq81xw"  # the superuser's password: tests check it never shows in any output


@dataclass
class PgServer:
    host: str
    port: int
    datadir: Path
    user: str = "postgres"
    password: str = PASSWORD

    def dsn(self, dbname: str = "postgres", password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{self.user}:{pw}@{self.host}:{self.port}/{dbname}"

    def ready(self) -> bool:
        cmd = [str(BIN / "pg_isready"), "-h", self.host, "-p", str(self.port), "-q"]
        return subprocess.run(cmd, check=False).returncode == 0


def _as_postgres(args: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, check=True, capture_output=True, **kw)  # type: ignore[call-overload,no-any-return]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: object, timeout: float = 30.0, what: str = "a condition") -> None:
    """Poll ``predicate`` (a callable) until it is true: tests wait for state, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if not (BIN / "initdb").exists():
        pytest.skip("postgresql-15 is not installed (scripts/test.sh installs it)")
    root = Path(tempfile.mkdtemp(prefix="strongroom-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    datadir, sockdir = root / "data", root / "sock"
    pwfile = root / "pwfile"
    _as_postgres(["mkdir", str(sockdir)])
    _as_postgres(["sh", "-c", f"umask 077 && printf '%s' '{PASSWORD}' > {pwfile}"])
    _as_postgres(
        [str(BIN / "initdb"), "-D", str(datadir), "-U", "postgres", "--pwfile", str(pwfile), "-A", "scram-sha-256"]
    )
    port = _free_port()
    server = PgServer("127.0.0.1", port, datadir)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockdir} -c fsync=off"
    _as_postgres([str(BIN / "pg_ctl"), "-D", str(datadir), "-o", opts, "-l", str(root / "log"), "-w", "start"])
    try:
        wait_until(server.ready, 60, "PostgreSQL to accept connections")
        yield server
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--"] * (os.geteuid() == 0)
            + [str(BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
