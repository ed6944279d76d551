"""Google Cloud Storage: ``gs://<bucket>/<path>?AUTH=specified&CREDENTIALS=<base64 service-account JSON key>``.

Query parameters are CockroachDB's: ``AUTH=specified|implicit`` (default ``specified``), ``CREDENTIALS`` (the
service account's JSON key file, base64-encoded) or ``BEARER_TOKEN`` (an OAuth2 access token, used as is and never
refreshed). ``implicit`` uses Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's login,
the metadata server). Credentials are read by :mod:`strongroom.cloud.gcp`, exactly as the GCP KMS reads
them (``external_account`` key files and ``ASSUME_ROLE`` are refused).

Strongroom extension: ``GCS_ENDPOINT=<JSON API root URL>`` replaces ``https://storage.googleapis.com``, the way
``AWS_ENDPOINT`` does for S3 (tests use it to reach gcp-storage-emulator). Credentials are used exactly as with
real GCS, so the token exchange happens against the key's ``token_uri``.

The client is google-cloud-storage, not obstore: obstore's GCS client speaks the XML API, which the only local
emulator we can run (gcp-storage-emulator) does not implement. Writes are atomic: a single upload, or a resumable
upload that only becomes an object when its final chunk is sent. ``create_only`` passes ``if_generation_match=0``
(real GCS then refuses to replace an existing object with 412). An aborted streaming write cancels its resumable
session; nothing becomes visible either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..cloud.extras import import_extra
from ..cloud.gcp import AUTH_IMPLICIT, GcpAuth
from ..errors import AlreadyExistsError, NotFoundError, StorageError, UsageError
from ..uri import check_bucket_name, parse_uri, redact
from .base import TMP_SUFFIX, StorageContext, WriterBase, clean_name, register_storage
from .cloud import PART_SIZE, BackendErrorMap, backend_detail

GCS_PARAMS = ("AUTH", "CREDENTIALS", "BEARER_TOKEN", "ASSUME_ROLE", "GCS_ENDPOINT")
SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
# Retries (5xx, 429, connection errors) back off from 0.2 s up to 2 s between tries and give up after RETRY_TIMEOUT
# seconds in all; each request may take at most REQUEST_TIMEOUT (connect, read) seconds.
RETRY_TIMEOUT = 20.0
REQUEST_TIMEOUT = (10.0, 120.0)
# Resumable uploads send chunks of this size; GCS wants a multiple of 256 KiB.
CHUNK_SIZE = PART_SIZE
assert CHUNK_SIZE % (256 * 1024) == 0


def _credentials(params: dict[str, str]) -> tuple[Any, tuple[str, ...]]:
    """google-auth credentials for the URI (checked by :mod:`strongroom.cloud.gcp`), and its secrets."""
    auth = GcpAuth.from_params(params)
    try:
        return auth.credentials(SCOPES), auth.secrets
    except Exception as exc:
        if auth.auth == AUTH_IMPLICIT:
            raise StorageError(f"AUTH=implicit: no Google credentials found: {backend_detail(exc, [])}") from None
        raise UsageError(f"CREDENTIALS is not a usable key file: {backend_detail(exc, auth.secrets)}") from None


class _GCSReader:
    def __init__(self, storage: GCSStorage, name: str) -> None:
        self._storage = storage
        self._name = name
        self._blob = storage._bucket.blob(storage._key(name))
        self.size = storage.size(name)

    def read_at(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self.size:
            return b""
        end = min(offset + length, self.size) - 1  # the client's `end` is inclusive
        with self._storage._errors("read", self._name):
            return self._blob.download_as_bytes(
                start=offset, end=end, retry=self._storage._retry, timeout=REQUEST_TIMEOUT, checksum=None
            )

    def close(self) -> None:
        pass


class _GCSWriter(WriterBase):
    """Buffers up to one chunk; a bigger object becomes a resumable upload, finalized by ``commit``."""

    def __init__(self, storage: GCSStorage, name: str, create_only: bool) -> None:
        self._storage = storage
        self._name = name
        self._create_only = create_only
        self._buf = bytearray()
        self._file: Any = None  # google.cloud.storage.fileio.BlobWriter once past one chunk
        self._done = False

    def _precondition(self) -> dict[str, Any]:
        return {"if_generation_match": 0} if self._create_only else {}

    def write(self, data: bytes | memoryview) -> None:
        if self._done:
            raise StorageError(f"{self._storage.display_uri}: write to {self._name} after commit or abort")
        if self._file is None:
            self._buf += data
            if len(self._buf) <= CHUNK_SIZE:
                return
            blob = self._storage._blob(self._name)
            self._file = blob.open(
                "wb", chunk_size=CHUNK_SIZE, ignore_flush=True, retry=self._storage._retry, **self._precondition()
            )
            data, self._buf = bytes(self._buf), bytearray()
        try:
            with self._storage._errors("write", self._name, create_only=self._create_only):
                self._file.write(data)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        with self._storage._errors("write", self._name, create_only=self._create_only):
            if self._file is None:
                self._storage._blob(self._name).upload_from_string(
                    bytes(self._buf), retry=self._storage._retry, timeout=REQUEST_TIMEOUT, **self._precondition()
                )
                self._buf = bytearray()
            else:
                file, self._file = self._file, None
                try:
                    file.close()  # sends the final chunk: only now does the object exist
                except BaseException:
                    self._cancel(file)
                    raise

    @staticmethod
    def _cancel(file: Any) -> None:
        with contextlib.suppress(Exception):  # best effort: an unfinished session is never visible
            file.terminate()  # cancels the resumable session
        # BlobWriter is an io object: if its buffer were still open, garbage collection would call close() and
        # finalize a partial object. terminate() closes it only when the cancel request succeeded.
        buffer = getattr(file, "_buffer", None)
        if buffer is not None and not buffer.closed:
            buffer.close()

    def abort(self) -> None:
        self._done = True
        self._buf = bytearray()
        file, self._file = self._file, None
        if file is not None:
            self._cancel(file)


class _ErrorMap(BackendErrorMap):
    """google-api-core's meanings: PreconditionFailed on a create-only write, NotFound for a missing object."""

    def __init__(self, storage: GCSStorage, op: str, name: str, create_only: bool) -> None:
        super().__init__(storage.display_uri, storage._secrets, op, name, create_only)
        self._bucket = storage._bucket.name

    def translate(self, exc: Exception) -> None:
        from google.api_core import exceptions as gexc

        if self.create_only and isinstance(exc, gexc.PreconditionFailed):
            raise AlreadyExistsError(f"{self.where}: {self.name} already exists") from None
        if isinstance(exc, gexc.NotFound):
            if self.op == "list":  # listing a prefix never 404s unless the bucket itself is missing
                raise NotFoundError(f"{self.where}: bucket {self._bucket} does not exist") from None
            raise NotFoundError(f"{self.where}: {self.name} does not exist") from None


