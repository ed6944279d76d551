"""The README runs as written (issue #9 item 7).

Every fenced block of README.md is either run here or explicitly marked ``<!-- not run: reason -->``
on the line before it. The blocks run in README order in one folder (tmp_path as HOME and cwd,
keyring and store isolated), as a new user would type them: shell blocks with ``bash -euo
pipefail``, Python snippets with the interpreter, the ``strongroom sql`` transcript through
``strongroom sql -e`` (its ``$1`` from ``--param-env``), and a ``sql`` block marked
``<!-- readme-test: strongroom sql --store DIR [ARGS] -->`` through that, after the ``strongroom init``
its paragraph names.

Cloud lines run against the test servers: the README writes CockroachDB's placeholders (``aws:///...``,
``s3://main?...&...``), and :func:`cloud_substitutions` maps each of those exact strings to a URI of a
server the test started (the AWS and GCP KMS protocol servers, moto's S3); nothing else is changed.

The quick start is special: ``pip install . && strongroom demo`` runs only ``strongroom demo`` (no
pip install), and ``./scripts/test.sh`` is not run (that would recurse into the suite): the test
asserts it exists and is what CI (.ci/run) calls.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

pytest.register_assert_rewrite("cloud_servers", "kms_servers")

from cloud_servers import CloudTarget  # noqa: E402
from kms_servers import AwsKmsServer, GcpKmsServer  # noqa: E402
from pg_server import PASSWORD as PG_PASSWORD  # noqa: E402
from pg_server import PgServer, pg_server  # noqa: E402

pytest_plugins = ("cloud_servers", "kms_servers")
__all__ = ["pg_server"]  # the session fixture, imported so pytest finds it

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN = {"bash", "python", "console", "sql"}


def blocks() -> list[tuple[str, str, str, str | None, int, str]]:
    """(section, lang, body, mark, line, paragraph) for every fenced block; mark is the HTML comment
    right before it, paragraph the prose before that."""
    out, section, lines, i = [], "", README.read_text().splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^##+ ", line):
            section = line.lstrip("#").strip()
        if line.startswith("```"):
            lang, start = line[3:].strip(), i + 1
            before = [j for j in range(i - 1, -1, -1) if lines[j].strip()]
            prev = lines[before[0]] if before else ""
            mark = prev.strip() if prev.strip().startswith("<!--") else None
            paragraph = lines[before[1]] if mark and len(before) > 1 else prev
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            out.append((section, lang, "\n".join(lines[start:i]), mark, start, paragraph))
        i += 1
    return out


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    e.update(
        HOME=str(tmp_path),
        STRONGROOM_KEYRING=str(tmp_path / "keyring"),
        PYTHONPATH=str(ROOT),
        STRONGROOM_PASSPHRASE="correct horse battery staple",
        PGPASSWORD=PG_PASSWORD,  # the README's way: the server's password in libpq's environment
    )
    return e


def sh(body: str, cwd: Path, env: dict[str, str], where: str) -> str:
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"README {where} failed:\n{body}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return r.stdout


def test_every_block_is_run_or_marked() -> None:
    for section, lang, _body, mark, line, _paragraph in blocks():
        if (mark or "").startswith("<!-- not run:"):
            assert len(mark or "") > len("<!-- not run:  -->"), f"README line {line}: give a reason"
        elif lang == "text":
            continue  # a diagram or a sample: nothing to run, said by its tag
        else:
            assert lang in RUN, f"README line {line} ({section}): ```{lang} is neither run nor marked"
            if lang == "sql":
                assert (mark or "").startswith("<!-- readme-test: strongroom sql"), f"README line {line}: say where"


def test_quick_start(tmp_path: Path, env: dict[str, str]) -> None:
    [(_, _lang, body, _, line, _p)] = [b for b in blocks() if b[0] == "Quick start"]
    cmds = [c.split("#")[0].strip() for c in body.splitlines() if c.strip()]
    assert cmds == ["pip install . && strongroom demo", "./scripts/test.sh"], "the quick start is two commands"
    sh("strongroom demo --dir ./demo", tmp_path, env, f"line {line}")
    assert os.access(ROOT / "scripts/test.sh", os.X_OK)
    assert "./scripts/test.sh" in (ROOT / ".ci/run").read_text()


def _transcript(body: str) -> tuple[list[str], list[str]]:
    """Statements of a ``strongroom sql`` transcript, and the header lines of the output it shows."""
    stmts, headers, lines = [], [], body.splitlines()
    assert lines[0] == "$ strongroom sql"
    for i, line in enumerate(lines[1:], 1):
        m = re.match(r"^\w*> (.*)$", line)
        if m:
            stmts.append(re.sub(r"\s*--.*$", "", m.group(1)))
        elif line.strip().startswith("->"):
            stmts[-1] += " " + line.strip()[2:].strip()
        elif set(line.strip()) <= set("-+") and line.strip():
            headers.append(lines[i - 1])
    return stmts, headers


README_DSN = "postgresql://app@db.internal:5432/postgres"


@pytest.fixture
def readme_shop(pg_server: PgServer) -> Iterator[PgServer]:
    """The README's PostgreSQL server: a database ``shop`` (orders, customers) as a user would have."""
    names = ("shop", "shop_audit", "shop_yesterday", "shop_cli")

    def drop() -> None:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            for name in names:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())

    drop()
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(b"CREATE DATABASE shop")
    with psycopg.connect(pg_server.dsn("shop"), autocommit=True) as conn:
        conn.execute(
            b"CREATE TABLE customers (id int PRIMARY KEY, name text);"
            b"CREATE TABLE orders (id serial PRIMARY KEY, customer int, total numeric(10,2));"
            b"INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 50) g;"
            b"INSERT INTO orders (customer, total) SELECT 1 + g % 50, g FROM generate_series(1, 500) g"
        )
    yield pg_server
    drop()


