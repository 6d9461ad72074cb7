"""Serving the console with uvicorn: `digits web`, `digits up --web`, the compose service."""

from __future__ import annotations

import uvicorn

from digits.web import security
from digits.web.app import create_app


class BindRefused(ValueError):
    """The console would be reachable off loopback without a token."""


def serve(host: str, port: int, token: str | None) -> None:
    """Run uvicorn in this process until interrupted (one process: the draw page's model is
    loaded once; uvicorn's own workers would each load it)."""
    problem = security.bind_problem(host, token)
    if problem:
        raise BindRefused(problem)
    uvicorn.run(
        create_app(public=not security.is_loopback(host)),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )
