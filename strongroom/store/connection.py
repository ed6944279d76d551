"""Store connections: guarded against key changes, and following their database through re-keys.

**Guard.** A store connection refuses the statements that would change or remove its encryption,
or write its data somewhere unencrypted: the sqlite3mc key and cipher pragmas (``PRAGMA rekey=''``
would decrypt the file in place), temp files on disk, and ATTACH (a plaintext file next to it).
They fail with SQLite's "not authorized". Keys are managed by the store, never by SQL.

**Following re-keys.**
When a data key rotates, the database is re-keyed in place (``PRAGMA rekey``) while other
connections stay open. A connection inside a read transaction keeps its snapshot (old pages, old
key) until it ends; its next transaction then finds pages under the new key and SQLite3 Multiple
Ciphers reports ``NotADBError``. That can only happen on the first read of a new snapshot, before
anything was read or written in it, so it is safe to look up the database's current key, key the
connection again and run the statement once more. Writers are covered the same way: a write starts
by reading, so no page is ever written under a retired key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw

from ..sqlite import apply_key

#: Returns the keys that may open the database now (reloading the key registry if it changed).
KeySource = Callable[[], list[bytes]]

# sqlite3mc's key and cipher configuration pragmas (see its docs, "Configuration via SQL pragmas").
_KEY_PRAGMAS = frozenset(
    {
        "key", "rekey", "hexkey", "hexrekey", "textkey", "textrekey", "cipher", "legacy", "legacy_page_size",
        "kdf_iter", "fast_kdf_iter", "kdf_algorithm", "hmac_use", "hmac_pgno", "hmac_salt_mask", "hmac_algorithm",
        "plaintext_header_size", "tcost", "mcost", "pcost", "algorithm", "mc_legacy_wal", "temp_store_directory",
    }
)  # fmt: skip


def _authorize(op: int, p1: str | None, p2: str | None, dbname: str | None, trigger: str | None) -> int:
    if op == apsw.SQLITE_ATTACH:
        return apsw.SQLITE_DENY
    if op == apsw.SQLITE_PRAGMA and p1 is not None:
        name = p1.lower()
        if name in _KEY_PRAGMAS or name.startswith("cipher_"):
            return apsw.SQLITE_DENY
        if name == "temp_store" and p2 is not None and p2.strip().lower() not in ("2", "memory"):
            return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


def guard(conn: apsw.Connection) -> apsw.Connection:
    """Refuse key, cipher, temp-file and ATTACH statements on ``conn`` (see the module docstring)."""
    conn.execute("PRAGMA temp_store=MEMORY").fetchall()
    conn.authorizer = _authorize
    return conn


def follow_rekeys(conn: apsw.Connection, keys: KeySource) -> apsw.Connection:
    """Make ``conn`` re-key itself when its database was re-keyed under it."""

    def rekey_connection(connection: apsw.Connection) -> bool:
        authorizer, connection.authorizer = connection.authorizer, None  # our own PRAGMA key
        try:
            for key in keys():
                apply_key(connection, key)
                try:
                    # A plain cursor: this connection's own cursor would catch a wrong key's
                    # NotADBError and call back in here with the same key, forever.
                    apsw.Cursor(connection).execute("SELECT count(*) FROM main.sqlite_schema").fetchall()
                except apsw.NotADBError:
                    continue
                return True
            return False
        finally:
            connection.authorizer = authorizer

    class KeyFollowingCursor(apsw.Cursor):
        def execute(self, statements: str, bindings: Any = None, **kwargs: Any) -> apsw.Cursor:
            try:
                return super().execute(statements, bindings, **kwargs)
            except apsw.NotADBError:
                if not rekey_connection(self.connection):
                    raise
                return super().execute(statements, bindings, **kwargs)

        def executemany(self, statements: str, sequenceofbindings: Any, **kwargs: Any) -> apsw.Cursor:
            # A generator of bindings cannot be replayed, so check the key first (outside a
            # transaction this cannot hit a half-done statement), and replay only sequences.
            if not self.connection.in_transaction:
                self.execute("SELECT 1 FROM main.sqlite_schema LIMIT 0").fetchall()
            try:
                return super().executemany(statements, sequenceofbindings, **kwargs)
            except apsw.NotADBError:
                if not rekey_connection(self.connection) or not isinstance(sequenceofbindings, list | tuple):
                    raise
                return super().executemany(statements, sequenceofbindings, **kwargs)

    conn.cursor_factory = KeyFollowingCursor
    return conn
