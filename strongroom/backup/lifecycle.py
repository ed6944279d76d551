"""FORGET (remove restore points by a retention policy) and PRUNE (remove what nothing completed uses).

Neither needs a key: the layout's dir names give every layer's end time, and BACKUP-LOCKs say what
is running. Both follow the rollback rules of the engine: a collection whose LATEST was rolled back
or whose manifests were removed is refused, so retention never hides tampering.

Order of a forget, and why each state a crash can leave is one readers accept:

1. Chains lose a suffix only (a kept point keeps every earlier layer), newest layer first: after
   each layer goes, the chain is a shorter valid chain whose newest manifest names exactly the
   layers before it (engine._check_chain).
2. In one layer: (a) write ``BACKUP-LOCK-<job>`` naming this process with ``op: forget``. From
   here the layer is *partial* (layout.LayerState): never used, never reported as tampering, and
   skipped by every chain (it is that chain's newest, so the rest stays valid). (b) For a full, the
   LATEST files that name it go (never the newest one: LATEST's full is always kept, so LATEST
   never names nothing while a complete full exists); until they are gone a full with manifest and
   lock still counts as complete, which it still is. (c) ``BACKUP_MANIFEST``, then its checksum (the
   reverse of how they were written), so no half-deleted layer can ever look complete again, even if
   its lock were removed. (d) Every other file, at every location given. (e) The lock, last.
3. A forget killed part way leaves layers that hold its lock: ``prune`` (and the next backup on this
   host, owners.remove_abandoned_layers) sees the owner gone and finishes (b)-(e).

A chain holding a live BACKUP-LOCK (a backup appending to it) loses nothing, and the two sides
shake hands: a forget writes a layer's lock and only then looks in the chain for live locks and for
layers newer than its plan knew (and backs off, its lock removed, the layer untouched); an
incremental backup writes its lock and only then looks for a forget's lock in its chain (and
refuses, owners.forget_in_chain). Whichever writes second sees the other, so an incremental is
never built on a layer a forget removes.

PRUNE removes: layers whose BACKUP-LOCK's owner is provably gone (same host and boot, process gone)
or whose lock is older than a grace period (another host's or boot's lock proves nothing either
way); layers a forget left half-deleted; incremental layers whose full backup is gone; temp files
killed writers left (local storage); files at locality-aware locations whose layer is gone from the
default location; LATEST files (never the newest) naming a full that is gone. It never touches a
layer whose lock has a live owner (a backup or forget running now), nor files it cannot place (a
layer with files but no manifest and no lock is reported: that is tampering or damage, for
``strongroom check``).
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta

from ..errors import IntegrityError, StrongroomError
from ..storage import ExternalStorage, StorageContext
from ..storage.local import LocalStorage
from ..uri import redact
from . import layout
from .destinations import Destinations
from .engine import Collection, _chain, _destinations, _resolve_full
from .jobs import new_job_id
from .owners import chain_locks, lock_content, lock_facts, owner_gone
from .retention import Decision, RestorePoint, RetentionPolicy, plan_forget

DEFAULT_GRACE = timedelta(hours=24)


# ----------------------------------------------------------------------------------------------- locks


def _lock_abandoned(content: bytes, now: float, grace: timedelta) -> bool:
    """The lock's owner is provably gone, or the lock is older than ``grace`` (so taken as gone)."""
    if owner_gone(content):
        return True
    _op, taken = lock_facts(content)
    return taken is not None and now - taken > grace.total_seconds()


@dataclass
class _Layer:
    """One layer dir at the default location, from one listing."""

    dir: str
    files: list[str] = field(default_factory=list)  # everything but locks
    locks: list[str] = field(default_factory=list)

    @property
    def manifest(self) -> bool:
        return f"{self.dir}/{layout.MANIFEST}" in self.files

    @property
    def incremental(self) -> bool:
        return self.dir.startswith(layout.INCREMENTALS + "/")

    @property
    def full(self) -> str:
        """The full subdir of the layer's chain."""
        parts = self.dir.split("/")
        return "/" + "/".join(parts[1:4] if self.incremental else parts[:3])


def _layers(names: list[str]) -> dict[str, _Layer]:
    out: dict[str, _Layer] = {}
    for name in names:
        d = layout.layer_of(name)
        if d is None:
            continue
        layer = out.setdefault(d, _Layer(d))
        (layer.locks if name[len(d) + 1 :].startswith(layout.LOCK_PREFIX) else layer.files).append(name)
    return out


