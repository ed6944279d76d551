"""BACKUP, RESTORE, SHOW BACKUPS, SHOW BACKUP and ALTER BACKUP over a backup collection.

The engine knows nothing of stores or SQL: callers name the databases to read (``DatabaseSource``)
and where restored databases go (``RestoreTarget``). Every statement and CLI command is a thin call
into the functions here.

Rollback and deletion (an attacker who can write the bucket but has no key): RESTORE, SHOW BACKUP and
BACKUP INTO LATEST cross-check LATEST against the listing (a completed full newer than LATEST's is a
rollback), check the full's sealed manifest names the LATEST file read (a copied LATEST does not
verify), refuse a layer with files but neither manifest nor BACKUP-LOCK (a removed manifest), and
check the newest manifest names exactly the layers listed before it. What the bucket alone cannot
show: the newest full deleted together with its LATEST file, or the newest incremental deleted
whole (or given a forged BACKUP-LOCK so it looks like a killed backup); both leave a consistent
older collection, which only state kept outside the bucket (a store remembering the newest backup it
wrote) can catch. Without a key (unencrypted) only the structural checks hold: manifests can be
rewritten too.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import apsw
import zstandard

from ..errors import AlreadyExistsError, ConflictError, IntegrityError, NotFoundError, StrongroomError, UsageError
from ..sqlite import (
    DatabaseStats,
    Snapshot,
    apply_key,
    census_stats,
    compute_stats,
    copy_table,
    open_image,
    schema_image,
    write_database,
)
from ..storage import ExternalStorage, StorageContext
from . import layout
from .chainkeys import (
    CHAIN_KEYS,
    HOST_FINGERPRINT_SUFFIX,
    HOST_INDEX_SUFFIX,
    HOST_VIEW,
    LAYER_KEY,
    chunk_hash_key,
    encode_chain_keys,
    host_view_key,
    is_write_only_chain,
    layer_key_marker,
)
from .data import (
    CHUNK_SIZE,
    CODEC_RAW,
    CODEC_ZSTD,
    NO_FINGERPRINT,
    ZSTD_LEVEL,
    BackupImage,
    ChunkIndex,
    ChunkRecord,
    FingerprintWriter,
    IndexWriter,
    PackTable,
    PackWriter,
    StorageFor,
    StoredFile,
    iter_fingerprints,
)
from .destinations import Destinations, open_destinations
from .jobs import JobResult, Progress, new_job_id
from .keys import BackupKeys, Encryption, add_kms, existing_backup_keys, new_backup_keys
from .manifest import DatabaseEntry, FileRef, Manifest, ObjectInfo, read_manifest, write_manifest
from .owners import forget_in_chain, lock_content, remove_abandoned_layers, remove_temp_files
from .reader import BackupReader
from .requests import LATEST, AlterBackupRequest, BackupRequest, RestoreRequest, ShowBackupRequest
from .writeonly import HostChain, chain_id, check_uris_used, host_view, load_chain, start_chain, wants_write_only_chain

Clock = Callable[[], datetime]
#: Writes a layer's databases from a source other than SQLite files (strongroom.postgres): given the
#: layer (its packs, keys, files written), the previous layer's manifest (None for a full) and the
#: progress callback, returns the layer's database entries.
DatabasesWriter = Callable[["LayerWriter", "Manifest | None", "Progress | None"], "list[DatabaseEntry]"]
Collection = str | Sequence[str]  # one location, or a locality-aware set (COCKROACH_LOCALITY)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DatabaseSource:
    """A database to back up: its name in the backup, its file, its at-rest key, optional table subset,
    and its home region (a locality-aware backup sends it to that region's location)."""

    name: str
    path: Path
    key: bytes | None = None
    tables: tuple[str, ...] | None = None
    region: str | None = None


class RestoreTarget(Protocol):
    """Where restored databases go (a store, or a plain directory/file)."""

    def database_path(self, name: str) -> Path: ...

    def database_key(self, name: str) -> bytes | None:
        """The key an existing database of the target opens with."""
        ...

    def connect(self, name: str) -> apsw.Connection: ...

    def prepare_database(self, name: str, region: str | None) -> bytes | None:
        """Record a database about to be restored (its home region, as backed up) and return the
        key to write it with. Called before any byte is written."""
        ...

    def discard_database(self, name: str) -> None:
        """Undo a restore that failed part way: remove the database's files and records."""
        ...


@contextmanager
def _destinations(collection: Collection, context: StorageContext | None) -> Iterator[Destinations]:
    dests = open_destinations(collection, context)
    try:
        yield dests
    finally:
        dests.close()


def _resolve_full(storage: ExternalStorage, subdir: str) -> tuple[str, str | None]:
    """The full subdir named, and (for LATEST) the LATEST file that named it.

    LATEST is cross-checked against the listing: a completed full backup newer than the one LATEST
    names means LATEST was rolled back (an older LATEST copied over the newest, or the newest
    deleted). What this cannot see: the newest full backup deleted together with its LATEST file
    leaves a consistent older collection; only trusted state outside the bucket could tell.
    """
    if subdir.upper() == "LATEST":
        name, full = layout.read_latest_entry(storage)
        fulls = layout.scan_fulls(storage)
        named: set[str] | None = None
        for sub in sorted(fulls):
            st = fulls[sub]
            if sub <= full:
                continue
            if st.manifest_removed:
                raise IntegrityError(
                    f"the collection has been tampered with: backup {sub}, newer than the {full} that LATEST "
                    f"names, has files but no {layout.MANIFEST} (and no BACKUP-LOCK of a killed backup)"
                )
            if st.manifest and st.lock and named is None:
                named = layout.latest_contents(storage)
            if layout.full_complete(storage, st, named):
                raise IntegrityError(
                    f"the collection has been rolled back: LATEST names {full}, but a newer completed backup "
                    f"{sub} exists"
                )
        if full not in fulls or not fulls[full].manifest:
            raise NotFoundError(f"{storage.display_uri}: LATEST names {full}, which has no {layout.MANIFEST}")
        return full, name
    full = layout.normalize_subdir(subdir)
    if not storage.exists(f"{full.strip('/')}/{layout.MANIFEST}"):
        raise NotFoundError(f"{storage.display_uri}: no full backup found at {full} (SHOW BACKUPS IN ... lists them)")
    return full, None


def _chain(storage: ExternalStorage, full: str) -> list[str]:
    """Layer dirs of a chain, full first: its completed incrementals. A killed backup's layer (it
    still holds its BACKUP-LOCK) is skipped; a layer with files but neither manifest nor lock lost
    its manifest, which would silently end the chain one layer early, so it is an error."""
    layers = [full.strip("/")]
    for d, st in sorted(layout.scan_incrementals(storage, full).items()):
        if st.partial:
            continue
        if st.manifest_removed:
            raise IntegrityError(
                f"the collection has been rolled back: incremental backup /{d} has files but its "
                f"{layout.MANIFEST} is missing (and no BACKUP-LOCK of a killed backup is there)"
            )
        if st.manifest:
            layers.append(d)
    return layers


def _check_chain(
    storage: ExternalStorage, layers: list[str], first: Manifest, last: Manifest, latest: str | None
) -> None:
    """The sealed manifests agree with the listing: the full's own LATEST file is the one read (when
    it recorded one), and the newest layer names exactly the layers before it."""
    if latest is not None and first.latest_file and first.latest_file != latest:
        raise IntegrityError(
            f"the collection has been rolled back: {latest} names {first.full_subdir}, but that backup "
            f"wrote {first.latest_file}: an older LATEST file was copied over a newer one"
        )
    if last.layer_dir != layers[-1] or (len(layers) > 1 and last.previous_layers != layers[:-1]):
        missing = sorted(set(last.previous_layers) - set(layers))
        raise IntegrityError(
            f"the backup chain of {first.full_subdir} does not match its manifests: /{last.layer_dir} "
            f"names earlier layers {last.previous_layers}"
            + (f"; missing: {', '.join('/' + m for m in missing)}" if missing else "")
        )


def _open_chain(
    storage: ExternalStorage, full: str, latest: str | None, keys: BackupKeys, file: str = layout.MANIFEST
) -> tuple[list[str], Manifest, Manifest]:
    layers = _chain(storage, full)
    first = read_manifest(storage, layers[0], keys, file=file)
    last = first if len(layers) == 1 else read_manifest(storage, layers[-1], keys, file=file)
    _check_chain(storage, layers, first, last, latest)
    return layers, first, last


# ---------------------------------------------------------------------------------------------- BACKUP


@dataclass
class _LayerWriter:
    """The files one backup layer writes: packs per locality, and a list of what to remove on failure."""

    dests: Destinations
    layer_dir: str
    keys: BackupKeys
    view_keys: BackupKeys | None = None  # a write-only chain: the host's own copies (HOST-VIEW, *.hidx)
    view_indexes: dict[str, FileRef] = field(default_factory=dict)
    view_fingerprints: dict[str, FileRef] = field(default_factory=dict)
    table: PackTable = field(default_factory=PackTable)
    written: list[tuple[str, str]] = field(default_factory=list)  # (locality, path)
    _packs: dict[str, PackWriter] = field(default_factory=dict)

    def packs(self, locality: str) -> PackWriter:
        writer = self._packs.get(locality)
        if writer is None:
            writer = PackWriter(self.dests.storage_for(locality), self.layer_dir, self.keys, self.table, locality)
            writer.on_pack_done = lambda ref: self.written.append((ref.locality, ref.path))
            self._packs[locality] = writer
        return writer

    def finish(self) -> None:
        for writer in self._packs.values():
            writer.finish()

    def abort(self) -> None:
        for writer in self._packs.values():
            writer.abort()


_tls = threading.local()
_BATCH = 16  # chunks per worker task (1 MiB): amortises task overhead and GIL hand-offs
_INFLIGHT_BATCHES = 8  # bounds memory to ~8 MiB of chunks in flight, whatever the database size

ChunkResult = tuple[bytes, bytes | memoryview | None, int]  # digest, stored bytes (None: unchanged), codec


@dataclass
class _Previous:
    """What an incremental needs of the previous layer for one database."""

    manifest: Manifest
    entry: DatabaseEntry
    index: ChunkIndex
    storage_for: StorageFor
    keys: BackupKeys
    readable: bool = True  # False: a write-only host's HOST-VIEW (no counts, and no key for the data)

    @property
    def comparable(self) -> bool:
        return self.index.chunk_size == CHUNK_SIZE

    def totals(self) -> tuple[int, int, int] | None:
        """The whole database's rows, index entries and bytes at the previous layer's end time."""
        e = self.entry
        if not self.readable:
            return None  # counted afresh on the snapshot: the old pages cannot be read here
        if self.manifest.backup_type == "full":
            return e.rows, e.index_entries, e.bytes
        if e.total_rows is None or e.total_index_entries is None or e.total_bytes is None:
            return None  # written before incrementals carried their totals
        return e.total_rows, e.total_index_entries, e.total_bytes


def _hash_and_compress(
    blocks: list[memoryview | None], prev_digests: list[bytes | None], hasher: Callable[[bytes], bytes]
) -> list[ChunkResult]:
    """Worker: hash each chunk; compress those that changed (zstd releases the GIL: runs in parallel)."""
    cctx = getattr(_tls, "cctx", None)
    if cctx is None:
        cctx = _tls.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    out: list[ChunkResult] = []
    for block, prev in zip(blocks, prev_digests, strict=True):
        if block is None:  # known unchanged without reading it (its ciphertext is the same)
            assert prev is not None
            out.append((prev, None, CODEC_RAW))
            continue
        digest = hasher(block)  # type: ignore[arg-type]  # blake3 hashes any buffer
        if digest == prev:
            out.append((digest, None, CODEC_RAW))
            continue
        packed = cctx.compress(block)
        if len(packed) >= len(block):
            out.append((digest, block, CODEC_RAW))
        else:
            out.append((digest, packed, CODEC_ZSTD))
    return out


def _backup_database(
    src: DatabaseSource,
    snapshot: Snapshot,
    layer: _LayerWriter,
    previous: _Previous | None,
    pool: ThreadPoolExecutor,
    stats_pool: ThreadPoolExecutor,
    progress: Callable[[int], None],
    db_number: int,
) -> DatabaseEntry:
    locality = layer.dests.locality_for_region(src.region)
    packs = layer.packs(locality)
    index_path = f"{layer.layer_dir}/data/db-{db_number:04d}.idx"
    storage = layer.dests.storage_for(locality)
    index = IndexWriter(storage, index_path, layer.keys, CHUNK_SIZE, snapshot.page_size, snapshot.size, locality)
    view_index = None
    if layer.view_keys is not None:  # the same records, for a host that cannot read the layer's key
        view_path = index_path.removesuffix(".idx") + HOST_INDEX_SUFFIX
        view_index = IndexWriter(
            storage, view_path, layer.view_keys, CHUNK_SIZE, snapshot.page_size, snapshot.size, locality
        )
    prev_records: Iterator[ChunkRecord] | None = None
    prev_packs: list[FileRef] = []
    if previous is not None and previous.index.page_size == snapshot.page_size and previous.comparable:
        prev_records, prev_packs = iter(previous.index), previous.manifest.packs
    # A full backup (or an incremental with nothing to compare to) counts rows with dbstat on the
    # snapshot's second connection while the pages stream (same snapshot, in parallel); an
    # incremental counts only the changed pages, so it must wait for them.
    full_stats = stats_pool.submit(snapshot.stats) if prev_records is None else None
    changed = bytearray(-(-snapshot.size // CHUNK_SIZE))
    inflight: deque[tuple[int, list[ChunkRecord | None], Future[list[ChunkResult]]]] = deque()
    stored_before = packs.stored_bytes
    chunks_written = 0
    hasher = layer.keys.hasher.digest

    def drain_one() -> None:
        """Write the oldest batch's results in chunk order: packs and index stay sequential."""
        nonlocal chunks_written
        first, prevs, fut = inflight.popleft()
        for i, (prev, (digest, data, codec)) in enumerate(zip(prevs, fut.result(), strict=True), start=first):
            if data is None:
                assert prev is not None
                slot = layer.table.slot_for(prev_packs[prev.pack])
                record = ChunkRecord(digest, slot, prev.offset, prev.length, prev.codec)
            else:
                slot, offset = packs.add(data)
                record = ChunkRecord(digest, slot, offset, len(data), codec)
                changed[i] = 1
                chunks_written += 1
            index.add(record)
            if view_index is not None:
                view_index.add(record)
        progress(CHUNK_SIZE * len(prevs))

    def submit(first: int, blocks: list[memoryview | None]) -> None:
        prevs = [next(prev_records, None) if prev_records is not None else None for _ in blocks]
        digests = [p.digest if p is not None else None for p in prevs]
        inflight.append((first, prevs, pool.submit(_hash_and_compress, blocks, digests, hasher)))
        while len(inflight) > _INFLIGHT_BATCHES or (inflight and inflight[0][2].done()):
            drain_one()

    fingerprints = view_fps = None
    if snapshot.encrypted:
        fp_path = f"{layer.layer_dir}/data/db-{db_number:04d}.fpr"
        fingerprints = FingerprintWriter(storage, fp_path, layer.keys, len(changed), locality)
        if layer.view_keys is not None:  # so a write-only host's next incremental skips unchanged chunks too
            view_path = fp_path.removesuffix(".fpr") + HOST_FINGERPRINT_SUFFIX
            view_fps = FingerprintWriter(storage, view_path, layer.view_keys, len(changed), locality)
    try:
        if fingerprints is None:
            # One read per batch (1 MiB), sliced into chunk views without copying.
            for n, block in enumerate(snapshot.iter_blocks(CHUNK_SIZE * _BATCH)):
                view = memoryview(block)
                submit(n * _BATCH, [view[j : j + CHUNK_SIZE] for j in range(0, len(view), CHUNK_SIZE)])
        else:
            prev_fps = None
            if prev_records is not None and previous is not None and previous.entry.fingerprints is not None:
                prev_fps = iter_fingerprints(previous.storage_for, previous.entry.fingerprints, previous.keys)
            writers = [w for w in (fingerprints, view_fps) if w is not None]

            def add_fingerprint(mark: bytes) -> None:
                for w in writers:
                    w.add(mark)

            for first, blocks in _changed_by_ciphertext(snapshot, add_fingerprint, prev_fps, hasher):
                submit(first, blocks)
        while inflight:
            drain_one()
        ref = index.finish()
        if view_index is not None:
            layer.view_indexes[src.name] = view_index.finish()
            layer.written.append((locality, layer.view_indexes[src.name].path))
        fp_ref = fingerprints.finish() if fingerprints is not None else None
        if view_fps is not None:
            layer.view_fingerprints[src.name] = view_fps.finish()
            layer.written.append((locality, layer.view_fingerprints[src.name].path))
    except BaseException:
        for _first, _prevs, fut in inflight:
            fut.cancel()
        if full_stats is not None:  # its connection is closed with the snapshot: let it finish first
            with suppress(Exception):
                full_stats.result()
        index.abort()
        if view_index is not None:
            view_index.abort()
        if fingerprints is not None:
            fingerprints.abort()
        if view_fps is not None:
            view_fps.abort()
        raise
    layer.written.append((locality, ref.path))
    if fp_ref is not None:
        layer.written.append((locality, fp_ref.path))

    totals: tuple[int, int, int] | None = None
    if full_stats is not None:
        stats = full_stats.result()
        if previous is not None:
            totals = _sums(_objects(stats, src.tables))
    else:
        assert previous is not None
        stats, totals = _incremental_counts(snapshot, changed, previous, src.tables)
    objects = _objects(stats, src.tables)
    return DatabaseEntry(
        name=src.name,
        page_size=snapshot.page_size,
        page_count=snapshot.page_count,
        index=ref,
        objects=objects,
        rows=sum(o.rows for o in objects),
        index_entries=sum(o.index_entries for o in objects),
        bytes=sum(o.bytes for o in objects),
        tables=list(src.tables) if src.tables is not None else None,
        chunks_written=chunks_written,
        stored_bytes=packs.stored_bytes - stored_before,
        region=src.region,
        total_rows=None if totals is None else totals[0],
        total_index_entries=None if totals is None else totals[1],
        total_bytes=None if totals is None else totals[2],
        fingerprints=fp_ref,
    )


def _changed_by_ciphertext(
    snapshot: Snapshot,
    add_fingerprint: Callable[[bytes], None],
    previous: Iterator[bytes] | None,
    hasher: Callable[[bytes], bytes],
) -> Iterator[tuple[int, list[memoryview | None]]]:
    """An encrypted source, batch by batch: each chunk's plaintext, or None where the database file
    holds the same ciphertext as at the previous backup (so the same plaintext: it is not
    decrypted). Chunks with a page in the WAL are always read, and get no fingerprint."""
    per_chunk = CHUNK_SIZE // snapshot.page_size
    in_wal = {(p - 1) // per_chunk for p in snapshot.wal_pages()}
    count = -(-snapshot.size // CHUNK_SIZE)
    for first in range(0, count, _BATCH):
        offset = first * CHUNK_SIZE
        stored = memoryview(snapshot.stored(offset, min(CHUNK_SIZE * _BATCH, snapshot.size - offset)))
        blocks: list[memoryview | None] = []
        for i in range(first, min(first + _BATCH, count)):
            length = min(CHUNK_SIZE, snapshot.size - i * CHUNK_SIZE)
            piece = stored[(i - first) * CHUNK_SIZE : (i - first) * CHUNK_SIZE + length]
            mark = hasher(piece) if len(piece) == length and i not in in_wal else NO_FINGERPRINT  # type: ignore[arg-type]
            add_fingerprint(mark)
            before = next(previous, NO_FINGERPRINT) if previous is not None else NO_FINGERPRINT
            if mark != NO_FINGERPRINT and mark == before:
                blocks.append(None)
            else:
                blocks.append(memoryview(snapshot.read(i * CHUNK_SIZE, length)))
        yield first, blocks


def _objects(stats: DatabaseStats, tables: Sequence[str] | None) -> list[ObjectInfo]:
    objects = [ObjectInfo(o.name, o.type, o.rows, o.index_entries, o.bytes, o.sql) for o in stats.objects]
    if tables is not None:
        wanted = set(tables)
        objects = [o for o in objects if o.name in wanted]
    return objects


def _sums(objects: list[ObjectInfo]) -> tuple[int, int, int]:
    return sum(o.rows for o in objects), sum(o.index_entries for o in objects), sum(o.bytes for o in objects)


# Above this share of changed chunks, dbstat's C walk (about 1.5 s per GiB, whatever the share) beats
# parsing the changed pages in Python (about 5.5 s per GiB of changed pages).
_CENSUS_MAX_SHARE = 0.25


def _incremental_counts(
    snapshot: Snapshot, changed: bytearray, previous: _Previous, tables: Sequence[str] | None
) -> tuple[DatabaseStats, tuple[int, int, int] | None]:
    """What changed (the cells on the changed pages, as CockroachDB reports an incremental's rows),
    and the whole database's totals, for RESTORE to report without counting the restored file.

    Totals carry over: the previous totals, less what the changed pages held before, plus what they
    hold now. Unchanged chunks are byte-identical in both images, so the old pages are read from
    the previous layer only where a chunk changed (or lies past the end of the new image)."""
    per_chunk = CHUNK_SIZE // snapshot.page_size
    old_count = previous.entry.page_count
    changed_pages = {
        p
        for chunk, flag in enumerate(changed)
        if flag
        for p in range(chunk * per_chunk + 1, min((chunk + 1) * per_chunk, snapshot.page_count) + 1)
    }
    gone = range(snapshot.page_count + 1, old_count + 1)  # pages the database no longer has
    prev_totals = previous.totals()
    if len(changed_pages) + len(gone) > _CENSUS_MAX_SHARE * max(snapshot.page_count, 1) or prev_totals is None:
        stats = snapshot.stats([i for i, flag in enumerate(changed) if flag], per_chunk)
        return stats, _sums(_objects(snapshot.stats(), tables))
    shared: dict[int, list[int]] = {}  # interior pages outside the change: the same in both images
    now = snapshot.census(changed_pages, shared)
    old_pages = changed_pages.union(gone)
    old_image = BackupImage(previous.storage_for, previous.entry.index, previous.manifest.packs, previous.keys)
    try:
        page_size = snapshot.page_size

        def old_page(pgno: int) -> bytes:
            if pgno in old_pages:
                return old_image.read((pgno - 1) * page_size, page_size)
            return snapshot.page(pgno)

        old_conn = open_image(old_image)
        try:
            before = census_stats(old_conn, old_page, old_count, old_pages, shared)
        finally:
            old_conn.close()
    finally:
        old_image.close()
    was, is_now = _sums(_objects(before, tables)), _sums(_objects(now, tables))
    totals = (
        prev_totals[0] - was[0] + is_now[0],
        prev_totals[1] - was[1] + is_now[1],
        prev_totals[2] - was[2] + is_now[2],
    )
    return now, totals


def backup(
    request: BackupRequest,
    sources: list[DatabaseSource],
    *,
    context: StorageContext | None = None,
    progress: Progress | None = None,
    clock: Clock = utcnow,
    scratch_dir: Path | None = None,
    job_id: int | None = None,
    write_databases: DatabasesWriter | None = None,
) -> JobResult:
    """Take a full backup into a new subdir, or (``request.incremental`` = "LATEST" or a subdir) an
    incremental one, of ``sources`` (the databases the caller resolved ``request``'s targets to).

    ``write_databases`` reads the databases some other way than as SQLite files (``sources`` then
    only name them, for the incremental's same-targets check; none, on an incremental, means the
    chain's own targets: ``BACKUP INTO LATEST IN ...`` after ``BACKUP DATABASE shop INTO ...``)."""
    enc = request.encryption
    incremental = request.incremental
    is_full_cluster = request.is_full_cluster
    follows_chain = write_databases is not None and incremental is not None and not sources
    if not sources and not follows_chain:
        raise UsageError("nothing to back up: no databases")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise UsageError("a database is named twice in the backup targets")
    job_id = job_id or new_job_id()
    with _destinations(request.collection, context) as dests:
        storage = dests.default
        remove_abandoned_layers(storage)  # what backups killed on this host left behind
        start_time: str | None = None
        prev_manifest: Manifest | None = None
        previous_layers: list[str] = []
        host_chain: HostChain | None = None
        view_keys: BackupKeys | None = None  # a write-only chain: what the host reads of the previous layer
        chain_secrets: tuple[bytes, bytes] | None = None
        layer_step: int | None = None
        if incremental is None:
            keys, info = new_backup_keys(enc)
            if keys.key is not None and wants_write_only_chain(enc):
                # Public keys only may write this chain's incrementals: random dedup key and ratchet seed.
                chain_secrets = (os.urandom(32), os.urandom(32))
                keys = BackupKeys(keys.key, hash_key=chunk_hash_key(chain_secrets[0]))
                view_keys = BackupKeys(host_view_key(chain_secrets[0]))
            now = clock()
            full = layout.full_subdir(now)
            layer_dir = full.strip("/")
            if any(True for _ in storage.list(layer_dir + "/")):
                raise AlreadyExistsError(
                    f"A full backup already exists in {full}. Consider running an incremental backup "
                    f"to this location with BACKUP INTO '{full}' IN '{storage.display_uri}'."
                )
            backup_type = "full"
        else:
            full, latest = _resolve_full(storage, incremental)
            write_only = is_write_only_chain(storage, full)
            host_chain = load_chain(storage, full) if write_only else None
            if write_only and host_chain is None:
                # Its layer keys come from a ratchet state only that host holds (see chainkeys).
                raise UsageError(
                    f"the chain of {full} was started by a write-only backup host: append incrementals "
                    "from that host, or take a new full backup here with BACKUP INTO"
                )
            if host_chain is not None:
                # This host started the chain: it appends with what it kept, never unwrapping a key.
                check_uris_used(storage, full, enc)
                view_keys = host_chain.view_keys
                previous_layers, _first, prev_manifest = _open_chain(storage, full, latest, view_keys, HOST_VIEW)
                layer_step, layer_key = host_chain.advance()
                keys = BackupKeys(layer_key, hash_key=host_chain.hash_key)
            else:
                keys = existing_backup_keys(storage, full, enc)
                previous_layers, _first, prev_manifest = _open_chain(storage, full, latest, keys)
            if follows_chain:
                is_full_cluster = prev_manifest.is_full_cluster
            else:
                _check_same_targets(prev_manifest, sources, is_full_cluster)
            info = None
            now = clock()
            if now <= datetime.fromisoformat(prev_manifest.end_time):
                now = datetime.fromisoformat(prev_manifest.end_time) + timedelta(milliseconds=10)
            layer_dir = layout.incrementals_prefix(full) + layout.incremental_dirname(now)
            if any(True for _ in storage.list(layer_dir + "/")):
                raise AlreadyExistsError(f"an incremental backup already exists at /{layer_dir}")
            start_time = prev_manifest.end_time
            backup_type = "incremental"

        layer = _LayerWriter(dests, layer_dir, keys, view_keys)
        # The lock is written first and removed last (after LATEST): a layer without a manifest and
        # without a lock was not left by a killed backup (see layout.LayerState).
        lock = f"{layer_dir}/{layout.LOCK_PREFIX}{job_id}"
        storage.put(lock, lock_content(), create_only=True)
        latest_file = layout.latest_name(clock()) if incremental is None else ""
        try:
            forgetting = forget_in_chain(storage, full) if incremental is not None else None
            if forgetting is not None:
                raise ConflictError(
                    f"a forget is removing /{forgetting} from the chain of {full}: run this backup when it "
                    "is done (strongroom prune finishes a forget that was interrupted)"
                )
            if info is not None:
                storage.put(f"{layer_dir}/{layout.ENCRYPTION_INFO}", info, create_only=True)
                layer.written.append(("", f"{layer_dir}/{layout.ENCRYPTION_INFO}"))
            if chain_secrets is not None:
                assert keys.key is not None
                storage.put(f"{layer_dir}/{CHAIN_KEYS}", encode_chain_keys(keys.key, *chain_secrets), create_only=True)
                layer.written.append(("", f"{layer_dir}/{CHAIN_KEYS}"))
            if layer_step is not None:
                storage.put(f"{layer_dir}/{LAYER_KEY}", layer_key_marker(layer_step), create_only=True)
                layer.written.append(("", f"{layer_dir}/{LAYER_KEY}"))
            prev_keys = view_keys if host_chain is not None else None
            if write_databases is None:
                entries = _backup_all(dests, layer, sources, prev_manifest, keys, progress, scratch_dir, prev_keys)
            else:
                entries = write_databases(layer, prev_manifest, progress)
            layer.finish()
            manifest = Manifest(
                backup_type=backup_type,
                job_id=job_id,
                full_subdir=full,
                layer_dir=layer_dir,
                start_time=start_time,
                end_time=now.isoformat(),
                chunk_size=CHUNK_SIZE,
                encrypted=keys.encrypted,
                is_full_cluster=is_full_cluster,
                packs=layer.table.final(),
                databases=entries,
                previous_layers=previous_layers,
                latest_file=latest_file,
            )
            layer.written += _write_partitions(dests, manifest, keys)
            write_manifest(storage, layer_dir, manifest, keys)
            if view_keys is not None:
                view = host_view(manifest, layer.view_indexes, layer.view_fingerprints)
                write_manifest(storage, layer_dir, view, view_keys, file=HOST_VIEW)
            if chain_secrets is not None:
                # The host keeps the dedup key and the next ratchet state; the data key and seed go.
                start_chain(chain_id(storage, full), *chain_secrets)
        except BaseException:
            layer.abort()  # aborts in-flight uploads (an S3 multipart upload leaves no parts behind)
            # Best effort: a failed or canceled backup leaves no half-written layer behind (it has no
            # manifest, so it is never used either way; this returns the space).
            if _remove_layer(dests, layer):  # the lock goes last, and stays if anything is left: the
                with suppress(Exception):  # layer is then marked partial, never "manifest missing"
                    storage.delete(lock)
            raise
        if backup_type == "full":
            # Only now, with every file durable, may LATEST name the new backup.
            layout.write_latest(storage, full, latest_file)
        storage.delete(lock)
    return JobResult(job_id, "succeeded", 1.0, manifest.rows, manifest.index_entries, manifest.bytes)


LayerWriter = _LayerWriter  # public name for DatabasesWriter implementations


def _remove_layer(dests: Destinations, layer: _LayerWriter) -> bool:
    """Delete a failed layer's files; True if none is left (but its lock).

    The files it recorded go first; then whatever else is under the layer's directory at any of its
    locations: a file whose upload completed but that an interrupt (a KeyboardInterrupt lands at any
    bytecode) kept from being recorded, and writers' hidden temp objects. The layer directory is
    this backup's own (it was empty when the backup began), so nothing of another backup is there."""
    clean = True
    for locality, name in layer.written:
        try:
            dests.storage_for(locality).delete(name)
        except Exception:  # cleanup must not mask the real error
            clean = False
    for storage in (dests.default, *dests.localities.values()):
        try:
            for name, _size in list(storage.list(layer.layer_dir + "/")):
                if not name.rsplit("/", 1)[-1].startswith(layout.LOCK_PREFIX):
                    storage.delete(name)
            remove_temp_files(storage, layer.layer_dir + "/")
        except Exception:
            clean = False
    return clean


def _partition_files(manifest: Manifest) -> dict[str, list[FileRef]]:
    """This layer's own files at each non-default locality."""
    parts: dict[str, list[FileRef]] = {}
    for ref in manifest.files():
        if ref.locality and ref.path.startswith(manifest.layer_dir + "/"):
            parts.setdefault(ref.locality, []).append(ref)
    return parts


def _partition_name(manifest: Manifest, n: int, locality: str) -> str:
    return f"{manifest.layer_dir}/BACKUP_PART_{n}_{re.sub(r'[^A-Za-z0-9_-]', '_', locality)}"


def _write_partitions(dests: Destinations, manifest: Manifest, keys: BackupKeys) -> list[tuple[str, str]]:
    """A sealed BACKUP_PART_<n>_<locality> at each non-default location, listing the files it holds
    (as CockroachDB writes partition descriptors), so a location can be checked on its own."""
    written = []
    for n, (locality, refs) in enumerate(sorted(_partition_files(manifest).items()), start=1):
        name = _partition_name(manifest, n, locality)
        body = json.dumps({"layer_dir": manifest.layer_dir, "locality": locality, "files": [asdict(r) for r in refs]})
        dests.storage_for(locality).put(name, keys.seal(body.encode()), create_only=True)
        written.append((locality, name))
    return written


def _check_partitions(dests: Destinations, manifest: Manifest, keys: BackupKeys) -> None:
    for n, (locality, refs) in enumerate(sorted(_partition_files(manifest).items()), start=1):
        name = _partition_name(manifest, n, locality)
        try:
            stored = dests.storage_for(locality).get(name)
            body = json.loads(keys.for_layer(manifest.layer_dir).unseal(stored, f"reading /{name}"))
        except NotFoundError:
            raise IntegrityError(f"/{name} is missing from the location of {locality}") from None
        if body.get("files") != [asdict(r) for r in refs]:
            raise IntegrityError(f"/{name} does not list the files the manifest places in {locality}")


def _check_same_targets(prev: Manifest, sources: list[DatabaseSource], is_full_cluster: bool) -> None:
    if is_full_cluster and prev.is_full_cluster:
        return  # a whole-store chain follows the store: new databases appear, dropped ones leave
    before = sorted((d.name, tuple(d.tables or ())) for d in prev.databases)
    now = sorted((s.name, tuple(s.tables or ())) for s in sources)
    if before != now or is_full_cluster != prev.is_full_cluster:
        raise UsageError(
            "the targets of this incremental backup do not match the previous backup in the chain "
            f"(previous: {_describe(prev.databases)}); take a new full backup with BACKUP INTO"
        )


def _describe(dbs: Iterable[DatabaseEntry]) -> str:
    parts = []
    for d in dbs:
        parts.append(f"{d.name}({', '.join(d.tables)})" if d.tables else d.name)
    return ", ".join(parts) or "nothing"


def _backup_all(
    dests: Destinations,
    layer: _LayerWriter,
    sources: list[DatabaseSource],
    prev_manifest: Manifest | None,
    keys: BackupKeys,
    progress: Progress | None,
    scratch_dir: Path | None,
    prev_keys: BackupKeys | None = None,
) -> list[DatabaseEntry]:
    """``prev_keys``: what the previous layer's indexes are read with, when not ``keys`` (a write-only
    host reads its HOST-VIEW copies)."""
    entries: list[DatabaseEntry] = []
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)))
        stats_pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="stats"))
        snapshots = []
        # Open every snapshot first so the backup is as close to one point in time as we can make it.
        for src in sources:
            if not src.path.exists():
                raise NotFoundError(f'database "{src.name}" does not exist')
            if src.tables is None:
                snapshots.append(stack.enter_context(Snapshot.open(src.path, key=src.key)))
            else:
                scratch = stack.enter_context(_table_scratch(src, scratch_dir))
                snapshots.append(stack.enter_context(Snapshot.open(scratch[0], key=scratch[1])))
        total = sum(s.size for s in snapshots)
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done = min(total, done + n)
            if progress:
                progress(done, total, "backing up")

        for number, (src, snap) in enumerate(zip(sources, snapshots, strict=True)):
            previous = None
            prev_entry = prev_manifest.database(src.name) if prev_manifest else None
            if prev_manifest is not None and prev_entry is not None:
                pkeys = prev_keys or keys
                index = stack.enter_context(_closing(ChunkIndex(dests.storage_for, prev_entry.index, pkeys)))
                previous = _Previous(prev_manifest, prev_entry, index, dests.storage_for, pkeys, prev_keys is None)
            entries.append(_backup_database(src, snap, layer, previous, pool, stats_pool, tick, number))
    return entries


