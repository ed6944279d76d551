"""The key hierarchy of one store region: CMEK → store key (KEK) → data keys (DEKs) → databases.

Each region keeps one small file per *generation*, ``<store>/keys/<region>/KEYS-<gen:06d>`` (JSON):

- the region's key spec: the KMS URI that wraps the store key (the customer's CMEK, or, without
  CMEK, a local key file: CockroachDB's self-hosted encryption at rest), and its status;
- the store key, wrapped by that KMS (one KMS decrypt opens the region);
- the data-key registry, sealed with the store key (CockroachDB's ``DataKeysRegistry``): every data
  key still in use, the active one, and which data key each database file is encrypted with.

A change is a new generation: written to a temp file, fsynced, hard-linked into place (create-only,
so two writers cannot both win), the directory fsynced, then older generations deleted. Readers
take the newest complete generation, so a crash at any point leaves either the old or the new keys,
never a mix: this is Pebble's atomic-marker idea with the file name as the marker. Writers also
hold ``.lock`` (flock) so concurrent processes serialise their read-modify-write.

Re-keying a database takes two generations around the SQLite rekey: first ``rekey_to`` records the
new key beside the old one, then (after SQLite committed the rekey) the file moves to the new key.
Whatever the crash point, one of the two recorded keys opens the file.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..crypto import seal, unseal
from ..errors import EncryptionError, KMSError, StrongroomError, UsageError
from ..kms import open_kms
from ..uri import parse_uri, redact
from .audit import AuditedKMS, AuditLog

KEY_SIZE = 32
DEFAULT_ROTATION_PERIOD = timedelta(days=30)
FORMAT = 1
_KEYS_FILE = re.compile(r"^KEYS-(\d{6})$")

#: CockroachDB Cloud's key types (``CMEKKeyType``), extended with the schemes we support beyond it.
KEY_TYPES = {
    "aws": "AWS_KMS",
    "aws-kms": "AWS_KMS",
    "gs": "GCP_CLOUD_KMS",
    "gcp-kms": "GCP_CLOUD_KMS",
    "azure-kms": "AZURE_KEY_VAULT",
    "pkcs11": "PKCS11_HSM",
    "vault": "HASHICORP_VAULT",
    "local": "LOCAL_KEY_FILE",
}

# Region statuses, CockroachDB Cloud's ``CMEKStatus`` names. Without CMEK a region is DISABLED (its
# store key is wrapped by a local key file); the transient ENABLING/ROTATING/REVOKING live only in
# the running server, the failures are persisted with a user message.
DISABLED, ENABLED, REVOKED = "DISABLED", "ENABLED", "REVOKED"
ENABLE_FAILED, ROTATE_FAILED, REVOKE_FAILED = "ENABLE_FAILED", "ROTATE_FAILED", "REVOKE_FAILED"


def key_type(uri: str) -> str:
    scheme = parse_uri(uri).scheme
    try:
        return KEY_TYPES[scheme]
    except KeyError:
        raise UsageError(f'no KMS found for scheme "{scheme}" in {redact(uri)!r}') from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def new_key_id() -> str:
    """CockroachDB's key ids: the hex of 32 random bytes."""
    return os.urandom(32).hex()


# ------------------------------------------------------------------------------- data-key registry


@dataclass
class DataKey:
    key: bytes = field(repr=False)  # never in a repr, log or traceback
    created: str
    store_key_id: str
    #: Made while the region had CMEK, so it was never sealed under a store key that a local key
    #: file could unwrap (CockroachDB's ``was_exposed``, inverted). Keys made before CMEK was
    #: enabled are retired by the next data key rotation.
    under_cmek: bool = False


@dataclass
class FileKey:
    """The data key a database file is encrypted with (and, mid re-key, the one it is moving to)."""

    key_id: str
    rekey_to: str | None = None


