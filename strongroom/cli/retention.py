"""``strongroom forget`` and ``strongroom prune``: restic's retention commands over a collection.

With a store they run as FORGET and PRUNE jobs (SHOW JOBS lists them); without one, straight in the
engine, as ``check`` does. Neither needs a key: dir names give the times, locks say what runs.
"""

from __future__ import annotations

import json
from datetime import timedelta

import click

from ..backup import lifecycle
from ..backup.retention import DECISION_COLUMNS, RetentionPolicy, Within, parse_count
from ..output import render
from .common import FORMAT, STORE, echo_table, maybe_store, parse_duration, resolve_collection

_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def _count(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    return 0 if value is None else parse_count(value, f"--{param.name.replace('_', '-') if param.name else 'keep'}")


def _within(ctx: click.Context, param: click.Parameter, value: str | None) -> Within | None:
    return None if value is None else Within.parse(value)


def _grace(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    return parse_duration(value)


OLDER_THAN = click.option(
    "--older-than",
    "grace",
    default="24h",
    show_default=True,
    callback=_grace,
    metavar="DURATION",
    help="Take a BACKUP-LOCK older than this as abandoned even when its owner (another host or boot) "
    "cannot be proved gone (30m, 24h, 7d).",
)


def _keep_options(f: click.decorators.FC) -> click.decorators.FC:
    for name in reversed(_COUNTS):
        what = "restore points" if name == "last" else f"{name} restore points (the newest of each)"
        f = click.option(
            f"--keep-{name}",
            metavar="N",
            callback=_count,
            help=f"Keep the newest N {what}; 'unlimited' keeps all.",
        )(f)
    return click.option(
        "--keep-within",
        metavar="DURATION",
        callback=_within,
        help="Keep every restore point newer than DURATION (restic's 1y5m7d2h) before the newest one.",
    )(f)


def _prune_rows(result: lifecycle.PruneResult) -> list[tuple[object, ...]]:
    return [a.row() for a in result.actions]


@click.command()
@click.argument("collection", nargs=-1, required=True)
@STORE
@_keep_options
@click.option("--dry-run", is_flag=True, help="Only print what would be kept and removed, and why.")
@click.option("--prune", "also_prune", is_flag=True, help="Then run prune, if any restore point was removed.")
@OLDER_THAN
@FORMAT
def forget(
    collection: tuple[str, ...],
    store: str | None,
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    keep_within: Within | None,
    dry_run: bool,
    also_prune: bool,
    grace: timedelta,
    fmt: str,
) -> None:
    """Remove the restore points of COLLECTION a policy does not keep (restic's forget).

    Every full and incremental backup is a restore point; a kept incremental keeps its chain, and the
    newest point of LATEST's chain is always kept. Give every location of a locality-aware collection."""
    policy = RetentionPolicy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within)
    where = _collection(collection)
    s = maybe_store(store)
    if s:
        result = s.backups.forget(where, policy, dry_run=dry_run, prune=also_prune, grace=grace)
    else:
        result = lifecycle.forget(where, policy, dry_run=dry_run, grace=grace)
        if also_prune and result.removed:
            result.prune = lifecycle.prune(where, grace=grace)
    rows = [d.row() for d in result.decisions]
    if fmt == "json" and also_prune:  # one JSON document, not two; "prune": null if it did not run
        doc = {"forget": json.loads(render(DECISION_COLUMNS, rows, "json")), "prune": None}
        if result.prune is not None:
            doc["prune"] = json.loads(render(lifecycle.PRUNE_COLUMNS, _prune_rows(result.prune), "json"))
        click.echo(json.dumps(doc, indent=2))
        return
    echo_table(DECISION_COLUMNS, rows, fmt)
    if result.prune is not None:
        echo_table(lifecycle.PRUNE_COLUMNS, _prune_rows(result.prune), fmt)


@click.command()
@click.argument("collection", nargs=-1, required=True)
@STORE
@OLDER_THAN
@FORMAT
def prune(collection: tuple[str, ...], store: str | None, grace: timedelta, fmt: str) -> None:
    """Remove what no completed backup of COLLECTION uses: killed or canceled backups, half-forgotten
    layers, orphaned files, temp files, files at other locations of removed layers. Never a layer whose
    lock's owner is alive. Give every location of a locality-aware collection."""
    where = _collection(collection)
    s = maybe_store(store)
    result = s.backups.prune(where, grace=grace) if s else lifecycle.prune(where, grace=grace)
    echo_table(lifecycle.PRUNE_COLUMNS, _prune_rows(result), fmt)


def _collection(uris: tuple[str, ...]) -> str | tuple[str, ...]:
    resolved = tuple(resolve_collection(u) for u in uris)
    return resolved[0] if len(resolved) == 1 else resolved
