"""The one cloud layer (strongroom/cloud/): the same credentials rules for storage and KMS, against real servers;
the one scrubber; and the hints for missing optional extras."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

pytest.register_assert_rewrite("cloud_servers")

from cloud_servers import CloudTarget  # noqa: E402

import strongroom.kms.aws  # noqa: E402  (registers the schemes)
import strongroom.kms.gcp  # noqa: E402
import strongroom.storage.gcs  # noqa: E402
import strongroom.storage.s3  # noqa: E402, F401
from strongroom.cloud.scrub import forget_secret, register_secret, scrub  # noqa: E402
from strongroom.errors import MIN_SECRET_LENGTH, UsageError  # noqa: E402
from strongroom.kms import open_kms  # noqa: E402
from strongroom.storage import open_storage  # noqa: E402
from strongroom.uri import REDACTED, SECRET_PARAMS  # noqa: E402

pytest_plugins = ("kms_servers", "cloud_servers")

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "123456789012"
GCP_KEY = "projects/p/locations/global/keyRings/r/cryptoKeys/k"


def _sts_external_ids() -> list[str | None]:
    """The external ids moto's STS (running in this process) received with AssumeRole, in order."""
    from moto.sts.models import sts_backends

    return [role.external_id for role in sts_backends[ACCOUNT]["aws"].assumed_roles]


# -- AWS: ASSUME_ROLE chains with external ids, the same for S3 storage and the AWS KMS --------------------------------
def test_s3_assume_role_chain_with_external_ids_reaches_sts(moto_s3: CloudTarget) -> None:
    ext1, ext2 = f"ext-{uuid.uuid4().hex}", f"ext-{uuid.uuid4().hex}"
    roles = (
        f"arn:aws:iam::{ACCOUNT}:role/delegate;external_id={ext1},arn:aws:iam::{ACCOUNT}:role/backup;external_id={ext2}"
    )
    storage = open_storage(moto_s3.uri(f"t/{uuid.uuid4().hex}", ASSUME_ROLE=roles))
    storage.put("via-roles", b"ok", create_only=True)
    assert storage.get("via-roles") == b"ok"
    assert _sts_external_ids()[-2:] == [ext1, ext2]


