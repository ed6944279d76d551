"""``strongroom demo``: a wrapper around :mod:`strongroom.demo`."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False), help="Where to put the demo (default: a new temp dir)."
)
def demo(directory: str | None) -> None:
    """Tell the seed's story on the embedded default: passphrase and multi-KMS backups, restore, verify."""
    from ..demo import run_demo

    run_demo(directory)
