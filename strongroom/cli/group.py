"""The top-level command group: loads each command's module only when that command runs, and maps
errors to ``ERROR: ...`` lines and exit codes.

Kept free of the store, the engine and rich, so ``strongroom --version`` and ``--help`` cost little
more than starting Python.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from ..errors import JobCanceledError, StrongroomError, UsageError

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
DEFAULT_STORE = "./strongroom-data"

# A missing optional dependency: the top-level module it imports, and the extra that installs it.
EXTRAS = {
    "google": "gcp",
    "pkcs11": "hsm",
    "boto3": "aws",
    "botocore": "aws",
    "obstore": "aws",
    "azure": "azure",
    "hvac": "vault",
    "Crypto": "groups",
    "pyrage": "age",
    "psycopg": "postgres",
    "pyfastcdc": "postgres",
}


def _exit(message: str, code: int) -> None:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(code)


def import_hint(exc: ImportError) -> str:
    """``ERROR:`` text for a missing module, with the pip extra that provides it when there is one."""
    name = exc.name or ""
    extra = EXTRAS.get(name.partition(".")[0])
    if extra:
        return f"{exc} (Python module {name}): install it with: pip install 'strongroom[{extra}]'"
    return f"{exc}: a Python module is missing; reinstall strongroom (pip install strongroom)"


_signals_received: list[int] = []


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C or SIGTERM (a systemd stop) during a BACKUP or RESTORE cancels it: the job stops at its
    next progress point, deletes what it wrote and ends ``canceled`` (a KeyboardInterrupt raised at
    any bytecode could land between an upload's completion and its record, leaving an orphan). With
    no job running, SIGINT is Python's KeyboardInterrupt and SIGTERM ends the process as usual."""
    jobs = sys.modules.get("strongroom.backup.jobs")  # not imported: no job can be running
    if jobs is not None and jobs.cancel_foreground():
        _signals_received.append(signum)
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def take_signal() -> int | None:
    """The signal that canceled a job since the last call, if one did (the shell's Ctrl-C)."""
    signum = _signals_received[-1] if _signals_received else None
    _signals_received.clear()
    return signum


@contextmanager
def _cancel_on_signals() -> Iterator[None]:
    if sys.platform == "win32" or not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Group(click.Group):
    """Prints our errors as ``ERROR: ...``, never a traceback unless $STRONGROOM_DEBUG is set.

    Exit status: 2 for a usage error (bad options or arguments), 1 for any other error, 130 on Ctrl-C
    (143 for a job canceled by SIGTERM).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _cancel_on_signals():
                return super().invoke(ctx)
        except JobCanceledError as exc:
            signum = take_signal()
            if os.environ.get("STRONGROOM_DEBUG"):
                raise
            # 128 + the signal, as a shell reports a process that a signal ended; 1 for a CANCEL JOB.
            _exit(str(exc), 128 + signum if signum else EXIT_ERROR)
        except click.Abort as exc:  # click.prompt turns Ctrl-C into Abort
            if isinstance(exc.__context__, KeyboardInterrupt):
                _exit("interrupted", EXIT_INTERRUPTED)
            raise
        except KeyboardInterrupt:
            _exit("interrupted", EXIT_INTERRUPTED)
        except StrongroomError as exc:
            if os.environ.get("STRONGROOM_DEBUG"):
                raise
            _exit(str(exc), EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR)
        except ImportError as exc:
            if os.environ.get("STRONGROOM_DEBUG"):
                raise
            _exit(import_hint(exc), EXIT_ERROR)

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: command name -> "module:attribute" under strongroom.cli, imported on first use
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.lazy, *super().list_commands(ctx)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(f"strongroom.cli.{module}"), attr)
        assert isinstance(command, click.Command)
        return command
