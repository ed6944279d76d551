"""CockroachDB's sealed (encrypted backup) file format: round trips, known answers, tampering, random access.

Expected bytes are built here straight from AES-GCM and the format's rules, never from the code under test.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.crypto import (
    CHUNK_SIZE,
    HEADER_SIZE,
    IV_SIZE,
    PREAMBLE,
    TAG_SIZE,
    SealedReader,
    SealedStreamReader,
    SealedWriter,
    appears_encrypted,
    plaintext_size,
    seal,
    sealed_size,
    unseal,
)
from strongroom.errors import EncryptionError, IntegrityError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
IV = bytes.fromhex("cafebabefacedbaddecaf888")
# Low 64 bits one short of wrapping: chunk 1 gets counter 0, so the "mod 2**64" rule is exercised.
WRAP_IV = bytes.fromhex("01020304ffffffffffffffff")
SEALED_CHUNK = CHUNK_SIZE + TAG_SIZE

DECRYPT_FAILED = "failed to decrypt — maybe incorrect key"
NOT_ENCRYPTED = "file does not appear to be encrypted"
INVALID_HEADER = "invalid encryption header"

EDGE_SIZES = [0, 1, 65535, 65536, 65537, 3 * 65536]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plaintext(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


def nonce(iv: bytes, i: int) -> bytes:
    """The format's rule, restated: IV bytes [4..12) as a big-endian uint64, plus i, mod 2**64."""
    return iv[:4] + ((int.from_bytes(iv[4:], "big") + i) % 2**64).to_bytes(8, "big")


def reference_seal(key: bytes, iv: bytes, data: bytes) -> bytes:
    """A v2 file built independently: header, then every 64 KiB chunk and a final short one, sealed."""
    aead = AESGCM(key)
    out = [PREAMBLE, b"\x02", iv]
    for i in range(len(data) // CHUNK_SIZE + 1):
        out.append(aead.encrypt(nonce(iv, i), data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE], None))
    return b"".join(out)


def reference_seal_v1(key: bytes, iv: bytes, data: bytes) -> bytes:
    return PREAMBLE + b"\x01" + iv + AESGCM(key).encrypt(iv, data, None)


