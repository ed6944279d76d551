"""The seed's KMS statements through the real engine (``store.execute``) with cloud and HSM keys.

Key ids, credentials and endpoints differ from the seed; everything else is verbatim. The counting
fakes check the KMS cost: one Encrypt per KMS for a full backup, one Decrypt for a restore or an
incremental, never one per file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import fill_bank, table_rows

import strongroom
import strongroom.kms.aws
import strongroom.kms.gcp
import strongroom.kms.pkcs11
import strongroom.kms.vault  # registers the schemes (as do the three above)
from strongroom.errors import KMSError
from strongroom.kms import create_key, local_kms_uri
from strongroom.uri import redact

if TYPE_CHECKING:
    from kms_servers import AwsKmsServer, GcpKmsServer, SoftHSM, VaultServer

pytest_plugins = ("kms_servers",)  # the server fixtures
ACCOUNTS = 400


@pytest.fixture
def bank(tmp_path: Path) -> strongroom.Store:
    store = strongroom.init_store(tmp_path / "s")
    fill_bank(store, accounts=ACCOUNTS)
    return store


def restored_accounts(store: strongroom.Store, db: str = "bank") -> int:
    return len(table_rows(store, db, "accounts"))


def test_seed_aws_statements_single_and_multi_region(bank: strongroom.Store, aws_kms: AwsKmsServer) -> None:
    east, west = aws_kms.create_key("us-east-1"), aws_kms.create_key("us-west-1")
    single = aws_kms.uri(east.key_id)
    r = bank.execute(f"BACKUP INTO 'nodelocal://1/b' WITH kms = '{single}';")
    assert r.rows[0][1] == "succeeded"
    assert aws_kms.calls == {"Encrypt": 1}  # one data key per backup, wrapped once
    east_uri, west_uri = aws_kms.uri(east.key_id), aws_kms.uri(west.key_id, region="us-west-1")
    bank.execute(
        f"""BACKUP INTO 'nodelocal://1/multi'
    WITH KMS=(
      '{east_uri}',
      '{west_uri}'
    );"""
    )
    assert aws_kms.calls == {"Encrypt": 3}  # one Encrypt per KMS
    bank.execute("DROP DATABASE bank")
    r = bank.execute(f"RESTORE FROM LATEST IN 'nodelocal://1/b' WITH kms = '{single}';")
    assert r.rows[0][1] == "succeeded" and restored_accounts(bank) == ACCOUNTS
    assert aws_kms.calls["Decrypt"] == 1  # one unwrap for the whole restore, not one per file
    for i, uri in enumerate((east_uri, west_uri)):  # either region alone restores
        bank.execute(
            f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/multi' WITH kms = '{uri}', new_db_name = r{i}"
        )
        assert restored_accounts(bank, f"r{i}") == ACCOUNTS
    assert aws_kms.calls == {"Encrypt": 3, "Decrypt": 3}


def test_seed_gcp_statements_with_service_account(bank: strongroom.Store, gcp_kms: GcpKmsServer) -> None:
    name1 = gcp_kms.create_key(location="us-east1", ring="backups", key="k1")
    name2 = gcp_kms.create_key(location="us-west1", ring="backups", key="k2")
    creds = gcp_kms.service_account()
    one, two = gcp_kms.uri(name1, credentials=creds), gcp_kms.uri(name2, credentials=creds)
    bank.execute(f"BACKUP INTO 'nodelocal://1/gcp' WITH kms = '{one}';")
    bank.execute(f"BACKUP INTO 'nodelocal://1/gcp-multi' WITH KMS=('{one}', '{two}');")
    assert gcp_kms.calls["encrypt"] == 3
    bank.execute("DROP DATABASE bank")
    bank.execute(f"RESTORE FROM LATEST IN 'nodelocal://1/gcp' WITH kms = '{one}';")
    assert restored_accounts(bank) == ACCOUNTS
    versioned = gcp_kms.uri(name2 + "/cryptoKeyVersions/1", scheme="gcp-kms")  # same key, other spelling
    bank.execute(
        f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/gcp-multi' WITH kms = '{versioned}', new_db_name = g2"
    )
    assert restored_accounts(bank, "g2") == ACCOUNTS
    assert gcp_kms.calls["decrypt"] == 2


def test_mixed_schemes_any_one_restores(
    bank: strongroom.Store, aws_kms: AwsKmsServer, gcp_kms: GcpKmsServer, softhsm: SoftHSM
) -> None:
    softhsm.create_key("mixed-kek")
    aws = aws_kms.uri(aws_kms.create_key().key_id)
    gcp = gcp_kms.uri(gcp_kms.create_key(key="mixed"))
    hsm = softhsm.uri("mixed-kek")
    bank.execute(f"BACKUP INTO 'nodelocal://1/mixed' WITH KMS=('{aws}', '{gcp}', '{hsm}')")
    assert aws_kms.calls["Encrypt"] == gcp_kms.calls["encrypt"] == 1
    for i, uri in enumerate((aws, gcp, hsm)):
        bank.execute(
            f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/mixed' WITH kms = '{uri}', new_db_name = m{i}"
        )
        assert restored_accounts(bank, f"m{i}") == ACCOUNTS
    assert aws_kms.calls["Decrypt"] == gcp_kms.calls["decrypt"] == 1


def test_alter_backup_gcp_key_alone_restores_aws_chain(
    bank: strongroom.Store, aws_kms: AwsKmsServer, gcp_kms: GcpKmsServer
) -> None:
    aws = aws_kms.uri(aws_kms.create_key().key_id)
    gcp = gcp_kms.uri(gcp_kms.create_key(key="new"))
    bank.execute(f"BACKUP INTO 'nodelocal://1/c' WITH kms = '{aws}'")
    bank.execute("USE bank; UPDATE accounts SET balance = -7 WHERE id <= 50")
    bank.execute(f"BACKUP INTO LATEST IN 'nodelocal://1/c' WITH kms = '{aws}'")
    assert aws_kms.calls == {"Encrypt": 1, "Decrypt": 1}  # the incremental unwraps once, wraps nothing
    bank.execute(f"ALTER BACKUP LATEST IN 'nodelocal://1/c' ADD NEW_KMS = '{gcp}' WITH OLD_KMS = '{aws}'")
    assert aws_kms.calls["Decrypt"] == 2 and gcp_kms.calls["encrypt"] == 1
    aws_kms.stop()  # the old key is gone: the new one alone restores full + incremental
    bank.execute(f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/c' WITH kms = '{gcp}', new_db_name = viagcp")
    rows = table_rows(bank, "viagcp", "accounts")
    assert len(rows) == ACCOUNTS and sum(1 for r in rows if r[2] == -7) == 50
    assert gcp_kms.calls["decrypt"] == 1


def test_restore_falls_over_to_the_second_kms_and_names_all_when_down(
    bank: strongroom.Store, aws_kms: AwsKmsServer, gcp_kms: GcpKmsServer
) -> None:
    aws = aws_kms.uri(aws_kms.create_key().key_id, AWS_SESSION_TOKEN="sess-secret-9")
    gcp = gcp_kms.uri(gcp_kms.create_key(key="second"))
    bank.execute(f"BACKUP INTO 'nodelocal://1/f' WITH KMS=('{aws}', '{gcp}')")
    aws_kms.stop()
    bank.execute(
        f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/f' WITH KMS=('{aws}', '{gcp}'), new_db_name = ok"
    )
    assert restored_accounts(bank, "ok") == ACCOUNTS and gcp_kms.calls["decrypt"] == 1
    gcp_kms.stop()
    with pytest.raises(KMSError) as exc:
        bank.execute(
            f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/f' WITH KMS=('{aws}', '{gcp}'), new_db_name = no"
        )
    shown = str(exc.value)
    assert redact(aws) in shown and redact(gcp) in shown and shown.count("KMS unreachable") == 2
    for secret in ("sess-secret-9", "fake%2Fsecret", "fake/secret", "test-bearer-token"):
        assert secret not in shown


def test_vault_and_local_keys_either_one_restores(bank: strongroom.Store, vault: VaultServer) -> None:
    vault.create_key("backups")
    create_key("vault-pair")
    hv, local = vault.uri("backups", approle=True), local_kms_uri("vault-pair")
    bank.execute(f"BACKUP INTO 'nodelocal://1/v' WITH kms = ('{hv}', '{local}')")
    assert vault.calls["encrypt"] == 1
    # Vault rotates its key; an incremental unwraps the full backup's data key (version 1) and wraps nothing.
    vault.admin().secrets.transit.rotate_key("backups", mount_point="transit")
    bank.execute("USE bank; UPDATE accounts SET balance = -3 WHERE id <= 20")
    bank.execute(f"BACKUP INTO LATEST IN 'nodelocal://1/v' WITH kms = '{hv}'")
    assert (vault.calls["encrypt"], vault.calls["decrypt"]) == (1, 1)
    for name, uri in (("by_vault", hv), ("by_local", local)):
        bank.execute(f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/v' WITH kms = '{uri}', new_db_name = {name}")
        rows = table_rows(bank, name, "accounts")
        assert len(rows) == ACCOUNTS and sum(1 for r in rows if r[2] == -3) == 20
    assert vault.calls["decrypt"] == 2  # one unwrap for the Vault restore, none for the local one
    shown = bank.execute(f"SHOW BACKUP LATEST IN 'nodelocal://1/v' WITH kms = '{hv}'")
    assert shown.rows and vault.calls["decrypt"] == 3
    # Vault sealed: the local key alone still restores; with Vault alone the error names it, redacted.
    vault.sealed = True
    bank.execute(f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/v' WITH kms = '{local}', new_db_name = sealed")
    assert restored_accounts(bank, "sealed") == ACCOUNTS
    with pytest.raises(KMSError) as exc:
        bank.execute(f"RESTORE DATABASE bank FROM LATEST IN 'nodelocal://1/v' WITH kms = '{hv}', new_db_name = no")
    message = str(exc.value)
    assert redact(hv) in message and "Vault is sealed" in message
    jobs = str(bank.execute("SHOW JOBS").rows)
    assert "VAULT_SECRET_ID=redacted" in jobs  # the statements are listed, their credentials are not
    issued = [t for t in vault.tokens if t != vault.ROOT_TOKEN]
    for text in (message, jobs):
        assert issued and not any(secret in text for secret in (vault.SECRET_ID, *issued))
