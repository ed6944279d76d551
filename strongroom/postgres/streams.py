"""Byte streams (a schema archive, each table's binary COPY) stored as content-defined chunks.

Each stream is cut with FastCDC (pyfastcdc), so an insert or delete shifts chunk boundaries only
locally and an incremental stores only the chunks around a change. Chunks are hashed with the
backup's keyed BLAKE3, zstd-compressed and appended to the layer's sealed packs (PackWriter, as
SQLite pages are). A chunk whose hash the previous layer's index already names (one of its chunks,
or one of their bases) is not stored again: its record points into the older pack.

A changed chunk is usually a few changed rows among ~150 unchanged ones (rows scattered over the
table change every chunk). So a chunk the previous layer does not hold is also compressed against a
*base*: the previous layer's chunk of the same table (matched by schema and table name, not stream
number) at the nearest position, whose plaintext is read back (authenticated, hash-checked) and used
as a zstd raw-content dictionary. The result is stored as a ``CODEC_ZSTD_DELTA`` chunk when it is at
least a quarter smaller than plain zstd; a delta's base may itself be a delta, up to ``MAX_DEPTH``
(past it, the base is the chain's first chunk).

One sealed *stream index* per database lists every stream's chunks in order, so a restore reads one
index whatever the chain length. Format (``SRPGSTR2``): a header (magic, stream record count, base
record count), the stream records in stream order, then the *base records*: chunks that are not part
of any stream of this layer but that a delta of it needs (a base, its base, ...), so the index alone
describes every chain. A record is (stream, keyed hash, pack slot, offset, stored length, codec,
plain length, base), ``base`` the record number of the chunk a delta was compressed against
(0xFFFFFFFF for none; a base record's stream is 0xFFFFFFFF too). Every pack a record or a base needs
is in the manifest's pack list, so check verifies it and prune (which removes whole layers, newest
first) never removes a base still needed. A decoded delta is checked against its own keyed hash, as
every chunk is: a wrong or swapped base gives an IntegrityError, never wrong bytes. Version 1
indexes (``SRPGSTR1``: no base field, no base records) are still read.
"""

from __future__ import annotations

import bisect
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

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
#: zstd against the base chunk's plaintext as a raw-content dictionary (codecs 0 and 1: backup.data).
CODEC_ZSTD_DELTA = 2
#: A delta's chain (it, its base, ...) decodes at most this many deltas and one plain chunk. Each
#: step is one more pack read, decompression and hash of a chunk on restore (and when the next
#: incremental reads its bases), so restoring a chunk costs at most MAX_DEPTH + 1 times a plain one.
#: A chunk whose base is that deep is compressed against the chain's first, plain chunk instead
#: (depth 1: what changed since then, still small for a chunk changed a few rows at a time) or
#: stored whole if that is not smaller. 8 keeps a week of daily incrementals on short chains while a
#: restore reads at most 9 chunks for one; the chains' old chunks stay anyway (their layers are in
#: the chain), so a deeper bound would save little and make every restore slower.
MAX_DEPTH = 8
#: zstd level of a delta. Not ZSTD_LEVEL (-1, the fast mode): measured here, -1 against a 64 KiB
#: raw-content dictionary stored a 62 KB chunk of a few changed rows in 56 KB; level 1 in 185 bytes,
#: and no slower (~90 us for 64 KiB).
DELTA_LEVEL = 1
_GATHER = 1 << 20
_MAGIC_V1, _MAGIC = b"SRPGSTR1", b"SRPGSTR2"
_HEADER_V1 = struct.Struct("<8sI")  # magic, record count
_HEADER = struct.Struct("<8sII")  # magic, stream record count, base record count
_RECORD_V1 = struct.Struct("<I32sIQIBI")  # stream, hash, pack slot, offset, stored length, codec, plain length
_RECORD = struct.Struct("<I32sIQIBII")  # ... and the record number of the delta's base
_NONE = 0xFFFFFFFF  # no base; a base record's stream
_BASE_CACHE = 4 * (MAX_DEPTH + 1)  # decoded bases kept (<= 64 KiB each): a chain is decoded once
_PROBE = 32  # bytes of a new chunk looked for in the previous layer's chunks near its place


