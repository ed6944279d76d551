"""``strongroom db``."""

from __future__ import annotations

import click

from .common import FORMAT, STORE, echo_table, open_store


@click.group()
def db() -> None:
    """Databases of a store."""


@db.command("create")
@click.argument("name")
@click.option("--region", metavar="NAME", help="Home region (default: the store's primary region).")
@STORE
def db_create(name: str, region: str | None, store: str | None) -> None:
    """CREATE DATABASE NAME [PRIMARY REGION "R"]: its data key comes from its home region."""
    opened = open_store(store)
    opened.create_database(name, region=region)
    click.echo(f"created database {name} in region {opened.home_region(name)}")


@db.command("list")
@STORE
@FORMAT
def db_list(store: str | None, fmt: str) -> None:
    """Databases and their home regions."""
    opened = open_store(store)
    rows = [(name, opened.home_region(name)) for name in opened.databases()]
    echo_table(("database_name", "region"), rows, fmt)


@db.command("drop")
@click.argument("name")
@STORE
def db_drop(name: str, store: str | None) -> None:
    """DROP DATABASE NAME: delete the database and its files from the store."""
    open_store(store).drop_database(name)
    click.echo(f"dropped database {name}")
