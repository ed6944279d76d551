"""The CLI's log lines: one per finished job (``strongroom.jobs``) when stderr is not a terminal, so
cron mail and journald get a record of every backup; JSON with ``--log-format json`` for a collector.

On a terminal the command's own output says how a job went, so job lines are shown only with
``--verbose``. ``--quiet`` leaves errors alone. ``$STRONGROOM_LOG_FORMAT`` (text, json or none) is
``--log-format``'s default. Every line carries only what SHOW JOBS shows: redacted, no secret.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

FORMATS = ("text", "json", "none")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a job's fields when it is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = getattr(record, "job", None)
        if isinstance(job, dict):
            doc.update(job)
        return json.dumps(doc)


_quiet = False
_handler: logging.Handler | None = None


def configure(*, verbose: bool, quiet: bool, fmt: str | None) -> None:
    """Set up the ``strongroom`` loggers for one CLI run (``fmt`` none: no job lines, other lines stay).

    One handler of ours on the ``strongroom`` logger, replaced (never added twice) when the CLI runs
    again in one process; records still propagate, so a host application's handlers see them too."""
    global _quiet, _handler
    _quiet = quiet
    logger = logging.getLogger("strongroom")
    if _handler is not None:
        logger.removeHandler(_handler)
    terminal = sys.stderr.isatty()
    if quiet:
        level = logging.ERROR
    elif verbose:
        level = logging.DEBUG
    else:
        level = logging.INFO if (not terminal or fmt == "json") else logging.WARNING
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger.addHandler(_handler)
    logger.setLevel(level)
    logging.getLogger("strongroom.jobs").setLevel(logging.CRITICAL + 1 if fmt == "none" else logging.NOTSET)


def serving() -> None:
    """A server logs what it does at INFO even on a terminal (unless --quiet)."""
    logger = logging.getLogger("strongroom")
    if not _quiet and logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