@dataclass(frozen=True)
class StreamChunk:
    stream: int
    digest: bytes
    pack: FileRef
    offset: int
    length: int
    codec: int
    plain: int
    base: StreamChunk | None = field(default=None, repr=False)  # a delta's base chunk
    depth: int = 0  # deltas in its chain: 0 for a plain chunk

    def __post_init__(self) -> None:
        if (self.base is not None) != (self.codec == CODEC_ZSTD_DELTA):
            raise IntegrityError(f"a chunk record of /{self.pack.path} has a base if and only if it is a delta")
        object.__setattr__(self, "depth", 0 if self.base is None else self.base.depth + 1)


class PreviousStreams:
    """The previous layer's streams, for an incremental: its chunks by keyed hash (stored again as a
    reference), and by stream and position, with a reader of their plaintext (the delta bases)."""

    def __init__(self, chunks: list[StreamChunk], reader: StreamReader, streams: dict[str, int]) -> None:
        # Every chunk and every base (older layers' chunks: a chunk back as it was is a reference),
        # by keyed hash; of the records of one hash, the one of the shortest chain.
        self.known: dict[bytes, StreamChunk] = {}
        for c in chunks:
            b: StreamChunk | None = c
            while b is not None:
                had = self.known.get(b.digest)
                if had is None or had.depth > b.depth:
                    self.known[b.digest] = b
                b = b.base
        self.reader = reader
        self._streams = streams  # identity (see StreamWriter.write_stream) -> previous stream number
        self._starts: dict[int, list[int]] = {}
        self._chunks: dict[int, list[StreamChunk]] = {}
        self._where: dict[bytes, tuple[int, int]] = {}  # digest -> (stream, start offset)
        ends: dict[int, int] = {}
        for c in chunks:
            start = ends.get(c.stream, 0)
            ends[c.stream] = start + c.plain
            self._starts.setdefault(c.stream, []).append(start)
            self._chunks.setdefault(c.stream, []).append(c)
            self._where.setdefault(c.digest, (c.stream, start))

    def stream_of(self, identity: str) -> int | None:
        number = self._streams.get(identity)
        return number if number in self._chunks else None

    def position(self, digest: bytes) -> tuple[int, int] | None:
        return self._where.get(digest)

    def around(self, stream: int, pos: int) -> list[tuple[int, StreamChunk]]:
        """The chunk of ``stream`` holding byte ``pos`` (the last one past its end) and its
        neighbours, each with its start."""
        starts = self._starts.get(stream)
        if not starts:
            return []
        i = max(0, bisect.bisect_right(starts, pos) - 1)
        chunks = self._chunks[stream]
        return [(starts[j], chunks[j]) for j in (i, i - 1, i + 1) if 0 <= j < len(starts)]

    def overlapping(self, stream: int, pos: int, length: int) -> StreamChunk | None:
        """The chunk of ``stream`` that holds most of bytes ``pos`` .. ``pos + length`` (the nearest
        one if none does)."""
        starts = self._starts.get(stream)
        if not starts:
            return None
        chunks = self._chunks[stream]
        i = max(0, bisect.bisect_right(starts, pos) - 1)
        best, most = chunks[min(i, len(chunks) - 1)], 0
        while i < len(starts) and starts[i] < pos + length:
            shared = min(starts[i] + chunks[i].plain, pos + length) - max(starts[i], pos)
            if shared > most:
                best, most = chunks[i], shared
            i += 1
        return best

    def close(self) -> None:
        self.reader.close()


@dataclass
class _Cursor:
    """Where a stream being written is, and where that is in the previous layer's copy of it."""

    stream: int
    base_stream: int | None
    offset: int = 0
    drift: int = 0  # previous start - this start, at the last chunk matched or delta-encoded


