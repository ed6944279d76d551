"""What the cloud backends (s3.py, azure.py, gcs.py) share: part size, secret-safe error messages."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from ..cloud.scrub import scrub
from ..errors import AlreadyExistsError, NotFoundError, StorageError, UsageError

# A streamed object is uploaded in parts of this size once it outgrows one part (S3 needs parts >= 5 MiB).
PART_SIZE = 8 * 1024 * 1024
_MAX_DETAIL = 400


def backend_detail(exc: BaseException, secrets: Iterable[str]) -> str:
    """A one-line summary of a backend error: obstore appends the XML error body and pages of debug output."""
    full = str(exc)
    text = (
        full.split("\n", 1)[0].split("Debug source:", 1)[0].split("<?xml", 1)[0].strip().rstrip(":")
        or type(exc).__name__
    )
    # S3 and Azure put the useful part in the XML body: <Code>NoSuchBucket</Code><Message>...</Message>.
    code = re.search(r"<Code>([^<]{1,100})</Code>", full)
    message = re.search(r"<Message>([^<\n]{1,200})", full)
    if code:
        text += f" ({code.group(1)}{': ' + message.group(1).strip() if message else ''})"
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "..."
    return scrub(text, secrets)


def parse_bool(value: str, param: str) -> bool:
    low = value.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no", ""):
        return False
    raise UsageError(f"invalid value {value!r} for {param}: expected true or false")


class BackendErrorMap:
    """Context manager turning a backend's exceptions into ours, naming the redacted location, never a secret.

    Our own errors and non-``Exception`` exits pass through; :meth:`translate` raises the error a backend
    exception stands for ("already exists", "not found"), and anything else becomes a :class:`StorageError`.
    """

    def __init__(self, where: str, secrets: Iterable[str], op: str, name: str, create_only: bool) -> None:
        self.where = where
        self.secrets = tuple(secrets)
        self.op = op
        self.name = name
        self.create_only = create_only

    def translate(self, exc: Exception) -> None:
        """Raise our error for a backend exception with a known meaning; return for anything else."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None or not isinstance(exc, Exception):
            return False
        if isinstance(exc, StorageError | NotFoundError | AlreadyExistsError | UsageError):
            return False
        self.translate(exc)
        detail = backend_detail(exc, self.secrets)
        raise StorageError(f"{self.where}: cannot {self.op} {self.name or '(listing)'}: {detail}") from None