@dataclass
class Registry:
    """CockroachDB's ``DataKeysRegistry``, plus the file → data key map (its file registry)."""

    store_key_id: str
    active_data_key_id: str
    data_keys: dict[str, DataKey] = field(default_factory=dict)
    files: dict[str, FileKey] = field(default_factory=dict)
    rotation_period_s: int = int(DEFAULT_ROTATION_PERIOD.total_seconds())
    #: Secrets the store keeps for later use (a backup schedule's KMS URIs or passphrase), sealed
    #: here so they share the registry's protection: the store key seals them, the CMEK wraps that,
    #: a store key rotation re-seals them, and a revoked CMEK leaves them unreadable.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)

    def to_bytes(self) -> bytes:
        doc = {
            "store_key_id": self.store_key_id,
            "active_data_key_id": self.active_data_key_id,
            "data_keys": {
                kid: {
                    "key": _b64(k.key),
                    "created": k.created,
                    "store_key_id": k.store_key_id,
                    "under_cmek": k.under_cmek,
                }
                for kid, k in self.data_keys.items()
            },
            "files": {name: asdict(f) for name, f in self.files.items()},
            "rotation_period_s": self.rotation_period_s,
        }
        if self.secrets:  # absent in older registries, and in any that never kept one
            doc["secrets"] = self.secrets
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Registry:
        doc = json.loads(data)
        return cls(
            store_key_id=doc["store_key_id"],
            active_data_key_id=doc["active_data_key_id"],
            data_keys={
                kid: DataKey(_unb64(k["key"]), k["created"], k["store_key_id"], k.get("under_cmek", False))
                for kid, k in doc["data_keys"].items()
            },
            files={name: FileKey(**f) for name, f in doc["files"].items()},
            rotation_period_s=int(doc["rotation_period_s"]),
            secrets={str(k): str(v) for k, v in doc.get("secrets", {}).items()},
        )

    def copy(self) -> Registry:
        return Registry.from_bytes(self.to_bytes())

    def add_data_key(self, *, under_cmek: bool) -> str:
        kid = new_key_id()
        self.data_keys[kid] = DataKey(os.urandom(KEY_SIZE), _now(), self.store_key_id, under_cmek)
        self.active_data_key_id = kid
        return kid

    @property
    def active_data_key(self) -> DataKey:
        return self.data_keys[self.active_data_key_id]

    def drop_unused_data_keys(self) -> list[str]:
        """Forget data keys no file uses any more (the active one always stays)."""
        used = {self.active_data_key_id}
        for f in self.files.values():
            used.add(f.key_id)
            if f.rekey_to:
                used.add(f.rekey_to)
        dropped = [kid for kid in self.data_keys if kid not in used]
        for kid in dropped:
            del self.data_keys[kid]
        return dropped


# ------------------------------------------------------------------------------------ region file


@dataclass(frozen=True)
class CMEKSpec:
    """A CMEK as a client named it: the KMS URI the store uses, the URI as the client wrote it (an
    AWS key ARN, a GCP ``projects/...`` id; "" when it is the KMS URI itself) and its principal."""

    uri: str
    given_uri: str = ""
    auth_principal: str | None = None

    def __repr__(self) -> str:  # either URI may carry KMS credentials
        return f"CMEKSpec(uri={redact(self.uri)!r}, given_uri={self.shown!r}, auth_principal={self.auth_principal!r})"

    @property
    def shown(self) -> str:
        """The URI as the client gave it, redacted."""
        return redact(self.given_uri or self.uri)


@dataclass
class KeyRecord:
    """A CMEK the region had, or was asked to take and did not: the API's ``key_infos`` beside the
    current key. ``uri`` is the URI as the client gave it, redacted: the store never uses a past key
    again, so a credential the client has since replaced is not kept on disk for it."""

    uri: str
    type: str
    auth_principal: str | None
    #: DISABLED (superseded by another key: Cloud's "finished being disabled"), REVOKED (revoked,
    #: then superseded), ENABLE_FAILED or ROTATE_FAILED (the key was asked for and never took).
    status: str
    created_at: str
    updated_at: str
    user_message: str = ""


#: Past keys kept per region: enough for any client's history view, and a bounded key file (the
#: audit log keeps every use of every key).
MAX_KEY_HISTORY = 50


