"""Storage over an obstore store (Rust ``object_store``): the :class:`ExternalStorage` that s3.py and azure.py build.

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
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..cloud.extras import import_extra
from ..errors import AlreadyExistsError, NotFoundError, StorageError
from .base import TMP_SUFFIX, WriterBase, clean_name
from .cloud import PART_SIZE, BackendErrorMap

if TYPE_CHECKING:  # obstore's config types exist only in its stubs
    from obstore.store import ClientConfig, RetryConfig

RETRY_CONFIG: RetryConfig = {
    "max_retries": 3,
    "backoff": {"init_backoff": dt.timedelta(milliseconds=100), "max_backoff": dt.timedelta(seconds=2), "base": 2},
    "retry_timeout": dt.timedelta(seconds=60),
}


def import_obstore(what: str) -> Any:
    """obstore comes with the [aws] and [azure] extras; the hint names the one for ``what`` (``s3://``...)."""
    return import_extra("obstore", "aws" if what.startswith("s3") else "azure", what)


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
        self._obs = import_obstore(display_uri.split(":", 1)[0] + "://")
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

    def remove_temp_files(self, prefix: str) -> int:
        """Delete the upload-aside temp objects (``*.strongroom-tmp``, never listed) under ``prefix``
        that interrupted writers left; only for a prefix no live writer uses. Returns how many went."""
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        removed = 0
        with self._errors("list", prefix):
            found = [
                meta["path"]
                for page in self._obs.list(self._store, directory or None)
                for meta in page
                if meta["path"].startswith(prefix) and meta["path"].endswith(TMP_SUFFIX)
            ]
        for key in found:
            self._delete_key(key)
            removed += 1
        return removed

    def close(self) -> None:
        pass


def client_options_for(endpoint: str | None) -> ClientConfig:
    # Plain HTTP only when the user named an http:// endpoint (a local test server), never by default.
    return {"allow_http": True} if endpoint and endpoint.lower().startswith("http://") else {}
