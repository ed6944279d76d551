"""The seed document's KMS examples as written: cloud storage *and* cloud KMS in one statement.

``BACKUP INTO 's3://...' WITH kms = 'aws:///...'`` against moto's S3 and our AWS KMS protocol
server; ``BACKUP INTO 'gs://...' WITH kms = 'gs:///projects/...'`` against gcp-storage-emulator and our
GCP KMS server. Only bucket names, key ids, credentials and endpoint parameters differ from the seed.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import fill_bank, table_rows

import strongroom

if TYPE_CHECKING:
    from cloud_servers import CloudTarget
    from kms_servers import AwsKmsServer, GcpKmsServer

pytest_plugins = ("cloud_servers", "kms_servers")
JOB_COLUMNS = ("job_id", "status", "fraction_completed", "rows", "index_entries", "bytes", "encryption")


@pytest.fixture
def bank(tmp_path: Path) -> strongroom.Store:
    store = strongroom.init_store(tmp_path / "s")
    fill_bank(store, accounts=2689)
    return store


def _all_output(store: strongroom.Store) -> str:
    return repr(store.execute("SHOW JOBS").rows)


def test_seed_aws_examples(bank: strongroom.Store, moto_s3: CloudTarget, aws_kms: AwsKmsServer) -> None:
    east, west = aws_kms.create_key("us-east-1"), aws_kms.create_key("us-west-1")
    bucket = moto_s3.uri(f"seed-{uuid.uuid4().hex[:8]}")
    multi = moto_s3.uri(f"seed-multi-{uuid.uuid4().hex[:8]}")
    kms = aws_kms.uri(east.key_id)
    # Take an encrypted backup
    r = bank.execute(f"""BACKUP INTO '{bucket}'
    WITH kms = '{kms}';""")
    assert r.columns == JOB_COLUMNS and r.rows[0][1] == "succeeded"
    # Take a backup with multi-region encryption
    bank.execute(f"""BACKUP INTO '{multi}'
    WITH KMS=(
      '{aws_kms.uri(east.key_id)}',
      '{aws_kms.uri(west.key_id, region="us-west-1")}'
    );""")
    # Restore from an encrypted backup
    bank.execute("DROP DATABASE bank")
    r = bank.execute(f"""RESTORE FROM LATEST IN '{bucket}'
    WITH kms = '{kms}';""")
    assert r.rows[0][1:4] == ("succeeded", 1.0, 2689 + 1344)
    bank.execute(
        f"RESTORE DATABASE bank FROM LATEST IN '{multi}' "
        f"WITH kms = '{aws_kms.uri(west.key_id, region='us-west-1')}', new_db_name = 'west'"
    )
    assert table_rows(bank, "west", "accounts") == table_rows(bank, "bank", "accounts")
    shown = _all_output(bank)
    assert moto_s3.secret not in shown and aws_kms.secret not in shown
    assert aws_kms.calls == {"Encrypt": 3, "Decrypt": 2}


def test_seed_gcp_examples(bank: strongroom.Store, gcs_emulator: CloudTarget, gcp_kms: GcpKmsServer) -> None:
    east = gcp_kms.create_key(project="proj", location="us-east1", ring="ring", key="backup")
    west = gcp_kms.create_key(project="proj", location="us-west1", ring="ring", key="backup")
    creds = gcp_kms.service_account()
    bucket = gcs_emulator.uri(f"seed-{uuid.uuid4().hex[:8]}")
    multi = gcs_emulator.uri(f"seed-multi-{uuid.uuid4().hex[:8]}")
    east_uri, west_uri = gcp_kms.uri(east, credentials=creds), gcp_kms.uri(west, credentials=creds)
    bank.execute(f"""BACKUP INTO '{bucket}'
    WITH kms = '{east_uri}';""")
    bank.execute(f"""BACKUP INTO '{multi}'
    WITH KMS=(
      '{east_uri}',
      '{west_uri}'
    );""")
    bank.execute("DROP DATABASE bank")
    r = bank.execute(f"""RESTORE FROM LATEST IN '{bucket}'
    WITH kms = '{east_uri}';""")
    assert r.rows[0][1] == "succeeded" and len(table_rows(bank, "bank", "accounts")) == 2689
    bank.execute(f"RESTORE DATABASE bank FROM LATEST IN '{multi}' WITH kms = '{west_uri}', new_db_name = 'west'")
    assert table_rows(bank, "west", "accounts") == table_rows(bank, "bank", "accounts")
    assert gcs_emulator.secret not in _all_output(bank)
