"""Which key encrypts a backup, and how a later operation gets it back.

Passphrase mode: key = PBKDF2(passphrase, salt) with one random salt per full backup, stored in
ENCRYPTION-INFO. KMS mode: one random 32-byte data key per full backup, wrapped by every KMS given
and stored in ENCRYPTION-INFO keyed by SHA-256(master key id). Incrementals, RESTORE, SHOW BACKUP
and ALTER BACKUP read the full backup's ENCRYPTION-INFO files (``-2``, ``-3``... from ALTER BACKUP),
newest first; every KMS URI given must appear in one file (CockroachDB's subset rule). A chain
started with a public key (an age recipient) also has chain keys: see ``chainkeys``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..crypto import (
    ChunkHasher,
    EncryptionInfo,
    appears_encrypted,
    kms_identity,
    new_salt,
    passphrase_key,
    seal,
    subkey,
    unseal,
)
from ..errors import EncryptionError, KMSError, StrongroomError, UsageError, WrapOnlyError, register_secret
from ..kms import KMS, can_decrypt, open_kms
from ..storage import ExternalStorage
from ..uri import redact
from .chainkeys import chunk_hash_key, layer_keys, read_chain_keys
from .layout import ENCRYPTION_INFO

DATA_KEY_SIZE = 32
KMSOpener = Callable[[str], KMS]
APPEARS_ENCRYPTED = 'file appears encrypted -- try specifying one of "encryption_passphrase" or "kms"'
NO_INFO = "could not find or read encryption information: no ENCRYPTION-INFO files found"
URI_NOT_USED = (
    "one of the provided URIs was not used when encrypting the base BACKUP: "
    "could not find an entry in the encryptedDataKeyMap"
)


@dataclass(frozen=True)
class Encryption:
    """What the user gave: a passphrase, or one or more KMS URIs, or nothing (unencrypted).

    ``kms_opener`` opens each KMS URI (default :func:`open_kms`); a store passes one that writes
    every call to its audit log (managed backups wrapped by a CMEK).
    """

    passphrase: str | None = None
    kms: tuple[str, ...] = field(default=())
    kms_opener: KMSOpener | None = field(default=None, compare=False)
    #: k-of-n key groups for a new full backup (key_groups.py): any ``threshold`` groups, one key of
    #: each, open it. ``kms`` then holds every group's URIs (what is opened, checked and redacted).
    groups: tuple[tuple[str, ...], ...] = ()
    threshold: int = 0

    def __post_init__(self) -> None:
        if self.passphrase is not None and self.kms:
            raise UsageError("cannot have both encryption_passphrase and kms option set")
        if self.passphrase is not None and self.passphrase == "":
            raise UsageError("encryption_passphrase must not be empty")
        if self.passphrase is not None:
            try:
                self.passphrase.encode()
            except (UnicodeEncodeError, AttributeError):
                raise UsageError("encryption_passphrase must be valid UTF-8 text") from None
            register_secret(self.passphrase)
        if isinstance(self.kms, str):
            object.__setattr__(self, "kms", (self.kms,))
        if self.groups:
            if self.passphrase is not None:
                raise UsageError("cannot have both encryption_passphrase and key groups")
            object.__setattr__(self, "groups", tuple(tuple(g) for g in self.groups))
            object.__setattr__(self, "kms", tuple(u for g in self.groups for u in g))

    @property
    def enabled(self) -> bool:
        return self.passphrase is not None or bool(self.kms)

    @property
    def kind(self) -> str:
        """``passphrase``, ``kms`` or ``none``: what a job's result and SHOW BACKUP report."""
        return "passphrase" if self.passphrase is not None else "kms" if self.kms else "none"

    def __repr__(self) -> str:
        if self.passphrase is not None:
            return "Encryption(passphrase='redacted')"
        if self.groups:
            shown = tuple(tuple(redact(u) for u in g) for g in self.groups)
            return f"Encryption(groups={shown!r}, threshold={self.threshold})"
        if self.kms:
            return f"Encryption(kms={tuple(redact(u) for u in self.kms)!r})"
        return "Encryption()"


