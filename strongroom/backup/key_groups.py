"""k-of-n key groups (SOPS's key groups, for backups): no single KMS, HSM or laptop opens the backup.

``kms = GROUPS(('aws:///a', 'gs:///b'), ('age:///c',), ('pkcs11:...',)) THRESHOLD 2``: the backup's
random data key is split with Shamir's scheme into one share per group, any ``threshold`` of which
rebuild it; each group's share is wrapped by every KMS of that group, so any one key of a group
gives that group's share. RESTORE (and incrementals, SHOW BACKUP...) then take ``kms = (...)`` with
one key from each of ``threshold`` groups.

The arithmetic is pycryptodome's ``Shamir`` (GF(2^128), 16-byte secrets): a 32-byte key is split
as two halves with the same share indexes. Nothing here computes in a field by hand.

In ENCRYPTION-INFO, next to CockroachDB's map of wrapped keys (so the file's format is unchanged):

- each KMS's entry (under SHA-256 of its master key id) wraps ``SHARE_MAGIC | group | share index
  | share`` instead of the data key itself;
- one entry under SHA-256 of ``GROUPS_ID`` holds the groups' shape, in the clear: the threshold,
  the number of groups, and SHA-256 of the data key. The hash lets a restore tell a rebuilt key
  from a wrong one (too few or forged shares) before it reads a byte of the backup; the key is 256
  random bits, so its hash reveals nothing usable. Changing the shape only makes a rebuild fail.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

from ..crypto import EncryptionInfo, kms_identity
from ..errors import EncryptionError, KMSError, UsageError
from ..uri import redact
from .keys import DATA_KEY_SIZE, KMSOpener, _kms_failure, opened_kms

GROUPS_ID = "strongroom:key-groups/v1"
SHARE_MAGIC = b"SRKG1"
_HALF = DATA_KEY_SIZE // 2


def _shamir() -> Any:
    try:
        from Crypto.Protocol.SecretSharing import Shamir
    except ImportError as exc:
        raise ImportError(
            "key groups need pycryptodome's Shamir secret sharing: pip install 'strongroom[groups]'",
            name="Crypto",
        ) from exc
    return Shamir


def check_groups(groups: Sequence[Sequence[str]], threshold: int) -> None:
    """A usable shape: 2 to 255 groups, each with a key, no key in two groups, 1 <= threshold <= groups."""
    if len(groups) < 2:
        raise UsageError("GROUPS needs two or more key groups (for one group, give kms = (...))")
    if len(groups) > 255:
        raise UsageError(f"GROUPS has {len(groups)} groups: at most 255")
    if any(not g for g in groups):
        raise UsageError("every key group in GROUPS needs at least one KMS URI")
    if not 1 <= threshold <= len(groups):
        raise UsageError(f"THRESHOLD {threshold}: give a number from 1 to {len(groups)} (the number of groups)")
    flat = [u for g in groups for u in g]
    if len(set(flat)) != len(flat):
        raise UsageError("a KMS URI appears in two key groups: each key belongs to one group")


def new_grouped_key(
    groups: Sequence[Sequence[str]], threshold: int, opener: KMSOpener | None = None
) -> tuple[bytes, bytes]:
    """A new data key and the ENCRYPTION-INFO that holds it split across ``groups``."""
    check_groups(groups, threshold)
    shamir = _shamir()
    data_key = os.urandom(DATA_KEY_SIZE)
    n = len(groups)
    low = shamir.split(threshold, n, data_key[:_HALF])
    high = shamir.split(threshold, n, data_key[_HALF:])
    wrapped: dict[bytes, bytes] = {}
    for group_no, (uris, (index, a), (index_b, b)) in enumerate(zip(groups, low, high, strict=True)):
        assert index == index_b
        share = SHARE_MAGIC + bytes([group_no, index]) + a + b
        with opened_kms(tuple(uris), opener) as handles:
            for kms in handles:
                ident = kms_identity(kms.master_key_id)
                if ident in wrapped:
                    raise UsageError(f"KMS {redact(kms.uri)!r} names the same key as another KMS given")
                try:
                    wrapped[ident] = kms.encrypt(share)
                except Exception as exc:
                    raise _kms_failure(kms, "failed to encrypt a key share", exc) from None
    shape = {"threshold": threshold, "groups": n, "key_sha256": hashlib.sha256(data_key).hexdigest()}
    wrapped[kms_identity(GROUPS_ID)] = json.dumps(shape, sort_keys=True).encode()
    return data_key, EncryptionInfo(encrypted_data_keys=wrapped).encode()


def grouped_info(infos: Sequence[tuple[str, EncryptionInfo]]) -> EncryptionInfo | None:
    """The ENCRYPTION-INFO of a chain whose key is split in groups, or None."""
    ident = kms_identity(GROUPS_ID)
    return next((info for _name, info in infos if ident in info.encrypted_data_keys), None)


def unwrap_grouped_key(info: EncryptionInfo, uris: Sequence[str], opener: KMSOpener | None = None) -> bytes:
    """Rebuild the data key from the shares the KMSes ``uris`` unwrap (one per group counts)."""
    try:
        shape = json.loads(info.encrypted_data_keys[kms_identity(GROUPS_ID)])
        threshold, n, key_hash = int(shape["threshold"]), int(shape["groups"]), str(shape["key_sha256"])
    except (ValueError, KeyError, TypeError):
        raise EncryptionError("malformed key groups in ENCRYPTION-INFO") from None
    shares: dict[int, tuple[int, bytes]] = {}  # group -> (share index, share)
    failures: list[str] = []
    unknown = 0
    with opened_kms(tuple(uris), opener) as handles:
        for kms in handles:
            entry = info.encrypted_data_keys.get(kms_identity(kms.master_key_id))
            if entry is None:
                unknown += 1
                continue
            try:
                share = kms.decrypt(entry)
            except Exception as exc:
                failures.append(str(_kms_failure(kms, "failed to decrypt a key share", exc)))
                continue
            if len(share) != len(SHARE_MAGIC) + 2 + DATA_KEY_SIZE or not share.startswith(SHARE_MAGIC):
                failures.append(f"KMS {redact(kms.uri)!r} unwrapped something that is not a key share")
                continue
            group, index = share[len(SHARE_MAGIC)], share[len(SHARE_MAGIC) + 1]
            shares.setdefault(group, (index, share[len(SHARE_MAGIC) + 2 :]))
    if unknown and not shares and not failures:
        raise EncryptionError(
            "one of the provided URIs was not used when encrypting the base BACKUP: "
            "could not find an entry in the encryptedDataKeyMap"
        )
    if len(shares) < threshold:
        detail = f" ({'; '.join(failures)})" if failures else ""
        raise KMSError(
            f"this backup's key is split across {n} key groups, any {threshold} of which open it: the keys "
            f"given open {len(shares)} group{'' if len(shares) == 1 else 's'}{detail}; give one key from each of "
            f"{threshold} different groups"
        )
    shamir = _shamir()
    chosen = sorted(shares.values())[:threshold]
    low = shamir.combine([(i, s[:_HALF]) for i, s in chosen])
    high = shamir.combine([(i, s[_HALF:]) for i, s in chosen])
    data_key = bytes(low) + bytes(high)
    if hashlib.sha256(data_key).hexdigest() != key_hash:
        raise EncryptionError("the key shares given do not rebuild this backup's key (a share was changed?)")
    return data_key
