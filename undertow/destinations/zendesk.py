"""Zendesk Support: users and organizations, through the bulk job endpoints and job statuses.

How a batch maps to Zendesk (``docs/destinations/zendesk.md`` has the user's view)::

    users          upsert  POST   /api/v2/users/create_or_update_many      job, 100 per request
                   insert  POST   /api/v2/users/create_many                job
                   delete  DELETE /api/v2/users/destroy_many?external_ids  job
    organizations  upsert  POST   /api/v2/organizations/create_or_update   one per request
                   insert  POST   /api/v2/organizations/create_many        job
                   delete  DELETE /api/v2/organizations/destroy_many?external_ids  job

A job endpoint answers at once with a queued ``job_status``; the work happens in the
background and ``GET /api/v2/job_statuses/{id}`` reports it, then per record: ``results``
entries carry the ``index`` of the record they describe, ``status`` ``Created``/``Updated``
or ``Failed`` with ``error`` and ``details``. Zendesk has no ``create_or_update_many`` for
organizations: their upsert is one ``create_or_update`` call per record (matched by
``external_id``), sent concurrently within the account's rate limit.

Rate limits are per account and plan (requests per minute); a 429 carries ``Retry-After``
in seconds, and ``X-Rate-Limit-Remaining`` on every answer lets the budget slow down before
one (another app spending the same account). Too many jobs queued at once is a 429 too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, ClassVar

from pydantic import Field, SecretStr, model_validator

from undertow.destinations import retry
from undertow.destinations._http import Response
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    Job,
    MatchRule,
    Operation,
    RateLimit,
)
from undertow.destinations.kit import (
    Auth,
    BasicAuth,
    BearerAuth,
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Item,
    RateHeaders,
    Reject,
    SlowDown,
    parse_json,
)
from undertow.destinations.rate import Interrupted, pause
from undertow.errors import (
    FatalDeliveryError,
    InterruptedDelivery,
    RejectedBatchError,
    RetryableError,
    did_you_mean,
)
from undertow.redact import trim

USERS_DOC = "https://developer.zendesk.com/api-reference/ticketing/users/users/"
ORGS_DOC = "https://developer.zendesk.com/api-reference/ticketing/organizations/organizations/"
JOBS_DOC = "https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/"
"""Show Job Status, Show Many Job Statuses (``show_many?ids=``), List Job Statuses."""
LIMITS_DOC = "https://developer.zendesk.com/api-reference/introduction/rate-limits"
JOB_LIMIT_DOC = "https://support.zendesk.com/hc/en-us/articles/8050017386522"

MAX_PER_JOB = 100
"""create_or_update_many: "Accepts an array of up to 100 user objects" (also create_many,
destroy_many)."""
TEAM_PER_MINUTE = 200
"""Requests per minute on the Team plan, the lowest (Growth/Professional 400, Enterprise
700, Enterprise Plus or the High Volume add-on 2,500): set ``rate_limit_per_minute``."""
JOB_LIMIT = 30
"""Jobs queued or running at once per account (Zendesk's example: 30); more get 429."""
POLL_SECONDS = 3.0
"""Between two polls: long enough that one poll answers for many jobs (polls spend the
same per-minute budget as writes)."""
CONCURRENCY = 12
"""Batches (jobs) in flight per sync: with 3 s polls, enough to keep the budget busy with
writes; well under the account's job limit of 30."""
MATCH = {"users": ("email", "external_id"), "organizations": ("external_id",)}
OBJECTS = ("users", "organizations")
GONE = frozenset({"RecordNotFound", "UserNotFound", "OrganizationNotFound"})
"""Job result errors meaning the record is not there: its delete is done."""
FINISHED = frozenset({"completed", "failed", "killed"})
USER_ATTRIBUTES = frozenset(
    {
        "name",
        "email",
        "external_id",
        "role",
        "phone",
        "organization_id",
        "user_fields",
        "tags",
        "notes",
        "details",
        "time_zone",
        "locale",
        "locale_id",
        "alias",
        "verified",
        "suspended",
        "signature",
        "moderator",
        "only_private_comments",
        "restricted_agent",
        "ticket_restriction",
        "default_group_id",
        "custom_role_id",
        "shared_phone_number",
        "remote_photo_url",
        "identities",
    }
)
"""The user attributes Zendesk documents as writable (the Users API's JSON format)."""
ORGANIZATION_ATTRIBUTES = frozenset(
    {
        "name",
        "external_id",
        "details",
        "notes",
        "domain_names",
        "group_id",
        "shared_tickets",
        "shared_comments",
        "tags",
        "organization_fields",
    }
)
"""The organization attributes Zendesk documents as writable."""


class ZendeskConfig(HttpConfig):
    """``destinations: {support: {type: zendesk, subdomain: acme, email: ..., api_token: ...}}``."""

    subdomain: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]*$")
    base_url: str = ""
    """Default ``https://<subdomain>.zendesk.com``."""
    email: str | None = None
    """The agent or admin the API token belongs to (``{email}/token`` basic auth)."""
    api_token: SecretStr | None = None
    oauth_token: SecretStr | None = None
    rate_limit_per_minute: int = Field(default=TEAM_PER_MINUTE, ge=1)
    max_concurrency: int = Field(default=CONCURRENCY, ge=1, le=JOB_LIMIT)
    poll_seconds: float = Field(default=POLL_SECONDS, gt=0)
    """Seconds between two polls of a job status."""

    @model_validator(mode="after")
    def _endpoint_and_credentials(self) -> ZendeskConfig:
        if not self.base_url:
            if not self.subdomain:
                raise ValueError("set `subdomain:` (acme for https://acme.zendesk.com)")
            self.base_url = f"https://{self.subdomain}.zendesk.com"
        if self.oauth_token is None and (self.api_token is None or not self.email):
            raise ValueError(
                "set `email:` and `api_token:` (Admin Center > Apps and integrations > Zendesk "
                "API), or `oauth_token:`"
            )
        return self


