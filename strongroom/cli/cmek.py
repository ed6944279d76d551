"""``strongroom cmek`` and ``strongroom rotate``: CMEK, store keys and data keys."""

from __future__ import annotations

from collections.abc import Sequence

import click

from ..errors import EncryptionError, KMSError, UsageError
from ..store import Store, encryption_status_table
from .common import FORMAT, STORE, echo_table, open_store, parse_region_uris


def open_for_cmek(store: str | None) -> tuple[Store, str | None]:
    """The store with its keys if they open, else (revoked, KMS unreachable) without them, and why:
    CMEK can be reported on, enabled and rotated on a store that cannot start."""
    try:
        return open_store(store, name_path=False), None
    except (KMSError, EncryptionError) as exc:
        return open_store(store, unlock=False), str(exc)


def echo_regions(s: Store, regions: Sequence[str] | None = None) -> None:
    for st in s.encryption_status():
        if regions is None or st.region in regions:
            click.echo(f"region {st.region}: {st.status}, store key {st.store_key_id[:16]} wrapped by {st.key_uri}")


@click.group()
def cmek() -> None:
    """Customer-managed encryption keys: enable, rotate, revoke, status, audit (CockroachDB Cloud's CMEK)."""


@cmek.command("enable")
@click.option("--cmek", "uris", multiple=True, required=True, metavar="[REGION=]URI", help="One for every region.")
@click.option("--auth-principal", metavar="P", help="Who the store acts as at the KMS (an IAM role, an account).")
@STORE
def cmek_enable(uris: tuple[str, ...], auth_principal: str | None, store: str | None) -> None:
    """Enable CMEK: each region gets a new store key wrapped by its CMEK (also re-enables a revoked store)."""
    s, _locked = open_for_cmek(store)
    s.enable_cmek(parse_region_uris(uris, s.regions), auth_principal=auth_principal)
    echo_regions(s)


@cmek.command("rotate")
@click.option("--region", "regions", multiple=True, metavar="NAME", help="Default: every region with CMEK.")
@click.option("--cmek", "uris", multiple=True, metavar="[REGION=]URI", help="A new key (default: its new version).")
@click.option("--auth-principal", metavar="P", help="Who the store acts as at the KMS.")
@STORE
def cmek_rotate(regions: tuple[str, ...], uris: tuple[str, ...], auth_principal: str | None, store: str | None) -> None:
    """Re-wrap store keys with a new version of their CMEK (rotated in the KMS), or with a new key."""
    s, _locked = open_for_cmek(store)
    targets = list(regions) or [st.region for st in s.encryption_status() if st.cmek]
    specs: dict[str, str | None] = dict.fromkeys(targets)
    specs.update(parse_region_uris(uris, targets or s.regions))
    if not specs:
        raise UsageError("CMEK is not enabled on this store: there is nothing to rotate (strongroom cmek enable)")
    s.rotate_cmek(specs, auth_principal=auth_principal)
    echo_regions(s, list(specs))


@cmek.command("revoke")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@STORE
def cmek_revoke(yes: bool, store: str | None) -> None:
    """Stop using the CMEK: the store closes and will not open until CMEK is enabled again.

    Revoke the store's access to the key in the KMS too; without the key, the data cannot be read.
    """
    s = open_store(store, unlock=False)  # no KMS call: revoking must work when the KMS does not
    if not yes:
        click.confirm(f"Revoke CMEK on store {s.path}? It will not open until CMEK is enabled again", abort=True)
    s.revoke_cmek()
    click.echo("revoked CMEK: the store will not open until CMEK is enabled again (strongroom cmek enable)")


@cmek.command("status")
@STORE
@FORMAT
def cmek_status(store: str | None, fmt: str) -> None:
    """Per region: status, key, store key, and per data key the databases and bytes it protects."""
    s, locked = open_for_cmek(store)
    if locked:
        click.echo(f"NOTE: the store's keys are locked, data keys are not shown: {locked}", err=True)

    columns, rows = encryption_status_table(s.encryption_status(), short_ids=fmt == "table")
    echo_table(columns, rows, fmt)


@cmek.command("audit")
@STORE
@click.option("--last", type=click.IntRange(min=1), help="Only the last N records.")
@FORMAT
def cmek_audit(store: str | None, last: int | None, fmt: str) -> None:
    """Every use of the store's keys: when, who, which region and key, what for, and the result."""
    records = open_store(store, unlock=False).audit_records()
    columns = ("time", "actor", "region", "operation", "purpose", "key", "result")
    rows = [tuple(getattr(r, c) for c in columns) for r in (records[-last:] if last else records)]
    echo_table(columns, rows, fmt)


@click.group()
def rotate() -> None:
    """Rotate a store's data keys (re-keys databases online) or store keys (re-wraps data keys)."""


@rotate.command("data-keys")
@click.option("--region", metavar="NAME", help="Default: every region.")
@click.option("--if-due", is_flag=True, help="Only regions whose data key is older than the rotation period.")
@STORE
def rotate_data_keys(region: str | None, if_due: bool, store: str | None) -> None:
    """Make a new data key per region and re-key every database of the region onto it."""
    s = open_store(store)
    done = s.rotate_data_keys(region, if_due=if_due)
    if not done:
        click.echo("no data key rotation is due")
    for st in s.encryption_status():
        if st.region in done:
            names = done[st.region]
            rekeyed = f"re-keyed {len(names)} database(s)" + (f": {', '.join(names)}" if names else "")
            click.echo(f"region {st.region}: new data key {(st.active_data_key_id or '')[:16]}; {rekeyed}")


@rotate.command("store-key")
@click.option("--region", metavar="NAME", help="Default: every region.")
@STORE
def rotate_store_key(region: str | None, store: str | None) -> None:
    """Make a new store key per region, wrapped by the same CMEK or key file (and a new data key under it)."""
    s = open_store(store)
    s.rotate_store_key(region)
    echo_regions(s, [region] if region else None)
