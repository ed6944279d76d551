"""``strongroom backup-schedule``: managed backups."""

from __future__ import annotations

import click

from ..errors import UsageError
from ..store import managed
from .common import FORMAT, STORE, echo_table, open_store, parse_duration, show_job


@click.group("backup-schedule")
def backup_schedule() -> None:
    """Managed backups: the store's own scheduled backups (strongroom serve runs the schedule)."""


@backup_schedule.command("run-once")
@STORE
@click.option("--full", is_flag=True, help="Take a full backup of every region now.")
@click.option("--incremental", is_flag=True, help="Take an incremental backup of every region now.")
@FORMAT
def backup_schedule_run_once(store: str | None, full: bool, incremental: bool, fmt: str) -> None:
    """Take the managed backups that are due (for cron), or force one with --full / --incremental."""
    if full and incremental:
        raise UsageError("use --full or --incremental, not both")
    s = open_store(store)
    taken = s.managed_backup(full=full) if full or incremental else s.run_due_managed_backups()
    if not taken:
        click.echo("no managed backup is due")
        return
    echo_table(managed.TAKEN_COLUMNS, [t.row() for t in taken], fmt)


@backup_schedule.command("set")
@STORE
@click.option(
    "--frequency-minutes",
    type=click.Choice([str(m) for m in managed.FREQUENCY_MINUTES]),
    help="Back up every N minutes (CockroachDB Cloud's values).",
)
@click.option(
    "--retention-days",
    type=click.Choice([str(d) for d in managed.RETENTION_DAYS]),
    help="Delete managed backups older than N days (default 30; once set, only a longer one is accepted).",
)
@click.option("--full-every", help="Take a full backup when the last full one is this old (e.g. 24h).")
@click.option("--enabled/--disabled", default=None, help="Turn managed backups on or off.")
@FORMAT
def backup_schedule_set(
    store: str | None,
    frequency_minutes: str | None,
    retention_days: str | None,
    full_every: str | None,
    enabled: bool | None,
    fmt: str,
) -> None:
    """Change the managed backup configuration (and print it)."""
    s = open_store(store, unlock=False)
    new = s.set_managed_backup_schedule(
        frequency_minutes=int(frequency_minutes) if frequency_minutes else None,
        retention_days=int(retention_days) if retention_days else None,
        full_every=parse_duration(full_every) if full_every else None,
        enabled=enabled,
    )
    echo_table(managed.CONFIG_COLUMNS, [new.row()], fmt)


@backup_schedule.command("list")
@STORE
@FORMAT
def backup_schedule_list(store: str | None, fmt: str) -> None:
    """List managed backups per region, and whether each can be restored (and why not)."""
    s = open_store(store, unlock=False)
    echo_table(managed.LIST_COLUMNS, [b.row() for b in s.managed_backups()], fmt)


@backup_schedule.command("restore")
@click.argument("subdir", default="LATEST")
@STORE
@click.option("--database", "databases", multiple=True, help="Restore only this database (repeatable).")
@click.option("--new-db-name", help="Restore the one database under a new name.")
@click.option("--region", help="The region whose managed backups to restore from.")
@FORMAT
def backup_schedule_restore(
    subdir: str,
    store: str | None,
    databases: tuple[str, ...],
    new_db_name: str | None,
    region: str | None,
    fmt: str,
) -> None:
    """Restore managed backups (LATEST, or a full backup's SUBDIR) into this store."""
    s = open_store(store)
    result = s.restore_managed(subdir, list(databases) or None, new_db_name, region)
    show_job(result, fmt)