@contextmanager
def _closing(obj: ChunkIndex) -> Iterator[ChunkIndex]:
    try:
        yield obj
    finally:
        obj.close()


@contextmanager
def _table_scratch(src: DatabaseSource, scratch_dir: Path | None) -> Iterator[tuple[Path, bytes]]:
    """A scratch database holding only the requested tables, encrypted with a throwaway key.

    A TABLE backup must not carry the rest of the database. The scratch copy never exists in
    plaintext on disk: it is a SQLite3 Multiple Ciphers file under a random key held only here.
    """
    import tempfile

    key = os.urandom(32)
    folder = Path(tempfile.mkdtemp(prefix="strongroom-table-", dir=scratch_dir))
    path = folder / "scratch.db"
    try:
        conn = apsw.Connection(str(path))
        try:
            apply_key(conn, key)
            src_key = f"x'{src.key.hex()}'" if src.key else ""
            conn.execute("ATTACH ? AS src KEY ?", (str(src.path), src_key))
            conn.execute("BEGIN")
            schema = conn.execute(
                "SELECT type, name, tbl_name, sql FROM src.sqlite_schema WHERE sql IS NOT NULL"
            ).fetchall()
            tables = {name for typ, name, _t, _s in schema if typ == "table"}
            assert src.tables is not None
            for t in src.tables:
                if t not in tables:
                    raise NotFoundError(f'relation "{t}" does not exist in database "{src.name}"')
            for t in src.tables:
                create = str(next(s for typ, name, _t, s in schema if typ == "table" and name == t))
                conn.execute(create)
                conn.execute(f'INSERT INTO main."{_ident(t)}" SELECT * FROM src."{_ident(t)}"')
            for typ, _name, tbl, sql in schema:
                if typ in ("index", "trigger") and tbl in src.tables:
                    conn.execute(str(sql))
            conn.execute("COMMIT")
            conn.execute("DETACH src")
        finally:
            conn.close()
        yield path, key
    finally:
        for f in folder.glob("*"):
            f.unlink(missing_ok=True)
        folder.rmdir()


