"""``strongroom region``."""

from __future__ import annotations

import click

from .common import STORE, open_store


@click.group()
def region() -> None:
    """Regions of a store: each has its own store key and data keys."""


@region.command("add")
@click.argument("name")
@STORE
def region_add(name: str, store: str | None) -> None:
    """Add region NAME. Like CockroachDB Cloud, a new region is not protected by the other regions'
    CMEK: give it one with `strongroom cmek rotate --cmek NAME=URI`."""
    opened = open_store(store)
    opened.add_region(name)
    [st] = [st for st in opened.encryption_status() if st.region == name]
    click.echo(f"added region {name}: store key wrapped by local key file {st.key_uri}")
    if any(other.cmek for other in opened.encryption_status()):
        click.echo(f"NOTE: region {name} is not protected by CMEK yet: strongroom cmek rotate --cmek {name}=<URI>")
