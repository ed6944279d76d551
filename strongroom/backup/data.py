"""How a database's page image is stored: sealed pack files of compressed chunks, plus a chunk index.

The image is cut into fixed ``chunk_size`` chunks (a multiple of the page size). Each chunk is hashed
with keyed BLAKE3 (the key derives from the backup's data key, so hashes reveal nothing), compressed
with zstd and appended to a *pack*, a sealed file of tens of MiB. A per-database *chunk index* (also
sealed) has one fixed-size record per chunk position: hash, pack, offset, length, codec. An
incremental layer compares each chunk's hash with the previous layer's record at the same position
and writes only changed chunks; its index still describes the whole image (unchanged records point
into older layers' packs), so a restore reads one index, whatever the chain length.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import zstandard

from ..crypto import SealedReader, SealedWriter, sealed_size
from ..errors import EncryptionError, IntegrityError, NotFoundError
from ..storage import ExternalStorage, ObjectWriter, RandomReader
from .keys import BackupKeys
from .manifest import FileRef

CHUNK_SIZE = 64 * 1024
PACK_TARGET = 32 * 1024 * 1024
ZSTD_LEVEL = -1  # zstd's fast mode: ~30% faster than level 1 here for <1% larger output
CODEC_RAW, CODEC_ZSTD = 0, 1
RESTORE_BATCH = 32  # chunks (2 MiB of image) per restore task: one ranged read of a pack per run of them
RESTORE_INFLIGHT = 3  # batches per worker in flight: reads ahead, memory ~6 MiB per worker whatever the size

StorageFor = Callable[[str], ExternalStorage]  # locality ("" = default) -> the storage holding its files

_INDEX_MAGIC = b"SRIDX\x00\x00\x01"
_INDEX_HEADER = struct.Struct("<8sIIQQ")  # magic, chunk size, page size, image size, chunk count
_RECORD = struct.Struct("<32sIQIB3x")  # hash, pack slot, offset in pack, stored length, codec
RECORD_SIZE = _RECORD.size


@dataclass(frozen=True)
class ChunkRecord:
    digest: bytes
    pack: int
    offset: int
    length: int
    codec: int

    def pack_bytes(self) -> bytes:
        return _RECORD.pack(self.digest, self.pack, self.offset, self.length, self.codec)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> ChunkRecord:
        return cls(*_RECORD.unpack(raw))


class _HashingSink:
    """Counts and SHA-256-hashes the stored bytes on their way to storage."""

    def __init__(self, writer: ObjectWriter) -> None:
        self.writer = writer
        self.sha = hashlib.sha256()
        self.size = 0

    def __call__(self, data: bytes | memoryview) -> None:
        self.sha.update(data)
        self.size += len(data)
        self.writer.write(data)


class SealedObjectWriter:
    """Streams one new object, sealed when the backup is encrypted; ``finish`` returns its FileRef."""

    def __init__(self, storage: ExternalStorage, path: str, keys: BackupKeys, locality: str = "") -> None:
        self.path = path
        self.locality = locality
        self._writer = storage.writer(path, create_only=True)
        self._sink = _HashingSink(self._writer)
        self._sealed = SealedWriter(keys.key, self._sink) if keys.key else None
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)
        if self._sealed is not None:
            self._sealed.write(data)
        else:
            self._sink(data)

    def finish(self) -> FileRef:
        iv = ""
        if self._sealed is not None:
            self._sealed.close()
            iv = self._sealed.iv.hex()
        self._writer.commit()
        return FileRef(self.path, self._sink.size, self._sink.sha.hexdigest(), iv, self.locality)

    def abort(self) -> None:
        self._writer.abort()


class PackTable:
    """The manifest's list of packs: slots are handed out when a pack is first referenced."""

    def __init__(self) -> None:
        self.refs: list[FileRef | None] = []
        self._slot: dict[str, int] = {}

    def slot_for(self, ref: FileRef) -> int:
        slot = self._slot.get(ref.path)
        if slot is None:
            slot = self._slot[ref.path] = len(self.refs)
            self.refs.append(ref)
        return slot

    def reserve(self, path: str) -> int:
        slot = self._slot[path] = len(self.refs)
        self.refs.append(None)
        return slot

    def fill(self, slot: int, ref: FileRef) -> None:
        self.refs[slot] = ref

    def final(self) -> list[FileRef]:
        assert all(r is not None for r in self.refs), "a pack was never closed"
        return [r for r in self.refs if r is not None]


