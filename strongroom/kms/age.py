"""age public-key recipients: ``age:///<recipient>`` wraps, ``age:///?IDENTITY=<file>`` also unwraps.

A backup host given only a recipient (a public key) can write backups it cannot read: the data key
is encrypted to the recipient with age (https://age-encryption.org/v1) by pyrage, and only the holder
of the matching identity (the private key) can unwrap it. The wrapped key is an ordinary binary age
file, so ``age -d -i <identity>`` recovers it too.

URIs:

- ``age:///age1...``: an X25519 recipient (``age-keygen -y`` prints it);
- ``age:///ssh-ed25519%20AAAA...`` or ``age:///ssh-rsa%20AAAA...``: an SSH public key, URL-encoded
  (the space as ``%20``; a trailing comment is dropped);
- ``age:///?IDENTITY=<file>``: an identity file (``age-keygen`` output, or an unencrypted OpenSSH
  private key);
- ``age:///<name>[?KEYRING=<dir>]``: the identity ``<dir>/<name>.age`` in the keyring, as for
  ``local:///`` keys;
- ``age:///<recipient>?IDENTITY=<file>``: both; the identity must belong to the recipient.

The master key id is the recipient in canonical form (``age1...``, or ``ssh-<type> <base64>``): an
identity URI derives it from the private key, so a backup written by a host that holds only the
public key is opened by the identity URI of the same key pair. The identity file is read when first
needed and its contents are never shown.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..cloud.extras import import_extra
from ..errors import KMSError, NotFoundError, UsageError, WrapOnlyError, register_secret
from ..uri import parse_uri
from .base import register_kms
from .local import default_keyring, write_new_key_file

SCHEME = "age"
PARAMS = ("IDENTITY", "KEYRING")
IDENTITY_SUFFIX = ".age"
_X25519 = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
_SSH = re.compile(r"^(ssh-ed25519|ssh-rsa) ([A-Za-z0-9+/]+={0,2})(?: .*)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _pyrage() -> Any:
    return import_extra("pyrage", "age", "age:// keys")


def canonical_recipient(text: str) -> str:
    """``text`` as the master key id: an X25519 recipient in lower case, an SSH key without its comment."""
    text = text.strip()
    if _X25519.match(text.lower()):
        return text.lower()
    m = _SSH.match(text)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    raise UsageError(
        "an age recipient must be an X25519 public key (age1...) or an SSH public key "
        "(ssh-ed25519 or ssh-rsa, URL-encoded in the URI)"
    )


def _looks_like_recipient(text: str) -> bool:
    return text.lower().startswith("age1") or text.startswith("ssh-")


class AgeKMS:
    """One age key pair: its recipient always, its identity when the URI names one."""

    def __init__(self, uri: str) -> None:
        parsed = parse_uri(uri)
        parsed.check_params(PARAMS)
        if parsed.host:
            raise UsageError("age URI must look like age:///<recipient>, age:///?IDENTITY=<file> or age:///<name>")
        self._uri = uri
        path = unquote(parsed.path.lstrip("/"))
        identity = parsed.params.get("IDENTITY")
        self._recipient: str | None = None
        self._identity_file: Path | None = Path(identity) if identity else None
        if path and _looks_like_recipient(path):
            self._recipient = canonical_recipient(path)
        elif path:
            if identity:
                raise UsageError("age URI: give a key name or an IDENTITY file, not both")
            if not _NAME.match(path):
                raise UsageError(f"invalid age identity name {path!r}: use letters, digits, '_', '-' or '.'")
            keyring = parsed.params.get("KEYRING")
            self._identity_file = (Path(keyring) if keyring else default_keyring()) / f"{path}{IDENTITY_SUFFIX}"
        elif not identity:
            raise UsageError("age URI needs a recipient (age:///age1...) or an identity (age:///?IDENTITY=<file>)")
        self._identity: Any = None

    def __repr__(self) -> str:
        return f"AgeKMS(recipient={self._recipient!r}, identity={'yes' if self._identity_file else 'no'})"

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def can_decrypt(self) -> bool:
        """False for a recipient alone: it wraps, and only the identity unwraps (a write-only host)."""
        return self._identity_file is not None

    @property
    def wraps_offline(self) -> bool:
        return True

    @property
    def master_key_id(self) -> str:
        if self._recipient is None:
            self._load_identity()
        assert self._recipient is not None
        return self._recipient

    def _load_identity(self) -> Any:
        if self._identity is not None:
            return self._identity
        assert self._identity_file is not None
        try:
            data = self._identity_file.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"age identity file {self._identity_file} not found") from None
        except OSError as exc:
            raise KMSError(f"cannot read age identity file {self._identity_file}: {exc.strerror}") from None
        identity, public = _parse_identity(data, str(self._identity_file))
        if self._recipient is not None and self._recipient != public:
            raise UsageError(f"age identity {self._identity_file} is not the identity of recipient {self._recipient}")
        self._recipient, self._identity = public, identity
        return identity

    def _recipient_object(self) -> Any:
        pyrage = _pyrage()
        rec = self.master_key_id
        try:
            if rec.startswith("ssh-"):
                return pyrage.ssh.Recipient.from_str(rec)
            return pyrage.x25519.Recipient.from_str(rec)
        except pyrage.RecipientError as exc:
            raise UsageError(f"invalid age recipient {rec!r}: {exc}") from None

    # -- KMS interface --------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes) -> bytes:
        pyrage = _pyrage()
        try:
            return bytes(pyrage.encrypt(plaintext, [self._recipient_object()]))
        except pyrage.EncryptError as exc:
            raise KMSError(f"age: failed to encrypt to {self.master_key_id}: {exc}") from None

    def decrypt(self, ciphertext: bytes) -> bytes:
        if not self.can_decrypt:
            raise WrapOnlyError(
                f"age recipient {self.master_key_id} is a public key: it can write backups but not read them "
                "(give its identity: kms = 'age:///?IDENTITY=<file>')"
            )
        pyrage = _pyrage()
        identity = self._load_identity()
        try:
            return bytes(pyrage.decrypt(ciphertext, [identity]))
        except pyrage.DecryptError as exc:
            raise KMSError(f"age identity of {self.master_key_id}: failed to decrypt data key: {exc}") from None

    def close(self) -> None:
        self._identity = None


def create_identity(name: str, keyring: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """A new age identity ``<keyring>/<name>.age`` (mode 0600, never replacing a file), as
    ``age-keygen`` writes it; returns its path and recipient (the public key a backup host gets)."""
    if not _NAME.match(name) or _looks_like_recipient(name):
        raise UsageError(f"invalid age identity name {name!r}: use letters, digits, '_', '-' or '.'")
    identity = _pyrage().x25519.Identity.generate()
    recipient = str(identity.to_public())
    body = f"# public key: {recipient}\n{identity}\n".encode()
    path = write_new_key_file(keyring, f"{name}{IDENTITY_SUFFIX}", body, f'age identity "{name}"')
    return path, recipient


def _parse_identity(data: bytes, where: str) -> tuple[Any, str]:
    """The pyrage identity in an identity file and its recipient (the public key, canonical)."""
    pyrage = _pyrage()
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_ssh_private_key(data, password=None)
            identity = pyrage.ssh.Identity.from_buffer(data)
        except (ValueError, TypeError, pyrage.IdentityError):
            raise KMSError(f"{where} is not an unencrypted OpenSSH private key age can use") from None
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return identity, canonical_recipient(public.decode())
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines()]
    secrets = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(secrets) != 1 or not secrets[0].startswith("AGE-SECRET-KEY-1"):
        raise KMSError(f"{where} must hold exactly one age identity (AGE-SECRET-KEY-1..., as age-keygen writes)")
    register_secret(secrets[0])
    try:
        identity = pyrage.x25519.Identity.from_str(secrets[0])
    except pyrage.IdentityError:
        raise KMSError(f"{where} does not hold a valid age identity") from None
    return identity, str(identity.to_public())


register_kms(SCHEME, AgeKMS)