@dataclass
class RegionSpec:
    """The plaintext part of a region's key file: what wraps the store key, and the region's status."""

    region: str
    key_uri: str
    cmek: bool
    status: str
    store_key_id: str
    store_key_created: str
    wrapped_store_key: bytes
    cmek_enabled_at: str | None = None
    auth_principal: str | None = None
    user_message: str = ""
    updated_at: str = ""
    #: The CMEK as the client wrote it (GET shows it back, so a client finds its key by the URI it
    #: sent); "" in older key files and when it is ``key_uri`` itself.
    given_uri: str = ""
    #: When the current CMEK became the region's (None in older key files: ``cmek_enabled_at``).
    key_since: str | None = None
    #: The current key's own status when ``status`` is a failed change to another key ("" = status).
    key_status: str = ""
    #: Past and failed CMEKs, newest first (see KeyRecord). Replaced, never mutated in place:
    #: ``replace()`` copies of a spec share the list.
    key_history: list[KeyRecord] = field(default_factory=list)

    def __repr__(self) -> str:  # the key URIs may carry KMS credentials: shown redacted
        shown = {**asdict(self), "key_uri": redact(self.key_uri), "given_uri": redact(self.given_uri)}
        return "RegionSpec(" + ", ".join(f"{name}={value!r}" for name, value in shown.items()) + ")"

    @property
    def key_type(self) -> str:
        return key_type(self.key_uri)

    @property
    def shown_uri(self) -> str:
        """The CMEK's URI as the client gave it, redacted."""
        return redact(self.given_uri or self.key_uri)

    @property
    def current_key_status(self) -> str:
        return self.key_status or self.status

    def as_record(self, status: str, now: str) -> KeyRecord:
        """The current CMEK as a past key with ``status``."""
        return KeyRecord(
            uri=self.shown_uri,
            type=self.key_type,
            auth_principal=self.auth_principal,
            status=status,
            created_at=self.key_since or self.cmek_enabled_at or now,
            updated_at=now,
        )


def _encode_file(generation: int, spec: RegionSpec, sealed_registry: bytes) -> bytes:
    doc = {"format": FORMAT, "generation": generation, **asdict(spec)}
    doc["wrapped_store_key"] = _b64(spec.wrapped_store_key)
    doc["registry"] = _b64(sealed_registry)
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _decode_file(data: bytes) -> tuple[int, RegionSpec, bytes]:
    doc = json.loads(data)
    if doc.pop("format", None) != FORMAT:
        raise StrongroomError("unsupported key file format")
    generation = int(doc.pop("generation"))
    sealed = _unb64(doc.pop("registry"))
    doc["wrapped_store_key"] = _unb64(doc["wrapped_store_key"])
    doc["key_history"] = [KeyRecord(**k) for k in doc.get("key_history", [])]
    return generation, RegionSpec(**doc), sealed