def _ident(name: str) -> str:
    return name.replace('"', '""')


# --------------------------------------------------------------------------------------------- RESTORE


def _restore_point(
    storage: ExternalStorage, subdir: str, encryption: Encryption, as_of: datetime | None
) -> tuple[BackupKeys, Manifest]:
    """The keys and the manifest of the layer RESTORE (or a query in place) reads: the newest of the
    chain ``subdir`` names, or the newest at or before ``as_of``; the chain checked on the way."""
    full, latest = _resolve_full(storage, subdir)
    keys = existing_backup_keys(storage, full, encryption)
    return keys, _restore_layer(storage, full, latest, keys, as_of)


def _restore_layer(
    storage: ExternalStorage, full: str, latest: str | None, keys: BackupKeys, as_of: datetime | None
) -> Manifest:
    layers, _first, last = _open_chain(storage, full, latest, keys)
    if as_of is None:
        return last
    for d in reversed(layers):
        m = read_manifest(storage, d, keys)
        if datetime.fromisoformat(m.end_time) <= as_of:
            return m
    raise NotFoundError(f"no backup in {full} is as old as {as_of.isoformat()}")


def restore(
    request: RestoreRequest,
    target: RestoreTarget,
    *,
    context: StorageContext | None = None,
    progress: Progress | None = None,
    job_id: int | None = None,
) -> JobResult:
    """Restore every database of a backup, some databases, or some tables (``db.table``), into ``target``."""
    enc = request.encryption
    databases = list(request.databases) if request.databases else None
    tables = list(request.tables) if request.tables else None
    new_db_name, into_db, as_of = request.new_db_name, request.into_db, request.as_of
    job_id = job_id or new_job_id()
    with _destinations(request.collection, context) as dests:
        storage = dests.default
        keys, manifest = _restore_point(storage, request.subdir, enc, as_of)
        if tables:
            rows, index_entries, nbytes = _restore_tables(dests, manifest, keys, target, tables, into_db)
            return JobResult(job_id, "succeeded", 1.0, rows, index_entries, nbytes)
        chosen = _pick_databases(manifest, databases)
        renames = {chosen[0].name: new_db_name} if new_db_name else {}
        plan = []
        for entry in chosen:
            if entry.kind != "sqlite":
                raise UsageError(
                    f'database "{entry.name}" is a PostgreSQL backup: restore it into a server with '
                    "strongroom sql --postgres DSN (or strongroom restore --postgres DSN)"
                )
            if entry.tables is not None:
                raise UsageError(
                    f'the backup holds only some tables of database "{entry.name}"; restore them with RESTORE TABLE'
                )
            name = renames.get(entry.name, entry.name)
            path = target.database_path(name)
            if path.exists():
                raise AlreadyExistsError(f'database "{name}" already exists')
            plan.append((entry, name, path))
        total = sum(e.size for e, _n, _p in plan)
        done = 0
        rows = index_entries = nbytes = 0
        prepared: list[str] = []
        try:
            for entry, name, path in plan:
                image = BackupImage(dests.storage_for, entry.index, manifest.packs, keys)
                if progress:
                    image.on_chunk = _restore_ticks(progress, done, entry.size, total, f"restoring {name}")
                try:
                    image.check_files()
                    prepared.append(name)
                    key = target.prepare_database(name, entry.region)
                    if request.schema_only:
                        # CockroachDB reports no rows for a schema-only restore, even when
                        # verify_backup_table_data read them all.
                        empty, _read = schema_image(image, read_rows=request.verify_backup_table_data)
                        write_database(empty, path, key=key, verify=request.verify)
                        counted = None
                    else:
                        # The manifest counts the whole database (a full layer's figures, an
                        # incremental's totals); a chain written before incrementals carried totals
                        # is counted on the restored file (one dbstat walk, overlapping its fsync).
                        counted = write_database(
                            image,
                            path,
                            key=key,
                            verify=request.verify,
                            inspect=None if _counted_in(manifest, entry) else compute_stats,
                        )
                finally:
                    image.close()
                done += entry.size
                if progress:
                    progress(done, total, f"restored {name}")
                if request.schema_only:
                    continue
                counts = _counted_in(manifest, entry)
                if counts is None:
                    assert counted is not None
                    counts = (counted.rows, counted.index_entries, counted.bytes)
                rows, index_entries, nbytes = rows + counts[0], index_entries + counts[1], nbytes + counts[2]
        except BaseException:
            # All or nothing: a restore that fails part way removes the databases it already created.
            for name in prepared:
                target.discard_database(name)
            raise
        return JobResult(job_id, "succeeded", 1.0, rows, index_entries, nbytes)


