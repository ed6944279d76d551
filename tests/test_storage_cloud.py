"""The cloud backends against real local servers (moto, Azurite, gcp-storage-emulator): the ExternalStorage contract,
create-only semantics, streaming multipart writes, errors and redaction."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import pytest

pytest.register_assert_rewrite("cloud_servers")

from cloud_servers import CloudTarget, free_port  # noqa: E402

# Imported explicitly so the schemes register (strongroom.storage does not import the cloud backends itself).
import strongroom.storage.azure  # noqa: E402
import strongroom.storage.gcs  # noqa: E402
import strongroom.storage.s3  # noqa: E402
from strongroom.errors import AlreadyExistsError, NotFoundError, StorageError, StrongroomError, UsageError  # noqa: E402
from strongroom.storage import ExternalStorage, open_storage  # noqa: E402

pytest_plugins = ("cloud_servers",)

BACKENDS = {"s3": "moto_s3", "azure": "azurite", "gs": "gcs_emulator"}
MiB = 1024 * 1024


@pytest.fixture(params=list(BACKENDS))
def cloud(request: pytest.FixtureRequest) -> CloudTarget:
    return request.getfixturevalue(BACKENDS[request.param])


@pytest.fixture
def storage(cloud: CloudTarget) -> Iterator[ExternalStorage]:
    """A fresh collection root (unique path) in the backend's bucket."""
    st = open_storage(cloud.uri(f"t/{uuid.uuid4().hex}"))
    yield st
    st.close()


def assert_no_secret(cloud: CloudTarget, exc: BaseException) -> None:
    for text in (str(exc), repr(exc)):
        assert cloud.secret not in text
        for value in cloud.params.values():
            if value in (cloud.secret, cloud.extra.get("encoded")):
                assert value not in text
    # A chained backend exception would carry its details into tracebacks and logs.
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_put_get_size_exists_delete(storage: ExternalStorage, cloud: CloudTarget) -> None:
    assert "redacted" in storage.display_uri and cloud.secret not in storage.display_uri
    assert cloud.secret not in repr(storage)
    storage.put("a/b.txt", b"hello")
    assert storage.get("a/b.txt") == b"hello"
    assert storage.size("a/b.txt") == 5 and storage.exists("a/b.txt")
    storage.put("a/b.txt", b"replaced")  # plain put replaces
    assert storage.get("a/b.txt") == b"replaced"
    storage.put("empty", b"")
    assert storage.get("empty") == b"" and storage.size("empty") == 0
    storage.delete("a/b.txt")
    assert not storage.exists("a/b.txt")
    storage.delete("a/b.txt")  # deleting a missing object is not an error


def test_create_only(storage: ExternalStorage, cloud: CloudTarget) -> None:
    storage.put("once", b"first", create_only=True)
    if cloud.scheme == "gs":
        # Emulator gap: gcp-storage-emulator ignores ifGenerationMatch=0, so the second create-only write is
        # accepted and replaces the object. We still send the precondition; real GCS answers 412, which
        # gcs.py maps to AlreadyExistsError. Assert what the emulator does, so a fixed emulator shows up here.
        storage.put("once", b"second", create_only=True)
        assert storage.get("once") == b"second"
        return
    with pytest.raises(AlreadyExistsError, match="once already exists"):
        storage.put("once", b"second", create_only=True)
    assert storage.get("once") == b"first"


def test_create_only_streaming_big(storage: ExternalStorage, cloud: CloudTarget) -> None:
    """Past one part, create-only uploads aside and copies into place only if the name is free."""
    piece = b"z" * MiB
    w = storage.writer("big", create_only=True)
    for _ in range(12):
        w.write(piece)
    w.commit()
    assert storage.size("big") == 12 * MiB
    if cloud.scheme == "gs":
        return  # the emulator does not enforce the precondition (see test_create_only)
    w = storage.writer("big", create_only=True)
    for _ in range(12):
        w.write(b"y" * MiB)
    with pytest.raises(AlreadyExistsError):
        w.commit()
    assert storage.get("big")[:3] == b"zzz"
    assert list(storage.list("")) == [("big", 12 * MiB)]  # no temporary object shown


