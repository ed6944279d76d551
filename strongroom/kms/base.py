"""The KMS interface and the registry of KMS implementations by URI scheme.

A KMS wraps (encrypts) and unwraps the 32-byte data key of a backup or store. Its identity is its
*master key id*, a string defined per scheme exactly as CockroachDB defines it; ENCRYPTION-INFO files
index wrapped keys by SHA-256 of that string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import UsageError
from ..uri import parse_uri, redact


class KMS(Protocol):
    """One customer key, opened from a URI."""

    @property
    def uri(self) -> str: ...

    @property
    def master_key_id(self) -> str: ...

    def encrypt(self, plaintext: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes) -> bytes: ...

    def close(self) -> None: ...


def can_decrypt(kms: KMS) -> bool:
    """False for a wrap-only KMS (public material only, e.g. an age recipient): it encrypts data keys
    but cannot decrypt them. Optional on implementations: a KMS without ``can_decrypt`` can."""
    return bool(getattr(kms, "can_decrypt", True))


def wraps_offline(kms: KMS) -> bool:
    """True when ``encrypt`` needs only public material (age, an asymmetric cloud key): a host holding
    that alone can write a chain it cannot read, so the chain gets a deduplication key of its own."""
    return bool(getattr(kms, "wraps_offline", False))


KMSFactory = Callable[[str], KMS]
_REGISTRY: dict[str, KMSFactory] = {}


def register_kms(scheme: str, factory: KMSFactory) -> None:
    _REGISTRY[scheme.lower()] = factory


def open_kms(uri: str) -> KMS:
    """Build the KMS named by ``uri`` (no network call is made until encrypt/decrypt); behind the
    process's key cache when one is on (see cache.py)."""
    from .cache import cached

    parsed = parse_uri(uri)
    factory = _REGISTRY.get(parsed.scheme)
    if factory is None:
        known = ", ".join(sorted(s + "://" for s in _REGISTRY))
        raise UsageError(f'no KMS found for scheme "{parsed.scheme}" in {redact(uri)!r} (supported: {known})')
    return cached(factory(uri))


def kms_schemes() -> list[str]:
    return sorted(_REGISTRY)
