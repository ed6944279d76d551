"""The embedded default KMS: a 32-byte key in a local key file.

URI ``local:///<name>[?KEYRING=<dir>]``; the key lives in ``<dir>/<name>.key`` where ``<dir>`` is the
``KEYRING`` parameter, else ``$STRONGROOM_KEYRING``, else ``~/.strongroom/keys``. The master key id is
``<name>``, so the same key in another keyring folder is the same key (as with a cloud key id).
Wrapping is AES-256-GCM with the master key id as associated data, so a blob wrapped by one key
cannot be presented as another's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import AlreadyExistsError, KMSError, NotFoundError, UsageError
from ..uri import parse_uri
from .base import register_kms

SCHEME = "local"
PARAMS = ("KEYRING",)
KEY_SIZE = 32
_FORMAT = b"\x01"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def default_keyring() -> Path:
    env = os.environ.get("STRONGROOM_KEYRING")
    return Path(env) if env else Path.home() / ".strongroom" / "keys"


def _check_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith(".key"):
        raise UsageError(
            f"invalid local key name {name!r}: use letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


def create_key(name: str, keyring: str | os.PathLike[str] | None = None) -> Path:
    """Make a new random key file (mode 0600); refuse to replace an existing key."""
    _check_name(name)
    return write_new_key_file(keyring, f"{name}.key", os.urandom(KEY_SIZE), f'local key "{name}"')


def write_new_key_file(keyring: str | os.PathLike[str] | None, filename: str, data: bytes, what: str) -> Path:
    """Write ``data`` to a new file of the keyring (mode 0600, fsynced); never replace one."""
    folder = Path(keyring) if keyring else default_keyring()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / filename
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AlreadyExistsError(f"{what} already exists in {folder}") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def local_kms_uri(name: str, keyring: str | os.PathLike[str] | None = None) -> str:
    return f"local:///{name}" + (f"?KEYRING={os.fspath(keyring)}" if keyring else "")


class LocalKMS:
    """A key file on this machine, used exactly like a cloud KMS key."""

    def __init__(self, uri: str) -> None:
        parsed = parse_uri(uri)
        parsed.check_params(PARAMS)
        if parsed.host:
            raise UsageError(f"local KMS URI must look like local:///<key name>, got {uri!r}")
        self._uri = uri
        self._name = _check_name(parsed.path.lstrip("/"))
        keyring = parsed.params.get("KEYRING")
        self._folder = Path(keyring) if keyring else default_keyring()
        self._key: bytes | None = None

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def master_key_id(self) -> str:
        return self._name

    def _load(self, *, to_decrypt: bool = False) -> AESGCM:
        if self._key is None:
            path = self._folder / f"{self._name}.key"
            try:
                key = path.read_bytes()
            except FileNotFoundError:
                # A new key of the same name cannot decrypt what the old one encrypted.
                hint = (
                    "restore the key file from a copy (a new key cannot decrypt what it encrypted)"
                    if to_decrypt
                    else f"create it with: strongroom keys create {self._name}"
                )
                message = f'local KMS key "{self._name}" not found in keyring {self._folder} ({hint})'
                raise NotFoundError(message) from None
            except OSError as exc:
                raise KMSError(f'cannot read local KMS key "{self._name}": {exc.strerror}') from None
            if len(key) != KEY_SIZE:
                raise KMSError(f'local KMS key file for "{self._name}" is not a {KEY_SIZE}-byte key')
            self._key = key
        return AESGCM(self._key)

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return _FORMAT + nonce + self._load().encrypt(nonce, plaintext, self._name.encode())

    def decrypt(self, ciphertext: bytes) -> bytes:
        aead = self._load(to_decrypt=True)
        if len(ciphertext) < 1 + 12 + 16 or ciphertext[:1] != _FORMAT:
            raise KMSError(f'local KMS "{self._name}": ciphertext is not one of ours')
        try:
            return aead.decrypt(ciphertext[1:13], ciphertext[13:], self._name.encode())
        except InvalidTag:
            raise KMSError(f'local KMS "{self._name}": failed to decrypt data key') from None

    def close(self) -> None:
        self._key = None


register_kms(SCHEME, LocalKMS)
