"""What the Snowflake source and the Snowflake table destination share: the connection keys,
the connector's keyword arguments, and what a failed login means.

Both sides take the same keys (``account``, ``user``, a password, a key pair or another
authenticator, ``warehouse``, ``role``, ``database``, ``schema``; or a ``url`` naming them),
register the same secrets with the one redaction helper, and word a refused login the same
way; only the error class differs (``SourceError`` for a source, ``FatalDeliveryError`` or
``RetryableError`` for a destination), so the callers pass their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr, model_validator

from undertow.errors import UndertowError
from undertow.redact import register_secret
from undertow.sources import _cloud

SESSION_PARAMETERS: dict[str, Any] = {
    "TIMEZONE": "UTC",
    "QUOTED_IDENTIFIERS_IGNORE_CASE": False,
    "QUERY_TAG": "undertow",
}
"""Every session: LTZ timestamps in UTC; quoted names keep their case (the warehouse diff
engine and the table destination quote every identifier)."""

_AUTH_ERRNOS = (390100, 390144)
"""Snowflake's own codes: incorrect username or password; key pair or JWT refused."""
_REACH_ERRNOS = (250001, 250003, 251011, 251012)
"""The connector's: could not connect to the backend, failed to request, login timed out
(``snowflake.connector.errorcode``: ER_FAILED_TO_CONNECT_TO_DB is 250001)."""


