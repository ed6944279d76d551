"""``strongroom cmek ...``, ``strongroom rotate ...`` and ``strongroom serve``'s start-up checks, through click."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import fill_bank, table_rows

from strongroom import init_store, open_store
from strongroom.cli import main


@pytest.fixture
def two_regions(tmp_path: Path, keys: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store without CMEK in regions us and eu, a database in us; the default store of the CLI."""
    store = init_store(tmp_path / "store", regions=("us", "eu"))
    fill_bank(store, accounts=100)
    monkeypatch.setenv("STRONGROOM_STORE", str(store.path))
    return store.path


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def ok(*args: str, input: str | None = None) -> str:
    result = run(*args, input=input)
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str, input: str | None = None, code: int = 1) -> str:
    """The output of a failing command; ``code`` 2 for a usage error (the user must change what they asked)."""
    result = run(*args, input=input)
    assert result.exit_code == code, result.output
    return result.output


def status_rows(*args: str) -> list[dict[str, object]]:
    """``cmek status`` as JSON: a row per region and data key."""
    return json.loads(ok("cmek", "status", "--format", "json", *args))  # type: ignore[no-any-return]


def region_statuses() -> dict[object, object]:
    return {r["region"]: r["status"] for r in status_rows()}


def test_enable_one_uri_for_every_region_or_one_per_region(two_regions: Path) -> None:
    out = ok("cmek", "enable", "--cmek", "local:///east", "--auth-principal", "ops@example")
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("region us: ENABLED, store key ")
    assert lines[0].endswith(" wrapped by local:///east") and lines[1].endswith(" wrapped by local:///east")
    store = open_store(two_regions)
    assert [(st.cmek, st.auth_principal) for st in store.encryption_status()] == [(True, "ops@example")] * 2
    assert len(table_rows(store, "bank", "accounts")) == 100


def test_enable_errors(two_regions: Path) -> None:
    assert fails("cmek", "enable", "--cmek", "us=local:///east", code=2) == (
        "ERROR: enabling CMEK needs a key for every region of the store; missing: eu\n"
    )
    assert fails("cmek", "enable", "--cmek", "us=local:///east", "--cmek", "mars=local:///west", code=2) == (
        'ERROR: region "mars" does not exist\nHINT: valid regions: us, eu\n'
    )
    assert (
        fails("cmek", "enable", "--cmek", "gopher:///k", code=2)
        == "ERROR: no KMS found for scheme \"gopher\" in 'gopher:///k'\n"
    )
    assert fails("cmek", "enable", "--cmek", "local:///east", "--cmek", "local:///west", code=2) == (
        "ERROR: with several --cmek options, write each as REGION=URI (got 'local:///east')\n"
    )
    assert "Missing option '--cmek'" in run("cmek", "enable").output
    assert [st.cmek for st in open_store(two_regions).encryption_status()] == [False, False]  # nothing changed


def test_rotate_makes_a_new_version_or_moves_to_a_new_key(two_regions: Path) -> None:
    assert fails("cmek", "rotate", code=2) == (
        "ERROR: CMEK is not enabled on this store: there is nothing to rotate (strongroom cmek enable)\n"
    )
    assert fails("cmek", "rotate", "--region", "eu", code=2) == (
        'ERROR: region "eu" has no CMEK to rotate: give a key URI to enable one\n'
    )
    ok("cmek", "enable", "--cmek", "us=local:///east", "--cmek", "eu=local:///west")
    before = {st.region: st.store_key_id for st in open_store(two_regions).encryption_status()}

    out = ok("cmek", "rotate")  # a new version of each region's key: the same store keys, re-wrapped
    assert out.splitlines() == [
        f"region us: ENABLED, store key {before['us'][:16]} wrapped by local:///east",
        f"region eu: ENABLED, store key {before['eu'][:16]} wrapped by local:///west",
    ]
    rotations = [(a.region, a.key) for a in open_store(two_regions).audit_records() if a.purpose == "rotate CMEK"]
    assert ("us", "local:///east") in rotations and ("eu", "local:///west") in rotations

    out = ok("cmek", "rotate", "--region", "eu", "--cmek", "eu=local:///stranger")
    assert out == f"region eu: ENABLED, store key {before['eu'][:16]} wrapped by local:///stranger\n"
    out = ok("cmek", "rotate", "--region", "us")
    assert out == f"region us: ENABLED, store key {before['us'][:16]} wrapped by local:///east\n"
    assert len(table_rows(open_store(two_regions), "bank", "accounts")) == 100


def test_rotate_to_a_missing_key_fails_and_status_says_why(two_regions: Path, _keyring: Path) -> None:
    ok("cmek", "enable", "--cmek", "local:///east")
    missing = (
        f'local KMS key "missing" not found in keyring {_keyring} (create it with: strongroom keys create missing)'
    )
    assert fails("cmek", "rotate", "--cmek", "us=local:///missing") == f'ERROR: region "us": {missing}\n'
    rows = status_rows()
    assert {(r["region"], r["status"], r["user_message"]) for r in rows} == {
        ("us", "ROTATE_FAILED", missing),
        ("eu", "ENABLED", None),
    }
    assert len(table_rows(open_store(two_regions), "bank", "accounts")) == 100  # still under the old key


