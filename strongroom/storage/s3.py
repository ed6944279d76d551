"""Amazon S3 (and S3-compatible) storage: ``s3://<bucket>/<path>?AWS_ACCESS_KEY_ID=..&AWS_SECRET_ACCESS_KEY=..``.

Query parameters are CockroachDB's: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` (default ``us-east-1``), ``AWS_ENDPOINT`` (an S3-compatible server; plain ``http://`` is allowed only
when the endpoint says so), ``AWS_USE_PATH_STYLE`` (default: path-style with a custom endpoint, virtual-hosted on
AWS), ``AUTH=specified|implicit`` (default ``specified``: both keys must be in the URI; ``implicit`` resolves
credentials the way boto3 does: environment, shared config/profile, container or instance metadata) and
``ASSUME_ROLE=<role ARN>[,<role ARN>...]`` (the credentials above assume the role, or each role of a chain in turn,
through STS; with ``AWS_ENDPOINT`` the STS calls go to that endpoint too, which is what S3-compatible test servers
such as moto serve).

The object store client is obstore (Rust ``object_store``). This module also holds :class:`ObjectStoreStorage`, the
obstore-backed implementation of :class:`~strongroom.storage.base.ExternalStorage` that ``azure.py`` reuses.

Atomicity and write-once: a single PUT, or a multipart upload completed in one request, is atomic in S3 and Azure.
``create_only`` small objects use a conditional PUT (``If-None-Match: *``). A streamed object larger than one part
cannot be uploaded conditionally through obstore, so it is uploaded to a hidden temporary name and then copied into
place with copy-if-not-exists (S3: a multipart copy completed with ``If-None-Match``; Azure: a conditional copy), and
the temporary object deleted. If the process dies in between, the temporary object (suffix ``.strongroom-tmp``) is
left behind; listings never show it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import AlreadyExistsError, NotFoundError, StorageError, UsageError
from ..uri import parse_uri, redact
from .base import TMP_SUFFIX, StorageContext, WriterBase, clean_name, register_storage
from .cloud import PART_SIZE, BackendErrorMap, auth_mode, backend_detail, parse_bool

# Bounded retries for 5xx, dropped connections and timeouts: obstore's default (10 retries, up to 3 minutes) makes a
# dead endpoint look like a hang; a few quick retries ride out a blip and then we report the failure.
RETRY_CONFIG: dict[str, Any] = {
    "max_retries": 3,
    "backoff": {"init_backoff": dt.timedelta(milliseconds=100), "max_backoff": dt.timedelta(seconds=2), "base": 2},
    "retry_timeout": dt.timedelta(seconds=60),
}

S3_PARAMS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT",
    "AWS_USE_PATH_STYLE",
    "AUTH",
    "ASSUME_ROLE",
)


class _RangeReader:
    """Ranged GETs against one object; the size is fetched once with a HEAD."""

    def __init__(self, storage: ObjectStoreStorage, name: str) -> None:
        self._storage = storage
        self._name = name
        self.size = storage.size(name)

    def read_at(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        with self._storage._errors("read", self._name):
            st = self._storage
            return bytes(st._obs.get_range(st._store, st._key(self._name), start=offset, length=length))

    def close(self) -> None:
        pass


class _ObstoreWriter(WriterBase):
    """Buffers up to one part; a bigger object becomes a multipart upload (visible only once completed)."""

    def __init__(self, storage: ObjectStoreStorage, name: str, create_only: bool) -> None:
        self._storage = storage
        self._name = name
        self._key = storage._key(name)
        self._create_only = create_only
        self._buf = bytearray()
        self._file: Any = None  # obstore WritableFile once the object outgrows one part
        self._target = self._key
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        if self._done:
            raise StorageError(f"{self._storage.display_uri}: write to {self._name} after commit or abort")
        if self._file is None:
            self._buf += data
            if len(self._buf) <= PART_SIZE:
                return
            if self._create_only:
                # Multipart uploads cannot be conditional here: upload aside, then copy-if-not-exists.
                self._target = f"{self._key}.{uuid.uuid4().hex}{TMP_SUFFIX}"
            with self._storage._errors("write", self._name):
                self._file = self._storage._obs.open_writer(self._storage._store, self._target, buffer_size=PART_SIZE)
            data, self._buf = bytes(self._buf), bytearray()
        try:
            with self._storage._errors("write", self._name):
                self._file.write(data)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        if self._file is None:
            self._storage._put_key(self._key, self._name, bytes(self._buf), self._create_only)
            self._buf = bytearray()
            return
        try:
            with self._storage._errors("write", self._name):
                self._file.close()  # completes the multipart upload
        except BaseException:
            self._abort_file()
            raise
        if self._target != self._key:
            try:
                with self._storage._errors("write", self._name, create_only=True):
                    self._storage._obs.copy(self._storage._store, self._target, self._key, overwrite=False)
            finally:
                self._storage._delete_key(self._target)

    def _abort_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            # WritableFile.__exit__ with an exception aborts the multipart upload (no object appears); best effort,
            # since an unfinished upload is invisible anyway.
            with contextlib.suppress(Exception):
                file.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def abort(self) -> None:
        self._done = True
        self._buf = bytearray()
        self._abort_file()


class _ErrorMap(BackendErrorMap):
    """obstore's meanings: AlreadyExists/Precondition on a create-only write, FileNotFoundError for a missing key."""

    def translate(self, exc: Exception) -> None:
        from obstore.exceptions import AlreadyExistsError as ObsAlreadyExists
        from obstore.exceptions import PreconditionError as ObsPrecondition

        if self.create_only and isinstance(exc, ObsAlreadyExists | ObsPrecondition):
            raise AlreadyExistsError(f"{self.where}: {self.name} already exists") from None
        if isinstance(exc, FileNotFoundError):  # obstore's NotFoundError derives from it
            raise NotFoundError(f"{self.where}: {self.name} does not exist") from None