class BackupKeys:
    """The key that seals a backup's files (None: unencrypted) and the chunk-hash key derived from it.

    A write-only chain (see ``chainkeys``) hashes chunks under its dedup key (``hash_key``) and seals
    each incremental under its own key: ``layer_keys`` maps a layer dir to it, ``key`` is the rest's.
    """

    def __init__(
        self, key: bytes | None, *, hash_key: bytes | None = None, layer_keys: dict[str, bytes] | None = None
    ) -> None:
        self.key = key
        self.hasher = ChunkHasher(hash_key or (subkey(key, "strongroom/chunk-hash/v1") if key else None))
        self.layer_keys = dict(layer_keys or {})
        self._rest = key  # the key of files outside every layer of layer_keys (the full backup's)

    def key_for(self, path: str) -> bytes | None:
        """The key that sealed the backup file ``path`` (collection-relative)."""
        for layer, key in self.layer_keys.items():
            if path.startswith(layer + "/"):
                return key
        return self._rest

    def for_layer(self, layer_dir: str) -> BackupKeys:
        """These keys as the files of ``layer_dir`` are sealed: its own key, the chain's hasher."""
        key = self.layer_keys.get(layer_dir.strip("/"))
        if key is None:
            return self
        keys = BackupKeys(key, layer_keys=self.layer_keys)
        keys.hasher, keys._rest = self.hasher, self._rest
        return keys

    @property
    def encrypted(self) -> bool:
        return self.key is not None

    def seal(self, data: bytes) -> bytes:
        return seal(self.key, data) if self.key else data

    def unseal(self, data: bytes, what: str) -> bytes:
        if self.key is None:
            if appears_encrypted(data[:7]):
                raise EncryptionError(APPEARS_ENCRYPTED)
            return data
        try:
            return unseal(self.key, data)
        except EncryptionError as exc:
            raise EncryptionError(f"{what}: {exc}") from None


@contextmanager
def opened_kms(uris: tuple[str, ...], opener: KMSOpener | None = None) -> Iterator[list[KMS]]:
    handles: list[KMS] = []
    try:
        for uri in uris:
            handles.append((opener or open_kms)(uri))
        yield handles
    finally:
        for h in handles:
            h.close()


def _kms_failure(kms: KMS, action: str, exc: Exception) -> KMSError:
    detail = str(exc) if isinstance(exc, StrongroomError) else type(exc).__name__
    return KMSError(f"{action} with KMS {redact(kms.uri)!r}: {detail}")


def new_backup_keys(enc: Encryption) -> tuple[BackupKeys, bytes | None]:
    """Keys for a new full backup, and the ENCRYPTION-INFO to write (None when unencrypted)."""
    if enc.passphrase is not None:
        salt = new_salt()
        return BackupKeys(passphrase_key(enc.passphrase, salt)), EncryptionInfo(salt=salt).encode()
    if enc.groups:
        from .key_groups import new_grouped_key  # it builds on this module

        data_key, info = new_grouped_key(enc.groups, enc.threshold, enc.kms_opener)
        return BackupKeys(data_key), info
    if enc.kms:
        data_key = os.urandom(DATA_KEY_SIZE)
        wrapped: dict[bytes, bytes] = {}
        with opened_kms(enc.kms, enc.kms_opener) as handles:
            for kms in handles:
                try:
                    wrapped[kms_identity(kms.master_key_id)] = kms.encrypt(data_key)
                except Exception as exc:
                    raise _kms_failure(kms, "failed to encrypt data key", exc) from None
        return BackupKeys(data_key), EncryptionInfo(encrypted_data_keys=wrapped).encode()
    return BackupKeys(None), None


_INFO_RE = re.compile(rf"^{ENCRYPTION_INFO}(?:-(\d+))?$")


