"""strongroom.postgres.streams without a server: delta chunks, their bases, chain bound, index format."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from strongroom.backup.data import PackTable, PackWriter, SealedObjectWriter
from strongroom.backup.keys import BackupKeys
from strongroom.backup.manifest import FileRef
from strongroom.errors import IntegrityError
from strongroom.postgres.streams import (
    CODEC_ZSTD_DELTA,
    MAX_DEPTH,
    PreviousStreams,
    StreamChunk,
    StreamReader,
    StreamWriter,
    read_index,
    verify_index,
)
from strongroom.storage.local import LocalStorage

KEYS = BackupKeys(bytes(range(32)))
PLAIN = BackupKeys(None)  # unencrypted: the index's bytes can be edited in place, as an attacker could


def rows(n: int, changed: set[int] | None = None, tag: str = "changed") -> bytes:
    """Something like a binary COPY: n rows of an id and two md5s; ``changed`` rows are shorter."""
    out = []
    for i in range(n):
        body = (
            f"{tag}-{i}".encode() if changed and i in changed else hashlib.md5(str(i).encode()).hexdigest().encode() * 2
        )
        out.append(struct.pack(">hI", 2, i) + struct.pack(">I", len(body)) + body)
    return b"".join(out)


@dataclass
class Layer:
    storage: LocalStorage
    keys: BackupKeys
    chunks: list[StreamChunk]
    packs: list[FileRef]
    index: FileRef
    stored: int
    deltas: int

    def reader(self) -> StreamReader:
        return StreamReader(lambda _loc: self.storage, self.keys, self.chunks)

    def read(self, number: int) -> bytes:
        r = self.reader()
        try:
            return b"".join(r.stream(number))
        finally:
            r.close()


def write_layer(
    root: Path,
    name: str,
    streams: dict[int, bytes],
    prev: Layer | None = None,
    *,
    names: dict[int, str] | None = None,
    prev_names: dict[int, str] | None = None,
    keys: BackupKeys = KEYS,
) -> Layer:
    """One layer's packs and stream index, as postgres.source writes them (an incremental onto ``prev``)."""
    storage = LocalStorage(root, f"file://{root}")
    table = PackTable()
    packs = PackWriter(storage, name, keys, table)
    previous = None
    if prev is not None:
        ids = {v: k for k, v in (prev_names or {}).items()} or {f"#{k}": k for k in streams}
        previous = PreviousStreams(prev.chunks, prev.reader(), ids)
    writer = StreamWriter(
        storage, f"{name}/data/pg-0000.idx", keys, packs, table, previous.known if previous else {}, bases=previous
    )
    for number, data in streams.items():
        blocks = [data[i : i + 7000] for i in range(0, len(data), 7000)]
        writer.write_stream(number, blocks, lambda _n: None, (names or {}).get(number))
    index = writer.finish()
    writer.close()
    packs.finish()
    pack_list = table.final()
    chunks = read_index(lambda _loc: storage, index, pack_list, keys)
    return Layer(storage, keys, chunks, pack_list, index, writer.stored_bytes, writer.deltas_written)


def test_scattered_changes_are_small_deltas_on_the_previous_layers_chunks(tmp_path: Path) -> None:
    n = 20_000
    full = write_layer(tmp_path, "full", {2: rows(n)})
    new = rows(n, set(range(0, n, 100)))  # 1% of the rows, scattered: every chunk changes
    inc = write_layer(tmp_path, "inc1", {2: new}, full)
    assert inc.read(2) == new
    deltas = [c for c in inc.chunks if c.codec == CODEC_ZSTD_DELTA]
    assert len(deltas) >= 0.9 * len(inc.chunks) and inc.deltas == len(deltas)
    assert inc.stored < 0.05 * full.stored, (inc.stored, full.stored)
    # Every base is the full's chunk, its pack in the incremental's own pack list (the manifest's:
    # what check verifies and what keeps prune from counting the pack unused).
    full_packs = {p.path for p in full.packs}
    assert all(d.base is not None and d.base.pack.path in full_packs for d in deltas)
    assert full_packs <= {p.path for p in inc.packs}
    # check --read-data decodes each chunk once, deltas through their bases.
    distinct = {(c.pack.path, c.offset) for c in inc.chunks}
    assert verify_index(lambda _loc: inc.storage, inc.index, inc.packs, KEYS, set()) == len(distinct)
    # Without the previous layer's bases, the same change stores (nearly) every chunk whole.
    alone = write_layer(tmp_path, "inc1-plain", {2: new}, replace(full, chunks=[]))
    assert alone.stored > 0.9 * full.stored


