"""Marketo Engage: leads (push with a lookup field) and static list membership, on the HTTP kit.

How a batch maps to Marketo's REST API (``docs/destinations/marketo.md`` has the user's view)::

    leads         upsert  POST /rest/v1/leads.json {"action": "createOrUpdate",
                          "lookupField": <match field>, "input": [...]}        300 a request
                  update  the same with "action": "updateOnly"
                  delete  GET /rest/v1/leads.json?filterType=<field>&filterValues=...
                          then POST /rest/v1/leads/delete.json {"input": [{"id"}]}
    list_members  add     push the leads (createOrUpdate, their ids in the answer), then
                          POST /rest/v1/lists/{list_id}/leads.json {"input": [{"id"}]}
                  remove  look the ids up, then DELETE /rest/v1/lists/{list_id}/leads.json

Marketo answers **HTTP 200 for almost every failure**: ``success: false`` with
``errors[*].code`` for the whole request (601/602 the token: log in again and resend;
606 the 100-calls-per-20-s rate, 615 the 10-concurrent-calls cap: slow down; 607 the daily
quota: stop the run), and per record ``result[i].status: "skipped"`` with ``reasons``, in
the order sent. Access tokens come from the identity endpoint (OAuth client credentials)
and go in the ``Authorization: Bearer`` header.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode

import orjson
from pydantic import Field, SecretStr

from undertow.destinations._http import DRY_RUN_TOKEN, Response, dry_run_active
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    MatchRule,
    Operation,
    RateLimit,
    RecordKind,
)
from undertow.destinations.kit import (
    Auth,
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Item,
    SlowDown,
    message_of,
    not_confirmed,
    parse_json,
    values_at,
)
from undertow.destinations.kit.engagement import by_list, chunks
from undertow.errors import FatalDeliveryError, RejectedBatchError
from undertow.redact import register_secret, trim

if TYPE_CHECKING:
    from undertow.destinations._http import HttpClient

# -- vendor limits, each next to the doc that states it ------------------------------------

REST_DOC = "https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/rest-api"
LEADS_DOC = (
    "https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/lead-database/leads"
)
LISTS_DOC = (
    "https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/lead-database/"
    "list-membership"
)
ERRORS_DOC = "https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/error-codes"
AUTH_DOC = (
    "https://experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/authentication"
)

MAX_LEADS = 300
"""Records per sync-leads call, ids per list call, values per lead filter. LEADS_DOC"""
RATE = RateLimit(100, 20.0, REST_DOC)
"""100 calls per 20 seconds per instance. REST_DOC"""
MAX_CONCURRENT = 10
"""10 calls at once per instance (more: error 615). REST_DOC"""
DAILY_QUOTA = 50_000
"""The default daily quota (calls a day, renewed at midnight US Central); 607 once spent."""

IDENTITY = "/identity/oauth/token"
TOKEN_CODES = frozenset({"601", "602"})
SKIP_STATUSES = frozenset({"skipped"})
KEY_HINT = (
    "check client_id and client_secret (Admin > LaunchPoint > the API service: View Details) "
    "and base_url (Admin > Web Services > REST API Endpoint, without /rest)"
)


class MarketoConfig(HttpConfig):
    """``destinations: {marketo: {type: marketo, base_url: https://123-ABC-456.mktorest.com,
    client_id: ..., client_secret: ...}}``."""

    base_url: str = Field(description="https://<munchkin id>.mktorest.com (Admin > Web Services)")
    client_id: str
    client_secret: SecretStr
    partition: str | None = None
    """The lead partition new leads go to (``partitionName``); None: the default one."""
    max_concurrency: int = Field(default=4, ge=1, le=MAX_CONCURRENT)
    rate_per_20s: int = Field(default=RATE.requests, ge=1)
    """Calls per 20 s this destination may make (lower it when other apps share the quota)."""


class MarketoAuth(Auth):
    """An access token from the identity endpoint, renewed after 601/602."""

    def __init__(self, config: MarketoConfig, destination: str) -> None:
        self.config = config
        self.destination = destination
        self.token: str | None = None
        self.logins = 0
        self._lock = asyncio.Lock()
        register_secret(config.client_secret.get_secret_value())

    def headers(self) -> dict[str, str]:
        token = self.token or (DRY_RUN_TOKEN if dry_run_active() else None)
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def ensure(self, client: HttpClient) -> None:
        if self.token is None and not dry_run_active():  # a dry run sends nothing
            async with self._lock:
                if self.token is None:
                    await self._login(client)

    async def refresh(self, client: HttpClient) -> bool:
        stale = self.token
        async with self._lock:
            if self.token == stale:
                await self._login(client)
        return True

    async def _login(self, client: HttpClient) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret.get_secret_value(),
        }
        response = await client.request(
            "POST",
            IDENTITY,
            body=urlencode(form).encode(),
            content_type="application/x-www-form-urlencoded",
            raise_for_status=False,
        )
        body = parse_json(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status != 200 or not isinstance(token, str) or not token:
            why = body.get("error_description") if isinstance(body, dict) else None
            raise FatalDeliveryError(
                f"destination {self.destination!r} (marketo) could not log in: "
                f"{why or response.describe()}",
                hint=KEY_HINT,
            )
        register_secret(token)
        self.token = token
        self.logins += 1


def errors_of(body: Any) -> str:
    """``Marketo <code>: <message>`` for the first response-level error."""
    first = next(values_at(body, "errors[*]"), None)
    return message_of("Marketo", first) if first is not None else "Marketo: success is false"


def check_success(call: Call, response: Response, body: Any) -> list[Any] | BatchResult:
    """The ``result`` list of a successful answer, or what the items get instead."""
    if 400 <= response.status < 500:
        raise RejectedBatchError(trim(f"Marketo refused the request: {response.describe()}", 500))
    if not isinstance(body, dict):
        return not_confirmed(call, response)
    if body.get("success") is not True:
        raise RejectedBatchError(errors_of(body))  # a 6xx/7xx: the request was not run
    results = body.get("result")
    if not isinstance(results, list):
        return not_confirmed(call, response)
    return results


def read_in_order(call: Call, response: Response, body: Any) -> BatchResult:
    """One result per record in the order sent; ``skipped`` ones rejected with the reason."""
    results = check_success(call, response, body)
    if isinstance(results, BatchResult):
        return results
    if len(results) != len(call.items):
        return not_confirmed(call, response)
    out = BatchResult()
    for position, (item, result) in enumerate(zip(call.items, results, strict=True)):
        if not isinstance(result, dict) or result.get("status") in SKIP_STATUSES:
            reason = next(values_at(result, "reasons[*]"), None)
            out.rejected[position] = message_of("Marketo", reason if reason else result)
        elif isinstance(result.get("id"), int):
            item.record["__marketo_id"] = result["id"]
    return out


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT, Operation.UPDATE, Operation.DELETE}),
        max_batch_size=MAX_LEADS,
        max_concurrency=4,
        rate_limit=RATE,
        max_in_flight=MAX_CONCURRENT,
        per_record_results=True,
        requires_match=True,
        match=MatchRule(1, 1, None, "match: {email: email}"),
        bisect=True,
        docs=(REST_DOC, LEADS_DOC, LISTS_DOC, ERRORS_DOC, AUTH_DOC),
        cite={
            "max_batch_size": LEADS_DOC,
            "rate_limit": REST_DOC,
            "max_in_flight": REST_DOC,
        },
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "leads": _caps(),
    "list_members": _caps(
        operations=frozenset({Operation.ADD, Operation.REMOVE}),
        kind=RecordKind.MEMBERSHIP,
        cite={"max_batch_size": LISTS_DOC, "rate_limit": REST_DOC, "max_in_flight": REST_DOC},
    ),
}

ACTIONS = {Operation.UPSERT: "createOrUpdate", Operation.UPDATE: "updateOnly",
           Operation.ADD: "createOrUpdate"}  # fmt: skip


class MarketoDestination(HttpDestination[MarketoConfig]):
    """Leads and static list membership in a Marketo instance."""

    name = "marketo"
    vendor = "Marketo"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.marketo:MarketoFake"
    docs_url = REST_DOC
    capabilities = _caps(
        operations=frozenset(
            {Operation.UPSERT, Operation.UPDATE, Operation.DELETE, Operation.ADD, Operation.REMOVE}
        )
    )
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    signals = (
        SlowDown(
            name="rate limited (606/615)", statuses=frozenset({200}), code_path="errors[*].code",
            codes=frozenset({"606", "615"}),  # no wait said: the retry backoff decides
        ),
        SlowDown(
            name="the daily API quota is spent (607)", statuses=frozenset({200}),
            code_path="errors[*].code", codes=frozenset({"607"}), fatal=True,
            hint="Marketo's quota renews at midnight US Central: run the sync again then (the "
            "rows not sent go out), or ask Marketo for a larger quota",
        ),
        SlowDown(),
    )  # fmt: skip
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: marketo
base_url: ${FAKE_URL}
client_id: demo-client
client_secret: ${FAKE_TOKEN}
rate_per_20s: 2000                 # local fake: its raised limit""",
        sync="""\
object: leads
mode: upsert
match: {email: email}
mappings:
  email: email
  firstName: first_name
  lastName: last_name
  plan: plan
  seats: seats
  country: country""",
        token="marketo-demo-secret-0000-local-fake",
        fake_options={"rate": 2000},
    )

    def make_auth(self) -> Auth:
        return MarketoAuth(self.config, self.instance_name)

    @property
    def marketo_auth(self) -> MarketoAuth:
        assert isinstance(self.auth, MarketoAuth)
        return self.auth

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "leads", self.capabilities)
        rate = RateLimit(self.config.rate_per_20s, RATE.per_seconds, RATE.doc)
        return replace(caps, rate_limit=rate, max_concurrency=self.config.max_concurrency)

    async def check(self) -> None:
        """Log in (the identity endpoint checks client_id and client_secret)."""
        await self.marketo_auth.ensure(self.http)

    async def send(self, method: str, path: str, **kw: Any) -> Response:
        """The kit's send, logged in first; a 601/602 (an invalid or expired token, in an
        HTTP 200) logs in again once and resends."""
        await self.marketo_auth.ensure(self.http)
        response = await super().send(method, path, **kw)
        if response.status == 200 and b'"success":false' in response.body.replace(b" ", b""):
            codes = {str(c) for c in values_at(parse_json(response), "errors[*].code")}
            if codes & TOKEN_CODES:
                await self.marketo_auth.refresh(self.http)
                response = await super().send(method, path, **kw)
        return response

    # -- shaping ---------------------------------------------------------------------------

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        field = str(next(iter(batch.identifiers), "email"))
        lead = {k: v for k, v in record.items() if k != "list_id"}
        lead[field] = key
        return lead

    # -- write -----------------------------------------------------------------------------

    def _push(self, action: str, field: str) -> Endpoint:
        extra: dict[str, Any] = {"action": action, "lookupField": field}
        if self.config.partition and action != "updateOnly":
            extra["partitionName"] = self.config.partition

        def body(call: Call) -> Any:
            return {**extra, "input": call.bodies}

        return Endpoint("POST", "/rest/v1/leads.json", body=body, read=read_in_order,
                        ok=frozenset({200}))  # fmt: skip

    async def write_batch(self, batch: Batch) -> BatchResult:
        object_ = batch.object or "leads"
        if object_ not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[object_].operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (marketo) cannot "
                f"{batch.operation.value} {object_}",
                hint="leads take upsert, update and mirror; list_members add, remove and mirror",
            )
        field = str(self.match_field(batch))
        result = BatchResult()
        items = self.items(batch, field, result)
        if not items:
            return result
        call = Call(batch, items, object_, field, self.vendor)
        if object_ == "list_members":
            for list_id, members in by_list(items, "list_id", result, vendor="Marketo").items():
                if not list_id.isdigit():
                    for item in members:
                        result.rejected[item.index] = (
                            f"list_id {list_id!r} is not a Marketo static list id (a number)"
                        )
                    continue
                await self._membership(call.subset(members), int(list_id), result)
        elif batch.operation is Operation.DELETE:
            ids = await self._ids(call, result)
            await self._by_id("POST", "/rest/v1/leads/delete.json", call, ids, result)
        else:
            await self.deliver_call(self._push(ACTIONS[batch.operation], field), call, result)
        return result

    async def _membership(self, call: Call, list_id: int, result: BatchResult) -> None:
        path = f"/rest/v1/lists/{list_id}/leads.json"
        if call.batch.operation is Operation.ADD:
            pushed = BatchResult()
            await self.deliver_call(self._push("createOrUpdate", str(call.match_field)),
                                    call, pushed)  # fmt: skip
            result.rejected.update(pushed.rejected)
            result.failed.update(pushed.failed)
            ids = {
                i.index: int(i.record["__marketo_id"])
                for i in call.items
                if "__marketo_id" in i.record and i.index not in pushed.rejected
            }
            await self._by_id("POST", path, call, ids, result)
        else:
            ids = await self._ids(call, result)
            await self._by_id("DELETE", path, call, ids, result)

    async def _ids(self, call: Call, result: BatchResult) -> dict[int, int]:
        """Batch index -> Marketo lead id, looked up by the match field (absent: no lead)."""
        field = str(call.match_field)
        found: dict[int, int] = {}
        for part in chunks(call.items, MAX_LEADS):
            params = {
                "filterType": field,
                "filterValues": ",".join(str(i.key) for i in part),
                "fields": f"id,{field}",
            }
            response = await self.send("GET", "/rest/v1/leads.json", params=params,
                                       expect=frozenset({200}))  # fmt: skip
            body = parse_json(response)
            if response.status != 200 or not isinstance(body, dict) or not body.get("success"):
                reason = errors_of(body) if isinstance(body, dict) else response.describe()
                for item in part:
                    result.failed[item.index] = f"Marketo did not find the leads: {reason}"
                continue
            by_value: dict[str, int] = {}
            for lead in values_at(body, "result[*]"):
                if isinstance(lead, dict) and isinstance(lead.get("id"), int):
                    by_value.setdefault(str(lead.get(field)).casefold(), lead["id"])
            for item in part:
                lead_id = by_value.get(str(item.key).casefold())
                if lead_id is not None:
                    found[item.index] = lead_id
        return found

    async def _by_id(
        self, method: str, path: str, call: Call, ids: dict[int, int], result: BatchResult
    ) -> None:
        """Send the lead ids (300 a request); a ``skipped`` id is rejected, except a lead
        that is already gone (1004) or not in the list on a removal."""
        targets = [i for i in call.items if i.index in ids]
        for part in chunks(targets, MAX_LEADS):
            body = orjson.dumps({"input": [{"id": ids[i.index]} for i in part]})
            response = await self.send(method, path, body=body, expect=frozenset({200}))
            parsed = parse_json(response)
            sub = call.subset(part)
            try:
                answer = check_success(sub, response, parsed)
            except RejectedBatchError as exc:
                for item in part:
                    result.rejected[item.index] = str(exc)
                continue
            if isinstance(answer, BatchResult):
                result.merge(answer, [i.index for i in part])
                continue
            by_id = {r.get("id"): r for r in answer if isinstance(r, dict)}
            for item in part:
                self._one(item, by_id.get(ids[item.index]), method, result)

    @staticmethod
    def _one(item: Item, answer: Any, method: str, result: BatchResult) -> None:
        if not isinstance(answer, dict):
            result.failed[item.index] = "Marketo's answer does not name this lead; sent again"
            return
        if answer.get("status") not in SKIP_STATUSES:
            return
        reason = next(values_at(answer, "reasons[*]"), None)
        code = str(reason.get("code")) if isinstance(reason, dict) else ""
        if method == "DELETE" or code == "1004":  # not in the list / already gone
            return
        result.rejected[item.index] = message_of("Marketo", reason or answer)


__all__ = ["MarketoAuth", "MarketoConfig", "MarketoDestination"]
