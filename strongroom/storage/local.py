"""Storage in a local directory: ``nodelocal://<node>/<path>`` and plain ``file:///<abs path>``.

``nodelocal://1/backups`` is CockroachDB's node-local external-io directory; here it maps to
``<store>/extern/backups``. Plain absolute paths (``/srv/backups`` or ``file:///srv/backups``) need
no store. We use the OS directly rather than obstore's LocalStore because durability matters: a
backup's LATEST marker may only move once every file is fsynced, and each object is written to a
temp file, fsynced, then linked into place (create-only) or renamed (replace), with the directory
fsynced after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from ..errors import AlreadyExistsError, NotFoundError, StorageError, UsageError
from ..uri import parse_uri, redact
from .base import TMP_SUFFIX, StorageContext, WriterBase, clean_name, register_storage


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileWriter(WriterBase):
    def __init__(self, storage: LocalStorage, name: str, create_only: bool) -> None:
        self._storage = storage
        self._final = storage._path(name)
        self._name = name
        self._create_only = create_only
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self._final.with_name(f".{self._final.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed in commit/abort)
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> StorageError:
        """``no space left on device while writing <name>``: the file system's words, and which file."""
        what = (exc.strerror or str(exc)).lower()
        return StorageError(f"{self._storage.display_uri}: {what} while writing {self._name}")

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self._create_only:
                try:
                    os.link(self._tmp, self._final)
                except FileExistsError:
                    raise AlreadyExistsError(f"{self._storage.display_uri}: {self._name} already exists") from None
                finally:
                    self._tmp.unlink(missing_ok=True)
            else:
                os.replace(self._tmp, self._final)
            _fsync_dir(self._final.parent)
        except BaseException as exc:
            with suppress(OSError):  # cleanup must never replace the error that got us here
                self._file.close()
                self._tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
                raise self._failed(exc) from None
            raise

    def abort(self) -> None:
        if not self._done:
            self._done = True
            # Closing flushes what is buffered, which fails again on a full disk: the temp file goes
            # all the same, and the error that made us abort is the one the user sees.
            with suppress(OSError):
                self._file.close()
            with suppress(OSError):
                self._tmp.unlink(missing_ok=True)


class _FileReader:
    def __init__(self, path: Path, name: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFoundError(f"{name}: file does not exist") from None
        self.size = os.fstat(self._fd).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalStorage:
    """A directory tree holding the objects as files."""

    def __init__(self, root: Path, display_uri: str) -> None:
        self.root = root
        self._display = display_uri

    @property
    def display_uri(self) -> str:
        return self._display

    def _path(self, name: str) -> Path:
        return self.root / clean_name(name)

    def put(self, name: str, data: bytes, *, create_only: bool = False) -> None:
        with self.writer(name, create_only=create_only) as w:
            w.write(data)

    def writer(self, name: str, *, create_only: bool = False) -> _FileWriter:
        try:
            return _FileWriter(self, name, create_only)
        except OSError as exc:
            raise StorageError(f"{self._display}: cannot write {name}: {exc.strerror}") from None

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self._display}: {name} does not exist") from None
        except IsADirectoryError:
            raise NotFoundError(f"{self._display}: {name} is a directory") from None

    def open_random(self, name: str) -> _FileReader:
        return _FileReader(self._path(name), f"{self._display}: {name}")

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"{self._display}: {name} does not exist") from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        if not self.root.is_dir():
            return iter(())
        out: list[tuple[str, int]] = []
        base = len(str(self.root)) + 1
        for dirpath, _dirs, files in os.walk(self.root):
            for fname in files:
                if fname.endswith(TMP_SUFFIX):
                    continue
                full = os.path.join(dirpath, fname)
                rel = full[base:].replace(os.sep, "/")
                if rel.startswith(prefix):
                    try:
                        out.append((rel, os.stat(full).st_size))
                    except FileNotFoundError:
                        continue
        return iter(sorted(out))

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def remove_temp_files(self, prefix: str) -> int:
        """Remove the temp files that killed writers left under ``prefix`` (listings never show them);
        only for a prefix no live writer uses. Returns how many went."""
        removed = 0
        for path in (self.root / clean_name(prefix)).rglob(f"*{TMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def close(self) -> None:
        pass


def _open_nodelocal(uri: str, context: StorageContext) -> LocalStorage:
    parsed = parse_uri(uri)
    parsed.check_params((), what="nodelocal")
    if not parsed.host:
        raise UsageError(f"nodelocal URI must name a node, like nodelocal://1/backups (got {redact(uri)!r})")
    if "@" in parsed.host:
        raise UsageError(f"nodelocal URIs take no user or password (got {redact(uri)!r})")
    if context.extern_dir is None:
        raise UsageError(
            "nodelocal:// paths live in a store's extern directory: open a store (--store DIR) "
            "or use a plain absolute path such as /srv/backups"
        )
    path = parsed.path.strip("/")
    root = context.extern_dir / clean_name(path) if path else context.extern_dir
    return LocalStorage(root, redact(uri))


def _open_file(uri: str, context: StorageContext) -> LocalStorage:
    parsed = parse_uri(uri)
    parsed.check_params((), what="file")
    if parsed.host not in ("", "localhost"):
        raise UsageError(f"file URIs must be absolute paths like file:///srv/backups (got {redact(uri)!r})")
    if not parsed.path.startswith("/"):
        raise UsageError(f"file URIs must be absolute paths (got {redact(uri)!r})")
    return LocalStorage(Path(parsed.path), redact(uri))


register_storage("nodelocal", _open_nodelocal)
register_storage("file", _open_file)