class StreamWriter:
    """Cuts streams into chunks and stores the new ones; ``finish`` writes the sealed stream index.

    ``known``: digest -> where an earlier layer stored that chunk; ``bases``: the previous layer's
    streams, to delta-encode against (None: every new chunk is stored whole)."""

    def __init__(
        self,
        storage: ExternalStorage,
        path: str,
        keys: BackupKeys,
        packs: PackWriter,
        table: PackTable,
        known: dict[bytes, StreamChunk],
        locality: str = "",
        *,
        bases: PreviousStreams | None = None,
    ) -> None:
        self._records: list[bytes] = []  # ~64 bytes a chunk: 4 MiB of index per GiB of tables
        self._links: list[tuple[int, StreamChunk]] = []  # (record number, its base): filled in by finish
        self._depths = bytearray()  # each record's chain depth (<= MAX_DEPTH)
        self._lock = threading.Lock()
        self._path, self._storage, self._keys, self._locality = path, storage, keys, locality
        self._packs, self._table = packs, table
        self._known = known  # digest -> where an earlier layer (or this one) stored that chunk
        self._bases = bases
        self._cdc = FastCDC(min_size=MIN_CHUNK, avg_size=AVG_CHUNK, max_size=MAX_CHUNK)
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._hash = keys.hasher.digest
        self.chunks_written = 0
        self.deltas_written = 0
        self.stored_bytes = 0

    def write_stream(
        self,
        number: int,
        blocks: Iterable[bytes | bytearray | memoryview],
        tick: Callable[[int], None],
        identity: str | None = None,
    ) -> int:
        """Store one stream from its blocks (any sizes); returns its length in bytes. ``identity``
        names what the stream holds (a table's qualified name), so a delta's base is the previous
        layer's stream of the same identity whatever its number; None: ``#<number>``."""
        base_stream = self._bases.stream_of(identity or f"#{number}") if self._bases is not None else None
        cursor = _Cursor(number, base_stream)
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
                self._add(cursor, chunk.data)
            del pending[:last_start]
            carried = len(pending)
        tick(len(pending) - carried)
        if pending:
            for chunk in self._cdc.cut_buf(bytes(pending)):
                self._add(cursor, chunk.data)
        return total

    def _add(self, cursor: _Cursor, data: memoryview | bytes) -> None:
        digest = self._hash(data)
        known = self._known.get(digest)
        if known is None:
            packed = self._cctx.compress(data)
            codec = CODEC_ZSTD
            if len(packed) >= len(data):
                packed, codec = bytes(data), CODEC_RAW
            base = self._base_for(cursor, data)
            if base is not None:
                delta = _delta_compressor(self._bases_reader().plaintext(base)).compress(data)
                if 4 * len(delta) <= 3 * len(packed):  # meaningfully smaller, or not worth a chain
                    packed, codec = delta, CODEC_ZSTD_DELTA
                    self.deltas_written += 1
                else:
                    base = None
            slot, offset = self._packs.add(packed)
            self.chunks_written += 1
            self.stored_bytes += len(packed)
            # Later copies of the same chunk (in this layer) point here; its FileRef is filled
            # when the pack closes, so a placeholder keyed by slot is kept instead.
            chunk = StreamChunk(cursor.stream, digest, _pending(slot), offset, len(packed), codec, len(data), base)
            self._known[digest] = chunk
        else:
            chunk, slot = known, self._slot(known.pack)
            where = self._bases.position(digest) if self._bases is not None else None
            if where is not None and where[0] == cursor.base_stream:
                cursor.drift = where[1] - cursor.offset  # back in step with the previous layer's stream
        record = _RECORD.pack(cursor.stream, digest, slot, chunk.offset, chunk.length, chunk.codec, chunk.plain, _NONE)
        # A record, its depth and its link stay together (PackWriter itself is not thread-safe).
        with self._lock:
            if chunk.base is not None:
                self._links.append((len(self._records), chunk.base))
            self._depths.append(chunk.depth)
            self._records.append(record)
        cursor.offset += len(data)

    def _base_for(self, cursor: _Cursor, data: memoryview | bytes) -> StreamChunk | None:
        """The previous layer's chunk at this chunk's place in the same stream: the one holding most
        of its bytes once the bytes inserted or removed before it (``drift``) are allowed for. The
        drift is kept in step by finding a few of this chunk's bytes in the previous chunks there."""
        if self._bases is None or cursor.base_stream is None:
            return None
        reader = self._bases.reader
        near = self._bases.around(cursor.base_stream, cursor.offset + cursor.drift)
        for at in (0, len(data) // 2, len(data) - _PROBE):
            needle = bytes(data[max(0, at) : max(0, at) + _PROBE])
            found = next(((start, q) for start, c in near if (q := reader.plaintext(c).find(needle)) >= 0), None)
            if found is not None:
                cursor.drift = found[0] + found[1] - (cursor.offset + max(0, at))
                break
        base = self._bases.overlapping(cursor.base_stream, cursor.offset + cursor.drift, len(data))
        if base is not None and base.depth >= MAX_DEPTH:
            # A chain as long as allowed: a delta on its first, plain chunk instead (depth 1 again).
            # It differs by every change since, but unless that is most of it, it is still far
            # smaller than the chunk stored whole (and if not, the chunk is stored whole).
            while base.base is not None:
                base = base.base
        return base

    def _bases_reader(self) -> StreamReader:
        assert self._bases is not None
        return self._bases.reader

    def _slot(self, ref: FileRef) -> int:
        if ref.path.startswith(_PENDING):
            return int(ref.path[len(_PENDING) :])
        return self._table.slot_for(ref)

    def finish(self) -> FileRef:
        count = len(self._records)
        bases: list[bytes] = []
        if self._links:
            depths = self._depths  # then the base records' depths, as they are appended
            number: dict[bytes, int] = {}  # digest -> the record of least depth that holds it
            for i, rec in enumerate(self._records):
                n = number.get(rec[4:36])
                if n is None or depths[n] > depths[i]:
                    number[rec[4:36]] = i

            def place(c: StreamChunk) -> int:
                # Any record of the same keyed hash decodes to the same bytes: reuse one, if its
                # chain is no longer than ``c``'s (the delta on it is then no deeper than planned).
                n = number.get(c.digest)
                if n is None or depths[n] > c.depth:
                    below = place(c.base) if c.base is not None else _NONE
                    n = number[c.digest] = count + len(bases)
                    slot = self._slot(c.pack)  # so the manifest lists (and prune keeps) the base's pack
                    bases.append(_RECORD.pack(_NONE, c.digest, slot, c.offset, c.length, c.codec, c.plain, below))
                    depths.append(c.depth)
                return n

            for i, base in self._links:
                rec = self._records[i]
                self._records[i] = rec[:-4] + struct.pack("<I", place(base))
        out = SealedObjectWriter(self._storage, self._path, self._keys, self._locality)
        try:
            out.write(_HEADER.pack(_MAGIC, count, len(bases)))
            records = self._records + bases
            for i in range(0, len(records), 4096):
                out.write(b"".join(records[i : i + 4096]))
            return out.finish()
        except BaseException:
            out.abort()
            raise

    def close(self) -> None:
        """Close the previous layer's packs opened for bases."""
        if self._bases is not None:
            self._bases.close()


_PENDING = "\0pending:"


def _pending(slot: int) -> FileRef:
    return FileRef(f"{_PENDING}{slot}", 0, "")


def _raw_dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _delta_compressor(base: bytes) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=DELTA_LEVEL, dict_data=_raw_dict(base))


