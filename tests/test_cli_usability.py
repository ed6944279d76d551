"""What a new user trips on: --store on `strongroom` itself, exit codes, Ctrl-C, missing extras,
tables that fit the terminal, relative collection paths, and help for every option."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pexpect
import pytest
from click.testing import CliRunner

from strongroom.cli import main
from strongroom.cli.group import import_hint
from strongroom.store import open_store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("STRONGROOM_STORE", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    path = tmp_path / "store"
    assert CliRunner().invoke(main, ["init", str(path)]).exit_code == 0
    return path


def run(*args: str, **kw: object) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), **kw)  # type: ignore[arg-type]


# -- 3: --store ---------------------------------------------------------------------------------------
def test_store_option_on_strongroom_itself_and_the_commands_own_wins(store: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run("init", str(other)).exit_code == 0
    assert run("--store", str(store), "db", "create", "app").exit_code == 0
    assert "app" in run("--store", str(store), "db", "list").output
    # the command's own --store wins over strongroom --store, which wins over $STRONGROOM_STORE
    assert "app" not in run("--store", str(store), "db", "list", "--store", str(other)).output
    env = {"STRONGROOM_STORE": str(other)}
    assert "app" in run("--store", str(store), "db", "list", env=env).output
    assert "app" not in run("db", "list", env=env).output
    assert "--store DIR" in run("--help").output


def test_store_errors_name_the_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = run("--store", str(missing), "db", "list")
    assert (result.exit_code, result.output) == (
        1,
        f"ERROR: {missing} is not a Strongroom store (create one with: strongroom init {missing})\n",
    )


def test_an_error_opening_the_store_names_it(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRONGROOM_KEYRING", str(tmp_path / "empty-keyring"))  # the store key file is gone
    result = run("--store", str(store), "db", "list")
    assert result.exit_code == 1 and result.output.startswith(f"ERROR: store {store}: ")
    assert "Traceback" not in result.output


# -- 4: exit codes --------------------------------------------------------------------------------------
def test_usage_errors_exit_2_other_errors_1(store: Path) -> None:
    bad_flag = run("--store", str(store), "db", "list", "--no-such-option")
    assert bad_flag.exit_code == 2  # click's own
    ours = run("--store", str(store), "backup", str(store / "b"), "--incremental", "--onto", "x")
    assert (ours.exit_code, ours.output) == (2, "ERROR: use --incremental (onto LATEST) or --onto SUBDIR, not both\n")
    duration = run("init", str(store.parent / "t"), "--rotation-period", "soon")
    assert duration.exit_code == 2 and duration.output.startswith("ERROR: invalid duration 'soon'")
    assert run("--store", str(store), "db", "create", "app").exit_code == 0
    again = run("--store", str(store), "db", "create", "app")
    assert (again.exit_code, again.output) == (1, 'ERROR: database "app" already exists\n')


def test_ctrl_c_exits_130_without_a_traceback(store: Path, tmp_path: Path) -> None:
    """A real SIGINT through a terminal, once the command is demonstrably waiting (at its passphrase prompt)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "STRONGROOM_STORE": str(store)}
    env.pop("STRONGROOM_PASSPHRASE", None)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "strongroom.cli", "backup", str(tmp_path / "b"), "--passphrase"],
        env=env,
        encoding="utf-8",
        timeout=30,
    )
    child.expect_exact("Passphrase:")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130, child.before
    assert "ERROR: interrupted" in child.before and "Traceback" not in child.before