def test_streaming_writer_multipart_and_abort(storage: ExternalStorage) -> None:
    digest = hashlib.sha256()
    w = storage.writer("data/pack-1", create_only=False)
    for i in range(20):
        piece = bytes([i]) * MiB
        digest.update(piece)
        w.write(memoryview(piece))
    assert not storage.exists("data/pack-1"), "visible before commit"
    w.commit()
    assert storage.size("data/pack-1") == 20 * MiB
    assert hashlib.sha256(storage.get("data/pack-1")).hexdigest() == digest.hexdigest()

    for create_only in (False, True):
        w = storage.writer("data/aborted", create_only=create_only)
        for _ in range(20):
            w.write(b"a" * MiB)
        w.abort()
        assert not storage.exists("data/aborted")
    w = storage.writer("data/small-aborted")
    w.write(b"x")
    w.abort()
    assert [name for name, _ in storage.list("data/")] == ["data/pack-1"]


def test_read_at(storage: ExternalStorage) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    storage.put("r", data)
    reader = storage.open_random("r")
    try:
        assert reader.size == len(data)
        for offset, length in [(0, 10), (1000, 4096), (len(data) - 5, 5), (len(data) - 5, 100), (12345, 300000)]:
            assert reader.read_at(offset, length) == data[offset : offset + length]
        assert reader.read_at(len(data), 10) == b""
        assert reader.read_at(10, 0) == b""
    finally:
        reader.close()


def test_list_prefix_sorted_with_sizes(storage: ExternalStorage) -> None:
    for name, size in [("b", 2), ("a/c/d", 4), ("a/bc", 3), ("ab", 5), ("a/b", 1), ("metadata/latest/LATEST-ff", 7)]:
        storage.put(name, b"x" * size)
    everything = [("a/b", 1), ("a/bc", 3), ("a/c/d", 4), ("ab", 5), ("b", 2), ("metadata/latest/LATEST-ff", 7)]
    assert list(storage.list()) == everything
    assert list(storage.list("")) == everything
    assert list(storage.list("a")) == everything[:4]
    assert list(storage.list("a/")) == everything[:3]
    assert list(storage.list("a/b")) == [("a/b", 1), ("a/bc", 3)]  # a string prefix, not a path segment
    assert list(storage.list("metadata/latest/LATEST-")) == [("metadata/latest/LATEST-ff", 7)]
    assert list(storage.list("zzz")) == []


def test_not_found(storage: ExternalStorage, cloud: CloudTarget) -> None:
    with pytest.raises(NotFoundError, match="missing does not exist"):
        storage.get("missing")
    with pytest.raises(NotFoundError):
        storage.size("missing")
    with pytest.raises(NotFoundError):
        storage.open_random("missing")
    assert not storage.exists("missing")
    with pytest.raises(UsageError):
        storage.get("../escape")


