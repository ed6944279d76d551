"""``strongroom schedules``: the store's backup schedules (made with ``CREATE SCHEDULE FOR BACKUP``).

``run-due`` runs the schedules whose time has come, once, for cron or a systemd timer; ``strongroom
serve`` does the same every ``--schedule-interval`` seconds.
"""

from __future__ import annotations

import click

from ..errors import KMSError, StrongroomError
from ..store import schedules as sched
from .common import FORMAT, STORE, echo_table, open_store


@click.group("schedules")
def schedules() -> None:
    """Backup schedules: list, pause, resume, drop, and run the due ones (CREATE SCHEDULE makes them)."""


@schedules.command("list")
@STORE
@click.option("--status", type=click.Choice(["active", "paused"]), help="Only the schedules in this state.")
@FORMAT
def schedules_list(store: str | None, status: str | None, fmt: str) -> None:
    """SHOW SCHEDULES: every schedule, its state and next run (secrets redacted)."""
    s = open_store(store, unlock=False)
    rows = s.schedules.show(status.upper() if status else None)
    echo_table(sched.SHOW_COLUMNS, [r.show_row() for r in rows], fmt)


@schedules.command("show")
@click.argument("schedule_id", type=int)
@STORE
@FORMAT
def schedules_show(schedule_id: int, store: str | None, fmt: str) -> None:
    """SHOW SCHEDULE <id>."""
    s = open_store(store, unlock=False)
    echo_table(sched.SHOW_COLUMNS, [s.schedules.get(schedule_id).show_row()], fmt)


@schedules.command("pause")
@click.argument("schedule_id", type=int)
@STORE
def schedules_pause(schedule_id: int, store: str | None) -> None:
    """PAUSE SCHEDULE <id>: it does not run until resumed."""
    open_store(store, unlock=False).schedules.pause(schedule_id)
    click.echo(f"paused schedule {schedule_id}")


@schedules.command("resume")
@click.argument("schedule_id", type=int)
@STORE
def schedules_resume(schedule_id: int, store: str | None) -> None:
    """RESUME SCHEDULE <id>: it runs again from the next time its crontab fires."""
    s = open_store(store, unlock=False)
    s.schedules.resume(schedule_id)
    click.echo(f"resumed schedule {schedule_id}: next run {s.schedules.get(schedule_id).next_run}")


@schedules.command("drop")
@click.argument("schedule_id", type=int)
@STORE
def schedules_drop(schedule_id: int, store: str | None) -> None:
    """DROP SCHEDULE <id>: the schedule and its sealed KMS URIs or passphrase are removed."""
    s = open_store(store)
    s.schedules.drop(schedule_id)
    click.echo(f"dropped schedule {schedule_id}")


@schedules.command("run")
@click.argument("schedule_id", type=int)
@STORE
@FORMAT
def schedules_run(schedule_id: int, store: str | None, fmt: str) -> None:
    """Run one schedule now, whatever its next run. Exit status 1 if the run failed."""
    run = open_store(store).schedules.run_now(schedule_id)
    echo_table(sched.RUN_COLUMNS, [run.row()], fmt)
    if run.status == "failed":
        raise StrongroomError(f"schedule {schedule_id}: the backup failed: {run.error}")


@schedules.command("run-due")
@STORE
@FORMAT
def schedules_run_due(store: str | None, fmt: str) -> None:
    """Run every schedule that is due, once (for cron or a systemd timer). Exit status 1 if a run failed."""
    s = open_store(store, unlock=False)
    try:
        s.keys.unlock()
    except KMSError:
        # A store whose CMEK was revoked cannot open: its schedules are stopped, with a state that
        # says so, and the error is still the command's outcome.
        runs = s.schedules.run_due()
        if runs:
            echo_table(sched.RUN_COLUMNS, [r.row() for r in runs], fmt)
        raise
    runs = s.schedules.run_due()
    if not runs:
        click.echo("no schedule is due")
        return
    echo_table(sched.RUN_COLUMNS, [r.row() for r in runs], fmt)
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        raise StrongroomError(f"{len(failed)} of {len(runs)} scheduled backup(s) failed: see SHOW SCHEDULES")
