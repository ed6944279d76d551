"""The store's encryption status report: which keys protect what, per region (CockroachDB's)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ..uri import redact
from .cmek import KeyHierarchy
from .databases import Databases
from .keys import KeyRecord


@dataclass(frozen=True)
class KeyUsage:
    """One data key of a region and what it protects (CockroachDB's encryption status)."""

    key_id: str
    created: str
    store_key_id: str
    active: bool
    under_cmek: bool  # made while the region had CMEK (see keys.DataKey)
    files: int
    bytes: int


@dataclass(frozen=True)
class RegionStatus:
    region: str
    status: str
    cmek: bool
    key_type: str
    key_uri: str  # redacted
    auth_principal: str | None
    cmek_enabled_at: str | None
    store_key_id: str
    store_key_created: str
    active_data_key_id: str | None  # None when the region's keys are not open (revoked)
    rotation_period_s: int | None
    next_rotation: str | None
    data_keys: tuple[KeyUsage, ...]
    updated_at: str
    user_message: str
    #: The CMEK's URI as the client gave it (an ARN stays an ARN), redacted; "" without CMEK.
    given_uri: str = ""
    #: When the current CMEK became the region's (None without CMEK).
    key_since: str | None = None
    #: The current key's own status: ``status`` unless a change to another key failed.
    key_status: str = ""
    #: Past CMEKs and failed attempts, newest first.
    key_history: tuple[KeyRecord, ...] = ()


def encryption_status_table(
    statuses: Sequence[RegionStatus], *, short_ids: bool = False
) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    """The status report as one row per (region, data key); ``short_ids`` keeps 16 hex digits of ids."""

    def key_id(value: str | None) -> str | None:
        return value[:16] if value and short_ids else value

    rows: list[tuple[object, ...]] = []
    for st in statuses:
        region = (st.region, st.status, st.key_type, st.key_uri, key_id(st.store_key_id))
        for dk in st.data_keys or [None]:
            usage = (key_id(dk.key_id), dk.active, dk.under_cmek, dk.files, dk.bytes) if dk else (None,) * 5
            rows.append((*region, *usage, st.next_rotation, st.user_message or None))
    columns = (
        *("region", "status", "key_type", "key_uri", "store_key_id"),
        *("data_key_id", "active", "under_cmek", "files", "bytes", "next_rotation", "user_message"),
    )
    return columns, rows


def encryption_status(hierarchy: KeyHierarchy, databases: Databases) -> list[RegionStatus]:
    """Which keys protect what, per region (CockroachDB's encryption status report)."""
    out = []
    for region in hierarchy.meta.regions:
        # Revoked (or re-wrapped out of reach) by another process: report what the files say.
        keys = hierarchy.refreshed_or_none(region)
        spec = keys.spec if keys is not None else hierarchy.spec_on_disk(region)
        usages: list[KeyUsage] = []
        active = period = next_rotation = None
        if keys is not None:
            reg = keys.registry
            active, period = reg.active_data_key_id, reg.rotation_period_s
            created = datetime.fromisoformat(reg.active_data_key.created)
            next_rotation = (created + timedelta(seconds=period)).isoformat(timespec="seconds")
            for kid, dk in reg.data_keys.items():
                names = [n for n, f in reg.files.items() if f.key_id == kid and databases.exists(n)]
                size = sum(_db_bytes(databases.database_path(n)) for n in names)
                usages.append(
                    KeyUsage(kid, dk.created, dk.store_key_id, kid == active, dk.under_cmek, len(names), size)
                )
        out.append(
            RegionStatus(
                region=region,
                status=spec.status,
                cmek=spec.cmek,
                key_type=spec.key_type,
                key_uri=redact(spec.key_uri),
                auth_principal=spec.auth_principal,
                cmek_enabled_at=spec.cmek_enabled_at,
                store_key_id=spec.store_key_id,
                store_key_created=spec.store_key_created,
                active_data_key_id=active,
                rotation_period_s=period,
                next_rotation=next_rotation,
                data_keys=tuple(usages),
                updated_at=spec.updated_at,
                user_message=spec.user_message,
                given_uri=spec.shown_uri if spec.cmek else "",
                key_since=(spec.key_since or spec.cmek_enabled_at) if spec.cmek else None,
                key_status=spec.current_key_status,
                key_history=tuple(spec.key_history),
            )
        )
    return out


def _db_bytes(path: Path) -> int:
    return sum(os.path.getsize(f) for f in (path, Path(f"{path}-wal")) if f.exists())
