"""Connections to a PostgreSQL server: DSNs parsed once, passwords registered as secrets, errors as
StrongroomErrors with one clear (redacted) message."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg
from psycopg import conninfo

from ..errors import StrongroomError, UsageError, register_secret, scrub
from ..uri import redact_dsn, register_dsn_secrets


class PostgresError(StrongroomError):
    """The PostgreSQL server refused, failed, or went away."""


class ServerVersionError(PostgresError):
    """A restore into a server older than the one backed up."""


@dataclass(frozen=True)
class Dsn:
    """A parsed DSN. ``params`` never holds the password: it travels in ``password`` only, so it
    reaches child processes through PGPASSWORD, never their argv (which ``ps`` shows)."""

    params: dict[str, str]
    password: str | None
    display: str  # the DSN as given, password redacted: for every message and job description

    @classmethod
    def parse(cls, dsn: str) -> Dsn:
        try:
            params = conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            register_dsn_secrets(dsn)
            raise UsageError(f"not a PostgreSQL connection string: {redact_dsn(dsn)}") from None
        password = params.pop("password", None)
        password = None if password is None else str(password)
        register_secret(password)
        display = redact_dsn(dsn)
        if password and password in display:  # a form the patterns miss (libpq is lenient): still hidden
            display = display.replace(password, "redacted")
        return cls({k: str(v) for k, v in params.items() if v is not None}, password, display)

    def for_database(self, dbname: str) -> Dsn:
        params = dict(self.params, dbname=dbname)
        return Dsn(params, self.password, f"{self.display} (database {dbname})")

    @property
    def libpq(self) -> str:
        """The DSN without its password, for pg_dump/pg_restore's argv."""
        return conninfo.make_conninfo(**self.params)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(
        self, *, autocommit: bool = True, user_search_path: bool = False
    ) -> psycopg.Connection[tuple[object, ...]]:
        """A connection for Strongroom's own queries: its search_path is empty, as pg_dump's is, so
        an object a database's owner put in a schema on the path (a ``public.current_setting``)
        never runs in place of the catalog's, and the definitions read back name every schema.
        ``user_search_path``: the server's setting, for a user's own statements (``strongroom sql``)."""
        try:
            params = dict(self.params)
            if not user_search_path:
                params["options"] = (params.get("options", "") + " -c search_path=").strip()
            if self.password is not None:
                params["password"] = self.password
            return psycopg.connect(conninfo.make_conninfo(**params), autocommit=autocommit, connect_timeout=10)
        except psycopg.Error as exc:
            raise PostgresError(f"cannot connect to PostgreSQL at {self.display}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return scrub(text[0] if text else type(exc).__name__)


def failed(what: str, exc: BaseException) -> PostgresError:
    """One clear message for a server error in the middle of ``what``."""
    if isinstance(exc, psycopg.OperationalError):
        return PostgresError(f"{what}: the PostgreSQL server closed the connection ({_first_line(exc)})")
    return PostgresError(f"{what}: {_first_line(exc)}")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_server_version(backed_up: int, target: int) -> None:
    """A restore needs a server of the same major version or newer (server_version_num values)."""
    if target // 10000 < backed_up // 10000:
        raise ServerVersionError(
            f"the backup was taken from PostgreSQL {backed_up // 10000}; the target server runs PostgreSQL "
            f"{target // 10000}, an older major version: restore into PostgreSQL {backed_up // 10000} or newer"
        )