def _users_body(call: Call) -> Any:
    return {"users": call.bodies}


def _orgs_body(call: Call) -> Any:
    return {"organizations": call.bodies}


def _one_org(call: Call) -> Any:
    return {"organization": call.items[0].body}


def error_text(error: Any, details: Any = None) -> str:
    """``Zendesk <error>: <details>`` (``details`` may be text or a map of field errors)."""
    if isinstance(details, dict):
        parts = [
            str(e.get("description") or e) if isinstance(e, dict) else str(e)
            for items in details.values()
            for e in (items if isinstance(items, list) else [items])
        ]
        details = "; ".join(parts)
    text = f"Zendesk {error or 'error'}"
    if details:
        text += f": {details}"
    return trim(text, 500)


def read_one(call: Call, response: Response, body: Any) -> BatchResult:
    """``organizations/create_or_update``: 200/201 is done; 422 rejects the record."""
    if 400 <= response.status < 500:
        reason = (
            error_text(body.get("error"), body.get("details") or body.get("description"))
            if isinstance(body, dict)
            else f"Zendesk refused the record: {response.describe()}"
        )
        return BatchResult(rejected={0: reason})
    if not isinstance(body, dict) or not isinstance(body.get("organization"), dict):
        return BatchResult(failed={0: f"Zendesk's answer confirms nothing: {response.describe()}"})
    return BatchResult()


def read_job_results(results: Any, count: int, *, deleting: bool, status: str) -> BatchResult:
    """Per-record results of a finished job, by index (records not listed: not confirmed)."""
    out = BatchResult()
    seen: set[int] = set()
    for entry in results if isinstance(results, list) else []:
        if not isinstance(entry, dict):
            continue
        index = entry.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            continue
        seen.add(index)
        failed = entry.get("status") == "Failed" or entry.get("error")
        if failed and not (deleting and entry.get("error") in GONE):
            out.rejected[index] = error_text(entry.get("error"), entry.get("details"))
    for index in range(count):
        if index not in seen:
            out.failed[index] = (
                f"Zendesk's job ended {status!r} without a result for this record; it is sent "
                "again by the next run"
            )
    return out


