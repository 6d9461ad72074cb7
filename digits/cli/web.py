"""`digits web`: the web console (dashboard, review queue, draw, upload, JSON API)."""

from __future__ import annotations

from typing import Annotated

import typer

from digits.cli.common import app, fail, stop_with_parent


@app.command()
def web(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [default: DIGITS_WEB_HOST, 127.0.0.1]")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port [default: DIGITS_WEB_PORT, 8000]", min=1, max=65535)
    ] = None,
    exit_with_parent: Annotated[
        int | None,
        typer.Option(
            help="Stop once process PID is no longer this server's parent (what "
            "`digits up --web` passes, so its console never outlives it)."
        ),
    ] = None,
) -> None:
    """Serve the web console. Off loopback it needs DIGITS_WEB_TOKEN (every page asks for it)."""
    from digits.core.db import upgrade
    from digits.core.settings import get_settings
    from digits.web.server import BindRefused, serve

    if exit_with_parent is not None:
        stop_with_parent(exit_with_parent)
    settings = get_settings()
    host = host or settings.web_host
    port = port or settings.web_port
    upgrade()
    typer.echo(f"digits web console on http://{host}:{port}/  (Ctrl-C stops it)")
    try:
        serve(host, port, settings.web_token)
    except BindRefused as exc:
        raise fail(str(exc), 2) from None
