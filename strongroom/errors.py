"""Errors a user sees. Every message is final text: no key, passphrase or credential in it.

Where CockroachDB has wording for the same situation we use it verbatim, so people who know
CockroachDB recognise the message (see ../shared/notes/cockroach-internals.md).
"""

from __future__ import annotations


class StrongroomError(Exception):
    """Base class: anything we raise on purpose for a user to read."""


class UsageError(StrongroomError):
    """Invalid options, URI or statement: the user must change what they asked for."""


class EncryptionError(StrongroomError):
    """Missing, wrong or unusable key material, or ciphertext that fails to authenticate."""


class IntegrityError(StrongroomError):
    """A backup file is missing, truncated, swapped, tampered with or otherwise not what the manifest says."""


class KMSError(StrongroomError):
    """A key management service refused, failed or could not be reached."""


class StorageError(StrongroomError):
    """External storage failed; the message names the (redacted) location."""


class NotFoundError(StrongroomError):
    """A named object (file, backup, database, table, key) does not exist."""


class AlreadyExistsError(StrongroomError):
    """Refusing to overwrite something that exists."""
