"""Bad input of any kind (bytes, encodings, sizes) gets one clear StrongroomError naming the input:
never a traceback, a panic from a library, or a secret in the message."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom import BackupRequest, Encryption, Store, StrongroomError, init_store
from strongroom.sql import parse
from strongroom.storage import open_storage
from strongroom.uri import parse_uri

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


@pytest.fixture(scope="module")
def cli_store(bare_store: Store) -> str:
    return str(bare_store.path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sql=STATEMENTS, passphrase=st.text(NASTY, min_size=1, max_size=12))
def test_strongroom_sql_answers_any_statement_with_one_error_line_at_most(
    cli_store: str, sql: str, passphrase: str
) -> None:
    """``strongroom sql -e`` (in-process, click's runner): exit 0, or 1/2 with exactly one ERROR: line;
    never a traceback; never the passphrase the statement carries."""
    from click.testing import CliRunner

    from strongroom.cli import main

    secret = f"{SECRET}-{passphrase}"
    statement = sql.replace("$1", f"'{secret}'")
    result = CliRunner().invoke(main, ["sql", "--store", cli_store, "-e", statement])
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code:
        assert sum(line.startswith("ERROR:") for line in result.output.splitlines()) == 1, result.output
    assert SECRET not in result.output or "encryption_passphrase" not in statement


def _cli(args: list[str], env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "strongroom.cli", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env},
        timeout=60,
    )


def test_undecodable_bytes_from_stdin_files_and_environment_are_named(tmp_path: Path) -> None:
    """The ways bytes reach the CLI without going through Python strings we made: argv, stdin, a
    passphrase file, the environment. Each gets one ERROR: line naming the input, never a traceback."""
    env = {"STRONGROOM_KEYRING": str(tmp_path / "ring"), "STRONGROOM_STORE": str(tmp_path / "store")}
    (tmp_path / "ring").mkdir()
    assert _cli(["init", str(tmp_path / "store")], env).returncode == 0
    assert _cli(["db", "create", "d"], env).returncode == 0
    (tmp_path / "pw").write_bytes(b"\xff\xfe")
    cases = [
        (["sql", "-d", "d"], {}, b"SELECT 1\xff;\n", "the statement is not valid UTF-8 text"),
        (["sql", "-d", "d"], {}, b"SELECT 1\x00;\n", "the statement has a NUL character"),
        (["sql", "-d", "d", "-e", "SELECT \udcff"], {}, b"", "the statement is not valid UTF-8 text"),
        (["sql", "-d", "d", "-e", "SELECT $1", "--param-env", "P"], {"P": "a\udcffb"}, b"", "--param-env P"),
        (["backup", "nodelocal://1/q", "--passphrase-file", str(tmp_path / "pw")], {}, b"", "not UTF-8 text"),
        (["backup", "nodelocal://1/q", "--passphrase"], {"STRONGROOM_PASSPHRASE": "a\udcffb"}, b"", "UTF-8"),
        (["backup", "nodelocal://1/\udcff", "--passphrase"], {"STRONGROOM_PASSPHRASE": "pw"}, b"", "UTF-8"),
    ]
    for args, extra, stdin, message in cases:
        encoded_env = {k: os.fsdecode(os.fsencode(v)) for k, v in extra.items()}
        done = _cli([os.fsdecode(os.fsencode(a)) for a in args], {**env, **encoded_env}, stdin)
        err = done.stderr.decode(errors="replace")
        assert b"Traceback" not in done.stderr + done.stdout, (args, err)
        errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
        assert len(errors) == 1 and message in errors[0], (args, err)


def test_the_api_error_for_an_arn_without_a_region_hides_its_secret() -> None:
    from strongroom.server.models import CMEKKeySpecification, CMEKKeyType, kms_uri

    spec = CMEKKeySpecification(
        type=CMEKKeyType.AWS_KMS, uri=f"arn:aws:kms::111122223333:key/k?AWS_SECRET_ACCESS_KEY={SECRET}"
    )
    with pytest.raises(StrongroomError) as exc:
        kms_uri(spec)
    assert "names no region" in str(exc.value) and SECRET not in str(exc.value)


@pytest.mark.parametrize(
    "uri",
    [
        "azure://acct:{s}@container/x?AZURE_ACCOUNT_NAME=acct&AZURE_ACCOUNT_KEY=a2V5&AZURE_ENDPOINT=http://127.0.0.1:9",
        "nodelocal://u:{s}@1/x",
        "file://u:{s}@/tmp/x",
        "s3://b/x?AWS_ACCESS_KEY_ID=a&AWS_SECRET_ACCESS_KEY={s}&AWS_ENDPOINT=http://127.0.0.1:9",
    ],
)
def test_a_password_in_a_uri_is_in_no_output_and_no_file(tmp_path: Path, uri: str) -> None:
    """Whatever fails (our parser, obstore's client with the URL in its message), neither the error
    nor the job registry on disk, nor SHOW JOBS, holds the password."""
    secret = f"pw-{os.urandom(6).hex()}"
    ring = tmp_path / "ring"
    ring.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("STRONGROOM_KEYRING", str(ring))
    try:
        store = init_store(tmp_path / "store")
        store.create_database("d")
        with pytest.raises(StrongroomError) as exc:
            store.backup(uri.format(s=secret), encryption=Encryption(passphrase="uri-password-test"))
        shown = str(exc.value) + repr(store.execute("SHOW JOBS").rows)
        assert secret not in shown
        for path in store.path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    finally:
        mp.undo()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://-b-/x?AUTH=specified&BEARER_TOKEN=tok", "'-b-' is not a valid bucket name"),
        ("s3://B_/x?AUTH=implicit", "'B_' is not a valid bucket name"),
        ("s3://b/x?AWS_ENDPOINT=http://a b&AUTH=implicit", "AWS_ENDPOINT must be an http(s) URL"),
        ("gs://b/x?AUTH=specified&BEARER_TOKEN=tok&GCS_ENDPOINT=nowhere", "GCS_ENDPOINT must be an http(s) URL"),
    ],
)
def test_names_and_endpoints_the_sdks_choke_on_are_refused_first(bare_store: Store, uri: str, message: str) -> None:
    """Before: ValueError from google-cloud-storage, a Rust panic from obstore (on a backup's first write)."""
    with pytest.raises(StrongroomError) as exc:
        bare_store.backups.plan(BackupRequest(into=(uri,), encryption=Encryption(passphrase="p")))
    assert message in str(exc.value)


def test_a_kms_key_identifier_is_not_held_to_file_name_lengths() -> None:
    """A KMS URI's path is a key identifier: an SSH RSA recipient's base64 holds ``/`` at random, so
    its longest piece between slashes is sometimes over 255 bytes. Only storage paths are file names."""
    assert parse_uri("age:///ssh-rsa%20" + "A" * 300).path.endswith("A" * 300)
    with pytest.raises(StrongroomError, match="a name in its path is 300 bytes long"):
        open_storage("nodelocal://1/" + "a" * 300)
