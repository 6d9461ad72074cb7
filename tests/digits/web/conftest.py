"""The web console under test: a real `digits web` (uvicorn) process over the test's
deployment, and a real headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webserver import WebServer, chromium_path, start_web


@pytest.fixture
def web(backend: str, home: Path) -> Iterator[WebServer]:
    """The console over the test's deployment (embedded or PostgreSQL + Redis)."""
    server = start_web(home)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()
