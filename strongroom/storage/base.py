"""The external-storage interface (where backups go) and the registry of backends by URI scheme.

Object names are '/'-separated paths relative to the storage root (a backup collection). Every
write is atomic: a reader sees the whole object or nothing. ``create_only`` writes fail with
:class:`AlreadyExistsError` instead of replacing an object, which is how backups stay write-once.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

from ..errors import UsageError
from ..uri import check_path_names, parse_uri, redact


class ObjectWriter(Protocol):
    """A streaming upload: ``write`` pieces, then ``commit`` makes the object visible at once."""

    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class WriterBase:
    """What every backend's writer shares: a context manager that commits on success, aborts on error."""

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class RandomReader(Protocol):
    """Random access to one object, for restore's ranged reads.

    ``read_at`` may be called from several threads at once (restore decodes packs in parallel):
    a positional read of a file, or one ranged GET.
    """

    size: int

    def read_at(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class ExternalStorage(Protocol):
    @property
    def display_uri(self) -> str:
        """The location with credentials redacted, for messages and listings."""
        ...

    def put(self, name: str, data: bytes, *, create_only: bool = False) -> None: ...

    def writer(self, name: str, *, create_only: bool = False) -> ObjectWriter: ...

    def get(self, name: str) -> bytes: ...

    def open_random(self, name: str) -> RandomReader: ...

    def size(self, name: str) -> int: ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(name, size) of every object whose name starts with ``prefix``, sorted by name."""
        ...

    def delete(self, name: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StorageContext:
    """What a URI may need from its surroundings: ``nodelocal://`` resolves into a store's extern dir."""

    extern_dir: Path | None = None


# Suffix of the temporary objects writers stage before making an object visible; listings never show them.
TMP_SUFFIX = ".strongroom-tmp"

StorageFactory = Callable[[str, StorageContext], ExternalStorage]
_REGISTRY: dict[str, StorageFactory] = {}


def register_storage(scheme: str, factory: StorageFactory) -> None:
    _REGISTRY[scheme.lower()] = factory


def open_storage(uri: str, context: StorageContext | None = None) -> ExternalStorage:
    parsed = parse_uri(uri)
    check_path_names(parsed)
    factory = _REGISTRY.get(parsed.scheme)
    if factory is None:
        known = ", ".join(sorted(s + "://" for s in _REGISTRY))
        raise UsageError(f'unsupported storage scheme "{parsed.scheme}" in {redact(uri)!r} (supported: {known})')
    return factory(uri, context or StorageContext())


def storage_schemes() -> list[str]:
    return sorted(_REGISTRY)


def clean_name(name: str) -> str:
    """Normalise an object name and refuse ones that would escape the storage root."""
    if not name or (name.startswith("/") and name.strip("/") == ""):
        raise UsageError("empty object name")
    norm = posixpath.normpath(name.lstrip("/"))
    if norm in (".", "") or norm.startswith("../") or norm == "..":
        raise UsageError(f"invalid object name {name!r}")
    return norm


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
