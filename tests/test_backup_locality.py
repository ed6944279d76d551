"""Locality-aware backups: each database's files go to the location of its home region."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import MARKER, table_rows

from strongroom import Store, init_store
from strongroom.errors import EncryptionError, IntegrityError, UsageError

DEFAULT = "nodelocal://1/main?COCKROACH_LOCALITY=default"
WEST = "nodelocal://1/west?COCKROACH_LOCALITY=region%3Dus-west1"
BOTH = f"('{DEFAULT}', '{WEST}')"
PW = "WITH encryption_passphrase = 'pw'"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A two-region store: databases live in us-east1 (the primary region) or us-west1."""
    return init_store(tmp_path / "store", regions=["us-east1", "us-west1"])


def _fill(store: Store) -> None:
    store.execute('CREATE DATABASE west_db PRIMARY REGION "us-west1"')
    store.execute("CREATE DATABASE home_db")
    for db in ("west_db", "home_db"):
        store.execute(f"USE {db}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        store.execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000) "
            f"INSERT INTO t(v) SELECT '{MARKER}-{db}-' || i FROM s"
        )


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_each_region_to_its_location_and_restore_from_all(store: Store) -> None:
    _fill(store)
    store.execute(f"BACKUP INTO {BOTH} {PW}")
    main, west = store.extern_dir / "main", store.extern_dir / "west"
    main_files, west_files = _files(main), _files(west)
    # The manifest, ENCRYPTION-INFO and LATEST live at the default location only.
    assert any(f.endswith("/BACKUP_MANIFEST") for f in main_files) and any(
        f.startswith("metadata/latest/") for f in main_files
    )
    assert not any("BACKUP_MANIFEST" in f or "ENCRYPTION-INFO" in f or "LATEST" in f for f in west_files)
    assert any("/BACKUP_PART_1_region_us-west1" in f for f in west_files)
    assert any(f.endswith("-region-us-west1.pack") for f in west_files)
    assert not any(f.endswith(".pack") and "region" in f for f in main_files)

    store.execute("USE west_db; UPDATE t SET v = 'changed' WHERE id <= 10")
    store.execute(f"BACKUP INTO LATEST IN {BOTH} {PW}")
    shown = store.execute(f"SHOW BACKUP LATEST IN {BOTH} WITH encryption_passphrase = 'pw', check_files")
    assert {r[4] for r in shown.rows} == {"full", "incremental"}

    # The default location alone cannot restore a database whose files are elsewhere.
    store.execute("USE home_db")
    store.execute("DROP DATABASE west_db; DROP DATABASE home_db")
    with pytest.raises(IntegrityError) as exc:
        store.execute(f"RESTORE FROM LATEST IN '{DEFAULT}' {PW}")
    assert str(exc.value).startswith('backup files are stored in locality "region=us-west1", but no URI with')
    assert store.databases() == []

    store.execute(f"RESTORE FROM LATEST IN {BOTH} {PW}")
    assert store.execute("SHOW DATABASES").rows == [("home_db", None), ("west_db", "us-west1")]
    assert table_rows(store, "west_db", "t")[0][1] == "changed"
    assert len(table_rows(store, "home_db", "t")) == 3000


def test_partition_descriptor_is_checked(store: Store) -> None:
    _fill(store)
    store.execute(f"BACKUP INTO {BOTH} {PW}")
    [part] = [p for p in (store.extern_dir / "west").rglob("BACKUP_PART_*")]
    part.write_bytes(part.read_bytes()[:-1] + bytes([part.read_bytes()[-1] ^ 1]))
    with pytest.raises(EncryptionError, match="BACKUP_PART_1_region_us-west1: failed to decrypt"):
        store.execute(f"SHOW BACKUP LATEST IN {BOTH} WITH encryption_passphrase = 'pw', check_files")


@pytest.mark.parametrize(
    ("into", "message"),
    [
        (f"'{WEST}'", "COCKROACH_LOCALITY region=us-west1 is invalid for a single BACKUP location"),
        (
            "('nodelocal://1/a', 'nodelocal://1/b')",
            "multiple URLs are provided for partitioned BACKUP, but COCKROACH_LOCALITY is not specified",
        ),
        (
            "('nodelocal://1/a?COCKROACH_LOCALITY=region%3Dx', 'nodelocal://1/b?COCKROACH_LOCALITY=region%3Dy')",
            "no default URL provided for partitioned backup",
        ),
    ],
)
def test_cockroachdb_locality_errors(store: Store, into: str, message: str) -> None:
    _fill(store)
    with pytest.raises(UsageError) as exc:
        store.execute(f"BACKUP INTO {into} {PW}")
    assert str(exc.value) == message
    assert store.execute("SHOW JOBS").rows == []  # refused while planning: no job, nothing written


def test_restore_into_a_store_without_the_region_is_refused(store: Store, tmp_path: Path) -> None:
    _fill(store)
    store.execute(f"BACKUP INTO {BOTH} {PW}")
    other = init_store(tmp_path / "other")  # one region, "local"
    shutil.copytree(store.extern_dir / "main", other.extern_dir / "main")
    shutil.copytree(store.extern_dir / "west", other.extern_dir / "west")
    with pytest.raises(UsageError) as exc:
        other.execute(f"RESTORE DATABASE west_db FROM LATEST IN {BOTH} {PW}")
    assert str(exc.value) == (
        "detected a mismatch in regions between the restore cluster and the backup cluster, "
        'missing regions detected: us-west1.\nHINT: database "west_db" lives in region "us-west1"; '
        "this store's regions are local"
    )
    assert other.databases() == [] and other.database_region("west_db") is None
    other.execute(f"RESTORE DATABASE home_db FROM LATEST IN {BOTH} {PW}")
    assert len(table_rows(other, "home_db", "t")) == 3000