def open_backup(
    collection: Collection,
    *,
    subdir: str = LATEST,
    as_of: datetime | None = None,
    encryption: Encryption | None = None,
    context: StorageContext | None = None,
) -> BackupReader:
    """Open the newest layer of a chain (``subdir``: LATEST or a full backup's subdir), or the newest
    at or before ``as_of``, for reading in place."""
    dests = open_destinations(collection, context)
    try:
        keys, manifest = _restore_point(dests.default, subdir, encryption or Encryption(), as_of)
    except BaseException:
        dests.close()
        raise
    return BackupReader(dests, manifest, keys)


def _restore_ticks(progress: Progress, base: int, size: int, total: int, what: str) -> Callable[[int], None]:
    """Progress as a database's chunks are read (a chunk read twice counts twice: capped at its size)."""
    read = 0

    def tick(n: int) -> None:
        nonlocal read
        read += n
        progress(base + min(read, size), total, what)

    return tick


def _counted_in(manifest: Manifest, entry: DatabaseEntry) -> tuple[int, int, int] | None:
    """Rows, index entries and bytes of the whole database as of ``manifest``, if it says."""
    if manifest.backup_type == "full":
        return entry.rows, entry.index_entries, entry.bytes
    if entry.total_rows is None or entry.total_index_entries is None or entry.total_bytes is None:
        return None
    return entry.total_rows, entry.total_index_entries, entry.total_bytes


