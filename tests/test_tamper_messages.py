"""A tampered file is named as tampered; only a key that fails on what it must open is a wrong key."""

from __future__ import annotations

import pytest
from conftest import fill_bank

from strongroom import Encryption, EncryptionError, IntegrityError, Store

COLL = "nodelocal://1/t"


@pytest.mark.parametrize("enc", [Encryption(passphrase="tamper-test"), Encryption(kms=("local:///east",))])
def test_a_flipped_byte_in_a_pack_names_the_pack(store: Store, keys: tuple[str, str, str], enc: Encryption) -> None:
    fill_bank(store, accounts=2000)
    store.backup(COLL, encryption=enc)
    [pack] = sorted((store.extern_dir / "t").rglob("*.pack"))[:1]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as exc:
        store.restore(COLL, encryption=enc, databases=["bank"], new_db_name="copy")
    relative = pack.relative_to(store.extern_dir / "t").as_posix()
    assert str(exc.value) == f"backup file /{relative} failed authentication: tampered or corrupt"
    assert not store.has_database("copy")


def test_a_wrong_passphrase_is_still_called_a_wrong_key(store: Store) -> None:
    fill_bank(store, accounts=20)
    store.backup(COLL, encryption=Encryption(passphrase="right-one"))
    with pytest.raises(EncryptionError, match="failed to decrypt"):
        store.restore(COLL, encryption=Encryption(passphrase="wrong-one"), databases=["bank"], new_db_name="x")


def test_restore_with_verify_runs_the_full_integrity_check(store: Store) -> None:
    """The option is accepted from SQL and Python and shown in the job (what it detects that the
    default structural check does not: tests/test_sqlite_image.py)."""
    fill_bank(store, accounts=200)
    store.backup(COLL, encryption=Encryption(passphrase="verify-test"))
    r = store.execute(
        f"RESTORE DATABASE bank FROM LATEST IN '{COLL}' "
        "WITH encryption_passphrase = 'verify-test', new_db_name = 'checked', verify"
    )
    assert r.rows[0][1] == "succeeded"
    assert store.execute("SHOW JOBS").rows[-1][2].endswith("new_db_name = 'checked', verify)")
    restored = store.restore(
        COLL, encryption=Encryption(passphrase="verify-test"), databases=["bank"], new_db_name="b3", verify=True
    )
    assert restored.status == "succeeded"
