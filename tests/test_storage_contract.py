"""The storage contract: one suite every backend passes (local paths, nodelocal://, S3 on moto,
Azure Blob on Azurite, GCS on its emulator). A new backend is done when it passes this file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("cloud_servers")

from cloud_servers import CloudTarget  # noqa: E402

from strongroom.errors import AlreadyExistsError, NotFoundError, StorageError  # noqa: E402
from strongroom.storage import ExternalStorage, StorageContext, open_storage  # noqa: E402

pytest_plugins = ("cloud_servers",)

BACKENDS = ["path", "nodelocal", "s3", "azure", "gcs"]
BIG = 9 * 1024 * 1024 + 12345  # past one multipart part / resumable chunk


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, ExternalStorage, str]]:
    """(kind, storage at a fresh root, the secret its URI carries or '')."""
    root = f"contract-{uuid.uuid4().hex[:8]}"
    context = StorageContext(extern_dir=tmp_path / "extern")
    if request.param == "path":
        uri, secret = str(tmp_path / root), ""
    elif request.param == "nodelocal":
        uri, secret = f"nodelocal://1/{root}", ""
    else:
        target: CloudTarget = request.getfixturevalue(
            {"s3": "moto_s3", "azure": "azurite", "gcs": "gcs_emulator"}[request.param]
        )
        uri, secret = target.uri(root), target.secret
    storage = open_storage(uri, context)
    try:
        yield request.param, storage, secret
    finally:
        storage.close()


def test_put_get_exists_size(backend: tuple[str, ExternalStorage, str]) -> None:
    _, storage, _ = backend
    storage.put("a/b/one", b"hello")
    assert storage.get("a/b/one") == b"hello"
    assert storage.exists("a/b/one") and not storage.exists("a/b/two")
    assert storage.size("a/b/one") == 5


def test_put_create_only_refuses_a_second_create(backend: tuple[str, ExternalStorage, str]) -> None:
    kind, storage, _ = backend
    storage.put("once", b"first", create_only=True)
    if kind == "gcs":
        pytest.skip("gcp-storage-emulator ignores if_generation_match=0 (create-only is untestable locally)")
    with pytest.raises(AlreadyExistsError):
        storage.put("once", b"second", create_only=True)
    assert storage.get("once") == b"first"


def test_a_streamed_multi_mib_object_round_trips(backend: tuple[str, ExternalStorage, str]) -> None:
    _, storage, _ = backend
    data = os.urandom(BIG)
    with storage.writer("big/object", create_only=True) as w:
        for i in range(0, len(data), 1 << 20):
            w.write(memoryview(data)[i : i + (1 << 20)])
        w.commit()
    assert storage.size("big/object") == BIG
    assert storage.get("big/object") == data


def test_ranged_reads(backend: tuple[str, ExternalStorage, str]) -> None:
    _, storage, _ = backend
    data = bytes(range(256)) * 1000
    storage.put("ranged", data)
    reader = storage.open_random("ranged")
    try:
        assert reader.read_at(0, 10) == data[:10]
        assert reader.read_at(1000, 5000) == data[1000:6000]
        assert reader.read_at(len(data) - 7, 7) == data[-7:]
        assert reader.read_at(len(data) - 3, 100) == data[-3:]  # shorter only at the end
    finally:
        reader.close()


def test_list_with_prefix_is_sorted_and_recursive(backend: tuple[str, ExternalStorage, str]) -> None:
    _, storage, _ = backend
    for name in ("p/2", "p/1", "p/sub/3", "q/4"):
        storage.put(name, name.encode())
    assert list(storage.list("p/")) == [("p/1", 3), ("p/2", 3), ("p/sub/3", 7)]
    assert [n for n, _ in storage.list("q")] == ["q/4"]
    assert list(storage.list("nothing/")) == []


def test_delete_and_delete_of_a_missing_object(backend: tuple[str, ExternalStorage, str]) -> None:
    _, storage, _ = backend
    storage.put("gone", b"x")
    storage.delete("gone")
    assert not storage.exists("gone")
    storage.delete("gone")  # deleting what is not there is not an error (cleanup after a failure)


def test_a_missing_object_is_not_found_naming_the_location(backend: tuple[str, ExternalStorage, str]) -> None:
    _, storage, secret = backend
    for read in (lambda: storage.get("missing"), lambda: storage.size("missing"), lambda: storage.open_random("x")):
        with pytest.raises(NotFoundError) as exc:
            read()
        assert "missing" in str(exc.value) or "x" in str(exc.value)
        assert not secret or secret not in str(exc.value)


def test_wrong_credentials_give_a_clear_error_without_the_secret(
    backend: tuple[str, ExternalStorage, str], request: pytest.FixtureRequest
) -> None:
    kind, _storage, _ = backend
    if kind in ("path", "nodelocal"):
        pytest.skip("local storage has no credentials")
    if kind == "s3":
        pytest.skip("moto's S3 server does not check signatures")
    if kind == "gcs":
        pytest.skip("gcp-storage-emulator accepts any token")
    target: CloudTarget = request.getfixturevalue("azurite")
    wrong = "d3JvbmctYWNjb3VudC1rZXktZm9yLWNvbnRyYWN0LXRlc3Q="  # base64, but not the account's key
    storage = open_storage(target.uri(f"contract-{uuid.uuid4().hex[:8]}", AZURE_ACCOUNT_KEY=wrong))
    try:
        with pytest.raises(StorageError) as exc:
            storage.put("denied", b"x")
    finally:
        storage.close()
    assert wrong not in str(exc.value) and target.secret not in str(exc.value)
    assert "azure" in str(exc.value).lower()