class SnowflakeConnection(BaseModel):
    """The keys that reach an account: a user with a password, a key pair or another
    authenticator; ``url`` (``snowflake://user:password@account/database/schema?warehouse=..``)
    fills the keys it names."""

    url: SecretStr | None = None
    account: str | None = None
    """The account identifier, ``orgname-account_name`` (or the legacy locator)."""
    user: str | None = None
    password: SecretStr | None = None
    private_key: SecretStr | None = None
    """A PEM private key (key-pair authentication), its text; or ``private_key_file``."""
    private_key_file: str | None = None
    private_key_passphrase: SecretStr | None = None
    authenticator: str | None = None
    """``snowflake`` (default), ``externalbrowser``, ``oauth`` (with ``token``), ..."""
    token: SecretStr | None = None
    warehouse: str | None = None
    role: str | None = None
    database: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    host: str | None = None
    """Only for a private-link host or a local emulator; derived from ``account`` otherwise."""
    port: int | None = None
    protocol: Literal["https", "http"] = "https"
    login_timeout: int = 30
    """Seconds to wait for the login."""

    @model_validator(mode="after")
    def _complete(self) -> SnowflakeConnection:
        if self.url is not None:
            self._apply_url(self.url.get_secret_value())
        if not self.account or not self.user:
            raise ValueError("set `account` and `user` (or a `url` naming both)")
        if self.private_key is not None and self.private_key_file is not None:
            raise ValueError("set `private_key` or `private_key_file`, not both")
        return self

    def _apply_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "snowflake":
            raise ValueError("`url` must start with snowflake://")
        path = [unquote(p) for p in parts.path.strip("/").split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        given = {
            "account": parts.hostname,
            "user": unquote(parts.username) if parts.username else None,
            "database": path[0] if path else None,
            "schema_": path[1] if len(path) > 1 else None,
            "warehouse": query.get("warehouse"),
            "role": query.get("role"),
            "authenticator": query.get("authenticator"),
        }
        for key, value in given.items():
            if value is not None and getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if parts.password and self.password is None:
            object.__setattr__(self, "password", SecretStr(unquote(parts.password)))

    def register_secrets(self) -> None:
        """Every secret of these keys, registered with the one redaction helper."""
        for secret in (self.password, self.private_key, self.private_key_passphrase, self.token):
            register_secret(secret.get_secret_value() if secret else None)
        if self.url is not None:
            register_secret(urlsplit(self.url.get_secret_value()).password)


ErrorFactory = Callable[[str, str | None], UndertowError]
"""Builds the caller's error from a message and a hint."""


def connector() -> Any:
    """``snowflake.connector`` (with its ``errors``), or the missing-driver error with the
    exact ``pip install``."""
    sf = _cloud.driver("snowflake.connector", "snowflake-connector-python", "snowflake")
    _cloud.driver("snowflake.connector.errors", "snowflake-connector-python", "snowflake")
    return sf


def connect_kwargs(
    c: SnowflakeConnection, *, base_dir: str, who: str, error: ErrorFactory
) -> dict[str, Any]:
    """The keyword arguments of ``snowflake.connector.connect`` (secrets included)."""
    kwargs: dict[str, Any] = {
        "account": c.account,
        "user": c.user,
        "warehouse": c.warehouse,
        "role": c.role,
        "database": c.database,
        "schema": c.schema_,
        "login_timeout": c.login_timeout,
        "session_parameters": dict(SESSION_PARAMETERS),
        "arrow_number_to_decimal": True,
        "application": "undertow",
    }
    if c.password is not None:
        kwargs["password"] = c.password.get_secret_value()
    if c.authenticator:
        kwargs["authenticator"] = c.authenticator
    if c.token is not None:
        kwargs["token"] = c.token.get_secret_value()
    key = private_key_der(c, base_dir=base_dir, who=who, error=error)
    if key is not None:
        kwargs["private_key"] = key
    if c.host:
        kwargs.update(host=c.host, protocol=c.protocol)
    if c.port:
        kwargs["port"] = c.port
    return {k: v for k, v in kwargs.items() if v is not None}


def private_key_der(
    c: SnowflakeConnection, *, base_dir: str, who: str, error: ErrorFactory
) -> bytes | None:
    """The PEM key as DER (PKCS#8), the form the connector takes."""
    if c.private_key is None and c.private_key_file is None:
        return None
    if c.private_key is not None:
        pem = c.private_key.get_secret_value().encode()
    else:
        path = Path(base_dir, str(c.private_key_file)).expanduser()
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise error(
                f"{who}: cannot read private_key_file {path}: {exc.strerror}",
                "fix `private_key_file` (relative paths start at the project folder)",
            ) from None
    serialization = _cloud.driver(
        "cryptography.hazmat.primitives.serialization", "cryptography", "snowflake"
    )
    passphrase = c.private_key_passphrase
    try:
        key = serialization.load_pem_private_key(
            pem, password=passphrase.get_secret_value().encode() if passphrase else None
        )
    except (ValueError, TypeError) as exc:
        raise error(
            f"{who}: the private key cannot be loaded: {exc}",
            "give the PEM text of a PKCS#8 key (-----BEGIN PRIVATE KEY-----, or "
            "ENCRYPTED PRIVATE KEY with `private_key_passphrase`)",
        ) from None
    der: bytes = key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    return der


@dataclass(frozen=True)
class LoginProblem:
    """Why a connection failed, worded for the user (the text is redacted)."""

    message: str
    hint: str | None
    unreachable: bool
    """True when the account could not be reached (worth retrying), False when it refused."""


def login_problem(exc: BaseException, c: SnowflakeConnection, who: str) -> LoginProblem:
    """What a failed ``snowflake.connector.connect`` means, and what to do about it."""
    text = _cloud.first_line(exc)
    lowered = text.lower()
    where = f"snowflake account {c.account!r}"
    errno = getattr(exc, "errno", None)
    if errno in _AUTH_ERRNOS or "incorrect username or password" in lowered:
        return LoginProblem(
            f"{who}: {where} refused user {c.user!r}: {text}",
            "check `user` and the password or key (never shown); for key-pair auth, the "
            "public key must be set on the user: ALTER USER <user> SET RSA_PUBLIC_KEY='...';",
            unreachable=False,
        )
    if "role" in lowered and ("not exist" in lowered or "not authorized" in lowered):
        return LoginProblem(
            f"{who}: {text}",
            f"grant the role to the user: GRANT ROLE {c.role} TO USER {c.user}; or fix `role`",
            unreachable=False,
        )
    if errno in _REACH_ERRNOS or "timed out" in lowered or "resolve" in lowered:
        return LoginProblem(
            f"{who}: cannot reach {where}: {text}",
            "check `account` is the account identifier (orgname-account_name, as in "
            "https://<account>.snowflakecomputing.com) and that this machine reaches it",
            unreachable=True,
        )
    return LoginProblem(f"{who}: cannot connect to {where}: {text}", None, unreachable=True)