@pytest.fixture
def cloud_substitutions(
    aws_kms: AwsKmsServer, gcp_kms: GcpKmsServer, moto_s3: CloudTarget, readme_shop: PgServer
) -> Iterator[dict[str, str]]:
    """The README's placeholders, each to a URI of a server this test runs (exact strings only)."""
    first, second = aws_kms.create_key("us-east-1"), aws_kms.create_key("us-east-1")
    west = gcp_kms.create_key(location="us-west1")
    yield {
        README_DSN: f"postgresql://{readme_shop.user}@{readme_shop.host}:{readme_shop.port}/postgres",
        "s3://backups/pg?...": moto_s3.uri("readme/pg"),
        "aws:///arn:aws:kms:us-east-1:111122223333:key/...?AUTH=implicit&REGION=us-east-1": aws_kms.uri(first.arn),
        "gs:///projects/p/locations/us-west1/keyRings/r/cryptoKeys/k?AUTH=implicit": gcp_kms.uri(west),
        "aws:///new-key...": aws_kms.uri(second.key_id),
        "aws:///new...": aws_kms.uri(second.key_id),
        "aws:///...": aws_kms.uri(first.key_id),
        "gs:///...": gcp_kms.uri(west),
        "s3://main?COCKROACH_LOCALITY=default&...": moto_s3.uri("readme/main", COCKROACH_LOCALITY="default"),
        "s3://west?COCKROACH_LOCALITY=region%3Dus-west1&...": moto_s3.uri(
            "readme/west", COCKROACH_LOCALITY="region=us-west1"
        ),
    }


def _substitute(body: str, table: dict[str, str]) -> str:
    for placeholder in sorted(table, key=len, reverse=True):
        body = body.replace(placeholder, table[placeholder])
    return body


def _sql(args: list[str], cwd: Path, env: dict[str, str], where: str) -> str:
    r = subprocess.run(["strongroom", "sql", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"README {where}: {r.stdout}\n{r.stderr}"
    return r.stdout


def test_every_block_runs_in_readme_order(
    tmp_path: Path, env: dict[str, str], cloud_substitutions: dict[str, str]
) -> None:
    ran = 0
    for section, lang, raw, mark, line, paragraph in blocks():
        if section == "Quick start" or lang == "text" or (mark or "").startswith("<!-- not run:"):
            continue
        body, where = _substitute(raw, cloud_substitutions), f"line {line} ({section})"
        if lang == "bash":
            sh(body, tmp_path, env, where)
        elif lang == "console":
            stmts, headers = _transcript(body)
            out = _sql(
                [a for s in stmts for a in ("-e", s)] + ["--param-env", "PW"],
                tmp_path,
                {**env, "PW": "another passphrase"},
                where,
            )
            shown = [[c.strip() for c in row.split("|")] for row in out.splitlines()]
            for h in headers:  # the shown result's shape: its column headers come back
                assert [c.strip() for c in h.split("|")] in shown, f"README {where}: {h!r} not in {out}"
        elif lang == "python":
            r = subprocess.run(
                [sys.executable, "-c", body], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert r.returncode == 0, f"README {where}: {r.stderr}"
        elif lang == "sql":
            store = re.fullmatch(r"<!-- readme-test: strongroom sql (--store \S+.*) -->", mark or "")
            assert store, f"README {where}: a sql block says where it runs"
            setup = re.search(r"`(strongroom init [^`]+)`", paragraph)
            if setup:
                sh(setup.group(1), tmp_path, env, f"{where}, the init its paragraph names")
            stmts = [s.strip() for s in body.split(";\n") if s.strip()]
            args = shlex.split(_substitute(store.group(1), cloud_substitutions))
            _sql([*args, *[a for s in stmts for a in ("-e", s.rstrip(";"))]], tmp_path, env, where)
        else:
            raise AssertionError(f"README {where}: no runner for ```{lang}")
        ran += 1
    assert ran >= 8, f"only {ran} README blocks ran"  # a floor: blocks must not go quietly unrun
