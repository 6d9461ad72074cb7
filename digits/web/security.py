"""Who may do what in the web console, and the headers every answer carries.

* Without ``DIGITS_WEB_TOKEN`` the console serves loopback only (``digits web`` refuses any
  other address), and anyone who can reach it may read and decide.
* With a token, every write (review decisions, uploads, predictions) needs it, and when the
  server listens off loopback every page does too. Browsers log in once through a form that
  sets a signed session cookie (HttpOnly, SameSite=Strict); the API takes
  ``Authorization: Bearer <token>``.
* Every form and every script-driven write carries a CSRF token (double submit: a random value
  in a SameSite=Strict HttpOnly cookie, echoed by the page in a hidden field or the
  ``X-CSRF-Token`` header), so another site cannot make a logged-in browser post here.
* Content-Security-Policy without inline scripts, nosniff, frame-ancestors 'none'.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "digits_session"
CSRF_COOKIE = "digits_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SESSION_SECONDS = 7 * 24 * 3600
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` are loopback; anything else (0.0.0.0 included) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, token: str | None) -> str | None:
    """Why the console must not listen on ``host`` (None when it may)."""
    if is_loopback(host) or token:
        return None
    return (
        f"refusing to serve the console on {host} without a token: anyone who can reach it "
        "could read every result and change reviews; set DIGITS_WEB_TOKEN (or listen on "
        "127.0.0.1)"
    )


def _serializer(token: str) -> URLSafeTimedSerializer:
    # the signing key is derived from the token: changing the token logs everybody out
    key = hashlib.sha256(b"digits-web-session:" + token.encode()).hexdigest()
    return URLSafeTimedSerializer(key, salt="digits-session")


def session_value(token: str, reviewer: str) -> str:
    return _serializer(token).dumps({"reviewer": reviewer})


def session_reviewer(token: str, value: str | None) -> str | None:
    """The reviewer name in a valid session cookie, else None."""
    if not value:
        return None
    try:
        data: Any = _serializer(token).loads(value, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    return str(data.get("reviewer") or "reviewer") if isinstance(data, dict) else None


def token_matches(token: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(token.encode(), (given or "").encode())


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_matches(cookie: str | None, given: str | None) -> bool:
    return bool(cookie) and bool(given) and hmac.compare_digest(cookie or "", given or "")