def _pick_databases(manifest: Manifest, databases: list[str] | None) -> list[DatabaseEntry]:
    if not databases:
        return list(manifest.databases)
    chosen = []
    for name in databases:
        entry = manifest.database(name)
        if entry is None:
            raise NotFoundError(f'database "{name}" does not exist in the backup')
        chosen.append(entry)
    return chosen


def _restore_tables(
    dests: Destinations,
    manifest: Manifest,
    keys: BackupKeys,
    target: RestoreTarget,
    tables: list[str],
    into_db: str | None,
) -> tuple[int, int, int]:
    wanted: list[tuple[DatabaseEntry, str]] = []
    for qualified in tables:
        db_name, table = _split_table(qualified, manifest)
        entry = manifest.database(db_name)
        if entry is None:
            raise NotFoundError(f'database "{db_name}" does not exist in the backup')
        if not any(o.name == table and o.type == "table" for o in entry.objects):
            raise NotFoundError(f'table "{qualified}" does not exist in the backup')
        wanted.append((entry, table))
    rows = index_entries = nbytes = 0
    for entry, table in wanted:
        dest_name = into_db or entry.name
        if not target.database_path(dest_name).exists():
            raise NotFoundError(f'database "{dest_name}" does not exist')
        image = BackupImage(dests.storage_for, entry.index, manifest.packs, keys)
        conn = None
        dest = target.connect(dest_name)
        try:
            image.check_files()
            conn = open_image(image)
            r, i = copy_table(conn, table, dest)
        finally:
            if conn is not None:
                conn.close()
            dest.close()
            image.close()
        rows += r
        index_entries += i
        nbytes += next((o.bytes for o in entry.objects if o.name == table), 0)
    return rows, index_entries, nbytes


