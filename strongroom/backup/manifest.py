"""A backup layer's manifest: what it holds and every file it relies on, with size and SHA-256.

Stored as JSON, gzipped and sealed (CockroachDB gzips then encrypts its manifests), next to a
``BACKUP_MANIFEST-CHECKSUM`` file holding the first 4 bytes of SHA-256 over the stored bytes, which
is checked before any decryption. Because the manifest is authenticated and names each file's size,
SHA-256 and sealed-file IV, a swapped, truncated or replaced file is caught before a byte is trusted.
"""

from __future__ import annotations

import builtins  # Manifest.bytes (CockroachDB's field name) shadows the type in the class body
import gzip
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import EncryptionError, IntegrityError, NotFoundError
from ..storage import ExternalStorage
from .keys import APPEARS_ENCRYPTED, BackupKeys
from .layout import CHECKSUM_SUFFIX, MANIFEST

FORMAT = "strongroom-backup/1"


@dataclass
class FileRef:
    """A stored file: collection-relative path, stored size, SHA-256 of stored bytes, sealed IV (hex),
    and the locality whose storage holds it ("" = the default location)."""

    path: str
    size: int
    sha256: str
    iv: str = ""
    locality: str = ""


@dataclass
class ObjectInfo:
    name: str
    type: str
    rows: int
    index_entries: int
    bytes: int
    sql: str | None = None


@dataclass
class DatabaseEntry:
    """One database (or a table-only subset of one) in a layer: its page image and its counts."""

    name: str
    page_size: int
    page_count: int
    index: FileRef
    objects: list[ObjectInfo]
    rows: int
    index_entries: int
    bytes: int
    tables: list[str] | None = None  # set when only these tables were backed up
    region: str | None = None  # the database's home region (where a locality-aware backup put it)
    chunks_written: int = 0
    stored_bytes: int = 0  # bytes of new chunk data this layer wrote for the database
    # The whole database as of this layer. A full layer's counts above are that already; an
    # incremental's count what changed (CockroachDB's meaning), so it carries these for RESTORE.
    total_rows: int | None = None
    total_index_entries: int | None = None
    total_bytes: int | None = None
    # An encrypted source's chunk fingerprints (ciphertext hashes, see data.FingerprintWriter)
    fingerprints: FileRef | None = None
    # What the database is: "sqlite" (a page image) or "postgres" (strongroom.postgres: per-table
    # COPY streams cut by content-defined chunking; ``index`` is then its stream index).
    kind: str = "sqlite"

    @property
    def size(self) -> int:
        return self.page_size * self.page_count


@dataclass
class Manifest:
    backup_type: str  # "full" | "incremental"
    job_id: int
    full_subdir: str
    layer_dir: str  # collection-relative dir of this layer
    start_time: str | None  # previous layer's end (incrementals), ISO-8601 UTC
    end_time: str
    chunk_size: int
    encrypted: bool
    is_full_cluster: bool
    packs: list[FileRef]  # every pack this layer's indexes point into, older layers' included
    databases: list[DatabaseEntry]
    previous_layers: list[str] = field(default_factory=list)
    format: str = FORMAT
    # A full backup's own LATEST file name, sealed here so a LATEST file copied over another (a
    # rollback) does not verify; LATEST itself stays the plain subdir CockroachDB reads.
    latest_file: str = ""

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.databases)

    @property
    def index_entries(self) -> int:
        return sum(d.index_entries for d in self.databases)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.databases)

    def files(self) -> list[FileRef]:
        """Every file this layer needs to be restored: its indexes and all packs they reference."""
        refs = [d.index for d in self.databases]
        refs += [d.fingerprints for d in self.databases if d.fingerprints is not None]
        return refs + list(self.packs)

    def database(self, name: str) -> DatabaseEntry | None:
        return next((d for d in self.databases if d.name == name), None)

    def to_json(self) -> builtins.bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: builtins.bytes) -> Manifest:
        raw: dict[str, Any] = json.loads(data)
        if raw.get("format") != FORMAT:
            raise IntegrityError(f"unsupported backup manifest format {raw.get('format')!r}")
        raw["packs"] = [FileRef(**p) for p in raw["packs"]]
        dbs = []
        for d in raw["databases"]:
            d["index"] = FileRef(**d["index"])
            if d.get("fingerprints") is not None:
                d["fingerprints"] = FileRef(**d["fingerprints"])
            d["objects"] = [ObjectInfo(**o) for o in d["objects"]]
            dbs.append(DatabaseEntry(**d))
        raw["databases"] = dbs
        return cls(**raw)


def checksum(stored: bytes) -> bytes:
    return hashlib.sha256(stored).digest()[:4]


def write_manifest(
    storage: ExternalStorage, layer_dir: str, manifest: Manifest, keys: BackupKeys, *, file: str = MANIFEST
) -> None:
    """``file``: BACKUP_MANIFEST, or a write-only host's own HOST-VIEW of the layer (see chainkeys)."""
    stored = keys.seal(gzip.compress(manifest.to_json(), compresslevel=6, mtime=0))
    # The checksum goes first: a manifest without its checksum is never visible as complete.
    storage.put(f"{layer_dir}/{file}{CHECKSUM_SUFFIX}", checksum(stored), create_only=True)
    storage.put(f"{layer_dir}/{file}", stored, create_only=True)


def read_manifest(storage: ExternalStorage, layer_dir: str, keys: BackupKeys, *, file: str = MANIFEST) -> Manifest:
    keys = keys.for_layer(layer_dir)
    name = f"{layer_dir}/{file}"
    try:
        stored = storage.get(name)
    except NotFoundError:
        raise NotFoundError(f"{storage.display_uri}: no backup found at /{layer_dir} (missing {file})") from None
    try:
        expected = storage.get(name + CHECKSUM_SUFFIX)
    except NotFoundError:
        raise IntegrityError(f"/{layer_dir}: {file}{CHECKSUM_SUFFIX} is missing") from None
    got = checksum(stored)
    if got != expected:
        raise IntegrityError(f"/{layer_dir}/{file}: checksum mismatch; expected {expected.hex()}, got {got.hex()}")
    plain = keys.unseal(stored, f"reading /{layer_dir}/{file}")
    try:
        body = gzip.decompress(plain)
    except (OSError, EOFError):
        if plain[:7] == b"encrypt":
            raise EncryptionError(APPEARS_ENCRYPTED) from None
        raise IntegrityError(f"/{layer_dir}/{file} is corrupt") from None
    try:
        manifest = Manifest.from_json(body)
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"/{layer_dir}/{file} is corrupt: {type(exc).__name__}") from None
    if manifest.layer_dir != layer_dir:
        # A manifest copied from another layer would otherwise authenticate fine under the same key.
        raise IntegrityError(f"/{layer_dir}/{file} belongs to /{manifest.layer_dir}: files were moved or swapped")
    return manifest
