"""Encryption for backups: CockroachDB's sealed-file format, its key derivation and ENCRYPTION-INFO.

- ``sealed``: the chunked AES-256-GCM file format (write, random-access read, streaming read).
- ``kdf``: passphrase → key (PBKDF2, as CockroachDB) and purpose-bound subkeys (HKDF).
- ``encryption_info``: the ENCRYPTION-INFO protobuf stored next to a full backup.
- ``hashing``: keyed BLAKE3 chunk hashes for incremental backups.
"""

from .encryption_info import EncryptionInfo, kms_identity
from .hashing import ChunkHasher
from .kdf import PBKDF2_ITERATIONS, SALT_SIZE, new_salt, passphrase_key, subkey
from .sealed import (
    CHUNK_SIZE,
    HEADER_SIZE,
    IV_SIZE,
    PREAMBLE,
    TAG_SIZE,
    SealedReader,
    SealedStreamReader,
    SealedWriter,
    appears_encrypted,
    plaintext_size,
    seal,
    sealed_size,
    unseal,
)

__all__ = [
    "CHUNK_SIZE",
    "HEADER_SIZE",
    "IV_SIZE",
    "PBKDF2_ITERATIONS",
    "PREAMBLE",
    "SALT_SIZE",
    "TAG_SIZE",
    "ChunkHasher",
    "EncryptionInfo",
    "SealedReader",
    "SealedStreamReader",
    "SealedWriter",
    "appears_encrypted",
    "kms_identity",
    "new_salt",
    "passphrase_key",
    "plaintext_size",
    "seal",
    "sealed_size",
    "subkey",
    "unseal",
]