def _provoke(cloud: CloudTarget, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """URIs that fail at the server: (what, uri)."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a stopped server
    endpoint_param = {"s3": "AWS_ENDPOINT", "azure": "AZURE_ENDPOINT", "gs": "GCS_ENDPOINT"}[cloud.scheme]
    if cloud.scheme == "azure":
        dead += "/devstoreaccount1"
    monkeypatch.setattr(strongroom.storage.gcs, "RETRY_TIMEOUT", 1.0)  # keep the dead-server case quick
    cases = [
        ("unknown bucket", cloud.uri("x", bucket="no-such-bucket-zz")),
        ("server stopped", cloud.uri("x", **{endpoint_param: dead})),
    ]
    if cloud.scheme == "azure":
        cases.append(("wrong key", cloud.uri("x", AZURE_ACCOUNT_KEY="d3Jvbmcta2V5LXdyb25nLWtleQ==")))
    elif cloud.scheme == "gs":
        cases.append(("revoked key", cloud.uri("x", CREDENTIALS=str(cloud.extra["revoked"]))))
    # moto does not check S3 signatures, so there is no wrong-credentials case for s3.
    return cases


def test_errors_never_show_the_secret(cloud: CloudTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    for what, uri in _provoke(cloud, monkeypatch):
        st = open_storage(uri)
        for op in ("get", "put", "list", "size"):
            with pytest.raises(StrongroomError) as info:
                if op == "put":
                    st.put("obj", b"1")
                elif op == "list":
                    list(st.list(""))
                else:
                    getattr(st, op)("obj")
            assert_no_secret(cloud, info.value)
            if what == "server stopped":
                assert isinstance(info.value, StorageError)
                message = str(info.value)
                assert message.startswith(st.display_uri) and "redacted" in message and "cannot " in message
        st.close()


def test_unknown_parameter(cloud: CloudTarget) -> None:
    what = {"s3": "s3", "azure": "azure", "gs": "gs"}[cloud.scheme]
    with pytest.raises(UsageError, match=f"^unknown {what} query parameters: BOGUS, OTHER$"):
        open_storage(cloud.uri("x", BOGUS="1", OTHER="2"))


def test_specified_auth_needs_credentials(cloud: CloudTarget) -> None:
    if cloud.scheme == "s3":
        with pytest.raises(UsageError, match=r"^AUTH is set to 'specified', but AWS_ACCESS_KEY_ID is not set$"):
            open_storage(cloud.uri("x", AWS_ACCESS_KEY_ID=None))
        with pytest.raises(UsageError, match=r"^AUTH is set to 'specified', but AWS_SECRET_ACCESS_KEY is not set$"):
            open_storage(cloud.uri("x", AUTH="specified", AWS_SECRET_ACCESS_KEY=None))
    elif cloud.scheme == "gs":
        with pytest.raises(UsageError, match=r'^CREDENTIALS or BEARER_TOKEN must be set if "AUTH" is "specified"$'):
            open_storage(cloud.uri("x", CREDENTIALS=None))
        with pytest.raises(UsageError, match="decoding value of CREDENTIALS: not base64 of a credentials JSON") as info:
            open_storage(cloud.uri("x", CREDENTIALS="bm90IGpzb24gYXQgYWxs"))
        assert "bm90IGpzb24gYXQgYWxs" not in str(info.value)
    else:
        with pytest.raises(UsageError, match='azure uri missing "AZURE_ACCOUNT_KEY" parameter'):
            open_storage(cloud.uri("x", AZURE_ACCOUNT_KEY=None))
        with pytest.raises(UsageError, match='azure uri missing "AZURE_ACCOUNT_NAME" parameter'):
            open_storage(cloud.uri("x", AZURE_ACCOUNT_NAME=None))
    with pytest.raises(UsageError, match="unsupported value sometimes for AUTH"):
        open_storage(cloud.uri("x", AUTH="sometimes"))


def test_s3_assume_role(moto_s3: CloudTarget) -> None:
    """ASSUME_ROLE: the URI's keys get temporary credentials from STS (moto serves STS at the same endpoint)."""
    role = "arn:aws:iam::123456789012:role/strongroom-backup"
    st = open_storage(moto_s3.uri(f"t/{uuid.uuid4().hex}", ASSUME_ROLE=role))
    st.put("via-role", b"ok", create_only=True)
    assert st.get("via-role") == b"ok"
    assert "ASSUME_ROLE=arn" in st.display_uri and moto_s3.secret not in st.display_uri


def test_s3_implicit_auth_from_environment(moto_s3: CloudTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret)
    st = open_storage(moto_s3.uri("t/implicit", AUTH="implicit", AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None))
    st.put("x", b"1")
    assert st.get("x") == b"1"


def test_gs_assume_role_refused(gcs_emulator: CloudTarget) -> None:
    with pytest.raises(UsageError, match=r"^ASSUME_ROLE is not supported for Google Cloud in Strongroom yet$"):
        open_storage(gcs_emulator.uri("x", ASSUME_ROLE="backup@p.iam.gserviceaccount.com"))


def test_azure_schemes_and_unencoded_key(azurite: CloudTarget) -> None:
    """``azure-blob://`` is the same backend; a key pasted without URL-encoding still works."""
    path = f"t/{uuid.uuid4().hex}"
    st = open_storage(azurite.uri(path).replace("azure://", "azure-blob://", 1))
    st.put("k", b"v")
    # The URI builder URL-encodes values; this one carries the key ('/' and '=') exactly as the portal shows it.
    raw_key_uri = azurite.uri(path, AZURE_ACCOUNT_KEY=None) + f"&AZURE_ACCOUNT_KEY={azurite.secret}"
    assert open_storage(raw_key_uri).get("k") == b"v"
    with pytest.raises(UsageError, match="unknown AZURE_ENVIRONMENT"):
        open_storage(azurite.uri(path, AZURE_ENVIRONMENT="Mars"))
