"""The ASGI app: routers, templates, static files and the security middleware.

``create_app`` is what uvicorn serves (`digits web`, `digits up --web`, the compose ``web``
service). Each area registers its own router (pages, review, draw, upload, api), as each
domain registers its own tasks in the worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from digits.core.settings import get_settings
from digits.web import api, draw, pages, review, security, upload
from digits.web.common import HERE, OPEN_PATHS, Writer, authenticate, local_path, refused, render


def create_app(public: bool = False) -> FastAPI:
    """``public``: the server listens off loopback, so every page needs the token."""
    app = FastAPI(
        title="digits",
        summary="Batch scoring of handwritten digits: batches, results, reviews, predictions.",
        docs_url=None,  # served by api.py from vendored assets (no CDN, CSP kept)
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.public = public

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        token = get_settings().web_token
        request.state.reviewer = None
        request.state.bearer = False
        request.state.authenticated = bool(token and authenticate(request, token))
        cookie = request.cookies.get(security.CSRF_COOKIE)
        request.state.csrf = cookie or security.new_csrf()
        path = request.url.path
        if token and public and not request.state.authenticated and not path.startswith(OPEN_PATHS):
            response = refused(request, 401, "this console needs its token: log in at /login")
        else:
            response = await call_next(request)
        if not cookie:
            response.set_cookie(
                security.CSRF_COOKIE,
                request.state.csrf,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        for name, value in security.SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> Response:
        return render(request, "login.html", next=local_path(next), error=None)

    @app.post("/login", include_in_schema=False)
    async def login(
        request: Request,
        token: str = Form(""),
        name: str = Form(""),
        csrf: str = Form(""),
        next: str = Form("/"),
    ) -> Response:
        settings = get_settings()
        if not security.csrf_matches(request.cookies.get(security.CSRF_COOKIE), csrf):
            return render(
                request, "login.html", 403, next=local_path(next), error="Reload the page."
            )
        if not settings.web_token or not security.token_matches(settings.web_token, token):
            return render(request, "login.html", 401, next=local_path(next), error="Wrong token.")
        response = RedirectResponse(local_path(next), status_code=303)
        response.set_cookie(
            security.SESSION_COOKIE,
            security.session_value(settings.web_token, name.strip()[:64] or "reviewer"),
            max_age=security.SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, _: str = Writer) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(security.SESSION_COOKIE)
        return response

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (pages, review, draw, upload, api):
        app.include_router(module.router)
    return app
