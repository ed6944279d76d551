"""Parsing and redacting the URIs users give for storage and KMS.

CockroachDB's URIs carry credentials in query parameters (``AWS_SECRET_ACCESS_KEY=...``), so every
place that shows a URI must go through :func:`redact`. Parameter names are case-sensitive, as in
CockroachDB.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlsplit

from .errors import UsageError

# Query parameters whose values are secrets, across every storage and KMS scheme we support.
SECRET_PARAMS = frozenset(
    {
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "CREDENTIALS",
        "BEARER_TOKEN",
        "AZURE_ACCOUNT_KEY",
        "AZURE_CLIENT_SECRET",
        "PIN",
        "pin-value",
    }
)
REDACTED = "redacted"


@dataclass(frozen=True)
class ParsedURI:
    """A URI split into parts; ``params`` keeps the last value of each query parameter."""

    raw: str
    scheme: str
    host: str
    path: str
    params: dict[str, str] = field(default_factory=dict)

    def check_params(self, allowed: Iterable[str], what: str = "KMS") -> None:
        """Refuse parameters we do not know, as CockroachDB does (``unknown KMS query parameters: X``)."""
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise UsageError(f"unknown {what} query parameters: {', '.join(unknown)}")

    def redacted(self) -> str:
        return redact(self.raw)


def parse_uri(uri: str) -> ParsedURI:
    if not isinstance(uri, str) or not uri.strip():
        raise UsageError("empty URI")
    if "://" not in uri and uri.startswith("/"):
        return ParsedURI(raw=uri, scheme="file", host="", path=uri, params={})
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise UsageError(f"malformed URI {redact_loose(uri)!r}: {exc}") from None
    if not parts.scheme:
        raise UsageError(f"malformed URI {redact_loose(uri)!r}: missing scheme (such as nodelocal://, s3://)")
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        params[key] = value
    return ParsedURI(raw=uri, scheme=parts.scheme.lower(), host=parts.netloc, path=parts.path, params=params)


def redact(uri: str) -> str:
    """The URI with every secret parameter value replaced by ``redacted`` (and any userinfo password)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return redact_loose(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else netloc
    if not parts.query:
        base = uri.split("?", 1)[0]
        return base if netloc == parts.netloc else base.replace(parts.netloc, netloc, 1)
    pairs = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        shown = REDACTED if key in SECRET_PARAMS else value
        pairs.append(f"{quote(key, safe='_-.')}={quote(shown, safe='/:_-.,=')}")
    prefix = uri.split("?", 1)[0]
    if netloc != parts.netloc:
        prefix = prefix.replace(parts.netloc, netloc, 1)
    return prefix + "?" + "&".join(pairs)


def redact_loose(text: str) -> str:
    """Best-effort redaction for strings that may not even parse as URIs."""
    if "?" not in text:
        return text
    head, _, query = text.partition("?")
    out = []
    for piece in query.split("&"):
        key, sep, _value = piece.partition("=")
        out.append(f"{key}={REDACTED}" if sep and key in SECRET_PARAMS else piece)
    return head + "?" + "&".join(out)