def test_a_delta_with_the_wrong_base_is_an_integrity_error(tmp_path: Path) -> None:
    n = 20_000
    full = write_layer(tmp_path, "full", {2: rows(n)}, keys=PLAIN)
    inc = write_layer(tmp_path, "inc1", {2: rows(n, set(range(0, n, 100)))}, full, keys=PLAIN)
    i, delta = next((i, c) for i, c in enumerate(inc.chunks) if c.codec == CODEC_ZSTD_DELTA)
    assert delta.base is not None
    other = next(c for c in full.chunks if c.digest != delta.base.digest and c.plain > 4096)
    swapped = list(inc.chunks)
    swapped[i] = replace(delta, base=other)
    reader = StreamReader(lambda _loc: inc.storage, PLAIN, swapped)
    with pytest.raises(IntegrityError, match=r"does not (match its hash|decompress)"):
        b"".join(reader.stream(2))
    reader.close()
    # The same through the stored index: its base field edited to name another record.
    path = tmp_path / inc.index.path
    raw = bytearray(path.read_bytes())
    at = 16 + i * 61 + 57  # header, records before it, the record's base field
    base_no = struct.unpack_from("<I", raw, at)[0]
    struct.pack_into("<I", raw, at, base_no + 1 if base_no + 1 < len(inc.chunks) else base_no - 1)
    path.write_bytes(bytes(raw))
    tampered = replace(inc, chunks=read_index(lambda _loc: inc.storage, inc.index, inc.packs, PLAIN))
    with pytest.raises(IntegrityError, match=r"does not (match its hash|decompress)"):
        tampered.read(2)
    with pytest.raises(IntegrityError, match=r"does not (match its hash|decompress)"):  # check --read-data
        verify_index(lambda _loc: inc.storage, inc.index, inc.packs, PLAIN, set())
    # A base that names itself (a loop) is refused when the index is read.
    struct.pack_into("<I", raw, at, i)
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="delta chain longer than"):
        read_index(lambda _loc: inc.storage, inc.index, inc.packs, PLAIN)


def test_an_index_with_a_chain_deeper_than_the_bound_is_refused(tmp_path: Path) -> None:
    n = 3000
    layer = write_layer(tmp_path, "full", {2: rows(n)}, keys=PLAIN)
    for k in range(1, MAX_DEPTH + 1):
        layer = write_layer(tmp_path, f"inc{k}", {2: rows(n, set(range(k, n, 50)), tag=f"v{k}")}, layer, keys=PLAIN)
    last = len(layer.chunks) - 1
    deep = next(i for i, c in enumerate(layer.chunks) if c.depth == MAX_DEPTH and i < last)
    # The last record edited into a delta on a chain MAX_DEPTH deep (read before it, from its own
    # record): 9 deep, more than any writer makes.
    path = tmp_path / layer.index.path
    raw = bytearray(path.read_bytes())
    raw[16 + last * 61 + 52] = CODEC_ZSTD_DELTA
    struct.pack_into("<I", raw, 16 + last * 61 + 57, deep)
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="delta chain longer than"):
        read_index(lambda _loc: layer.storage, layer.index, layer.packs, PLAIN)


def test_delta_chains_are_bounded(tmp_path: Path) -> None:
    n = 6000
    layer = full = write_layer(tmp_path, "full", {2: rows(n)})
    depths = []
    for k in range(1, MAX_DEPTH + 3):
        data = rows(n, set(range(k, n, 97)), tag=f"v{k}")
        layer = write_layer(tmp_path, f"inc{k:02d}", {2: data}, layer)
        assert layer.read(2) == data
        assert layer.stored < 0.1 * full.stored  # every chunk changed, every time
        depths.append(max(c.depth for c in layer.chunks))
    # Each incremental's chunk is a delta on the one before, until a chain reaches MAX_DEPTH: the
    # next is a delta on the chain's first chunk (the full's), so a restore never decodes more than
    # MAX_DEPTH + 1 chunks for one.
    assert depths == [*range(1, MAX_DEPTH + 1), 1, 2]
    roots = {c.digest for c in full.chunks}
    assert all(c.base is not None and c.base.digest in roots for c in layer.chunks if c.depth == 1 and c.base)


def test_bases_follow_the_table_when_stream_numbers_shift(tmp_path: Path) -> None:
    a, b = rows(8000), rows(8000, tag="b", changed=set(range(0, 8000, 2)))
    full = write_layer(tmp_path, "full", {2: a, 3: b}, names={2: '"public"."a"', 3: '"public"."b"'})
    # A table sorting first: a and b are streams 3 and 4 now; each changes 1% of its rows.
    new_a, new_b = rows(8000, set(range(0, 8000, 100))), rows(8000, tag="b", changed=set(range(1, 8000, 2)))
    inc = write_layer(
        tmp_path,
        "inc1",
        {2: b"new table", 3: new_a, 4: new_b},
        full,
        names={2: '"public"."0"', 3: '"public"."a"', 4: '"public"."b"'},
        prev_names={2: '"public"."a"', 3: '"public"."b"'},
    )
    assert (inc.read(3), inc.read(4)) == (new_a, new_b)
    was = {c.digest: c.stream for c in full.chunks}
    for now, before in ((3, 2), (4, 3)):
        deltas = [c for c in inc.chunks if c.stream == now and c.codec == CODEC_ZSTD_DELTA]
        assert deltas and all(c.base is not None and was[c.base.digest] == before for c in deltas)


def test_a_version_1_index_is_still_read(tmp_path: Path) -> None:
    data = rows(5000)
    layer = write_layer(tmp_path, "full", {2: data}, keys=PLAIN)
    out = SealedObjectWriter(layer.storage, "full/data/v1.idx", PLAIN)
    out.write(struct.pack("<8sI", b"SRPGSTR1", len(layer.chunks)))
    slots = {p.path: i for i, p in enumerate(layer.packs)}
    for c in layer.chunks:
        out.write(
            struct.pack("<I32sIQIBI", c.stream, c.digest, slots[c.pack.path], c.offset, c.length, c.codec, c.plain)
        )
    ref = out.finish()
    assert read_index(lambda _loc: layer.storage, ref, layer.packs, PLAIN) == layer.chunks
    assert replace(layer, chunks=read_index(lambda _loc: layer.storage, ref, layer.packs, PLAIN)).read(2) == data