def read_at_of(blob: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, length: blob[offset : offset + length]


def pieces_of(blob: bytes, sizes: list[int]) -> list[bytes]:
    """Cut ``blob`` into consecutive pieces of the given sizes (cycled), the last one taking the rest."""
    out, pos, i = [], 0, 0
    while pos < len(blob):
        size = sizes[i % len(sizes)] if sizes else len(blob)
        out.append(blob[pos : pos + size])
        pos += size
        i += 1
    return out


def decrypt_with_reader(key: bytes, blob: bytes) -> bytes:
    return b"".join(SealedReader(key, read_at_of(blob), len(blob)).iter_chunks())


def decrypt_with_stream(key: bytes, blob: bytes, piece_sizes: tuple[int, ...] = (1000, 70000, 7)) -> bytes:
    return b"".join(SealedStreamReader(key, pieces_of(blob, list(piece_sizes))))


DECRYPTORS = [unseal, decrypt_with_reader, decrypt_with_stream]


def assert_rejected(blob: bytes, message: str = DECRYPT_FAILED, key: bytes = KEY) -> None:
    """Every way of decrypting refuses ``blob`` with exactly ``message``, returning no bytes."""
    for decrypt in DECRYPTORS:
        with pytest.raises(EncryptionError) as caught:
            decrypt(key, blob)
        assert str(caught.value) == message, decrypt.__name__


# --- sizes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_sizes_agree_with_layout(n: int) -> None:
    blob = seal(KEY, plaintext(n))
    assert len(blob) == sealed_size(n) == HEADER_SIZE + n + TAG_SIZE * (n // CHUNK_SIZE + 1)
    assert plaintext_size(len(blob)) == n


def test_exact_chunk_gives_full_chunk_then_empty_final_chunk() -> None:
    blob = seal(KEY, plaintext(CHUNK_SIZE), iv=IV)
    assert len(blob) == HEADER_SIZE + SEALED_CHUNK + TAG_SIZE
    reader = SealedReader(KEY, read_at_of(blob), len(blob))
    assert reader.chunk_count == 2
    assert reader.read_chunk(1) == b""


@given(st.integers(min_value=0, max_value=10**13))
def test_plaintext_size_inverts_sealed_size_and_matches_cockroach_stat(n: int) -> None:
    size = sealed_size(n)
    assert plaintext_size(size) == n
    assert size - 20 - 16 * ((size - 20) // (65536 + 16) + 1) == n


@pytest.mark.parametrize("size", [0, 19, 20, 35, 20 + SEALED_CHUNK, 20 + SEALED_CHUNK + 15, 20 + 3 * SEALED_CHUNK + 1])
def test_impossible_sealed_sizes_are_integrity_errors(size: int) -> None:
    with pytest.raises(IntegrityError):
        plaintext_size(size)


def test_appears_encrypted() -> None:
    assert appears_encrypted(b"encrypt\x02" + IV)
    assert appears_encrypted(b"encrypt")
    assert not appears_encrypted(b"encryp")
    assert not appears_encrypted(b"")
    assert not appears_encrypted(b"Encrypt\x02")
    assert not appears_encrypted(b"SQLite format 3\x00")


# --- known answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [*EDGE_SIZES, 5 * 65536 + 123])
@pytest.mark.parametrize("iv", [IV, WRAP_IV])
def test_seal_matches_reference_bytes(n: int, iv: bytes) -> None:
    data = plaintext(n)
    assert seal(KEY, data, iv=iv) == reference_seal(KEY, iv, data)


def test_three_byte_vector() -> None:
    expected = bytes.fromhex(
        "656e637279707402"  # "encrypt", version 2
        "cafebabefacedbaddecaf888"  # IV
        "ebc1c3"  # ciphertext of "abc"
        "0c0151d0bb11ecac93ed9cce16e0b991"  # GCM tag
    )
    assert seal(KEY, b"abc", iv=IV) == expected
    assert unseal(KEY, expected) == b"abc"
    # GCM encrypts with AES-CTR from counter block IV || 2: check the ciphertext without AESGCM.
    ctr = Cipher(algorithms.AES(KEY), modes.CTR(IV + b"\x00\x00\x00\x02")).encryptor()
    assert ctr.update(b"abc") == expected[20:23]


def test_nonce_wraps_modulo_2_64_and_keeps_first_four_bytes() -> None:
    blob = seal(KEY, plaintext(2 * CHUNK_SIZE), iv=WRAP_IV)
    chunk1 = blob[20 + SEALED_CHUNK : 20 + 2 * SEALED_CHUNK]
    wrapped = bytes.fromhex("01020304") + bytes(8)
    assert AESGCM(KEY).decrypt(wrapped, chunk1, None) == plaintext(2 * CHUNK_SIZE)[CHUNK_SIZE:]


def test_random_ivs_differ() -> None:
    a, b = SealedWriter(KEY, lambda _: None), SealedWriter(KEY, lambda _: None)
    assert len(a.iv) == IV_SIZE
    assert a.iv != b.iv
    assert seal(KEY, b"same") != seal(KEY, b"same")


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_round_trip_every_way(n: int) -> None:
    data = plaintext(n)
    blob = seal(KEY, data)
    assert unseal(KEY, blob) == data
    assert decrypt_with_reader(KEY, blob) == data
    assert decrypt_with_stream(KEY, blob) == data
    assert decrypt_with_stream(KEY, blob, (HEADER_SIZE,)) == data
    assert decrypt_with_stream(KEY, blob, (SEALED_CHUNK,)) == data
    assert b"".join(SealedStreamReader(KEY, [blob])) == data
    reader = SealedReader(KEY, read_at_of(blob), len(blob))
    assert reader.plaintext_size == n
    assert reader.chunk_count == n // CHUNK_SIZE + 1
    assert reader.read(0, n) == data


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_writer_streams_in_pieces(n: int) -> None:
    data = plaintext(n)
    out: list[bytes] = []
    with SealedWriter(KEY, out.append, iv=IV) as writer:
        for piece in pieces_of(data, [1, 4096, 70000, 13]):
            writer.write(memoryview(piece))
    blob = b"".join(out)
    assert blob == reference_seal(KEY, IV, data)
    assert writer.plaintext_written == n
    assert writer.sealed_written == len(blob) == sealed_size(n)


@FAST
@given(
    n=st.integers(min_value=0, max_value=4 * CHUNK_SIZE + 100),
    write_sizes=st.lists(st.integers(min_value=1, max_value=3 * CHUNK_SIZE), min_size=1, max_size=8),
    read_sizes=st.lists(st.integers(min_value=1, max_value=3 * CHUNK_SIZE), min_size=1, max_size=8),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_round_trip_random_sizes_and_splits(n: int, write_sizes: list[int], read_sizes: list[int], seed: int) -> None:
    data = plaintext(n, seed)
    out: list[bytes] = []
    with SealedWriter(KEY, out.append) as writer:
        for piece in pieces_of(data, write_sizes):
            writer.write(piece)
    blob = b"".join(out)
    assert blob == reference_seal(KEY, writer.iv, data)
    assert unseal(KEY, blob) == data
    assert decrypt_with_reader(KEY, blob) == data
    assert b"".join(SealedStreamReader(KEY, pieces_of(blob, read_sizes))) == data


# --- writer behaviour --------------------------------------------------------------------------------


def test_writer_emits_each_chunk_as_soon_as_it_is_full() -> None:
    out: list[bytes] = []
    writer = SealedWriter(KEY, out.append, iv=IV)
    assert out == [PREAMBLE + b"\x02" + IV]  # the header goes out at once
    writer.write(bytes(CHUNK_SIZE - 1))
    assert len(out) == 1 and writer.sealed_written == HEADER_SIZE
    writer.write(b"\x00")
    assert [len(x) for x in out[1:]] == [SEALED_CHUNK]
    writer.write(bytes(3 * CHUNK_SIZE + 5))  # a large write is sealed straight away, not held
    assert [len(x) for x in out[1:]] == [SEALED_CHUNK] * 4
    assert writer.sealed_written == HEADER_SIZE + 4 * SEALED_CHUNK
    writer.close()
    assert len(out[-1]) == 5 + TAG_SIZE
    assert writer.plaintext_written == 4 * CHUNK_SIZE + 5
    writer.close()  # idempotent
    assert len(out) == 6


def test_writer_context_closes_only_on_success() -> None:
    out: list[bytes] = []
    with pytest.raises(RuntimeError), SealedWriter(KEY, out.append) as writer:
        writer.write(b"partial")
        raise RuntimeError("boom")
    assert out == [PREAMBLE + b"\x02" + writer.iv]  # no final chunk: the file cannot look complete


def test_writer_rejects_use_after_close_and_bad_arguments() -> None:
    writer = SealedWriter(KEY, lambda _: None)
    writer.close()
    with pytest.raises(ValueError):
        writer.write(b"x")
    with pytest.raises(ValueError):
        SealedWriter(KEY, lambda _: None, iv=b"short")
    with pytest.raises(EncryptionError):
        SealedWriter(bytes(16), lambda _: None)


def test_writer_refuses_use_after_a_sink_failure() -> None:
    calls: list[bytes] = []

    def flaky_sink(sealed: bytes) -> None:
        calls.append(sealed)
        if len(calls) == 2:
            raise OSError("disk full")

    writer = SealedWriter(KEY, flaky_sink, iv=IV)
    with pytest.raises(OSError):
        writer.write(bytes(CHUNK_SIZE))
    # Going on would either leave a hole in the file or seal new data under chunk 0's nonce again.
    with pytest.raises(ValueError):
        writer.write(b"more")
    with pytest.raises(ValueError):
        writer.close()
    assert len(calls) == 2


def test_writer_counts_bytes_of_non_byte_memoryviews() -> None:
    ints = array("i", range(50_000))
    out: list[bytes] = []
    with SealedWriter(KEY, out.append) as writer:
        writer.write(memoryview(ints))
    assert writer.plaintext_written == len(ints.tobytes())
    assert unseal(KEY, b"".join(out)) == ints.tobytes()


def test_writer_does_not_keep_a_reference_to_caller_buffers() -> None:
    buf = bytearray(b"a" * 1000)
    out: list[bytes] = []
    with SealedWriter(KEY, out.append) as writer:
        writer.write(memoryview(buf))
        buf[:] = b"b" * 1000  # the caller reuses its buffer before close
    assert unseal(KEY, b"".join(out)) == b"a" * 1000


# --- tampering ---------------------------------------------------------------------------------------


def test_every_bit_flip_of_a_small_file_is_rejected() -> None:
    blob = seal(KEY, plaintext(40), iv=IV)
    for byte in range(len(blob)):
        for bit in range(8):
            bad = bytearray(blob)
            bad[byte] ^= 1 << bit
            if byte < len(PREAMBLE):
                message = NOT_ENCRYPTED
            elif byte == len(PREAMBLE):
                message = f"unexpected encryption scheme/config version {bad[byte]}"
            else:  # IV bits change every nonce; body bits break the tag
                message = DECRYPT_FAILED
            assert_rejected(bytes(bad), message)


SMALL_MULTI = seal(KEY, plaintext(3 * CHUNK_SIZE + 1000), iv=IV)


@FAST
@given(st.data())
def test_bit_flips_in_a_multi_chunk_file_are_rejected(data: st.DataObject) -> None:
    blob = SMALL_MULTI
    position = data.draw(st.integers(min_value=len(PREAMBLE) + 1, max_value=len(blob) - 1))
    bad = bytearray(blob)
    bad[position] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    assert_rejected(bytes(bad))


def test_every_truncation_of_a_two_chunk_file_is_rejected() -> None:
    blob = seal(KEY, plaintext(CHUNK_SIZE + 100), iv=IV)
    boundary = HEADER_SIZE + SEALED_CHUNK

    def expected(length: int) -> str:
        return NOT_ENCRYPTED if length < 7 else INVALID_HEADER if length < HEADER_SIZE else DECRYPT_FAILED

    for length in range(len(blob)):
        with pytest.raises(EncryptionError) as caught:
            unseal(KEY, blob[:length])
        assert str(caught.value) == expected(length)
    # The other readers at the header, around the chunk boundary and at a stride (all lengths: ~4 s more).
    sample = {*range(0, 60), *range(boundary - 40, boundary + 40), *range(0, len(blob), 61), len(blob) - 1}
    for length in sorted(sample):
        for decrypt in (decrypt_with_reader, decrypt_with_stream):
            with pytest.raises(EncryptionError) as caught:
                decrypt(KEY, blob[:length])
            assert str(caught.value) == expected(length)


def chunks_of(blob: bytes) -> tuple[bytes, list[bytes]]:
    body = blob[HEADER_SIZE:]
    return blob[:HEADER_SIZE], [body[i : i + SEALED_CHUNK] for i in range(0, len(body), SEALED_CHUNK)]


def test_reordered_dropped_and_duplicated_chunks_are_rejected() -> None:
    header, chunks = chunks_of(SMALL_MULTI)
    assert [len(c) for c in chunks] == [SEALED_CHUNK] * 3 + [1000 + TAG_SIZE]
    c0, c1, c2, last = chunks
    for body in (
        [c1, c0, c2, last],  # swapped
        [c0, c2, c1, last],
        [c0, c1, last, c2],
        [c0, c2, last],  # dropped
        [c1, c2, last],
        [c0, c1, c2],  # final chunk dropped: cut exactly at a chunk boundary
        [c0, c0, c1, c2, last],  # duplicated
        [c0, c1, c2, last, last],
        [c0, c1, c2, c2, last],
    ):
        assert_rejected(header + b"".join(body))


def test_chunks_from_another_file_are_rejected() -> None:
    data = plaintext(3 * CHUNK_SIZE + 1000)
    other = seal(KEY, data, iv=WRAP_IV)  # same key and plaintext, different IV
    header, chunks = chunks_of(SMALL_MULTI)
    _, foreign = chunks_of(other)
    assert_rejected(header + b"".join([chunks[0], foreign[1], chunks[2], chunks[3]]))
    assert_rejected(chunks_of(other)[0] + b"".join(chunks))  # header swapped in


@pytest.mark.parametrize("garbage", [b"\x00", bytes(TAG_SIZE), bytes(SEALED_CHUNK), bytes(SEALED_CHUNK + TAG_SIZE)])
def test_trailing_garbage_is_rejected(garbage: bytes) -> None:
    assert_rejected(SMALL_MULTI + garbage)
    assert_rejected(seal(KEY, b"", iv=IV) + garbage)
    assert_rejected(seal(KEY, plaintext(CHUNK_SIZE), iv=IV) + garbage)


def test_appended_copy_of_a_valid_final_chunk_is_rejected() -> None:
    blob = seal(KEY, b"", iv=IV)  # header + empty final chunk (a bare tag)
    assert_rejected(blob + blob[HEADER_SIZE:])


@pytest.mark.parametrize("n", [0, 3, CHUNK_SIZE, 2 * CHUNK_SIZE + 1])
def test_wrong_key_message(n: int) -> None:
    assert_rejected(seal(KEY, plaintext(n)), DECRYPT_FAILED, key=OTHER_KEY)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", NOT_ENCRYPTED),
        (b"SQLite format 3\x00" + bytes(100), NOT_ENCRYPTED),
        (b"encrypt", INVALID_HEADER),
        (b"encrypt\x02" + bytes(11), INVALID_HEADER),
        (b"encrypt\x03" + bytes(12 + 16), "unexpected encryption scheme/config version 3"),
        (b"encrypt\x00" + bytes(12 + 16), "unexpected encryption scheme/config version 0"),
        (b"encrypt\xff" + bytes(12 + 16), "unexpected encryption scheme/config version 255"),
    ],
)
def test_header_errors(blob: bytes, message: str) -> None:
    assert_rejected(blob, message)


def test_reader_rejects_short_reads_from_storage() -> None:
    blob = seal(KEY, plaintext(2 * CHUNK_SIZE), iv=IV)
    reader = SealedReader(KEY, lambda o, n: blob[o : o + n][:-1] if o else blob[:n], len(blob))
    with pytest.raises(EncryptionError, match=DECRYPT_FAILED):
        reader.read_chunk(0)


def test_reader_rejects_bad_key_size() -> None:
    blob = seal(KEY, b"x")
    with pytest.raises(EncryptionError):
        SealedReader(KEY[:16], read_at_of(blob), len(blob))
    with pytest.raises(EncryptionError):
        SealedStreamReader(KEY[:16], [blob])


# --- version 1 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 3, CHUNK_SIZE + 7])
def test_v1_files_are_readable(n: int) -> None:
    data = plaintext(n)
    blob = reference_seal_v1(KEY, IV, data)
    assert unseal(KEY, blob) == data
    assert decrypt_with_stream(KEY, blob) == data
    reader = SealedReader(KEY, read_at_of(blob), len(blob))
    assert reader.plaintext_size == n
    assert reader.chunk_count == 1
    assert reader.read_chunk(0) == data
    if n:
        assert reader.read(1, n - 1) == data[1:]
    assert reader.read(n, 0) == b""


def test_v1_tampering_and_wrong_key_are_rejected() -> None:
    blob = reference_seal_v1(KEY, IV, b"version one")
    assert_rejected(blob, key=OTHER_KEY)
    for position in range(HEADER_SIZE - IV_SIZE, len(blob)):
        bad = bytearray(blob)
        bad[position] ^= 0x01
        assert_rejected(bytes(bad))
    for length in range(HEADER_SIZE, len(blob)):
        assert_rejected(blob[:length])
    assert_rejected(blob + b"\x00")


# --- random access -----------------------------------------------------------------------------------

RANDOM_ACCESS_DATA = plaintext(4 * CHUNK_SIZE + 777, seed=7)
RANDOM_ACCESS_BLOB = seal(KEY, RANDOM_ACCESS_DATA, iv=IV)
SHARED_READER = SealedReader(KEY, read_at_of(RANDOM_ACCESS_BLOB), len(RANDOM_ACCESS_BLOB))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_ranges_match_the_plaintext(data: st.DataObject) -> None:
    size = len(RANDOM_ACCESS_DATA)
    offset = data.draw(st.integers(min_value=0, max_value=size))
    length = data.draw(st.integers(min_value=0, max_value=size - offset))
    expected = RANDOM_ACCESS_DATA[offset : offset + length]
    assert SHARED_READER.read(offset, length) == expected  # with whatever chunk the last example cached
    fresh = SealedReader(KEY, read_at_of(RANDOM_ACCESS_BLOB), len(RANDOM_ACCESS_BLOB))
    assert fresh.read(offset, length) == expected


class CountingReadAt:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.blob[offset : offset + length]


def test_read_chunk_is_one_read_of_exactly_that_chunk() -> None:
    read_at = CountingReadAt(RANDOM_ACCESS_BLOB)
    reader = SealedReader(KEY, read_at, len(RANDOM_ACCESS_BLOB))
    assert read_at.calls == [(0, HEADER_SIZE)]
    read_at.calls.clear()
    assert reader.read_chunk(2) == RANDOM_ACCESS_DATA[2 * CHUNK_SIZE : 3 * CHUNK_SIZE]
    assert read_at.calls == [(HEADER_SIZE + 2 * SEALED_CHUNK, SEALED_CHUNK)]
    read_at.calls.clear()
    assert reader.read_chunk(4) == RANDOM_ACCESS_DATA[4 * CHUNK_SIZE :]
    assert read_at.calls == [(HEADER_SIZE + 4 * SEALED_CHUNK, 777 + TAG_SIZE)]


def test_sequential_small_reads_decrypt_each_chunk_once() -> None:
    read_at = CountingReadAt(RANDOM_ACCESS_BLOB)
    reader = SealedReader(KEY, read_at, len(RANDOM_ACCESS_BLOB))
    out = [reader.read(offset, 1000) for offset in range(0, 132_000, 1000)]
    assert b"".join(out) == RANDOM_ACCESS_DATA[:132_000]
    # The header, then chunks 0, 1 and 2 once each: a read spanning two chunks reuses the cached one.
    assert read_at.calls == [(0, HEADER_SIZE)] + [(HEADER_SIZE + i * SEALED_CHUNK, SEALED_CHUNK) for i in range(3)]


def test_iter_chunks_yields_the_chunks_in_order() -> None:
    reader = SealedReader(KEY, read_at_of(RANDOM_ACCESS_BLOB), len(RANDOM_ACCESS_BLOB))
    chunks = list(reader.iter_chunks())
    assert [len(c) for c in chunks] == [CHUNK_SIZE] * 4 + [777]
    assert b"".join(chunks) == RANDOM_ACCESS_DATA


def test_reads_out_of_range() -> None:
    size = SHARED_READER.plaintext_size
    assert SHARED_READER.read(size, 0) == b""
    with pytest.raises(IntegrityError):
        SHARED_READER.read(size - 10, 11)
    with pytest.raises(IntegrityError):
        SHARED_READER.read(size + 1, 0)
    with pytest.raises(ValueError):
        SHARED_READER.read(-1, 5)
    with pytest.raises(IndexError):
        SHARED_READER.read_chunk(SHARED_READER.chunk_count)
    with pytest.raises(IndexError):
        SHARED_READER.read_chunk(-1)


def test_random_access_does_not_hide_a_bad_final_chunk() -> None:
    bad = bytearray(RANDOM_ACCESS_BLOB)
    bad[-1] ^= 0x80
    reader = SealedReader(KEY, read_at_of(bytes(bad)), len(bad))
    assert reader.read(0, 100) == RANDOM_ACCESS_DATA[:100]  # untouched chunks still read
    with pytest.raises(EncryptionError, match=DECRYPT_FAILED):
        reader.read(reader.plaintext_size - 1, 1)
    with pytest.raises(EncryptionError, match=DECRYPT_FAILED):
        list(reader.iter_chunks())


@FAST
@given(offset=st.integers(min_value=0, max_value=4 * CHUNK_SIZE + 777), length=st.integers(0, 3 * CHUNK_SIZE))
def test_read_range_matches_read(offset: int, length: int) -> None:
    length = min(length, SHARED_READER.plaintext_size - offset)
    assert SHARED_READER.read_range(offset, length) == RANDOM_ACCESS_DATA[offset : offset + length]


def test_read_range_from_many_threads_at_once() -> None:
    from concurrent.futures import ThreadPoolExecutor

    reader = SealedReader(KEY, read_at_of(RANDOM_ACCESS_BLOB), len(RANDOM_ACCESS_BLOB))
    ranges = [(o, 70_000) for o in range(0, reader.plaintext_size - 70_000, 3001)] * 4
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda r: reader.read_range(*r), ranges))
    assert got == [RANDOM_ACCESS_DATA[o : o + n] for o, n in ranges]
    with pytest.raises(IntegrityError):
        reader.read_range(reader.plaintext_size - 10, 11)
    bad = bytearray(RANDOM_ACCESS_BLOB)
    bad[HEADER_SIZE + SEALED_CHUNK + 5] ^= 1
    tampered = SealedReader(KEY, read_at_of(bytes(bad)), len(bad))
    with pytest.raises(EncryptionError, match=DECRYPT_FAILED):
        tampered.read_range(CHUNK_SIZE - 10, 20)