def generations(folder: Path) -> list[int]:
    """Committed generations in ``folder``, newest first."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted((int(m.group(1)) for n in names if (m := _KEYS_FILE.match(n))), reverse=True)


def read_spec(folder: Path) -> tuple[int, RegionSpec, bytes] | None:
    """The newest generation's plaintext part, without any KMS call (None if the region has none)."""
    for _attempt in range(5):
        gens = generations(folder)
        if not gens:
            return None
        try:
            return _decode_file((folder / f"KEYS-{gens[0]:06d}").read_bytes())
        except FileNotFoundError:
            continue  # replaced by a newer generation while we listed: look again
    raise StrongroomError(f"{folder}: key files keep changing; try again")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def region_lock(folder: Path) -> Iterator[None]:
    """Serialise key-file writers across processes."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def commit_generation(folder: Path, spec: RegionSpec, sealed_registry: bytes) -> int:
    """Write the next generation atomically and delete the older ones; returns its number.

    Temp file, fsync, hard link (create-only: the commit point), fsync of the directory. The caller
    holds :func:`region_lock`.
    """
    gens = generations(folder)
    generation = (gens[0] if gens else 0) + 1
    name = f"KEYS-{generation:06d}"
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, _encode_file(generation, spec, sealed_registry))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(tmp, folder / name)
    os.unlink(tmp)
    _fsync_dir(folder)
    for old in gens:
        (folder / f"KEYS-{old:06d}").unlink(missing_ok=True)
    # A writer killed between its link and its unlink left its temp file: a second name of an old
    # generation, whose wrapped store key and data keys must go with it (after a store key or CMEK
    # change, they are what the change was meant to retire).
    for stale in folder.glob(".KEYS-*.tmp"):
        stale.unlink(missing_ok=True)
    return generation


def wrap_checked(kms: AuditedKMS, key: bytes, shown_uri: str) -> bytes:
    """Wrap ``key`` and prove the wrap unwraps before anything depends on it."""
    wrapped = kms.encrypt(key)
    if kms.decrypt(wrapped) != key:
        raise KMSError(f"{shown_uri}: the key did not decrypt what it encrypted")
    return wrapped


class RegionKeys:
    """One region's unwrapped store key and data-key registry, kept in step with its key files."""

    def __init__(
        self, folder: Path, generation: int, spec: RegionSpec, store_key: bytes, registry: Registry, audit: AuditLog
    ) -> None:
        self.folder = folder
        self.generation = generation
        self.spec = spec
        self._store_key = store_key
        self.registry = registry
        self._audit = audit
        # Threads of one process (serve's requests and scheduler) share this object: a refresh
        # must not interleave with a commit and leave an older generation in memory.
        self._mutex = threading.RLock()

    @property
    def region(self) -> str:
        return self.spec.region

    def __repr__(self) -> str:  # never the keys
        return f"RegionKeys(region={self.region!r}, generation={self.generation}, status={self.spec.status})"

    # -- KMS calls (each one audited) --------------------------------------------------------------
    def _kms(self, uri: str, purpose: str) -> AuditedKMS:
        return AuditedKMS(open_kms(uri), self._audit, self.region, purpose)

    @staticmethod
    def _unwrap(spec: RegionSpec, audit: AuditLog, purpose: str) -> bytes:
        kms = AuditedKMS(open_kms(spec.key_uri), audit, spec.region, purpose)
        what = "CMEK" if spec.cmek else "store key file"
        try:
            key = kms.decrypt(spec.wrapped_store_key)
        except StrongroomError as exc:
            raise KMSError(
                f'cannot open region "{spec.region}": its {what} {redact(spec.key_uri)} '
                f"cannot decrypt the store key: {exc}"
            ) from None
        finally:
            kms.close()
        if len(key) != KEY_SIZE:
            raise KMSError(f'cannot open region "{spec.region}": the store key unwrapped to {len(key)} bytes')
        return key

    def _wrap(self, uri: str, store_key: bytes, purpose: str) -> bytes:
        kms = self._kms(uri, purpose)
        try:
            return wrap_checked(kms, store_key, redact(uri))
        finally:
            kms.close()

    # -- create, load, refresh ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        folder: Path,
        region: str,
        key_uri: str,
        *,
        cmek: bool,
        audit: AuditLog,
        rotation_period: timedelta = DEFAULT_ROTATION_PERIOD,
        auth_principal: str | None = None,
    ) -> RegionKeys:
        """A new region: a store key wrapped by ``key_uri`` and a first data key (generation 1)."""
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        store_key, store_key_id = os.urandom(KEY_SIZE), new_key_id()
        registry = Registry(store_key_id=store_key_id, active_data_key_id="")
        registry.rotation_period_s = int(rotation_period.total_seconds())
        registry.add_data_key(under_cmek=cmek)
        now = _now()
        spec = RegionSpec(
            region=region,
            key_uri=key_uri,
            cmek=cmek,
            status=ENABLED if cmek else DISABLED,
            store_key_id=store_key_id,
            store_key_created=now,
            wrapped_store_key=b"",
            cmek_enabled_at=now if cmek else None,
            auth_principal=auth_principal,
            updated_at=now,
        )
        keys = cls(folder, 0, spec, store_key, registry, audit)
        spec.wrapped_store_key = keys._wrap(key_uri, store_key, "create store key")
        with keys._locked():
            keys._write(spec, registry, store_key)
        return keys

    @classmethod
    def load(
        cls, folder: Path, audit: AuditLog, *, purpose: str = "open store", allow_revoked: bool = False
    ) -> RegionKeys:
        found = read_spec(folder)
        if found is None:
            raise EncryptionError(f"{folder}: no key files")
        generation, spec, sealed = found
        if spec.status == REVOKED and not allow_revoked:
            raise KMSError(
                f'region "{spec.region}" cannot start: its CMEK {redact(spec.key_uri)} was revoked '
                f"({spec.updated_at}); after restoring the store's access to the key, enable it again "
                "(strongroom cmek enable)"
            )
        store_key = cls._unwrap(spec, audit, purpose)
        registry = cls._unseal(spec, store_key, sealed)
        return cls(folder, generation, spec, store_key, registry, audit)

    @staticmethod
    def _unseal(spec: RegionSpec, store_key: bytes, sealed: bytes) -> Registry:
        try:
            registry = Registry.from_bytes(unseal(store_key, sealed))
        except EncryptionError:
            raise EncryptionError(
                f'region "{spec.region}": the data-key registry does not open with store key {spec.store_key_id[:16]}'
            ) from None
        if registry.store_key_id != spec.store_key_id:
            raise EncryptionError(f'region "{spec.region}": store key ID {spec.store_key_id} was not found')
        return registry

    def refresh(self, *, allow_revoked: bool = False) -> bool:
        """Catch up with a newer generation written by another process; True if anything changed."""
        with self._mutex:
            found = read_spec(self.folder)
            if found is None or found[0] == self.generation:
                return False
            generation, spec, sealed = found
            if spec.status == REVOKED and not allow_revoked:
                raise KMSError(
                    f'region "{spec.region}": its CMEK {redact(spec.key_uri)} was revoked ({spec.updated_at})'
                )
            store_key = self._store_key
            if spec.store_key_id != self.spec.store_key_id:
                store_key = self._unwrap(spec, self._audit, "reload rotated store key")
            self.registry = self._unseal(spec, store_key, sealed)
            self.generation, self.spec, self._store_key = generation, spec, store_key
            return True

    # -- committing a new generation ----------------------------------------------------------------
    def _locked(self) -> AbstractContextManager[None]:
        return region_lock(self.folder)

    def _write(self, spec: RegionSpec, registry: Registry, store_key: bytes) -> None:
        """Commit ``spec`` + ``registry`` as the next generation (caller holds the lock)."""
        spec = replace(spec, updated_at=_now())
        generation = commit_generation(self.folder, spec, seal(store_key, registry.to_bytes()))
        self.generation, self.spec, self.registry, self._store_key = generation, spec, registry, store_key

    def update(
        self,
        change: Callable[[RegionSpec, Registry], bytes | None],
        *,
        allow_revoked: bool = False,
    ) -> None:
        """Apply ``change`` to copies of the newest spec and registry and commit them.

        ``change`` may return a new store key (then the registry is sealed with it; the caller must
        have set ``spec.wrapped_store_key`` and ``spec.store_key_id`` to match).
        """
        with self._mutex, self._locked():
            self.refresh(allow_revoked=allow_revoked)
            spec, registry = replace(self.spec), self.registry.copy()
            new_store_key = change(spec, registry)
            self._write(spec, registry, new_store_key or self._store_key)

    # -- kept secrets ------------------------------------------------------------------------------
    def keep_secret(self, name: str, value: str | None) -> None:
        """Seal ``value`` into the registry under ``name`` (None: forget it), as a new generation."""

        def change(spec: RegionSpec, registry: Registry) -> None:
            if value is None:
                registry.secrets.pop(name, None)
            else:
                registry.secrets[name] = value

        self.update(change)

    def secret(self, name: str) -> str | None:
        with self._mutex:
            self.refresh()
            return self.registry.secrets.get(name)

    # -- data keys of files ------------------------------------------------------------------------
    def file_keys(self, name: str) -> list[bytes]:
        """The keys that may open database ``name``: its recorded key, then the one it is moving to."""
        entry = self.registry.files.get(name)
        if entry is None:
            return []
        ids = [entry.key_id] + ([entry.rekey_to] if entry.rekey_to else [])
        return [self.registry.data_keys[kid].key for kid in ids if kid in self.registry.data_keys]

    def assign(self, name: str) -> bytes:
        """The key for a new database file: the active data key, recorded before the file exists."""
        entry = self.registry.files.get(name)
        if entry is None or entry.key_id not in self.registry.data_keys:

            def change(spec: RegionSpec, registry: Registry) -> None:
                registry.files[name] = FileKey(registry.active_data_key_id)

            self.update(change)
        return self.file_keys(name)[0]

    def forget(self, name: str) -> None:
        if name in self.registry.files:

            def change(spec: RegionSpec, registry: Registry) -> None:
                registry.files.pop(name, None)

            self.update(change)

    def rotation_due(self, now: datetime | None = None) -> bool:
        created = datetime.fromisoformat(self.registry.active_data_key.created)
        return (now or datetime.now(UTC)) - created >= timedelta(seconds=self.registry.rotation_period_s)

    # -- rotations ---------------------------------------------------------------------------------
    def new_data_key(self) -> str:
        """Make a new active data key (new files use it); returns its id."""
        made: list[str] = []

        def change(spec: RegionSpec, registry: Registry) -> None:
            made.append(registry.add_data_key(under_cmek=spec.cmek))

        self.update(change)
        return made[0]

    def rotate_store_key(self) -> None:
        """A new store key wrapped by the same KMS; the registry is resealed with it, and (as in
        CockroachDB) a new data key is made under the new store key."""
        new_key, new_id = os.urandom(KEY_SIZE), new_key_id()
        wrapped = self._wrap(self.spec.key_uri, new_key, "rotate store key")

        def change(spec: RegionSpec, registry: Registry) -> bytes:
            spec.store_key_id, spec.store_key_created, spec.wrapped_store_key = new_id, _now(), wrapped
            spec.user_message = ""
            registry.store_key_id = new_id
            registry.add_data_key(under_cmek=spec.cmek)
            return new_key

        self.update(change)

    def set_cmek(self, cmek: CMEKSpec, *, enabling: bool) -> None:
        """Protect the region with CMEK ``cmek`` (enable, or rotate to a new key or key version).

        Enabling makes a new store key wrapped by the CMEK and a new data key under it (CockroachDB
        Cloud's steps 1 and 2); the registry, with the older data keys that existing files still
        use, is resealed under the new store key, so from now on nothing opens without the CMEK.
        Rotating re-wraps the same store key with the new key (version). A CMEK other than the
        current one becomes a past key (DISABLED, or REVOKED if it was revoked), and failed
        attempts are dropped: this change is their outcome.
        """
        uri = cmek.uri
        key_type(uri)
        if enabling or not self.spec.cmek:
            store_key, store_key_id = os.urandom(KEY_SIZE), new_key_id()
        else:
            store_key, store_key_id = self._store_key, self.spec.store_key_id
        wrapped = self._wrap(uri, store_key, "enable CMEK" if enabling else "rotate CMEK")
        first = not self.spec.cmek

        def change(spec: RegionSpec, registry: Registry) -> bytes:
            now = _now()
            if store_key_id != spec.store_key_id:
                spec.store_key_id, spec.store_key_created = store_key_id, now
                registry.store_key_id = store_key_id
                registry.add_data_key(under_cmek=True)
            history = [k for k in spec.key_history if k.status not in (ENABLE_FAILED, ROTATE_FAILED)]
            same_key = (spec.key_uri, spec.given_uri, spec.auth_principal) == (uri, cmek.given_uri, cmek.auth_principal)
            if spec.cmek and not same_key:
                was = REVOKED if spec.current_key_status == REVOKED else DISABLED
                history.insert(0, spec.as_record(was, now))
            if not spec.cmek or not same_key or spec.key_since is None:
                spec.key_since = now
            spec.key_history = history[:MAX_KEY_HISTORY]
            spec.key_uri, spec.given_uri, spec.wrapped_store_key = uri, cmek.given_uri, wrapped
            spec.auth_principal = cmek.auth_principal
            spec.cmek, spec.status, spec.key_status, spec.user_message = True, ENABLED, "", ""
            if first or spec.cmek_enabled_at is None:
                spec.cmek_enabled_at = now
            return store_key

        self.update(change, allow_revoked=True)

    def set_failed(self, status: str, message: str, attempted: CMEKSpec) -> None:
        """Record a CMEK change to ``attempted`` that failed: the region's status is ``status``
        (ENABLE_FAILED, ROTATE_FAILED), the attempted key a failed record beside the current one,
        which keeps its own status (it still protects the region)."""

        def change(spec: RegionSpec, registry: Registry) -> None:
            now = _now()
            failed = KeyRecord(
                uri=redact(attempted.given_uri or attempted.uri),
                type=key_type(attempted.uri),
                auth_principal=attempted.auth_principal,
                status=status,
                created_at=now,
                updated_at=now,
                user_message=message,
            )
            history = [k for k in spec.key_history if k.status not in (ENABLE_FAILED, ROTATE_FAILED)]
            spec.key_history = [failed, *history][:MAX_KEY_HISTORY]
            spec.key_status = spec.current_key_status
            spec.status, spec.user_message = status, message

        self.update(change, allow_revoked=True)

    def set_status(self, status: str, message: str = "") -> None:
        def change(spec: RegionSpec, registry: Registry) -> None:
            if status != spec.status:  # a new status is the current key's own
                spec.key_status = ""
            spec.status, spec.user_message = status, message

        self.update(change, allow_revoked=True)


def set_revoked_on_disk(folder: Path) -> None:
    """Mark a region REVOKED without unwrapping its keys (only the plaintext part changes)."""
    with region_lock(folder):
        found = read_spec(folder)
        if found is None:
            raise EncryptionError(f"{folder}: no key files")
        _generation, spec, sealed = found
        revoked = replace(spec, status=REVOKED, key_status="", user_message="", updated_at=_now())
        commit_generation(folder, revoked, sealed)
