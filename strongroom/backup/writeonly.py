"""The write-only backup host's side of a write-only chain (see ``chainkeys`` for the keys).

The host keeps, per chain it started, one small state file in its keyring (``<keyring>/chains/
<chain id>.json``, mode 0600, written atomically): the chain's dedup key ``D`` and the ratchet state
``S_n`` for its next incremental. It never keeps the data key or an earlier ratchet state, so what a
thief of the host can read is the HOST-VIEW files (database names, sizes, times, keyed chunk hashes)
and layers it has yet to write; never an old backup's rows. The chain id is the SHA-256 of the full
backup's ENCRYPTION-INFO file, which is random (it holds wrapped random keys) and public.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..crypto import kms_identity
from ..errors import EncryptionError
from ..kms import default_keyring, wraps_offline
from ..storage import ExternalStorage
from .chainkeys import chunk_hash_key, host_view_key, ratchet_layer_key, ratchet_next
from .keys import URI_NOT_USED, BackupKeys, Encryption, opened_kms, read_encryption_infos
from .layout import ENCRYPTION_INFO
from .manifest import FileRef, Manifest

_STATE_FORMAT = "strongroom-host-chain/1"


def wants_write_only_chain(enc: Encryption) -> bool:
    """A full backup starts a write-only chain when one of its KMSes wraps with public material only."""
    if not enc.kms:
        return False
    with opened_kms(enc.kms, enc.kms_opener) as handles:
        return any(wraps_offline(k) for k in handles)


def chain_id(storage: ExternalStorage, full_dir: str) -> str:
    return hashlib.sha256(storage.get(f"{full_dir.strip('/')}/{ENCRYPTION_INFO}")).hexdigest()[:32]


def _state_path(cid: str) -> Path:
    return default_keyring() / "chains" / f"{cid}.json"


@dataclass
class HostChain:
    """A chain this host appends to: its dedup key and the ratchet state of its next layer."""

    chain_id: str
    dedup_key: bytes
    step: int
    state: bytes

    @property
    def hash_key(self) -> bytes:
        return chunk_hash_key(self.dedup_key)

    @property
    def view_keys(self) -> BackupKeys:
        return BackupKeys(host_view_key(self.dedup_key))

    def save(self) -> None:
        """Replace the state file atomically (write, fsync, rename): the old ratchet state is gone."""
        path = _state_path(self.chain_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {
            "format": _STATE_FORMAT,
            "dedup_key": self.dedup_key.hex(),
            "step": self.step,
            "state": self.state.hex(),
        }
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(body).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def advance(self) -> tuple[int, bytes]:
        """The step and key of the next layer; the state moves past it (saved) before it is used."""
        step, key = self.step, ratchet_layer_key(self.state)
        self.step, self.state = step + 1, ratchet_next(self.state)
        self.save()
        return step, key


def start_chain(cid: str, dedup_key: bytes, seed: bytes) -> HostChain:
    """The host's state after writing a full backup: layer 1 next; ``S0`` (and the data key) forgotten."""
    chain = HostChain(cid, dedup_key, 1, ratchet_next(seed))
    chain.save()
    return chain


def load_chain(storage: ExternalStorage, full_dir: str) -> HostChain | None:
    cid = chain_id(storage, full_dir)
    try:
        raw = json.loads(_state_path(cid).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EncryptionError(f"cannot read this host's state of chain {cid}: {exc}") from None
    if raw.get("format") != _STATE_FORMAT:
        raise EncryptionError(f"this host's state of chain {cid} is not in a format it knows")
    return HostChain(cid, bytes.fromhex(raw["dedup_key"]), int(raw["step"]), bytes.fromhex(raw["state"]))


def check_uris_used(storage: ExternalStorage, full_dir: str, enc: Encryption) -> None:
    """CockroachDB's subset rule without unwrapping: every KMS given is an entry of one ENCRYPTION-INFO."""
    if not enc.kms:
        raise EncryptionError('this backup is encrypted: specify "kms" (the public keys it was written with)')
    infos = read_encryption_infos(storage, full_dir)
    with opened_kms(enc.kms, enc.kms_opener) as handles:
        ids = [kms_identity(k.master_key_id) for k in handles]
    if not any(all(i in info.encrypted_data_keys for i in ids) for _name, info in infos):
        raise EncryptionError(URI_NOT_USED)


def host_view(manifest: Manifest, indexes: dict[str, FileRef], fingerprints: dict[str, FileRef]) -> Manifest:
    """What the host keeps of a layer: enough for the next incremental, no schema and no counts."""
    dbs = [
        replace(
            d,
            index=indexes[d.name],
            objects=[],
            rows=0,
            index_entries=0,
            bytes=0,
            total_rows=None,
            total_index_entries=None,
            total_bytes=None,
            fingerprints=fingerprints.get(d.name),
        )
        for d in manifest.databases
    ]
    return replace(manifest, databases=dbs)
