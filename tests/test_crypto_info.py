"""ENCRYPTION-INFO wire format, key derivation (PBKDF2, HKDF) and chunk hashing (BLAKE3)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.crypto import (
    PBKDF2_ITERATIONS,
    SALT_SIZE,
    ChunkHasher,
    EncryptionInfo,
    kms_identity,
    new_salt,
    passphrase_key,
    subkey,
)
from strongroom.errors import EncryptionError, IntegrityError, UsageError

NON_UTF8_KEY = bytes(range(0xE0, 0x100))  # 32 bytes, invalid as UTF-8 (like a raw SHA-256)


# --- ENCRYPTION-INFO ---------------------------------------------------------------------------------


def test_round_trip_with_non_utf8_map_keys() -> None:
    info = EncryptionInfo(
        salt=b"",
        encrypted_data_keys={NON_UTF8_KEY: b"wrapped-1", kms_identity("aws-kms:///alias/x"): b"\x00\xff"},
    )
    with pytest.raises(UnicodeDecodeError):
        NON_UTF8_KEY.decode("utf-8")
    assert EncryptionInfo.decode(info.encode()) == info


@pytest.mark.parametrize(
    "info",
    [
        EncryptionInfo(),
        EncryptionInfo(salt=bytes(range(16))),
        EncryptionInfo(encrypted_data_keys={b"": b""}),
        EncryptionInfo(salt=b"s", encrypted_data_keys={b"k": b"v"}),
    ],
)
def test_round_trip_examples(info: EncryptionInfo) -> None:
    assert EncryptionInfo.decode(info.encode()) == info


@settings(max_examples=100, deadline=None)
@given(salt=st.binary(max_size=40), keys=st.dictionaries(st.binary(max_size=40), st.binary(max_size=300), max_size=5))
def test_round_trip_random(salt: bytes, keys: dict[bytes, bytes]) -> None:
    info = EncryptionInfo(salt=salt, encrypted_data_keys=keys)
    encoded = info.encode()
    assert EncryptionInfo.decode(encoded) == info
    # The same content in any dict order encodes identically.
    assert EncryptionInfo(salt, dict(reversed(list(keys.items())))).encode() == encoded


def test_wire_bytes_by_hand() -> None:
    info = EncryptionInfo(salt=b"\x01\x02", encrypted_data_keys={b"\xff\xff": b"ab", b"\x00": b"c"})
    expected = bytes.fromhex(
        "12 02 0102"  # field 2 (salt), length-delimited, 2 bytes
        "1a 06 0a 01 00 12 01 63"  # field 3 entry (6 bytes): key (field 1) = 00, value (field 2) = "c"
        "1a 08 0a 02 ffff 12 02 6162"  # field 3 entry (8 bytes): key = ff ff, value = "ab"
    )
    assert info.encode() == expected  # entries sorted by key; scheme 0 not written


def test_passphrase_and_kms_shapes_by_hand() -> None:
    salt = bytes(range(16))
    assert EncryptionInfo(salt=salt).encode() == b"\x12\x10" + salt
    ident = kms_identity("projects/p/locations/l/keyRings/r/cryptoKeys/k")
    wrapped = bytes(100)
    entry = b"\x0a\x20" + ident + b"\x12\x64" + wrapped  # 2 + 32 + 2 + 100 = 136 bytes
    # 136 = 0b1_0001000: varint 0x88 0x01.
    assert EncryptionInfo(encrypted_data_keys={ident: wrapped}).encode() == b"\x1a\x88\x01" + entry


def test_decode_accepts_explicit_scheme_zero_and_unknown_fields() -> None:
    # What another encoder may write: scheme 0 spelled out, and a field this version does not know.
    data = b"\x08\x00" + b"\x12\x01s" + b"\x22\x03new" + b"\x1a\x06\x0a\x01k\x12\x01v"
    assert EncryptionInfo.decode(data) == EncryptionInfo(salt=b"s", encrypted_data_keys={b"k": b"v"})


def test_decode_repeated_map_key_keeps_the_last() -> None:
    data = b"\x1a\x06\x0a\x01k\x12\x01a" + b"\x1a\x06\x0a\x01k\x12\x01b"
    assert EncryptionInfo.decode(data).encrypted_data_keys == {b"k": b"b"}


def test_decode_rejects_unknown_scheme() -> None:
    with pytest.raises(EncryptionError, match="unsupported encryption scheme 1"):
        EncryptionInfo.decode(b"\x08\x01\x12\x01s")


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff",  # a tag varint that never ends
        b"\x12\x05ab",  # salt claims 5 bytes, has 2
        b"\x1a\x03\x0a\x05a",  # map entry's key overruns the entry
        b"\x0f",  # wire type 7 does not exist
        b"\x08",  # scheme with no value
        b"\x80",
    ],
)
def test_decode_garbage_is_an_integrity_error(garbage: bytes) -> None:
    with pytest.raises(IntegrityError) as caught:
        EncryptionInfo.decode(garbage)
    assert str(caught.value) == "malformed ENCRYPTION-INFO file"


def test_kms_identity_is_the_raw_sha256() -> None:
    ident = kms_identity("aws-kms:///arn:aws:kms:us-east-1:123:key/abc")
    assert ident == hashlib.sha256(b"aws-kms:///arn:aws:kms:us-east-1:123:key/abc").digest()
    assert len(ident) == 32
    assert kms_identity("alias/x") != kms_identity("alias/y")


# --- key derivation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", ["correct horse battery staple", "pässwörd ☃", "x"])
def test_passphrase_key_is_pbkdf2_sha256_64000(passphrase: str) -> None:
    salt = bytes(range(16))
    expected = hashlib.pbkdf2_hmac("sha256", passphrase.encode("utf-8"), salt, 64000, 32)
    assert PBKDF2_ITERATIONS == 64000
    assert passphrase_key(passphrase, salt) == expected


def test_passphrase_key_depends_on_salt() -> None:
    assert passphrase_key("p", bytes(16)) != passphrase_key("p", bytes(15) + b"\x01")


def test_empty_passphrase_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        passphrase_key("", bytes(16))
    assert str(caught.value) == "encryption_passphrase must not be empty"


def test_new_salt() -> None:
    a, b = new_salt(), new_salt()
    assert len(a) == SALT_SIZE == 16
    assert a != b


def test_subkey_is_hkdf_sha256_without_salt() -> None:
    key = bytes(range(32))
    # RFC 5869 by hand: no salt means a zero salt of hash length; one block of output suffices for 32 bytes.
    prk = hmac.new(bytes(32), key, hashlib.sha256).digest()
    okm = hmac.new(prk, b"strongroom/chunk-hash/v1" + b"\x01", hashlib.sha256).digest()
    assert subkey(key, "strongroom/chunk-hash/v1") == okm
    assert subkey(key, "another purpose") != okm
    assert len(okm) == 32


# --- chunk hashing -----------------------------------------------------------------------------------


def test_unkeyed_blake3_known_answer() -> None:
    # BLAKE3 of the empty input, from the BLAKE3 specification's test vectors.
    expected = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert ChunkHasher(None).digest(b"").hex() == expected


def test_keyed_and_unkeyed_digests() -> None:
    key = bytes(range(32))
    data = b"page" * 1000
    keyed = ChunkHasher(key).digest(data)
    assert keyed == blake3(data, key=key).digest()
    assert ChunkHasher(None).digest(data) == blake3(data).digest()
    assert keyed != ChunkHasher(None).digest(data)
    assert keyed != ChunkHasher(bytes(32)).digest(data)
    assert ChunkHasher(key).digest(memoryview(data)) == keyed
    assert len(keyed) == 32


def test_chunk_hasher_rejects_short_key() -> None:
    with pytest.raises(ValueError):
        ChunkHasher(bytes(16))
