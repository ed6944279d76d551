"""CockroachDB's encrypted backup file format ("sealed" files), byte-compatible in both directions.

Layout::

    "encrypt" | version (1 byte) | IV (12 bytes) | sealed chunk 0 | sealed chunk 1 | ...

Version 2 (what we write): the plaintext is cut into 64 KiB chunks and each is sealed on its own
with AES-256-GCM (16-byte tag, no associated data). Chunk i's nonce is the IV with its last 8 bytes,
read as a big-endian counter, advanced by i. The last chunk is always shorter than 64 KiB, empty if
need be, so a file cut at a chunk boundary fails to authenticate. Version 1 (read only): one GCM
seal of the whole plaintext under nonce = IV.

Map: ``seal``/``unseal`` for whole buffers; ``SealedWriter`` streams out; ``SealedReader`` reads
any range of a stored file; ``SealedStreamReader`` decrypts a file as it streams in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, count
from types import TracebackType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import EncryptionError, IntegrityError

PREAMBLE = b"encrypt"
VERSION_IV_PREFIX = 1  # v1: one GCM message for the whole file
VERSION_CHUNKED = 2  # v2: 64 KiB chunks, what CockroachDB and we write
IV_SIZE = 12
HEADER_SIZE = len(PREAMBLE) + 1 + IV_SIZE  # 20
TAG_SIZE = 16
CHUNK_SIZE = 64 << 10  # plaintext bytes per chunk
SEALED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
KEY_SIZE = 32  # AES-256 only, as CockroachDB

# CockroachDB's wording (pkg/ccl/storageccl/encryption.go), so its users recognise the errors.
DECRYPT_FAILED = "failed to decrypt — maybe incorrect key"
NOT_ENCRYPTED = "file does not appear to be encrypted"
INVALID_HEADER = "invalid encryption header"

_U64 = (1 << 64) - 1


def appears_encrypted(prefix: bytes) -> bool:
    """True if ``prefix`` (the first bytes of a file) starts with the ``encrypt`` preamble."""
    return bytes(prefix[: len(PREAMBLE)]) == PREAMBLE


def sealed_size(plaintext_size: int) -> int:
    """Stored size of a v2 file holding ``plaintext_size`` bytes (one tag per chunk, final short chunk)."""
    if plaintext_size < 0:
        raise ValueError(f"negative plaintext size {plaintext_size}")
    return HEADER_SIZE + plaintext_size + TAG_SIZE * (plaintext_size // CHUNK_SIZE + 1)


def plaintext_size(sealed_size: int) -> int:
    """Plaintext size of a v2 file of ``sealed_size`` bytes (CockroachDB's ``Stat`` formula)."""
    body = sealed_size - HEADER_SIZE
    # Every chunk carries a tag and the final one is short, so its sealed length is in [16, 65552).
    if body < TAG_SIZE or body % SEALED_CHUNK_SIZE < TAG_SIZE:
        raise IntegrityError(f"{sealed_size} bytes is not a possible size for an encrypted file")
    return body - TAG_SIZE * (body // SEALED_CHUNK_SIZE + 1)


def seal(key: bytes, plaintext: bytes, iv: bytes | None = None) -> bytes:
    """Encrypt a whole buffer into a v2 file (random IV unless one is given)."""
    out: list[bytes] = []
    with SealedWriter(key, out.append, iv) as writer:
        writer.write(plaintext)
    return b"".join(out)


def unseal(key: bytes, sealed: bytes) -> bytes:
    """Decrypt a whole v1 or v2 file; raises EncryptionError rather than return unauthenticated bytes."""
    return b"".join(SealedStreamReader(key, (sealed,)))


def _parse_header(header: bytes) -> tuple[int, bytes]:
    """(version, IV) from a file's first bytes, checked in the order CockroachDB checks them."""
    if not appears_encrypted(header):
        raise EncryptionError(NOT_ENCRYPTED)
    if len(header) < HEADER_SIZE:
        raise EncryptionError(INVALID_HEADER)
    version = header[len(PREAMBLE)]
    if version not in (VERSION_IV_PREFIX, VERSION_CHUNKED):
        raise EncryptionError(f"unexpected encryption scheme/config version {version}")
    return version, bytes(header[len(PREAMBLE) + 1 : HEADER_SIZE])


class _ChunkCipher:
    """AES-256-GCM under one file's IV; chunk i's nonce is the IV with its low 64 bits plus i."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise EncryptionError(f"encryption key must be {KEY_SIZE} bytes, not {len(key)}")
        self._aead = AESGCM(key)  # one object for the whole file: its key schedule is the costly part
        self._prefix = iv[:4]
        self._counter = int.from_bytes(iv[4:], "big")

    def nonce(self, index: int) -> bytes:
        return self._prefix + ((self._counter + index) & _U64).to_bytes(8, "big")

    def seal(self, index: int, plaintext: bytes | bytearray | memoryview) -> bytes:
        return self._aead.encrypt(self.nonce(index), plaintext, None)

    def open(self, index: int, sealed: bytes | bytearray | memoryview) -> bytes:
        try:
            return self._aead.decrypt(self.nonce(index), sealed, None)
        except InvalidTag:
            raise EncryptionError(DECRYPT_FAILED) from None


class _Blocks:
    """Cuts pieces of any size into fixed-size blocks, holding back the unfinished remainder.

    Full blocks inside a large piece are yielded as views of it, never copied; the rest goes through
    one reused buffer. A yielded block is only valid until the next one is asked for.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.fed = 0  # bytes taken in so far
        self._buf = bytearray(size)
        self._fill = 0  # bytes of _buf in use

    @property
    def pending(self) -> memoryview:
        """The held-back remainder (shorter than one block)."""
        return memoryview(self._buf)[: self._fill]

    def absorb(self, data: bytes | bytearray | memoryview) -> bool:
        """Take ``data`` whole if it completes no block: a cheap path for many small writes."""
        if type(data) is not bytes or len(data) >= self.size - self._fill:
            return False
        self._buf[self._fill : self._fill + len(data)] = data
        self._fill += len(data)
        self.fed += len(data)
        return True

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytearray | memoryview]:
        view = memoryview(data).cast("B")  # lengths in bytes, whatever the caller's item format
        self.fed += len(view)
        if self._fill:
            take = min(self.size - self._fill, len(view))
            self._buf[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill < self.size:
                return
            yield self._buf
            self._fill = 0
        while len(view) >= self.size:
            yield view[: self.size]
            view = view[self.size :]
        self._buf[: len(view)] = view
        self._fill = len(view)


class SealedWriter:
    """Streams a v2 file to ``sink``: the header at once, then each sealed chunk as soon as it is full.

    Holds at most one chunk of plaintext. ``close`` seals the final short chunk; a ``with`` block
    closes only on normal exit, so a failed write never produces a file that looks complete.
    After any error (from ``sink``, say) the writer refuses further use: carrying on could reuse a
    nonce or leave a hole in the file.
    """

    def __init__(self, key: bytes, sink: Callable[[bytes], object], iv: bytes | None = None) -> None:
        iv = os.urandom(IV_SIZE) if iv is None else bytes(iv)
        if len(iv) != IV_SIZE:
            raise ValueError(f"IV must be {IV_SIZE} bytes, not {len(iv)}")
        self._iv = iv
        self._cipher = _ChunkCipher(key, iv)
        self._sink = sink
        self._blocks = _Blocks(CHUNK_SIZE)
        self._next_index = 0
        self._state = "open"  # then "closed", or "failed"
        self.sealed_written = 0
        self._emit(PREAMBLE + bytes([VERSION_CHUNKED]) + iv)

    @property
    def iv(self) -> bytes:
        return self._iv

    @property
    def plaintext_written(self) -> int:
        return self._blocks.fed

    def write(self, data: bytes | memoryview) -> None:
        self._check_open()
        if self._blocks.absorb(data):  # index records and the like: no chunk to seal yet
            return
        try:
            for block in self._blocks.feed(data):
                self._seal_next(block)
        except BaseException:
            self._state = "failed"
            raise

    def close(self) -> None:
        if self._state == "closed":
            return
        self._check_open()
        try:
            self._seal_next(self._blocks.pending)  # always, even if empty: it marks the end of the file
        except BaseException:
            self._state = "failed"
            raise
        self._state = "closed"

    def __enter__(self) -> SealedWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"SealedWriter is {self._state}")

    def _seal_next(self, block: bytearray | memoryview) -> None:
        index = self._next_index
        self._next_index += 1  # before sealing: a nonce is never used twice, whatever fails below
        self._emit(self._cipher.seal(index, block))

    def _emit(self, sealed: bytes) -> None:
        self._sink(sealed)
        self.sealed_written += len(sealed)


class SealedReader:
    """Random access to a stored v1 or v2 file through ``read_at(offset, length)``.

    Only the chunks a read needs are fetched and decrypted, and the last one is kept, so sequential
    small reads decrypt each chunk once. The stored size must be the real one: any other size makes
    the final chunk fail to authenticate, which is how truncation and appended bytes are caught.
    ``read_at`` must return exactly the bytes asked for; fewer counts as truncation.
    ``read``, ``read_chunk`` and ``iter_chunks`` share that cache and are not thread-safe;
    ``read_range`` touches no shared state, so any number of threads may call it at once (as long
    as ``read_at`` allows that, as positional reads and ranged GETs do).
    """

    # Chunks fetched per read_at by iter_chunks: ~1 MiB, few round trips to object storage.
    _BATCH = 16

    def __init__(self, key: bytes, read_at: Callable[[int, int], bytes], sealed_size: int) -> None:
        self._read_at = read_at
        self._version, self._iv = _parse_header(read_at(0, min(HEADER_SIZE, sealed_size)))
        self._cipher = _ChunkCipher(key, self._iv)
        body = sealed_size - HEADER_SIZE
        if self._version == VERSION_IV_PREFIX:
            if body < TAG_SIZE:
                raise EncryptionError(DECRYPT_FAILED)
            self.chunk_count = 1
            self.plaintext_size = body - TAG_SIZE
            # The one "chunk" is the whole file.
            self._span, self._sealed_span = max(self.plaintext_size, 1), body
        else:
            # The final chunk's sealed length must be in [16, 65552): anything else means a cut or an
            # addition, and CockroachDB reports that as a chunk that fails to open.
            if body < TAG_SIZE or body % SEALED_CHUNK_SIZE < TAG_SIZE:
                raise EncryptionError(DECRYPT_FAILED)
            self.chunk_count = body // SEALED_CHUNK_SIZE + 1
            self.plaintext_size = body - TAG_SIZE * self.chunk_count
            self._span, self._sealed_span = CHUNK_SIZE, SEALED_CHUNK_SIZE
        self._sealed_size = sealed_size
        self._cached_index = -1
        self._cached = b""

    @property
    def iv(self) -> bytes:
        return self._iv

    def read_chunk(self, i: int) -> bytes:
        """Plaintext of chunk ``i`` (for v1, the whole file), with one ``read_at`` call."""
        if not 0 <= i < self.chunk_count:
            raise IndexError(f"chunk {i} out of range 0..{self.chunk_count - 1}")
        if i == self._cached_index:
            return self._cached
        (chunk,) = self._open_range(i, i + 1)
        return chunk

    def read(self, offset: int, length: int) -> bytes:
        """``length`` plaintext bytes from ``offset``; a range past the end is an IntegrityError."""
        self._check_range(offset, length)
        end = offset + length
        if length == 0:
            return b""
        first, last = offset // self._span, (end - 1) // self._span
        base = first * self._span
        if first == last:
            return self.read_chunk(first)[offset - base : end - base]
        chunks = [self._cached] if first == self._cached_index else []
        chunks += self._open_range(first + len(chunks), last + 1)
        head = memoryview(chunks[0])[offset - base :]
        tail = memoryview(chunks[-1])[: end - last * self._span]
        return b"".join([head, *chunks[1:-1], tail])

    def read_range(self, offset: int, length: int) -> bytes:
        """What ``read`` returns, decrypted without the cache: safe to call from several threads."""
        self._check_range(offset, length)
        if length == 0:
            return b""
        end = offset + length
        first, last = offset // self._span, (end - 1) // self._span
        base = first * self._span
        chunks = self._decrypt(first, last + 1)
        if first == last:
            return chunks[0][offset - base : end - base]
        head = memoryview(chunks[0])[offset - base :]
        tail = memoryview(chunks[-1])[: end - last * self._span]
        return b"".join([head, *chunks[1:-1], tail])

    def iter_chunks(self) -> Iterator[bytes]:
        """The whole plaintext, chunk by chunk; every chunk including the final short one is checked."""
        for start in range(0, self.chunk_count, self._BATCH):
            yield from self._open_range(start, min(start + self._BATCH, self.chunk_count))

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        if offset + length > self.plaintext_size:
            raise IntegrityError(
                f"read of {length} bytes at {offset} goes past the end of a {self.plaintext_size}-byte file"
            )

    def _fetch(self, start: int, stop: int) -> memoryview:
        """The sealed bytes of chunks [start, stop), with one read_at call."""
        step = self._sealed_span
        first_byte = HEADER_SIZE + start * step
        last_byte = min(HEADER_SIZE + stop * step, self._sealed_size)
        sealed = memoryview(self._read_at(first_byte, last_byte - first_byte))
        if len(sealed) != last_byte - first_byte:
            raise EncryptionError(DECRYPT_FAILED)  # storage returned less: the same as a truncated file
        return sealed

    def _decrypt(self, start: int, stop: int) -> list[bytes]:
        step = self._sealed_span
        sealed = self._fetch(start, stop)
        return [self._cipher.open(i, sealed[(i - start) * step : (i - start + 1) * step]) for i in range(start, stop)]

    def _open_range(self, start: int, stop: int) -> Iterator[bytes]:
        """Decrypt chunks [start, stop), fetched with one read_at call; the last one opened stays cached."""
        step = self._sealed_span
        sealed = self._fetch(start, stop)
        for i in range(start, stop):
            self._cached_index = -1  # while it is being replaced
            self._cached = self._cipher.open(i, sealed[(i - start) * step : (i - start + 1) * step])
            self._cached_index = i
            yield self._cached


class SealedStreamReader:
    """Decrypts a v1 or v2 file arriving as pieces of any size; iterating yields plaintext chunks.

    Every chunk yielded is authentic, but the file is only known to be complete (not truncated, no
    trailing bytes) when iteration ends without an exception: treat an error there as fatal.
    """

    def __init__(self, key: bytes, chunks: Iterable[bytes]) -> None:
        if len(key) != KEY_SIZE:  # fail at construction, as the other readers do
            raise EncryptionError(f"encryption key must be {KEY_SIZE} bytes, not {len(key)}")
        self._key = key
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        pieces = iter(self._chunks)
        head = bytearray()
        after_head: memoryview | bytes = b""
        for piece in pieces:
            view = memoryview(piece).cast("B")
            need = HEADER_SIZE - len(head)
            head += view[:need]
            if len(head) == HEADER_SIZE:
                after_head = view[need:]  # a view: a large first piece is not copied
                break
        version, iv = _parse_header(bytes(head))
        cipher = _ChunkCipher(self._key, iv)
        rest = chain([after_head], pieces)
        if version == VERSION_IV_PREFIX:
            plain = cipher.open(0, b"".join(rest))  # one GCM message: nothing is authentic before its end
            if plain:
                yield plain
            return
        index = count()
        blocks = _Blocks(SEALED_CHUNK_SIZE)
        for part in rest:
            for sealed in blocks.feed(part):
                # A full-size sealed chunk is never the last one (the writer ends with a short one).
                yield cipher.open(next(index), sealed)
        # What is left must be the final short chunk. Nothing left means a cut at a chunk boundary:
        # opening an empty chunk fails, exactly as in CockroachDB.
        final = cipher.open(next(index), blocks.pending)
        if final:
            yield final