def read_index(storage_for: StorageFor, ref: FileRef, packs: list[FileRef], keys: BackupKeys) -> list[StreamChunk]:
    """Every chunk record of a stream index, in order (a delta's base chain hangs off its ``base``)."""
    f = StoredFile(storage_for(ref.locality), ref, keys)
    try:
        head = f.read(0, min(f.plaintext_size, _HEADER.size))
        header, record = (_HEADER_V1, _RECORD_V1) if head[:8] == _MAGIC_V1 else (_HEADER, _RECORD)
        if head[:8] not in (_MAGIC, _MAGIC_V1) or len(head) < header.size:
            raise IntegrityError(f"/{ref.path} is not a stream index")
        fields = header.unpack_from(head)
        count, extra = fields[1], (fields[2] if header is _HEADER else 0)
        total = count + extra
        if f.plaintext_size != header.size + total * record.size:
            raise IntegrityError(f"/{ref.path} is not a valid stream index")
        raw: list[tuple[Any, ...]] = []
        batch = 4096
        for start in range(0, total, batch):
            n = min(batch, total - start)
            data = f.read(header.size + start * record.size, n * record.size)
            for j in range(n):
                rec = record.unpack_from(data, j * record.size)
                if rec[2] >= len(packs):
                    raise IntegrityError(f"/{ref.path} points at a pack the manifest does not list")
                raw.append(rec if record is _RECORD else (*rec, _NONE))
    finally:
        f.close()
    built: list[StreamChunk | None] = [None] * total

    def build(i: int, level: int) -> StreamChunk:
        c = built[i]
        if c is None:
            if level > MAX_DEPTH:  # a longer chain than any writer makes, or a loop
                raise IntegrityError(f"/{ref.path} has a delta chain longer than {MAX_DEPTH}")
            stream, digest, slot, offset, length, codec, plain, below = raw[i]
            base = None
            if below != _NONE:
                if below >= total:
                    raise IntegrityError(f"/{ref.path} names a base record it does not hold")
                base = build(below, level + 1)
            c = StreamChunk(stream, digest, packs[slot], offset, length, codec, plain, base)
            if c.depth > MAX_DEPTH:  # on a base built before, from another record
                raise IntegrityError(f"/{ref.path} has a delta chain longer than {MAX_DEPTH}")
            built[i] = c
        return c

    return [build(i, 0) for i in range(count)]


