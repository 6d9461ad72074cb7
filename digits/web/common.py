"""What every page and endpoint of the console shares: templates, rendering with the CSRF
token, who is deciding, and the dependency that guards every write."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from digits.core.settings import get_settings
from digits.web import security

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
OPEN_PATHS = ("/login", "/static/", "/healthz")


def reviewer_of(request: Request) -> str:
    """Who is deciding: the logged-in name, else the name the page stored, else ``local``."""
    name = getattr(request.state, "reviewer", None) or unquote(
        request.cookies.get("digits_reviewer") or ""
    )  # the review page stores it percent-encoded (a cookie value cannot hold every name)
    return (name or "local").strip()[:64] or "local"


def authenticate(request: Request, token: str) -> bool:
    if security.token_matches(token, security.bearer(request.headers.get("authorization"))):
        request.state.reviewer = request.state.reviewer or "api"
        request.state.bearer = True
        return True
    reviewer = security.session_reviewer(token, request.cookies.get(security.SESSION_COOKIE))
    if reviewer:
        request.state.reviewer = reviewer
        return True
    return False


def refused(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"detail": message}, status_code=status)
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


async def writer(request: Request) -> str:
    """Dependency of every write: the token (when one is set) and the CSRF token (always, for
    browsers; a bearer token is not sent by browsers on their own, so it needs none)."""
    token = get_settings().web_token
    if token and not request.state.authenticated:
        raise HTTPException(401, "this action needs the console token: log in at /login")
    if not getattr(request.state, "bearer", False):
        given = request.headers.get(security.CSRF_HEADER)
        if given is None and "form" in request.headers.get("content-type", ""):
            form = await request.form()
            value = form.get(security.CSRF_FIELD)
            given = value if isinstance(value, str) else None
        if not security.csrf_matches(request.cookies.get(security.CSRF_COOKIE), given):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and retry")
    return reviewer_of(request)


Writer = Depends(writer)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """A page with what every template needs: the CSRF token, who is logged in, the nav."""
    settings = get_settings()
    context |= {
        "csrf": request.state.csrf,
        "reviewer": reviewer_of(request),
        "token_required": bool(settings.web_token),
        "logged_in": bool(getattr(request.state, "authenticated", False)),
        "path": request.url.path,
    }
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def local_path(target: str) -> str:
    """Only same-site paths after login (no open redirect to another host)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"
