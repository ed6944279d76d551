"""Adding a region: the seed's limitation, "If you add a new region to a cluster with CMEK enabled,
the new region will not be automatically protected by the CMEK key." """

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MARKER, table_rows

from strongroom import Store, init_store
from strongroom.cli import main
from strongroom.errors import AlreadyExistsError, KMSError, UsageError
from strongroom.kms import create_key


def test_seed_a_new_region_is_not_automatically_protected_by_the_cmek(tmp_path: Path, _keyring: Path) -> None:
    create_key("cmek")
    store = init_store(tmp_path / "s", regions=["us-east1"], cmek="local:///cmek")
    store.add_region("eu-west1")
    status = {st.region: st for st in store.encryption_status()}
    assert (status["us-east1"].status, status["us-east1"].key_uri) == ("ENABLED", "local:///cmek")
    assert (status["eu-west1"].status, status["eu-west1"].cmek) == ("DISABLED", False)
    assert status["eu-west1"].key_uri == f"local:///strongroom-store-{store.id}"
    assert (_keyring / f"strongroom-store-{store.id}.key").exists()

    store.execute('CREATE DATABASE eu PRIMARY REGION "eu-west1"')
    store.execute(f"USE eu; CREATE TABLE t(v TEXT); INSERT INTO t VALUES ('{MARKER}')")
    # Without the CMEK the new region still opens: it is not protected by it.
    (_keyring / "cmek.key").rename(_keyring / "cmek.away")
    with pytest.raises(KMSError, match='cannot open region "us-east1"'):
        Store.open(tmp_path / "s")
    (_keyring / "cmek.away").rename(_keyring / "cmek.key")

    store.rotate_cmek({"eu-west1": "local:///cmek"})  # protect it (the API's PUT)
    reopened = Store.open(tmp_path / "s")
    assert [st.status for st in reopened.encryption_status()] == ["ENABLED", "ENABLED"]
    assert reopened.regions == ["us-east1", "eu-west1"]
    assert table_rows(reopened, "eu", "t") == [(MARKER,)]


def test_add_region_errors(store: Store) -> None:
    with pytest.raises(AlreadyExistsError) as exc:
        store.add_region("local")
    assert str(exc.value) == 'region "local" already exists'
    with pytest.raises(UsageError) as bad:
        store.add_region("no spaces")
    assert str(bad.value) == "invalid region name 'no spaces': use letters, digits, '-', '_' or '.' (max 63)"


def test_cli_region_add(tmp_path: Path, _keyring: Path) -> None:
    runner = CliRunner()
    create_key("cmek")
    assert runner.invoke(main, ["init", str(tmp_path / "s"), "--cmek", "local:///cmek"]).exit_code == 0
    result = runner.invoke(main, ["region", "add", "eu-west1", "--store", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    store_id = Store.open(tmp_path / "s").id
    assert result.output == (
        f"added region eu-west1: store key wrapped by local key file local:///strongroom-store-{store_id}\n"
        "NOTE: region eu-west1 is not protected by CMEK yet: strongroom cmek rotate --cmek eu-west1=<URI>\n"
    )


def test_a_database_created_by_another_process_is_found_in_its_home_region(tmp_path: Path) -> None:
    """Store metadata (the databases' home regions) is re-read when another process changed it."""
    first = init_store(tmp_path / "s", regions=["us-east1", "eu-west1"])
    second = Store.open(tmp_path / "s")  # e.g. `strongroom serve`, opened before the database existed
    first.execute('CREATE DATABASE eu PRIMARY REGION "eu-west1"')
    first.execute(f"USE eu; CREATE TABLE t(v TEXT); INSERT INTO t VALUES ('{MARKER}')")
    assert second.home_region("eu") == "eu-west1"
    assert table_rows(second, "eu", "t") == [(MARKER,)]
    second.drop_database("eu")
    assert first.database_region("eu") is None and first.databases() == []
