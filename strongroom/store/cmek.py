"""The store's key hierarchy per region, and CMEK on it: open, add a region, enable, rotate, revoke.

Each region's keys live in its key files (keys.py); this part holds the unwrapped ones of the
regions that are open, and changes CMEK as CockroachDB Cloud's API does (POST enables it on every
region, PUT rotates some, PATCH revokes). Every change holds the rotation lock exclusively.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import suppress
from datetime import timedelta
from pathlib import Path

from ..errors import AlreadyExistsError, EncryptionError, KMSError, StrongroomError, UsageError
from ..kms import create_key, open_kms
from ..kms.cache import clear_key_cache
from ..uri import parse_uri
from .audit import AuditedKMS, AuditLog
from .keys import (
    ENABLE_FAILED,
    KEY_SIZE,
    REVOKED,
    ROTATE_FAILED,
    CMEKSpec,
    RegionKeys,
    RegionSpec,
    key_type,
    read_spec,
    set_revoked_on_disk,
    wrap_checked,
)
from .locks import RotationLock
from .meta import StoreMeta

#: Called after a region moved from one CMEK to another (region keys, old key URI): the store
#: re-wraps its managed backups' data keys with the new key.
OnCMEKMoved = Callable[[RegionKeys, str], None]


class KeyHierarchy:
    """The regions' keys: ``region_keys(r)`` for an open region; specs from disk for any region."""

    def __init__(self, meta: StoreMeta, keys_dir: Path, audit: AuditLog, lock: RotationLock) -> None:
        self.meta = meta
        self.keys_dir = keys_dir
        self.audit = audit
        self.lock = lock
        self._open: dict[str, RegionKeys] = {}
        self.on_cmek_moved: OnCMEKMoved | None = None

    def region_dir(self, region: str) -> Path:
        return self.keys_dir / region

    # -- opening ----------------------------------------------------------------------------------
    def check_present(self) -> None:
        """Every region has key files (a store that had encryption must never start without them)."""
        for region in self.meta.regions:
            if read_spec(self.region_dir(region)) is None:
                raise EncryptionError(
                    "encryption was used on this store before, but no encryption settings were found "
                    f'for region "{region}" ({self.region_dir(region)} is empty or missing): '
                    "restore the store's keys directory"
                )

    def unlock(self) -> None:
        """Unwrap every region's store key: one KMS decrypt per region. No key, no start."""
        for region in self.meta.regions:
            self._open[region] = RegionKeys.load(self.region_dir(region), self.audit)

    def close(self) -> None:
        """Forget every unwrapped key."""
        self._open.clear()

    def create_region(self, region: str, cmek: str | None, rotation_period: timedelta) -> None:
        """A region's first key generation: its store key wrapped by ``cmek``, else by the store's key file."""
        uri = cmek
        if uri is None:
            uri = self.meta.key_file
            assert uri is not None, "a store with a region outside CMEK has a key file"
            parsed = parse_uri(uri)
            with suppress(AlreadyExistsError):  # made by the first region that needs it
                create_key(parsed.path.lstrip("/"), parsed.params.get("KEYRING"))
        self._open[region] = RegionKeys.create(
            self.region_dir(region),
            region,
            uri,
            cmek=cmek is not None,
            audit=self.audit,
            rotation_period=rotation_period,
        )

    # -- reading ----------------------------------------------------------------------------------
    def is_open(self, region: str) -> bool:
        return region in self._open

    def open_regions(self) -> list[RegionKeys]:
        return list(self._open.values())

    def region_keys(self, region: str) -> RegionKeys:
        self.meta.check_region(region)
        keys = self._open.get(region)
        if keys is None:
            raise EncryptionError(f'region "{region}" is not open: its keys are locked (see strongroom cmek status)')
        return keys

    def spec_on_disk(self, region: str) -> RegionSpec:
        """The region's key spec as its newest key file says (no key needed)."""
        found = read_spec(self.region_dir(self.meta.check_region(region)))
        if found is None:
            raise EncryptionError(f'region "{region}" has no key files')
        return found[1]

    def current_spec(self, region: str) -> RegionSpec:
        """The region's key spec: from its open keys (caught up with other processes), else from disk."""
        keys = self._open.get(region)
        if keys is None:
            return self.spec_on_disk(region)
        keys.refresh()
        return keys.spec

    # -- CMEK -------------------------------------------------------------------------------------
    def check_cmek_specs(self, specs: Mapping[str, str | CMEKSpec], *, every_region: bool = False) -> None:
        """Refuse a CMEK change before anything is touched (the HTTP API answers 400 with these)."""
        for region in specs:
            self.meta.check_region(region)
        if every_region:
            missing = [r for r in self.meta.regions if r not in specs]
            if missing:
                raise UsageError(
                    f"enabling CMEK needs a key for every region of the store; missing: {', '.join(missing)}"
                )
        for region, spec in specs.items():
            uri = spec.uri if isinstance(spec, CMEKSpec) else spec
            if not uri:
                raise UsageError(
                    f'region "{region}": encryption was used on this store before; CMEK cannot be dropped '
                    "(revoke it instead: strongroom cmek revoke)"
                )
            key_type(uri)

    def check_cmek_usable(self, specs: Mapping[str, str | CMEKSpec]) -> None:
        """Prove each key works before a change is accepted: encrypt a random probe and decrypt it
        (audited as "check CMEK"). A key the KMS refuses, or that cannot be reached, is the
        caller's to fix, so the HTTP API answers 400 at once rather than 200 and a failure later."""
        for region, spec in _cmek_specs(specs, None).items():
            try:
                kms = AuditedKMS(open_kms(spec.uri), self.audit, region, "check CMEK")
                try:
                    wrap_checked(kms, os.urandom(KEY_SIZE), spec.shown)
                finally:
                    kms.close()
            except StrongroomError as exc:
                raise UsageError(f'region "{region}": the key {spec.shown} cannot be used: {exc}') from None

    def enable_cmek(self, specs: Mapping[str, str | CMEKSpec], *, auth_principal: str | None = None) -> None:
        """Enable CMEK: every region of the store gets a CMEK (CockroachDB Cloud's POST).

        For each region a new store key is made and wrapped by the region's CMEK, and a new data key
        under it protects data written from now on; existing files keep their data keys, which are
        now sealed under the new store key too, so nothing in the region opens without the CMEK.
        A plain URI takes ``auth_principal``; a CMEKSpec carries its own.
        """
        self.check_cmek_specs(specs, every_region=True)
        self._set_cmek(_cmek_specs(specs, auth_principal), enabling=True)

    def rotate_cmek(self, specs: Mapping[str, str | CMEKSpec | None], *, auth_principal: str | None = None) -> None:
        """Rotate the CMEK of some regions (CockroachDB Cloud's PUT): a new key URI, or None for a new
        version of the same key; the store key is re-wrapped. A region without CMEK gets it enabled."""
        resolved: dict[str, str | CMEKSpec] = {}
        for region, given in specs.items():
            if given is None:
                spec = self.spec_on_disk(region)
                if not spec.cmek:
                    raise UsageError(f'region "{region}" has no CMEK to rotate: give a key URI to enable one')
                given = CMEKSpec(spec.key_uri, spec.given_uri, auth_principal)
            resolved[region] = given
        self._set_cmek(_cmek_specs(resolved, auth_principal), enabling=False)

    def _set_cmek(self, specs: Mapping[str, CMEKSpec], *, enabling: bool) -> None:
        self.check_cmek_specs(specs)
        with self.lock.exclusive():
            for region, cmek in specs.items():
                keys = self._open.get(region)
                if keys is None:  # revoked or never opened: unwrap with the key it was wrapped by
                    keys = RegionKeys.load(
                        self.region_dir(region), self.audit, purpose="re-enable CMEK", allow_revoked=True
                    )
                    self._open[region] = keys
                before = keys.spec
                try:
                    keys.set_cmek(cmek, enabling=enabling and not keys.spec.cmek)
                except StrongroomError as exc:
                    failed = ENABLE_FAILED if enabling or not keys.spec.cmek else ROTATE_FAILED
                    keys.set_failed(failed, str(exc), cmek)
                    # The status keeps the KMS's own words; the caller also needs to know which region.
                    raise type(exc)(f'region "{region}": {exc}') from None
                if before.cmek and before.key_uri != cmek.uri and self.on_cmek_moved is not None:
                    self.on_cmek_moved(keys, before.key_uri)

    def revoke_cmek(self) -> None:
        """Revoke the store's use of its CMEK (CockroachDB Cloud's PATCH REVOKE): every region stops
        and the store no longer starts until CMEK is enabled again with a key it can use."""
        regions = self.meta.regions
        if not any(self.spec_on_disk(r).cmek for r in regions):
            raise UsageError("CMEK is not enabled on this store: there is nothing to revoke")
        with self.lock.exclusive():
            for region in regions:
                keys = self._open.get(region)
                if keys is not None:
                    keys.set_status(REVOKED)
                else:
                    set_revoked_on_disk(self.region_dir(region))
            self.close()
            clear_key_cache()  # a revoked key must not keep working from this process's cache

    def refreshed_or_none(self, region: str) -> RegionKeys | None:
        """The region's open keys caught up with other processes, or None if they are not open here
        or were revoked (or re-wrapped out of reach) by another process."""
        keys = self._open.get(region)
        if keys is None:
            return None
        try:
            keys.refresh()
        except KMSError:
            return None
        return keys


def _cmek_specs(specs: Mapping[str, str | CMEKSpec], auth_principal: str | None) -> dict[str, CMEKSpec]:
    """Plain URIs as CMEKSpecs (with ``auth_principal``); CMEKSpecs as they are."""
    return {r: s if isinstance(s, CMEKSpec) else CMEKSpec(s, "", auth_principal) for r, s in specs.items()}
