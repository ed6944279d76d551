"""The SQL parser: the seed document's statements verbatim, every form, errors, redaction, fuzzing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.errors import UsageError
from strongroom.sql import (
    LATEST,
    AlterBackup,
    Backup,
    CreateDatabase,
    DropDatabase,
    Options,
    Passthrough,
    Restore,
    ShowBackup,
    ShowBackups,
    ShowDatabases,
    ShowJobs,
    ShowTables,
    SQLSyntaxError,
    Targets,
    Use,
    parse,
)
from strongroom.sql.parser import KEYWORDS

# --------------------------------------------------------------------------------------------------
# The seed document (take-and-restore-encrypted-backups), every statement verbatim.

S3 = "s3://{BUCKET NAME}?AWS_ACCESS_KEY_ID={KEY ID}&AWS_SECRET_ACCESS_KEY={SECRET ACCESS KEY}"
S3_KMS = "aws:///{key}?AWS_ACCESS_KEY_ID={KEY ID}&AWS_SECRET_ACCESS_KEY={SECRET ACCESS KEY}&REGION=us-east-1"
GS = "gs://{BUCKET NAME}?AUTH=specified&CREDENTIALS={ENCODED KEY}"
GS_KMS_EAST = (
    "gs:///projects/{project name}/locations/us-east1/keyRings/{key ring name}/cryptoKeys/{key name}"
    "?AUTH=specified&CREDENTIALS={encoded key}"
)
GS_KMS_WEST = GS_KMS_EAST.replace("us-east1", "us-west1")
AZ = "azure://{CONTAINER NAME}?AZURE_ACCOUNT_NAME={ACCOUNT NAME}&AZURE_ACCOUNT_KEY={URL-ENCODED KEY}"
PW = Options(encryption_passphrase="password123")

SEED_STATEMENTS = [
    (
        """BACKUP INTO 's3://{BUCKET NAME}?AWS_ACCESS_KEY_ID={KEY ID}&AWS_SECRET_ACCESS_KEY={SECRET ACCESS KEY}'
    WITH kms = 'aws:///{key}?AWS_ACCESS_KEY_ID={KEY ID}&AWS_SECRET_ACCESS_KEY={SECRET ACCESS KEY}&REGION=us-east-1';""",
        Backup(None, (S3,), None, None, Options(kms=(S3_KMS,))),
    ),
    (
        """BACKUP INTO 's3://{BUCKET NAME}?AWS_ACCESS_KEY_ID={KEY ID}&AWS_SECRET_ACCESS_KEY={SECRET ACCESS KEY}'
    WITH KMS=(
      'aws:///{key}?AUTH=implicit&REGION=us-east-1',
      'aws:///{key}?AUTH=implict&REGION=us-west-1'
    );""",
        Backup(
            None,
            (S3,),
            None,
            None,
            Options(
                kms=(
                    "aws:///{key}?AUTH=implicit&REGION=us-east-1",
                    "aws:///{key}?AUTH=implict&REGION=us-west-1",
                )
            ),
        ),
    ),
    (
        """RESTORE FROM LATEST IN 's3://{BUCKET NAME}?AWS_ACCESS_KEY_ID={KEY ID}&AWS_SECRET_ACCESS_KEY={SECRET ACCESS KEY}'
    WITH kms = 'aws:///{key}?AWS_ACCESS_KEY_ID={KEY ID}&AWS_SECRET_ACCESS_KEY={SECRET ACCESS KEY}&REGION=us-east-1';""",  # noqa: E501
        Restore(None, (S3,), LATEST, None, Options(kms=(S3_KMS,))),
    ),
    (
        """BACKUP INTO 'gs://{BUCKET NAME}?AUTH=specified&CREDENTIALS={ENCODED KEY}'
    WITH kms = 'gs:///projects/{project name}/locations/us-east1/keyRings/{key ring name}/cryptoKeys/{key name}?AUTH=specified&CREDENTIALS={encoded key}';""",  # noqa: E501
        Backup(None, (GS,), None, None, Options(kms=(GS_KMS_EAST,))),
    ),
    (
        """BACKUP INTO 'gs://{BUCKET NAME}?AUTH=specified&CREDENTIALS={ENCODED KEY}'
    WITH KMS=(
      'gs:///projects/{project name}/locations/us-east1/keyRings/{key ring name}/cryptoKeys/{key name}?AUTH=specified&CREDENTIALS={encoded key}',
      'gs:///projects/{project name}/locations/us-west1/keyRings/{key ring name}/cryptoKeys/{key name}?AUTH=specified&CREDENTIALS={encoded key}'
    );""",  # noqa: E501
        Backup(None, (GS,), None, None, Options(kms=(GS_KMS_EAST, GS_KMS_WEST))),
    ),
    (
        """RESTORE FROM LATEST IN 'gs://{BUCKET NAME}?AUTH=specified&CREDENTIALS={ENCODED KEY}'
    WITH kms = 'gs:///projects/{project name}/locations/us-east1/keyRings/{key ring name}/cryptoKeys/{key name}?AUTH=specified&CREDENTIALS={encoded key}';""",  # noqa: E501
        Restore(None, (GS,), LATEST, None, Options(kms=(GS_KMS_EAST,))),
    ),
    (
        "BACKUP INTO 's3://{BUCKET NAME}?AWS_ACCESS_KEY_ID={KEY ID}&AWS_SECRET_ACCESS_KEY={SECRET ACCESS KEY}' WITH encryption_passphrase = 'password123';",  # noqa: E501
        Backup(None, (S3,), None, None, PW),
    ),
    (
        "RESTORE FROM LATEST IN 's3://{BUCKET NAME}?AWS_ACCESS_KEY_ID={KEY ID}&AWS_SECRET_ACCESS_KEY={SECRET ACCESS KEY}' WITH encryption_passphrase = 'password123';",  # noqa: E501
        Restore(None, (S3,), LATEST, None, PW),
    ),
    (
        "BACKUP INTO 'gs://{BUCKET NAME}?AUTH=specified&CREDENTIALS={ENCODED KEY}' WITH encryption_passphrase = 'password123';",  # noqa: E501
        Backup(None, (GS,), None, None, PW),
    ),
    (
        "RESTORE FROM LATEST IN 'gs://{BUCKET NAME}?AUTH=specified&CREDENTIALS={ENCODED KEY}' WITH encryption_passphrase = 'password123';",  # noqa: E501
        Restore(None, (GS,), LATEST, None, PW),
    ),
    (
        "BACKUP INTO 'azure://{CONTAINER NAME}?AZURE_ACCOUNT_NAME={ACCOUNT NAME}&AZURE_ACCOUNT_KEY={URL-ENCODED KEY}' WITH encryption_passphrase = 'password123';",  # noqa: E501
        Backup(None, (AZ,), None, None, PW),
    ),
    (
        "RESTORE FROM LATEST IN 'azure://{CONTAINER NAME}?AZURE_ACCOUNT_NAME={ACCOUNT NAME}&AZURE_ACCOUNT_KEY={URL-ENCODED KEY}' WITH encryption_passphrase = 'password123';",  # noqa: E501
        Restore(None, (AZ,), LATEST, None, PW),
    ),
]
SECRETS = ("{SECRET ACCESS KEY}", "{ENCODED KEY}", "{encoded key}", "{URL-ENCODED KEY}", "password123")


@pytest.mark.parametrize(("sql", "expected"), SEED_STATEMENTS)
def test_seed_statement_verbatim(sql: str, expected: object) -> None:
    assert parse(sql) == [expected]


@pytest.mark.parametrize(("sql", "expected"), SEED_STATEMENTS)
def test_seed_statement_repr_hides_secrets(sql: str, expected: object) -> None:
    (stmt,) = parse(sql)
    shown = repr(stmt) + str(stmt)
    for secret in SECRETS:
        assert secret not in shown
    assert "redacted" in shown


def test_seed_document_as_one_script() -> None:
    script = "\n".join(sql for sql, _ in SEED_STATEMENTS)
    assert parse(script) == [expected for _, expected in SEED_STATEMENTS]


def test_seed_file_every_prompt_statement_parses() -> None:
    """Re-read the seed document itself (when present), so a statement copied wrongly above shows up."""
    path = Path("/work/shared/seeds/take-and-restore-encrypted-backups.txt")
    if not path.exists():
        pytest.skip("seed document not available")
    lines = path.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("> "):
            buf = [lines[i][2:]]
            while not buf[-1].rstrip().endswith(";"):
                i += 1
                buf.append(lines[i])
            found.append("\n".join(buf))
        i += 1
    assert found == [sql for sql, _ in SEED_STATEMENTS]


# --------------------------------------------------------------------------------------------------
# Every form


def one(sql: str, params: list[object] | None = None) -> object:
    stmts = parse(sql, params)
    assert len(stmts) == 1, stmts
    return stmts[0]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("BACKUP INTO 'nodelocal://1/b'", Backup(None, ("nodelocal://1/b",))),
        (
            "BACKUP DATABASE bank INTO 'nodelocal://1/b'",
            Backup(Targets("database", ("bank",)), ("nodelocal://1/b",)),
        ),
        (
            "BACKUP DATABASE a, B, \"C d\" INTO 'x'",
            Backup(Targets("database", ("a", "b", "C d")), ("x",)),
        ),
        (
            "BACKUP TABLE t, db.t2, db.public.t3 INTO 'x'",
            Backup(Targets("table", ("t", "db.t2", "db.public.t3")), ("x",)),
        ),
        ("BACKUP INTO LATEST IN 'x'", Backup(None, ("x",), LATEST)),
        ("BACKUP INTO '2024/01/02-030405.00' IN 'x'", Backup(None, ("x",), "2024/01/02-030405.00")),
        ("BACKUP INTO ('a', 'b')", Backup(None, ("a", "b"))),
        ("BACKUP INTO LATEST IN ('a', 'b')", Backup(None, ("a", "b"), LATEST)),
        ("BACKUP INTO 'x' AS OF SYSTEM TIME '-10s'", Backup(None, ("x",), as_of="-10s")),
        (
            "BACKUP INTO 'x' AS OF SYSTEM TIME follower_read_timestamp()",
            Backup(None, ("x",), as_of="follower_read_timestamp()"),
        ),
        (
            "BACKUP INTO 'x' AS OF SYSTEM TIME with_max_staleness('10s')",
            Backup(None, ("x",), as_of="with_max_staleness('10s')"),
        ),
        (
            "BACKUP INTO 'x' AS OF SYSTEM TIME 1700000000000000000.0000000001",
            Backup(None, ("x",), as_of="1700000000000000000.0000000001"),
        ),
        (
            "BACKUP INTO LATEST IN 'x' AS OF SYSTEM TIME '-1m' WITH detached",
            Backup(None, ("x",), LATEST, "-1m", Options(detached=True)),
        ),
        ("BACKUP INTO 'x' WITH detached = false", Backup(None, ("x",), options=Options(detached=False))),
        ("BACKUP INTO 'x' WITH detached = TRUE", Backup(None, ("x",), options=Options(detached=True))),
        (
            "BACKUP INTO 'x' WITH OPTIONS (kms = 'k1', detached)",
            Backup(None, ("x",), options=Options(kms=("k1",), detached=True)),
        ),
        ("BACKUP INTO 'x' WITH kms = ('k1')", Backup(None, ("x",), options=Options(kms=("k1",)))),
        # RESTORE
        ("RESTORE FROM LATEST IN 'x'", Restore(None, ("x",), LATEST)),
        ("RESTORE FROM '2024/01/02-030405.00' IN 'x'", Restore(None, ("x",), "2024/01/02-030405.00")),
        ("RESTORE FROM 'x/2024/01/02-030405.00'", Restore(None, ("x/2024/01/02-030405.00",), None)),
        ("RESTORE FROM ('a', 'b')", Restore(None, ("a", "b"), None)),
        (
            "RESTORE DATABASE bank FROM LATEST IN 'x' WITH new_db_name = 'bank2'",
            Restore(Targets("database", ("bank",)), ("x",), LATEST, options=Options(new_db_name="bank2")),
        ),
        (
            "RESTORE DATABASE bank FROM LATEST IN 'x' WITH new_db_name = Bank2",
            Restore(Targets("database", ("bank",)), ("x",), LATEST, options=Options(new_db_name="bank2")),
        ),
        (
            "RESTORE TABLE bank.accounts FROM LATEST IN 'x' WITH into_db = 'other', detached",
            Restore(
                Targets("table", ("bank.accounts",)),
                ("x",),
                LATEST,
                options=Options(into_db="other", detached=True),
            ),
        ),
        (
            "RESTORE FROM LATEST IN 'x' AS OF SYSTEM TIME '2024-01-02 03:04:05' WITH kms = 'k'",
            Restore(None, ("x",), LATEST, "2024-01-02 03:04:05", Options(kms=("k",))),
        ),
        # SHOW BACKUP(S)
        ("SHOW BACKUPS IN 'x'", ShowBackups(("x",))),
        ("SHOW BACKUPS IN ('x', 'y')", ShowBackups(("x", "y"))),
        ("SHOW BACKUP LATEST IN 'x'", ShowBackup(("x",), LATEST)),
        ("SHOW BACKUP FROM LATEST IN 'x'", ShowBackup(("x",), LATEST)),
        ("SHOW BACKUP '2024/01/02-030405.00' IN 'x'", ShowBackup(("x",), "2024/01/02-030405.00")),
        ("SHOW BACKUP FROM '2024/01/02-030405.00' IN 'x'", ShowBackup(("x",), "2024/01/02-030405.00")),
        ("SHOW BACKUP 'x/2024/01/02-030405.00'", ShowBackup(("x/2024/01/02-030405.00",), None)),
        (
            "SHOW BACKUP FROM LATEST IN 'x' WITH check_files, encryption_passphrase = 'pw'",
            ShowBackup(("x",), LATEST, Options(check_files=True, encryption_passphrase="pw")),
        ),
        (
            "SHOW BACKUP 'x' WITH kms = ('a', 'b')",
            ShowBackup(("x",), None, Options(kms=("a", "b"))),
        ),
        # ALTER BACKUP
        (
            "ALTER BACKUP LATEST IN 'x' ADD NEW_KMS = 'n' WITH OLD_KMS = 'o'",
            AlterBackup(("x",), LATEST, ("n",), ("o",)),
        ),
        (
            "ALTER BACKUP '2024/01/02-030405.00' IN 'x' ADD NEW_KMS = ('n1', 'n2') WITH OLD_KMS = ('o1', 'o2')",
            AlterBackup(("x",), "2024/01/02-030405.00", ("n1", "n2"), ("o1", "o2")),
        ),
        (
            "alter backup 'x/2024/01/02-030405.00' add new_kms = 'n' with old_kms = 'o'",
            AlterBackup(("x/2024/01/02-030405.00",), None, ("n",), ("o",)),
        ),
        # databases, jobs
        ("CREATE DATABASE bank", CreateDatabase("bank")),
        ("CREATE DATABASE IF NOT EXISTS bank", CreateDatabase("bank", if_not_exists=True)),
        ("DROP DATABASE bank", DropDatabase("bank")),
        ("DROP DATABASE IF EXISTS bank CASCADE", DropDatabase("bank", if_exists=True)),
        ("DROP DATABASE bank RESTRICT", DropDatabase("bank")),
        ("SHOW DATABASES", ShowDatabases()),
        ("SHOW TABLES", ShowTables()),
        ("SHOW TABLES FROM bank", ShowTables("bank")),
        ("USE bank", Use("bank")),
        ("SET database = bank", Use("bank")),
        ("SET DATABASE TO 'Bank'", Use("Bank")),
        ("SHOW JOBS", ShowJobs()),
        ("SHOW JOB 594193600274956289", ShowJobs(594193600274956289)),
        # unreserved keywords stay usable as names
        ("USE latest", Use("latest")),
        ("CREATE DATABASE backup", CreateDatabase("backup")),
        ("CREATE DATABASE IF NOT EXISTS if", CreateDatabase("if", if_not_exists=True)),
        ("DROP DATABASE if", DropDatabase("if")),
        ("BACKUP DATABASE latest, jobs INTO 'x'", Backup(Targets("database", ("latest", "jobs")), ("x",))),
    ],
)
def test_forms(sql: str, expected: object) -> None:
    assert one(sql) == expected


def test_case_insensitive_keywords_and_options() -> None:
    expected = Backup(Targets("database", ("bank",)), ("x",), LATEST, None, Options(kms=("k",), detached=True))
    for sql in (
        "BACKUP DATABASE bank INTO LATEST IN 'x' WITH KMS = 'k', DETACHED",
        "backup database bank into latest in 'x' with kms = 'k', detached",
        "BaCkUp DaTaBaSe BANK iNtO lAtEsT iN 'x' WiTh KmS='k',DeTaChEd",
    ):
        assert one(sql) == expected


def test_identifier_folding_and_quoting() -> None:
    assert one("USE MyDB") == Use("mydb")
    assert one('USE "MyDB"') == Use("MyDB")
    assert one('USE "My ""DB"""') == Use('My "DB"')
    assert one('USE "latest"') == Use("latest")
    assert one('CREATE DATABASE "BACKUP"') == CreateDatabase("BACKUP")
    assert one("BACKUP TABLE Db.\"Public\".T INTO 'x'").targets == Targets("table", ("db.Public.t",))
    # string literal case is kept as written
    assert one("BACKUP INTO 'S3://Bucket/Path'").destinations == ("S3://Bucket/Path",)


