"""Keys of a write-only chain: one a backup host can append to while holding only public keys.

A full backup written with a KMS that wraps offline (an age recipient, an AWS asymmetric key) makes
three random secrets besides its data key ``K0``:

- the *dedup key* ``D``: chunk hashes of every layer of the chain are BLAKE3 keyed with a subkey of
  ``D`` (not of ``K0``), so the host can tell which chunks changed without reading a backup;
- the *ratchet seed* ``S0``: incremental ``n`` is sealed under ``K_n = HKDF(S_n, layer-key)`` where
  ``S_{n+1} = HKDF(S_n, next)``. The host keeps only ``S_n`` for its next layer, so once it has
  written layer ``n`` it can no longer derive ``K_n`` or anything before it (forward secrecy: a
  stolen host cannot read the chain it wrote);
- nothing else: ``D`` and ``S0`` are sealed under ``K0`` in the full backup's ``CHAIN-KEYS`` file, so
  whoever unwraps ``K0`` (RESTORE, SHOW BACKUP) derives every layer key with no further KMS call.

Each incremental records its ratchet step in a plaintext ``LAYER-KEY`` file (a changed step only
makes the layer fail to authenticate). The host's own view of each layer (``HOST-VIEW``: the
manifest without counts or schema, chunk-index copies ``*.hidx`` and, for an encrypted source,
copies ``*.hfpr`` of the keyed hashes of its ciphertext chunks) is sealed under a subkey of
``D``: what the next incremental needs, and nothing that holds row data.
"""

from __future__ import annotations

import re

from ..crypto import seal, subkey, unseal
from ..errors import EncryptionError, IntegrityError, NotFoundError
from ..storage import ExternalStorage
from .layout import incrementals_prefix

CHAIN_KEYS = "CHAIN-KEYS"
LAYER_KEY = "LAYER-KEY"
HOST_VIEW = "HOST-VIEW"
HOST_INDEX_SUFFIX = ".hidx"
HOST_FINGERPRINT_SUFFIX = ".hfpr"
_CHAIN_FORMAT = b"strongroom-chain/1\n"
_LAYER_FORMAT = "strongroom-ratchet/1 step="
_LAYER_RE = re.compile(rf"^{re.escape(_LAYER_FORMAT)}(\d+)\n?$")


def chunk_hash_key(dedup_key: bytes) -> bytes:
    return subkey(dedup_key, "strongroom/chain/chunk-hash/v1")


def host_view_key(dedup_key: bytes) -> bytes:
    return subkey(dedup_key, "strongroom/chain/host-view/v1")


def ratchet_next(state: bytes) -> bytes:
    return subkey(state, "strongroom/chain/ratchet/next")


def ratchet_layer_key(state: bytes) -> bytes:
    return subkey(state, "strongroom/chain/ratchet/layer-key")


def ratchet_state(seed: bytes, step: int) -> bytes:
    """``S_step`` from ``S0``: one HKDF per step (a chain has hundreds of layers, not millions)."""
    state = seed
    for _ in range(step):
        state = ratchet_next(state)
    return state


def encode_chain_keys(data_key: bytes, dedup_key: bytes, seed: bytes) -> bytes:
    return seal(data_key, _CHAIN_FORMAT + dedup_key + seed)


def read_chain_keys(storage: ExternalStorage, full_dir: str, data_key: bytes) -> tuple[bytes, bytes] | None:
    """``(D, S0)`` of a write-only chain, or None for an ordinary chain (no CHAIN-KEYS file)."""
    name = f"{full_dir.strip('/')}/{CHAIN_KEYS}"
    try:
        stored = storage.get(name)
    except NotFoundError:
        return None
    try:
        plain = unseal(data_key, stored)
    except EncryptionError as exc:
        raise EncryptionError(f"reading /{name}: {exc}") from None
    if not plain.startswith(_CHAIN_FORMAT) or len(plain) != len(_CHAIN_FORMAT) + 64:
        raise IntegrityError(f"/{name} is not a chain key file")
    body = plain[len(_CHAIN_FORMAT) :]
    return body[:32], body[32:]


def is_write_only_chain(storage: ExternalStorage, full_dir: str) -> bool:
    return storage.exists(f"{full_dir.strip('/')}/{CHAIN_KEYS}")


def layer_key_marker(step: int) -> bytes:
    return f"{_LAYER_FORMAT}{step}\n".encode()


def layer_steps(storage: ExternalStorage, full_dir: str) -> dict[str, int]:
    """Each incremental layer dir of the chain with its ratchet step (from its LAYER-KEY file)."""
    steps: dict[str, int] = {}
    for name, _size in storage.list(incrementals_prefix(full_dir)):
        if not name.endswith("/" + LAYER_KEY):
            continue
        m = _LAYER_RE.match(storage.get(name).decode("ascii", "replace"))
        if m is None:
            raise IntegrityError(f"/{name} is not a layer key marker")
        steps[name[: -len(LAYER_KEY) - 1]] = int(m.group(1))
    return steps


def layer_keys(storage: ExternalStorage, full_dir: str, seed: bytes) -> dict[str, bytes]:
    """The key of every incremental layer of a write-only chain, derived from ``S0``."""
    steps = layer_steps(storage, full_dir)
    keys: dict[str, bytes] = {}
    state, at = seed, 0
    for layer, step in sorted(steps.items(), key=lambda kv: kv[1]):
        state, at = ratchet_state(state, step - at), step
        keys[layer] = ratchet_layer_key(state)
    return keys
