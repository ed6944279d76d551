"""``strongroom serve``: the CMEK API and the store's schedule (the server concerns live in ``server/``)."""

from __future__ import annotations

import click

from .common import STORE, open_store
from .logs import serving


@click.command()
@STORE
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8787, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    help="The API token (default $STRONGROOM_API_TOKEN, else <store>/api-token, made on first use).",
)
@click.option(
    "--schedule-interval",
    default=60,
    show_default=True,
    type=click.IntRange(min=1),
    help="Seconds between scheduler runs (due data key rotations, managed backups, backup schedules).",
)
@click.option(
    "--key-cache-ttl",
    default=300,
    show_default=True,
    type=click.IntRange(min=0),
    help="Seconds to keep an unwrapped key in memory, saving KMS calls across jobs (0: no cache).",
)
def serve(
    store: str | None, host: str, port: int, token_file: str | None, schedule_interval: int, key_cache_ttl: int
) -> None:
    """Serve CockroachDB Cloud's CMEK API for the store (/api/v1/clusters/<store id>/cmek), a console at /,
    /metrics, and run its schedules."""
    import uvicorn

    from ..server import create_app
    from ..server.auth import api_token

    s = open_store(store, unlock=False)  # not a store: say so before anything else
    token, message = api_token(s.path, token_file)
    if message:
        click.echo(message, err=True)
    serving()  # the strongroom loggers: INFO, in the format --log-format chose (uvicorn logs its own way)
    app = create_app(s.path, token, schedule_interval=schedule_interval, key_cache_ttl=key_cache_ttl)
    click.echo(f"serving http://{host}:{port}/api/v1/clusters/{s.id}/cmek (OpenAPI: /openapi.json)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
