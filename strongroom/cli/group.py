"""The top-level command group: loads each command's module only when that command runs, and maps
errors to ``ERROR: ...`` lines and exit codes.

Kept free of the store, the engine and rich, so ``strongroom --version`` and ``--help`` cost little
more than starting Python.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from ..errors import StrongroomError, UsageError

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


class Group(click.Group):
    """Prints our errors as ``ERROR: ...``, never a traceback unless $STRONGROOM_DEBUG is set.

    Exit status: 2 for a usage error (bad options or arguments), 1 for any other error, 130 on Ctrl-C.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
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
