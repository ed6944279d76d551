"""Optional SDKs: each cloud needs an extra (``strongroom[aws]`` ...); a missing one is a hint, not a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UsageError


def import_extra(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` (e.g. ``google.cloud.storage``), or say which extra installs it for ``what``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{what} needs {module.split('.')[0]}: pip install 'strongroom[{extra}]'") from None
