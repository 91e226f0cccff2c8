"""The fake org's OAuth 2.0 token endpoint (``POST /services/oauth2/token``) and sessions.

Three grants, as a connected app allows them:

* ``client_credentials`` (``client_id`` + ``client_secret`` in the form body): only on a My
  Domain login URL (otherwise ``invalid_grant: request not supported on this domain``) and
  only when the app has a run-as user;
* ``urn:ietf:params:oauth:grant-type:jwt-bearer`` (``assertion``): an RS256 JWT verified for
  real against the app's certificate (PyJWT), with ``iss`` the client id, ``sub`` a
  pre-authorised username, ``aud`` a login URL and an ``exp`` in the future;
* ``refresh_token`` (``client_id``, ``refresh_token``, optionally ``client_secret``).

A success answers ``access_token``, ``instance_url``, ``id``, ``token_type``, ``issued_at``
and ``signature``; a failure answers 400 ``{"error", "error_description"}`` as Salesforce
does. Access tokens live ``session_seconds``; an expired or unknown one gets the REST API's
401 ``INVALID_SESSION_ID``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LOGIN_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")
ORG_ID = "00D5g000004ORGAAA"
USER_ID = "0055g00000INTEGAAA"


class TokenError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class ConnectedApp:
    """What the fake org knows about the integration's connected app."""

    client_id: str
    client_secret: str | None
    username: str
    """The run-as user (client credentials) and the pre-authorised user (JWT bearer)."""
    certificate: str | None = None
    """PEM public key or certificate the JWT bearer flow verifies assertions with."""
    refresh_tokens: set[str] = field(default_factory=set)
    run_as_user: bool = True
    """False: client credentials answer ``no client credentials user enabled``."""


class Sessions:
    """Issued access tokens and their expiry."""

    def __init__(
        self,
        app: ConnectedApp,
        *,
        session_seconds: float = 7200.0,
        my_domain: bool = True,
        audiences: tuple[str, ...] = LOGIN_AUDIENCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.session_seconds = session_seconds
        self.my_domain = my_domain
        self.audiences = audiences
        self.clock = clock
        self.tokens: dict[str, float] = {}
        self.logins: list[str] = []
        """The grant type of every successful login, in order."""
        self._lock = threading.Lock()

    def valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        token = authorization.removeprefix("Bearer ")
        with self._lock:
            expires = self.tokens.get(token)
        return expires is not None and self.clock() < expires

    def expire_all(self) -> None:
        """End every session (the next API call gets 401 INVALID_SESSION_ID)."""
        with self._lock:
            self.tokens.clear()

    def login(self, form: dict[str, str], instance_url: str, login_url: str) -> dict[str, Any]:
        """The token endpoint's answer for a form body (raises TokenError)."""
        grant = form.get("grant_type", "")
        if grant == "client_credentials":
            self._client_credentials(form)
        elif grant == JWT_GRANT:
            self._jwt(form.get("assertion", ""), login_url)
        elif grant == "refresh_token":
            self._refresh(form)
        else:
            raise TokenError("unsupported_grant_type", "grant type not supported")
        token = f"{ORG_ID[:15]}!AR" + secrets.token_urlsafe(48)
        issued = str(int(time.time() * 1000))
        with self._lock:
            self.tokens[token] = self.clock() + self.session_seconds
            self.logins.append(grant)
        identity = f"{login_url}/id/{ORG_ID}/{USER_ID}"
        signature = hmac.new(b"fake-org-key", (identity + issued).encode(), hashlib.sha256)
        return {
            "access_token": token,
            "instance_url": instance_url,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued,
            "signature": base64.b64encode(signature.digest()).decode(),
            "scope": "api",
        }

    def _client(self, client_id: str | None) -> None:
        if client_id != self.app.client_id:
            raise TokenError("invalid_client_id", "client identifier invalid")

    def _client_credentials(self, form: dict[str, str]) -> None:
        if not self.my_domain:
            raise TokenError("invalid_grant", "request not supported on this domain")
        self._client(form.get("client_id"))
        secret = form.get("client_secret")
        if (
            self.app.client_secret is None
            or secret is None
            or not hmac.compare_digest(secret, self.app.client_secret)
        ):
            raise TokenError("invalid_client", "invalid client credentials")
        if not self.app.run_as_user:
            raise TokenError("invalid_grant", "no client credentials user enabled")

    def _jwt(self, assertion: str, login_url: str) -> None:
        import jwt  # PyJWT[crypto]: the fake verifies the signature for real

        if self.app.certificate is None:
            raise TokenError("invalid_grant", "invalid assertion")
        try:
            claims = jwt.decode(
                assertion,
                self.app.certificate,
                algorithms=["RS256"],
                options={"verify_aud": False, "require": ["iss", "sub", "aud", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("invalid_grant", "expired authorization code") from None
        except jwt.PyJWTError:
            raise TokenError("invalid_grant", "invalid assertion") from None
        self._client(claims.get("iss"))
        audience = claims.get("aud")
        allowed = (*self.audiences, login_url)
        if audience not in allowed and not (
            isinstance(audience, list) and set(audience) & set(allowed)
        ):
            raise TokenError("invalid_grant", "audience is invalid")
        if str(claims.get("sub", "")).casefold() != self.app.username.casefold():
            raise TokenError("invalid_grant", "user hasn't approved this consumer")

    def _refresh(self, form: dict[str, str]) -> None:
        self._client(form.get("client_id"))
        secret = form.get("client_secret")
        if secret is not None and (
            self.app.client_secret is None
            or not hmac.compare_digest(secret, self.app.client_secret)
        ):
            raise TokenError("invalid_client", "invalid client credentials")
        if form.get("refresh_token") not in self.app.refresh_tokens:
            raise TokenError("invalid_grant", "expired access/refresh token")
