"""Where a backup's files go: one URI, or several with CockroachDB's ``COCKROACH_LOCALITY`` parameter.

``BACKUP INTO ('s3://a?COCKROACH_LOCALITY=default', 's3://b?COCKROACH_LOCALITY=region%3Dus-west1')``
writes the files of databases whose home region is ``us-west1`` to the second location and everything
else (the manifest, ENCRYPTION-INFO, LATEST, other databases) to the default one. The parameter is
stripped before the URI reaches its storage backend. Every later operation on the collection must be
given the same locations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from ..errors import IntegrityError, UsageError
from ..storage import ExternalStorage, StorageContext, open_storage
from ..uri import redact

LOCALITY_PARAM = "COCKROACH_LOCALITY"
DEFAULT = "default"


def split_locality(uri: str) -> tuple[str, str | None]:
    """(the URI without COCKROACH_LOCALITY, its value or None)."""
    base, sep, query = uri.partition("?")
    if not sep:
        return uri, None
    pairs = parse_qsl(query, keep_blank_values=True)
    locality = next((v for k, v in pairs if k == LOCALITY_PARAM), None)
    if locality is None:
        return uri, None  # untouched: re-encoding could change how other parameters are written
    rest = [(k, v) for k, v in pairs if k != LOCALITY_PARAM]
    return (base + ("?" + urlencode(rest, safe="/:,=") if rest else "")), locality


def region_locality(region: str) -> str:
    return f"region={region}"


@dataclass
class Destinations:
    """The default storage and, for locality-aware collections, one storage per locality (``region=x``)."""

    default: ExternalStorage
    localities: dict[str, ExternalStorage] = field(default_factory=dict)

    @property
    def display_uri(self) -> str:
        return self.default.display_uri

    def storage_for(self, locality: str) -> ExternalStorage:
        """The storage holding files of ``locality`` ("" = default)."""
        if not locality:
            return self.default
        storage = self.localities.get(locality)
        if storage is None:
            raise IntegrityError(
                f'backup files are stored in locality "{locality}", but no URI with '
                f"{LOCALITY_PARAM}={locality} was given: give every location of the collection"
            )
        return storage

    def locality_for_region(self, region: str | None) -> str:
        """Where a database whose home region is ``region`` goes ("" = default)."""
        if region is not None and region_locality(region) in self.localities:
            return region_locality(region)
        return ""

    def close(self) -> None:
        self.default.close()
        for storage in self.localities.values():
            storage.close()


def open_destinations(uris: str | Sequence[str], context: StorageContext | None = None) -> Destinations:
    """Open one location, or a locality-aware set of them (CockroachDB's rules and errors)."""
    uri_list = [uris] if isinstance(uris, str) else list(uris)
    if not uri_list:
        raise UsageError("no backup location given")
    parsed = [split_locality(u) for u in uri_list]
    if len(parsed) == 1:
        uri, locality = parsed[0]
        if locality not in (None, DEFAULT):
            raise UsageError(f"{LOCALITY_PARAM} {locality} is invalid for a single BACKUP location")
        return Destinations(open_storage(uri, context))
    if any(locality is None for _u, locality in parsed):
        raise UsageError(f"multiple URLs are provided for partitioned BACKUP, but {LOCALITY_PARAM} is not specified")
    defaults = [u for u, locality in parsed if locality == DEFAULT]
    if not defaults:
        raise UsageError("no default URL provided for partitioned backup")
    if len(defaults) > 1:
        raise UsageError("multiple default URLs provided for partitioned backup")
    localities: dict[str, ExternalStorage] = {}
    for uri, locality in parsed:
        assert locality is not None
        if locality == DEFAULT:
            continue
        if "=" not in locality:
            raise UsageError(f"tier must be in the form key=value, not {locality!r} (in {redact(uri)!r})")
        if locality in localities:
            raise UsageError(f"duplicate URI for locality {locality}")
        localities[locality] = open_storage(uri, context)
    return Destinations(open_storage(defaults[0], context), localities)
