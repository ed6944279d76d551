"""The README runs as written (issue #9 item 7).

Every fenced block of README.md is either run here or explicitly marked ``<!-- not run: reason -->``
on the line before it. Shell blocks run with ``bash -euo pipefail`` in one folder per ``##`` section
(tmp_path as HOME and cwd, keyring and store isolated), in README order. The quick start is special:
``pip install . && strongroom demo`` runs only ``strongroom demo`` (no pip install), and
``./scripts/test.sh`` is not run (that would recurse into the suite): the test asserts it exists and is
what CI (.ci/run) calls.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN = {"bash", "sh", "python", "console", "sql"}
#: The ``##`` sections whose blocks the tests below run; a block anywhere else must be marked not run.
RUN_SECTIONS = {"Quick start", "Use", "SQL", "Managed backups"}


def blocks() -> list[tuple[str, str, str, str | None, int]]:
    """(section, lang, body, mark, line) for every fenced block; mark is the HTML comment before it."""
    out, section, lines, i = [], "", README.read_text().splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^##+ ", line):
            section = line.lstrip("#").strip()
        if line.startswith("```"):
            lang, start = line[3:].strip(), i + 1
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = prev.strip() if prev.strip().startswith("<!--") else None
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            out.append((section, lang, "\n".join(lines[start:i]), mark, start))
        i += 1
    return out


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    e.update(HOME=str(tmp_path), STRONGROOM_KEYRING=str(tmp_path / "keyring"), PYTHONPATH=str(ROOT),
             STRONGROOM_PASSPHRASE="correct horse battery staple")
    return e


def sh(body: str, cwd: Path, env: dict[str, str], where: str) -> str:
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"README {where} failed:\n{body}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return r.stdout


def test_every_block_is_run_or_marked() -> None:
    for section, lang, _body, mark, line in blocks():
        if not (mark or "").startswith("<!-- not run:"):
            assert lang in RUN and section in RUN_SECTIONS, f"README line {line} ({section}): neither run nor marked"
        else:
            assert len(mark or "") > len("<!-- not run:  -->"), f"README line {line}: give a reason"


def test_quick_start(tmp_path: Path, env: dict[str, str]) -> None:
    [(_, _lang, body, _, line)] = [b for b in blocks() if b[0] == "Quick start"]
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


@pytest.mark.parametrize("sections", [("Use", "SQL"), ("Managed backups",)], ids=str)
def test_section(sections: tuple[str, ...], tmp_path: Path, env: dict[str, str]) -> None:
    """A section's blocks in README order in one folder (``## Use``: CLI, SQL transcript, Python)."""
    if sections == ("Managed backups",):  # its commands act on a store with a database in it
        sh("strongroom init ./strongroom-data && strongroom db create bank", tmp_path, env, "setup")
    run = [b for b in blocks() if b[0] in sections and not b[3]]
    assert run, f"no blocks in {sections}"
    for _section, lang, body, _mark, line in run:
        where = f"line {line}"
        if lang == "bash":
            sh(body, tmp_path, env, where)
        elif lang == "console":
            stmts, headers = _transcript(body)
            e = {**env, "PW": "another passphrase"}
            args = [a for s in stmts for a in ("-e", s)]
            r = subprocess.run(["strongroom", "sql", *args, "--param-env", "PW"], cwd=tmp_path, env=e,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"README {where}: {r.stdout}\n{r.stderr}"
            shown = [[c.strip() for c in out.split("|")] for out in r.stdout.splitlines()]
            for h in headers:  # the shown result's shape: its column headers come back
                assert [c.strip() for c in h.split("|")] in shown, f"README {where}: {h!r} not in {r.stdout}"
        elif lang == "python":
            r = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 0, f"README {where}: {r.stderr}"
        else:
            raise AssertionError(f"README {where}: no runner for ```{lang}")
