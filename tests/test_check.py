"""`strongroom check [--read-data]`: every chain, every file, every chunk; a problem named, exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner

from strongroom import Encryption, backup_file
from strongroom.backup import engine
from strongroom.cli import main

PASS = "correct horse battery"
ENV = {"STRONGROOM_PASSPHRASE": PASS}


def _collection(tmp_path: Path, fulls: int = 2) -> str:
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    coll = str(tmp_path / "coll")
    enc = Encryption(passphrase=PASS)
    for _ in range(fulls):
        with conn:
            conn.executemany("INSERT INTO t(v) VALUES (randomblob(3000))", [()] * 300)
        backup_file(db, coll, encryption=enc)
        conn.execute("UPDATE t SET v = randomblob(3000) WHERE id = 1")  # one chunk: the rest stay shared
        backup_file(db, coll, encryption=enc, incremental="LATEST")
    conn.close()
    return coll


def _check(coll: str, *args: str) -> tuple[int, list[dict[str, object]]]:
    out = CliRunner().invoke(main, ["check", coll, "--passphrase", "--format", "json", *args], env=ENV)
    return out.exit_code, json.loads(out.output) if out.output.startswith("[") else [{"output": out.output}]


def test_a_sound_collection(tmp_path: Path) -> None:
    coll = _collection(tmp_path)
    code, rows = _check(coll)
    assert code == 0 and [r["status"] for r in rows] == ["ok", "ok"] and all(r["layers"] == 2 for r in rows)
    assert all(r["chunks_read"] == 0 for r in rows)
    code, rows = _check(coll, "--read-data")
    assert code == 0 and [r["status"] for r in rows] == ["ok", "ok"]
    # each chunk once, though both layers' indexes name the unchanged ones
    reports = engine.check(coll, Encryption(passphrase=PASS), read_data=True)
    for r in reports:
        manifests = engine.show_backup(
            engine.ShowBackupRequest(in_=(coll,), subdir=r.path, encryption=Encryption(passphrase=PASS))
        ).manifests
        chunks = {(m.packs[rec.pack].path, rec.offset) for m in manifests for rec in _records(coll, m)}
        assert r.chunks_read == len(chunks)


def _records(coll: str, manifest: engine.Manifest) -> list[engine.ChunkRecord]:
    from strongroom.backup.keys import existing_backup_keys
    from strongroom.storage import open_storage

    storage = open_storage(coll)
    keys = existing_backup_keys(storage, manifest.full_subdir, Encryption(passphrase=PASS))
    index = engine.ChunkIndex(lambda _loc: storage, manifest.databases[0].index, keys)
    try:
        return list(index)
    finally:
        index.close()


def _flip_in_a_pack(coll: str, which: int) -> Path:
    packs = sorted(Path(coll).rglob("*.pack"))
    pack = packs[which]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    return pack


def test_a_flipped_bit_is_found_and_named(tmp_path: Path) -> None:
    coll = _collection(tmp_path)
    pack = _flip_in_a_pack(coll, 0)
    code, rows = _check(coll)
    assert code == 1
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(bad) == 1 and "does not match its SHA-256" in str(bad[0]["status"])
    assert pack.name in str(bad[0]["status"])
    assert [r["status"] for r in rows].count("ok") == 1  # the other chain is still checked


def test_read_data_finds_what_the_checksums_cannot(tmp_path: Path) -> None:
    """A pack changed and every manifest re-sealed to match (what a bug, or someone holding the key,
    could write): every file check passes; only decrypting the chunks finds it."""
    import hashlib

    from strongroom.backup import layout
    from strongroom.backup.keys import existing_backup_keys
    from strongroom.backup.manifest import read_manifest, write_manifest
    from strongroom.storage import open_storage

    coll = _collection(tmp_path, fulls=1)
    pack = _flip_in_a_pack(coll, 0)
    storage = open_storage(coll)
    [full] = engine.show_backups(coll)
    keys = existing_backup_keys(storage, full, Encryption(passphrase=PASS))
    [inc] = layout.list_incrementals(storage, full)
    for layer in (full.strip("/"), inc):
        manifest = read_manifest(storage, layer, keys)
        for ref in manifest.packs:
            if ref.path.endswith(pack.name) and str(pack).endswith(ref.path):
                ref.sha256 = hashlib.sha256(pack.read_bytes()).hexdigest()
        for name in (layout.MANIFEST, layout.MANIFEST + layout.CHECKSUM_SUFFIX):
            (Path(coll) / layer / name).unlink()
        write_manifest(storage, layer, manifest, keys)
        code, rows = _check(coll)
        if layer != inc:  # the incremental's manifest still records the pack as it was
            assert code == 1 and "record different contents" in str(rows[0]["status"]), rows
    assert code == 0, rows
    code, rows = _check(coll, "--read-data")
    assert code == 1 and "failed authentication" in str(rows[0]["status"]) and pack.name in str(rows[0]["status"])


def test_rollback_is_reported(tmp_path: Path) -> None:
    coll = _collection(tmp_path)
    latest = sorted((Path(coll) / "metadata" / "latest").iterdir())
    assert len(latest) == 2
    newest, older = latest[0], latest[1]  # LATEST-<descending hex>: the newest sorts first
    newest.write_bytes(older.read_bytes())  # an older LATEST copied over the newer one
    code, rows = _check(coll)
    assert code == 1 and any("rolled back" in str(r["status"]) or "older LATEST" in str(r["status"]) for r in rows)


def test_no_backups_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = CliRunner().invoke(main, ["check", str(tmp_path / "empty"), "--passphrase"], env=ENV)
    assert out.exit_code != 0


@pytest.mark.parametrize("flag", ["--read-data", None])
def test_wrong_passphrase_is_named_per_chain(tmp_path: Path, flag: str | None) -> None:
    coll = _collection(tmp_path, fulls=1)
    args = ["check", coll, "--passphrase", "--format", "json"] + ([flag] if flag else [])
    out = CliRunner().invoke(main, args, env={"STRONGROOM_PASSPHRASE": "not the passphrase"})
    assert out.exit_code == 1
    [row] = json.loads(out.output)
    assert "decrypt" in str(row["status"]).lower() or "passphrase" in str(row["status"]).lower()
