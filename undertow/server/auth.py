"""Who may call ``undertow serve``: the API token, as a bearer header or as a browser session.

There is one secret, the server's API token, and one rule: every route but ``/health``,
``/login`` and the static assets needs it. A caller proves it holds the token in one of two
ways, and both grant exactly the same rights:

* ``Authorization: Bearer <token>`` (scripts, orchestrators, ``curl``). A browser never
  attaches this header by itself, so a bearer request needs no CSRF token.
* a session cookie (the web UI), set by ``POST /login`` after the token was typed in. The
  cookie is ``HttpOnly`` (no script can read it), ``SameSite=Lax`` (not sent by a
  cross-site POST, a frame or a fetch) and ``Secure`` when the page came over HTTPS. Every
  unsafe request (POST, PUT, PATCH, DELETE) made with the cookie must also carry the
  session's CSRF token (the ``X-CSRF-Token`` header, or a ``csrf`` form field), and its
  ``Origin``, when the browser sends one, must be this server.

Sessions are stateless: the cookie is ``v1.<issued>.<nonce>.<mac>``, an HMAC-SHA256 under a
key derived from the API token. Nothing is stored on the server, several ``serve`` processes
behind one URL accept each other's sessions, a session ends after :data:`SESSION_TTL`, and
changing the token ends every session at once. The CSRF token is a second HMAC of the
session's nonce, so it is bound to that session (a stolen CSRF token is useless without
its cookie, and the cookie is useless to a cross-site form without the CSRF token).

The login form itself is protected by a double-submit token: a random ``undertow_login``
cookie that the form must echo, so another site cannot log a browser in with its own token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "undertow_session"
LOGIN_COOKIE = "undertow_login"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SESSION_TTL = 12 * 3600
"""Seconds a browser session lasts; log in again after."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Caller:
    """How a request proved it holds the token."""

    via: str
    """``bearer`` or ``session``."""
    csrf: str | None = None
    """The session's CSRF token (for pages to embed); None for bearer callers."""


class Auth:
    """Checks a request against the server's API token (see the module docstring)."""

    def __init__(self, token: str, *, ttl: int = SESSION_TTL) -> None:
        if not token:
            raise ValueError("the API token is empty")
        self.token = token
        self.ttl = ttl
        self._key = hmac.new(token.encode(), b"undertow-session-v1", hashlib.sha256).digest()

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    # -- bearer -----------------------------------------------------------------------------

    def same_token(self, given: str) -> bool:
        return same(given.strip(), self.token)

    def bearer_ok(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and bool(value) and same(value.strip(), self.token)

    # -- sessions ---------------------------------------------------------------------------

    def new_session(self) -> str:
        issued = str(int(time.time()))
        nonce = secrets.token_hex(16)
        return f"v1.{issued}.{nonce}.{self._mac(f'{issued}.{nonce}')}"

    def session_nonce(self, cookie: str | None) -> str | None:
        """The nonce of a valid, unexpired session cookie; None otherwise."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
            return None
        _, issued, nonce, mac = parts
        if not same(mac, self._mac(f"{issued}.{nonce}")):
            return None
        age = time.time() - int(issued)
        if age < -60 or age > self.ttl:
            return None
        return nonce

    def csrf_for(self, nonce: str) -> str:
        return self._mac(f"csrf.{nonce}")

    def set_session(self, response: Response, request: Request) -> str:
        """Log the browser in: set the session cookie; return its CSRF token."""
        value = self.new_session()
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=self.ttl,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )
        nonce = self.session_nonce(value)
        assert nonce is not None
        return self.csrf_for(nonce)

    @staticmethod
    def clear_session(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")

    # -- the check every protected route makes ---------------------------------------------

    def caller(self, request: Request, *, form_csrf: str | None = None) -> Caller | None:
        """Who the request is, or None when it does not hold the token.

        A session request with an unsafe method also needs the CSRF token (header or
        ``form_csrf``) and, when the browser sent an ``Origin``, this server's origin.
        """
        if self.bearer_ok(request):
            return Caller(via="bearer")
        nonce = self.session_nonce(request.cookies.get(SESSION_COOKIE))
        if nonce is None:
            return None
        csrf = self.csrf_for(nonce)
        if request.method not in SAFE_METHODS:
            given = request.headers.get(CSRF_HEADER) or form_csrf or ""
            if not given or not same(given, csrf) or not same_origin(request):
                return None
        return Caller(via="session", csrf=csrf)

    # -- the login form's double-submit token ----------------------------------------------

    @staticmethod
    def set_login_token(response: Response, request: Request) -> str:
        """Set a fresh login-form token cookie; return the value the form must echo."""
        value = secrets.token_hex(16)
        response.set_cookie(
            LOGIN_COOKIE,
            value,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/login",
        )
        return value

    @staticmethod
    def login_token_ok(request: Request, given: str | None) -> bool:
        cookie = request.cookies.get(LOGIN_COOKIE)
        return bool(cookie and given and same(cookie, given) and same_origin(request))


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin.

    Browsers send ``Origin`` on every cross-origin request and on same-origin POSTs; a
    missing header (an old browser, a non-browser client) is not held against the caller,
    who still needs the session's CSRF token.
    """
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin != "null"
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.netloc == host


def safe_next(target: str | None) -> str:
    """A post-login redirect target that stays on this server (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
