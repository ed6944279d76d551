"""Bad input of any kind (bytes, encodings, sizes) gets one clear StrongroomError naming the input:
never a traceback, a panic from a library, or a secret in the message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom import BackupRequest, Encryption, Store, StrongroomError, init_store
from strongroom.sql import parse

NASTY = st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)  # NUL, controls, lone surrogates
FRAGMENTS = st.sampled_from(
    [
        "BACKUP ",
        "RESTORE ",
        "SHOW BACKUP ",
        "ALTER BACKUP ",
        "INTO ",
        "FROM ",
        "LATEST ",
        "IN ",
        "WITH ",
        "DATABASE ",
        "TABLE ",
        "kms = ",
        "encryption_passphrase = ",
        "'nodelocal://1/x'",
        "(",
        ")",
        ",",
        "'",
        "$1",
        "AS OF SYSTEM TIME ",
        "detached",
        "new_db_name = ",
        ";",
        "--",
        "/*",
        "SELECT ",
        "x'00'",
    ]
)
STATEMENTS = st.lists(st.one_of(FRAGMENTS, st.text(NASTY, max_size=6)), max_size=12).map("".join)

SECRET = "hY7-secret-Zq9"
SCHEMES = ["nodelocal://1", "file://", "s3://", "gs://", "azure://", "azure-blob://", "nodelocal://", "ftp://"]
KMS_SCHEMES = ["local:///", "aws:///", "aws-kms:///", "gs:///", "gcp-kms:///", "azure-kms:///"]
PARAM_NAMES = st.sampled_from(
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_ENDPOINT",
        "AWS_REGION",
        "REGION",
        "AUTH",
        "CREDENTIALS",
        "ASSUME_ROLE",
        "AZURE_ACCOUNT_NAME",
        "AZURE_ACCOUNT_KEY",
        "AZURE_ENVIRONMENT",
        "AZURE_VAULT_NAME",
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "KEYRING",
        "COCKROACH_LOCALITY",
        "BEARER_TOKEN",
        "x",
        "%41",
    ]
)


def _value(name: str) -> st.SearchStrategy[str]:
    if name == "AUTH":  # AUTH=implicit would look for ambient credentials (a metadata server): not here
        return st.just("specified")
    return st.text(NASTY, max_size=20)


PARAMS = st.lists(PARAM_NAMES.flatmap(lambda n: _value(n).map(lambda v: f"{n}={v}")), max_size=4)
PATHS = st.text(NASTY, max_size=30) | st.integers(0, 2000).map(lambda n: "/" + "p" * n)


@st.composite
def uris(draw: st.DrawFn, schemes: list[str]) -> str:
    params = [*draw(PARAMS), f"AWS_SECRET_ACCESS_KEY={SECRET}"]
    return draw(st.sampled_from(schemes)) + draw(st.text(NASTY, max_size=12)) + draw(PATHS) + "?" + "&".join(params)


@pytest.fixture(scope="module")
def bare_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    ring = tmp_path_factory.mktemp("ring")
    mp = pytest.MonkeyPatch()
    mp.setenv("STRONGROOM_KEYRING", str(ring))
    try:
        yield init_store(Path(tmp_path_factory.mktemp("s")) / "store")
    finally:
        mp.undo()


@settings(max_examples=400, deadline=None)
@given(sql=STATEMENTS)
def test_any_statement_parses_or_raises_one_clear_error(sql: str) -> None:
    try:
        parse(sql, ["param"])
    except StrongroomError as exc:
        assert str(exc) and "Traceback" not in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(uri=uris(SCHEMES), passphrase=st.text(NASTY, min_size=1, max_size=10))
def test_any_storage_uri_and_passphrase_plan_or_raise_one_clear_error(
    bare_store: Store, uri: str, passphrase: str
) -> None:
    try:
        request = BackupRequest(into=(uri,), encryption=Encryption(passphrase=passphrase))
        bare_store.backups.plan(request)
    except StrongroomError as exc:
        assert SECRET not in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kms=uris(KMS_SCHEMES))
def test_any_kms_uri_plans_or_raises_one_clear_error(bare_store: Store, kms: str) -> None:
    try:
        bare_store.backups.plan(BackupRequest(into=("nodelocal://1/k",), encryption=Encryption(kms=(kms,))))
    except StrongroomError as exc:
        assert SECRET not in str(exc)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("nodelocal://1/" + "a" * 300, "a name in its path is 300 bytes long (at most 255)"),
        ("s3://b/" + "x" * 70000 + "?AUTH=implicit", "its path is 70001 bytes long (at most 900)"),
        ("file:///tmp/a%00b", "the path holds a control character (0x00)"),
        ("s3://b/x?AWS_ACCESS_KEY_ID=a%0Ab&AUTH=implicit", "the parameter AWS_ACCESS_KEY_ID holds a control character"),
        ("s3://b/x?AWS_ACCESS_KEY_ID=a%00b&AUTH=implicit", "the parameter AWS_ACCESS_KEY_ID holds a control character"),
        ("nodelocal://1/\udc80", "is not valid UTF-8 text"),
        (f"s3://b/x?AWS%5FSECRET%5FACCESS%5FKEY={SECRET}", "not percent-encoded"),
        (f"ftps://x?aws_secret_access_key={SECRET}", 'unsupported storage scheme "ftps"'),
    ],
)
def test_known_bad_uris_name_the_problem(bare_store: Store, uri: str, message: str) -> None:
    with pytest.raises(StrongroomError) as exc:
        bare_store.backups.plan(BackupRequest(into=(uri,), encryption=Encryption(passphrase="p")))
    assert message in str(exc.value)
    assert SECRET not in str(exc.value)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 1\x00", "the statement has a NUL character at offset 8"),
        ("SELECT '\udc80'", "the statement is not valid UTF-8 text"),
    ],
)
def test_bad_statement_text_names_the_problem(sql: str, message: str) -> None:
    with pytest.raises(StrongroomError) as exc:
        parse(sql)
    assert message in str(exc.value)


def test_a_passphrase_that_is_not_text_is_refused() -> None:
    with pytest.raises(StrongroomError, match="encryption_passphrase must be valid UTF-8 text"):
        Encryption(passphrase="pw\udcff")