def _split_table(qualified: str, manifest: Manifest) -> tuple[str, str]:
    parts = qualified.split(".")
    if len(parts) == 3 and parts[1] == "public":
        parts = [parts[0], parts[2]]
    if len(parts) == 2:
        return parts[0], parts[1]
    if len(parts) == 1 and len(manifest.databases) == 1:
        return manifest.databases[0].name, parts[0]
    raise UsageError(f'qualify table "{qualified}" with its database, as database.table')


# ------------------------------------------------------------------------------------------------ SHOW

SHOW_BACKUP_COLUMNS = (
    "database_name",
    "parent_schema_name",
    "object_name",
    "object_type",
    "backup_type",
    "start_time",
    "end_time",
    "size_bytes",
    "rows",
    "is_full_cluster",
    "encryption",  # Strongroom's addition: passphrase, kms or none (the key this SHOW opened it with)
)


def show_backups(collection: Collection, *, context: StorageContext | None = None) -> list[str]:
    with _destinations(collection, context) as dests:
        return layout.list_fulls(dests.default)


SHOW_BACKUPS_DETAIL_COLUMNS = ("path", "status")


def show_backups_detail(collection: Collection, *, context: StorageContext | None = None) -> list[tuple[str, str]]:
    """Every full backup dir, oldest first, with its state: ``complete``; ``partial`` (a running or
    killed backup left it: never used, never an error); ``manifest missing`` (files with neither a
    manifest nor a lock: tampering). ``path`` stays the first column, as CockroachDB's SHOW BACKUPS."""
    with _destinations(collection, context) as dests:
        storage = dests.default
        fulls = layout.scan_fulls(storage)
        named = layout.latest_contents(storage) if any(st.lock for st in fulls.values()) else set()
        out = []
        for sub in sorted(fulls):
            st = fulls[sub]
            if layout.full_complete(storage, st, named):
                out.append((sub, "complete"))
            elif st.partial:
                out.append((sub, "partial"))
            elif st.manifest_removed:
                out.append((sub, "manifest missing"))
        return out


