"""``strongroom sql --postgres DSN``: the seed's statements against a PostgreSQL server.

BACKUP reads the server's databases and RESTORE writes into it; they, SHOW BACKUP(S), ALTER BACKUP,
schedules and jobs run through the store exactly as for its own databases (the store keeps the job
registry and the schedules' sealed secrets, the DSN among them). Database statements and anything
else go to the server, in the session's current database (``USE``; at first the DSN's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import NotFoundError, UsageError, scrub
from ..postgres.conn import Dsn, PostgresError, failed, quote_ident
from .ast import CreateDatabase, DropDatabase, Passthrough, ShowDatabases, ShowTables, Use
from .executor import Result, Session

if TYPE_CHECKING:
    from ..store import Store


class PostgresSession(Session):
    """A store session whose databases are a PostgreSQL server's."""

    def __init__(self, store: Store, dsn: str, database: str | None = None) -> None:
        super().__init__(store, None)
        self.postgres = dsn
        self.server = Dsn.parse(dsn)
        self.database = database or self.server.params.get("dbname") or self.server.params.get("user") or "postgres"
        self._pg: dict[str, psycopg.Connection[Any]] = {}

    def close(self) -> None:
        for conn in self._pg.values():
            conn.close()
        self._pg.clear()
        super().close()

    def _server_conn(self, database: str | None = None) -> psycopg.Connection[Any]:
        name = database or self._current()
        conn = self._pg.get(name)
        if conn is None or conn.closed:
            conn = self._pg[name] = self.server.for_database(name).connect(user_search_path=True)
        return conn

    def _forget(self, name: str) -> None:
        conn = self._pg.pop(name, None)  # a database restored or dropped: reconnect on next use
        if conn is not None:
            conn.close()

    def _query(self, sql: str, params: Sequence[object] = (), database: str | None = None) -> Result:
        conn = self._server_conn(database)
        try:
            cur = conn.execute(sql.encode(), params or None)
        except psycopg.OperationalError as exc:
            self._forget(database or self._current())
            raise failed(f"on {self.server.display}", exc) from None
        except psycopg.Error as exc:
            raise PostgresError(scrub(_message(exc))) from None
        if cur.description is None:
            return Result(status=cur.statusmessage or "")
        return Result(tuple(d.name for d in cur.description), [tuple(r) for r in cur.fetchall()])

    # -- database statements go to the server -----------------------------------------------------
    def _run_CreateDatabase(self, stmt: CreateDatabase, params: object) -> Result:
        if stmt.region is not None:
            raise UsageError("PRIMARY REGION is a store database's: a PostgreSQL server has no regions")
        if stmt.if_not_exists and self._exists(stmt.name):
            return Result(status="CREATE DATABASE")
        return self._query(f"CREATE DATABASE {quote_ident(stmt.name)}", database="postgres")

    def _run_DropDatabase(self, stmt: DropDatabase, params: object) -> Result:
        self._forget(stmt.name)
        if stmt.if_exists and not self._exists(stmt.name):
            return Result(status="DROP DATABASE")
        return self._query(f"DROP DATABASE {quote_ident(stmt.name)}", database="postgres")

    def _exists(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM pg_database WHERE datname = %s", (name,), "postgres").rows)

    def _run_ShowDatabases(self, stmt: ShowDatabases, params: object) -> Result:
        # primary_region as in a store's SHOW DATABASES; a server has none.
        return self._query(
            "SELECT datname AS database_name, NULL::text AS primary_region FROM pg_database "
            "WHERE NOT datistemplate ORDER BY datname",
            database="postgres",
        )

    def _run_ShowTables(self, stmt: ShowTables, params: object) -> Result:
        return self._query(
            "SELECT n.nspname AS schema_name, c.relname AS table_name, "
            "CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END AS type, "
            "CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END AS estimated_row_count "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'v', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1, 2",
            database=stmt.database,
        )

    def _run_Use(self, stmt: Use, params: object) -> Result:
        if not self._exists(stmt.name):
            raise NotFoundError(f'database "{stmt.name}" does not exist on {self.server.display}')
        self.database = stmt.name
        return Result(status="SET")

    def _run_Passthrough(self, stmt: Passthrough, params: Sequence[object] | None) -> Result:
        if params and "$" in stmt.sql:
            raise UsageError("$n parameters are for BACKUP and RESTORE options; a PostgreSQL query takes none here")
        return self._query(stmt.sql)


def _message(exc: psycopg.Error) -> str:
    """The server's own one-line message (psycopg adds LINE/caret context on later lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
