"""Parsing and redacting the URIs users give for storage and KMS.

CockroachDB's URIs carry credentials in query parameters (``AWS_SECRET_ACCESS_KEY=...``), so every
place that shows a URI must go through :func:`redact`. Parameter names are case-sensitive, as in
CockroachDB.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .errors import UsageError, register_secret

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
        "VAULT_TOKEN",
        "VAULT_SECRET_ID",
    }
)
REDACTED = "redacted"  # the same word errors.scrub writes
_SECRET_NAMES = frozenset(name.upper() for name in SECRET_PARAMS)
#: Longest path we accept: object stores take keys of up to 1,024 bytes, and a backup adds its
#: own names (``/2026/12/01-101500.00/data/...``) below the collection.
MAX_PATH_BYTES = 900
MAX_SEGMENT_BYTES = 255  # a file name, on every file system we write to


_ENDPOINT = re.compile(r"https?://[^\s/?#]+(/[^\s]*)?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def check_bucket_name(bucket: str, uri: str) -> str:
    """S3 and GCS bucket names: lowercase letters, digits, '.', '-' and '_', starting and ending
    with a letter or digit (the SDKs raise ValueError or panic on anything else)."""
    if not _BUCKET.fullmatch(bucket):
        raise UsageError(
            f"URI {redact(uri)!r}: {bucket!r} is not a valid bucket name (3-222 lowercase letters, digits, "
            "'.', '-' or '_', starting and ending with a letter or digit)"
        )
    return bucket


def is_secret_param(name: str) -> bool:
    """Is query parameter ``name`` a secret? Decoded and in any case, so that neither
    ``AWS%5FSECRET%5FACCESS%5FKEY`` nor ``aws_secret_access_key`` (nor ``0?AWS_SECRET_ACCESS_KEY``
    after a stray ``?``) slips past redaction."""
    plain = re.sub(r"[^A-Za-z0-9_-]", "", unquote(name)).upper()
    return any(secret in plain for secret in _SECRET_NAMES)  # over-redacting is the safe mistake


def _check_text(uri: str) -> None:
    """Refuse what no storage or KMS can take, before any library sees it (some panic on it)."""
    try:
        uri.encode()
    except UnicodeEncodeError:
        raise UsageError(f"URI {redact_loose(uri)!r} is not valid UTF-8 text") from None
    base, _, query = uri.partition("?")
    for key, value in _raw_params(query):  # also what urlsplit would file under a fragment
        if is_secret_param(key):
            register_secret(value)
            register_secret(value.replace(" ", "+"))
    for where, text in (("path", unquote(base)), *((f"parameter {k}", v) for k, v in _raw_params(query))):
        bad = next((ch for ch in text if ord(ch) < 0x20 or ord(ch) == 0x7F), None)
        if bad is not None:
            raise UsageError(
                f"URI {redact_loose(uri)!r}: the {where} holds a control character ({ord(bad):#04x}), "
                "which no storage or KMS accepts"
            )
    for key, value in _raw_params(query):
        if key.endswith(("ENDPOINT", "_URL", "AUTHORITY_HOST")) and value and not _ENDPOINT.fullmatch(value):
            raise UsageError(
                f"URI {redact_loose(uri)!r}: {key} must be an http(s) URL such as https://host:port, "
                f"without spaces (got {value!r})"
            )
        if "%" in key:
            raise UsageError(
                f"URI {redact_loose(uri)!r}: write query parameter names as they are ({unquote(key)}), "
                "not percent-encoded"
            )


def _raw_params(query: str) -> list[tuple[str, str]]:
    """(name as written, decoded value) of each query parameter."""
    out = []
    for piece in query.split("&") if query else []:
        key, _, value = piece.partition("=")
        out.append((key, unquote(value.replace("+", " "))))
    return out


def _shown(uri: str) -> str:
    shown = redact_loose(uri)
    return repr(shown if len(shown) <= 80 else shown[:80] + "...")


def check_path_length(path: str, uri: str) -> None:
    """Refuse paths an object store or a KMS would refuse later, with a traceback or a panic."""
    size = len(path.encode())
    if size > MAX_PATH_BYTES:
        raise UsageError(f"URI {_shown(uri)}: its path is {size} bytes long (at most {MAX_PATH_BYTES})")


def check_path_names(parsed: ParsedURI) -> None:
    """Refuse a storage path with a name no file system takes. Storage only: a KMS URI's path is a
    key identifier, not file names (an SSH RSA recipient is 372 characters holding ``/`` at random)."""
    longest = max(len(s.encode()) for s in unquote(parsed.path).split("/"))
    if longest > MAX_SEGMENT_BYTES:
        raise UsageError(
            f"URI {_shown(parsed.raw)}: a name in its path is {longest} bytes long (at most {MAX_SEGMENT_BYTES})"
        )


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
    _check_text(uri)
    if "://" not in uri and uri.startswith("/"):
        check_path_length(uri, uri)
        return ParsedURI(raw=uri, scheme="file", host="", path=uri, params={})
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise UsageError(f"malformed URI {redact_loose(uri)!r}: {exc}") from None
    if not parts.scheme:
        raise UsageError(f"malformed URI {redact_loose(uri)!r}: missing scheme (such as nodelocal://, s3://)")
    check_path_length(unquote(parts.path), uri)
    if parts.password:
        register_secret(parts.password)
        register_secret(unquote(parts.password))
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        params[key] = value
        if is_secret_param(key):
            register_secret(value)
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
        shown = REDACTED if is_secret_param(key) else value
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
        out.append(f"{key}={REDACTED}" if sep and is_secret_param(key) else piece)
    return head + "?" + "&".join(out)


# A PostgreSQL connection string, in its URI or key=value form (the ``postgres`` package parses it
# with libpq's rules; these only find the password, here so requests and job descriptions can
# redact a DSN without importing psycopg).
_DSN_URI_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@]*:)([^@]*)(@)")
_DSN_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``redacted`` (URI and key=value forms)."""
    return _DSN_KV_PASSWORD.sub(r"\1redacted", _DSN_URI_PASSWORD.sub(r"\1redacted\3", dsn))


def register_dsn_secrets(dsn: str) -> None:
    """Register what looks like a DSN's password as a secret (even in a DSN that does not parse)."""
    for m in _DSN_URI_PASSWORD.finditer(dsn):
        register_secret(m.group(2))
    for m in _DSN_KV_PASSWORD.finditer(dsn):
        register_secret(m.group(2).strip("'"))