def read_encryption_infos(storage: ExternalStorage, full_dir: str) -> list[tuple[str, EncryptionInfo]]:
    """ENCRYPTION-INFO files of a full backup, newest first (numeric order, unlike CockroachDB's listing)."""
    found: list[tuple[int, str]] = []
    prefix = full_dir.strip("/") + "/"
    for name, _size in storage.list(prefix + ENCRYPTION_INFO):
        m = _INFO_RE.match(name[len(prefix) :])
        if m:
            found.append((int(m.group(1) or 1), name))
    found.sort(reverse=True)
    return [(name, EncryptionInfo.decode(storage.get(name))) for _n, name in found]


def existing_backup_keys(storage: ExternalStorage, full_dir: str, enc: Encryption) -> BackupKeys:
    """Recover the key of an existing chain from its ENCRYPTION-INFO files and what the user gave."""
    infos = read_encryption_infos(storage, full_dir)
    if not infos:
        if enc.enabled:
            raise EncryptionError(NO_INFO)
        return BackupKeys(None)
    if not enc.enabled:
        raise EncryptionError(APPEARS_ENCRYPTED)
    if enc.passphrase is not None:
        salts = [info.salt for _name, info in infos if info.salt]
        if not salts:
            raise EncryptionError('this backup was encrypted with KMS keys, not a passphrase: specify "kms"')
        return BackupKeys(passphrase_key(enc.passphrase, salts[-1]))
    from .key_groups import grouped_info, unwrap_grouped_key

    grouped = grouped_info(infos)
    if grouped is not None:
        return chain_backup_keys(storage, full_dir, unwrap_grouped_key(grouped, enc.kms, enc.kms_opener))
    return chain_backup_keys(storage, full_dir, unwrap_data_key(infos, enc.kms, enc.kms_opener))


def chain_backup_keys(storage: ExternalStorage, full_dir: str, data_key: bytes) -> BackupKeys:
    """The keys of a chain given its data key: a write-only chain's dedup hash key and layer keys too."""
    chain = read_chain_keys(storage, full_dir, data_key)
    if chain is None:
        return BackupKeys(data_key)
    dedup_key, seed = chain
    return BackupKeys(data_key, hash_key=chunk_hash_key(dedup_key), layer_keys=layer_keys(storage, full_dir, seed))


def unwrap_data_key(
    infos: list[tuple[str, EncryptionInfo]], uris: tuple[str, ...], opener: KMSOpener | None = None
) -> bytes:
    """The data key, unwrapped by the first of ``uris`` that answers; all must be in one info file."""
    with opened_kms(uris, opener) as handles:
        ids = [kms_identity(k.master_key_id) for k in handles]
        entry = next(
            (info for _name, info in infos if all(i in info.encrypted_data_keys for i in ids)),
            None,
        )
        if entry is None:
            raise EncryptionError(URI_NOT_USED)
        if handles and not any(can_decrypt(k) for k in handles):
            # Public keys only (a write-only backup host): say what is missing, not one failure per key.
            shown = ", ".join(repr(redact(k.uri)) for k in handles)
            raise WrapOnlyError(
                f"cannot read this backup: {shown} can only encrypt (public keys); reading it needs a key "
                "that decrypts: an age identity (age:///?IDENTITY=<file>) or another KMS the backup was written with"
            )
        failures = []
        for kms, ident in zip(handles, ids, strict=True):
            try:
                key = kms.decrypt(entry.encrypted_data_keys[ident])
            except Exception as exc:
                failures.append(str(_kms_failure(kms, "failed to decrypt data key", exc)))
                continue
            if len(key) != DATA_KEY_SIZE:
                failures.append(f"KMS {redact(kms.uri)!r} returned a key of the wrong size")
                continue
            return key
        raise KMSError("; ".join(failures))