class PackWriter:
    """Appends compressed chunks to sealed pack files under ``<layer>/data/``, rolling at PACK_TARGET."""

    def __init__(
        self, storage: ExternalStorage, layer_dir: str, keys: BackupKeys, table: PackTable, locality: str = ""
    ) -> None:
        self._storage = storage
        self._locality = locality
        self._layer = layer_dir
        self._keys = keys
        self._table = table
        self._current: SealedObjectWriter | None = None
        self._slot = -1
        self._count = 0
        self.stored_bytes = 0
        self.on_pack_done: Callable[[FileRef], None] | None = None

    def add(self, data: bytes | memoryview) -> tuple[int, int]:
        """Store ``data``; returns (pack slot, offset within the pack's plaintext)."""
        if self._current is None:
            self._count += 1
            region = f"-{self._locality.replace('=', '-')}" if self._locality else ""
            path = f"{self._layer}/data/{self._count:06d}{region}.pack"
            self._current = SealedObjectWriter(self._storage, path, self._keys, self._locality)
            self._slot = self._table.reserve(path)
        offset = self._current.written
        self._current.write(data)
        self.stored_bytes += len(data)
        result = (self._slot, offset)
        if self._current.written >= PACK_TARGET:
            self._close_current()
        return result

    def _close_current(self) -> None:
        if self._current is not None:
            ref = self._current.finish()
            self._table.fill(self._slot, ref)
            self._current = None
            if self.on_pack_done:
                self.on_pack_done(ref)

    def finish(self) -> None:
        self._close_current()

    def abort(self) -> None:
        if self._current is not None:
            self._current.abort()
            self._current = None


class _RecordFileWriter:
    """A sealed file of a header and then exactly ``count`` records, one per chunk of an image."""

    what = "records"

    def __init__(
        self, storage: ExternalStorage, path: str, keys: BackupKeys, header: bytes, count: int, locality: str
    ) -> None:
        self._out = SealedObjectWriter(storage, path, keys, locality)
        self._out.write(header)
        self._expected = count
        self._n = 0

    def _add(self, record: bytes) -> None:
        self._out.write(record)
        self._n += 1

    def finish(self) -> FileRef:
        if self._n != self._expected:
            raise IntegrityError(f"{self.what}: {self._n} records written, expected {self._expected}")
        return self._out.finish()

    def abort(self) -> None:
        self._out.abort()


