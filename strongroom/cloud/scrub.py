"""The one secret scrubber: every message that leaves the process can go through :func:`scrub`.

Secrets are removed two ways:
- by position: the value of any secret URI parameter (``AWS_SECRET_ACCESS_KEY=...``; the list is
  :data:`strongroom.uri.SECRET_PARAMS`, the single source of truth) and any userinfo password, wherever
  they appear in the text;
- by value: every string passed to :func:`register_secret` (or given to one call), since backend
  messages are not ours and may echo a secret anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import forget_secret, register_secret, registered_secrets
from ..uri import REDACTED, SECRET_PARAMS

# For secrets passed to one call (the registry keeps errors.MIN_SECRET_LENGTH and longer).
MIN_SECRET_LENGTH = 4
_PARAM_VALUE = re.compile(
    r"(?<![A-Za-z0-9_-])("
    + "|".join(re.escape(p) for p in sorted(SECRET_PARAMS, key=len, reverse=True))
    + r")=[^&\s'\"]*"
)
_USERINFO_PASSWORD = re.compile(r"(://[^:/?#@\s]*):[^@/?#\s]*@")
# Replacing one secret can make another appear (the marker next to a secret's tail): rescan a few times.
_MAX_PASSES = 4

# The registry itself lives with the exception root (errors.py), the bottom layer, so that every
# StrongroomError's text is scrubbed by value too; these are its names for cloud code.
__all__ = ["forget_secret", "register_secret", "scrub"]


def _by_value(text: str, secrets: list[str]) -> str:
    """Replace every (possibly overlapping) occurrence of every secret by one marker per merged span."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        start = text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    if not spans:
        return text
    spans.sort()
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        out += [text[pos:start], REDACTED]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without secret parameter values, userinfo passwords, registered secrets or ``secrets``."""
    text = _PARAM_VALUE.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _USERINFO_PASSWORD.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)
    values = [s for s in {*registered_secrets(), *secrets} if s and len(s) >= MIN_SECRET_LENGTH]
    for _ in range(_MAX_PASSES):
        if not any(s in text for s in values):
            return text
        text = _by_value(text, values)
    # Still there (a secret built from the marker itself): say nothing rather than leak.
    return REDACTED if any(s in text for s in values) else text
