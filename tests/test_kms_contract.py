"""The KMS contract: one suite every key management service passes (the local key file, AWS KMS,
GCP Cloud KMS, Azure Key Vault and HashiCorp Vault's transit engine on their protocol servers, PKCS#11 on
SoftHSM). A new KMS scheme is
done when it passes this file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.register_assert_rewrite("kms_servers")

from kms_servers import (  # noqa: E402
    SOFTHSM_MODULE,
    AwsKmsServer,
    AzureKeyVaultServer,
    GcpKmsServer,
    SoftHSM,
    VaultServer,
)

from strongroom.errors import StrongroomError, UsageError, WrapOnlyError  # noqa: E402
from strongroom.kms import can_decrypt, create_key, open_kms  # noqa: E402

pytest_plugins = ("kms_servers",)


@dataclass
class Key:
    """A KMS key under test: its URI, the id CockroachDB derives from it, how to make it unusable."""

    uri: str
    master_key_id: str
    disable: Callable[[], None]
    secret: str  # a credential the URI carries ('' if none)
    randomized: bool = True  # every encryption of the same plaintext differs


@pytest.fixture(params=["local", "aws", "aws-asymmetric", "gcp", "azure", "vault", "pkcs11", "age"])
def key(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Key]:
    kind = request.param
    if kind == "age":
        pyrage = pytest.importorskip("pyrage")
        ident = pyrage.x25519.Identity.generate()
        path = tmp_path / "age.key"
        path.write_text(f"# public key: {ident.to_public()}\n{ident}\n")
        yield Key(f"age:///?IDENTITY={path}", str(ident.to_public()), lambda: os.unlink(path), str(ident))
    elif kind == "aws-asymmetric":
        aws_rsa: AwsKmsServer = request.getfixturevalue("aws_kms")
        k = aws_rsa.create_key(spec="RSA_2048")
        uri = aws_rsa.uri(k.arn, ASYMMETRIC="RSAES_OAEP_SHA_256")
        yield Key(uri, k.arn, lambda: setattr(k, "state", "Disabled"), aws_rsa.secret.replace("+", " "))
    elif kind == "local":
        path = create_key("contract")
        yield Key("local:///contract", "contract", lambda: os.unlink(path), "")
    elif kind == "aws":
        aws: AwsKmsServer = request.getfixturevalue("aws_kms")
        k = aws.create_key()
        yield Key(aws.uri(k.arn), k.arn, lambda: setattr(k, "state", "Disabled"), aws.secret.replace("+", " "))
    elif kind == "gcp":
        gcp: GcpKmsServer = request.getfixturevalue("gcp_kms")
        name = gcp.create_key(key="contract")
        yield Key(gcp.uri(name), name, lambda: setattr(gcp.keys[name], "state", "DISABLED"), "test-bearer-token")
    elif kind == "azure":
        vault: AzureKeyVaultServer = request.getfixturevalue("azure_kv")
        ak = vault.create_key("contract")
        yield Key(vault.uri(ak), ak.name, lambda: setattr(ak, "enabled", False), vault.SECRET)
    elif kind == "vault":
        hv: VaultServer = request.getfixturevalue("vault")
        hv.create_key("contract")
        yield Key(hv.uri("contract"), "transit/keys/contract", lambda: _retire_version_1(hv, "contract"), hv.ROOT_TOKEN)
    else:
        hsm: SoftHSM = request.getfixturevalue("softhsm")
        label = f"contract-{os.urandom(4).hex()}"
        hsm.create_key(label)
        yield Key(hsm.uri(label), hsm.uri(label).split("?")[0], lambda: _delete_hsm_key(hsm, label), hsm.pin)


def _retire_version_1(hv: VaultServer, name: str) -> None:
    """What a Vault operator does to make old wraps unusable: rotate, then raise min_decryption_version."""
    transit = hv.admin().secrets.transit
    transit.rotate_key(name, mount_point="transit")
    transit.update_key_configuration(name, min_decryption_version=2, mount_point="transit")


def _delete_hsm_key(hsm: SoftHSM, label: str) -> None:
    import pkcs11

    lib = pkcs11.lib(SOFTHSM_MODULE)
    with lib.get_token(token_label=hsm.token).open(user_pin=hsm.pin, rw=True) as session:
        session.get_key(label=label).destroy()


def test_a_data_key_round_trips(key: Key) -> None:
    kms = open_kms(key.uri)
    try:
        data_key = os.urandom(32)
        wrapped = kms.encrypt(data_key)
        assert wrapped != data_key and data_key not in wrapped
        assert kms.decrypt(wrapped) == data_key
        assert key.randomized is False or kms.encrypt(data_key) != wrapped
    finally:
        kms.close()


def test_the_master_key_id_is_the_one_cockroachdb_derives(key: Key) -> None:
    kms = open_kms(key.uri)
    try:
        assert kms.master_key_id == key.master_key_id
        assert open_kms(key.uri).master_key_id == kms.master_key_id  # stable across openings
    finally:
        kms.close()


def test_tampered_ciphertext_is_refused(key: Key) -> None:
    kms = open_kms(key.uri)
    try:
        wrapped = bytearray(kms.encrypt(os.urandom(32)))
        wrapped[len(wrapped) // 2] ^= 0x01
        with pytest.raises(StrongroomError) as exc:
            kms.decrypt(bytes(wrapped))
        assert not key.secret or key.secret not in str(exc.value)
    finally:
        kms.close()


def test_an_unknown_parameter_is_refused(key: Key) -> None:
    joiner = "&" if "?" in key.uri else "?"
    with pytest.raises(UsageError, match=r"unknown .*query parameters: NOT_A_PARAMETER"):
        open_kms(f"{key.uri}{joiner}NOT_A_PARAMETER=1")


def test_an_unusable_key_gives_a_clear_error_without_secrets(key: Key) -> None:
    kms = open_kms(key.uri)
    try:
        wrapped = kms.encrypt(os.urandom(32))
    finally:
        kms.close()
    key.disable()
    with pytest.raises(StrongroomError) as exc:  # at opening, or at the first call: the KMS decides
        again = open_kms(key.uri)
        try:
            again.decrypt(wrapped)
        finally:
            again.close()
    message = str(exc.value)
    assert message and "Traceback" not in message
    assert not key.secret or key.secret not in message


@dataclass
class WrapOnly:
    """A KMS URI holding public material only, and the URI of the full key behind it."""

    wrap_uri: str
    full_uri: str


@pytest.fixture(params=["age-x25519", "age-ssh-ed25519", "age-ssh-rsa"])
def wrap_only(request: pytest.FixtureRequest, tmp_path: Path) -> WrapOnly:
    pyrage = pytest.importorskip("pyrage")
    path = tmp_path / "identity"
    if request.param == "age-x25519":
        ident = pyrage.x25519.Identity.generate()
        path.write_text(f"{ident}\n")
        return WrapOnly(f"age:///{ident.to_public()}", f"age:///?IDENTITY={path}")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    sk = Ed25519PrivateKey.generate() if request.param == "age-ssh-ed25519" else rsa.generate_private_key(65537, 2048)
    path.write_bytes(
        sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    public = sk.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return WrapOnly("age:///" + quote(public.decode()), f"age:///?IDENTITY={path}")


def test_a_wrap_only_key_encrypts_what_only_its_full_key_decrypts(wrap_only: WrapOnly) -> None:
    """A wrap-only KMS (kms.base.can_decrypt is False) has the master key id of its full key, so a
    backup wrapped by one is found by the other; it refuses to decrypt with one clear error."""
    public, full = open_kms(wrap_only.wrap_uri), open_kms(wrap_only.full_uri)
    try:
        assert not can_decrypt(public) and can_decrypt(full)
        assert public.master_key_id == full.master_key_id
        data_key = os.urandom(32)
        wrapped = public.encrypt(data_key)
        assert full.decrypt(wrapped) == data_key
        with pytest.raises(WrapOnlyError, match="public key: it can write backups but not read them"):
            public.decrypt(wrapped)
    finally:
        public.close()
        full.close()


def test_close_can_be_called_twice(key: Key) -> None:
    kms = open_kms(key.uri)
    kms.close()
    kms.close()
