"""ALTER BACKUP: ADD NEW_KMS (engine.alter_backup), DROP KMS, and ROTATE DATA KEY.

DROP KMS removes a wrap (keys.drop_kms). It cannot reach copies: whoever kept an old ENCRYPTION-INFO
file can still unwrap the data key while that KMS key works. ROTATE DATA KEY is the real revocation:
the whole chain is re-encrypted under a new random data key, and the old files are removed.

On-disk design of a rotation of the chain of full backup ``F`` (incrementals ``I1..In``):

1. A new *generation* is written beside the old one: full subdir ``F'`` = F's name plus 10 ms (the
   first free name; it sorts right after ``F`` and before any later full), its incrementals under
   ``incrementals/F'/`` with the same names as F's. Every new layer gets a ``BACKUP-LOCK`` (op
   ``rotate``) first, so the new generation is *partial* (never used, layout.LayerState) until the
   switch. Then ``F'/ENCRYPTION-INFO`` (the new key wrapped by NEW_KMS, or by OLD_KMS when no
   NEW_KMS is given), and layer by layer, oldest first: every pack re-sealed (same plaintext, so
   every chunk keeps its offset), every chunk index re-hashed with the new chunk-hash key (each
   distinct chunk decoded once), fingerprints reset (they hash the source's ciphertext with the old
   key, which cannot be recomputed: the next incremental decrypts every chunk once), partitions,
   and the manifest (same end and start times, job id and counts; new paths) last.
   ``F/ROTATING-<job>`` names ``F'`` so a killed rotation can be finished or undone.
2. The switch: the incrementals' locks go (their full is still partial, so nothing uses them yet),
   then, if LATEST named ``F``, a new LATEST file naming ``F'`` (a single create: the atomic switch),
   then ``F'``'s lock. Before LATEST, the old chain is what every reader sees; from it, the new.
   For a chain LATEST does not name, removing ``F'``'s lock is the switch.
3. The old chain goes, as a forget removes layers (lifecycle): LATEST files naming ``F``, a
   forget lock in every old layer, then each layer's files (manifest first), newest layer first.

A crash or kill before the switch leaves the old chain untouched and a partial new generation, which
the next ROTATE (or backup on this host, or prune) removes; a cancel removes it at once. A crash after
the switch leaves a complete new chain and an old one that the next ROTATE of the collection finishes
removing (it finds ``ROTATING-<job>`` naming a complete ``F'``). Every restore point keeps its end time;
only the full subdir's name moves by 10 ms.

Limits: memory holds one old→new digest pair per distinct chunk of the chain (64 bytes per 64 KiB,
~1 MiB per GiB) besides the streamed 4 MiB pieces; a partial generation that a rotation killed on
another host leaves waits for ``prune`` (its lock's owner cannot be checked from here); two
rotations of one chain at once are not locked against each other (the second to switch finds the
old chain changed and undoes its own work, or both complete and the older new chain stays).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import timedelta

from ..errors import ConflictError, EncryptionError, StrongroomError, UsageError
from ..storage import ExternalStorage, StorageContext
from ..uri import redact
from . import layout
from .chainkeys import read_chain_keys
from .data import (
    NO_FINGERPRINT,
    BackupImage,
    ChunkIndex,
    FingerprintWriter,
    IndexWriter,
    SealedObjectWriter,
    StoredFile,
    iter_fingerprints,
)
from .destinations import Destinations
from .engine import Clock, _chain, _destinations, _open_chain, _resolve_full, _write_partitions, alter_backup, utcnow
from .jobs import Progress, new_job_id
from .key_groups import grouped_info
from .keys import (
    NO_INFO,
    BackupKeys,
    Encryption,
    _unwrap_with_any,
    drop_kms,
    existing_backup_keys,
    new_backup_keys,
    read_encryption_infos,
)
from .lifecycle import DEFAULT_GRACE, _chain_busy, _delete_layer_files, _remove_locks
from .manifest import FileRef, Manifest, read_manifest, write_manifest
from .owners import lock_content, remove_abandoned_layers
from .requests import ADD_KMS, DROP_KMS, DROP_KMS_CAVEAT, AlterBackupRequest

ROTATING_PREFIX = "ROTATING-"
_STEP = timedelta(milliseconds=10)  # the resolution of a full subdir's name
_PIECE = 4 << 20  # bytes of a pack re-sealed per read: memory stays flat whatever the pack size


@dataclass(frozen=True)
class AlterResult:
    """What an ALTER BACKUP did: the file written (ADD / DROP) or the new full subdir (ROTATE), and
    a note for the user."""

    action: str
    written: str
    note: str

    COLUMNS = ("action", "written", "note")

    @property
    def row(self) -> tuple[str, str, str]:
        return (self.action, self.written, self.note)


def alter(
    request: AlterBackupRequest,
    *,
    context: StorageContext | None = None,
    progress: Progress | None = None,
    job_id: int | None = None,
    clock: Clock = utcnow,
) -> AlterResult:
    """Every ALTER BACKUP, whichever surface asked."""
    if request.action == ADD_KMS:
        return AlterResult("add kms", alter_backup(request, context=context), "")
    if request.action == DROP_KMS:
        with _destinations(request.collection, context) as dests:
            full, _latest = _resolve_full(dests.default, request.subdir)
            name = drop_kms(dests.default, full, request.drop_kms, request.old_kms)
        return AlterResult("drop kms", name, DROP_KMS_CAVEAT)
    return _rotate(request, context, progress, job_id or new_job_id(), clock)


# --------------------------------------------------------------------------------------------- ROTATE


class _Move:
    """Where a path of the old chain lies in the new generation."""

    def __init__(self, old_full: str, new_full: str) -> None:
        self.pairs = [
            (layout.incrementals_prefix(old_full), layout.incrementals_prefix(new_full)),
            (old_full.strip("/") + "/", new_full.strip("/") + "/"),
        ]

    def __call__(self, path: str) -> str:
        for old, new in self.pairs:
            if (path + "/").startswith(old):
                return new + path[len(old) :] if len(path) >= len(old) else new.rstrip("/")
        raise StrongroomError(f"/{path} is not in the chain being rotated")


def _new_subdir(storage: ExternalStorage, full: str) -> str:
    """The first free full subdir after ``full``; refused if another full lies in between (the new
    chain must sort where the old one did, or LATEST's rollback check would see it as newer)."""
    scanned = layout.scan_fulls(storage)
    named = layout.latest_contents(storage)
    fulls = sorted(scanned)
    # A partial full (a killed backup's or rotation's, perhaps another host's, waiting for prune) is
    # never used, so it bounds nothing; its name is still taken.
    later = [f for f in fulls if f > full and (not scanned[f].lock or layout.full_complete(storage, scanned[f], named))]
    at = layout.end_time_of(full)
    for _ in range(100):
        at += _STEP
        candidate = layout.full_subdir(at)
        if later and candidate >= later[0]:
            break
        if candidate in fulls:
            continue
        # Incrementals under a full that does not exist: orphans of a rotation killed after its
        # incrementals lost their locks (prune removes them too). Nothing else writes there.
        for name, _size in list(storage.list(layout.incrementals_prefix(candidate))):
            storage.delete(name)
        return candidate
    raise ConflictError(f"no free backup subdir right after {full} to write its rotated chain into")


def _finish_rotations(dests: Destinations) -> list[str]:
    """Finish what killed rotations left: an old chain whose new generation is complete loses its
    remaining files; a marker whose new generation never completed is removed (the partial new
    layers are removed by owners.remove_abandoned_layers). Returns the old fulls removed."""
    storage = dests.default
    fulls = layout.scan_fulls(storage)
    named = layout.latest_contents(storage)
    done = []
    for name, _size in list(storage.list("")):
        leaf = name.rsplit("/", 1)[-1]
        if not leaf.startswith(ROTATING_PREFIX):
            continue
        old = "/" + name.rsplit("/", 1)[0]
        if old not in fulls:
            continue
        new = storage.get(name).decode(errors="replace").strip()
        st = fulls.get(new)
        if st is not None and layout.full_complete(storage, st, named) and _twins(storage, fulls, old, new):
            _remove_old_chain(dests, old, int(leaf[len(ROTATING_PREFIX) :] or 0))
            done.append(old)
        elif st is None or not st.lock:
            storage.delete(name)
    return done


def _twins(storage: ExternalStorage, fulls: dict[str, layout.LayerState], old: str, new: str) -> bool:
    """``new`` is what a rotation of ``old`` writes: the next full after it, with incrementals of the
    same names. The marker is a plain file, so this is what keeps a forged one from naming any
    complete full and having us delete a chain that was never rotated."""
    if not old < new or any(old < f < new for f in fulls):
        return False
    names = [
        set(d[len(layout.incrementals_prefix(f)) :] for d in layout.list_incrementals(storage, f)) for f in (old, new)
    ]
    return names[0] <= names[1]


def _remove_old_chain(dests: Destinations, full: str, job_id: int) -> None:
    """Step 3 of the module docstring, with lifecycle's deletion of a layer."""
    storage = dests.default
    latest = layout.latest_files(storage)
    for name, named in latest[1:] if latest and latest[0][1] == full else latest:
        if named == full:
            storage.delete(name)
    layers = [full.strip("/"), *layout.list_incrementals(storage, full)]
    layers += [d for d in layout.scan_incrementals(storage, full) if d not in layers]
    for d in layers:
        lock = f"{d}/{layout.LOCK_PREFIX}{job_id}"
        if not storage.exists(lock):
            storage.put(lock, lock_content("forget"), create_only=True)
    for d in sorted(layers[1:], reverse=True) + layers[:1]:
        _delete_layer_files(dests, d, keep=f"{d}/{layout.LOCK_PREFIX}{job_id}")
        _remove_locks(dests, d)


def _reseal(
    src: ExternalStorage, ref: FileRef, old: BackupKeys, new: BackupKeys, path: str, tick: Callable[[int], None]
) -> FileRef:
    """The same plaintext sealed under the new key, streamed piece by piece."""
    f = StoredFile(src, ref, old)
    out = SealedObjectWriter(src, path, new, ref.locality)
    try:
        pos = 0
        while pos < f.plaintext_size:
            piece = f.read_range(pos, min(_PIECE, f.plaintext_size - pos))
            out.write(piece)
            pos += len(piece)
            tick(len(piece))
        return out.finish()
    except BaseException:
        out.abort()
        raise
    finally:
        f.close()


def _rehash_index(
    dests: Destinations,
    m: Manifest,
    ref: FileRef,
    old: BackupKeys,
    new: BackupKeys,
    path: str,
    hashes: dict[bytes, bytes],
) -> FileRef:
    """The chunk index with every digest taken with the new chunk-hash key. Each chunk is decoded
    (and checked against its old digest) once per chain: ``hashes`` maps old digest to new, 64 bytes
    per distinct 64 KiB chunk."""
    image = BackupImage(dests.storage_for, ref, m.packs, old)
    index: ChunkIndex = image.index
    out = IndexWriter(
        dests.storage_for(ref.locality), path, new, index.chunk_size, index.page_size, index.size, ref.locality
    )
    try:
        for i, rec in enumerate(index):
            digest = hashes.get(rec.digest)
            if digest is None:
                digest = hashes[rec.digest] = new.hasher.digest(image.decoded(i, rec))
            out.add(replace(rec, digest=digest))
        return out.finish()
    except BaseException:
        out.abort()
        raise
    finally:
        image.close()


def _reset_fingerprints(dests: Destinations, ref: FileRef, old: BackupKeys, new: BackupKeys, path: str) -> FileRef:
    count = sum(1 for _ in iter_fingerprints(dests.storage_for, ref, old))
    out = FingerprintWriter(dests.storage_for(ref.locality), path, new, count, ref.locality)
    try:
        for _ in range(count):
            out.add(NO_FINGERPRINT)
        return out.finish()
    except BaseException:
        out.abort()
        raise


def _remove_generation(dests: Destinations, layers: list[str]) -> None:
    """Undo a rotation before its switch: every file of the new layers, locks last (so a crash here
    still leaves them partial)."""
    for d in reversed(layers):
        with suppress(Exception):
            _delete_layer_files(dests, d)
    for d in reversed(layers):
        with suppress(Exception):
            _remove_locks(dests, d)


def _rotate(
    request: AlterBackupRequest, context: StorageContext | None, progress: Progress | None, job_id: int, clock: Clock
) -> AlterResult:
    """ALTER BACKUP ... ROTATE DATA KEY WITH OLD_KMS = ... [, NEW_KMS = ...] (the module docstring)."""
    with _destinations(request.collection, context) as dests:
        storage = dests.default
        remove_abandoned_layers(storage)  # a killed rotation's (or backup's) partial layers
        _finish_rotations(dests)
        full, latest = _resolve_full(storage, request.subdir)
        infos = read_encryption_infos(storage, full)
        if not infos:
            raise EncryptionError(NO_INFO)
        salted = any(info.salt for _name, info in infos)
        if salted != (request.old_passphrase is not None):
            raise UsageError(
                "this backup is encrypted with a passphrase: rotate it with old_encryption_passphrase and "
                "new_encryption_passphrase"
                if salted
                else "this backup is encrypted with KMS keys: rotate it WITH OLD_KMS = ..."
            )
        if grouped_info(infos) is not None:
            raise UsageError(
                "this backup's key is split across key groups: ROTATE DATA KEY does not rotate it yet; "
                "take a new full backup with the groups you want"
            )
        if request.old_passphrase is not None:
            old = existing_backup_keys(storage, full, Encryption(passphrase=request.old_passphrase))
            target = Encryption(passphrase=request.new_passphrase)
        else:
            data_key = _unwrap_with_any(infos, request.old_kms, None)
            if read_chain_keys(storage, full, data_key) is not None:
                # Its layers are sealed under ratcheted layer keys and hashed under a dedup key that
                # write-only hosts hold: rotating it means new host state too, not done here.
                raise UsageError(
                    "this is a write-only chain (public-key recipients): ROTATE DATA KEY does not rotate it yet; "
                    "take a new full backup"
                )
            old = BackupKeys(data_key)
            target = Encryption(kms=request.new_kms or request.old_kms)
        layers, _first, _last = _open_chain(storage, full, latest, old)  # a wrong passphrase fails here
        if _chain_busy(storage, full, DEFAULT_GRACE):
            raise ConflictError(f"a backup or forget is working on the chain of {full}: rotate when it is done")
        manifests = [read_manifest(storage, d, old) for d in layers]
        new, info = new_backup_keys(target)
        assert info is not None
        names_latest = _latest_full(storage) == full
        new_full = _new_subdir(storage, full)
        move = _Move(full, new_full)
        new_layers = [move(d) for d in layers]
        latest_file = layout.latest_name(clock()) if names_latest else ""
        marker = f"{full.strip('/')}/{ROTATING_PREFIX}{job_id}"
        total = sum(r.size for m in manifests for r in m.packs if r.path.startswith(m.layer_dir + "/"))
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(min(done, total), total, "rotating data key")

        try:
            for d in new_layers:
                storage.put(f"{d}/{layout.LOCK_PREFIX}{job_id}", lock_content("rotate"), create_only=True)
            storage.put(marker, new_full.encode(), create_only=True)
            storage.put(f"{new_layers[0]}/{layout.ENCRYPTION_INFO}", info, create_only=True)
            packs: dict[str, FileRef] = {}
            hashes: dict[bytes, bytes] = {}
            for m, new_dir in zip(manifests, new_layers, strict=True):
                for ref in m.packs:
                    if ref.path not in packs:
                        packs[ref.path] = _reseal(dests.storage_for(ref.locality), ref, old, new, move(ref.path), tick)
                dbs = []
                for entry in m.databases:
                    index = _rehash_index(dests, m, entry.index, old, new, move(entry.index.path), hashes)
                    fps = entry.fingerprints
                    if fps is not None:
                        fps = _reset_fingerprints(dests, fps, old, new, move(fps.path))
                    dbs.append(replace(entry, index=index, fingerprints=fps))
                    tick(0)
                rotated = replace(
                    m,
                    full_subdir=new_full,
                    layer_dir=new_dir,
                    packs=[packs[r.path] for r in m.packs],
                    databases=dbs,
                    previous_layers=[move(p) for p in m.previous_layers],
                    latest_file=latest_file if m.backup_type == "full" else m.latest_file,
                )
                _write_partitions(dests, rotated, new)
                write_manifest(storage, new_dir, rotated, new)
            # Last look before the switch: a backup that joined the old chain meanwhile would be lost.
            if _chain_busy(storage, full, DEFAULT_GRACE, after=layers[-1]) or _chain(storage, full) != layers:
                raise ConflictError(
                    f"a backup was added to the chain of {full} during the rotation: nothing changed, run it again"
                )
        except BaseException:
            _remove_generation(dests, new_layers)
            with suppress(Exception):
                storage.delete(marker)
            raise
        # The switch (step 2): no progress calls from here, so a cancel can no longer land.
        for d in new_layers[1:]:
            storage.delete(f"{d}/{layout.LOCK_PREFIX}{job_id}")
        if names_latest:
            layout.write_latest(storage, new_full, latest_file)
        storage.delete(f"{new_layers[0]}/{layout.LOCK_PREFIX}{job_id}")
        _remove_old_chain(dests, full, job_id)
    under = (
        "a key from the new passphrase (new salt)"
        if target.passphrase is not None
        else f"a new data key wrapped by {', '.join(redact(u) for u in target.kms)}"
    )
    note = f"the chain of {full} is now {new_full}, under {under}; the old key and its wraps open nothing that is left"
    return AlterResult("rotate data key", new_full, note)


def _latest_full(storage: ExternalStorage) -> str | None:
    try:
        return layout.read_latest(storage)
    except StrongroomError:
        return None


__all__ = ["ROTATING_PREFIX", "AlterResult", "alter"]
