"""The ``strongroom`` command: thin sugar over the Python API (and the SQL statements it mirrors).

One module per command group, each a thin call into the store or engine; what they share is in
``common``. A command's module (and the store, engine and SDKs behind it) is imported only when that
command runs, so ``strongroom --version`` starts about as fast as Python itself.
"""

from __future__ import annotations

from typing import Any

import click

from .. import __version__
from .group import DEFAULT_STORE, Group

__all__ = ["main", "parse_duration", "parse_region_uris"]

# name -> "module:attribute", in the order ``strongroom --help`` lists them
COMMANDS = {
    "init": "init:init",
    "keys": "keys:keys",
    "region": "regions:region",
    "db": "databases:db",
    "backup": "backups:backup",
    "restore": "backups:restore",
    "show": "backups:show",
    "alter-backup": "backups:alter_backup",
    "check": "backups:check",
    "forget": "retention:forget",
    "prune": "retention:prune",
    "cmek": "cmek:cmek",
    "rotate": "cmek:rotate",
    "serve": "serve:serve",
    "backup-schedule": "managed:backup_schedule",
    "schedules": "schedules:schedules",
    "sql": "sql:sql",
    "job": "jobs:job",
    "demo": "demo:demo",
}


@click.group(cls=Group, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="strongroom", help="Show the version and exit.")
@click.option(
    "--store",
    metavar="DIR",
    help=f"Store directory for every command (default $STRONGROOM_STORE or {DEFAULT_STORE}); "
    "a command's own --store wins.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log more: every job's line even on a terminal, and debug lines.")
@click.option("-q", "--quiet", is_flag=True, help="Log errors only.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json", "none"]),
    envvar="STRONGROOM_LOG_FORMAT",
    help="Log lines (one per finished job when stderr is not a terminal): text (default), json or none.",
)
def main(store: str | None, verbose: bool, quiet: bool, log_format: str | None) -> None:
    """Encrypted BACKUP / RESTORE for SQLite, the CockroachDB way."""
    if verbose and quiet:
        raise click.UsageError("use --verbose or --quiet, not both")
    from .logs import configure

    configure(verbose=verbose, quiet=quiet, fmt=log_format)


def __getattr__(name: str) -> Any:
    if name in ("parse_duration", "parse_region_uris"):
        from . import common

        return getattr(common, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