def test_string_escapes() -> None:
    stmt = one("BACKUP INTO 'it''s' WITH encryption_passphrase = 'a''b'''")
    assert stmt.destinations == ("it's",)
    assert stmt.options.encryption_passphrase == "a'b'"
    assert one("BACKUP INTO ''''").destinations == ("'",)


def test_placeholders() -> None:
    stmt = one("BACKUP INTO $1 WITH encryption_passphrase = $2", ["s3://b", "pw"])
    assert stmt == Backup(None, ("s3://b",), options=Options(encryption_passphrase="pw"))
    stmt = one("BACKUP INTO $2 IN ($1, 'y') WITH kms = ($3, 'k2')", ["x", "sub", "k1"])
    assert stmt == Backup(None, ("x", "y"), "sub", options=Options(kms=("k1", "k2")))
    assert one("RESTORE FROM $1 IN $2", ["sub", "x"]) == Restore(None, ("x",), "sub")
    assert one("SHOW BACKUPS IN $1", ["x"]) == ShowBackups(("x",))
    assert one("ALTER BACKUP $1 IN $2 ADD NEW_KMS = $3 WITH OLD_KMS = $4", ["s", "x", "n", "o"]) == AlterBackup(
        ("x",), "s", ("n",), ("o",)
    )
    assert one("BACKUP INTO 'x' WITH kms = $1", [["k1", "k2"]]).options.kms == ("k1", "k2")
    assert one("BACKUP INTO 'x' WITH detached = $1", [True]).options.detached is True
    assert one("RESTORE FROM LATEST IN 'x' WITH new_db_name = $1", ["n"]).options.new_db_name == "n"
    assert one("BACKUP INTO 'x' AS OF SYSTEM TIME $1", ["-5s"]).as_of == "-5s"
    assert one("SHOW JOB $1", [42]) == ShowJobs(42)
    # unused parameters are fine; placeholders in pass-through statements are left alone
    assert one("BACKUP INTO 'x'", ["unused"]) == Backup(None, ("x",))
    assert one("SELECT $1") == Passthrough("SELECT $1")


