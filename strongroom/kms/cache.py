"""A cache of unwrapped keys, for processes that run many jobs (``strongroom serve``, schedules).

One KMS unwrap per data key per job already holds; a server that restores, checks and backs up all
day would still call the KMS for the same wrapped key again and again. Like the AWS Encryption SDK's
caching materials manager, this keeps each unwrapped key (keyed by the KMS's master key id and the
exact ciphertext) for at most ``ttl`` seconds and at most ``max_entries`` keys, least recently used
out first, and overwrites an entry's bytes when it leaves. Off unless a process turns it on: the
CLI never does, ``serve`` does (``--key-cache-ttl``).

What it trades: a key revoked or disabled at the KMS keeps working here until its entry expires
(``ttl``), so the store's own CMEK revocation clears the cache at once. The bytes a caller receives
are copies, which Python does not let us wipe; the cache wipes its own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .base import KMS

DEFAULT_TTL_S = 300.0
DEFAULT_MAX_ENTRIES = 1000


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0


class KeyCache:
    def __init__(self, ttl: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("a key cache needs a positive ttl and size")
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: OrderedDict[tuple[str, bytes], tuple[float, bytearray]] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats()

    def get(self, key_id: str, ciphertext: bytes) -> bytes | None:
        now = time.monotonic()
        with self._lock:
            found = self._entries.get((key_id, ciphertext))
            if found is None or found[0] <= now:
                if found is not None:
                    self._evict((key_id, ciphertext))
                self._stats.misses += 1
                return None
            self._entries.move_to_end((key_id, ciphertext))
            self._stats.hits += 1
            return bytes(found[1])

    def put(self, key_id: str, ciphertext: bytes, plaintext: bytes) -> None:
        with self._lock:
            if (key_id, ciphertext) in self._entries:
                self._evict((key_id, ciphertext))
            self._entries[(key_id, ciphertext)] = (time.monotonic() + self.ttl, bytearray(plaintext))
            while len(self._entries) > self.max_entries:
                self._evict(next(iter(self._entries)))

    def _evict(self, entry: tuple[str, bytes]) -> None:
        _expires, value = self._entries.pop(entry)
        value[:] = bytes(len(value))  # wipe what we held
        self._stats.evictions += 1

    def clear(self) -> None:
        """Forget (and wipe) every key: after a revocation, nothing may outlive it here."""
        with self._lock:
            for entry in list(self._entries):
                self._evict(entry)

    def stats(self) -> CacheStats:
        with self._lock:
            s = self._stats
            return CacheStats(s.hits, s.misses, s.evictions, len(self._entries))


class CachingKMS:
    """A KMS whose decrypt answers from ``cache`` when it can; ``last_from_cache`` says whether the
    last decrypt did (the audit log records such a use as cached, not as a KMS call)."""

    def __init__(self, kms: KMS, cache: KeyCache) -> None:
        self._kms, self._cache = kms, cache
        self.last_from_cache = False

    @property
    def uri(self) -> str:
        return self._kms.uri

    @property
    def master_key_id(self) -> str:
        return self._kms.master_key_id

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._kms.encrypt(plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        found = self._cache.get(self._kms.master_key_id, ciphertext)
        self.last_from_cache = found is not None
        if found is not None:
            return found
        plaintext = self._kms.decrypt(ciphertext)
        self._cache.put(self._kms.master_key_id, ciphertext, plaintext)
        return plaintext

    def close(self) -> None:
        self._kms.close()

    def __getattr__(self, name: str) -> object:
        # Whatever else the KMS says of itself (can it decrypt? does it wrap offline?) stays true.
        return getattr(self._kms, name)


_active: KeyCache | None = None


def enable_key_cache(ttl: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES) -> KeyCache:
    """Turn the process's key cache on (replacing, and wiping, any earlier one)."""
    global _active
    if _active is not None:
        _active.clear()
    _active = KeyCache(ttl, max_entries)
    return _active


def disable_key_cache() -> None:
    global _active
    if _active is not None:
        _active.clear()
    _active = None


def key_cache() -> KeyCache | None:
    return _active


def clear_key_cache() -> None:
    if _active is not None:
        _active.clear()


def cached(kms: KMS) -> KMS:
    """``kms`` behind the process's key cache, if one is on."""
    return CachingKMS(kms, _active) if _active is not None else kms
