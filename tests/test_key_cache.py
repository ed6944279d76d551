"""The process's key cache (kms/cache.py): off by default, on for serve; TTL, size, wiping, revocation,
the audit log and /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fill_bank
from fastapi.testclient import TestClient
from kms_servers import AwsKmsServer

from strongroom import Encryption, restore_file
from strongroom.kms import create_key, disable_key_cache, enable_key_cache, key_cache
from strongroom.kms.cache import KeyCache
from strongroom.server import create_app
from strongroom.store import Store

pytest_plugins = ("kms_servers",)
TOKEN = "key-cache-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_cache_left() -> Iterator[None]:
    disable_key_cache()
    yield
    disable_key_cache()  # process-wide: no other test may inherit one


def test_ttl_size_and_wiping() -> None:
    cache = KeyCache(ttl=0.2, max_entries=2)
    cache.put("k", b"a", b"key-a" * 6)
    cache.put("k", b"b", b"key-b" * 6)
    held = cache._entries[("k", b"a")][1]  # the bytes the cache holds for "a"
    assert cache.get("k", b"a") == b"key-a" * 6  # "a" is now the most recently used
    cache.put("k", b"c", b"key-c" * 6)  # full: the least recently used ("b") goes
    assert cache.get("k", b"b") is None and cache.get("k", b"a") is not None
    assert cache.get("other key", b"a") is None  # the key id is part of the entry
    deadline = time.monotonic() + 10
    while cache.get("k", b"a") is not None:  # expires after its ttl
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert held == bytearray(len(held))  # wiped when it left
    stats = cache.stats()
    assert stats.evictions >= 2 and stats.hits >= 2 and stats.misses >= 2
    cache.put("k", b"d", b"x" * 32)
    cache.clear()
    assert cache.stats().entries == 0
    with pytest.raises(ValueError):
        KeyCache(ttl=0)


def test_off_by_default_one_kms_call_per_restore_then_cached(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    import apsw

    from strongroom import backup_file

    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)")
    conn.close()
    key = aws_kms.create_key()
    enc = Encryption(kms=(aws_kms.uri(key.key_id),))
    coll = str(tmp_path / "coll")
    backup_file(db, coll, encryption=enc)
    aws_kms.calls.clear()
    for n in range(2):
        restore_file(coll, tmp_path / f"off{n}.db", encryption=enc)
    per_restore = aws_kms.calls["Decrypt"] // 2
    assert set(aws_kms.calls) == {"Decrypt"} and aws_kms.calls["Decrypt"] == 2 * per_restore >= 2  # each its own
    enable_key_cache(ttl=60)
    aws_kms.calls.clear()
    for n in range(3):
        restore_file(coll, tmp_path / f"on{n}.db", encryption=enc)
    assert aws_kms.calls == {"Decrypt": 1}  # then from the cache
    cache = key_cache()
    assert cache is not None and cache.stats().hits == 3 * per_restore - 1


def test_the_audit_log_and_metrics_tell_cached_uses_apart_and_revocation_clears_it(store: Store) -> None:
    create_key("cmek")
    store.enable_cmek({"local": "local:///cmek"})
    fill_bank(store, accounts=100)
    with TestClient(create_app(store.path, TOKEN, key_cache_ttl=60)) as client:
        assert key_cache() is not None  # create_app with a ttl turned it on, as serve does
        store.managed_backup(full=True)
        for name in ("copy1", "copy2"):
            store.restore_managed(databases=["bank"], new_db_name=name)
        results = [r.result for r in store.audit_records() if r.purpose == "restore managed backup"]
        assert results == ["ok", "ok (cached)"]
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert 'strongroom_kms_calls_total{operation="decrypt",region="local",result="cached"} 1.0' in text
        assert "strongroom_key_cache_hits_total 1.0" in text
        assert "strongroom_key_cache_entries" in text
        store.revoke_cmek()
        cache = key_cache()
        assert cache is not None and cache.stats().entries == 0