def test_ctrl_c_during_a_backup_exits_130(store: Path, tmp_path: Path) -> None:
    """SIGINT in the middle of a long backup, sent once its lock shows in the collection (so the
    backup has started writing): the job is canceled, exit status 130, no traceback, LATEST never
    written, and nothing of the layer left."""
    import signal
    import subprocess
    import time

    s = open_store(store)
    s.create_database("big")
    conn = s.connect("big")
    conn.execute("CREATE TABLE t(b BLOB)")
    conn.execute(  # random bytes: zstd cannot shrink them, so the backup takes a while
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 3000) "
        "INSERT INTO t SELECT randomblob(65536) FROM c"
    )
    conn.close()
    collection = tmp_path / "big"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "strongroom.cli", "backup", str(collection), "--store", str(store), "--passphrase"],
        env={**env, "STRONGROOM_PASSPHRASE": "ctrl-c-test"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any(collection.glob("*/*/*/BACKUP-LOCK-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, errout = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, errout)
    assert errout.decode().strip().endswith("ERROR: job canceled by user") and b"Traceback" not in errout
    assert not (collection / "metadata").exists()  # LATEST never moved
    assert not [p for p in collection.rglob("*") if p.is_file()]


# -- 5: missing extras ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("google.cloud.storage", "gcp"),
        ("pkcs11", "hsm"),
        ("boto3", "aws"),
        ("obstore", "aws"),
        ("azure.identity", "azure"),
    ],
)
def test_a_missing_extra_gives_a_pip_hint_not_a_traceback(
    store: Path, monkeypatch: pytest.MonkeyPatch, module: str, extra: str
) -> None:
    def missing(*args: object, **kw: object) -> None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    monkeypatch.setattr("strongroom.store.Store.databases", missing)
    result = run("--store", str(store), "db", "list")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("ERROR: ") and f"pip install 'strongroom[{extra}]'" in result.output
    assert import_hint(ModuleNotFoundError("No module named 'x'", name="x")).endswith("(pip install strongroom)")


# -- 6: tables fit the terminal -------------------------------------------------------------------------
def test_tables_fit_the_terminal_width(store: Path, tmp_path: Path) -> None:
    for name in ("a_database_whose_name_is_long_for_a_narrow_terminal_x", "app"):
        assert run("--store", str(store), "db", "create", name).exit_code == 0
    wide = run("--store", str(store), "db", "list").output
    assert max(len(line) for line in wide.splitlines()) > 60  # no $COLUMNS, not a terminal: unchanged
    out = run("--store", str(store), "db", "list", env={"COLUMNS": "60"}).output
    assert max(len(line) for line in out.splitlines()) <= 60, out
    lines = out.splitlines()
    assert lines[-1] == "(2 rows)"
    first_column = "".join(line.split("|")[0].strip() for line in lines[2:-1])
    assert first_column == "a_database_whose_name_is_long_for_a_narrow_terminal_xapp"  # wrapped, not cut
    csv = run("--store", str(store), "db", "list", "--format", "csv", env={"COLUMNS": "60"}).output
    assert "a_database_whose_name_is_long_for_a_narrow_terminal_x,local" in csv

    collection = tmp_path / ("a-collection-whose-path-is-long-enough-to-need-wrapping" * 2)
    assert run("--store", str(store), "backup", str(collection), "--include-unencrypted-data").exit_code == 0
    assert run("--store", str(store), "backup", str(collection), "--include-unencrypted-data").exit_code == 0
    shown = run("--store", str(store), "show", "backups", str(collection), env={"COLUMNS": "60"}).output
    assert max(len(line) for line in shown.splitlines()) <= 60, shown
    assert shown.splitlines()[-1] == "(2 rows)"
    backup = run("--store", str(store), "show", "backup", str(collection), env={"COLUMNS": "60"})
    assert backup.exit_code == 0, backup.output


# -- 7: relative collection paths -----------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["backups", "./backups", "sub/../backups"])
def test_relative_collection_paths_are_taken_from_the_cwd(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    s = open_store(store)
    s.create_database("app")
    s.connect("app").execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    result = run("--store", str(store), "backup", spelling, "--include-unencrypted-data")
    assert result.exit_code == 0, result.output
    assert (work / "backups").is_dir()
    shown = run("--store", str(store), "show", "backups", spelling, "--format", "csv")
    assert len(shown.output.splitlines()) == 2, shown.output
    restored = run("--store", str(store), "restore", spelling, "--database", "app", "--new-db-name", "copy")
    assert restored.exit_code == 0, restored.output
    assert "copy" in run("--store", str(store), "db", "list").output
    # a URI with a scheme is left alone
    assert run("--store", str(store), "backup", "nodelocal://1/b", "--include-unencrypted-data").exit_code == 0
    assert (store / "extern" / "b").is_dir()


# -- 8: help ------------------------------------------------------------------------------------------
def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):  # the top level loads its commands lazily
            sub = cmd.get_command(ctx, name)
            assert sub is not None, name
            out += _commands(sub, (*path, name))
    return out


def test_every_command_and_option_has_help() -> None:
    commands = _commands(main)
    assert len(commands) > 30
    for path, cmd in commands:
        assert (cmd.help or "").strip(), f"strongroom {' '.join(path)} has no help"
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"strongroom {' '.join(path)} {param.opts[0]} has no help"
        assert run(*path, "--help").exit_code == 0


def test_passphrase_help_says_what_it_is_for() -> None:
    def helps(*path: str) -> str:
        cmd: click.Command = main
        for name in path:
            assert isinstance(cmd, click.Group)
            sub = cmd.get_command(click.Context(cmd), name)
            assert sub is not None, name
            cmd = sub
        return " ".join(p.help or "" for p in cmd.params if p.name in ("passphrase", "passphrase_file", "kms"))

    for path in (("restore",), ("show", "backup")):
        text = helps(*path).lower()
        assert "encrypt " not in text and "encrypt" not in text.replace("decrypt", ""), text
        assert "decrypt" in text or "open" in text
    assert "Encrypt" in helps("backup")
    assert "DROP DATABASE" in run("db", "drop", "--help").output


# -- start-up cost ------------------------------------------------------------------------------------
def test_version_loads_no_engine() -> None:
    """`strongroom --version` imports the command group only: no store, engine, SQL grammar, web
    framework or cloud SDK (each costs tens of milliseconds at every start)."""
    probe = (
        "import sys\n"
        "from strongroom.cli import main\n"
        "try:\n"
        "    main.main(['--version'], prog_name='strongroom')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('strongroom.store', 'strongroom.backup', 'strongroom.sql', 'lark', 'fastapi', 'boto3', 'rich')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {h.split('.')[0] for h in heavy}"
        " and any(m == h or m.startswith(h + '.') for h in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]", out


def test_store_sql_without_importing_the_sql_layer(tmp_path: Path) -> None:
    """The store loads its SQL layer on first use, whatever the caller imported."""
    probe = (
        "import sys\n"
        "from strongroom.store import Store\n"
        "assert 'strongroom.sql' not in sys.modules\n"
        f"store = Store.init({str(tmp_path / 's')!r}, regions=['r1'])\n"
        "print(store.execute('SHOW DATABASES').columns)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "database_name" in out.stdout
