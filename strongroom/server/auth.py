"""The API token of ``strongroom serve``: never from the command line (ps, shell history)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..errors import UsageError, register_secret


def api_token(store: Path, token_file: str | None) -> tuple[str, str | None]:
    """The token, and a message for the operator (or None): from a file, $STRONGROOM_API_TOKEN,
    or the store's own ``<store>/api-token`` (made on first use, mode 0600). The token is
    registered as a secret, so no error message can show it."""
    token, message = _find_token(store, token_file)
    register_secret(token)
    return token, message


def _find_token(store: Path, token_file: str | None) -> tuple[str, str | None]:
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise UsageError(f"the token file {token_file} is empty")
        return token, None
    if token := os.environ.get("STRONGROOM_API_TOKEN", "").strip():
        return token, None
    path = store / "api-token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if not token:
            raise UsageError(f"the token file {path} is empty: delete it to have a new token made") from None
        return token, f"API token: {path}"
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, f"made an API token in {path} (mode 0600); send it as Authorization: Bearer <token>"
