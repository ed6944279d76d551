"""CockroachDB's backup collection layout, so tools and habits carry over.

- full backup: ``<collection>/YYYY/MM/DD-HHMMSS.ss/`` (UTC end time)
- incremental: ``<collection>/incrementals/<full subdir>/YYYYMMDD/HHMMSS.ss/``
- LATEST: ``metadata/latest/LATEST-<descending hex>`` holding the newest full subdir; newest sorts first.

Subdirs are written with a leading slash (``/2024/05/01-093257.93``) as CockroachDB shows them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ..errors import IntegrityError, NotFoundError, UsageError
from ..storage import ExternalStorage

MANIFEST = "BACKUP_MANIFEST"
CHECKSUM_SUFFIX = "-CHECKSUM"
ENCRYPTION_INFO = "ENCRYPTION-INFO"
LATEST_DIR = "metadata/latest"
LEGACY_LATEST = "LATEST"
INCREMENTALS = "incrementals"

_FULL_RE = re.compile(r"^/?(\d{4})/(\d{2})/(\d{2})-(\d{6})\.(\d{2})$")
_INC_RE = re.compile(r"^(\d{8})/(\d{6})\.(\d{2})$")


def full_subdir(end: datetime) -> str:
    end = end.astimezone(UTC)
    return end.strftime("/%Y/%m/%d-%H%M%S.") + f"{end.microsecond // 10000:02d}"


def incremental_dirname(end: datetime) -> str:
    end = end.astimezone(UTC)
    return end.strftime("%Y%m%d/%H%M%S.") + f"{end.microsecond // 10000:02d}"


def normalize_subdir(subdir: str) -> str:
    """Accept ``2024/05/01-093257.93`` or ``/2024/05/01-093257.93``; refuse anything else."""
    s = subdir.strip()
    if not _FULL_RE.match(s):
        raise UsageError(
            f"invalid backup subdirectory {subdir!r}: expected a path such as /2024/05/01-093257.93 "
            "(see SHOW BACKUPS IN ...)"
        )
    return "/" + s.lstrip("/")


def incrementals_prefix(full: str) -> str:
    return f"{INCREMENTALS}/{full.strip('/')}/"


def _encode_descending(text: str) -> bytes:
    """CockroachDB's ``EncodeStringDescending``: marker 0x13, bytes inverted (0x00 escaped), terminator."""
    out = bytearray([0x13])
    for b in text.encode():
        if b == 0:
            out += b"\xff\x00"  # inverted escape of 0x00 -> 0x00 0xff
        else:
            out.append(0xFF - b)
    out += b"\xff\xfe"
    return bytes(out)


def latest_name(now: datetime) -> str:
    stamp = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f000 +0000 UTC")
    return f"{LATEST_DIR}/LATEST-{_encode_descending(stamp).hex()}"


def write_latest(storage: ExternalStorage, full: str, now: datetime) -> None:
    storage.put(latest_name(now), full.encode(), create_only=True)


def read_latest(storage: ExternalStorage) -> str:
    """The newest full subdir; CockroachDB's errors when there is none."""
    for name, _size in storage.list(LATEST_DIR + "/LATEST-"):
        return _parse_latest(storage.get(name))  # newest sorts first
    if storage.exists(LEGACY_LATEST):
        return _parse_latest(storage.get(LEGACY_LATEST))
    raise NotFoundError(
        f"{storage.display_uri}: path does not contain a completed latest backup: "
        "no LATEST file found (is this a backup collection? SHOW BACKUPS IN ... lists its backups)"
    )


def _parse_latest(data: bytes) -> str:
    try:
        return normalize_subdir(data.decode())
    except (UnicodeDecodeError, UsageError):
        raise IntegrityError("malformed LATEST file") from None


def list_fulls(storage: ExternalStorage) -> list[str]:
    """Every completed full backup subdir (one whose manifest was written), oldest first."""
    out = []
    for name, _size in storage.list(""):
        if name.endswith("/" + MANIFEST) and not name.startswith(INCREMENTALS + "/"):
            sub = name[: -len(MANIFEST) - 1]
            if _FULL_RE.match(sub):
                out.append("/" + sub)
    return sorted(out)


def list_incrementals(storage: ExternalStorage, full: str) -> list[str]:
    """Completed incremental layer dirs (collection-relative) of one full backup, oldest first."""
    prefix = incrementals_prefix(full)
    out = []
    for name, _size in storage.list(prefix):
        rest = name[len(prefix) :]
        if rest.endswith("/" + MANIFEST) and _INC_RE.match(rest[: -len(MANIFEST) - 1]):
            out.append(prefix + rest[: -len(MANIFEST) - 1])
    return sorted(out)


def layer_dir(subdir_or_path: str) -> str:
    """The collection-relative directory of a layer given its full subdir or incremental path."""
    return subdir_or_path.strip("/")