class ZendeskDestination(HttpDestination[ZendeskConfig]):
    """Users and organizations of a Zendesk Support account."""

    name = "zendesk"
    vendor = "Zendesk"
    objects = OBJECTS
    fake = "undertow.testing.zendesk:ZendeskFake"
    docs_url = USERS_DOC
    capabilities = Capabilities(
        operations=frozenset({Operation.UPSERT, Operation.INSERT, Operation.DELETE}),
        max_batch_size=MAX_PER_JOB,
        max_concurrency=CONCURRENCY,
        rate_limit=RateLimit(TEAM_PER_MINUTE, 60.0, LIMITS_DOC),
        per_record_results=True,
        match=MatchRule.exactly_one(*MATCH["users"], example="match: {email: email}"),
        match_operations=frozenset({Operation.UPSERT, Operation.DELETE}),
        docs=(USERS_DOC, ORGS_DOC, JOBS_DOC, LIMITS_DOC, JOB_LIMIT_DOC),
        cite={"max_batch_size": USERS_DOC, "rate_limit": LIMITS_DOC, "job_limit": JOB_LIMIT_DOC},
    )
    signals = (SlowDown(name="rate limited (429)", default_wait=1.0),)
    rate_headers = RateHeaders(
        remaining="x-rate-limit-remaining",
        reset="ratelimit-reset",
        reset_kind="seconds",
        window=60.0,
    )
    check_path = "/api/v2/users/me"
    auth_hint = (
        "check `email:` and `api_token:` (Admin Center > Apps and integrations > Zendesk API; "
        "token access must be on) or `oauth_token:`, and that the user is an admin or agent"
    )
    endpoints: ClassVar[dict[Any, Endpoint]] = {
        (Operation.UPSERT, "users"): Endpoint(
            "POST", "/api/v2/users/create_or_update_many", body=_users_body, ok=frozenset({200})
        ),
        (Operation.INSERT, "users"): Endpoint(
            "POST", "/api/v2/users/create_many", body=_users_body, ok=frozenset({200})
        ),
        (Operation.UPSERT, "organizations"): Endpoint(
            "POST",
            "/api/v2/organizations/create_or_update",
            body=_one_org,
            read=read_one,
            ok=frozenset({200, 201}),
            per_record=True,
        ),
        (Operation.INSERT, "organizations"): Endpoint(
            "POST", "/api/v2/organizations/create_many", body=_orgs_body, ok=frozenset({200})
        ),
    }
    demo = DemoProfile(
        destination="""\
type: zendesk
base_url: ${FAKE_URL}          # or subdomain: acme
email: admin@example.com
api_token: ${FAKE_TOKEN}
rate_limit_per_minute: 2500    # the local fake's limit; plans allow 200 (Team) to 2,500""",
        sync="""\
object: users
mode: upsert
match: {external_id: customer_id}
mappings:
  email: email
  name:
    template: "{{ first_name }} {{ last_name }}"
  user_fields:
    object: {plan: plan, seats: seats, mrr: mrr, signup_date: signup_date}""",
        fake_options={"rate_limit_per_minute": 2500},
    )

    async_jobs = True

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.poll_interval = self.config.poll_seconds
        self._submitted: dict[str, float] = {}
        self._waiting: set[str] = set()
        self._statuses: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._poll_lock = asyncio.Lock()

    def make_auth(self) -> Auth:
        config = self.config
        if config.oauth_token is not None:
            return BearerAuth(config.oauth_token.get_secret_value())
        assert config.api_token is not None and config.email
        return BasicAuth(f"{config.email}/token", config.api_token.get_secret_value())

    def capabilities_for(self, object: str | None) -> Capabilities:
        fields = MATCH.get(object or "users", MATCH["users"])
        example = "match: {external_id: id}" if object == "organizations" else None
        rule = MatchRule.exactly_one(*fields, example=example or "match: {email: email}")
        return dataclasses.replace(
            self.capabilities,
            match=rule,
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(self.config.rate_limit_per_minute, 60.0, LIMITS_DOC),
        )

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        body = dict(record)
        match = next(iter(batch.identifiers), None)
        if batch.operation is Operation.DELETE:
            return str(key)
        if match and key is not None:
            # Zendesk's external_id is text: a numeric key goes as "42"
            body[match] = str(key) if match == "external_id" else key
        for name, value in body.items():
            if isinstance(value, list) and name not in ("tags", "domain_names"):
                return Reject(
                    f"field {name!r} is a list; Zendesk takes lists only for tags and "
                    "domain_names (map it to a text field)"
                )
        return body

    async def validate_sync(
        self,
        *,
        sync: str,
        object: str | None,
        match: Any,
        fields: list[str],
        operations: frozenset[Operation] = frozenset(),
    ) -> list[str]:
        """Attributes Zendesk does not document for the object, and a missing ``name``."""
        known = USER_ATTRIBUTES if object == "users" else ORGANIZATION_ATTRIBUTES
        where = f"sync {sync!r}: Zendesk {object}"
        problems = []
        for name in fields:
            if name not in known and name not in match:
                hint = did_you_mean(name, sorted(known))
                custom = "user_fields" if object == "users" else "organization_fields"
                problems.append(
                    f"{where} have no attribute {name!r}"
                    + (f"; {hint}" if hint else "")
                    + f" (custom fields go under {custom}: {{key: column}}; Zendesk ignores "
                    "unknown attributes)"
                )
        creates = operations & {Operation.UPSERT, Operation.INSERT}
        if creates and "name" not in fields:
            problems.append(
                f"{where}: `name` is not mapped; Zendesk refuses new {object} without a name"
            )
        if object == "users" and "user_fields" in fields:
            problems += await self._custom_fields(where, "user_fields")
        return problems

    async def _custom_fields(self, where: str, kind: str) -> list[str]:
        response = await self.send("GET", f"/api/v2/{kind}", expect=frozenset({200}))
        body = parse_json(response)
        if response.status != 200 or not isinstance(body, dict):
            return [f"{where}: cannot list the account's {kind}: {response.describe()}"]
        keys = [str(f.get("key")) for f in body.get(kind, []) if isinstance(f, dict)]
        return [] if keys else [f"{where}: the account defines no {kind} to map into"]

    # -- write -------------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        """Outside the pipeline (which submits and polls itself): submit, then wait."""
        submitted = await self.submit_batch(batch)
        if isinstance(submitted, BatchResult):
            return submitted
        ctx = retry.current()
        while True:
            result = await self.poll_job(submitted, batch)
            if result is not None:
                return result
            try:
                await pause(self.poll_interval, ctx.stop)
            except Interrupted:
                raise InterruptedDelivery(
                    f"destination {self.instance_name!r}: stopped while Zendesk job "
                    f"{submitted.id} runs",
                    hint="the batch stays undelivered; the next run sends it (an upsert "
                    "sent twice converges)",
                ) from None

    def _prepare(self, batch: Batch) -> tuple[BatchResult, list[Item]]:
        """The records to send (the same for the same batch: a resumed run rebuilds them)."""
        if batch.object not in OBJECTS:
            raise self.unknown_object(batch)
        result = BatchResult()
        match = self.match_field(batch)
        if batch.operation is Operation.DELETE and match != "external_id":
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (zendesk) deletes "
                f"{batch.object} by external_id; this sync matches on {match!r}",
                hint="match on external_id (`match: {external_id: <column>}`) to delete, or "
                "use mode: upsert",
            )
        return result, self.items(batch, match, result)

    async def submit_batch(self, batch: Batch) -> Job | BatchResult:
        """Start the batch's job, or its result at once (nothing to send, or organizations'
        upsert, which is one synchronous request per record)."""
        result, items = self._prepare(batch)
        if not items:
            return result
        call = Call(batch, items, batch.object, self.match_field(batch), self.vendor)
        if batch.operation is Operation.DELETE:
            params = {"external_ids": ",".join(str(i.body) for i in items)}
            response = await self.send(
                "DELETE",
                f"/api/v2/{batch.object}/destroy_many",
                params=params,
                expect=frozenset({200}),
            )
        else:
            endpoint = self.endpoint_for(batch)
            if endpoint.per_record:
                await self._per_record(endpoint, call, result)
                return result
            body, content_type = self.encode(endpoint, call)
            response = await self.send(
                endpoint.method,
                endpoint.path,
                body=body,
                content_type=content_type,
                expect=endpoint.expected,
            )
        answer = parse_json(response)
        status = answer.get("job_status") if isinstance(answer, dict) else None
        if response.status == 200 and isinstance(status, dict) and status.get("id"):
            self._submitted[str(status["id"])] = time.monotonic()
            self._waiting.add(str(status["id"]))  # the next shared poll asks about it too
            return Job(str(status["id"]), {"count": len(items)})
        if 400 <= response.status < 500:
            raise RejectedBatchError(
                error_text(answer.get("error"), answer.get("description"))
                if isinstance(answer, dict)
                else f"Zendesk refused the request: {response.describe()}"
            )
        for item in items:
            result.failed[item.index] = (
                f"Zendesk's answer is not a job status, so nothing is confirmed: "
                f"{response.describe()}"
            )
        return result

    async def poll_job(self, job: Job, batch: Batch) -> BatchResult | None:
        """The job's per-record results once it has finished (None while it runs).

        Polls cost requests from the account's per-minute budget, so they are shared: a job
        submitted by this process is not asked about before ``poll_seconds`` have passed,
        and one ``show_many`` request answers for every job this destination is waiting on.
        """
        submitted = self._submitted.get(job.id)
        if submitted is not None and time.monotonic() - submitted < self.poll_interval:
            return None
        found, status = await self._status(job.id)
        result, items = self._prepare(batch)
        if not found:
            for item in items:
                result.failed[item.index] = (
                    f"Zendesk no longer has job {job.id} (job statuses expire after about an "
                    "hour), so its outcome is unknown; the record is sent again by the next run"
                )
            return result
        if not isinstance(status, dict) or status.get("status") not in FINISHED:
            return None
        sub = read_job_results(
            status.get("results"),
            len(items),
            deleting=batch.operation is Operation.DELETE,
            status=str(status.get("status")),
        )
        if len(items) != job.data.get("count", len(items)):
            sub = BatchResult.all_failed(len(items), "the batch changed since its job started")
        result.merge(sub, [i.index for i in items])
        return result

    async def _status(self, job_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(Zendesk still has the job, its status), from one ``show_many`` for every job
        waited on, or from the answer another poll fetched moments ago."""
        self._waiting.add(job_id)
        async with self._poll_lock:
            cached = self._statuses.get(job_id)
            if cached is None or time.monotonic() - cached[0] >= self.poll_interval / 2:
                ids = [job_id, *sorted(self._waiting - {job_id})][:MAX_PER_JOB]
                response = await self.send(
                    "GET",
                    "/api/v2/job_statuses/show_many",
                    params={"ids": ",".join(ids)},
                    expect=frozenset({200}),
                )
                answer = parse_json(response)
                listed = answer.get("job_statuses") if isinstance(answer, dict) else None
                if response.status != 200 or not isinstance(listed, list):
                    raise RetryableError(
                        f"Zendesk's job statuses could not be read: {response.describe()}"
                    )
                now = time.monotonic()
                for known in ids:
                    self._statuses[known] = (now, None)  # not listed: Zendesk dropped it
                for status in listed:
                    if isinstance(status, dict) and status.get("id") in ids:
                        self._statuses[str(status["id"])] = (now, status)
            status = self._statuses[job_id][1]
        if status is None or status.get("status") in FINISHED:
            self._waiting.discard(job_id)
            self._statuses.pop(job_id, None)
            self._submitted.pop(job_id, None)
        return status is not None, status

    def auth_error(self, response: Response) -> FatalDeliveryError:
        if response.status == 403 and b"import" in response.body.lower():
            return FatalDeliveryError(
                f"destination {self.instance_name!r} (zendesk): Zendesk refused the bulk "
                f"endpoint: {response.describe()}",
                hint="ask Zendesk support to enable bulk user import for the account",
            )
        return super().auth_error(response)