class IndexWriter(_RecordFileWriter):
    what = "chunk index"

    def __init__(
        self,
        storage: ExternalStorage,
        path: str,
        keys: BackupKeys,
        chunk_size: int,
        page_size: int,
        size: int,
        locality: str = "",
    ) -> None:
        count = -(-size // chunk_size)
        header = _INDEX_HEADER.pack(_INDEX_MAGIC, chunk_size, page_size, size, count)
        super().__init__(storage, path, keys, header, count, locality)

    def add(self, record: ChunkRecord) -> None:
        self._add(record.pack_bytes())


_FINGERPRINT_MAGIC = b"SRFPR\x00\x00\x01"
_FINGERPRINT_HEADER = struct.Struct("<8sQ")  # magic, chunk count
FINGERPRINT_SIZE = 32
NO_FINGERPRINT = bytes(FINGERPRINT_SIZE)  # a chunk whose stored bytes were not all in the db file


class FingerprintWriter(_RecordFileWriter):
    """Per chunk of an encrypted source, the keyed hash of its bytes *as the database file holds
    them* (ciphertext). The next incremental hashes the file again and decrypts only the chunks
    whose ciphertext differs: reading and hashing the file costs a fraction of decrypting it page
    by page. Sealed like every other file of the backup."""

    what = "fingerprints"

    def __init__(self, storage: ExternalStorage, path: str, keys: BackupKeys, count: int, locality: str = "") -> None:
        super().__init__(storage, path, keys, _FINGERPRINT_HEADER.pack(_FINGERPRINT_MAGIC, count), count, locality)

    def add(self, fingerprint: bytes) -> None:
        self._add(fingerprint)


def iter_fingerprints(storage_for: StorageFor, ref: FileRef, keys: BackupKeys) -> Iterator[bytes]:
    """A fingerprint file's entries in chunk order."""
    f = StoredFile(storage_for(ref.locality), ref, keys)
    try:
        magic, count = _FINGERPRINT_HEADER.unpack(f.read(0, _FINGERPRINT_HEADER.size))
        if magic != _FINGERPRINT_MAGIC or f.plaintext_size != _FINGERPRINT_HEADER.size + count * FINGERPRINT_SIZE:
            raise IntegrityError(f"/{ref.path} is not a valid fingerprint file")
        batch = 2048
        for start in range(0, count, batch):
            n = min(batch, count - start)
            raw = f.read(_FINGERPRINT_HEADER.size + start * FINGERPRINT_SIZE, n * FINGERPRINT_SIZE)
            for j in range(n):
                yield raw[j * FINGERPRINT_SIZE : (j + 1) * FINGERPRINT_SIZE]
    finally:
        f.close()


class StoredFile:
    """Random access to one stored file of a backup, checked against its FileRef before use.

    Every file read here is named by a manifest that the backup's key has already opened, so a
    chunk that fails to authenticate is a tampered or corrupt file, never a wrong key: the error
    says so, and names the file."""

    def __init__(self, storage: ExternalStorage, ref: FileRef, keys: BackupKeys) -> None:
        self._path = ref.path
        try:
            self._raw: RandomReader = storage.open_random(ref.path)
        except NotFoundError:
            raise IntegrityError(f"backup file /{ref.path} is missing") from None
        if self._raw.size != ref.size:
            self._raw.close()
            raise IntegrityError(
                f"backup file /{ref.path} has size {self._raw.size}, expected {ref.size}: truncated or replaced"
            )
        self._sealed: SealedReader | None = None
        key = keys.key_for(ref.path)  # a write-only chain seals each incremental under its own key
        if key is not None:
            try:
                self._sealed = SealedReader(key, self._raw.read_at, ref.size)
            except EncryptionError:
                self._raw.close()
                raise self._tampered() from None
            if self._sealed.iv.hex() != ref.iv:
                self._raw.close()
                raise IntegrityError(f"backup file /{ref.path} is not the file the manifest names: swapped or replaced")
        self.plaintext_size = self._sealed.plaintext_size if self._sealed else ref.size
        self._lock = threading.Lock()

    def read_range(self, offset: int, length: int) -> bytes:
        """What ``read`` returns, safe to call from several threads at once (no shared cache)."""
        return self._read(offset, length, cached=False)

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:  # the sealed reader caches its last chunk
            return self._read(offset, length, cached=True)

    def _read(self, offset: int, length: int, *, cached: bool) -> bytes:
        if self._sealed is not None:
            try:
                if cached:
                    return self._sealed.read(offset, length)
                return self._sealed.read_range(offset, length)
            except EncryptionError:
                raise self._tampered() from None
        data = self._raw.read_at(offset, length)
        if len(data) != length:
            raise IntegrityError(f"backup file /{self._path} is shorter than its manifest says")
        return data

    def _tampered(self) -> IntegrityError:
        return IntegrityError(f"backup file /{self._path} failed authentication: tampered or corrupt")

    def close(self) -> None:
        self._raw.close()


def stored_size_of(plaintext: int, keys: BackupKeys) -> int:
    return sealed_size(plaintext) if keys.key else plaintext


class ChunkIndex:
    """Reads a chunk index: header fields, one record by position, or all records in order."""

    def __init__(self, storage_for: StorageFor, ref: FileRef, keys: BackupKeys) -> None:
        self._file = StoredFile(storage_for(ref.locality), ref, keys)
        self._path = ref.path
        try:
            magic, self.chunk_size, self.page_size, self.size, self.count = _INDEX_HEADER.unpack(
                self._file.read(0, _INDEX_HEADER.size)
            )
        except struct.error:
            raise IntegrityError(f"/{ref.path} is not a chunk index") from None
        if magic != _INDEX_MAGIC or self._file.plaintext_size != _INDEX_HEADER.size + self.count * RECORD_SIZE:
            raise IntegrityError(f"/{ref.path} is not a valid chunk index")

    def record(self, i: int) -> ChunkRecord:
        return ChunkRecord.unpack(self._file.read(_INDEX_HEADER.size + i * RECORD_SIZE, RECORD_SIZE))

    def __iter__(self) -> Iterator[ChunkRecord]:
        batch = 1024
        for start in range(0, self.count, batch):
            n = min(batch, self.count - start)
            raw = self._file.read(_INDEX_HEADER.size + start * RECORD_SIZE, n * RECORD_SIZE)
            for j in range(n):
                yield ChunkRecord.unpack(memoryview(raw)[j * RECORD_SIZE : (j + 1) * RECORD_SIZE])

    def close(self) -> None:
        self._file.close()


class BackupImage:
    """A database's page image as stored in a backup layer, served for restore (an ImageSource).

    Every chunk is checked against its keyed hash after decompression, so a chunk that authenticates
    but sits in the wrong place (or a bug) can never yield wrong bytes.
    """

    def __init__(self, storage_for: StorageFor, index_ref: FileRef, packs: list[FileRef], keys: BackupKeys) -> None:
        self._storage_for = storage_for
        self._keys = keys
        self._packs = packs
        self._open: dict[int, StoredFile] = {}
        self.index = ChunkIndex(storage_for, index_ref, keys)
        self.page_size = self.index.page_size
        self.size = self.index.size
        self.chunk_size = self.index.chunk_size
        self._dctx = threading.local()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._open_lock = threading.Lock()
        #: Called (in the reading thread) with the size of each chunk fetched: a restore's progress,
        #: and so the points where it can be canceled.
        self.on_chunk: Callable[[int], None] | None = None

    def check_files(self) -> None:
        """Fail fast, before writing anything, if a referenced pack is missing or has the wrong size."""
        for slot in {r.pack for r in self.index}:
            self._pack(slot)

    def _pack(self, slot: int) -> StoredFile:
        with self._open_lock:  # restore workers open packs as they first meet them
            f = self._open.get(slot)
            if f is None:
                if slot >= len(self._packs):
                    raise IntegrityError("chunk index points at a pack the manifest does not list")
                ref = self._packs[slot]
                f = self._open[slot] = StoredFile(self._storage_for(ref.locality), ref, self._keys)
            return f

    def _decode(self, i: int, rec: ChunkRecord, stored: bytes | memoryview) -> bytes:
        """Chunk ``i`` from its stored bytes: decompressed, then checked against its keyed hash."""
        expected = min(self.chunk_size, self.size - i * self.chunk_size)
        if rec.codec == CODEC_ZSTD:
            dctx = getattr(self._dctx, "d", None)
            if dctx is None:
                dctx = self._dctx.d = zstandard.ZstdDecompressor()
            try:
                data = dctx.decompress(stored, max_output_size=expected)
            except zstandard.ZstdError:
                raise IntegrityError(f"chunk {i} of /{self.index._path} does not decompress") from None
        elif rec.codec == CODEC_RAW:
            data = bytes(stored)
        else:
            raise IntegrityError(f"chunk {i}: unknown codec {rec.codec}")
        if len(data) != expected or self._keys.hasher.digest(data) != rec.digest:
            raise IntegrityError(f"chunk {i} of /{self.index._path} does not match its hash")
        return data

    def _decode_batch(self, first: int, records: list[ChunkRecord]) -> list[bytes]:
        """Worker: chunks ``first ..`` of the image. Records that lie back to back in one pack (all of
        a full backup's, most of an incremental chain's) are fetched and decrypted with one ranged
        read; zstd, BLAKE3 and AES-GCM release the GIL, so batches decode in parallel."""
        out: list[bytes] = []
        j = 0
        while j < len(records):
            run_start = records[j]
            k = j + 1
            end = run_start.offset + run_start.length
            while k < len(records) and records[k].pack == run_start.pack and records[k].offset == end:
                end += records[k].length
                k += 1
            stored = memoryview(self._pack(run_start.pack).read_range(run_start.offset, end - run_start.offset))
            for n in range(j, k):
                rec = records[n]
                at = rec.offset - run_start.offset
                out.append(self._decode(first + n, rec, stored[at : at + rec.length]))
            j = k
        return out

    def iter_blocks(self) -> Iterator[bytes]:
        """The whole image in order, chunk by chunk, decoded by a pool of threads a few batches ahead
        of the consumer (who writes it out); memory stays bounded whatever the image size."""
        # At least 4: on object storage each worker mostly waits for its ranged GET.
        workers = max(4, os.cpu_count() or 2)
        records = iter(self.index)
        inflight: deque[Future[list[bytes]]] = deque()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
            try:
                first = 0
                while True:
                    batch = [rec for _, rec in zip(range(RESTORE_BATCH), records, strict=False)]
                    if batch:
                        inflight.append(pool.submit(self._decode_batch, first, batch))
                        first += len(batch)
                    if inflight and (not batch or len(inflight) >= workers * RESTORE_INFLIGHT):
                        for data in inflight.popleft().result():
                            yield data
                            if self.on_chunk is not None:
                                self.on_chunk(len(data))
                    elif not batch:
                        return
            finally:
                for fut in inflight:  # the consumer stopped early, or a chunk failed: drop the rest
                    fut.cancel()

    def verify(self, seen: set[tuple[str, int]], tick: Callable[[int], None] | None = None) -> tuple[int, int]:
        """Decrypt every chunk of the image not in ``seen`` (pack path, offset) and check it against
        its hash, on a pool of threads; add what was checked to ``seen`` (layers of one chain share
        most chunks). Returns (chunks, image bytes) checked; the first bad chunk raises."""
        todo = []
        for i, rec in enumerate(self.index):
            where = (self._packs[rec.pack].path if rec.pack < len(self._packs) else "?", rec.offset)
            if where not in seen:
                seen.add(where)
                todo.append((i, rec))

        def check(batch: list[tuple[int, ChunkRecord]]) -> int:
            return sum(
                len(self._decode(i, rec, self._pack(rec.pack).read_range(rec.offset, rec.length))) for i, rec in batch
            )

        checked = 0
        with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 2), thread_name_prefix="verify") as pool:
            batches = [todo[j : j + RESTORE_BATCH] for j in range(0, len(todo), RESTORE_BATCH)]
            for done in pool.map(check, batches):
                checked += done
                if tick is not None:
                    tick(done)
        return len(todo), checked

    def decoded(self, i: int, rec: ChunkRecord) -> bytes:
        """Chunk ``i`` (whose record is ``rec``), read, decompressed and checked against its hash."""
        return self._decode(i, rec, self._pack(rec.pack).read_range(rec.offset, rec.length))

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        end = min(offset + length, self.size)
        pos = offset
        while pos < end:
            i = pos // self.chunk_size
            chunk = self._chunk(i)
            start = pos - i * self.chunk_size
            piece = chunk[start : start + (end - pos)]
            out += piece
            pos += len(piece)
        return bytes(out)

    def _chunk(self, i: int) -> bytes:
        with self._cache_lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
        rec = self.index.record(i)
        data = self._decode(i, rec, self._pack(rec.pack).read_range(rec.offset, rec.length))
        if self.on_chunk is not None:
            self.on_chunk(len(data))
        with self._cache_lock:
            self._cache[i] = data
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        return data

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
        self.index.close()