@pytest.mark.parametrize(
    ("sql", "params", "message"),
    [
        ("BACKUP INTO $1 WITH encryption_passphrase = $2", ["x"], "no value provided for placeholder: $2"),
        ("BACKUP INTO $1", None, "no value provided for placeholder: $1"),
        ("BACKUP INTO $0", ["x"], "no value provided for placeholder: $0"),
        ("BACKUP INTO $99999999999999999999999", ["x"], "no value provided for placeholder: $99999999999999999999999"),
        ("BACKUP INTO $1", [5], "placeholder $1: expected a string value, got int"),
        (
            "BACKUP INTO 'x' WITH encryption_passphrase = $1",
            [b"pw"],
            "placeholder $1: expected a string value, got bytes",
        ),
        ("BACKUP INTO 'x' WITH kms = $1", [7], "placeholder $1: expected a string or a list of strings"),
        ("BACKUP INTO 'x' WITH detached = $1", ["yes"], 'option "detached" must be true or false'),
        ("SHOW JOB $1", ["abc"], "placeholder $1: expected a job ID"),
    ],
)
def test_placeholder_errors(sql: str, params: list[object] | None, message: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse(sql, params)
    assert str(exc.value) == message


def test_comments_are_skipped() -> None:
    sql = """
    -- take a backup
    BACKUP /* the whole store */ INTO 'x' -- trailing
      WITH /* inline */ detached; /* between */
    -- only a comment;
    SHOW JOBS -- no semicolon at the end
    """
    assert parse(sql) == [Backup(None, ("x",), options=Options(detached=True)), ShowJobs()]
    assert parse("-- nothing\n/* at all */") == []
    assert one("BACKUP INTO '--not a comment /* nor this */'").destinations == ("--not a comment /* nor this */",)


def test_script_splitting() -> None:
    assert parse("") == []
    assert parse(" ; ;; ") == []
    assert parse("SHOW JOBS;SHOW DATABASES;") == [ShowJobs(), ShowDatabases()]
    stmts = parse("CREATE TABLE t (a TEXT); INSERT INTO t VALUES ('a;b', \"c;d\"); SELECT [x;y] FROM t; USE d")
    assert stmts == [
        Passthrough("CREATE TABLE t (a TEXT)"),
        Passthrough("INSERT INTO t VALUES ('a;b', \"c;d\")"),
        Passthrough("SELECT [x;y] FROM t"),
        Use("d"),
    ]


def test_passthrough_keeps_text_and_other_first_words() -> None:
    sql = "select  *\n  from t /* keep me */ where a = 'x'"
    assert parse(sql) == [Passthrough(sql)]
    assert one("ALTER TABLE t ADD COLUMN b") == Passthrough("ALTER TABLE t ADD COLUMN b")
    assert one("CREATE TABLE backup (a)") == Passthrough("CREATE TABLE backup (a)")
    assert one("DROP TABLE t") == Passthrough("DROP TABLE t")
    assert one("SET x = 1") == Passthrough("SET x = 1")
    assert one('"BACKUP" INTO x') == Passthrough('"BACKUP" INTO x')


def test_trigger_bodies_pass_through_whole() -> None:
    trigger = (
        "CREATE TRIGGER audit_upd AFTER UPDATE ON accounts\n"
        "BEGIN\n"
        "  INSERT INTO audit(account, what) VALUES (new.id, 'update;');\n"
        "  UPDATE stats SET n = CASE WHEN n IS NULL THEN 1 ELSE n + 1 END;\n"
        "END"
    )
    temp = "create temp trigger t2 before delete on a begin select raise(abort, 'no'); end"
    stmts = parse(f"{trigger};\nSELECT 1; {temp}; SHOW TABLES")
    assert stmts == [Passthrough(trigger), Passthrough("SELECT 1"), Passthrough(temp), ShowTables()]
    # a transaction's BEGIN ... END is not a trigger
    assert parse("BEGIN; SELECT 1; END;") == [Passthrough("BEGIN"), Passthrough("SELECT 1"), Passthrough("END")]


# --------------------------------------------------------------------------------------------------
# Options registry


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("BACKUP INTO 'x' WITH revision_history", 'unknown option "revision_history"'),
        ("BACKUP INTO 'x' WITH incremental_location = 'y'", 'unknown option "incremental_location"'),
        ("BACKUP INTO 'x' WITH encryption_info_dir = 'y'", 'unknown option "encryption_info_dir"'),
        ("RESTORE FROM LATEST IN 'x' WITH skip_missing_views", 'unknown option "skip_missing_views"'),
        ("BACKUP INTO 'x' WITH options", 'unknown option "options"'),
        ("BACKUP INTO 'x' WITH kms = 'a', KMS = 'b'", '"kms" specified multiple times'),
        ("BACKUP INTO 'x' WITH detached, detached = false", '"detached" specified multiple times'),
        (
            "BACKUP INTO 'x' WITH kms = 'a', encryption_passphrase = 'b'",
            "cannot have both encryption_passphrase and kms option set",
        ),
        (
            "RESTORE FROM LATEST IN 'x' WITH encryption_passphrase = 'b', kms = ('a', 'c')",
            "cannot have both encryption_passphrase and kms option set",
        ),
        ("SHOW BACKUP 'x' WITH check_files = true", 'option "check_files" does not take a value'),
        ("BACKUP INTO 'x' WITH detached = 'yes'", 'option "detached" must be true or false'),
        ("BACKUP INTO 'x' WITH kms", 'option "kms" requires a value'),
        ("BACKUP INTO 'x' WITH encryption_passphrase", 'option "encryption_passphrase" requires a value'),
        ("RESTORE FROM LATEST IN 'x' WITH new_db_name", 'option "new_db_name" requires a value'),
        ("RESTORE FROM LATEST IN 'x' WITH into_db", 'option "into_db" requires a value'),
        (
            "BACKUP INTO 'x' WITH encryption_passphrase = ('a', 'b')",
            'option "encryption_passphrase" requires a string value',
        ),
        ("BACKUP INTO 'x' WITH encryption_passphrase = pw", 'option "encryption_passphrase" requires a string value'),
        (
            "RESTORE FROM LATEST IN 'x' WITH new_db_name = ('a')",
            'option "new_db_name" requires a name or a string value',
        ),
        ("BACKUP INTO 'x' WITH kms = true", 'option "kms" requires a string or a parenthesized list of strings'),
        ("BACKUP INTO 'x' WITH new_db_name = 'y'", 'option "new_db_name" cannot be used with BACKUP'),
        ("BACKUP INTO 'x' WITH check_files", 'option "check_files" cannot be used with BACKUP'),
        ("RESTORE FROM LATEST IN 'x' WITH check_files", 'option "check_files" cannot be used with RESTORE'),
        ("SHOW BACKUP 'x' WITH detached", 'option "detached" cannot be used with SHOW BACKUP'),
        ("SHOW JOB 99999999999999999999", "job ID out of range: 99999999999999999999"),
    ],
)
def test_option_errors(sql: str, message: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse(sql)
    assert str(exc.value) == message


def test_options_fields_are_exactly_the_registry() -> None:
    import dataclasses

    assert [f.name for f in dataclasses.fields(Options)] == [
        "kms",
        "kms_groups",
        "kms_threshold",
        "encryption_passphrase",
        "new_db_name",
        "into_db",
        "check_files",
        "detached",
        "include_unencrypted_data",
        "verify",
        "schema_only",
        "verify_backup_table_data",
        "skip_missing_foreign_keys",
    ]


# --------------------------------------------------------------------------------------------------
# Syntax errors


def syntax_error(sql: str) -> SQLSyntaxError:
    with pytest.raises(SQLSyntaxError) as exc:
        parse(sql)
    assert isinstance(exc.value, UsageError)
    return exc.value


def test_syntax_error_cockroach_style() -> None:
    err = syntax_error("BACKUP DATABASE INTO 'x'")
    assert str(err).split("\n") == [
        'at or near "into": syntax error',
        "DETAIL: source SQL:",
        "BACKUP DATABASE INTO 'x'",
        "                ^",
    ]
    assert err.position == 16


def test_syntax_error_at_eof() -> None:
    err = syntax_error("BACKUP INTO")
    assert str(err) == 'at or near "EOF": syntax error\nDETAIL: source SQL:\nBACKUP INTO\n           ^'
    assert err.position == 11


def test_syntax_error_in_second_statement_and_line() -> None:
    sql = "SHOW JOBS;\nRESTORE FROM LATEST IN 'x'\n  WITH kms = 'k'\n  , , detached;\nSELECT 1"
    err = syntax_error(sql)
    assert str(err).split("\n") == [
        'at or near ",": syntax error',
        "DETAIL: source SQL:",
        "RESTORE FROM LATEST IN 'x'",
        "  WITH kms = 'k'",
        "  , , detached",
        "    ^",
    ]
    assert err.position == sql.index(", detached")


@pytest.mark.parametrize(
    ("sql", "near"),
    [
        ("SHOW something", "something"),
        ("SHOW", "EOF"),
        ("BACKUP INTO 'x' 'y'", "y"),
        ("BACKUP INTO 'x' WITH", "EOF"),
        ("BACKUP INTO 'x' WITH kms = ()", ")"),
        ("BACKUP INTO x", "x"),
        ("BACKUP INTO 'x', 'y'", ","),
        ("BACKUP TABLE a.b.c.d INTO 'x'", "."),
        ("RESTORE FROM LATEST 'x'", "x"),
        ("RESTORE INTO 'x'", "into"),
        ("SHOW BACKUP FROM 'x'", "EOF"),
        ("SHOW BACKUPS 'x'", "x"),
        ("ALTER BACKUP 'x' ADD NEW_KMS = 'a'", "EOF"),
        ("CREATE DATABASE", "EOF"),
        ("CREATE DATABASE IF EXISTS d", "exists"),
        ("DROP DATABASE d e", "e"),
        ("USE from", "from"),
        ("SHOW JOB x", "x"),
        ("SET database = 1", "1"),
        ("BACKUP INTO 'x' WITH kms == 'y'", "=="),
        ("BACKUP INTO 'x' @", "@"),
        ('USE "My DB" "x"', "x"),
        ("BACKUP INTO 'x' WITH KMS = 'y' AS OF SYSTEM TIME '1s'", "as"),
    ],
)
def test_syntax_errors_name_the_token(sql: str, near: str) -> None:
    err = syntax_error(sql)
    first = str(err).split("\n")[0]
    assert first == f'at or near "{near}": syntax error'
    lines = str(err).split("\n")
    assert lines[1] == "DETAIL: source SQL:"
    caret = lines[-1]
    assert caret.strip() == "^"
    if near != "EOF":
        assert sql[err.position :].lower().lstrip("'\"").startswith(near.lower())


@pytest.mark.parametrize(
    ("sql", "head", "column"),
    [
        ("BACKUP INTO 'x", "lexical error: unterminated string", 12),
        ('USE "abc', "lexical error: unterminated string", 4),
        ('USE ""', "lexical error: zero-length delimited identifier", 4),
        ("BACKUP INTO 'x' /* open", "lexical error: unterminated comment", 16),
    ],
)
def test_lexical_errors(sql: str, head: str, column: int) -> None:
    err = syntax_error(sql)
    lines = str(err).split("\n")
    assert lines[0] == head
    assert lines[-1] == " " * column + "^"
    assert err.position == column


def test_unterminated_comment_is_an_error_even_for_sqlite_statements() -> None:
    """SQLite would ignore the rest of the script; a statement hidden in it must not vanish silently."""
    for sql in ("SELECT 1; /* note; BACKUP INTO 'x';", "SELECT 1 /* note; BACKUP INTO 'x';"):
        err = syntax_error(sql)
        assert str(err).startswith("lexical error: unterminated comment\n")
        assert err.position == sql.index("/*")


def test_syntax_error_does_not_show_secrets() -> None:
    sql = (
        "BACKUP INTO 's3://b?AWS_ACCESS_KEY_ID=id&AWS_SECRET_ACCESS_KEY=s3cr3t'"
        " WITH encryption_passphrase = 'hunter2' 'extra'"
    )
    err = syntax_error(sql)
    text = str(err)
    assert "s3cr3t" not in text and "hunter2" not in text
    assert text.split("\n")[0] == 'at or near "extra": syntax error'
    line, caret = text.split("\n")[2:4]
    # the caret still points at the offending token in the redacted line
    assert line[caret.index("^") :].startswith("'extra'")
    # the offending token itself is redacted when it is the secret
    err = syntax_error("BACKUP INTO 'x' WITH encryption_passphrase 'hunter2'")
    assert "hunter2" not in str(err)
    assert str(err).startswith('at or near "redacted": syntax error')
    err = syntax_error("BACKUP INTO 'x' WITH encryption_passphrase = 'hunter2")
    assert "hunter2" not in str(err)
    err = syntax_error("BACKUP INTO 'x' 's3://user:pa55word@host/p?CREDENTIALS=abc'")
    assert "pa55word" not in str(err) and "CREDENTIALS=abc" not in str(err)


# --------------------------------------------------------------------------------------------------
# Redaction in repr


def test_repr_redacts_passphrase_and_uri_secrets() -> None:
    stmts = parse(
        "BACKUP INTO 's3://b?AWS_SECRET_ACCESS_KEY=topsecret' WITH encryption_passphrase = 'hunter2';"
        "RESTORE FROM LATEST IN ('s3://b?AWS_SECRET_ACCESS_KEY=topsecret&COCKROACH_LOCALITY=default')"
        " WITH kms = 'aws:///k?AWS_SECRET_ACCESS_KEY=kmssecret&REGION=r';"
        "SHOW BACKUP LATEST IN 'gs://b?CREDENTIALS=gcpsecret' WITH encryption_passphrase = 'hunter2';"
        "SHOW BACKUPS IN 'azure://c?AZURE_ACCOUNT_KEY=azsecret';"
        "ALTER BACKUP LATEST IN 's3://b?AWS_SECRET_ACCESS_KEY=topsecret'"
        " ADD NEW_KMS = 'aws:///n?AWS_SECRET_ACCESS_KEY=newsecret' WITH OLD_KMS = 'aws:///o?AWS_SESSION_TOKEN=oldsecret'"
    )
    shown = repr(stmts) + " ".join(str(s) for s in stmts)
    for secret in ("topsecret", "hunter2", "kmssecret", "gcpsecret", "azsecret", "newsecret", "oldsecret"):
        assert secret not in shown
    assert "encryption_passphrase='redacted'" in shown
    assert "AWS_SECRET_ACCESS_KEY=redacted" in shown
    # the values themselves are intact
    assert stmts[0].options.encryption_passphrase == "hunter2"
    assert stmts[4].new_kms == ("aws:///n?AWS_SECRET_ACCESS_KEY=newsecret",)
    assert repr(Options()) == (
        "Options(kms=(), kms_groups=(), kms_threshold=0, encryption_passphrase=None, new_db_name=None, "
        "into_db=None, check_files=False, detached=False, include_unencrypted_data=False, verify=False, "
        "schema_only=False, verify_backup_table_data=False, skip_missing_foreign_keys=False)"
    )


# --------------------------------------------------------------------------------------------------
# Fuzzing: anything yields statements or a UsageError, never another exception.

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PARAMS = ["s3://b?AWS_SECRET_ACCESS_KEY=z", "pw", 3, True, ["a", "b"]]


def parses_or_usage_error(sql: str) -> None:
    try:
        stmts = parse(sql, PARAMS)
    except UsageError as exc:
        assert str(exc)
        return
    assert isinstance(stmts, list)
    for stmt in stmts:
        repr(stmt)
        if isinstance(stmt, Passthrough):
            assert stmt.sql and stmt.sql in sql


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_random_text(sql: str) -> None:
    parses_or_usage_error(sql)


SOUP = [
    *sorted(KEYWORDS),
    *[k.lower() for k in sorted(KEYWORDS)],
    "'s3://x'",
    "'sub'",
    "''",
    "'",
    '"Q"',
    '"',
    "(",
    ")",
    ",",
    "=",
    ".",
    ";",
    "$1",
    "$2",
    "$3",
    "$4",
    "$5",
    "$9",
    "42",
    "1.5",
    "d",
    "kms",
    "encryption_passphrase",
    "new_db_name",
    "into_db",
    "check_files",
    "detached",
    "--c\n",
    "/*",
    "*/",
    "BEGIN",
    "END",
    "TRIGGER",
    "@",
    "==",
]


@FUZZ
@given(st.lists(st.sampled_from(SOUP), max_size=25), st.sampled_from([" ", "", "\n"]))
def test_fuzz_token_soup(words: list[str], sep: str) -> None:
    parses_or_usage_error(sep.join(words))


VALID = [sql for sql, _ in SEED_STATEMENTS] + [
    "BACKUP TABLE db.public.t, u INTO '2024/01/02-030405.00' IN ('a', $1) AS OF SYSTEM TIME '-1s' WITH detached",
    "RESTORE DATABASE d FROM LATEST IN 'x' WITH OPTIONS (new_db_name = e, encryption_passphrase = $2)",
    "SHOW BACKUP FROM LATEST IN 'x' WITH check_files; SHOW BACKUPS IN 'x'",
    "ALTER BACKUP LATEST IN 'x' ADD NEW_KMS = ('a', 'b') WITH OLD_KMS = 'c'",
    "CREATE DATABASE IF NOT EXISTS d; USE d; DROP DATABASE IF EXISTS d CASCADE; SHOW JOB 1",
    "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END; SET database = d",
]


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(
        st.tuples(
            st.sampled_from(["delete", "insert", "duplicate", "swap"]),
            st.floats(0, 1),
            st.floats(0, 1),
            st.sampled_from([*SOUP, "x", " ", "'", '"', "(", "$", "-", "/", "*"]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_fuzz_mutated_valid_statements(sql: str, mutations: list[tuple[str, float, float, str]]) -> None:
    parts = re.findall(r"'[^']*'|\S+|\s+", sql)
    for op, a, b, word in mutations:
        if not parts:
            parts = [word]
        i = min(int(a * len(parts)), len(parts) - 1)
        j = min(int(b * len(parts)), len(parts) - 1)
        if op == "delete":
            del parts[i]
        elif op == "insert":
            parts.insert(i, " " + word + " ")
        elif op == "duplicate":
            parts.insert(i, parts[i])
        else:
            parts[i], parts[j] = parts[j], parts[i]
    parses_or_usage_error("".join(parts))


@FUZZ
@given(st.sampled_from(VALID), st.integers(0, 10_000), st.integers(0, 5), st.text(max_size=3))
def test_fuzz_character_mutations(sql: str, at: int, cut: int, insert: str) -> None:
    at %= len(sql) + 1
    parses_or_usage_error(sql[:at] + insert + sql[at + cut :])


def test_show_jobs_when_complete() -> None:
    assert parse("SHOW JOBS WHEN COMPLETE (1, 22)") == [ShowJobs(when_complete=(1, 22))]
    assert parse("SHOW JOB WHEN COMPLETE 5") == [ShowJobs(when_complete=(5,))]
    assert parse("SHOW JOBS WHEN COMPLETE ($1)", [9]) == [ShowJobs(when_complete=(9,))]
    with pytest.raises(UsageError, match="job ID out of range"):
        parse("SHOW JOBS WHEN COMPLETE (99999999999999999999)")


def test_schema_only_options() -> None:
    [stmt] = parse("RESTORE FROM LATEST IN 'x' WITH schema_only, verify_backup_table_data = true")
    assert stmt.options.schema_only and stmt.options.verify_backup_table_data  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match='option "schema_only" cannot be used with BACKUP'):
        parse("BACKUP INTO 'x' WITH schema_only")
