"""A passphrase never shows in a syntax error, whatever form a user (or an attacker) gives it in."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from strongroom import init_store
from strongroom.cli import main
from strongroom.errors import StrongroomError
from strongroom.sql import parse

FORMS = (
    "= '{p}'",
    "= ('{p}')",
    "= ('{p}'",
    "= ('x', '{p}')",
    "= {p}",
    "{p}",
    "= ({p})",
    "= $${p}$$",
    "= '{p}' garbage",
    "= {p}, kms = ))",
)
TAILS = ("", " garbage", ", detached", " ;;", ", kms = ")

# Passphrases that are distinctive enough to search for: no quote (a quote ends a literal), long
# enough not to appear by chance in the rest of the statement or the error's fixed words.
PASSPHRASES = st.text(
    alphabet=st.characters(blacklist_characters="'\x00", blacklist_categories=("Cs",)), min_size=10, max_size=40
).filter(lambda p: p.strip() == p and not any(w in p.lower() for w in ("redacted", "syntax", "backup")))


def _error_text(sql: str) -> str:
    try:
        parse(sql)
    except StrongroomError as exc:
        return str(exc)
    return ""


@settings(max_examples=300, deadline=None)
@given(p=PASSPHRASES, form=st.sampled_from(FORMS), tail=st.sampled_from(TAILS))
def test_no_passphrase_in_any_parse_error(p: str, form: str, tail: str) -> None:
    sql = "BACKUP INTO 'nodelocal://1/x' WITH encryption_passphrase " + form.format(p=p) + tail
    # A passphrase that is one of the statement's or the message's own words cannot be told apart.
    words = sql.replace(p, " ") + " at or near syntax error DETAIL: source SQL: redacted EOF lexical unterminated"
    assume(p.lower() not in words.lower())
    assert p not in _error_text(sql)


@pytest.mark.parametrize("form", FORMS)
def test_the_cli_shows_no_passphrase_on_stdout_or_stderr(form: str, tmp_path: Path) -> None:
    secret = "Tr0ub4dor&3-horse"
    init_store(tmp_path / "store")
    sql = "BACKUP INTO 'nodelocal://1/x' WITH encryption_passphrase " + form.format(p=secret) + " garbage"
    result = CliRunner().invoke(main, ["sql", "--store", str(tmp_path / "store"), "-e", sql])
    assert result.exit_code == 1
    assert "syntax error" in result.output and "DETAIL: source SQL:" in result.output
    assert secret not in result.output
    assert "Traceback" not in result.output
