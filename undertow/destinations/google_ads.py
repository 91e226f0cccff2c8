"""Google Ads Customer Match through the Data Manager API, on the kit's async job support.

Why the Data Manager API and not the Google Ads API's ``OfflineUserDataJobService``: from
April 1, 2026 the Google Ads API "no longer accept[s] new adopters of Customer Match"; a
developer token not on the allowlist gets ``CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE`` from
``OfflineUserDataJobService`` and ``UserDataService``, and Google recommends the Data Manager
API to new integrations (Google Ads Developer Blog, 2026-03-04). A new integration such as
this one must use it. ``docs/destinations/google_customer_match.md`` has the user's view.

How a batch maps to the API::

    add     POST /v1/audienceMembers:ingest   {destinations, audienceMembers, consent,
                                               encoding: HEX, termsOfService}
    remove  POST /v1/audienceMembers:remove   {destinations, audienceMembers, encoding}
    then    GET  /v1/requestStatus:retrieve?requestId=...   until it is no longer PROCESSING

A request is validated when it arrives: a member the API refuses is named by its index in
the ``BadRequest`` field violations (``audience_members[3]...``); those rows are rejected with
Google's description and the rest is sent again, once. The accepted request's ``requestId`` is
the job (recorded in the state store before the first poll, so a run resumed after a crash
polls it instead of sending the batch again). Its status is per destination: ``SUCCESS``,
``FAILED`` (every row rejected with the reasons), ``PARTIAL_SUCCESS`` (error counts by reason,
not by row: the rows stay accepted and the counts go to the log and ``stats``).

Fields a sync maps (hashed values are SHA-256 hex of Google-normalised values,
``pipeline/map/pii.py`` with ``variant: google``, the default here): ``email``, ``phone``,
``given_name``, ``family_name`` (hashed); ``region_code``, ``postal_code`` (in clear; an address
needs all four); ``ad_user_data`` / ``ad_personalization`` (per-member consent).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, SecretStr

from undertow.destinations._http import Response
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    Job,
    Operation,
    RateLimit,
    RecordKind,
)
from undertow.destinations.kit import (
    Auth,
    BearerAuth,
    HttpConfig,
    HttpDestination,
    Reject,
    SlowDown,
    parse_json,
)
from undertow.destinations.kit.signals import Verdict
from undertow.errors import FatalDeliveryError
from undertow.redact import trim

log = logging.getLogger(__name__)

BLOG_DOC = (
    "https://developers.google.com/ads/blog/posts/2026/03/changes-to-customer-match-support-in"
)
INGEST_DOC = (
    "https://developers.google.com/data-manager/api/reference/rest/v1/audienceMembers/ingest"
)
STATUS_DOC = (
    "https://developers.google.com/data-manager/api/reference/rest/v1/requestStatus/retrieve"
)
LIMITS_DOC = "https://developers.google.com/data-manager/api/devguides/limits"
FORMAT_DOC = "https://developers.google.com/data-manager/api/devguides/concepts/formatting"

MAX_MEMBERS = 10_000
"""``IngestAudienceMembersRequest`` / ``RemoveAudienceMembersRequest``: 10,000 audience
members, 10 user identifiers each. LIMITS_DOC"""
PER_MINUTE = RateLimit(300, 60.0, LIMITS_DOC)
"""IngestionService: 300 requests a minute per Google Cloud project. LIMITS_DOC"""
PER_DAY = RateLimit(100_000, 86_400.0, LIMITS_DOC)
"""IngestionService: 100,000 requests a day per Google Cloud project. LIMITS_DOC"""

HASHED = ("email", "phone", "given_name", "family_name")
CLEAR = ("region_code", "postal_code")
CONSENT = ("ad_user_data", "ad_personalization")
FIELDS = HASHED + CLEAR + CONSENT
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
VIOLATION = re.compile(r"audience_?[mM]embers\[(\d+)\]")
CONSENT_VALUES = {"granted": "CONSENT_GRANTED", "denied": "CONSENT_DENIED"}
HOW = {"email": "email", "phone": "phone", "given_name": "first_name", "family_name": "last_name"}
TOKEN_HINT = (
    "check the OAuth access token: scope https://www.googleapis.com/auth/datamanager, for a "
    "Google account with access to the Google Ads account (tokens last an hour)"
)


class GoogleAdsConfig(HttpConfig):
    """``destinations: {cm: {type: google_customer_match, account_id: ..., audience_id: ...}}``."""

    access_token: SecretStr = Field(description="OAuth 2.0 token, scope datamanager")
    account_id: str = Field(min_length=1)
    """The Google Ads customer id (``123-456-7890`` or digits) that owns the audience."""
    login_account_id: str | None = None
    """A manager account the credentials act through, if any."""
    audience_id: str = Field(min_length=1, pattern=r"^\d+$")
    """The Customer Match user list id (``productDestinationId``)."""
    base_url: str = "https://datamanager.googleapis.com"
    batch_size: int = Field(default=MAX_MEMBERS, ge=1, le=MAX_MEMBERS)
    max_concurrency: int = Field(default=4, ge=1, le=16)
    requests_per_minute: int = Field(default=PER_MINUTE.requests, ge=1)
    poll_seconds: float = Field(default=5.0, gt=0)
    """Seconds between two ``requestStatus:retrieve`` polls."""
    terms_accepted: bool = False
    """True once the Google Ads account accepted the Customer Match terms of service: sent as
    ``termsOfService.customerMatchTermsOfServiceStatus: ACCEPTED`` (required to add)."""
    ad_user_data: Literal["granted", "denied"] | None = None
    """Request-level consent (``consent.adUserData``); a mapped ``ad_user_data`` wins."""
    ad_personalization: Literal["granted", "denied"] | None = None


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


class RetryDelay(SlowDown):
    """429 ``RESOURCE_EXHAUSTED``: the wait from ``google.rpc.RetryInfo.retryDelay`` (``"30s"``)."""

    def read(self, response: Response, body: Any) -> Verdict | None:
        verdict = super().read(response, body)
        if verdict is None:
            return None
        details = body.get("error", {}).get("details", []) if isinstance(body, dict) else []
        for detail in details if isinstance(details, list) else []:
            delay = detail.get("retryDelay") if isinstance(detail, dict) else None
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    return replace(verdict, wait=float(delay[:-1]))
                except ValueError:
                    pass
        return verdict


CAPS = Capabilities(
    operations=frozenset({Operation.ADD, Operation.REMOVE}),
    max_batch_size=MAX_MEMBERS,
    max_concurrency=4,
    rate_limit=PER_MINUTE,
    rate_limits=(PER_DAY,),
    per_record_results=True,
    kind=RecordKind.MEMBERSHIP,
    docs=(BLOG_DOC, INGEST_DOC, STATUS_DOC, LIMITS_DOC, FORMAT_DOC),
    cite={"max_batch_size": LIMITS_DOC, "rate_limit": LIMITS_DOC, "rate_limits": LIMITS_DOC},
)


def google_error(body: Any, response: Response) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return trim(
            f"Google {error.get('status') or error.get('code')}: {error.get('message')}", 500
        )
    return f"Google: {response.describe()}"


class GoogleAdsDestination(HttpDestination[GoogleAdsConfig]):
    """Members of a Google Ads Customer Match audience, through the Data Manager API."""

    name = "google_customer_match"
    vendor = "Google"
    objects = ("users",)
    fake = "undertow.testing.google_ads:GoogleAdsFake"
    docs_url = INGEST_DOC
    pii_variant = "google"
    capabilities = CAPS
    async_jobs = True
    signals = (RetryDelay(default_wait=1.0),)
    check_path = None
    auth_hint = TOKEN_HINT
    demo = DemoProfile(
        destination="""\