def _locks_state(storage: ExternalStorage, layer: _Layer, now: float, grace: timedelta) -> tuple[bool, bool]:
    """(every lock of the layer is abandoned, one of them is a forget's)."""
    abandoned, forgetting = True, False
    for lock in layer.locks:
        try:
            content = storage.get(lock)
        except StrongroomError:  # gone since the listing: its owner was running until just now
            return False, False
        abandoned = abandoned and _lock_abandoned(content, now, grace)
        forgetting = forgetting or lock_facts(content)[0] == "forget"
    return abandoned, forgetting


# -------------------------------------------------------------------------------------------- deleting


def _delete_layer_files(dests: Destinations, layer: str, keep: str | None = None) -> int:
    """Steps (b)-(d) of a layer's deletion (the module docstring); ``keep`` is the lock, removed by the
    caller last. Returns how many objects went."""
    storage = dests.default
    removed = 0
    if not layer.startswith(layout.INCREMENTALS + "/"):
        full = "/" + layer
        latest = layout.latest_files(storage)
        if latest and latest[0][1] == full:
            raise IntegrityError(f"refusing to delete {full}: the newest LATEST file names it")
        for name, named in latest[1:]:
            if named == full:
                storage.delete(name)
                removed += 1
    for name in (f"{layer}/{layout.MANIFEST}", f"{layer}/{layout.MANIFEST}{layout.CHECKSUM_SUFFIX}"):
        if storage.exists(name):
            storage.delete(name)
            removed += 1
    for location in [storage, *dests.localities.values()]:
        for name, _size in location.list(layer + "/"):
            if location is storage and (name == keep or name[len(layer) + 1 :].startswith(layout.LOCK_PREFIX)):
                continue
            location.delete(name)
            removed += 1
        if isinstance(location, LocalStorage):  # killed writers' temp files (listings never show them)
            removed += location.remove_temp_files(layer)
    return removed


def _remove_locks(dests: Destinations, layer: str) -> None:
    for name, _size in dests.default.list(f"{layer}/{layout.LOCK_PREFIX}"):
        dests.default.delete(name)
    for location in [dests.default, *dests.localities.values()]:
        if isinstance(location, LocalStorage):
            _remove_empty_dir(location, layer)


def _remove_empty_dir(storage: LocalStorage, layer: str) -> None:
    """The layer's own dirs (nobody writes into a removed layer); parents such as ``2026/11`` stay, a
    new backup may be creating its dir there right now."""
    root = storage.root / layer
    dirs = [p for p in root.rglob("*") if p.is_dir()] if root.is_dir() else []
    for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        with suppress(OSError):
            path.rmdir()
    with suppress(OSError):
        root.rmdir()
    if layer.startswith(layout.INCREMENTALS + "/"):
        with suppress(OSError):
            root.parent.rmdir()  # the incremental's date dir, when it was the last of that day
    else:
        with suppress(OSError):
            (storage.root / layout.incrementals_prefix(layer)).rmdir()  # its chain's (now empty) dir


def _chain_busy(storage: ExternalStorage, full: str, grace: timedelta, mine: str = "", after: str = "") -> bool:
    """Someone else works on the chain of ``full``: a lock (not ``mine``) whose owner may be running
    (or that vanished since the listing: its owner was running a moment ago), or, with ``after``
    (the layer about to be removed), a layer newer than it that this forget did not plan for (a
    backup completed since the plan). Layers whose every lock is abandoned do not count: nothing
    uses a killed backup's layer."""
    now = time.time()
    abandoned: set[str] = set()
    for lock in chain_locks(storage, full):
        if lock == mine:
            continue
        try:
            content = storage.get(lock)
        except StrongroomError:
            return True
        if not _lock_abandoned(content, now, grace):
            return True
        abandoned.add(lock.rsplit("/", 1)[0])
    if not after:
        return False
    newer = {
        d
        for name, _size in storage.list(layout.incrementals_prefix(full))
        if (d := layout.layer_of(name)) is not None and d != after and (d > after or after == full.strip("/"))
    }
    return bool(newer - abandoned)


def delete_layer(
    dests: Destinations, layer: str, full: str, job_id: int, grace: timedelta = DEFAULT_GRACE
) -> int | None:
    """Forget one layer of the chain of ``full``, crash-safely (steps (a)-(e) of the module
    docstring). None if a backup started in the chain meanwhile: then nothing of the layer went."""
    lock = f"{layer}/{layout.LOCK_PREFIX}{job_id}"
    dests.default.put(lock, lock_content("forget"), create_only=True)
    # After our lock, before any deletion: a backup that locked its layer first (or completed since
    # the plan) is seen here; one that locks later sees ours (owners.forget_in_chain) and refuses.
    # Removing our lock now leaves the layer as it was.
    if _chain_busy(dests.default, full, grace, mine=lock, after=layer):
        dests.default.delete(lock)
        return None
    removed = _delete_layer_files(dests, layer, keep=lock)
    _remove_locks(dests, layer)
    return removed + 1


