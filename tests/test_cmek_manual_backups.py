"""The seed's "Backup and restore operations on a cluster with CMEK", for manual backups.

"Manual backups are not automatically encrypted, but you can optionally encrypt a manual backup by
specifying an encryption key when you run the BACKUP command. Enabling CMEK has no impact on manual
backups." and "If the CMEK key is destroyed, the cluster's data can't be recovered or restored ...
from a manual backup to the same cluster. It may be possible to restore a manual backup to a new
cluster."
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import MARKER, fill_bank, table_rows

from strongroom import Encryption, Store, init_store
from strongroom.backup.keys import read_encryption_infos
from strongroom.crypto import EncryptionInfo
from strongroom.errors import KMSError
from strongroom.kms import create_key
from strongroom.storage import open_storage

PW = Encryption(passphrase="manual backup passphrase")
COLL = "nodelocal://1/manual"


def _infos(store: Store, full: str) -> list[EncryptionInfo]:
    storage = open_storage(COLL, store.storage_context)
    try:
        return [info for _name, info in read_encryption_infos(storage, full)]
    finally:
        storage.close()


def test_seed_enabling_cmek_has_no_impact_on_manual_backups(store: Store, _keyring: Path) -> None:
    fill_bank(store, accounts=300)
    before = table_rows(store, "bank", "accounts")
    store.backup(COLL, encryption=PW)  # an encrypted manual backup before CMEK
    # and one not encrypted at all: manual backups are the user's choice (given in so many words)
    store.backup("nodelocal://1/plain", include_unencrypted_data=True)
    create_key("cmek")
    store.enable_cmek({store.primary_region: "local:///cmek"})
    store.backup(COLL, encryption=PW, incremental="LATEST")  # the chain carries on with its passphrase
    [full] = store.show_backups(COLL)
    # The backup's keys come from its passphrase alone: ENCRYPTION-INFO holds a salt, no CMEK entry.
    [info] = _infos(store, full)
    assert len(info.salt) == 16 and info.encrypted_data_keys == {}
    assert not any(MARKER.encode() in p.read_bytes() for p in (store.extern_dir / "manual").rglob("*") if p.is_file())

    store.drop_database("bank")
    store.restore(COLL, encryption=PW)
    assert table_rows(store, "bank", "accounts") == before
    store.drop_database("bank")
    store.restore("nodelocal://1/plain")
    assert table_rows(store, "bank", "accounts") == before
    # A restored database is protected like any other: by the CMEK's current data key.
    [status] = store.encryption_status()
    [active] = [k for k in status.data_keys if k.active]
    assert active.under_cmek and active.files == 1


def test_seed_destroyed_cmek_no_restore_into_the_same_store_but_a_manual_backup_restores_to_a_new_one(
    tmp_path: Path, _keyring: Path
) -> None:
    create_key("cmek")
    store = init_store(tmp_path / "store", cmek="local:///cmek")
    fill_bank(store, accounts=300)
    expected = table_rows(store, "bank", "accounts")
    store.backup(str(tmp_path / "offsite"), encryption=PW)
    store.close()

    (_keyring / "cmek.key").unlink()  # the CMEK is destroyed
    with pytest.raises(KMSError) as exc:
        Store.open(tmp_path / "store")  # the same cluster cannot start, so nothing restores into it
    assert str(exc.value).startswith('cannot open region "local": its CMEK local:///cmek cannot decrypt the store key')

    fresh = init_store(tmp_path / "new-store")  # a new cluster, its own keys
    fresh.restore(str(tmp_path / "offsite"), encryption=PW)
    assert table_rows(fresh, "bank", "accounts") == expected
    shutil.rmtree(tmp_path / "offsite")
