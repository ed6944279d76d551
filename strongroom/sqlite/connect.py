"""Opening SQLite files with apsw, optionally keyed through SQLite3 Multiple Ciphers (sqlite3mc).

Keys are raw bytes (``PRAGMA key="x'<hex>'"``): with the ciphers that support raw keys (chacha20,
aegis, ascon128, sqlcipher) that skips the KDF, so opening costs about a millisecond.
"""

from __future__ import annotations

import contextlib
import os
import re

import apsw

from ..errors import EncryptionError, NotFoundError, StrongroomError, UsageError

#: The sqlite3mc VFS. Named explicitly where SQLite would otherwise inherit another connection's VFS
#: (``VACUUM INTO`` from an image connection).
CIPHER_VFS = "multipleciphers-unix"

BUSY_TIMEOUT_MS = 30_000

#: The cipher of every keyed database we write. AEGIS-256 (authenticated, AES-NI) against chacha20,
#: measured here (bench/store_bench.py): full scans ~2.2x and point reads ~1.3x faster.
DEFAULT_CIPHER = "aegis"

# Cipher names are spliced into PRAGMA text and URIs, so only plain identifiers are accepted.
_CIPHER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def check_cipher(cipher: str) -> str:
    """Return ``cipher`` if it is a well-formed sqlite3mc cipher name, else raise UsageError."""
    if not isinstance(cipher, str) or not _CIPHER_NAME.match(cipher):
        raise UsageError(f"invalid cipher name {cipher!r}")
    return cipher


def key_literal(key: bytes) -> str:
    """The SQL text of a raw key, ``x'<hex>'`` (never logged or put in messages)."""
    if not isinstance(key, bytes | bytearray) or not key:
        raise UsageError("a database key must be non-empty bytes")
    return f"x'{bytes(key).hex()}'"


def apply_key(conn: apsw.Connection, key: bytes, cipher: str = DEFAULT_CIPHER) -> None:
    """Key the main database of ``conn``; must run before its first read."""
    check_cipher(cipher)
    conn.execute(f"PRAGMA cipher='{cipher}'").fetchall()
    conn.execute(f'PRAGMA key="{key_literal(key)}"').fetchall()


def remove_database_files(path: str | os.PathLike[str]) -> None:
    """Delete a database file and its -wal, -shm and -journal, the main file first: a crash part way
    leaves no database rather than a database without its WAL (committed frames lost)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{os.fspath(path)}{suffix}")


def connect(
    path: str | os.PathLike[str],
    *,
    key: bytes | None = None,
    cipher: str = DEFAULT_CIPHER,
    readonly: bool = False,
    create: bool = False,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> apsw.Connection:
    """Open ``path`` (keyed when ``key`` is given) and prove the key by reading the schema.

    Raises NotFoundError if the file is missing (and ``create`` is false), EncryptionError if the key
    is wrong, missing or given for a plaintext file.
    """
    path = os.fspath(path)
    if not create and not os.path.exists(path):
        raise NotFoundError(f'database file "{path}" not found')
    if readonly:
        flags = apsw.SQLITE_OPEN_READONLY
    else:
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    try:
        conn = apsw.Connection(path, flags=flags)
    except apsw.CantOpenError as exc:
        raise StrongroomError(f'cannot open database file "{path}": {exc}') from None
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        if key is not None:
            apply_key(conn, key, cipher)
        conn.execute("SELECT count(*) FROM main.sqlite_schema").fetchall()
    except apsw.NotADBError:
        conn.close()
        if key is not None:
            raise EncryptionError(
                f'cannot open database "{path}": wrong key or cipher, or not an encrypted SQLite database'
            ) from None
        raise EncryptionError(
            f'cannot open database "{path}": not a SQLite database, or encrypted and no key was given'
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def scalar_int(conn: apsw.Connection, sql: str, bindings: tuple[object, ...] = ()) -> int:
    """The one integer a query such as ``PRAGMA page_count`` returns (apsw types values loosely)."""
    value = conn.execute(sql, bindings).fetchall()[0][0]
    if not isinstance(value, int):
        raise TypeError(f"{sql!r} returned {value!r}, not an integer")
    return value
