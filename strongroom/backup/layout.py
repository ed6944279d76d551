"""CockroachDB's backup collection layout, so tools and habits carry over.

- full backup: ``<collection>/YYYY/MM/DD-HHMMSS.ss/`` (UTC end time)
- incremental: ``<collection>/incrementals/<full subdir>/YYYYMMDD/HHMMSS.ss/``
- LATEST: ``metadata/latest/LATEST-<descending hex>`` holding the newest full subdir; newest sorts first.

Subdirs are written with a leading slash (``/2024/05/01-093257.93``) as CockroachDB shows them.
"""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import IntegrityError, NotFoundError, UsageError
from ..storage import ExternalStorage

MANIFEST = "BACKUP_MANIFEST"
CHECKSUM_SUFFIX = "-CHECKSUM"
ENCRYPTION_INFO = "ENCRYPTION-INFO"
LATEST_DIR = "metadata/latest"
LEGACY_LATEST = "LATEST"
INCREMENTALS = "incrementals"
LOCK_PREFIX = "BACKUP-LOCK-"

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


def write_latest(storage: ExternalStorage, full: str, name: str) -> None:
    storage.put(name, full.encode(), create_only=True)


def read_latest(storage: ExternalStorage) -> str:
    """The newest full subdir; CockroachDB's errors when there is none."""
    return read_latest_entry(storage)[1]


def read_latest_entry(storage: ExternalStorage) -> tuple[str, str]:
    """The newest LATEST file's name and the full subdir it holds."""
    for name, _size in storage.list(LATEST_DIR + "/LATEST-"):
        return name, _parse_latest(storage.get(name))  # newest sorts first
    if storage.exists(LEGACY_LATEST):
        return LEGACY_LATEST, _parse_latest(storage.get(LEGACY_LATEST))
    raise NotFoundError(
        f"{storage.display_uri}: path does not contain a completed latest backup: "
        "no LATEST file found (is this a backup collection? SHOW BACKUPS IN ... lists its backups)"
    )


def _parse_latest(data: bytes) -> str:
    try:
        return normalize_subdir(data.decode())
    except (UnicodeDecodeError, UsageError):
        raise IntegrityError("malformed LATEST file") from None


@dataclass
class LayerState:
    """What a listing shows of one layer dir: a manifest, a BACKUP-LOCK (a backup running or killed),
    other files. A backup writes its lock first and removes it last, so files without a manifest and
    without a lock were not left by a killed backup: something removed the manifest."""

    dir: str
    manifest: bool = False
    lock: bool = False
    files: bool = False

    @property
    def partial(self) -> bool:
        """Left by a running or killed backup: never used, never an error."""
        return self.lock

    @property
    def manifest_removed(self) -> bool:
        return self.files and not self.manifest and not self.lock


def _scan(storage: ExternalStorage, prefix: str, pattern: re.Pattern[str], depth: int) -> dict[str, LayerState]:
    out: dict[str, LayerState] = {}
    for name, _size in storage.list(prefix):
        parts = name[len(prefix) :].split("/")
        sub = "/".join(parts[:depth])
        if len(parts) <= depth or not pattern.match(sub):
            continue
        st = out.setdefault(prefix + sub, LayerState(prefix + sub))
        leaf = "/".join(parts[depth:])
        if leaf == MANIFEST:
            st.manifest = True
        elif leaf.startswith(LOCK_PREFIX):
            st.lock = True
        else:
            st.files = True
    return out


def scan_fulls(storage: ExternalStorage) -> dict[str, LayerState]:
    """Every full backup dir (``/YYYY/MM/DD-HHMMSS.ss``) with what it holds, whatever its state."""
    found = _scan(storage, "", _FULL_RE, 3)
    return {"/" + d: st for d, st in found.items() if not d.startswith(INCREMENTALS + "/")}


def scan_incrementals(storage: ExternalStorage, full: str) -> dict[str, LayerState]:
    """Every incremental layer dir of one full backup (collection-relative) with what it holds."""
    return _scan(storage, incrementals_prefix(full), _INC_RE, 2)


def latest_contents(storage: ExternalStorage) -> set[str]:
    """Every full subdir some LATEST file names."""
    out = set()
    for name, _size in storage.list(LATEST_DIR + "/LATEST-"):
        with suppress(IntegrityError):
            out.add(_parse_latest(storage.get(name)))
    return out


def full_complete(storage: ExternalStorage, st: LayerState, named: set[str] | None = None) -> bool:
    """A full backup completed: its manifest is there and its lock is gone, or (killed between
    writing LATEST and removing its lock) a LATEST file names it."""
    if not st.manifest:
        return False
    if not st.lock:
        return True
    return ("/" + st.dir.strip("/")) in (named if named is not None else latest_contents(storage))


def list_fulls(storage: ExternalStorage) -> list[str]:
    """Every completed full backup subdir, oldest first (a killed backup's dir is not one)."""
    named: set[str] | None = None
    out = []
    for sub, st in scan_fulls(storage).items():
        if st.manifest and st.lock and named is None:
            named = latest_contents(storage)
        if full_complete(storage, st, named):
            out.append(sub)
    return sorted(out)


def list_incrementals(storage: ExternalStorage, full: str) -> list[str]:
    """Completed incremental layer dirs (collection-relative) of one full backup, oldest first."""
    return sorted(d for d, st in scan_incrementals(storage, full).items() if st.manifest and not st.lock)


def latest_files(storage: ExternalStorage) -> list[tuple[str, str | None]]:
    """Every ``LATEST-*`` file, newest first, with the full subdir it holds (None: malformed)."""
    out: list[tuple[str, str | None]] = []
    for name, _size in storage.list(LATEST_DIR + "/LATEST-"):
        try:
            out.append((name, _parse_latest(storage.get(name))))
        except IntegrityError:
            out.append((name, None))
        except NotFoundError:  # removed since the listing
            continue
    return out


_LAYER_RE = re.compile(
    r"^(?:(\d{4}/\d{2}/\d{2}-\d{6}\.\d{2})|"
    r"(incrementals/\d{4}/\d{2}/\d{2}-\d{6}\.\d{2}/\d{8}/\d{6}\.\d{2}))/."
)


def layer_of(name: str) -> str | None:
    """The layer dir (collection-relative) an object of the collection lies in, or None."""
    m = _LAYER_RE.match(name)
    if m is None:
        return None
    return m.group(1) or m.group(2)


def end_time_of(layer: str) -> datetime:
    """A layer's end time (UTC, to the hundredth of a second) as its dir name encodes it."""
    parts = layer.strip("/").split("/")
    if parts[0] == INCREMENTALS and len(parts) == 6:
        stamp = parts[4] + parts[5]  # YYYYMMDD + HHMMSS.ss
    elif len(parts) == 3:
        stamp = parts[0] + parts[1] + parts[2].replace("-", "")
    else:
        raise UsageError(f"not a backup layer dir: /{layer.strip('/')}")
    return datetime.strptime(stamp + "0000", "%Y%m%d%H%M%S.%f").replace(tzinfo=UTC)


def layer_dir(subdir_or_path: str) -> str:
    """The collection-relative directory of a layer given its full subdir or incremental path."""
    return subdir_or_path.strip("/")
