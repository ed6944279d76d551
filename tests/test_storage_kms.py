"""Storage and KMS registries and their local implementations, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strongroom.errors import AlreadyExistsError, KMSError, NotFoundError, UsageError
from strongroom.kms import create_key, open_kms
from strongroom.storage import StorageContext, open_storage
from strongroom.uri import redact


def test_local_storage_atomic_create_only_and_listing(tmp_path: Path) -> None:
    s = open_storage(str(tmp_path / "c"))
    s.put("a/b/one", b"1", create_only=True)
    with pytest.raises(AlreadyExistsError):
        s.put("a/b/one", b"2", create_only=True)
    assert s.get("a/b/one") == b"1"
    s.put("a/b/one", b"3")  # replace is allowed where not create-only
    assert s.get("a/b/one") == b"3"
    w = s.writer("a/two")
    w.write(b"partial")
    assert not s.exists("a/two")  # nothing visible before commit
    assert list(s.list()) == [("a/b/one", 1)]  # temp files are never listed
    w.abort()
    assert not any(p.name.endswith(".strongroom-tmp") for p in (tmp_path / "c").rglob("*"))
    r = s.open_random("a/b/one")
    assert (r.size, r.read_at(0, 1)) == (1, b"3")
    r.close()
    with pytest.raises(NotFoundError):
        s.get("nope")


def test_names_cannot_escape_the_root(tmp_path: Path) -> None:
    s = open_storage(str(tmp_path / "c"))
    for bad in ("../x", "a/../../x", "/", ".."):
        with pytest.raises(UsageError):
            s.put(bad, b"x")
    assert not (tmp_path / "x").exists()


def test_nodelocal_maps_into_the_store_extern_dir(tmp_path: Path) -> None:
    ctx = StorageContext(extern_dir=tmp_path / "extern")
    open_storage("nodelocal://1/backups/x", ctx).put("f", b"1")
    assert (tmp_path / "extern" / "backups" / "x" / "f").read_bytes() == b"1"
    with pytest.raises(UsageError, match="nodelocal:// paths live in a store's extern directory"):
        open_storage("nodelocal://1/backups")
    with pytest.raises(UsageError, match='unsupported storage scheme "gopher"'):
        open_storage("gopher://x/y", ctx)


def test_local_kms_round_trip_binding_and_errors(tmp_path: Path) -> None:
    create_key("a", tmp_path)
    create_key("b", tmp_path)
    a = open_kms(f"local:///a?KEYRING={tmp_path}")
    b = open_kms(f"local:///b?KEYRING={tmp_path}")
    assert a.master_key_id == "a"
    blob = a.encrypt(b"k" * 32)
    assert a.decrypt(blob) == b"k" * 32
    with pytest.raises(KMSError, match='local KMS "b": failed to decrypt data key'):
        b.decrypt(blob)
    (tmp_path / "b.key").write_bytes((tmp_path / "a.key").read_bytes())  # same key bytes, other identity
    with pytest.raises(KMSError):
        open_kms(f"local:///b?KEYRING={tmp_path}").decrypt(blob)
    assert os.stat(tmp_path / "a.key").st_mode & 0o777 == 0o600
    with pytest.raises(UsageError, match="invalid local key name"):
        create_key("../evil", tmp_path)


def test_redaction_of_every_secret_parameter() -> None:
    uri = (
        "s3://bucket/path?AWS_ACCESS_KEY_ID=AKID&AWS_SECRET_ACCESS_KEY=abc%2Bdef&AWS_SESSION_TOKEN=tok"
        "&CREDENTIALS=Y3JlZHM=&AZURE_ACCOUNT_KEY=azk&AZURE_CLIENT_SECRET=cs&BEARER_TOKEN=bt&REGION=us-east-1"
        "&VAULT_TOKEN=hvs.vt&VAULT_SECRET_ID=vsid&VAULT_ROLE_ID=role-1"
    )
    shown = redact(uri)
    assert "VAULT_ROLE_ID=role-1" in shown  # AppRole's role id names the role, like an access key id
    for secret in ("abc", "tok", "Y3JlZHM", "azk", "=cs", "=bt", "hvs.vt", "vsid"):
        assert secret not in shown
    assert "AWS_ACCESS_KEY_ID=AKID" in shown and "REGION=us-east-1" in shown
    assert redact("https://user:pw@host/x") == "https://user:redacted@host/x"
