"""The store's metadata file (``<store>/STRONGROOM-STORE``): id, regions, databases' home regions.

Several processes share a store (``serve``, the CLI, apps), so the metadata is re-read whenever
the file changed, and changed only under a lock: read, modify, write atomically. Names of
databases and regions are checked here, where they enter the store.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import NotFoundError, UsageError

MARKER = "STRONGROOM-STORE"
FORMAT = 2
DEFAULT_REGION = "local"
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_database_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise UsageError(
            f"invalid database name {name!r}: use letters, digits and '_', starting with a letter or '_' (max 63)"
        )
    return name


def check_region_name(region: str) -> str:
    if not isinstance(region, str) or not _REGION.match(region):
        raise UsageError(f"invalid region name {region!r}: use letters, digits, '-', '_' or '.' (max 63)")
    return region


class StoreMeta:
    """The metadata of the store at ``path``, always as the newest process left it."""

    def __init__(self, path: Path, doc: dict[str, object]) -> None:
        self.path = path
        self._doc = doc
        self._stamp: tuple[int, int, int] | None = None

    @classmethod
    def read(cls, path: Path, shown_as: str | os.PathLike[str]) -> StoreMeta:
        try:
            doc = json.loads((path / MARKER).read_text())
        except FileNotFoundError:
            raise NotFoundError(
                f"{path} is not a Strongroom store (create one with: strongroom init {shown_as})"
            ) from None
        if doc.get("format") != FORMAT:
            raise UsageError(f"{path}: unsupported store format {doc.get('format')!r}")
        return cls(path, doc)

    @property
    def doc(self) -> dict[str, object]:
        try:
            st = os.stat(self.path / MARKER)
        except FileNotFoundError:
            return self._doc
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._doc, self._stamp = json.loads((self.path / MARKER).read_text()), stamp
        return self._doc

    def update(self, change: Callable[[dict[str, object]], None]) -> None:
        """Apply ``change`` to the newest metadata and rewrite it atomically (temp, fsync, rename)."""
        fd = os.open(self.path / ".meta.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = dict(self.doc)
            change(doc)
            tmp = self.path / f".{MARKER}.tmp"
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(json.dumps(doc, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / MARKER)
            self._doc, self._stamp = doc, None
        finally:
            os.close(fd)

    # -- what it says -----------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return str(self.doc["id"])

    @property
    def regions(self) -> list[str]:
        regions = self.doc["regions"]
        assert isinstance(regions, list)
        return [str(r) for r in regions]

    @property
    def primary_region(self) -> str:
        return self.regions[0]

    @property
    def key_file(self) -> str | None:
        """The local key file URI that wraps the store keys of regions without CMEK."""
        value = self.doc.get("key_file")
        return str(value) if value is not None else None

    def check_region(self, region: str) -> str:
        if region not in self.regions:
            raise UsageError(f'region "{region}" does not exist\nHINT: valid regions: {", ".join(self.regions)}')
        return region

    def database_regions(self) -> dict[str, str]:
        regions = self.doc.get("database_regions", {})
        assert isinstance(regions, dict)
        return {str(k): str(v) for k, v in regions.items()}

    def database_region(self, name: str) -> str | None:
        """The database's home region as declared (``CREATE DATABASE ... PRIMARY REGION``), or None."""
        return self.database_regions().get(name)

    def home_region(self, name: str) -> str:
        """The region whose keys protect database ``name``: its declared region, else the primary."""
        return self.database_region(name) or self.primary_region

    def set_database_region(self, name: str, region: str | None) -> None:
        if self.database_region(name) == region:
            return

        def change(doc: dict[str, object]) -> None:
            regions = doc.get("database_regions", {})
            assert isinstance(regions, dict)
            regions = dict(regions)
            if region is None:
                regions.pop(name, None)
            else:
                regions[name] = region
            doc["database_regions"] = regions

        self.update(change)

    def add_region(self, region: str) -> None:
        def change(doc: dict[str, object]) -> None:
            regions = doc["regions"]
            assert isinstance(regions, list)
            doc["regions"] = [*regions, region]

        self.update(change)
