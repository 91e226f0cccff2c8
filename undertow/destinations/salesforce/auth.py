"""Salesforce OAuth 2.0: client credentials, JWT bearer and refresh token; instance discovery.

Every flow posts a form to ``<login URL>/services/oauth2/token`` and gets back an access
token and the org's ``instance_url``, where the REST API lives: the destination's HTTP
client is then pointed at ``<instance_url>/services/data/vNN.0`` (and allowed to send there,
an origin it did not know before the login). A 401 from the REST API (``INVALID_SESSION_ID``:
the session timed out or was revoked) logs in again once and resends the request.

* ``client_credentials``: ``client_id`` + ``client_secret`` of a connected app with a run-as
  user; Salesforce accepts it only on the org's My Domain login URL.
* ``jwt``: an RS256 JWT (``iss`` client id, ``sub`` username, ``aud`` login.salesforce.com or
  test.salesforce.com, ``exp`` three minutes ahead) signed with the private key whose
  certificate is uploaded to the connected app. Signed with PyJWT on ``cryptography``: the
  field's standard libraries (simple-salesforce and the Salesforce CLI use the same scheme);
  a hand-rolled signer would need ``cryptography`` anyway.
* ``refresh_token``: a refresh token issued to the connected app (``client_secret`` too when
  the app requires it).

Every secret (client secret, private key, refresh token, assertion, access token) is
registered with :mod:`undertow.redact` before it is sent, so no message, log line or
captured exchange can show it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, urlencode, urlsplit

from undertow.destinations._http import DRY_RUN_TOKEN, dry_run_active
from undertow.destinations.kit import Auth
from undertow.errors import FatalDeliveryError, RetryableError
from undertow.redact import register_secret, trim

if TYPE_CHECKING:
    from undertow.destinations._http import HttpClient
    from undertow.destinations.salesforce.config import SalesforceConfig

TOKEN_PATH = "/services/oauth2/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME = 180
"""Seconds until the assertion expires (the JWT bearer flow's documented window)."""

HINTS = {
    "invalid_client_id": "check client_id: it is the connected app's Consumer Key",
    "invalid_client": "check client_secret: it is the connected app's Consumer Secret",
    "request not supported on this domain": "the client credentials flow works only on the "
    "org's My Domain login URL: set base_url to https://<MyDomain>.my.salesforce.com",
    "no client credentials user enabled": "in the connected app, enable the Client Credentials "
    "Flow and choose a Run As user",
    "user hasn't approved this consumer": "pre-authorise the user for the connected app (its "
    "policies: Admin approved users; add the user's profile or permission set)",
    "invalid assertion": "the JWT was refused: the certificate uploaded to the connected app "
    "must match private_key, and the app must use digital signatures",
    "audience is invalid": "set audience to https://login.salesforce.com (production) or "
    "https://test.salesforce.com (sandbox)",
    "expired authorization code": "the JWT had expired when Salesforce read it: check this "
    "machine's clock",
    "expired access/refresh token": "the refresh token was revoked or expired: authorise the "
    "connected app again and store the new refresh token",
    "authentication failure": "check the credentials and that the user may use the connected app",
}


def remember(secret: str) -> None:
    """Register a secret and its form-encoded spelling (it travels in a form body)."""
    register_secret(secret)
    register_secret(quote_plus(secret))


def audience_for(login_url: str) -> str:
    """The JWT ``aud`` Salesforce expects for a login URL (sandboxes use test.salesforce.com)."""
    host = (urlsplit(login_url).hostname or "").lower()
    if host == "test.salesforce.com" or ".sandbox.my.salesforce.com" in host:
        return "https://test.salesforce.com"
    return "https://login.salesforce.com"


class SalesforceAuth(Auth):
    """An access token from one of the three flows, renewed after a 401."""

    def __init__(self, config: SalesforceConfig, destination: str) -> None:
        self.config = config
        self.destination = destination
        self.login_url = config.base_url.rstrip("/")
        self.token: str | None = None
        self.instance_url: str | None = None
        self.logins = 0
        self._lock = asyncio.Lock()
        for secret in (config.client_secret, config.private_key, config.refresh_token):
            if secret is not None:
                remember(secret.get_secret_value())

    def headers(self) -> dict[str, str]:
        token = self.token or (DRY_RUN_TOKEN if dry_run_active() else None)
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def refresh(self, client: HttpClient) -> bool:
        """After a 401: log in again (once for the requests that got a 401 together: those
        that waited for the lock find a new token and resend with it)."""
        stale = self.token
        async with self._lock:
            if self.token == stale:
                await self._login(client)
        return True

    async def ensure(self, client: HttpClient) -> None:
        """Log in unless a token is held (or in a dry run, which sends nothing)."""
        if self.token is not None or dry_run_active():
            return
        async with self._lock:
            if self.token is None:
                await self._login(client)

    # -- the flows ---------------------------------------------------------------------------

    def form(self) -> dict[str, str]:
        """The token request's form for the configured flow (its secrets registered)."""
        config = self.config
        if config.auth == "client_credentials":
            assert config.client_secret is not None
            return {
                "grant_type": "client_credentials",
                "client_id": config.client_id,
                "client_secret": config.client_secret.get_secret_value(),
            }
        if config.auth == "refresh_token":
            assert config.refresh_token is not None
            form = {
                "grant_type": "refresh_token",
                "client_id": config.client_id,
                "refresh_token": config.refresh_token.get_secret_value(),
            }
            if config.client_secret is not None:
                form["client_secret"] = config.client_secret.get_secret_value()
            return form
        assertion = self.assertion()
        remember(assertion)
        return {"grant_type": JWT_GRANT, "assertion": assertion}

    def assertion(self) -> str:
        """The signed JWT of the JWT bearer flow."""
        try:
            import jwt
        except ImportError:  # pragma: no cover - the extra is in dev
            raise FatalDeliveryError(
                f"destination {self.destination!r} (salesforce): auth: jwt needs PyJWT",
                hint='pip install "undertow[salesforce]"',
            ) from None
        config = self.config
        claims = {
            "iss": config.client_id,
            "sub": config.username,
            "aud": config.audience or audience_for(self.login_url),
            "exp": int(time.time()) + JWT_LIFETIME,
        }
        try:
            return jwt.encode(claims, self._private_key(), algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise FatalDeliveryError(
                f"destination {self.destination!r} (salesforce): private_key is not a PEM RSA "
                f"private key ({type(exc).__name__})",
                hint="give the key that begins with -----BEGIN PRIVATE KEY----- (or RSA PRIVATE "
                "KEY), unencrypted, whose certificate is uploaded to the connected app",
            ) from None

    def _private_key(self) -> str:
        config = self.config
        if config.private_key is not None:
            return config.private_key.get_secret_value()
        assert config.private_key_file is not None
        path = Path(config.private_key_file).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise FatalDeliveryError(
                f"destination {self.destination!r} (salesforce): cannot read private_key_file "
                f"{str(path)!r}: {exc.strerror}",
                hint="point private_key_file at the connected app's private key (PEM)",
            ) from None
        remember(text.strip())
        return text

    async def _login(self, client: HttpClient) -> None:
        body = urlencode(self.form()).encode()
        response = await client.request(
            "POST",
            self.login_url + TOKEN_PATH,
            body=body,
            content_type="application/x-www-form-urlencoded",
            raise_for_status=False,
        )
        answer = _json(response.body)
        if response.status == 200 and isinstance(answer, dict) and answer.get("access_token"):
            token = str(answer["access_token"])
            register_secret(token)
            instance = str(answer.get("instance_url") or self.login_url).rstrip("/")
            self.token, self.instance_url = token, instance
            self.logins += 1
            client.allow(instance)
            client.base_url = f"{instance}/services/data/v{self.config.api_version}"
            return
        if response.status >= 500 or response.status == 429:
            raise RetryableError(
                f"destination {self.destination!r} (salesforce): the login failed for now: "
                f"{response.describe()}"
            )
        error = str(answer.get("error", "")) if isinstance(answer, dict) else ""
        detail = str(answer.get("error_description", "")) if isinstance(answer, dict) else ""
        why = f"{error}: {detail}" if error else trim(response.describe(), 300)
        raise FatalDeliveryError(
            f"destination {self.destination!r} (salesforce): Salesforce refused the "
            f"{self.config.auth} login at {self.login_url}{TOKEN_PATH}: {why}",
            hint=HINTS.get(detail) or HINTS.get(error) or HINTS["authentication failure"],
        )


def _json(body: bytes) -> Any:
    import orjson

    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