def test_status_per_region_and_data_key(two_regions: Path) -> None:
    rows = status_rows()
    assert [r["region"] for r in rows] == ["us", "eu"]
    us, eu = rows
    assert (us["status"], us["key_type"], us["active"], us["files"]) == ("DISABLED", "LOCAL_KEY_FILE", True, 1)
    assert us["bytes"] > 0 and eu["files"] == 0 and eu["bytes"] == 0  # type: ignore[operator]
    assert len(us["data_key_id"]) == 64 and len(us["store_key_id"]) == 64  # type: ignore[arg-type]
    ok("rotate", "data-keys")
    rows = status_rows()
    us_keys = [(r["active"], r["files"]) for r in rows if r["region"] == "us"]
    assert us_keys == [(True, 1)]  # the old key protected nothing any more and was dropped
    table = ok("cmek", "status")
    header = table.splitlines()[0].split("|")
    assert [h.strip() for h in header] == [
        "region", "status", "key_type", "key_uri", "store_key_id", "data_key_id", "active", "under_cmek",
        "files", "bytes", "next_rotation", "user_message",
    ]  # fmt: skip
    assert table.rstrip().endswith("(2 rows)") and rows[0]["data_key_id"][:16] in table  # type: ignore[index]
    assert rows[0]["data_key_id"] not in table  # a table shows 16 hex digits of a key id
    csv = ok("cmek", "status", "--format", "csv").splitlines()
    assert csv[0].startswith("region,status,key_type,key_uri,") and len(csv) == 3


def test_revoke_asks_then_the_store_stops_until_enabled_again(two_regions: Path) -> None:
    assert (
        fails("cmek", "revoke", "--yes", code=2)
        == "ERROR: CMEK is not enabled on this store: there is nothing to revoke\n"
    )
    ok("cmek", "enable", "--cmek", "us=local:///east", "--cmek", "eu=local:///west")

    out = fails("cmek", "revoke", input="n\n")
    assert out.startswith(f"Revoke CMEK on store {two_regions}? It will not open until CMEK is enabled again [y/N]")
    assert out.endswith("Aborted!\n")
    assert region_statuses() == {"us": "ENABLED", "eu": "ENABLED"}

    out = ok("cmek", "revoke", input="y\n")
    assert out.endswith("revoked CMEK: the store will not open until CMEK is enabled again (strongroom cmek enable)\n")
    revoked = fails("db", "list")
    assert revoked.startswith(
        f'ERROR: store {two_regions}: region "us" cannot start: its CMEK local:///east was revoked ('
    )
    assert revoked.endswith(
        "); after restoring the store's access to the key, enable it again (strongroom cmek enable)\n"
    )

    result = run("cmek", "status", "--format", "json")
    assert result.exit_code == 0
    assert result.stderr.startswith('NOTE: the store\'s keys are locked, data keys are not shown: region "us" cannot')
    rows = json.loads(result.stdout)
    assert [(r["status"], r["data_key_id"], r["files"]) for r in rows] == [("REVOKED", None, None)] * 2

    ok("cmek", "enable", "--cmek", "us=local:///east", "--cmek", "eu=local:///stranger")
    assert region_statuses() == {"us": "ENABLED", "eu": "ENABLED"}
    assert ok("db", "list", "--format", "csv") == "database_name,region\nbank,us\n"


def test_audit_lists_every_key_use(two_regions: Path) -> None:
    ok("cmek", "enable", "--cmek", "local:///east")
    records = json.loads(ok("cmek", "audit", "--format", "json"))
    assert set(records[0]) == {"time", "actor", "region", "operation", "purpose", "key", "result"}
    enabled = [(r["region"], r["operation"]) for r in records if r["purpose"] == "enable CMEK"]
    assert enabled == [("us", "encrypt"), ("us", "decrypt"), ("eu", "encrypt"), ("eu", "decrypt")]
    assert all(r["result"] == "ok" and r["actor"].startswith("user:") for r in records)
    assert json.loads(ok("cmek", "audit", "--format", "json", "--last", "2")) == records[-2:]
    assert "Invalid value for '--last'" in run("cmek", "audit", "--last", "0").output


def test_rotate_data_keys_and_store_keys(two_regions: Path) -> None:
    first = {r["region"]: r["data_key_id"] for r in status_rows()}
    assert ok("rotate", "data-keys", "--if-due") == "no data key rotation is due\n"
    out = ok("rotate", "data-keys", "--region", "us").splitlines()
    [row] = [r for r in status_rows() if r["region"] == "us"]
    assert out == [f"region us: new data key {row['data_key_id'][:16]}; re-keyed 1 database(s): bank"]  # type: ignore[index]
    assert row["data_key_id"] != first["us"]
    assert ok("rotate", "data-keys").splitlines()[1].startswith("region eu: new data key ")
    assert fails("rotate", "data-keys", "--region", "mars", code=2) == (
        'ERROR: region "mars" does not exist\nHINT: valid regions: us, eu\n'
    )

    before = {st.region: st.store_key_id for st in open_store(two_regions).encryption_status()}
    out = ok("rotate", "store-key", "--region", "eu")
    after = {st.region: st.store_key_id for st in open_store(two_regions).encryption_status()}
    assert after["us"] == before["us"] and after["eu"] != before["eu"]
    assert out.startswith(f"region eu: DISABLED, store key {after['eu'][:16]} wrapped by local:///strongroom-store-")
    assert len(table_rows(open_store(two_regions), "bank", "accounts")) == 100


def test_serve_refuses_what_it_cannot_use(two_regions: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    assert fails("serve", "--token-file", str(empty), code=2) == f"ERROR: the token file {empty} is empty\n"
    (two_regions / "api-token").write_text("")
    assert fails("serve", code=2) == (
        f"ERROR: the token file {two_regions / 'api-token'} is empty: delete it to have a new token made\n"
    )
    nowhere = tmp_path / "nowhere"
    assert fails("serve", "--store", str(nowhere)) == (
        f"ERROR: {nowhere} is not a Strongroom store (create one with: strongroom init {nowhere})\n"
    )
    assert "Invalid value for '--schedule-interval'" in run("serve", "--schedule-interval", "0").output
    assert "--token-file" in ok("serve", "--help") and "--token " not in ok("serve", "--help")