class GCSStorage:
    """Objects under ``<prefix>/`` in one bucket, through the GCS JSON API."""

    def __init__(self, client: Any, bucket: str, prefix: str, display_uri: str, secrets: Sequence[str]) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY  # type: ignore[import-untyped]  # no types shipped

        self._client = client
        self._bucket = client.bucket(bucket)
        self._prefix = prefix
        self._display = display_uri
        self._secrets = tuple(s for s in secrets if s)
        self._retry = DEFAULT_RETRY.with_delay(initial=0.2, maximum=2.0, multiplier=2.0).with_timeout(RETRY_TIMEOUT)

    def __repr__(self) -> str:
        return f"GCSStorage({self._display!r})"

    @property
    def display_uri(self) -> str:
        return self._display

    def _errors(self, op: str, name: str, *, create_only: bool = False) -> _ErrorMap:
        return _ErrorMap(self, op, name, create_only)

    def _key(self, name: str) -> str:
        name = clean_name(name)
        return f"{self._prefix}/{name}" if self._prefix else name

    def _blob(self, name: str) -> Any:
        return self._bucket.blob(self._key(name))

    def put(self, name: str, data: bytes, *, create_only: bool = False) -> None:
        with self.writer(name, create_only=create_only) as w:
            w.write(data)

    def writer(self, name: str, *, create_only: bool = False) -> _GCSWriter:
        self._key(name)  # refuse bad names before any upload starts
        return _GCSWriter(self, name, create_only)

    def get(self, name: str) -> bytes:
        with self._errors("read", name):
            return self._blob(name).download_as_bytes(retry=self._retry, timeout=REQUEST_TIMEOUT)

    def open_random(self, name: str) -> _GCSReader:
        return _GCSReader(self, name)

    def size(self, name: str) -> int:
        with self._errors("stat", name):
            blob = self._bucket.get_blob(self._key(name), retry=self._retry, timeout=REQUEST_TIMEOUT)
        if blob is None:
            raise NotFoundError(f"{self._display}: {name} does not exist")
        return int(blob.size or 0)

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except NotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        base = f"{self._prefix}/" if self._prefix else ""
        out: list[tuple[str, int]] = []
        with self._errors("list", prefix):
            for blob in self._client.list_blobs(
                self._bucket, prefix=base + prefix, retry=self._retry, timeout=REQUEST_TIMEOUT
            ):
                name = blob.name[len(base) :]
                if name and not name.endswith(TMP_SUFFIX):
                    out.append((name, int(blob.size or 0)))
        return iter(sorted(out))

    def delete(self, name: str) -> None:
        try:
            with self._errors("delete", name):
                self._blob(name).delete(retry=self._retry, timeout=REQUEST_TIMEOUT)
        except NotFoundError:
            pass

    def close(self) -> None:
        self._client.close()


def open_gcs(uri: str, context: StorageContext | None = None) -> GCSStorage:
    storage = import_extra("google.cloud.storage", "gcp", "gs://")

    parsed = parse_uri(uri)
    parsed.check_params(GCS_PARAMS, what="gs")
    params = parsed.params
    display = redact(uri)
    if not parsed.host:
        raise UsageError(f"gs URI must name a bucket, like gs://bucket/path (got {display!r})")
    check_bucket_name(parsed.host, uri)
    creds, secrets = _credentials(params)
    options = {"api_endpoint": params["GCS_ENDPOINT"].rstrip("/")} if params.get("GCS_ENDPOINT") else None
    # project=None: we only use bucket-level calls, and it stops the client probing the environment for a project.
    client = storage.Client(project=None, credentials=creds, client_options=options)
    return GCSStorage(client, parsed.host, parsed.path.strip("/"), display, secrets)


register_storage("gs", open_gcs)
