"""The console's security: where it may listen, the token, the login cookie, CSRF, headers."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from webserver import WebServer, start_web

from digits.web import security

TOKEN = secrets.token_urlsafe(16)  # a fresh token per run: no literal secret in the repository


@pytest.mark.parametrize(
    ("host", "with_token", "refused"),
    [
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
        ("0.0.0.0", False, True),
        ("192.168.1.20", False, True),
        ("0.0.0.0", True, False),
    ],
)
def test_the_console_listens_off_loopback_only_with_a_token(
    host: str, with_token: bool, refused: bool
) -> None:
    assert (security.bind_problem(host, TOKEN if with_token else None) is not None) is refused


def test_digits_web_refuses_a_public_address_without_a_token(home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", "web", "--host", "0.0.0.0", "--port", "8765"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to serve the console on 0.0.0.0 without a token" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_answer_carries_the_security_headers(web: WebServer) -> None:
    with web.client() as client:
        for path in ("/", "/login", "/healthz", "/static/style.css", "/no-such-page"):
            headers = client.get(path).headers
            csp = headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp
            assert "script-src 'self';" in csp and "unsafe-inline" not in csp
            assert headers["x-content-type-options"] == "nosniff"


def test_a_form_post_without_the_csrf_token_is_refused(web: WebServer) -> None:
    with web.client() as client:
        client.get("/login")  # sets the CSRF cookie
        refused = client.post("/logout", data={})
        assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
        forged = client.post("/logout", data={"csrf": "guess"})
        assert forged.status_code == 403
        csrf = client.cookies[security.CSRF_COOKIE]
        assert client.post("/logout", data={"csrf": csrf}).status_code == 303


def _login(client: object, token: str, next_path: str = "/") -> object:
    page = client.get("/login")  # type: ignore[attr-defined]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return client.post(  # type: ignore[attr-defined]
        "/login", data={"csrf": csrf, "token": token, "name": "ana", "next": next_path}
    )


def test_with_a_token_writes_need_it_and_reads_on_loopback_do_not(home: Path) -> None:
    from digits.core.db import upgrade

    upgrade()
    server = start_web(home, env={"DIGITS_WEB_TOKEN": TOKEN})
    try:
        with server.client() as client:
            assert client.get("/").status_code == 200
            client.get("/login")
            csrf = client.cookies[security.CSRF_COOKIE]
            assert client.post("/logout", data={"csrf": csrf}).status_code == 401
            assert _login(client, "wrong").status_code == 401  # type: ignore[attr-defined]
            answer = _login(client, TOKEN)
            assert answer.status_code == 303  # type: ignore[attr-defined]
            cookie = answer.headers["set-cookie"]  # type: ignore[attr-defined]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie
            assert client.post("/logout", data={"csrf": csrf}).status_code == 303
    finally:
        server.stop()


def test_off_loopback_every_page_needs_the_token(home: Path) -> None:
    from digits.core.db import upgrade

    upgrade()
    server = start_web(home, "--host", "0.0.0.0", env={"DIGITS_WEB_TOKEN": TOKEN})
    try:
        with server.client() as client:
            page = client.get("/", headers={"accept": "text/html"})
            assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
            assert client.get("/api/openapi.json").status_code == 401
            bearer = {"authorization": f"Bearer {TOKEN}"}
            assert client.get("/api/openapi.json", headers=bearer).status_code == 200
            assert client.get("/healthz").status_code == 200
            assert _login(client, TOKEN, "//evil.example/").headers["location"] == "/"  # type: ignore[attr-defined]
            assert client.get("/", headers={"accept": "text/html"}).status_code == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_in_the_browser_a_page_without_the_token_is_refused(home: Path, page: Any) -> None:
    """Off loopback with a token: the browser is sent to the login form, a wrong token is
    refused there, and the right one (with a name) opens the dashboard."""
    from digits.core.db import upgrade

    upgrade()
    server = start_web(home, "--host", "0.0.0.0", env={"DIGITS_WEB_TOKEN": TOKEN})
    try:
        page.goto(f"{server.url}/review")
        assert page.url.endswith("/login?next=/review")
        assert page.locator("h1").inner_text() == "Log in"
        page.fill("input[name=name]", "ana")
        page.fill("input[name=token]", "not-the-token")
        page.click("button[type=submit]")
        assert page.locator("p.error").inner_text() == "Wrong token."
        page.fill("input[name=name]", "ana")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{server.url}/review")
        assert "ana" in page.locator("header.top .who").inner_text()
    finally:
        server.stop()