class StreamReader:
    """Reads stored streams back: every chunk authenticated (sealed packs), decompressed and checked
    against its keyed hash before a byte is handed on; a delta's base is decoded (and checked) first."""

    def __init__(self, storage_for: StorageFor, keys: BackupKeys, chunks: list[StreamChunk]) -> None:
        self._storage_for, self._keys = storage_for, keys
        self._chunks = chunks
        self._by_stream: dict[int, list[StreamChunk]] = {}  # once: a table's stream is not a scan of all
        for c in chunks:
            self._by_stream.setdefault(c.stream, []).append(c)
        self._open: dict[str, StoredFile] = {}
        self._local = threading.local()  # a zstd decompressor per thread: streams may be read in parallel
        self._bases: OrderedDict[bytes, bytes] = OrderedDict()  # digest -> plaintext, most recent last
        self._lock = threading.Lock()

    def check_files(self) -> None:
        """Fail before anything is written if a pack is missing or has the wrong size."""
        for c in self._chunks:
            b: StreamChunk | None = c
            while b is not None:
                self._pack(b.pack)
                b = b.base

    def _pack(self, ref: FileRef) -> StoredFile:
        with self._lock:
            f = self._open.get(ref.path)
            if f is None:
                f = self._open[ref.path] = StoredFile(self._storage_for(ref.locality), ref, self._keys)
            return f

    def stream(self, number: int) -> Iterator[bytes]:
        for c in self._by_stream.get(number, ()):
            yield self.chunk(c)

    def chunk(self, c: StreamChunk) -> bytes:
        """One chunk's plaintext, checked against its keyed hash."""
        stored = self._pack(c.pack).read(c.offset, c.length)
        try:
            if c.codec == CODEC_ZSTD:
                dctx = getattr(self._local, "dctx", None)
                if dctx is None:
                    dctx = self._local.dctx = zstandard.ZstdDecompressor()
                data = dctx.decompress(stored, max_output_size=c.plain)
            elif c.codec == CODEC_ZSTD_DELTA:
                assert c.base is not None  # StreamChunk's invariant
                dctx = zstandard.ZstdDecompressor(dict_data=_raw_dict(self.plaintext(c.base)))
                data = dctx.decompress(stored, max_output_size=c.plain)
            elif c.codec == CODEC_RAW:
                data = stored
            else:
                raise IntegrityError(f"a chunk of /{c.pack.path} has unknown codec {c.codec}")
        except zstandard.ZstdError:
            raise IntegrityError(f"a chunk of /{c.pack.path} does not decompress") from None
        if len(data) != c.plain or self._keys.hasher.digest(data) != c.digest:
            raise IntegrityError(f"a chunk of /{c.pack.path} does not match its hash")
        return data

    def plaintext(self, c: StreamChunk) -> bytes:
        """``chunk``, through a small cache of recent chunks (the bases of deltas)."""
        with self._lock:
            data = self._bases.get(c.digest)
            if data is not None:
                self._bases.move_to_end(c.digest)
                return data
        data = self.chunk(c)
        with self._lock:
            self._bases[c.digest] = data
            while len(self._bases) > _BASE_CACHE:
                self._bases.popitem(last=False)
        return data

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
        self._bases.clear()


def verify_index(
    storage_for: StorageFor, ref: FileRef, packs: list[FileRef], keys: BackupKeys, seen: set[tuple[str, int]]
) -> int:
    """check --read-data: decode every chunk of a stream index not yet seen (a delta through its
    bases) and check it against its keyed hash; returns how many were decoded."""
    chunks = read_index(storage_for, ref, packs, keys)
    reader = StreamReader(storage_for, keys, chunks)
    done = 0
    try:
        for c in chunks:
            if (c.pack.path, c.offset) not in seen:
                seen.add((c.pack.path, c.offset))
                reader.plaintext(c)
                done += 1
    finally:
        reader.close()
    return done
