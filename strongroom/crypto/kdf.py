"""Key derivation: CockroachDB's passphrase key (PBKDF2) and our purpose-bound subkeys (HKDF)."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from ..errors import UsageError

PBKDF2_ITERATIONS = 64000  # CockroachDB's storageccl.GenerateKey
SALT_SIZE = 16
KEY_SIZE = 32


def new_salt() -> bytes:
    """A fresh random salt for a new full backup; it is stored in ENCRYPTION-INFO."""
    return os.urandom(SALT_SIZE)


def passphrase_key(passphrase: str, salt: bytes) -> bytes:
    """The 32-byte file key for ``encryption_passphrase``: PBKDF2-HMAC-SHA256, as CockroachDB."""
    if not passphrase:
        raise UsageError("encryption_passphrase must not be empty")
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, iterations=PBKDF2_ITERATIONS)
    return kdf.derive(passphrase.encode("utf-8"))


def subkey(key: bytes, purpose: str) -> bytes:
    """A 32-byte key for one ``purpose``, derived from ``key`` so the two can never be confused."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=purpose.encode("utf-8"))
    return hkdf.derive(key)