# ---------------------------------------------------------------------------------------------- FORGET


def restore_points(storage: ExternalStorage) -> tuple[list[RestorePoint], str | None]:
    """Every completed layer of the collection, and the full LATEST names (None: no backups).

    LATEST is cross-checked (a rolled-back collection is refused) and every chain is read the way
    RESTORE reads it (a removed manifest is refused), so forget never acts on a tampered listing."""
    fulls = layout.list_fulls(storage)
    if not fulls:
        return [], None
    latest_full, _name = _resolve_full(storage, "LATEST")
    points = [RestorePoint("/" + d, full, layout.end_time_of(d)) for full in fulls for d in _chain(storage, full)]
    return points, latest_full


@dataclass
class ForgetResult:
    job_id: int
    dry_run: bool
    decisions: list[Decision]
    removed: list[str]  # layer paths removed, in the order they went
    objects_removed: int
    prune: PruneResult | None = None


def forget(
    collection: Collection,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    context: StorageContext | None = None,
    job_id: int | None = None,
    grace: timedelta = DEFAULT_GRACE,
) -> ForgetResult:
    """Remove the restore points ``policy`` does not keep (``dry_run``: only say which)."""
    job_id = job_id or new_job_id()
    with _destinations(collection, context) as dests:
        storage = dests.default
        points, latest_full = restore_points(storage)
        decisions = plan_forget(points, policy, latest_full=latest_full)
        # A chain with a live BACKUP-LOCK is left alone whole: a backup appending to it reads its
        # newest layer, which may be one this forget would remove.
        chains = {d.point.full for d in decisions if not d.keep}
        busy = {full for full in chains if _chain_busy(storage, full, grace)}
        removed: list[str] = []
        count = 0
        # Newest first: within a chain what is removed is a suffix, so each step leaves a prefix.
        for i, d in enumerate(decisions):
            if d.keep:
                continue
            gone = None
            if d.point.full not in busy and not dry_run:
                gone = delete_layer(dests, d.point.path.strip("/"), d.point.full, job_id, grace)
                if gone is None:
                    busy.add(d.point.full)  # and the chain's older layers stay too
            if d.point.full in busy:
                decisions[i] = Decision(d.point, True, (*d.reasons, "a backup is running in this chain"))
            elif gone is not None:
                count += gone
                removed.append(d.point.path)
        return ForgetResult(job_id, dry_run, decisions, removed, count)


# ----------------------------------------------------------------------------------------------- PRUNE


@dataclass(frozen=True)
class PruneAction:
    path: str  # the layer dir or object, with a leading slash
    location: str  # "default" or the locality (``region=us-west1``)
    action: str  # removed, lock removed, kept
    reason: str
    objects: int

    def row(self) -> tuple[object, ...]:
        return (self.path, self.location, self.action, self.reason, self.objects)


PRUNE_COLUMNS = ("path", "location", "action", "reason", "objects")


@dataclass
class PruneResult:
    job_id: int
    actions: list[PruneAction]

    @property
    def objects_removed(self) -> int:
        return sum(a.objects for a in self.actions if a.action != "kept")


def prune(
    collection: Collection,
    *,
    grace: timedelta = DEFAULT_GRACE,
    context: StorageContext | None = None,
    job_id: int | None = None,
) -> PruneResult:
    """Remove what no completed backup uses (the module docstring), leaving running backups alone;
    ``grace``: a lock older than this is taken as abandoned even if its owner cannot be proved gone."""
    job_id = job_id or new_job_id()
    actions: list[PruneAction] = []
    with _destinations(collection, context) as dests:
        storage = dests.default
        # The other locations are listed before the default one: a backup writes its lock at the
        # default location before any file elsewhere, so whatever the first listings show of a
        # running backup, the later default listing shows its lock.
        elsewhere = {loc: [n for n, _s in s.list("")] for loc, s in dests.localities.items()}
        layers = _layers([n for n, _s in storage.list("")])
        now = time.time()
        live: set[str] = set()
        fulls_present = {layer.full for layer in layers.values() if not layer.incremental}
        # Newest first, so a chain's layers go from its end (each step leaves a valid prefix).
        for d in sorted(layers, key=lambda d: (layers[d].full, layers[d].incremental, d), reverse=True):
            layer = layers[d]
            try:
                action = _prune_layer(dests, layer, layers, fulls_present, now, grace)
            except IntegrityError as exc:  # e.g. the newest LATEST file names a half-forgotten full
                action = PruneAction("/" + d, "default", "kept", str(exc), 0)
            if action is None:
                continue
            if action.action == "kept" and layer.locks:
                live.add(d)
            actions.append(action)
        present = {d for d in layers if d in live or _still_there(storage, d)} if elsewhere else set()
        for loc, names in elsewhere.items():
            gone: dict[str, list[str]] = {}
            for name in names:
                owner = layout.layer_of(name)
                if owner is not None and owner not in present:
                    gone.setdefault(owner, []).append(name)
            location = dests.localities[loc]
            for owner, files in sorted(gone.items(), reverse=True):
                for name in files:
                    location.delete(name)
                if isinstance(location, LocalStorage):
                    _remove_empty_dir(location, owner)
                why = "its layer is gone from the default location"
                actions.append(PruneAction("/" + owner, loc, "removed", why, len(files)))
        actions += _prune_latest(storage)
    return PruneResult(job_id, actions)


