"""A disk that fills up during a backup: one clear error naming the file, no traceback, nothing left
behind, LATEST untouched. A real full file system: a small tmpfs mounted by the test (needs root,
as CI runs; skipped otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MARKER

from strongroom import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_backup_onto_a_full_disk_fails_cleanly(store: Store, small_disk: Path) -> None:
    store.create_database("big")
    conn = store.connect("big")
    conn.execute("CREATE TABLE t(note TEXT, b BLOB)")
    conn.execute(  # random bytes: zstd cannot make them fit in 3 MiB
        "WITH RECURSIVE x(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM x WHERE i < 200) "
        f"INSERT INTO t SELECT '{MARKER}', randomblob(65536) FROM x"
    )
    conn.close()
    collection = small_disk / "coll"
    done = subprocess.run(
        [sys.executable, "-m", "strongroom.cli", "backup", str(collection), "--store", str(store.path), "--passphrase"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "STRONGROOM_PASSPHRASE": "disk-full"},
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "During handling" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"ERROR: {collection}: no space left on device while writing 2")
    assert line.endswith(".pack") or line.endswith(".idx"), line
    assert [p for p in collection.rglob("*") if p.is_file()] == []  # no temp, lock or partial file
    assert not (collection / "metadata").exists()  # LATEST never written
