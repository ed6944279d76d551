"""What a user asked for: one request object per backup operation, built once by a surface.

The CLI, the Python API, SQL statements, the HTTP API and schedules each build one of these and
hand it, unchanged, to the store's operations and on to the engine, so no layer re-declares the
options of another. ``describe()`` is the job description ``SHOW JOBS`` shows: CockroachDB's
statement text with every secret redacted, the same whichever surface started the job.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ..errors import UsageError
from ..uri import redact, redact_dsn, register_dsn_secrets
from .keys import Encryption

LATEST = "LATEST"


_UNITS = {
    "us": 1e-6, "µs": 1e-6, "microsecond": 1e-6, "ms": 1e-3, "millisecond": 1e-3,
    "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "d": 86400, "day": 86400,
}  # fmt: skip
_INTERVAL_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zµ]+)\s*", re.IGNORECASE)
# CockroachDB's follower_read_timestamp(): far enough back for any replica to serve; here, a time.
FOLLOWER_READ_LAG = timedelta(seconds=4.8)


def _unit(name: str) -> float | None:
    """Seconds in one ``name`` ('h', 'hour', 'hours', ...), or None for no unit we know."""
    name = name.lower()
    return _UNITS.get(name, _UNITS.get(name[:-1]) if name.endswith("s") and len(name) > 2 else None)


def parse_as_of(text: str, now: datetime | None = None) -> datetime:
    """``AS OF SYSTEM TIME`` as CockroachDB takes it: a timestamp (``'2026-11-23 10:00:00'``, UTC unless
    it says otherwise), an interval back from ``now`` (``'-1h'``, ``'-10m'``, ``'-1h30m'``, ``'-2 days'``),
    nanoseconds since the epoch (``1732357200000000000``, an HLC's ``.logical`` part ignored), or
    ``follower_read_timestamp()``."""
    now = now or datetime.now(UTC)
    raw = text.strip()
    value = raw[1:-1].replace("''", "'").strip() if len(raw) >= 2 and raw[0] == raw[-1] == "'" else raw
    shown = f"'{value}'"
    if value.lower() == "follower_read_timestamp()":
        return now - FOLLOWER_READ_LAG
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds, nanos = divmod(int(value.partition(".")[0]), 1_000_000_000)
        try:
            return datetime.fromtimestamp(seconds, tz=UTC) + timedelta(microseconds=nanos // 1000)
        except (OverflowError, OSError, ValueError):
            raise UsageError(f"AS OF SYSTEM TIME {shown}: nanoseconds since 1970 out of range") from None
    if value[:1] in ("-", "+"):
        body, pos, seconds_back = value[1:], 0, 0.0
        while pos < len(body):
            m = _INTERVAL_PART.match(body, pos)
            unit = _unit(m.group(2)) if m else None
            if m is None or unit is None:
                raise UsageError(
                    f"AS OF SYSTEM TIME {shown}: not an interval such as '-1h', '-10m', '-1h30m' or '-2 days'"
                )
            seconds_back += float(m.group(1)) * unit
            pos = m.end()
        if value[0] == "+" or seconds_back <= 0:
            raise UsageError(f"AS OF SYSTEM TIME {shown}: the interval must reach into the past, such as '-1h'")
        try:
            return now - timedelta(seconds=seconds_back)
        except OverflowError:
            raise UsageError(f"AS OF SYSTEM TIME {shown}: too far back") from None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"AS OF SYSTEM TIME {shown}: give a timestamp such as '2026-11-23 10:00:00' (UTC) or an interval "
            "such as '-1h'"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def collection_uris(value: str | Sequence[str]) -> tuple[str, ...]:
    """One collection URI, or a locality-aware set of them, as a tuple."""
    uris = (value,) if isinstance(value, str) else tuple(value)
    if not uris:
        raise UsageError("no backup location given")
    return uris


def _where(prep: str, uris: tuple[str, ...], subdir: str | None) -> str:
    shown = ", ".join(f"'{redact(u)}'" for u in uris)
    dest = shown if len(uris) == 1 else f"({shown})"
    if subdir is None:
        return f"{prep} {dest}"
    sub = LATEST if subdir.upper() == LATEST else f"'{subdir}'"
    return f"{prep} {sub} IN {dest}"


def _encryption_options(enc: Encryption) -> list[str]:
    if enc.passphrase is not None:
        return ["encryption_passphrase = '*****'"]
    if enc.groups:
        groups = ", ".join(
            "(" + ", ".join(f"'{redact(k)}'" for k in g) + (",)" if len(g) == 1 else ")") for g in enc.groups
        )
        return [f"kms = GROUPS({groups}) THRESHOLD {enc.threshold}"]
    if enc.kms:
        return ["kms = (" + ", ".join(f"'{redact(k)}'" for k in enc.kms) + ")"]
    return []


def _targets(databases: tuple[str, ...] | None, tables: tuple[str, ...] | None) -> str:
    if databases:
        return f" DATABASE {', '.join(databases)}"
    if tables:
        return f" TABLE {', '.join(tables)}"
    return ""


def _with(opts: list[str]) -> str:
    return f" WITH OPTIONS ({', '.join(opts)})" if opts else ""


def _on_server(dsn: str | None) -> str:
    """Which PostgreSQL server a job read or wrote, after the statement (its password redacted)."""
    return f" -- PostgreSQL {redact_dsn(dsn)}" if dsn is not None else ""


def _names(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(value) or None


@dataclass(frozen=True)
class BackupRequest:
    """``BACKUP [DATABASE ... | TABLE ...] INTO <collection> [WITH ...]``, or with ``incremental``
    ("LATEST" or a full backup's subdir) ``BACKUP ... INTO LATEST | '<subdir>' IN <collection>``.

    No databases and no tables: the whole store (``is_full_cluster``)."""

    into: tuple[str, ...]
    databases: tuple[str, ...] | None = None
    tables: tuple[str, ...] | None = None
    encryption: Encryption = field(default_factory=Encryption)
    incremental: str | None = None
    detached: bool = False
    #: Strongroom's addition: consent to write databases that are encrypted at rest into a backup
    #: without encryption (``WITH include_unencrypted_data``); refused without it.
    include_unencrypted_data: bool = False
    #: The PostgreSQL server (a DSN) whose databases to back up (``strongroom sql --postgres``);
    #: None: the store's own (SQLite) databases.
    postgres: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "into", collection_uris(self.into))
        object.__setattr__(self, "databases", _names(self.databases))
        object.__setattr__(self, "tables", _names(self.tables))
        if self.databases and self.tables:
            raise UsageError("back up either databases or tables, not both")
        if self.postgres is not None:
            register_dsn_secrets(self.postgres)
            if self.tables:
                raise UsageError("BACKUP TABLE of PostgreSQL: back up the database (RESTORE TABLE takes one table out)")
            if self.incremental is None and not self.databases:
                raise UsageError("a full backup of PostgreSQL names its databases: BACKUP DATABASE <name> INTO ...")

    @property
    def is_full_cluster(self) -> bool:
        return not self.databases and not self.tables

    @property
    def collection(self) -> str | tuple[str, ...]:
        """What the engine opens: one location, or the locality-aware set."""
        return self.into[0] if len(self.into) == 1 else self.into

    @property
    def shown_collection(self) -> str:
        """The collection as it may be shown (a metric's label): its URIs, redacted."""
        return ", ".join(redact(u) for u in self.into)

    def describe(self) -> str:
        opts = _encryption_options(self.encryption)
        opts += [name for name in ("detached", "include_unencrypted_data") if getattr(self, name)]
        return (
            f"BACKUP{_targets(self.databases, self.tables)} {_where('INTO', self.into, self.incremental)}"
            + _with(opts)
            + _on_server(self.postgres)
        )


@dataclass(frozen=True)
class RestoreRequest:
    """``RESTORE [DATABASE ... | TABLE ...] FROM LATEST | '<subdir>' IN <collection> [WITH ...]``."""

    from_: tuple[str, ...]
    subdir: str = LATEST
    databases: tuple[str, ...] | None = None
    tables: tuple[str, ...] | None = None
    new_db_name: str | None = None
    into_db: str | None = None
    encryption: Encryption = field(default_factory=Encryption)
    as_of: datetime | None = None
    detached: bool = False
    #: Strongroom's addition (``WITH verify``): SQLite's full integrity_check of every restored
    #: database. Off by default: every chunk is already authenticated and hash-checked.
    verify: bool = False
    #: CockroachDB's ``schema_only``: the databases' tables, indexes, views and triggers, no rows;
    #: ``verify_backup_table_data`` (with it) first reads every row of the backup.
    schema_only: bool = False
    verify_backup_table_data: bool = False
    #: CockroachDB's ``skip_missing_foreign_keys``: RESTORE TABLE leaves out a foreign key whose
    #: referenced table is not in the target database, instead of failing.
    skip_missing_foreign_keys: bool = False
    #: The PostgreSQL server (a DSN) to restore into; None: the store.
    postgres: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_", collection_uris(self.from_))
        if self.postgres is not None:
            register_dsn_secrets(self.postgres)
        object.__setattr__(self, "databases", _names(self.databases))
        object.__setattr__(self, "tables", _names(self.tables))
        if self.verify_backup_table_data and not self.schema_only:
            raise UsageError("to set the verify_backup_table_data option, the schema_only option must be set")
        if self.schema_only and self.tables:
            raise UsageError("schema_only restores whole databases: use RESTORE DATABASE")
        if self.databases and self.tables:
            raise UsageError("restore either databases or tables, not both")
        if self.new_db_name is not None and (self.tables or not self.databases or len(self.databases) != 1):
            raise UsageError("new_db_name can only be used for RESTORE DATABASE with a single target database")
        if self.into_db is not None and not self.tables:
            raise UsageError("into_db can only be used for RESTORE TABLE")

    @property
    def collection(self) -> str | tuple[str, ...]:
        return self.from_[0] if len(self.from_) == 1 else self.from_

    def describe(self) -> str:
        opts = _encryption_options(self.encryption)
        opts += [f"{n} = '{v}'" for n, v in (("new_db_name", self.new_db_name), ("into_db", self.into_db)) if v]
        flags = ("detached", "verify", "schema_only", "verify_backup_table_data", "skip_missing_foreign_keys")
        opts += [name for name in flags if getattr(self, name)]
        where = _where("FROM", self.from_, self.subdir)
        as_of = f" AS OF SYSTEM TIME '{self.as_of.isoformat()}'" if self.as_of else ""
        targets = _targets(self.databases, self.tables)
        return f"RESTORE{targets} {where}{as_of}" + _with(opts) + _on_server(self.postgres)


@dataclass(frozen=True)
class ShowBackupRequest:
    """``SHOW BACKUP LATEST | '<subdir>' IN <collection> [WITH ..., check_files]``."""

    in_: tuple[str, ...]
    subdir: str = LATEST
    encryption: Encryption = field(default_factory=Encryption)
    check_files: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_", collection_uris(self.in_))

    @property
    def collection(self) -> str | tuple[str, ...]:
        return self.in_[0] if len(self.in_) == 1 else self.in_


ADD_KMS, DROP_KMS, ROTATE_DATA_KEY = "add", "drop", "rotate"

# What DROP KMS cannot undo, said in its result and its job (SOPS #365, restic #1602).
DROP_KMS_CAVEAT = (
    "anyone who copied the old ENCRYPTION-INFO files can still unwrap the data key with the dropped KMS "
    "key for as long as that key works; ALTER BACKUP ... ROTATE DATA KEY revokes it for real"
)


@dataclass(frozen=True)
class AlterBackupRequest:
    """``ALTER BACKUP LATEST | '<subdir>' IN <collection>`` and one of: ``ADD NEW_KMS = ... WITH
    OLD_KMS = ...`` (CockroachDB's), ``DROP KMS = ... WITH OLD_KMS = ...`` (remove a wrap) or
    ``ROTATE DATA KEY WITH OLD_KMS = ... [, NEW_KMS = ...]`` (re-encrypt the chain under a new key)."""

    in_: tuple[str, ...]
    new_kms: tuple[str, ...] = ()
    old_kms: tuple[str, ...] = ()
    subdir: str = LATEST
    drop_kms: tuple[str, ...] = ()
    rotate: bool = False
    # ROTATE DATA KEY of a passphrase chain (Python API only for now): the passphrase that opens it,
    # and the one (with a new salt) that opens the rotated chain.
    old_passphrase: str | None = field(default=None, repr=False)
    new_passphrase: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_", collection_uris(self.in_))
        object.__setattr__(self, "new_kms", _names(self.new_kms) or ())
        object.__setattr__(self, "old_kms", _names(self.old_kms) or ())
        object.__setattr__(self, "drop_kms", _names(self.drop_kms) or ())
        if self.rotate and self.drop_kms:
            raise UsageError("ALTER BACKUP takes one of ADD NEW_KMS, DROP KMS or ROTATE DATA KEY")
        if self.old_passphrase is not None or self.new_passphrase is not None:
            if not self.rotate or self.old_kms or self.new_kms or not self.old_passphrase or not self.new_passphrase:
                raise UsageError(
                    "a passphrase chain is rotated with both old_encryption_passphrase and "
                    "new_encryption_passphrase, and no KMS"
                )
            Encryption(passphrase=self.old_passphrase)  # checks it and registers it as a secret
            Encryption(passphrase=self.new_passphrase)
            return
        if not self.old_kms:
            raise UsageError("ALTER BACKUP needs OLD_KMS: a KMS key that opens the backup now")
        if self.drop_kms and self.new_kms:
            raise UsageError("ALTER BACKUP ... DROP KMS takes no NEW_KMS (ADD NEW_KMS is a statement of its own)")
        if self.action == ADD_KMS and not self.new_kms:
            raise UsageError("ALTER BACKUP needs NEW_KMS and OLD_KMS")

    @property
    def action(self) -> str:
        return ROTATE_DATA_KEY if self.rotate else DROP_KMS if self.drop_kms else ADD_KMS

    @property
    def collection(self) -> str | tuple[str, ...]:
        return self.in_[0] if len(self.in_) == 1 else self.in_

    def describe(self) -> str:
        def uris(kms: tuple[str, ...]) -> str:
            return ", ".join(f"'{redact(k)}'" for k in kms)

        where = f"ALTER BACKUP {_where('', self.in_, self.subdir).strip()}"
        if self.action == DROP_KMS:
            return f"{where} DROP KMS = ({uris(self.drop_kms)}) WITH OLD_KMS = ({uris(self.old_kms)})"
        if self.action == ROTATE_DATA_KEY and self.old_passphrase is not None:
            return (
                f"{where} ROTATE DATA KEY WITH old_encryption_passphrase = '*****', new_encryption_passphrase = '*****'"
            )
        if self.action == ROTATE_DATA_KEY:
            new = f", NEW_KMS = ({uris(self.new_kms)})" if self.new_kms else ""
            return f"{where} ROTATE DATA KEY WITH OLD_KMS = ({uris(self.old_kms)}){new}"
        return f"{where} ADD NEW_KMS = ({uris(self.new_kms)}) WITH OLD_KMS = ({uris(self.old_kms)})"