class ObjectStoreStorage:
    """An :class:`ExternalStorage` over an obstore store whose prefix is the collection root."""

    def __init__(self, store: Any, display_uri: str, secrets: Iterable[str] = ()) -> None:
        import obstore  # lazy: gcs.py shares this module's helpers and must not need obstore

        self._obs = obstore
        self._store = store
        self._display = display_uri
        self._secrets = tuple(s for s in secrets if s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._display!r})"

    @property
    def display_uri(self) -> str:
        return self._display

    def _errors(self, op: str, name: str, *, create_only: bool = False) -> _ErrorMap:
        return _ErrorMap(self.display_uri, self._secrets, op, name, create_only)

    @staticmethod
    def _key(name: str) -> str:
        return clean_name(name)

    def _put_key(self, key: str, name: str, data: bytes, create_only: bool) -> None:
        with self._errors("write", name, create_only=create_only):
            # A single PUT is atomic; mode='create' sends If-None-Match: * (S3) / If-None-Match on Azure.
            self._obs.put(self._store, key, data, mode="create" if create_only else "overwrite", use_multipart=False)

    def _delete_key(self, key: str) -> None:
        try:
            with self._errors("delete", key):
                self._obs.delete(self._store, key)
        except NotFoundError:
            pass

    def put(self, name: str, data: bytes, *, create_only: bool = False) -> None:
        with self.writer(name, create_only=create_only) as w:
            w.write(data)

    def writer(self, name: str, *, create_only: bool = False) -> _ObstoreWriter:
        return _ObstoreWriter(self, name, create_only)

    def get(self, name: str) -> bytes:
        with self._errors("read", name):
            return bytes(self._obs.get(self._store, self._key(name)).bytes())

    def open_random(self, name: str) -> _RangeReader:
        return _RangeReader(self, name)

    def size(self, name: str) -> int:
        with self._errors("stat", name):
            return int(self._obs.head(self._store, self._key(name))["size"])

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except NotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        # obstore lists by whole path segments ('a/b' never matches 'a/bc'), so list the prefix's directory and
        # filter by string prefix, as the interface (and local storage) define it.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        out: list[tuple[str, int]] = []
        with self._errors("list", prefix):
            for page in self._obs.list(self._store, directory or None):
                for meta in page:
                    path = meta["path"]
                    if path.startswith(prefix) and not path.endswith(TMP_SUFFIX):
                        out.append((path, int(meta["size"])))
        return iter(sorted(out))

    def delete(self, name: str) -> None:
        self._delete_key(self._key(name))

    def close(self) -> None:
        pass


def client_options_for(endpoint: str | None) -> dict[str, Any]:
    # Plain HTTP only when the user named an http:// endpoint (a local test server), never by default.
    return {"allow_http": True} if endpoint and endpoint.lower().startswith("http://") else {}


def _static_provider(key_id: str, secret: str, token: str | None) -> Callable[[], dict[str, Any]]:
    def provide() -> dict[str, Any]:
        return {"access_key_id": key_id, "secret_access_key": secret, "token": token, "expires_at": None}

    return provide


def _boto3() -> Any:
    try:
        import boto3  # lazy: only AUTH=implicit and ASSUME_ROLE need it
    except ImportError:
        raise UsageError("AUTH=implicit and ASSUME_ROLE on s3:// need boto3 (pip install 'strongroom[aws]')") from None
    return boto3