type: google_customer_match
access_token: ${FAKE_TOKEN}
account_id: "123-456-7890"
audience_id: "9876543210"
terms_accepted: true
ad_user_data: granted
ad_personalization: granted
poll_seconds: 0.05
base_url: ${FAKE_URL}""",
        sync="""\
object: users
mode: mirror
mappings:
  email: {column: email, normalize: email, hash: sha256}
  given_name: {column: first_name, normalize: first_name, hash: sha256}
  family_name: {column: last_name, normalize: last_name, hash: sha256}
  region_code: {column: country, normalize: country}
  postal_code: {const: "10001"}""",
        token="google-demo-0000-local-fake",
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.poll_interval = self.config.poll_seconds  # type: ignore[misc]
        self.partial: dict[str, int] = {}
        """Error counts by reason of requests that partly succeeded (rows cannot be named)."""

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.access_token.get_secret_value())

    async def check(self) -> None:
        """A ``validateOnly`` remove of one made-up member: validates the token, the account
        and the audience without changing anything."""
        probe = {"userData": {"userIdentifiers": [{"emailAddress": "0" * 63 + "1"}]}}
        body = self._body(Batch("check", Operation.REMOVE, 0, "check", [], []), [probe])
        body["validateOnly"] = True
        response = await self.send(
            "POST", "/v1/audienceMembers:remove", json=body, expect=frozenset({200})
        )
        if response.status != 200:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} ({self.name}): the check failed: "
                f"{google_error(parse_json(response), response)}",
                hint="check account_id, login_account_id and audience_id",
            )

    def capabilities_for(self, object: str | None) -> Capabilities:
        return replace(
            CAPS,
            max_batch_size=self.config.batch_size,
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(self.config.requests_per_minute, 60.0, LIMITS_DOC),
        )

    async def validate_sync(
        self,
        *,
        sync: str,
        object: str | None,
        match: Any,
        fields: list[str],
        operations: frozenset[Operation] = frozenset(),
    ) -> list[str]:
        from undertow.errors import unknown_name

        problems = [
            f"sync {sync!r}: " + unknown_name("Customer Match field", f, FIELDS)
            for f in fields
            if f not in FIELDS
        ]
        if Operation.ADD in operations and not self.config.terms_accepted:
            problems.append(
                f"sync {sync!r}: destination {self.instance_name!r} needs `terms_accepted: "
                "true` (accept the Customer Match terms of service in Google Ads first)"
            )
        return problems

    # -- shaping ---------------------------------------------------------------------------

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        for name, value in record.items():
            if name not in FIELDS:
                return Reject(f"field {name!r} is not a Customer Match field ({', '.join(FIELDS)})")
            hashed = isinstance(value, str) and SHA256_HEX.match(value)
            if name in HASHED and value not in (None, "") and not hashed:
                return Reject(
                    f"{name} is not a SHA-256 hex digest (Google takes hashes of normalised "
                    f"values): map it as `{name}: {{column: ..., normalize: {HOW[name]}, "
                    "hash: sha256}`"
                )
        ids: list[dict[str, Any]] = []
        if record.get("email"):
            ids.append({"emailAddress": record["email"]})
        if record.get("phone"):
            ids.append({"phoneNumber": record["phone"]})
        address = {
            "givenName": record.get("given_name"),
            "familyName": record.get("family_name"),
            "regionCode": record.get("region_code"),
            "postalCode": record.get("postal_code"),
        }
        if any(address.values()):
            if not all(address.values()):
                missing = [k for k, v in address.items() if not v]
                return Reject(
                    "an address needs given_name, family_name, region_code and postal_code "
                    f"(missing {', '.join(missing)})"
                )
            ids.append({"address": {k: str(v) for k, v in address.items()}})
        if not ids:
            return Reject("no identifier (email, phone or an address) has a value for this row")
        member: dict[str, Any] = {"userData": {"userIdentifiers": ids}}
        if batch.operation is Operation.ADD:
            consent = {
                field: CONSENT_VALUES.get(str(record[name]).lower())
                for name, field in (
                    ("ad_user_data", "adUserData"),
                    ("ad_personalization", "adPersonalization"),
                )
                if record.get(name) not in (None, "")
            }
            if None in consent.values():
                return Reject("ad_user_data / ad_personalization must be granted or denied")
            if consent:
                member["consent"] = consent
        return member

    # -- submit and poll -------------------------------------------------------------------

    def _body(self, batch: Batch, members: list[Any]) -> dict[str, Any]:
        destination: dict[str, Any] = {
            "operatingAccount": {
                "accountType": "GOOGLE_ADS",
                "accountId": digits(self.config.account_id),
            },
            "productDestinationId": self.config.audience_id,
        }
        if self.config.login_account_id:
            destination["loginAccount"] = {
                "accountType": "GOOGLE_ADS",
                "accountId": digits(self.config.login_account_id),
            }
        body: dict[str, Any] = {
            "destinations": [destination],
            "audienceMembers": members,
            "encoding": "HEX",
        }
        if batch.operation is Operation.ADD:
            consent = {
                field: CONSENT_VALUES[value]
                for field, value in (
                    ("adUserData", self.config.ad_user_data),
                    ("adPersonalization", self.config.ad_personalization),
                )
                if value is not None
            }
            if consent:
                body["consent"] = consent
            body["termsOfService"] = {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
        return body

    async def submit_batch(self, batch: Batch) -> Job | BatchResult:
        if (batch.object or "users") != "users":
            raise self.unknown_object(batch)
        if batch.operation not in CAPS.operations:
            return await super().write_batch(batch)  # the kit's "cannot ..." error
        if batch.operation is Operation.ADD and not self.config.terms_accepted:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r}: adding members needs the Customer Match "
                "terms of service accepted; nothing was sent",
                hint="accept them in Google Ads (Tools > Audience manager), then set "
                "`terms_accepted: true`",
            )
        result = BatchResult()
        items = self.items(batch, None, result)
        path = (
            "/v1/audienceMembers:ingest"
            if batch.operation is Operation.ADD
            else "/v1/audienceMembers:remove"
        )
        for _attempt in range(2):  # once more without the members Google names as invalid
            if not items:
                return result
            response = await self.send(
                "POST",
                path,
                json=self._body(batch, [i.body for i in items]),
                expect=frozenset({200}),
            )
            body = parse_json(response)
            if response.status == 200 and isinstance(body, dict) and body.get("requestId"):
                return Job(
                    str(body["requestId"]),
                    {
                        "rejected": {str(k): v for k, v in result.rejected.items()},
                        "sent": [i.index for i in items],
                    },
                )
            if response.status != 400:
                raise FatalDeliveryError(
                    f"destination {self.instance_name!r}: {google_error(body, response)}"
                )
            named = self._violations(body, items)
            if not named:
                for item in items:
                    result.rejected[item.index] = google_error(body, response)
                return result
            result.rejected.update(named)
            items = [i for i in items if i.index not in named]
        for item in items:
            result.rejected[item.index] = "Google refused the request twice"
        return result

    @staticmethod
    def _violations(body: Any, items: list[Any]) -> dict[int, str]:
        """Batch index -> description, from ``BadRequest.fieldViolations`` naming members."""
        found: dict[int, str] = {}
        details = body.get("error", {}).get("details", []) if isinstance(body, dict) else []
        for detail in details if isinstance(details, list) else []:
            for violation in detail.get("fieldViolations", []) if isinstance(detail, dict) else []:
                match = VIOLATION.search(str(violation.get("field", "")))
                if match and int(match.group(1)) < len(items):
                    item = items[int(match.group(1))]
                    found[item.index] = trim(
                        f"Google: {violation.get('description') or violation.get('reason')}", 300
                    )
        return found

    async def poll_job(self, job: Job, batch: Batch) -> BatchResult | None:
        result = BatchResult(rejected={int(k): v for k, v in job.data.get("rejected", {}).items()})
        response = await self.send(
            "GET",
            "/v1/requestStatus:retrieve",
            params={"requestId": job.id},
            expect=frozenset({200}),
        )
        body = parse_json(response)
        if response.status != 200 or not isinstance(body, dict):
            raise FatalDeliveryError(
                f"destination {self.instance_name!r}: request {job.id}: {google_error(body, response)}",
                hint="the next run polls the same request again",
            )
        statuses = body.get("requestStatusPerDestination") or []
        status = statuses[0] if statuses and isinstance(statuses[0], dict) else {}
        state = status.get("requestStatus")
        if state in (None, "PROCESSING", "REQUEST_STATUS_UNKNOWN"):
            return None
        counts = {
            str(c.get("reason")): int(c.get("recordCount") or 0)
            for c in (status.get("errorInfo") or {}).get("errorCounts", [])
            if isinstance(c, dict)
        }
        sent = [int(i) for i in job.data.get("sent", range(len(batch)))]
        if state == "FAILED":
            why = ", ".join(f"{r} ({n})" for r, n in counts.items()) or "no reason given"
            for index in sent:
                result.rejected[index] = f"Google: request {job.id} FAILED: {why}"
        elif state == "PARTIAL_SUCCESS":
            for reason, n in counts.items():
                self.partial[reason] = self.partial.get(reason, 0) + n
            log.warning(
                "Google request %s of sync %r batch %d partly succeeded; records not used by "
                "reason (Google does not say which): %s",
                job.id,
                batch.sync,
                batch.number,
                counts,
            )
        return result


__all__ = ["GoogleAdsConfig", "GoogleAdsDestination"]
