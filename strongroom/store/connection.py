"""Connections that follow their database through an online re-key.

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


def follow_rekeys(conn: apsw.Connection, keys: KeySource) -> apsw.Connection:
    """Make ``conn`` re-key itself when its database was re-keyed under it."""

    def rekey_connection(connection: apsw.Connection) -> bool:
        for key in keys():
            apply_key(connection, key)
            try:
                connection.execute("SELECT count(*) FROM main.sqlite_schema").fetchall()
            except apsw.NotADBError:
                continue
            return True
        return False

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
