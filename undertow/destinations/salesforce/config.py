"""The Salesforce destination's config, and each vendor limit next to the doc that states it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from undertow.destinations.kit import HttpConfig

COLLECTIONS_DOC = (
    "https://developer.salesforce.com/docs/platform/api-rest/guide/"
    "resources-composite-sobjects-collections-upsert.html"
)
BULK_LIMITS_DOC = (
    "https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/"
    "bulk_common_limits.htm"
)
BULK_CHOICE_DOC = (
    "https://developer.salesforce.com/docs/platform/salesforce-app-limits-cheatsheet/guide/"
    "salesforce-app-limits-platform-bulkapi.html"
)
CSV_DOC = (
    "https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_bulk_v2/"
    "datafiles_csv_valid_record_rows.htm"
)
LIMIT_HEADER_DOC = (
    "https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm"
)
ALLOCATIONS_DOC = (
    "https://developer.salesforce.com/docs/platform/salesforce-app-limits-cheatsheet/guide/"
    "salesforce-app-limits-platform-api.html"
)
CLIENT_CREDENTIALS_DOC = (
    "https://developer.salesforce.com/docs/atlas.en-us.chatterapi.meta/chatterapi/"
    "quickstart_connecting.htm"
)
JWT_DOC = "https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm"

COLLECTION_RECORDS = 200
"""Records per sObject Collections request ("The list can contain up to 200 objects"). """
BULK_THRESHOLD = 2_000
"""Salesforce: "Any data operation that includes more than 2,000 records is a good candidate
for Bulk API 2.0 ... fewer than 2,000 records should involve bulkified synchronous calls"."""
BULK_JOB_RECORDS = 10_000
"""Records per Bulk API 2.0 job (our choice: Salesforce splits a job into internal batches of
10,000 records; one job per Undertow batch keeps each job's results small)."""
BULK_UPLOAD_BYTES = 100 * 1024 * 1024
"""A job's CSV upload: "upload data that doesn't exceed 100 MB" (150 MB once base64-encoded)."""
CONCURRENT_LONG_REQUESTS = 25
"""Production orgs and sandboxes allow 25 concurrent API requests of 20 s or longer (Developer
Edition and trials 5); shorter requests are not limited."""


class SalesforceConfig(HttpConfig):
    """``destinations: {crm: {type: salesforce, client_id: ..., client_secret: ...}}``."""

    base_url: str = Field(
        default="https://login.salesforce.com",
        description="the login URL: your My Domain URL (https://<MyDomain>.my.salesforce.com), "
        "which the client credentials flow requires, or login.salesforce.com / "
        "test.salesforce.com; the REST API's instance URL comes back from the login",
    )
    auth: Literal["client_credentials", "jwt", "refresh_token"] = "client_credentials"
    client_id: str = Field(min_length=1, description="the connected app's Consumer Key")
    client_secret: SecretStr | None = None
    username: str | None = None
    """``auth: jwt``: the Salesforce username the integration acts as (the JWT's ``sub``)."""
    private_key: SecretStr | None = None
    """``auth: jwt``: the PEM private key whose certificate the connected app holds."""
    private_key_file: str | None = None
    audience: str | None = None
    """``auth: jwt``: the JWT's ``aud`` (default: test.salesforce.com for sandbox login URLs,
    else login.salesforce.com)."""
    refresh_token: SecretStr | None = None
    api_version: str = Field(default="62.0", pattern=r"^\d{2}\.0$")
    batch_size: int = Field(default=COLLECTION_RECORDS, ge=1, le=COLLECTION_RECORDS)
    """Records per sObject Collections request (at most 200)."""
    bulk_threshold: int | None = Field(default=BULK_THRESHOLD, ge=1)
    """A batch of at least this many records goes through a Bulk API 2.0 job; null: never."""
    bulk_batch_size: int = Field(default=BULK_JOB_RECORDS, ge=1, le=150_000)
    """Records per Bulk API 2.0 job (the size of Undertow's batches when Bulk is on)."""
    max_concurrency: int = Field(default=4, ge=1, le=CONCURRENT_LONG_REQUESTS)
    bulk_poll_seconds: float = Field(default=2.0, gt=0)
    """Seconds between two polls of a Bulk API 2.0 job."""

    @model_validator(mode="after")
    def _credentials(self) -> SalesforceConfig:
        checks: dict[str, list[tuple[str, object]]] = {
            "client_credentials": [("client_secret", self.client_secret)],
            "jwt": [
                ("username", self.username),
                ("private_key (or private_key_file)", self.private_key or self.private_key_file),
            ],
            "refresh_token": [("refresh_token", self.refresh_token)],
        }
        missing = [name for name, value in checks[self.auth] if not value]
        if missing:
            raise ValueError(
                f"auth: {self.auth} needs {' and '.join(missing)} (the connected app's "
                "credentials; put secrets in ${ENV} variables)"
            )
        return self

    @property
    def bulk_enabled(self) -> bool:
        return self.bulk_threshold is not None
