"""ALTER BACKUP ... DROP KMS and ALTER BACKUP ... ROTATE DATA KEY: local, on S3 (moto), killed, canceled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import fill_bank, table_rows

from strongroom import Encryption, Store
from strongroom.backup import AlterBackupRequest, engine, layout
from strongroom.backup.keys import read_encryption_infos, unwrap_data_key
from strongroom.backup.rekey import ROTATING_PREFIX
from strongroom.cli import main
from strongroom.crypto import EncryptionInfo, kms_identity, unseal
from strongroom.errors import EncryptionError, JobCanceledError, UsageError
from strongroom.storage import open_storage

pytest_plugins = ("cloud_servers",)

COLL = "nodelocal://1/backups"


def coll_dir(store: Store) -> Path:
    return store.extern_dir / "backups"


def _chain(store: Store, kms: str, coll: str = COLL) -> None:
    """A full backup and two incrementals of ``bank`` under ``kms``."""
    fill_bank(store, accounts=400)
    enc = Encryption(kms=(kms,))
    store.backup(coll, encryption=enc)
    for what in ("DELETE FROM audit WHERE id % 2 = 0", "UPDATE accounts SET balance = balance + 1"):
        conn = store.connect("bank")
        with conn:
            conn.execute(what)
        conn.close()
        store.backup(coll, encryption=enc, incremental="LATEST")


def _snapshot(store: Store, coll: str, kms: str) -> dict[str, object]:
    """What a user can see of a collection: SHOW BACKUP's rows, and the restored tables."""
    enc = Encryption(kms=(kms,))
    shown = store.execute(f"SHOW BACKUP LATEST IN '{coll}' WITH kms = '{kms}'").rows
    name = f"r{time.monotonic_ns()}"
    store.restore(coll, encryption=enc, databases=["bank"], new_db_name=name)
    tables = {t: table_rows(store, name, t) for t in ("accounts", "audit")}
    store.drop_database(name)
    return {"show": shown, "tables": tables}


