"""``strongroom job cancel ID``: CANCEL JOB from the command line."""

from __future__ import annotations

import click

from ..errors import UsageError
from .common import STORE, open_store


@click.group()
def job() -> None:
    """The store's jobs (SHOW JOBS lists them: strongroom sql -e 'SHOW JOBS')."""


@job.command()
@click.argument("job_id")
@STORE
def cancel(job_id: str, store: str | None) -> None:
    """CANCEL JOB JOB_ID: stop a running BACKUP or RESTORE, in whichever process runs it.

    Returns once the request is recorded; the job then deletes what it wrote and ends canceled
    (strongroom sql -e 'SHOW JOB WHEN COMPLETE JOB_ID' waits for that)."""
    if not job_id.isdigit() or len(job_id) > 19 or int(job_id) >= 2**63:
        raise UsageError(f"not a job ID: {job_id!r}")
    open_store(store).jobs.cancel(int(job_id))
    click.echo(f"job {job_id}: cancel requested")
