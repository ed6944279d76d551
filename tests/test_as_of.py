"""AS OF SYSTEM TIME as CockroachDB writes it, for RESTORE and `strongroom restore --as-of`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import Encryption, backup_file, restore_file
from strongroom.backup import engine
from strongroom.backup.requests import ShowBackupRequest, parse_as_of
from strongroom.cli import main
from strongroom.errors import UsageError

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'-1h'", NOW - timedelta(hours=1)),
        ("-10m", NOW - timedelta(minutes=10)),
        ("'-1h30m'", NOW - timedelta(minutes=90)),
        ("'-90s'", NOW - timedelta(seconds=90)),
        ("'-500ms'", NOW - timedelta(milliseconds=500)),
        ("'-2 days'", NOW - timedelta(days=2)),
        ("'-1 hour 5 minutes'", NOW - timedelta(minutes=65)),
        ("'-1.5h'", NOW - timedelta(minutes=90)),
        ("'2026-11-23 10:00:00'", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("'2026-11-23T10:00:00+01:00'", datetime(2026, 11, 23, 9, tzinfo=UTC)),
        ("1732357200000000000", datetime(2024, 11, 23, 10, 20, tzinfo=UTC)),
        ("1732357200000000000.0000000001", datetime(2024, 11, 23, 10, 20, tzinfo=UTC)),
        ("follower_read_timestamp()", NOW - timedelta(seconds=4.8)),
    ],
)
def test_cockroachdb_forms(text: str, expected: datetime) -> None:
    assert parse_as_of(text, NOW) == expected


@pytest.mark.parametrize("text", ["'+1h'", "'-0s'", "'-'", "'-1 fortnight'", "'-1h junk'", "'yesterday'", "''"])
def test_what_is_refused_names_the_value(text: str) -> None:
    with pytest.raises(UsageError, match=r"AS OF SYSTEM TIME '"):
        parse_as_of(text, NOW)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_is_a_time_or_one_clear_error(text: str) -> None:
    try:
        assert parse_as_of(text, NOW).tzinfo is not None
    except UsageError as exc:
        assert "AS OF SYSTEM TIME" in str(exc)


def test_cli_restore_as_of(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    coll = str(tmp_path / "coll")
    enc = Encryption(passphrase="correct horse battery")
    backup_file(db, coll, encryption=enc)
    conn.execute("INSERT INTO t VALUES (2)")
    conn.close()
    backup_file(db, coll, encryption=enc, incremental="LATEST")
    full_end = engine.show_backup(ShowBackupRequest(in_=(coll,), encryption=enc)).manifests[0].end_time
    env = {"STRONGROOM_PASSPHRASE": "correct horse battery"}
    runner = CliRunner()
    for name, as_of, rows in (("then.db", full_end, 1), ("now.db", "-1us", 2)):
        out = runner.invoke(
            main, ["restore", coll, "--file", str(tmp_path / name), "--passphrase", "--as-of", as_of], env=env
        )
        assert out.exit_code == 0, out.output
        restored = apsw.Connection(str(tmp_path / name))
        assert restored.execute("SELECT count(*) FROM t").fetchall() == [(rows,)]
        restored.close()
    bad = runner.invoke(main, ["restore", coll, "--file", str(tmp_path / "x.db"), "--passphrase", "--as-of", "soon"])
    assert bad.exit_code == 2 and "AS OF SYSTEM TIME 'soon'" in bad.output
    # the Python API takes a datetime
    restore_file(coll, tmp_path / "py.db", encryption=enc, as_of=datetime.fromisoformat(full_end))
