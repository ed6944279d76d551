"""PostgreSQL as a backup source and restore target (issue 15), beside strongroom.sqlite.

``backup_database`` reads one database in one snapshot (schema by pg_dump, rows by binary COPY) into
a Strongroom collection's sealed packs; ``restore_database`` recreates it under a new name and
``restore_table`` puts one table into an existing database. Needs the ``postgres`` extra (psycopg 3,
pyfastcdc) and the PostgreSQL client programs (pg_dump, pg_restore) on PATH.
"""

from ..backup.engine import register_entry_verifier
from .conn import Dsn, PostgresError, ServerVersionError, check_server_version, redact_dsn
from .source import backup_database, run_backup
from .streams import verify_index
from .target import restore_database, restore_table, run_restore

register_entry_verifier("postgres", verify_index)  # check --read-data decodes our streams

__all__ = [
    "Dsn",
    "PostgresError",
    "ServerVersionError",
    "backup_database",
    "check_server_version",
    "redact_dsn",
    "restore_database",
    "restore_table",
    "run_backup",
    "run_restore",
]