def _implicit_provider(region: str) -> Callable[[], dict[str, Any]]:
    """Credentials from boto3's default chain; boto3 refreshes them, obstore asks again every few minutes."""
    session = _boto3().Session(region_name=region)

    def provide() -> dict[str, Any]:
        creds = session.get_credentials()
        if creds is None:
            raise StorageError("AUTH=implicit: no AWS credentials found in the environment")
        frozen = creds.get_frozen_credentials()
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": expires,
        }

    return provide


def _assume_role_provider(
    base: Callable[[], dict[str, Any]], roles: list[str], region: str, endpoint: str | None, display: str
) -> Callable[[], dict[str, Any]]:
    """Temporary credentials from STS AssumeRole (each role of a chain assumed with the previous one's)."""
    boto3 = _boto3()

    def provide() -> dict[str, Any]:
        creds = base()
        expires = None
        for role in roles:
            sts = boto3.client(
                "sts",
                region_name=region,
                endpoint_url=endpoint,
                aws_access_key_id=creds["access_key_id"],
                aws_secret_access_key=creds["secret_access_key"],
                aws_session_token=creds.get("token"),
            )
            try:
                session_name = f"strongroom-{uuid.uuid4().hex[:12]}"
                got = sts.assume_role(RoleArn=role, RoleSessionName=session_name)["Credentials"]
            except Exception as exc:
                secrets = [creds["secret_access_key"], creds.get("token") or ""]
                raise StorageError(f"{display}: cannot assume role {role}: {backend_detail(exc, secrets)}") from None
            expires = got["Expiration"].astimezone(dt.UTC)  # obstore insists on datetime.UTC, boto3 gives tzutc()
            creds = {
                "access_key_id": got["AccessKeyId"],
                "secret_access_key": got["SecretAccessKey"],
                "token": got["SessionToken"],
            }
        # Ask again a few minutes before the session expires.
        creds["expires_at"] = expires - dt.timedelta(minutes=5) if expires else None
        return creds

    return provide


def open_s3(uri: str, context: StorageContext | None = None) -> ObjectStoreStorage:
    from obstore.store import S3Store  # lazy: keep import errors inside the scheme that needs it

    parsed = parse_uri(uri)
    parsed.check_params(S3_PARAMS, what="s3")
    params = parsed.params
    bucket = parsed.host
    if not bucket:
        raise UsageError(f"s3 URI must name a bucket, like s3://bucket/path (got {redact(uri)!r})")
    display = redact(uri)
    auth = auth_mode(params)
    region = params.get("AWS_REGION") or "us-east-1"
    endpoint = params.get("AWS_ENDPOINT") or None
    key_id = params.get("AWS_ACCESS_KEY_ID", "")
    secret = params.get("AWS_SECRET_ACCESS_KEY", "")
    token = params.get("AWS_SESSION_TOKEN") or None
    if auth == "specified":
        if not key_id:
            raise UsageError("AUTH is set to 'specified', but AWS_ACCESS_KEY_ID is not set")
        if not secret:
            raise UsageError("AUTH is set to 'specified', but AWS_SECRET_ACCESS_KEY is not set")
        provider = _static_provider(key_id, secret, token)
    else:
        provider = _implicit_provider(region)
    roles = [r.strip() for r in params.get("ASSUME_ROLE", "").split(",") if r.strip()]
    if roles:
        provider = _assume_role_provider(provider, roles, region, endpoint, display)
    path_style = (
        parse_bool(params["AWS_USE_PATH_STYLE"], "AWS_USE_PATH_STYLE")
        if "AWS_USE_PATH_STYLE" in params
        else endpoint is not None
    )
    config: dict[str, Any] = {
        "region": region,
        "virtual_hosted_style_request": not path_style,
        "copy_if_not_exists": "multipart",
        "conditional_put": "etag",
    }
    if endpoint:
        config["endpoint"] = endpoint
    prefix = parsed.path.strip("/") or None
    try:
        # The credential provider (rather than keys in the config) keeps obstore from mixing in AWS_* variables
        # from the environment when the URI says AUTH=specified.
        store = S3Store(
            bucket,
            prefix=prefix,
            config=config,
            client_options=client_options_for(endpoint),
            retry_config=RETRY_CONFIG,
            credential_provider=provider,
        )
    except Exception as exc:
        raise UsageError(f"invalid s3 location {display}: {backend_detail(exc, [secret, token or ''])}") from None
    return ObjectStoreStorage(store, display, secrets=[secret, token or ""])


register_storage("s3", open_s3)
