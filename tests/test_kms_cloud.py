"""Cloud and HSM KMS schemes against local servers speaking their real protocols (and moto, SoftHSM2)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strongroom.kms.aws
import strongroom.kms.azure
import strongroom.kms.gcp
import strongroom.kms.pkcs11
import strongroom.kms.vault  # noqa: F401  (registers the schemes)
from strongroom.backup.keys import Encryption, new_backup_keys
from strongroom.errors import KMSError, NotFoundError, StrongroomError, UsageError, forget_secret
from strongroom.kms import open_kms
from strongroom.kms.vault import KEY_FORM, key_version
from strongroom.uri import redact

if TYPE_CHECKING:
    from kms_servers import AwsKmsServer, AzureKeyVaultServer, GcpKmsServer, SoftHSM, VaultServer

pytest_plugins = ("kms_servers",)  # the server fixtures
DATA_KEY = bytes(range(32))


def engine_error(uri: str) -> str:
    """The message the backup engine shows when wrapping a data key with ``uri`` fails."""
    with pytest.raises(KMSError) as exc:
        new_backup_keys(Encryption(kms=(uri,)))
    return str(exc.value)


# -- AWS ---------------------------------------------------------------------------------------------


def test_aws_round_trip_on_moto_and_identity_is_the_path_as_written(moto_kms: str) -> None:
    import boto3

    client = boto3.client(
        "kms", endpoint_url=moto_kms, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    meta = client.create_key()["KeyMetadata"]
    client.create_alias(AliasName="alias/backups", TargetKeyId=meta["KeyId"])
    base = f"?AWS_ACCESS_KEY_ID=t&AWS_SECRET_ACCESS_KEY=t&REGION=us-east-1&AWS_ENDPOINT={moto_kms}"
    ids = []
    for scheme, key in (("aws", meta["KeyId"]), ("aws-kms", meta["Arn"]), ("aws", "alias/backups")):
        kms = open_kms(f"{scheme}:///{key}{base}")
        assert kms.decrypt(kms.encrypt(DATA_KEY)) == DATA_KEY
        ids.append(kms.master_key_id)
        kms.close()
    # A key id, its ARN and an alias are three identities, exactly as written (CockroachDB's rule).
    assert ids == [meta["KeyId"], meta["Arn"], "alias/backups"]


def test_aws_assume_role_chain_through_sts(moto_kms: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_kms)  # boto3's own per-service endpoint setting
    client = boto3.client(
        "kms", endpoint_url=moto_kms, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    roles = "arn:aws:iam::123456789012:role/delegate;external_id=ext-1,arn:aws:iam::123456789012:role/backup"
    kms = open_kms(
        f"aws:///{key_id}?AWS_ACCESS_KEY_ID=t&AWS_SECRET_ACCESS_KEY=t&REGION=us-east-1"
        f"&AWS_ENDPOINT={moto_kms}&ASSUME_ROLE={roles}"
    )
    assert kms.decrypt(kms.encrypt(DATA_KEY)) == DATA_KEY
    # The KMS client signs with the temporary credentials of the last role in the chain.
    assert kms._kms()._request_signer._credentials.access_key.startswith("ASIA")  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="unknown ASSUME_ROLE option 'session'"):
        open_kms(f"aws:///{key_id}?AUTH=implicit&REGION=us-east-1&ASSUME_ROLE=arn:x;session=y")


def test_aws_parameter_errors_are_cockroachdbs() -> None:
    cases = {
        "aws:///k?REGION=us-east-1&AWS_ACCESS_KEY_ID=a&AWS_SECRET_ACCESS_KEY=b&BUCKET=x&COLOR=y": (
            "unknown KMS query parameters: BUCKET, COLOR"
        ),
        "aws:///k?AWS_ACCESS_KEY_ID=a&AWS_SECRET_ACCESS_KEY=b": "aws kms REGION parameter not specified",
        "aws-kms:///k?REGION=us-east-1&AWS_SECRET_ACCESS_KEY=b": (
            "AUTH is set to 'specified', but AWS_ACCESS_KEY_ID is not set"
        ),
        "aws:///k?REGION=us-east-1&AUTH=specified&AWS_ACCESS_KEY_ID=a": (
            "AUTH is set to 'specified', but AWS_SECRET_ACCESS_KEY is not set"
        ),
        "aws:///k?REGION=us-east-1&AUTH=magic": "unsupported value magic for AUTH",
    }
    for uri, message in cases.items():
        with pytest.raises(UsageError) as exc:
            open_kms(uri)
        assert str(exc.value) == message


def test_aws_implicit_auth_and_spaces_in_secret(aws_kms: AwsKmsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    key = aws_kms.create_key()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", aws_kms.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    kms = open_kms(f"aws:///{key.key_id}?AUTH=implicit&REGION=us-east-1&AWS_ENDPOINT={aws_kms.url}")
    assert kms.decrypt(kms.encrypt(DATA_KEY)) == DATA_KEY
    # An unencoded '+' arrives as ' ' after query decoding and is turned back into '+'.
    raw = f"aws:///{key.key_id}?AWS_ACCESS_KEY_ID={aws_kms.access_key}&AWS_SECRET_ACCESS_KEY=a+b/c&REGION=us-east-1"
    creds = open_kms(raw + f"&AWS_ENDPOINT={aws_kms.url}")._kms()._request_signer._credentials  # type: ignore[attr-defined]
    assert creds.secret_key == "a+b/c"


def test_aws_key_states_access_denied_and_unreachable(aws_kms: AwsKmsServer) -> None:
    key = aws_kms.create_key()
    uri = aws_kms.uri(key.key_id)
    kms = open_kms(uri)
    blob = kms.encrypt(DATA_KEY)
    key.state = "Disabled"
    with pytest.raises(KMSError, match=r"Decrypt: DisabledException: .* is disabled\."):
        kms.decrypt(blob)
    key.state = "PendingDeletion"
    with pytest.raises(KMSError, match=r"Decrypt: KMSInvalidStateException: .* is pending deletion\."):
        kms.decrypt(blob)
    key.state, aws_kms.deny = "Enabled", True
    with pytest.raises(KMSError, match=r"Decrypt: AccessDeniedException: User: .* is not authorized"):
        kms.decrypt(blob)
    aws_kms.deny = False
    assert kms.decrypt(blob) == DATA_KEY
    with pytest.raises(NotFoundError, match="NotFoundException"):
        open_kms(aws_kms.uri("alias/nope")).encrypt(DATA_KEY)
    with pytest.raises(NotFoundError):  # a key only exists in its own region
        open_kms(aws_kms.uri(key.key_id, region="eu-west-1")).encrypt(DATA_KEY)
    key.state = "Disabled"
    shown = engine_error(uri)
    assert shown.startswith(f"failed to encrypt data key with KMS {redact(uri)!r}: ")
    assert "DisabledException" in shown and aws_kms.secret not in shown and "redacted" in shown
    aws_kms.stop()
    shown = engine_error(uri)
    assert "KMS unreachable" in shown and aws_kms.secret not in shown
    with pytest.raises(KMSError, match="KMS unreachable"):
        kms.decrypt(blob)
    assert aws_kms.calls["Encrypt"] == 4 and aws_kms.calls["Decrypt"] == 4  # no retries of refusals


def test_aws_secrets_never_in_repr_or_errors(aws_kms: AwsKmsServer) -> None:
    uri = aws_kms.uri("alias/none", AWS_SESSION_TOKEN="sess-tok-123")
    kms = open_kms(uri)
    assert "secret" not in repr(kms) and "sess-tok" not in repr(kms)
    assert "sess-tok" not in redact(uri) and "fake%2Fsecret" not in redact(uri)
    shown = engine_error(uri)
    assert "sess-tok" not in shown and "fake" not in shown.replace("fake/", "") and "NotFoundException" in shown


# -- Google Cloud KMS --------------------------------------------------------------------------------


def test_gcp_round_trip_with_service_account_and_bearer_token(gcp_kms: GcpKmsServer) -> None:
    name = gcp_kms.create_key()
    sa = gcp_kms.service_account()
    by_sa = open_kms(gcp_kms.uri(name, credentials=sa))
    blob = by_sa.encrypt(DATA_KEY)
    assert gcp_kms.calls["token"] == 1  # google-auth ran the real JWT-bearer grant against token_uri
    by_token = open_kms(gcp_kms.uri(name + "/cryptoKeyVersions/7", scheme="gcp-kms"))
    assert by_token.decrypt(blob) == DATA_KEY
    # The version suffix is not part of the identity; gs:// and gcp-kms:// name the same key.
    assert by_sa.master_key_id == by_token.master_key_id == name
    with pytest.raises(KMSError, match="Encrypt: cannot get an access token"):  # the 401 made google-auth refresh
        open_kms(gcp_kms.uri(name).replace("test-bearer-token", "stolen")).encrypt(DATA_KEY)


def test_gcp_parameter_errors() -> None:
    path = "projects/p/locations/l/keyRings/r/cryptoKeys/k"
    cases = {
        "gs:///?AUTH=implicit": "path component of the KMS cannot be empty; must contain the Customer Managed Key",
        f"gs:///{path}?AUTH=implicit&REGION=x": "unknown KMS query parameters: REGION",
        f"gcp-kms:///{path}?AUTH=specified": 'CREDENTIALS or BEARER_TOKEN must be set if "AUTH" is "specified"',
        f"gs:///{path}": 'CREDENTIALS or BEARER_TOKEN must be set if "AUTH" is "specified"',
        f"gs:///{path}?CREDENTIALS=%25%25notbase64": "decoding value of CREDENTIALS: not base64 of a credentials JSON",
        f"gs:///{path}?AUTH=implicit&ASSUME_ROLE=sa@p.iam": (
            "ASSUME_ROLE is not supported for Google Cloud in Strongroom yet"
        ),
    }
    for uri, message in cases.items():
        with pytest.raises(UsageError) as exc:
            open_kms(uri)
        assert str(exc.value) == message
    external = base64.b64encode(json.dumps({"type": "external_account"}).encode()).decode()
    with pytest.raises(UsageError, match="CREDENTIALS of type 'external_account' are not supported"):
        open_kms(f"gs:///{path}?CREDENTIALS={external}")
    creds = base64.b64encode(json.dumps({"type": "service_account"}).encode()).decode()
    assert open_kms(f"gs:///{path}?CREDENTIALS={creds}").master_key_id == path


def test_gcp_key_states_and_unreachable(gcp_kms: GcpKmsServer) -> None:
    name = gcp_kms.create_key()
    uri = gcp_kms.uri(name)
    kms = open_kms(uri)
    blob = kms.encrypt(DATA_KEY)
    gcp_kms.keys[name].state = "DISABLED"
    with pytest.raises(KMSError, match=r"failed to decrypt: FAILED_PRECONDITION: .*cryptoKeyVersions/1 is not enabled"):
        kms.decrypt(blob)
    gcp_kms.keys[name].state, gcp_kms.deny = "ENABLED", True
    with pytest.raises(KMSError, match="failed to decrypt: PERMISSION_DENIED: Permission"):
        kms.decrypt(blob)
    shown = engine_error(uri)
    assert shown.startswith(f"failed to encrypt data key with KMS {redact(uri)!r}: ")
    assert "PERMISSION_DENIED" in shown and "test-bearer-token" not in shown
    gcp_kms.deny = False
    with pytest.raises(NotFoundError, match="NOT_FOUND"):
        open_kms(gcp_kms.uri(name + "-gone")).encrypt(DATA_KEY)
    gcp_kms.stop()
    with pytest.raises(KMSError, match="KMS unreachable"):
        kms.decrypt(blob)
    assert "test-bearer-token" not in engine_error(uri)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("request", "Encrypt: request corrupted in-transit"),
        ("ciphertext", "Encrypt: response corrupted in-transit"),
        ("plaintext", "Decrypt: response corrupted in-transit"),
    ],
)
def test_gcp_crc32c_detects_corruption(gcp_kms: GcpKmsServer, mode: str, message: str) -> None:
    kms = open_kms(gcp_kms.uri(gcp_kms.create_key()))
    blob = kms.encrypt(DATA_KEY)
    gcp_kms.corrupt = mode
    with pytest.raises(KMSError) as exc:
        kms.decrypt(kms.encrypt(DATA_KEY)) if mode != "plaintext" else kms.decrypt(blob)
    assert str(exc.value) == message


# -- Azure Key Vault -----------------------------------------------------------------------------------


def test_azure_round_trip_identity_and_errors(azure_kv: AzureKeyVaultServer) -> None:
    key = azure_kv.create_key("backup-key")
    kms = open_kms(azure_kv.uri(key))
    blob = kms.encrypt(DATA_KEY)
    assert len(blob) == 256 and kms.decrypt(blob) == DATA_KEY  # RSA-OAEP-256 under a 2048-bit key
    assert azure_kv.calls["token"] == 1 and azure_kv.calls["decrypt"] == 1
    other_version = azure_kv.create_key("backup-key")
    assert open_kms(azure_kv.uri(other_version)).master_key_id == kms.master_key_id == "backup-key"
    key.enabled = False
    with pytest.raises(KMSError, match="decrypt: Forbidden: Operation decrypt is not allowed on a disabled key"):
        open_kms(azure_kv.uri(key)).decrypt(blob)
    key.enabled, azure_kv.deny = True, True
    with pytest.raises(KMSError, match="Forbidden: The user does not have keys decrypt permission"):
        open_kms(azure_kv.uri(key)).decrypt(blob)
    azure_kv.deny = False
    bad = azure_kv.uri(key).replace("az%2Bsecret", "wrong")
    shown = engine_error(bad)
    assert "authentication failed" in shown and "wrong" not in shown and azure_kv.SECRET not in shown
    assert "secret" not in repr(kms)
    azure_kv.stop()
    with pytest.raises(KMSError, match="KMS unreachable"):
        open_kms(azure_kv.uri(key)).decrypt(blob)


def test_azure_parameter_errors() -> None:
    cases = {
        "azure-kms:///only-name?AZURE_VAULT_NAME=v&AUTH=implicit": "azure kms key must be of form 'id/version'",
        "azure-kms:///a/b/c?AZURE_VAULT_NAME=v&AUTH=implicit": "azure kms key must be of form 'id/version'",
        "azure-kms:///k/1?AUTH=implicit": "azure kms AZURE_VAULT_NAME parameter not specified",
        "azure-kms:///k/1?AZURE_VAULT_NAME=v&REGION=x": "unknown KMS query parameters: REGION",
        "azure-kms:///k/1?AZURE_VAULT_NAME=v&AZURE_CLIENT_SECRET=s&AZURE_TENANT_ID=t": (
            "AUTH is set to 'specified', but AZURE_CLIENT_ID is not set"
        ),
        "azure-kms:///k/1?AZURE_VAULT_NAME=v&AUTH=implicit&AZURE_ENVIRONMENT=Mars": (
            "unknown AZURE_ENVIRONMENT 'Mars' (one of AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud)"
        ),
    }
    for uri, message in cases.items():
        with pytest.raises(UsageError) as exc:
            open_kms(uri)
        assert str(exc.value) == message
    assert open_kms("azure-kms:///k/v1?AZURE_VAULT_NAME=v&AUTH=implicit").master_key_id == "k"


# -- HashiCorp Vault (transit) -------------------------------------------------------------------------


def test_vault_round_trip_versions_and_identity(vault: VaultServer) -> None:
    vault.create_key("backup-key")
    kms = open_kms(vault.uri("backup-key"))
    v1 = kms.encrypt(DATA_KEY)
    assert v1.startswith(b"vault:v1:") and key_version(v1) == 1 and kms.decrypt(v1) == DATA_KEY
    assert vault.calls == {"read": 1, "encrypt": 1, "decrypt": 1}  # the key is read once, before the first wrap
    assert kms.encrypt(DATA_KEY) != v1 and vault.calls["read"] == 1
    # The operator rotates with hvac, as with a real Vault: new wraps use version 2, old ones still open.
    vault.admin().secrets.transit.rotate_key("backup-key", mount_point="transit")
    v2 = kms.encrypt(DATA_KEY)
    assert key_version(v2) == 2 and kms.decrypt(v1) == kms.decrypt(v2) == DATA_KEY
    # Identity is the key's Vault path: not the address, not the credentials.
    by_role = open_kms(vault.uri("backup-key", approle=True))
    assert kms.master_key_id == by_role.master_key_id == "transit/keys/backup-key"
    assert by_role.decrypt(v1) == DATA_KEY
    vault.create_key("other")
    with pytest.raises(KMSError, match=r"decrypt: cipher: message authentication failed$"):  # another key's blob
        open_kms(vault.uri("other")).decrypt(v1)


def test_vault_namespaces_and_nested_mounts(vault: VaultServer) -> None:
    vault.create_key("k", mount="secrets/transit", namespace="team-a")
    uri = vault.uri("k", mount="secrets/transit", VAULT_NAMESPACE="team-a")
    kms = open_kms(uri)
    assert kms.master_key_id == "team-a/secrets/transit/keys/k"
    assert kms.decrypt(kms.encrypt(DATA_KEY)) == DATA_KEY
    sent = {headers.get("x-vault-namespace") for _method, _path, headers in vault.requests}
    assert sent == {"team-a"}
    # The same path outside the namespace is another key, which does not exist.
    with pytest.raises(NotFoundError, match=r'"secrets/transit/keys/k" .*: read: key not found'):
        open_kms(vault.uri("k", mount="secrets/transit")).encrypt(DATA_KEY)


def test_vault_approle_login_and_login_again_when_the_token_expires(vault: VaultServer) -> None:
    vault.create_key("k")
    kms = open_kms(vault.uri("k", approle=True))
    blob = kms.encrypt(DATA_KEY)
    assert vault.calls["login"] == 1
    vault.tokens = {vault.ROOT_TOKEN}  # the AppRole token's TTL ran out
    assert kms.decrypt(blob) == DATA_KEY
    assert vault.calls["login"] == 2 and vault.calls["denied"] == 1
    bad = vault.uri("k", approle=True).replace(vault.SECRET_ID, "wrong-secret-id-77")
    with pytest.raises(KMSError) as exc:
        open_kms(bad).decrypt(blob)
    where = f'Vault key "transit/keys/k" at {vault.url}'
    assert str(exc.value) == f"{where}: AppRole login failed: invalid role or secret ID"


def test_vault_parameter_errors() -> None:
    addr = "VAULT_ADDR=https://vault.example:8200"
    cases = {
        f"vault:///transit/k?{addr}&VAULT_TOKEN=t": KEY_FORM,
        f"vault:///keys/k?{addr}&VAULT_TOKEN=t": KEY_FORM,
        f"vault://host/transit/keys/k?{addr}&VAULT_TOKEN=t": KEY_FORM,
        f"vault:///transit/keys/a/b?{addr}&VAULT_TOKEN=t": KEY_FORM,
        f"vault:///transit/keys/k?{addr}&VAULT_TOKEN=t&REGION=x": "unknown KMS query parameters: REGION",
        "vault:///transit/keys/k?VAULT_TOKEN=t": (
            "vault kms VAULT_ADDR parameter not specified (such as https://vault.example.com:8200)"
        ),
        "vault:///transit/keys/k?VAULT_ADDR=ftp://v:21&VAULT_TOKEN=t": (
            "VAULT_ADDR must be an http(s) URL such as https://vault.example.com:8200 (got 'ftp://v:21')"
        ),
        "vault:///transit/keys/k?VAULT_ADDR=http://vault.example:8200&VAULT_TOKEN=t": (
            "VAULT_ADDR 'http://vault.example:8200' is plain http to another machine: the Vault token would "
            "cross the network in the clear; use https:// (and VAULT_CACERT for a private CA)"
        ),
        f"vault:///transit/keys/k?{addr}": (
            "vault kms VAULT_TOKEN parameter not specified (log in with VAULT_TOKEN, or AppRole's "
            "VAULT_ROLE_ID and VAULT_SECRET_ID)"
        ),
        f"vault:///transit/keys/k?{addr}&VAULT_ROLE_ID=r": (
            "vault kms VAULT_SECRET_ID parameter not specified (log in with VAULT_TOKEN, or AppRole's "
            "VAULT_ROLE_ID and VAULT_SECRET_ID)"
        ),
        f"vault:///transit/keys/k?{addr}&VAULT_TOKEN=t&VAULT_ROLE_ID=r&VAULT_SECRET_ID=s": (
            "vault kms: give either VAULT_TOKEN or VAULT_ROLE_ID and VAULT_SECRET_ID, not both"
        ),
    }
    for uri, message in cases.items():
        with pytest.raises(UsageError) as exc:
            open_kms(uri)
        assert str(exc.value) == message, uri
    local = open_kms("vault:///transit/keys/k?VAULT_ADDR=http://127.0.0.1:8200&VAULT_TOKEN=t")
    assert local.master_key_id == "transit/keys/k"  # plain http is fine to this machine (a dev server)


def test_vault_unusable_keys_denied_sealed_and_unreachable(vault: VaultServer, tmp_path: Path) -> None:
    vault.create_key("k")
    uri = vault.uri("k")
    kms = open_kms(uri)
    blob = kms.encrypt(DATA_KEY)
    where = f'Vault key "transit/keys/k" at {vault.url}'
    admin = vault.admin().secrets.transit
    admin.rotate_key("k", mount_point="transit")
    admin.update_key_configuration("k", min_decryption_version=2, mount_point="transit")
    with pytest.raises(KMSError) as exc:
        kms.decrypt(blob)
    assert str(exc.value) == (
        f"{where}: decrypt: ciphertext or signature version is disallowed by policy (too old): the data key was "
        "wrapped by key version 1, now below the key's min_decryption_version (lower it again to decrypt)"
    )
    admin.update_key_configuration("k", min_decryption_version=1, mount_point="transit")
    assert kms.decrypt(blob) == DATA_KEY  # a policy floor, not erasure: lowered again, the wrap opens
    vault.deny = True
    with pytest.raises(KMSError) as exc:
        kms.decrypt(blob)
    assert str(exc.value) == (
        f"{where}: decrypt: permission denied (the token is invalid or expired, or its policies do not allow "
        "update on transit/decrypt/k)"
    )
    shown = engine_error(uri)
    assert shown.startswith(f"failed to encrypt data key with KMS {redact(uri)!r}: ")
    assert "permission denied" in shown and vault.ROOT_TOKEN not in shown and "VAULT_TOKEN=redacted" in shown
    vault.deny, vault.sealed = False, True
    with pytest.raises(KMSError, match=r": decrypt: Vault is sealed \(unseal it, then try again\)$"):
        kms.decrypt(blob)
    vault.sealed = False
    admin.update_key_configuration("k", deletion_allowed=True, mount_point="transit")
    admin.delete_key("k", mount_point="transit")
    with pytest.raises(NotFoundError) as gone:
        kms.decrypt(blob)
    assert str(gone.value) == (
        f"{where}: decrypt: encryption key not found (deleted, or never created in this mount and namespace)"
    )
    vault.create_key("signer", type="ed25519")
    with pytest.raises(KMSError, match=r"a ed25519 key cannot encrypt and decrypt \(use an aes256-gcm96"):
        open_kms(vault.uri("signer")).encrypt(DATA_KEY)
    calls = dict(vault.calls)
    untrusted = uri.replace(f"&VAULT_CACERT={vault.cert}", "")
    with pytest.raises(KMSError, match=r"Vault's TLS certificate is not trusted \(set VAULT_CACERT"):
        open_kms(untrusted).decrypt(blob)
    with pytest.raises(KMSError, match=r"VAULT_CACERT .*nowhere.pem is not a file"):
        open_kms(vault.uri("k", VAULT_CACERT=str(tmp_path / "nowhere.pem"))).decrypt(blob)
    assert vault.calls == calls  # neither request reached Vault
    vault.stop()
    with pytest.raises(KMSError, match=r": decrypt: Vault unreachable: ConnectionError$"):
        kms.decrypt(blob)
    assert vault.ROOT_TOKEN not in engine_error(uri)


def test_vault_least_privilege_token_without_read(vault: VaultServer) -> None:
    vault.create_key("k")
    vault.denied_ops = {"read"}  # a policy with update on encrypt/ and decrypt/ only
    kms = open_kms(vault.uri("k"))
    assert kms.decrypt(kms.encrypt(DATA_KEY)) == DATA_KEY
    assert vault.calls == {"read": 1, "encrypt": 1, "decrypt": 1}
    with pytest.raises(NotFoundError, match=r"encrypt: encryption key not found"):  # Vault's own check remains
        open_kms(vault.uri("typo")).encrypt(DATA_KEY)


def test_vault_credentials_never_in_repr_redaction_or_errors(vault: VaultServer) -> None:
    token_uri, role_uri = vault.uri("missing"), vault.uri("missing", approle=True)
    for uri in (token_uri, role_uri):
        shown = [redact(uri), repr(open_kms(uri)), engine_error(uri)]
        assert "key not found" in shown[2] and redact(uri) in shown[2]
        for text in shown:
            assert vault.ROOT_TOKEN not in text and vault.SECRET_ID not in text
            assert not any(token in text for token in vault.tokens)  # nor the token AppRole handed out
    assert "VAULT_SECRET_ID=redacted" in redact(role_uri) and f"VAULT_ROLE_ID={vault.ROLE_ID}" in redact(role_uri)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    approle=st.booleans(),
)
def test_no_vault_credential_in_any_message(secret: str, approle: bool) -> None:
    """Whatever the token or secret id holds (URL-encoded into the URI as it must be), neither the
    redacted URI, the KMS's repr nor the engine's error (Vault unreachable) shows it."""
    import re
    from urllib.parse import quote

    from kms_servers import free_port

    name = "VAULT_SECRET_ID" if approle else "VAULT_TOKEN"
    auth = f"VAULT_ROLE_ID=r&{name}={quote(secret, safe='')}" if approle else f"{name}={quote(secret, safe='')}"
    uri = f"vault:///transit/keys/k?VAULT_ADDR=http://127.0.0.1:{free_port()}&{auth}"
    try:
        shown = [redact(uri), repr(open_kms(uri)), engine_error(uri)]
    finally:
        forget_secret(secret)  # random values must not stay registered for the rest of the suite
    assert "Vault unreachable" in shown[2] and f"{name}=redacted" in shown[2]
    for text in shown:
        # Where the parameter is shown its value is the marker, and the value shows nowhere else.
        assert set(re.findall(rf"{name}=([^&'\s]*)", text)) <= {"redacted"}
        assert len(secret) < 12 or secret not in text  # shorter values are only redacted by position


# -- PKCS#11 (SoftHSM2) --------------------------------------------------------------------------------


def test_pkcs11_round_trip_in_the_token(softhsm: SoftHSM) -> None:
    import pkcs11
    from pkcs11 import Attribute
    from pkcs11.exceptions import AttributeSensitive

    softhsm.create_key("kek-a")
    softhsm.create_key("kek-b")
    kms = open_kms(softhsm.uri("kek-a"))
    assert kms.master_key_id == "pkcs11:token=backup-test;object=kek-a"  # no module path, no PIN
    blob = kms.encrypt(DATA_KEY)
    assert len(blob) == 1 + 12 + 32 + 16 and blob[0] == 1
    assert kms.decrypt(blob) == DATA_KEY
    assert kms.encrypt(DATA_KEY)[1:13] != blob[1:13]  # a fresh IV each time
    with pytest.raises(KMSError, match="failed to decrypt data key"):  # the key id is bound as AAD
        open_kms(softhsm.uri("kek-b")).decrypt(blob)
    token = pkcs11.lib("/usr/lib/softhsm/libsofthsm2.so").get_token(token_label="backup-test")
    with token.open(user_pin="1234") as session:
        key = session.get_key(label="kek-a")
        assert key[Attribute.EXTRACTABLE] is False
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]


def test_pkcs11_pin_source_and_errors(softhsm: SoftHSM, tmp_path: Path) -> None:
    softhsm.create_key("kek-c")
    blob = open_kms(softhsm.uri("kek-c")).encrypt(DATA_KEY)
    pin_file = tmp_path / "pin"
    pin_file.write_text("1234\n")
    by_file = softhsm.uri("kek-c").replace("pin-value=1234", f"pin-source=file:{pin_file}")
    assert open_kms(by_file).decrypt(blob) == DATA_KEY
    with pytest.raises(KMSError, match=r"^pkcs11:token=backup-test;object=kek-c: PIN incorrect$"):
        open_kms(softhsm.uri("kek-c", pin="9999")).decrypt(blob)
    with pytest.raises(NotFoundError, match='no token labelled "nope"'):
        open_kms(softhsm.uri("kek-c", token="nope")).decrypt(blob)
    with pytest.raises(NotFoundError, match='no AES key labelled "ghost" in token "other-token"'):
        open_kms(softhsm.uri("ghost", token="other-token")).encrypt(DATA_KEY)
    bad = {
        "pkcs11:object=k?module-path=/x&pin-value=1": "pkcs11 URI must name both token=<label> and object=<key label>",
        "pkcs11:token=t;object=k;slot=1?module-path=/x": (
            "unknown pkcs11 URI attributes: slot (supported: token, object, type)"
        ),
        "pkcs11:token=t;object=k?pin-value=1": (
            "pkcs11 URI needs module-path=<PKCS#11 library>, e.g. /usr/lib/softhsm/libsofthsm2.so"
        ),
        "pkcs11:token=t;object=k?module-path=/x&PIN=1": "unknown KMS query parameters: PIN",
    }
    for uri, message in bad.items():
        with pytest.raises(UsageError) as exc:
            open_kms(uri)
        assert str(exc.value) == message


def test_pkcs11_pin_is_redacted_everywhere(softhsm: SoftHSM) -> None:
    uri = softhsm.uri("missing-key", pin="73519")
    assert "73519" not in redact(uri) and "pin-value=redacted" in redact(uri)
    shown = engine_error(uri)
    assert "73519" not in shown and "pin-value=redacted" in shown
    assert "73519" not in repr(open_kms(uri))


def test_sdk_free_import_and_lazy_sdk_loading() -> None:
    """Building a KMS from a URI makes no network call and needs no SDK until first use."""
    for uri in (
        "aws:///k?AUTH=implicit&REGION=us-east-1",
        "gs:///projects/p/locations/l/keyRings/r/cryptoKeys/k?AUTH=implicit",
        "azure-kms:///k/1?AZURE_VAULT_NAME=v&AUTH=implicit",
        "pkcs11:token=t;object=k?module-path=/nonexistent.so",
        "vault:///transit/keys/k?VAULT_ADDR=https://vault.example:8200&VAULT_TOKEN=t",
    ):
        kms = open_kms(uri)
        kms.close()
    with pytest.raises(StrongroomError, match=r"module /nonexistent\.so not found"):
        open_kms("pkcs11:token=t;object=k?module-path=/nonexistent.so").encrypt(DATA_KEY)
