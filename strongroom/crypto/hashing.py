"""Chunk hashes for incremental backups: BLAKE3, keyed when the backup is encrypted.

Keyed (with a subkey of the backup's data key) so stored hashes say nothing about the plaintext.
"""

from __future__ import annotations

from blake3 import blake3


class ChunkHasher:
    """32-byte BLAKE3 digests, keyed with a 32-byte ``key`` or plain when ``key`` is None."""

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) != 32:
            raise ValueError(f"chunk hash key must be 32 bytes, not {len(key)}")
        self._key = key

    def digest(self, data: bytes | memoryview) -> bytes:
        hasher = blake3(data) if self._key is None else blake3(data, key=self._key)
        return hasher.digest()
