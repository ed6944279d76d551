"""`strongroom sql` interactively, through a real pseudo-terminal: multi-line input, hidden $n prompts, \\q."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

from strongroom import Store


@pytest.fixture
def shell(store: Store, tmp_path: Path) -> pexpect.spawn:
    env = {**os.environ, "STRONGROOM_STORE": str(store.path), "HOME": str(tmp_path / "home"), "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "strongroom.cli", "sql"], env=env, encoding="utf-8", timeout=30)
    child.expect_exact("\\q quits")
    yield child
    child.close(force=True)


def test_multi_line_statements_placeholders_and_quit(shell: pexpect.spawn, store: Store, tmp_path: Path) -> None:
    shell.expect_exact("> ")
    shell.sendline("CREATE DATABASE bank;")
    shell.expect_exact("CREATE DATABASE")
    shell.sendline("USE bank;")
    shell.expect_exact("bank> ")
    shell.sendline("CREATE TABLE t (x INT);")
    shell.expect_exact("bank> ")
    shell.sendline("INSERT INTO t VALUES (1),")  # a statement over three lines
    shell.expect_exact("  -> ")
    shell.sendline("  (2),")
    shell.expect_exact("  -> ")
    shell.sendline("  (3);")
    shell.expect_exact("INSERT 3")
    shell.sendline("BACKUP INTO 'nodelocal://1/b' WITH encryption_passphrase = $1;")
    shell.expect_exact("$1: ")  # asked for, hidden
    shell.sendline("s3cret-typed-at-a-prompt")
    shell.expect_exact("| succeeded |")
    shell.expect_exact("(1 row)")
    shell.sendline("SELECT count(*) AS n FROM t;")
    shell.expect_exact("(1 row)")
    assert "  3" in shell.before
    shell.sendline("BACKUP DATABASE INTO 'x';")
    shell.expect_exact('ERROR: at or near "into": syntax error')
    shell.sendline("\\q")
    shell.expect(pexpect.EOF)
    assert "s3cret-typed-at-a-prompt" not in (tmp_path / "home" / ".strongroom" / "sql_history").read_text()
    assert store.show_backups("nodelocal://1/b") and store.execute("SHOW JOBS").rows[0][5] == "succeeded"