def add_kms(
    storage: ExternalStorage,
    full_dir: str,
    new_kms: tuple[str, ...],
    old_kms: tuple[str, ...],
    opener: KMSOpener | None = None,
) -> str:
    """ALTER BACKUP ... ADD NEW_KMS: wrap the data key under new KMSes into ENCRYPTION-INFO-<n+1>."""
    if not new_kms or not old_kms:
        raise UsageError("ALTER BACKUP needs both NEW_KMS and OLD_KMS")
    infos = read_encryption_infos(storage, full_dir)
    if not infos:
        raise EncryptionError(NO_INFO)
    from .key_groups import grouped_info

    if grouped_info(infos) is not None:
        raise UsageError(
            "this backup's key is split across key groups: ALTER BACKUP ... ADD NEW_KMS cannot add a key to a "
            "group; take a new full backup with the groups you want"
        )
    data_key = _unwrap_with_any(infos, old_kms, opener)
    wrapped: dict[bytes, bytes] = {}
    with opened_kms(new_kms, opener) as handles:
        for kms in handles:
            try:
                wrapped[kms_identity(kms.master_key_id)] = kms.encrypt(data_key)
            except Exception as exc:
                raise _kms_failure(kms, "failed to encrypt data key when adding new KMS", exc) from None
    name = f"{full_dir.strip('/')}/{ENCRYPTION_INFO}-{len(infos) + 1}"
    storage.put(name, EncryptionInfo(encrypted_data_keys=wrapped).encode(), create_only=True)
    return name


def _unwrap_with_any(
    infos: list[tuple[str, EncryptionInfo]], old_kms: tuple[str, ...], opener: KMSOpener | None
) -> bytes:
    """The data key, unwrapped by the first of ``old_kms`` that opens the chain (ALTER BACKUP's OLD_KMS)."""
    for uri in old_kms:
        try:
            return unwrap_data_key(infos, (uri,), opener)
        except EncryptionError:
            continue
    raise EncryptionError("no key in OLD_KMS matches a key that was previously used to encrypt the backup")


def drop_kms(
    storage: ExternalStorage,
    full_dir: str,
    drop: tuple[str, ...],
    old_kms: tuple[str, ...],
    opener: KMSOpener | None = None,
) -> str:
    """ALTER BACKUP ... DROP KMS: remove the wraps of ``drop`` from the chain's ENCRYPTION-INFO files.

    ENCRYPTION-INFO files are write-once, so this writes ``ENCRYPTION-INFO-<n+1>`` holding every wrap
    that stays (from all files: readers accept a URI found in any one file), and only then deletes
    the files that hold a dropped wrap. At every moment some file holds every remaining wrap, so a
    crash never leaves a chain that no remaining key opens; a rerun finishes the deletions.
    Returns the file written."""
    infos = read_encryption_infos(storage, full_dir)
    if not infos:
        raise EncryptionError(NO_INFO)
    if any(info.salt for _name, info in infos):
        raise UsageError("this backup is encrypted with a passphrase, not KMS keys: there is no KMS wrap to drop")
    from .key_groups import grouped_info

    if grouped_info(infos) is not None:
        raise UsageError(
            "this backup's key is split across key groups: DROP KMS cannot remove a key from a group; "
            "take a new full backup with the groups you want"
        )
    _unwrap_with_any(infos, old_kms, opener)  # the caller proves it holds a key of the chain
    with opened_kms(drop, opener) as handles:
        dropped = {kms_identity(k.master_key_id): k.uri for k in handles}
    present = {ident for _name, info in infos for ident in info.encrypted_data_keys}
    for ident, uri in dropped.items():
        if ident not in present:
            raise EncryptionError(f"KMS {redact(uri)!r} has no wrap of this backup's data key: nothing to drop")
    remaining: dict[bytes, bytes] = {}
    for _name, info in reversed(infos):  # oldest first: a newer file's wrap of the same key wins
        remaining.update({i: w for i, w in info.encrypted_data_keys.items() if i not in dropped})
    if not remaining:
        raise UsageError(
            "refusing to drop the last KMS wrap of this backup: nothing would open it; "
            "ADD NEW_KMS first, or ROTATE DATA KEY with a NEW_KMS"
        )
    number = max((int(m.group(1) or 1) for name, _info in infos if (m := _INFO_RE.match(name.rsplit("/", 1)[1]))))
    name = f"{full_dir.strip('/')}/{ENCRYPTION_INFO}-{number + 1}"
    storage.put(name, EncryptionInfo(encrypted_data_keys=remaining).encode(), create_only=True)
    for old, info in infos:
        if dropped.keys() & info.encrypted_data_keys.keys():
            storage.delete(old)
    return name
