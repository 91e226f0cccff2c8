"""How a kit destination proves who it is: one small object per scheme.

Each scheme registers its secret with :mod:`undertow.redact` when built, so no message, log
line, captured exchange or stored error can show it, and says which request headers or
query parameters it adds. ``refresh`` is called once after a 401: an OAuth scheme fetches a
new access token and returns True (the request is sent again); the static schemes return
False and the 401 stops the run with the destination's hint.

    BearerAuth(token)                      Authorization: Bearer <token>
    BasicAuth(user, password)              Authorization: Basic base64(user:password)
    HeaderAuth("Api-Key", key)             Api-Key: <key>     (prefix="Klaviyo-API-Key ")
    QueryAuth("access_token", token)       ?access_token=<token>  (never in messages)
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from undertow.redact import register_secret

if TYPE_CHECKING:
    from undertow.destinations._http import HttpClient


class Auth:
    """No credentials (a base for the schemes below)."""

    def headers(self) -> dict[str, str]:
        """Headers added to every request."""
        return {}

    def params(self) -> dict[str, str]:
        """Query parameters added to every request."""
        return {}

    async def refresh(self, client: HttpClient) -> bool:
        """After a 401: get fresh credentials and return True to send the request again."""
        return False


class BearerAuth(Auth):
    def __init__(self, token: str) -> None:
        register_secret(token)
        self._token = token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}


class BasicAuth(Auth):
    def __init__(self, user: str, password: str) -> None:
        register_secret(password)
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        register_secret(encoded)
        self._value = f"Basic {encoded}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": self._value}


class HeaderAuth(Auth):
    def __init__(self, header: str, secret: str, *, prefix: str = "") -> None:
        register_secret(secret)
        self._header = header
        self._value = f"{prefix}{secret}"

    def headers(self) -> dict[str, str]:
        return {self._header: self._value}


class QueryAuth(Auth):
    def __init__(self, param: str, secret: str) -> None:
        register_secret(secret)
        self._param = param
        self._secret = secret

    def params(self) -> dict[str, str]:
        return {self._param: self._secret}
