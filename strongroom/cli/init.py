"""``strongroom init``."""

from __future__ import annotations

import click

from ..store import DEFAULT_REGION, init_store
from .common import parse_duration, parse_region_uris


@click.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--region", "regions", multiple=True, metavar="NAME", help="A store region (repeat; first is primary).")
@click.option("--cmek", multiple=True, metavar="[REGION=]URI", help="The CMEK wrapping the store key (per region).")
@click.option("--rotation-period", default="30d", show_default=True, help="Data key rotation period (e.g. 30d, 720h).")
def init(directory: str, regions: tuple[str, ...], cmek: tuple[str, ...], rotation_period: str) -> None:
    """Create a store in DIRECTORY, encrypted at rest.

    Without --cmek each region's store key is wrapped by a new local key file in the keyring
    ($STRONGROOM_KEYRING or ~/.strongroom/keys): keep a copy of it, the store cannot open without it.
    """
    names = list(regions) or [DEFAULT_REGION]
    store = init_store(
        directory,
        regions=names,
        cmek=parse_region_uris(cmek, names) or None,
        rotation_period=parse_duration(rotation_period),
    )
    click.echo(f"created store {store.path} (id {store.id})")
    for st in store.encryption_status():
        protection = f"CMEK {st.key_uri}" if st.cmek else f"local key file {st.key_uri} (keep a copy of it)"
        click.echo(f"region {st.region}: store key wrapped by {protection}")
