"""The ``strongroom`` command: thin sugar over the Python API (and the SQL statements it mirrors).

One module per command group, each a thin call into the store or engine; what they share is in ``common``.
"""

from __future__ import annotations

import click

from .. import __version__
from . import backups, cmek, databases, demo, init, keys, managed, regions, serve, sql
from .common import DEFAULT_STORE, Group, parse_duration, parse_region_uris

__all__ = ["main", "parse_duration", "parse_region_uris"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="strongroom", help="Show the version and exit.")
@click.option(
    "--store",
    metavar="DIR",
    help=f"Store directory for every command (default $STRONGROOM_STORE or {DEFAULT_STORE}); "
    "a command's own --store wins.",
)
def main(store: str | None) -> None:
    """Encrypted BACKUP / RESTORE for SQLite, the CockroachDB way."""


for command in (
    init.init,
    keys.keys,
    regions.region,
    databases.db,
    backups.backup,
    backups.restore,
    backups.show,
    backups.alter_backup,
    cmek.cmek,
    cmek.rotate,
    serve.serve,
    managed.backup_schedule,
    sql.sql,
    demo.demo,
):
    main.add_command(command)
