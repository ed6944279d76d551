"""``strongroom keys``: local key files, the embedded default KMS."""

from __future__ import annotations

from pathlib import Path

import click

from ..kms import create_key, default_keyring

KEYRING_HELP = "Key folder (default $STRONGROOM_KEYRING or ~/.strongroom/keys)."


@click.group()
def keys() -> None:
    """Local key files: the embedded default KMS (local:///<name>)."""


@keys.command("create")
@click.argument("name")
@click.option("--keyring", type=click.Path(file_okay=False), help=KEYRING_HELP)
def keys_create(name: str, keyring: str | None) -> None:
    """Make a new 256-bit key NAME; use it as kms = 'local:///NAME'."""
    path = create_key(name, keyring)
    uri = f"local:///{name}" + (f"?KEYRING={Path(keyring).absolute()}" if keyring else "")
    click.echo(f"created key {path} (mode 0600)\nuse it as: kms = '{uri}'")


@keys.command("create-age")
@click.argument("name")
@click.option("--keyring", type=click.Path(file_okay=False), help=KEYRING_HELP)
def keys_create_age(name: str, keyring: str | None) -> None:
    """Make a new age identity NAME (NAME.age); print the public key a write-only backup host gets."""
    from ..kms.age import create_identity

    path, recipient = create_identity(name, keyring)
    uri = f"age:///{name}" + (f"?KEYRING={Path(keyring).absolute()}" if keyring else "")
    click.echo(
        f"created age identity {path} (mode 0600): keep it off the backup host\n"
        f"backup hosts use:  kms = 'age:///{recipient}'\n"
        f"restore uses:      kms = '{uri}'"
    )


@keys.command("list")
@click.option("--keyring", type=click.Path(file_okay=False), help=KEYRING_HELP)
def keys_list(keyring: str | None) -> None:
    """List the local keys of a keyring."""
    folder = Path(keyring) if keyring else default_keyring()
    for p in sorted(folder.glob("*.key")):
        click.echo(p.stem)