def _every_file(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# -------------------------------------------------------------------------------------------- DROP KMS


def test_drop_kms_removes_the_wrap_and_keeps_the_others(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, stranger = keys
    fill_bank(store, accounts=200)
    store.backup(COLL, encryption=Encryption(kms=(east, west)))
    store.alter_backup(COLL, new_kms=(stranger,), old_kms=(east,))  # ENCRYPTION-INFO-2 holds stranger
    before = _snapshot(store, COLL, west)
    written = store.drop_backup_kms(COLL, drop_kms=(west,), old_kms=(east,))
    assert written.endswith("/ENCRYPTION-INFO-3")
    [full] = store.show_backups(COLL)
    storage = open_storage(COLL, store.storage_context)
    infos = read_encryption_infos(storage, full)
    west_id = open_kms_identity(west)
    assert all(west_id not in info.encrypted_data_keys for _name, info in infos)
    assert len(infos[0][1].encrypted_data_keys) == 2  # east and stranger, in the new file
    with pytest.raises(EncryptionError, match="one of the provided URIs was not used"):
        store.restore(COLL, encryption=Encryption(kms=(west,)), databases=["bank"], new_db_name="viawest")
    assert _snapshot(store, COLL, east) == _snapshot(store, COLL, stranger)
    assert _snapshot(store, COLL, east)["tables"] == before["tables"]
    [job] = [j for j in store.jobs.list() if "DROP KMS" in j.description]
    assert job.status == "succeeded" and "ROTATE DATA KEY" in job.description


def open_kms_identity(uri: str) -> bytes:
    from strongroom.kms import open_kms

    kms = open_kms(uri)
    try:
        return kms_identity(kms.master_key_id)
    finally:
        kms.close()


def test_drop_kms_refuses_a_missing_key_and_the_last_wrap(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, stranger = keys
    fill_bank(store, accounts=50)
    store.backup(COLL, encryption=Encryption(kms=(east,)))
    with pytest.raises(EncryptionError) as missing:
        store.drop_backup_kms(COLL, drop_kms=(west,), old_kms=(east,))
    assert str(missing.value) == "KMS 'local:///west' has no wrap of this backup's data key: nothing to drop"
    with pytest.raises(UsageError, match="refusing to drop the last KMS wrap of this backup"):
        store.drop_backup_kms(COLL, drop_kms=(east,), old_kms=(east,))
    with pytest.raises(EncryptionError, match="no key in OLD_KMS matches"):
        store.drop_backup_kms(COLL, drop_kms=(east,), old_kms=(stranger,))
    assert sorted(p.name for p in coll_dir(store).rglob("ENCRYPTION-INFO*")) == ["ENCRYPTION-INFO"]
    store.backup("nodelocal://1/pw", encryption=Encryption(passphrase="pw-secret"))
    with pytest.raises(UsageError, match="encrypted with a passphrase"):
        store.drop_backup_kms("nodelocal://1/pw", drop_kms=(east,), old_kms=(east,))


def test_drop_kms_in_sql_and_cli(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, stranger = keys
    fill_bank(store, accounts=50)
    store.backup(COLL, encryption=Encryption(kms=(east, west, stranger)))
    result = store.execute(f"ALTER BACKUP LATEST IN '{COLL}' DROP KMS = '{stranger}' WITH OLD_KMS = '{east}'")
    assert result.columns == ("action", "written", "note")
    [(action, written, note)] = result.rows
    assert action == "drop kms" and str(written).endswith("ENCRYPTION-INFO-2") and "ROTATE DATA KEY" in str(note)
    out = CliRunner().invoke(
        main, ["alter-backup", COLL, "--store", str(store.path), "--drop-kms", west, "--old-kms", east]
    )
    assert out.exit_code == 0, out.output
    assert "ENCRYPTION-INFO-3" in out.output and "note: anyone who copied the old ENCRYPTION-INFO" in out.output
    with pytest.raises(EncryptionError, match="one of the provided URIs was not used"):
        _snapshot(store, COLL, west)
    assert _snapshot(store, COLL, east)["show"]


# ---------------------------------------------------------------------------------------- ROTATE DATA KEY


def _old_secrets(store: Store, coll: str, kms: str) -> tuple[bytes, list[bytes]]:
    """What an attacker kept before the rotation: the unwrapped data key and the ENCRYPTION-INFO files."""
    storage = open_storage(coll, store.storage_context)
    [full] = store.show_backups(coll)
    infos = read_encryption_infos(storage, full)
    key = unwrap_data_key(infos, (kms,))
    return key, [info.encode() for _name, info in infos]


def _assert_old_key_opens_nothing(
    storage_files: list[tuple[str, bytes]], old_key: bytes, old_infos: list[bytes]
) -> None:
    sealed = 0
    for name, data in storage_files:
        if data[:7] == b"encrypt":
            sealed += 1
            with pytest.raises(EncryptionError):
                unseal(old_key, data)
        if "ENCRYPTION-INFO" in name:
            now = EncryptionInfo.decode(data)
            for blob in old_infos:
                old = EncryptionInfo.decode(blob)
                assert not set(old.encrypted_data_keys.values()) & set(now.encrypted_data_keys.values())
    assert sealed > 5  # packs, indexes, manifests of three layers


def test_rotate_data_key_re_encrypts_the_whole_chain(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, _stranger = keys
    _chain(store, east)
    before = _snapshot(store, COLL, east)
    points = [p.end_time for p in _restore_points(store)]  # type: ignore[attr-defined]
    old_key, old_infos = _old_secrets(store, COLL, east)
    [old_full] = store.show_backups(COLL)
    new_full = store.rotate_backup_key(COLL, old_kms=(east,), new_kms=(west,))
    assert store.show_backups(COLL) == [new_full] and new_full != old_full
    assert not (coll_dir(store) / old_full.strip("/")).exists()
    assert not (coll_dir(store) / layout.incrementals_prefix(old_full)).exists()
    with pytest.raises(EncryptionError, match="one of the provided URIs was not used"):
        _snapshot(store, COLL, east)
    assert _snapshot(store, COLL, west) == before
    # Restore points keep their times: SHOW BACKUP's (from the manifests) above, and the dir names'
    # (retention's clock): the incrementals' exactly, the full's moved by the 10 ms of its new name.
    after = [p.end_time for p in _restore_points(store)]  # type: ignore[attr-defined]
    assert after[1:] == points[1:] and 0 < (after[0] - points[0]).total_seconds() < 1
    files = [(str(p), p.read_bytes()) for p in _every_file(coll_dir(store))]
    _assert_old_key_opens_nothing(files, old_key, old_infos)
    [report] = store.backups.check(COLL, Encryption(kms=(west,)), read_data=True)
    assert report.status == "ok" and report.layers == 3
    assert not list(coll_dir(store).rglob(f"{ROTATING_PREFIX}*")) and not list(coll_dir(store).rglob("BACKUP-LOCK-*"))
    # The rotated chain goes on: an incremental under the new key, restorable.
    conn = store.connect("bank")
    with conn:
        conn.execute("DELETE FROM accounts WHERE id > 100")
    conn.close()
    store.backup(COLL, encryption=Encryption(kms=(west,)), incremental="LATEST")
    assert len(_snapshot(store, COLL, west)["tables"]["accounts"]) == 100  # type: ignore[index]
    [job] = [j for j in store.jobs.list() if "ROTATE DATA KEY" in j.description]
    assert job.job_type == "ALTER BACKUP" and job.status == "succeeded"


def _restore_points(store: Store, coll: str = COLL) -> list[object]:
    from strongroom.backup.lifecycle import restore_points

    storage = open_storage(coll, store.storage_context)
    return list(restore_points(storage)[0])


def test_rotate_an_older_chain_and_in_sql(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, _stranger = keys
    fill_bank(store, accounts=100)
    store.backup(COLL, encryption=Encryption(kms=(east,)))
    time.sleep(0.02)  # two fulls need two subdir names (10 ms apart)
    store.backup(COLL, encryption=Encryption(kms=(west,)))
    older, newer = store.show_backups(COLL)
    rows = store.execute(
        f"ALTER BACKUP '{older}' IN '{COLL}' ROTATE DATA KEY WITH OLD_KMS = '{east}', NEW_KMS = ('{east}', '{west}')"
    ).rows
    [(action, rotated, note)] = rows
    assert action == "rotate data key" and "old key and its wraps open nothing" in str(note)
    assert store.show_backups(COLL) == [rotated, newer] and older < rotated < newer
    # LATEST still names the newer chain, and the rotated one opens with either key.
    assert layout.read_latest(open_storage(COLL, store.storage_context)) == newer
    for kms in (east, west):
        store.restore(
            COLL, subdir=str(rotated), encryption=Encryption(kms=(kms,)), databases=["bank"], new_db_name=f"x{kms[-4:]}"
        )


def test_rotate_refuses_passphrase_chains_and_wrong_keys(store: Store, keys: tuple[str, str, str]) -> None:
    east, _west, stranger = keys
    fill_bank(store, accounts=20)
    store.backup(COLL, encryption=Encryption(kms=(east,)))
    with pytest.raises(EncryptionError, match="no key in OLD_KMS matches"):
        store.rotate_backup_key(COLL, old_kms=(stranger,))
    store.backup("nodelocal://1/pw", encryption=Encryption(passphrase="pw-secret"))
    with pytest.raises(UsageError, match="encrypted with a passphrase: rotate it with old_encryption_passphrase"):
        store.rotate_backup_key("nodelocal://1/pw", old_kms=(east,))
    with pytest.raises(UsageError, match="encrypted with KMS keys: rotate it WITH OLD_KMS"):
        store.rotate_backup_key(COLL, old_passphrase="pw-secret", new_passphrase="other")
    with pytest.raises(UsageError, match="one of ADD NEW_KMS, DROP KMS or ROTATE DATA KEY"):
        AlterBackupRequest(in_=(COLL,), old_kms=(east,), drop_kms=(east,), rotate=True)
    assert [p.name for p in coll_dir(store).rglob("BACKUP_MANIFEST")] == ["BACKUP_MANIFEST"]


def test_rotate_in_the_cli(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, _stranger = keys
    _chain(store, east)
    before = _snapshot(store, COLL, east)
    out = CliRunner().invoke(
        main,
        ["alter-backup", COLL, "--store", str(store.path), "--rotate-data-key", "--old-kms", east, "--new-kms", west],
    )
    assert out.exit_code == 0, out.output
    assert out.output.startswith("rotated: /")
    assert _snapshot(store, COLL, west) == before


def test_cancel_rotate_leaves_the_old_chain_and_no_new_files(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, _stranger = keys
    _chain(store, east)
    before = _snapshot(store, COLL, east)
    files_before = sorted(str(p) for p in _every_file(coll_dir(store)))
    asked = threading.Event()

    def cancel_on_first_progress(done: int, total: int, what: str) -> None:
        if not asked.is_set():
            [job] = [j for j in store.jobs.list() if j.status == "running" and j.job_type == "ALTER BACKUP"]
            store.execute(f"CANCEL JOB {job.job_id}")
            asked.set()

    request = AlterBackupRequest(in_=(COLL,), old_kms=(east,), new_kms=(west,), rotate=True)
    with pytest.raises(JobCanceledError):
        store.backups.alter(request, cancel_on_first_progress)
    assert asked.is_set()
    assert sorted(str(p) for p in _every_file(coll_dir(store))) == files_before
    assert _snapshot(store, COLL, east) == before
    [job] = [j for j in store.jobs.list() if "ROTATE DATA KEY" in j.description]
    assert job.status == "canceled"


def test_rotate_and_drop_on_s3(store: Store, keys: tuple[str, str, str], request: pytest.FixtureRequest) -> None:
    east, west, stranger = keys
    cloud = request.getfixturevalue("moto_s3")
    coll = cloud.uri(f"rekey-{time.monotonic_ns()}")
    _chain(store, east, coll)
    before = _snapshot(store, coll, east)
    store.alter_backup(coll, new_kms=(stranger,), old_kms=(east,))
    store.drop_backup_kms(coll, drop_kms=(stranger,), old_kms=(east,))
    with pytest.raises(EncryptionError, match="one of the provided URIs was not used"):
        _snapshot(store, coll, stranger)
    old_key, old_infos = _old_secrets(store, coll, east)
    new_full = store.rotate_backup_key(coll, old_kms=(east,), new_kms=(west,))
    assert store.show_backups(coll) == [new_full]
    assert _snapshot(store, coll, west) == before
    storage = open_storage(coll, store.storage_context)
    files = [(name, storage.get(name)) for name, _size in storage.list("")]
    _assert_old_key_opens_nothing(files, old_key, old_infos)
    base = ["alter-backup", coll, "--store", str(store.path), "--old-kms", west]
    failed = CliRunner().invoke(main, [*base, "--drop-kms", east])  # not a key of the rotated chain
    assert failed.exit_code == 1 and "has no wrap of this backup's data key" in failed.output
    rotated = CliRunner().invoke(main, [*base, "--rotate-data-key"])
    assert rotated.exit_code == 0, rotated.output
    for output in (failed.output, rotated.output):
        assert cloud.secret not in output
    for job in store.jobs.list():  # no credential in any job
        assert cloud.secret not in job.description and cloud.secret not in (job.error or "")


# ---------------------------------------------------------------------------------------------- kill -9

CHILD = textwrap.dedent(
    """
    import sys
    from strongroom import open_store
    store = open_store(sys.argv[1])
    store.rotate_backup_key("nodelocal://1/backups", old_kms=("local:///east",))
    print("finished")
    """
)


def _big_chain(store: Store) -> None:
    store.create_database("bank")
    conn = store.connect("bank")
    conn.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, b BLOB)")
    conn.execute("CREATE TABLE audit(id INTEGER PRIMARY KEY)")
    with conn:
        conn.execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 12000) "
            "INSERT INTO accounts(b) SELECT randomblob(3000) FROM s"
        )
    enc = Encryption(kms=("local:///east",))
    store.backup(COLL, encryption=enc)
    with conn:
        conn.execute("UPDATE accounts SET b = randomblob(3000) WHERE id % 3 = 0")
    conn.close()
    store.backup(COLL, encryption=enc, incremental="LATEST")


def _kill_when(store: Store, moment: Callable[[list[Path]], bool]) -> bool:
    """Start a rotation in a child; SIGKILL it as soon as storage shows ``moment``. True if killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if moment(_every_file(coll_dir(store))):
            proc.send_signal(signal.SIGKILL)
            break
    killed = proc.wait() == -signal.SIGKILL
    return killed


def _new_packs(old_full: str) -> Callable[[list[Path]], bool]:
    def seen(files: list[Path]) -> bool:
        return any(p.suffix == ".pack" and old_full.strip("/") not in str(p) for p in files)

    return seen


def _new_manifests(old_full: str, n: int) -> Callable[[list[Path]], bool]:
    def seen(files: list[Path]) -> bool:
        return sum(p.name == "BACKUP_MANIFEST" and old_full.strip("/") not in str(p) for p in files) >= n

    return seen


def _new_latest(count: int) -> Callable[[list[Path]], bool]:
    def seen(files: list[Path]) -> bool:
        return sum(p.name.startswith("LATEST-") for p in files) > count

    return seen


@pytest.mark.parametrize("moment", ["packs", "full-manifest", "incremental-manifest", "latest"])
def test_killed_rotation_leaves_a_collection_that_restores(
    store: Store, keys: tuple[str, str, str], moment: str
) -> None:
    east = keys[0]
    _big_chain(store)
    before = _snapshot(store, COLL, east)
    [old_full] = store.show_backups(COLL)
    old_key, old_infos = _old_secrets(store, COLL, east)
    latest_count = len(list((coll_dir(store) / layout.LATEST_DIR).iterdir()))
    when = {
        "packs": _new_packs(old_full),
        "full-manifest": _new_manifests(old_full, 1),
        "incremental-manifest": _new_manifests(old_full, 2),
        "latest": _new_latest(latest_count),
    }[moment]
    killed = _kill_when(store, when)
    # Whatever the moment, the collection restores, to the same rows, with the key it was given.
    assert _snapshot(store, COLL, east) == before
    # A rerun removes what the killed one left (a partial new generation, or the rest of the old
    # chain) and rotates.
    store.rotate_backup_key(COLL, old_kms=(east,))
    [full] = store.show_backups(COLL)
    old_dirs = [coll_dir(store) / old_full.strip("/"), coll_dir(store) / layout.incrementals_prefix(old_full)]
    assert full != old_full and not [f for d in old_dirs if d.exists() for f in _every_file(d)]
    assert not list(coll_dir(store).rglob("BACKUP-LOCK-*")) and not list(coll_dir(store).rglob(f"{ROTATING_PREFIX}*"))
    assert _snapshot(store, COLL, east) == before
    [report] = engine.check(COLL, Encryption(kms=(east,)), context=store.storage_context, read_data=True)
    assert report.status == "ok" and report.layers == 2
    files = [(str(p), p.read_bytes()) for p in _every_file(coll_dir(store))]
    _assert_old_key_opens_nothing(files, old_key, old_infos)
    assert killed or moment == "latest", "the rotation finished before the kill point was seen"


def test_drop_kms_interrupted_before_its_deletions_opens_and_a_rerun_finishes(
    store: Store, keys: tuple[str, str, str]
) -> None:
    east, west, _stranger = keys
    fill_bank(store, accounts=50)
    store.backup(COLL, encryption=Encryption(kms=(east, west)))
    [full] = store.show_backups(COLL)
    info = coll_dir(store) / full.strip("/") / "ENCRYPTION-INFO"
    kept = info.read_bytes()
    store.drop_backup_kms(COLL, drop_kms=(west,), old_kms=(east,))
    info.write_bytes(kept)  # the state a crash between the new file and the deletion leaves
    assert _snapshot(store, COLL, east)["show"]  # the remaining key opens it
    assert store.drop_backup_kms(COLL, drop_kms=(west,), old_kms=(east,)).endswith("ENCRYPTION-INFO-3")
    assert sorted(p.name for p in info.parent.glob("ENCRYPTION-INFO*")) == ["ENCRYPTION-INFO-2", "ENCRYPTION-INFO-3"]
    with pytest.raises(EncryptionError, match="one of the provided URIs was not used"):
        _snapshot(store, COLL, west)


def _copy_tree(src: Path, dst: Path) -> None:
    for f in _every_file(src):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())


def test_a_rotation_killed_after_its_switch_is_finished_by_the_next(store: Store, keys: tuple[str, str, str]) -> None:
    east = keys[0]
    _chain(store, east)
    before = _snapshot(store, COLL, east)
    [old_full] = store.show_backups(COLL)
    aside = store.path.parent / "aside"
    _copy_tree(coll_dir(store), aside)
    new_full = store.rotate_backup_key(COLL, old_kms=(east,))
    # Put the old chain back, with its marker: the state a kill right after LATEST moved leaves.
    for f in _every_file(aside):
        rel = f.relative_to(aside)
        if not str(rel).startswith(layout.LATEST_DIR) and not (coll_dir(store) / rel).exists():
            (coll_dir(store) / rel).parent.mkdir(parents=True, exist_ok=True)
            (coll_dir(store) / rel).write_bytes(f.read_bytes())
    (coll_dir(store) / old_full.strip("/") / f"{ROTATING_PREFIX}7").write_text(new_full)
    assert store.show_backups(COLL) == [old_full, new_full]
    assert _snapshot(store, COLL, east) == before  # LATEST names the new chain
    store.rotate_backup_key(COLL, old_kms=(east,))
    [now] = store.show_backups(COLL)
    assert now > new_full and not _every_file(coll_dir(store) / old_full.strip("/"))
    assert _snapshot(store, COLL, east) == before


def test_a_forged_rotation_marker_deletes_nothing(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, _stranger = keys
    fill_bank(store, accounts=50)
    store.backup(COLL, encryption=Encryption(kms=(east,)))
    time.sleep(0.05)
    store.backup(COLL, encryption=Encryption(kms=(west,)))
    time.sleep(0.05)
    store.backup(COLL, encryption=Encryption(kms=(west,)))
    first, middle, last = store.show_backups(COLL)
    (coll_dir(store) / first.strip("/") / f"{ROTATING_PREFIX}1").write_text(last)  # not its twin
    store.rotate_backup_key(COLL, old_kms=(west,))
    fulls = store.show_backups(COLL)
    assert fulls[:2] == [first, middle] and len(fulls) == 3
    store.restore(COLL, subdir=first, encryption=Encryption(kms=(east,)), databases=["bank"], new_db_name="first")


def test_rotate_a_locality_aware_chain(tmp_path: Path, keys: tuple[str, str, str]) -> None:
    from strongroom import init_store

    east, west, _stranger = keys
    store = init_store(tmp_path / "regions", regions=["us-east1", "us-west1"])
    default = "nodelocal://1/main?COCKROACH_LOCALITY=default"
    both = f"('{default}', 'nodelocal://1/west?COCKROACH_LOCALITY=region%3Dus-west1')"
    store.execute('CREATE DATABASE west_db PRIMARY REGION "us-west1"')
    store.execute("USE west_db; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    store.execute("INSERT INTO t(v) SELECT randomblob(200) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3)")
    store.execute(f"BACKUP INTO {both} WITH kms = '{east}'")
    store.execute("UPDATE t SET v = randomblob(300) WHERE id = 2")
    store.execute(f"BACKUP INTO LATEST IN {both} WITH kms = '{east}'")
    rows = table_rows(store, "west_db", "t")
    west_dir = store.extern_dir / "west"
    old_west = sorted(str(p.relative_to(west_dir)) for p in _every_file(west_dir))
    store.execute(f"ALTER BACKUP LATEST IN {both} ROTATE DATA KEY WITH OLD_KMS = '{east}', NEW_KMS = '{west}'")
    new_west = sorted(str(p.relative_to(west_dir)) for p in _every_file(west_dir))
    assert new_west and not set(old_west) & set(new_west)  # the other location was rotated too
    shown = store.execute(f"SHOW BACKUP LATEST IN {both} WITH kms = '{west}', check_files")
    assert {r[4] for r in shown.rows} == {"full", "incremental"}
    store.execute(f"RESTORE DATABASE west_db FROM LATEST IN {both} WITH kms = '{west}', new_db_name = 'w2'")
    assert table_rows(store, "w2", "t") == rows
    store.close()


def test_rotate_a_passphrase_chain_to_a_new_passphrase(store: Store) -> None:
    coll = "nodelocal://1/pw"
    fill_bank(store, accounts=200)
    old_pass, new_pass = "old-secret-pass", "new-secret-pass"
    store.backup(coll, encryption=Encryption(passphrase=old_pass))
    conn = store.connect("bank")
    with conn:
        conn.execute("DELETE FROM audit")
    conn.close()
    store.backup(coll, encryption=Encryption(passphrase=old_pass), incremental="LATEST")
    store.restore(coll, encryption=Encryption(passphrase=old_pass), databases=["bank"], new_db_name="before")
    [old_full] = store.show_backups(coll)
    old_salt = (store.extern_dir / "pw" / old_full.strip("/") / "ENCRYPTION-INFO").read_bytes()
    with pytest.raises(EncryptionError):
        store.rotate_backup_key(coll, old_passphrase="wrong-pass", new_passphrase=new_pass)
    new_full = store.rotate_backup_key(coll, old_passphrase=old_pass, new_passphrase=new_pass)
    assert store.show_backups(coll) == [new_full]
    assert (store.extern_dir / "pw" / new_full.strip("/") / "ENCRYPTION-INFO").read_bytes() != old_salt
    with pytest.raises(EncryptionError):
        store.restore(coll, encryption=Encryption(passphrase=old_pass), databases=["bank"], new_db_name="x")
    store.restore(coll, encryption=Encryption(passphrase=new_pass), databases=["bank"], new_db_name="after")
    for table in ("accounts", "audit"):
        assert table_rows(store, "after", table) == table_rows(store, "before", table)
    request = AlterBackupRequest(in_=(coll,), rotate=True, old_passphrase=old_pass, new_passphrase=new_pass)
    assert old_pass not in repr(request) + request.describe() and new_pass not in repr(request) + request.describe()
    for job in store.jobs.list():  # no passphrase in any job, failed or not
        assert old_pass not in job.description + (job.error or "") and "wrong-pass" not in job.description


def test_a_partial_generation_left_by_another_host_does_not_block_a_rotation(
    store: Store, keys: tuple[str, str, str]
) -> None:
    east = keys[0]
    _chain(store, east)
    before = _snapshot(store, COLL, east)
    [old_full] = store.show_backups(COLL)
    # What a rotation killed on another host leaves: the next subdir, locked by an owner we cannot check.
    at = layout.end_time_of(old_full) + timedelta(milliseconds=10)
    partial = coll_dir(store) / layout.full_subdir(at).strip("/")
    partial.mkdir(parents=True)
    (partial / "BACKUP-LOCK-1").write_text('{"host": "elsewhere", "boot_id": "x", "pid": 1, "started": "1"}')
    (partial / "ENCRYPTION-INFO").write_bytes(b"")
    new_full = store.rotate_backup_key(COLL, old_kms=(east,))
    assert store.show_backups(COLL) == [new_full] and new_full > "/" + str(partial.relative_to(coll_dir(store)))
    assert (partial / "BACKUP-LOCK-1").exists()  # not ours to remove: prune's, after its grace period
    assert _snapshot(store, COLL, east) == before


def test_key_group_chains_are_refused_with_one_clear_error(store: Store, keys: tuple[str, str, str]) -> None:
    east, west, stranger = keys
    fill_bank(store, accounts=20)
    store.backup(COLL, encryption=Encryption(groups=((east,), (west,), (stranger,)), threshold=2))
    files = sorted(str(p) for p in _every_file(coll_dir(store)))
    with pytest.raises(UsageError, match="split across key groups: DROP KMS cannot remove a key from a group"):
        store.drop_backup_kms(COLL, drop_kms=(stranger,), old_kms=(east, west))
    with pytest.raises(UsageError, match="split across key groups: ROTATE DATA KEY does not rotate it yet"):
        store.rotate_backup_key(COLL, old_kms=(east, west))
    assert sorted(str(p) for p in _every_file(coll_dir(store))) == files


def test_a_write_only_chain_is_not_rotated(store: Store, tmp_path: Path) -> None:
    pyrage = pytest.importorskip("pyrage")
    ident = pyrage.x25519.Identity.generate()
    path = tmp_path / "backup.key"
    path.write_text(f"# test\n{ident}\n")
    public, private = f"age:///{ident.to_public()}", f"age:///?IDENTITY={path}"
    fill_bank(store, accounts=20)
    store.backup(COLL, encryption=Encryption(kms=(public,)))
    files = sorted(str(p) for p in _every_file(coll_dir(store)))
    with pytest.raises(
        UsageError, match=r"write-only chain \(public-key recipients\): ROTATE DATA KEY does not rotate"
    ):
        store.rotate_backup_key(COLL, old_kms=(private,))
    assert sorted(str(p) for p in _every_file(coll_dir(store))) == files
    assert str(ident) not in "".join(j.description + (j.error or "") for j in store.jobs.list())
