"""What every command shares: errors and exit codes, the store, encryption options, progress, output."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from ..backup import Encryption, JobResult
from ..backup.requests import parse_as_of
from ..errors import StrongroomError, UsageError
from ..output import render
from ..store import Store
from ..store import open_store as _open_store
from ..uri import redact
from .group import DEFAULT_STORE

err = Console(stderr=True)

FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format (table fits the terminal width).",
)


def _as_of(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    return parse_as_of(value) if value is not None else None


AS_OF = click.option(
    "--as-of",
    metavar="TIME",
    callback=_as_of,
    help="AS OF SYSTEM TIME: the newest backup at or before a timestamp ('2026-11-23 10:00:00', UTC) "
    "or an interval back from now ('-1h', '-10m', '-2 days').",
)
STORE = click.option(
    "--store",
    metavar="DIR",
    help=f"Store directory (default: strongroom --store, $STRONGROOM_STORE or {DEFAULT_STORE}).",
)


# -- the store ------------------------------------------------------------------------------------------
def store_path(store: str | None) -> str:
    """The command's own --store, else ``strongroom --store``, else $STRONGROOM_STORE, else the default."""
    if store:
        return store
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().params.get("store") if ctx else None
    return root or os.environ.get("STRONGROOM_STORE") or DEFAULT_STORE


def open_store(store: str | None, *, unlock: bool = True, name_path: bool = True) -> Store:
    """Open the store; an error opening it names the store's path."""
    path = store_path(store)
    try:
        return _open_store(path, unlock=unlock)
    except StrongroomError as exc:
        if not name_path or str(path) in str(exc) or str(Path(path).absolute()) in str(exc):
            raise
        try:
            named = type(exc)(f"store {path}: {exc}")
        except TypeError:  # an error class with its own constructor: keep the kind of exit, lose the class
            named = (
                UsageError(f"store {path}: {exc}")
                if isinstance(exc, UsageError)
                else StrongroomError(f"store {path}: {exc}")
            )
        raise named from exc


def maybe_store(store: str | None) -> Store | None:
    """The store if there is one at the path (SHOW/ALTER BACKUP work on any collection without one)."""
    path = store_path(store)
    return open_store(path) if Path(path, "STRONGROOM-STORE").exists() else None


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def resolve_collection(uri: str) -> str:
    """A plain path (``backups``, ``./backups``) is taken relative to the cwd; a URI with a scheme is left alone."""
    if not uri or _SCHEME.match(uri) or uri.startswith("/"):
        return uri
    return os.path.abspath(os.path.expanduser(uri))


# -- options ---------------------------------------------------------------------------------------------
def encryption(kms: Sequence[str], passphrase: bool, passphrase_file: str | None, confirm: bool = False) -> Encryption:
    """A passphrase never comes from the command line itself (shell history, ps): prompt, file or env."""
    phrase = None
    if passphrase_file:
        try:
            phrase = Path(passphrase_file).read_bytes().decode().rstrip("\n")
        except UnicodeDecodeError:
            raise UsageError(f"--passphrase-file {passphrase_file}: the passphrase is not UTF-8 text") from None
    elif passphrase:
        phrase = os.environ.get("STRONGROOM_PASSPHRASE") or click.prompt(
            "Passphrase", hide_input=True, confirmation_prompt=confirm, err=True
        )
    return Encryption(passphrase=phrase, kms=tuple(kms))


def encryption_options(verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--kms / --passphrase / --passphrase-file; ``verb`` says what they are for ("Encrypt", "Decrypt")."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--kms", multiple=True, metavar="URI", help=f"{verb} with this KMS key (repeat for several).")(
            f
        )
        f = click.option(
            "--passphrase",
            is_flag=True,
            help=f"{verb} with a passphrase: prompted, or taken from $STRONGROOM_PASSPHRASE.",
        )(f)
        f = click.option(
            "--passphrase-file",
            type=click.Path(exists=True, dir_okay=False),
            help=f"{verb} with the passphrase in this file.",
        )(f)
        return f

    return decorate


_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``720h``, ``90m`` or ``45s``."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"invalid duration {text!r}: use a positive number with s, m, h or d, e.g. 30d")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


def parse_region_uris(values: Sequence[str], regions: Sequence[str]) -> dict[str, str]:
    """``--cmek URI`` (every region) or ``--cmek REGION=URI`` (repeat per region)."""
    out: dict[str, str] = {}
    for value in values:
        region, sep, uri = value.partition("=")
        if sep and "://" not in region and ":" not in region:
            out[region] = uri
        elif len(values) == 1:
            return dict.fromkeys(regions, value)
        else:
            raise UsageError(f"with several --cmek options, write each as REGION=URI (got {redact(value)!r})")
    return out


# -- output ----------------------------------------------------------------------------------------------
@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int, str], None] | None]:
    if not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def terminal_width() -> int | None:
    """$COLUMNS, else the terminal's width when stdout is one; None (no limit) for a pipe or file."""
    if os.environ.get("COLUMNS", "").strip().isdigit():
        return int(os.environ["COLUMNS"])
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fit_rows(columns: Sequence[str], rows: Sequence[Sequence[object]], width: int) -> list[Sequence[object]] | None:
    """Rows whose long text cells are wrapped onto continuation rows so the table fits ``width``; None if
    it already fits (or cannot be made to)."""
    texts = [["NULL" if v is None else str(v) for v in row] for row in rows]
    widths = [
        max([len(c)] + [max((len(line) for line in r[i].splitlines()), default=0) for r in texts])
        for i, c in enumerate(columns)
    ]
    budget = width - 3 * len(columns)  # " " + " cell |" per column
    if sum(widths) <= budget:
        return None
    floors = [len(c) if any(_numeric(r[i]) for r in rows) else max(len(c), 4) for i, c in enumerate(columns)]
    for i in range(len(columns)):
        if any(_numeric(r[i]) for r in rows):
            floors[i] = widths[i]  # numbers are never wrapped
    while sum(widths) > budget:
        wide = max(range(len(widths)), key=lambda i: widths[i] - floors[i])
        if widths[wide] <= floors[wide]:
            return None
        widths[wide] -= 1
    out: list[Sequence[object]] = []
    for raw, row in zip(rows, texts, strict=True):
        chunks: list[list[object]] = []
        for i, (value, text) in enumerate(zip(raw, row, strict=True)):
            if _numeric(value) or (len(text) <= widths[i] and "\n" not in text):
                chunks.append([value])
                continue
            w = widths[i]
            chunks.append([line[j : j + w] for line in text.splitlines() for j in range(0, max(len(line), 1), w)])
        for n in range(max(len(c) for c in chunks)):
            out.append(tuple(c[n] if n < len(c) else "" for c in chunks))
    return out


def echo_table(columns: Sequence[str], rows: Sequence[Sequence[object]], fmt: str) -> None:
    """Print a result; in table format, wrapped to the terminal width (the row count stays the real one)."""
    width = terminal_width() if fmt == "table" else None
    fitted = fit_rows(columns, rows, width) if width else None
    if fitted is None:
        click.echo(render(columns, rows, fmt))
        return
    lines = render(columns, fitted, fmt).splitlines()
    lines[-1] = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
    click.echo("\n".join(lines))


def show_job(result: JobResult, fmt: str) -> None:
    echo_table(JobResult.COLUMNS, [result.row()], fmt)
    for note in result.notes:  # what the job left out on request (skip_missing_foreign_keys)
        click.echo(f"NOTE: {note}", err=True)