def _still_there(storage: ExternalStorage, layer: str) -> bool:
    return any(True for _ in storage.list(layer + "/"))


def _prune_layer(
    dests: Destinations,
    layer: _Layer,
    layers: dict[str, _Layer],
    fulls_present: set[str],
    now: float,
    grace: timedelta,
) -> PruneAction | None:
    storage = dests.default
    path = "/" + layer.dir
    if not layer.locks:
        if layer.incremental and layer.full not in fulls_present:
            n = _delete_layer_files(dests, layer.dir)
            _remove_locks(dests, layer.dir)
            return PruneAction(path, "default", "removed", f"its full backup {layer.full} is gone", n)
        if not layer.manifest:
            return PruneAction(path, "default", "kept", "files without a manifest or a lock: run strongroom check", 0)
        return None  # complete
    abandoned, forgetting = _locks_state(storage, layer, now, grace)
    if not abandoned:
        why = (
            f"may be running: its lock's owner is alive, or not provably gone and the lock is under {_hours(grace)} old"
        )
        return PruneAction(path, "default", "kept", why, 0)
    newer = [o for o in layers.values() if o.full == layer.full and o.incremental and o.dir > layer.dir and o.manifest]
    complete_newer = [o for o in newer if not o.locks]
    if forgetting:
        if complete_newer:
            # Not the end of its chain (the handshake above should make this impossible): finishing
            # would break the layers after it. Removing the lock makes the layer whole again only
            # while its manifest is there.
            if layer.manifest:
                _remove_locks(dests, layer.dir)
                return PruneAction(path, "default", "lock removed", "a later backup uses it", len(layer.locks))
            return PruneAction(path, "default", "kept", "half-forgotten, but a later backup uses it", 0)
        n = _delete_layer_files(dests, layer.dir)
        _remove_locks(dests, layer.dir)
        return PruneAction(path, "default", "removed", "a forget was interrupted: finished", n + len(layer.locks))
    if not layer.incremental and layer.manifest and path in layout.latest_contents(storage):
        # A full backup killed between writing LATEST and removing its lock completed (layout's rule).
        _remove_locks(dests, layer.dir)
        return PruneAction(path, "default", "lock removed", "completed before its lock was removed", len(layer.locks))
    n = _delete_layer_files(dests, layer.dir)
    _remove_locks(dests, layer.dir)
    return PruneAction(path, "default", "removed", "a killed or canceled backup", n + len(layer.locks))


def _prune_latest(storage: ExternalStorage) -> list[PruneAction]:
    """LATEST files naming a full backup that is gone; never the newest (it says what LATEST is)."""
    out = []
    for name, named in layout.latest_files(storage)[1:]:
        if named is not None and not _still_there(storage, named.strip("/")):
            storage.delete(name)
            out.append(PruneAction("/" + name, "default", "removed", f"it names {named}, which is gone", 1))
    return out


def describe_forget(collection: Collection, policy: RetentionPolicy, dry_run: bool) -> str:
    """The job description SHOW JOBS shows (URIs redacted)."""
    return f"FORGET IN {_where(collection)} WITH {policy}" + (" (dry run)" if dry_run else "")


def describe_prune(collection: Collection, grace: timedelta) -> str:
    return f"PRUNE IN {_where(collection)} WITH older_than = '{_hours(grace)}'"


def _where(collection: Collection) -> str:
    uris = [collection] if isinstance(collection, str) else list(collection)
    inner = ", ".join(f"'{redact(u)}'" for u in uris)
    return inner if len(uris) == 1 else f"({inner})"


def _hours(grace: timedelta) -> str:
    seconds = int(grace.total_seconds())
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds}s"


__all__ = [
    "DEFAULT_GRACE",
    "PRUNE_COLUMNS",
    "ForgetResult",
    "PruneAction",
    "PruneResult",
    "delete_layer",
    "describe_forget",
    "describe_prune",
    "forget",
    "prune",
    "restore_points",
]
