"""Errors a user sees. Every message is final text: no key, passphrase or credential in it.

Where CockroachDB has wording for the same situation we use it verbatim, so people who know
CockroachDB recognise the message (see ../shared/notes/cockroach-internals.md).

Messages are redacted by position where they are made (``uri.redact``); as a second line, every
secret value that enters the process through a URI or an option is registered here
(:func:`register_secret`) and removed by value from every message of every StrongroomError, however
it got there (a library's error text, a URL echoed by a server).
"""

from __future__ import annotations

import threading
from urllib.parse import quote, quote_plus

REDACTED = "redacted"
#: Shorter values are not scrubbed by value: the registry is process-wide, and a short value
#: ("complete", a test's "password") would blot the same word out of every later message.
#: Positional redaction still covers them; real keys and tokens are far longer.
MIN_SECRET_LENGTH = 12
_MAX_SECRETS = 4096  # a long-running server meets many; the oldest go first
_secrets: dict[str, None] = {}  # insertion-ordered set
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember ``value`` (a passphrase, key, token or password) so that no message shows it."""
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        for form in {value, quote(value, safe=""), quote_plus(value, safe="")}:
            _secrets.pop(form, None)
            _secrets[form] = None
        while len(_secrets) > _MAX_SECRETS:
            del _secrets[next(iter(_secrets))]


def forget_secret(value: str) -> None:
    """Stop removing ``value`` by value (a revoked or test credential)."""
    with _secrets_lock:
        for form in {value, quote(value, safe=""), quote_plus(value, safe="")}:
            _secrets.pop(form, None)


def clear_secrets() -> None:
    """Forget every registered secret (a test between cases; a server that reloads its keys)."""
    with _secrets_lock:
        _secrets.clear()


def registered_secrets() -> list[str]:
    """Every registered secret (and percent-encoded form), longest first."""
    with _secrets_lock:
        return sorted(_secrets, key=len, reverse=True)


def scrub(text: str) -> str:
    """``text`` with every registered secret (and its percent-encoded forms) replaced by ``redacted``."""
    for secret in registered_secrets():  # a secret containing another goes first
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class StrongroomError(Exception):
    """Base class: anything we raise on purpose for a user to read (its text is scrubbed)."""

    def __str__(self) -> str:
        return scrub(super().__str__())


class UsageError(StrongroomError):
    """Invalid options, URI or statement: the user must change what they asked for."""


class EncryptionError(StrongroomError):
    """Missing, wrong or unusable key material, or ciphertext that fails to authenticate."""


class IntegrityError(StrongroomError):
    """A backup file is missing, truncated, swapped, tampered with or otherwise not what the manifest says."""


class KMSError(StrongroomError):
    """A key management service refused, failed or could not be reached."""


class WrapOnlyError(KMSError):
    """A KMS given only public material (an age recipient, an asymmetric key's public half) was asked
    to unwrap: it can write backups, not read them."""


class StorageError(StrongroomError):
    """External storage failed; the message names the (redacted) location."""


class NotFoundError(StrongroomError):
    """A named object (file, backup, database, table, key) does not exist."""


class AlreadyExistsError(StrongroomError):
    """Refusing to overwrite something that exists."""


class ConflictError(StrongroomError):
    """Another operation on the same backups is under way (a forget trimming the chain a backup extends)."""


class JobCanceledError(StrongroomError):
    """A job stopped because CANCEL JOB, Ctrl-C or SIGTERM asked it to; its partial work is undone."""