def test_aws_kms_assume_role_external_id_reaches_sts(moto_kms: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_kms)
    client = boto3.client(
        "kms", endpoint_url=moto_kms, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    ext = f"ext-{uuid.uuid4().hex}"
    kms = open_kms(
        f"aws:///{key_id}?AWS_ACCESS_KEY_ID=t&AWS_SECRET_ACCESS_KEY=t&REGION=us-east-1"
        f"&AWS_ENDPOINT={moto_kms}&ASSUME_ROLE=arn:aws:iam::{ACCOUNT}:role/backup;external_id={ext}"
    )
    assert kms.decrypt(kms.encrypt(b"k" * 32)) == b"k" * 32
    assert _sts_external_ids()[-1] == ext


def test_s3_and_kms_refuse_the_same_bad_role_option(moto_s3: CloudTarget) -> None:
    with pytest.raises(UsageError, match="unknown ASSUME_ROLE option 'session'") as from_storage:
        open_storage(moto_s3.uri("x", ASSUME_ROLE="arn:x;session=y"))
    with pytest.raises(UsageError, match="unknown ASSUME_ROLE option 'session'") as from_kms:
        open_kms("aws:///k?AWS_ACCESS_KEY_ID=a&AWS_SECRET_ACCESS_KEY=b&REGION=us-east-1&ASSUME_ROLE=arn:x;session=y")
    assert str(from_storage.value) == str(from_kms.value)


# -- GCP: one policy on credential types ------------------------------------------------------------------------------
def test_gcs_refuses_external_account_exactly_like_the_gcp_kms(gcs_emulator: CloudTarget) -> None:
    # An external_account config may name any URL for google-auth to fetch; neither storage nor KMS loads one.
    config = {"type": "external_account", "credential_source": {"url": "http://169.254.169.254/x"}}
    encoded = base64.b64encode(json.dumps(config).encode()).decode()
    with pytest.raises(UsageError) as from_storage:
        open_storage(gcs_emulator.uri("x", CREDENTIALS=encoded))
    with pytest.raises(UsageError) as from_kms:
        open_kms(f"gs:///{GCP_KEY}?CREDENTIALS={encoded}")
    assert str(from_storage.value) == str(from_kms.value)
    assert "CREDENTIALS of type 'external_account' are not supported" in str(from_storage.value)


# -- the scrubber -----------------------------------------------------------------------------------------------------
def test_scrub_by_position() -> None:
    text = (
        "failed: s3://b/p?AWS_ACCESS_KEY_ID=AKIA&AWS_SECRET_ACCESS_KEY=s3cr3t+/x&AUTH=specified "
        "then gs://b?CREDENTIALS=eyJ0 and https://user:hunter2@host/p and 'BEARER_TOKEN=ya29.tok'"
    )
    out = scrub(text)
    for secret in ("s3cr3t+/x", "eyJ0", "hunter2", "ya29.tok"):
        assert secret not in out
    assert "AWS_ACCESS_KEY_ID=AKIA" in out and "AUTH=specified" in out and "https://user:redacted@host/p" in out


def test_scrub_by_registered_value() -> None:
    secret = f"registered-{uuid.uuid4().hex}"
    register_secret(secret)
    try:
        assert scrub(f"backend said: {secret}!") == f"backend said: {REDACTED}!"
    finally:
        forget_secret(secret)
    assert secret in scrub(secret)


@given(
    secret=st.text(min_size=MIN_SECRET_LENGTH, max_size=24),
    others=st.lists(st.text(min_size=4, max_size=8), max_size=3),
    parts=st.lists(st.text(max_size=20), max_size=5),
)
def test_a_registered_secret_never_survives_scrubbing(secret: str, others: list[str], parts: list[str]) -> None:
    # A secret inside the marker itself cannot be told apart from the marker.
    assume(secret not in REDACTED and not any(o in REDACTED for o in others))
    register_secret(secret)
    text = secret.join(parts) + "".join(others) + secret[: len(secret) // 2]
    try:
        out = scrub(text, others)
    finally:
        forget_secret(secret)  # random values must not stay registered for the rest of the suite
    assert secret not in out
    assert not any(o in out for o in others)


def test_secret_param_names_have_one_source_of_truth() -> None:
    for name in SECRET_PARAMS:
        assert scrub(f"x?{name}=value-{name}") == f"x?{name}={REDACTED}"


# -- missing optional extras: a hint, never a traceback ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("blocked", "uri", "extra"),
    [
        ("google.cloud.storage", "gs://bucket/p?AUTH=implicit", "gcp"),
        ("obstore", "s3://bucket/p?AWS_ACCESS_KEY_ID=a&AWS_SECRET_ACCESS_KEY=b", "aws"),
        ("obstore", "azure://c/p?AZURE_ACCOUNT_NAME=a&AZURE_ACCOUNT_KEY=a2V5", "azure"),
        ("boto3", "aws:///k?AUTH=implicit&REGION=us-east-1", "aws"),
        ("pkcs11", "pkcs11:token=t;object=k?module-path=/nonexistent.so&pin-value=1", "hsm"),
        ("azure.identity", "azure-kms:///k/1?AZURE_VAULT_NAME=v&AUTH=implicit", "azure"),
        ("google.cloud.kms_v1", f"gs:///{GCP_KEY}?BEARER_TOKEN=t", "gcp"),
        ("hvac", "vault:///transit/keys/k?VAULT_ADDR=https://vault.example:8200&VAULT_TOKEN=t", "vault"),
    ],
)
def test_missing_extra_names_the_pip_install(blocked: str, uri: str, extra: str) -> None:
    # The child process cannot import the SDK (sys.modules[name] = None makes ``import`` raise ImportError).
    child = f"""
import sys
sys.modules[{blocked!r}] = None
from strongroom.errors import StrongroomError
uri = {uri!r}
try:
    if uri.startswith(("gs://", "s3://", "azure://")) and not uri.startswith("gs:///"):  # gs:/// is the KMS
        import strongroom.storage.azure, strongroom.storage.gcs, strongroom.storage.s3
        from strongroom.storage import open_storage
        open_storage(uri)
    else:
        import strongroom.kms.aws, strongroom.kms.azure, strongroom.kms.gcp, strongroom.kms.pkcs11
        from strongroom.kms import open_kms
        open_kms(uri).encrypt(b"k" * 32)
except StrongroomError as exc:
    print(type(exc).__name__, exc)
    sys.exit(3)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 3, done.stderr
    assert f"pip install 'strongroom[{extra}]'" in done.stdout
    assert "Traceback" not in done.stderr
