"""Byte streams (a schema archive, each table's binary COPY) stored as content-defined chunks.

Each stream is cut with FastCDC (pyfastcdc), so an insert or delete shifts chunk boundaries only
locally and an incremental stores only the chunks around a change. Chunks are hashed with the
backup's keyed BLAKE3, zstd-compressed and appended to the layer's sealed packs (PackWriter, as
SQLite pages are). A chunk whose hash the previous layer already stored is not stored again: its
record points into the older pack. One sealed *stream index* per database lists every stream's
chunks in order, so a restore reads one index whatever the chain length.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import zstandard
from pyfastcdc import FastCDC

from ..backup.data import (
    CODEC_RAW,
    CODEC_ZSTD,
    ZSTD_LEVEL,
    PackTable,
    PackWriter,
    SealedObjectWriter,
    StorageFor,
    StoredFile,
)
from ..backup.keys import BackupKeys
from ..backup.manifest import FileRef
from ..errors import IntegrityError
from ..storage import ExternalStorage

MIN_CHUNK, AVG_CHUNK, MAX_CHUNK = 4 * 1024, 16 * 1024, 64 * 1024
_GATHER = 1 << 20
_MAGIC = b"SRPGSTR1"
_HEADER = struct.Struct("<8sI")  # magic, record count
_RECORD = struct.Struct("<I32sIQIBI")  # stream, hash, pack slot, offset, stored length, codec, plain length


@dataclass(frozen=True)
class StreamChunk:
    stream: int
    digest: bytes
    pack: FileRef
    offset: int
    length: int
    codec: int
    plain: int


class StreamWriter:
    """Cuts streams into chunks and stores the new ones; ``finish`` writes the sealed stream index."""

    def __init__(
        self,
        storage: ExternalStorage,
        path: str,
        keys: BackupKeys,
        packs: PackWriter,
        table: PackTable,
        known: dict[bytes, StreamChunk],
        locality: str = "",
    ) -> None:
        self._records: list[bytes] = []  # ~60 bytes a chunk: 4 MiB of index per GiB of tables
        self._path, self._storage, self._keys, self._locality = path, storage, keys, locality
        self._packs, self._table = packs, table
        self._known = known  # digest -> where an earlier layer (or this one) stored that chunk
        self._cdc = FastCDC(min_size=MIN_CHUNK, avg_size=AVG_CHUNK, max_size=MAX_CHUNK)
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._hash = keys.hasher.digest
        self.chunks_written = 0
        self.stored_bytes = 0

    def write_stream(
        self, number: int, blocks: Iterable[bytes | bytearray | memoryview], tick: Callable[[int], None]
    ) -> int:
        """Store one stream from its blocks (any sizes); returns its length in bytes."""
        pending = bytearray()
        total = carried = 0
        for block in blocks:
            # psycopg hands a binary COPY over row by row: gather about 1 MiB before cutting.
            pending += block
            total += len(block)
            if len(pending) < _GATHER:
                continue
            tick(len(pending) - carried)
            view = bytes(pending)  # a copy: ``pending`` is cut below while chunk views may live
            # Every chunk but the last ends where it would in the whole stream (a cut depends only
            # on the bytes from its chunk's start); the last may be cut short by the gathered end.
            last_start = 0
            for chunk in self._cdc.cut_buf(view):
                if chunk.offset + chunk.length == len(pending):
                    last_start = chunk.offset
                    break
                self._add(number, chunk.data)
            del pending[:last_start]
            carried = len(pending)
        tick(len(pending) - carried)
        if pending:
            for chunk in self._cdc.cut_buf(bytes(pending)):
                self._add(number, chunk.data)
        return total

    def _add(self, stream: int, data: memoryview | bytes) -> None:
        digest = self._hash(data)
        known = self._known.get(digest)
        if known is None:
            packed = self._cctx.compress(data)
            codec = CODEC_ZSTD
            if len(packed) >= len(data):
                packed, codec = bytes(data), CODEC_RAW
            slot, offset = self._packs.add(packed)
            self.chunks_written += 1
            self.stored_bytes += len(packed)
            record = (stream, digest, slot, offset, len(packed), codec, len(data))
            # Later copies of the same chunk (in this layer) point here; its FileRef is filled
            # when the pack closes, so a placeholder keyed by slot is kept instead.
            self._known[digest] = StreamChunk(stream, digest, _pending(slot), offset, len(packed), codec, len(data))
        else:
            slot = self._slot(known.pack)
            record = (stream, digest, slot, known.offset, known.length, known.codec, known.plain)
        self._records.append(_RECORD.pack(*record))

    def _slot(self, ref: FileRef) -> int:
        if ref.path.startswith(_PENDING):
            return int(ref.path[len(_PENDING) :])
        return self._table.slot_for(ref)

    def finish(self) -> FileRef:
        out = SealedObjectWriter(self._storage, self._path, self._keys, self._locality)
        try:
            out.write(_HEADER.pack(_MAGIC, len(self._records)))
            for i in range(0, len(self._records), 4096):
                out.write(b"".join(self._records[i : i + 4096]))
            return out.finish()
        except BaseException:
            out.abort()
            raise


_PENDING = "\0pending:"


def _pending(slot: int) -> FileRef:
    return FileRef(f"{_PENDING}{slot}", 0, "")


def read_index(storage_for: StorageFor, ref: FileRef, packs: list[FileRef], keys: BackupKeys) -> list[StreamChunk]:
    """Every chunk record of a stream index, in order."""
    f = StoredFile(storage_for(ref.locality), ref, keys)
    try:
        try:
            magic, count = _HEADER.unpack(f.read(0, _HEADER.size))
        except struct.error:
            raise IntegrityError(f"/{ref.path} is not a stream index") from None
        if magic != _MAGIC or f.plaintext_size != _HEADER.size + count * _RECORD.size:
            raise IntegrityError(f"/{ref.path} is not a valid stream index")
        out = []
        batch = 4096
        for start in range(0, count, batch):
            n = min(batch, count - start)
            raw = f.read(_HEADER.size + start * _RECORD.size, n * _RECORD.size)
            for j in range(n):
                stream, digest, slot, offset, length, codec, plain = _RECORD.unpack_from(raw, j * _RECORD.size)
                if slot >= len(packs):
                    raise IntegrityError(f"/{ref.path} points at a pack the manifest does not list")
                out.append(StreamChunk(stream, digest, packs[slot], offset, length, codec, plain))
        return out
    finally:
        f.close()


class StreamReader:
    """Reads stored streams back: every chunk authenticated (sealed packs), decompressed and checked
    against its keyed hash before a byte is handed on."""

    def __init__(self, storage_for: StorageFor, keys: BackupKeys, chunks: list[StreamChunk]) -> None:
        self._storage_for, self._keys = storage_for, keys
        self._chunks = chunks
        self._open: dict[str, StoredFile] = {}
        self._dctx = zstandard.ZstdDecompressor()

    def check_files(self) -> None:
        """Fail before anything is written if a pack is missing or has the wrong size."""
        for c in self._chunks:
            self._pack(c.pack)

    def _pack(self, ref: FileRef) -> StoredFile:
        f = self._open.get(ref.path)
        if f is None:
            f = self._open[ref.path] = StoredFile(self._storage_for(ref.locality), ref, self._keys)
        return f

    def stream(self, number: int) -> Iterator[bytes]:
        for c in self._chunks:
            if c.stream != number:
                continue
            stored = self._pack(c.pack).read(c.offset, c.length)
            if c.codec == CODEC_ZSTD:
                try:
                    data = self._dctx.decompress(stored, max_output_size=c.plain)
                except zstandard.ZstdError:
                    raise IntegrityError(f"a chunk of /{c.pack.path} does not decompress") from None
            elif c.codec == CODEC_RAW:
                data = stored
            else:
                raise IntegrityError(f"a chunk of /{c.pack.path} has unknown codec {c.codec}")
            if len(data) != c.plain or self._keys.hasher.digest(data) != c.digest:
                raise IntegrityError(f"a chunk of /{c.pack.path} does not match its hash")
            yield data

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
