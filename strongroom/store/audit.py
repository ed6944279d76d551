"""The CMEK audit log: one JSON line per use of a customer key (who, what, which key, when, result).

Cloud KMSs keep their own audit trail; this is the store's side of it, so a user can match each
KMS call to the store operation that made it. Lines are appended with ``O_APPEND`` and fsynced, so
concurrent processes interleave whole lines and a crash loses at most the line being written.
Key URIs are redacted; no key material is ever logged.
"""

from __future__ import annotations

import contextvars
import getpass
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..kms import KMS
from ..uri import redact

#: Who is acting: the OS user by default; the HTTP API sets ``api:<principal>`` per request.
_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("strongroom_actor", default=None)


def current_actor() -> str:
    actor = _ACTOR.get()
    if actor is not None:
        return actor
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    token = _ACTOR.set(actor)
    try:
        yield
    finally:
        _ACTOR.reset(token)


@dataclass(frozen=True)
class AuditRecord:
    time: str
    actor: str
    region: str
    operation: str  # encrypt | decrypt
    purpose: str  # why the store used the key: "open store", "rotate store key", "managed backup", ...
    key: str  # redacted key URI
    result: str  # "ok" or the error message


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: AuditRecord) -> None:
        line = (json.dumps(record.__dict__, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[AuditRecord]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(AuditRecord(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a torn last line after a crash
        return out


class AuditedKMS:
    """A KMS whose every encrypt/decrypt is written to the audit log, success or failure."""

    def __init__(self, kms: KMS, log: AuditLog, region: str, purpose: str) -> None:
        self._kms = kms
        self._log = log
        self.region = region
        self.purpose = purpose

    @property
    def uri(self) -> str:
        return self._kms.uri

    @property
    def master_key_id(self) -> str:
        return self._kms.master_key_id

    def _record(self, operation: str, result: str) -> None:
        self._log.append(
            AuditRecord(
                time=datetime.now(UTC).isoformat(timespec="milliseconds"),
                actor=current_actor(),
                region=self.region,
                operation=operation,
                purpose=self.purpose,
                key=redact(self._kms.uri),
                result=result,
            )
        )

    def _call(self, operation: str, call: Callable[[bytes], bytes], data: bytes) -> bytes:
        try:
            out = call(data)
        except Exception as exc:
            self._record(operation, f"error: {exc}")
            raise
        # A key the process's key cache already held: a use of the key, but no call to the KMS.
        self._record(operation, "ok (cached)" if getattr(self._kms, "last_from_cache", False) else "ok")
        return out

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._call("encrypt", self._kms.encrypt, plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        return self._call("decrypt", self._kms.decrypt, ciphertext)

    def close(self) -> None:
        self._kms.close()