@dataclass
class ShowBackupResult:
    columns: tuple[str, ...]
    rows: list[tuple[object, ...]]
    manifests: list[Manifest]


def show_backup(request: ShowBackupRequest, *, context: StorageContext | None = None) -> ShowBackupResult:
    """Describe every layer of a chain: one row per database, schema and table, like CockroachDB."""
    check_files = request.check_files
    with _destinations(request.collection, context) as dests:
        storage = dests.default
        full, latest = _resolve_full(storage, request.subdir)
        keys = existing_backup_keys(storage, full, request.encryption)
        layers = _chain(storage, full)
        manifests = [read_manifest(storage, d, keys) for d in layers]
        _check_chain(storage, layers, manifests[0], manifests[-1], latest)
        if check_files:
            verify_files(dests, manifests, keys)
        columns = SHOW_BACKUP_COLUMNS + (("file_bytes",) if check_files else ())
        rows: list[tuple[object, ...]] = []
        for m in manifests:
            start = _ts(m.start_time) if m.start_time else None
            end = _ts(m.end_time)
            common = (m.backup_type, start, end)
            how = request.encryption.kind if m.encrypted else "none"
            for d in m.databases:
                extra_db: tuple[object, ...] = (d.stored_bytes,) if check_files else ()
                extra: tuple[object, ...] = (None,) if check_files else ()
                if d.tables is None:
                    rows.append(
                        (None, None, d.name, "database", *common, None, None, m.is_full_cluster, how, *extra_db)
                    )
                    rows.append((d.name, None, "public", "schema", *common, None, None, m.is_full_cluster, how, *extra))
                for o in d.objects:
                    rows.append(
                        (
                            d.name,
                            "public",
                            o.name,
                            o.type,
                            *common,
                            o.bytes,
                            o.rows,
                            m.is_full_cluster,
                            how,
                            *extra,
                        )
                    )
        return ShowBackupResult(columns, rows, manifests)


# ----------------------------------------------------------------------------------------------- CHECK


@dataclass
class CheckReport:
    """One full backup and its incrementals, as ``strongroom check`` found them."""

    path: str
    layers: int
    files: int
    file_bytes: int
    chunks_read: int  # with read_data: chunks decrypted and checked against their hash
    status: str  # "ok", "partial (a backup running or killed: skipped)", or what is wrong


CHECK_COLUMNS = ("path", "layers", "files", "file_bytes", "chunks_read", "status")


def check(
    collection: Collection,
    encryption: Encryption,
    *,
    read_data: bool = False,
    context: StorageContext | None = None,
    progress: Progress | None = None,
) -> list[CheckReport]:
    """Every chain of a collection: its manifests and links (the rollback checks), every file's
    presence, size, IV and SHA-256 (CockroachDB's check_files); with ``read_data`` every chunk is also
    decrypted and checked against its keyed hash (restic's ``check --read-data``). A problem is
    reported on its chain's row and the check goes on to the next chain."""
    reports = []
    with _destinations(collection, context) as dests:
        storage = dests.default
        latest_full, latest_name = "", None
        try:
            latest_full, latest_name = _resolve_full(storage, "LATEST")
        except StrongroomError as exc:  # rolled back, or LATEST missing: say so, check the chains anyway
            reports.append(CheckReport("LATEST", 0, 0, 0, 0, str(exc)))
        for path, state in show_backups_detail(collection, context=context):
            if state != "complete":
                reports.append(CheckReport(path, 0, 0, 0, 0, state))
                continue
            layers: list[str] = []
            files = file_bytes = chunks = 0
            try:
                keys = existing_backup_keys(storage, path, encryption)
                layers = _chain(storage, path)
                manifests = [read_manifest(storage, d, keys) for d in layers]
                latest = latest_name if path == latest_full else None
                _check_chain(storage, layers, manifests[0], manifests[-1], latest)
                verify_files(dests, manifests, keys)
                refs = {ref.path: ref for m in manifests for ref in m.files()}
                files, file_bytes = len(refs), sum(r.size for r in refs.values())
                if read_data:
                    chunks = _read_chain(dests, manifests, keys, progress, path)
                reports.append(CheckReport(path, len(layers), files, file_bytes, chunks, "ok"))
            except StrongroomError as exc:
                reports.append(CheckReport(path, len(layers), files, file_bytes, chunks, str(exc)))
    return reports


def _read_chain(
    dests: Destinations, manifests: list[Manifest], keys: BackupKeys, progress: Progress | None, label: str
) -> int:
    """Decrypt and hash-check every chunk a chain's layers use, each once; returns how many."""
    seen: set[tuple[str, int]] = set()
    total = sum(d.size for m in manifests for d in m.databases)
    done = chunks = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(min(done, total), total, f"reading {label}")

    for m in manifests:
        for d in m.databases:
            if d.kind != "sqlite":
                # Not a page image (strongroom.postgres streams): every pack it may use is read whole,
                # so each of its sealed chunks is decrypted and authenticated.
                chunks += _read_packs(dests, m.packs, keys, seen, tick)
                chunks += _read_streams(dests, m, d, keys, seen)
                continue
            image = BackupImage(dests.storage_for, d.index, m.packs, keys)
            try:
                chunks += image.verify(seen, tick)[0]
            finally:
                image.close()
    return chunks


#: Reads and checks every chunk of a database entry that is not a SQLite page image (check
#: --read-data), by DatabaseEntry.kind; returns how many chunks it read. Registered by the package
#: of that kind (strongroom.postgres), which sits above the engine.
EntryVerifier = Callable[[StorageFor, FileRef, list[FileRef], BackupKeys, set[tuple[str, int]]], int]
_ENTRY_VERIFIERS: dict[str, EntryVerifier] = {}


def register_entry_verifier(kind: str, verify: EntryVerifier) -> None:
    _ENTRY_VERIFIERS[kind] = verify


def _read_streams(
    dests: Destinations, m: Manifest, d: DatabaseEntry, keys: BackupKeys, seen: set[tuple[str, int]]
) -> int:
    """A non-SQLite entry's chunks, each decoded (a delta through its bases) and hash-checked."""
    verify = _ENTRY_VERIFIERS.get(d.kind)
    if verify is None:  # its package (an optional extra) is not installed: its packs were authenticated
        return 0
    return verify(dests.storage_for, d.index, m.packs, keys, seen)


def _read_packs(
    dests: Destinations, packs: list[FileRef], keys: BackupKeys, seen: set[tuple[str, int]], tick: Callable[[int], None]
) -> int:
    """Decrypt every pack not yet read whole; returns how many were read."""
    read = 0
    for ref in packs:
        if (ref.path, -1) in seen:
            continue
        seen.add((ref.path, -1))
        f = StoredFile(dests.storage_for(ref.locality), ref, keys)
        try:
            for pos in range(0, f.plaintext_size, 4 << 20):
                tick(len(f.read_range(pos, min(4 << 20, f.plaintext_size - pos))))
        finally:
            f.close()
        read += 1
    return read


def _ts(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def verify_files(dests: Destinations, manifests: list[Manifest], keys: BackupKeys) -> None:
    """check_files: every file every layer needs exists with the size, sealed IV and SHA-256 its manifest
    recorded (so its bytes are exactly those written; decryption is not needed to know that)."""
    import hashlib

    seen: dict[str, FileRef] = {}
    for m in manifests:
        _check_partitions(dests, m, keys)
        for ref in m.files():
            first = seen.get(ref.path)
            if first is not None:
                if (first.size, first.sha256, first.iv) != (ref.size, ref.sha256, ref.iv):
                    raise IntegrityError(
                        f"backup file /{ref.path}: the manifests of /{m.layer_dir} and of an earlier layer "
                        "record different contents for it"
                    )
                continue
            seen[ref.path] = ref
            storage = dests.storage_for(ref.locality)
            f = StoredFile(storage, ref, keys)  # checks presence, size and (sealed) IV
            try:
                raw = storage.open_random(ref.path)
                try:
                    sha = hashlib.sha256()
                    pos = 0
                    while pos < raw.size:
                        piece = raw.read_at(pos, min(8 << 20, raw.size - pos))
                        sha.update(piece)
                        pos += len(piece)
                finally:
                    raw.close()
                if sha.hexdigest() != ref.sha256:
                    raise IntegrityError(f"backup file /{ref.path} does not match its SHA-256 in the manifest")
            finally:
                f.close()


# ----------------------------------------------------------------------------------------------- ALTER


def alter_backup(request: AlterBackupRequest, *, context: StorageContext | None = None) -> str:
    """ALTER BACKUP ... ADD NEW_KMS = ... WITH OLD_KMS = ...; returns the ENCRYPTION-INFO file written.
    (DROP KMS and ROTATE DATA KEY: rekey.alter, which every surface calls.)"""
    if request.action != "add":
        raise UsageError("engine.alter_backup only adds KMS keys: use strongroom.backup.rekey.alter")
    with _destinations(request.collection, context) as dests:
        full, _latest = _resolve_full(dests.default, request.subdir)
        return add_kms(dests.default, full, request.new_kms, request.old_kms)


__all__ = [
    "SHOW_BACKUP_COLUMNS",
    "DatabaseSource",
    "RestoreTarget",
    "ShowBackupResult",
    "alter_backup",
    "backup",
    "restore",
    "show_backup",
    "show_backups",
    "show_backups_detail",
    "verify_files",
]
