"""HubSpot CRM v3: contacts, companies, deals and custom objects through the batch endpoints,
on the HTTP kit.

How a batch maps to HubSpot (``docs/destinations/hubspot.md`` has the user's view):

    upsert  -> POST /crm/v3/objects/{object}/batch/upsert   idProperty = the sync's match field
    insert  -> POST /crm/v3/objects/{object}/batch/create
    update  -> POST /crm/v3/objects/{object}/batch/update   idProperty = the sync's match field
    delete  -> POST .../batch/read (idProperty -> HubSpot ids), then .../batch/archive

``{object}`` is ``contacts``, ``companies``, ``deals``, an objectTypeId (``2-123``) or a custom
object's fully qualified name (``p123_cars``); any other name is refused before a request, and
one HubSpot does not have ("Unable to infer object type") stops the run. ``validate`` reads the
object's properties (:mod:`undertow.destinations.hubspot_properties`).

Every input carries ``objectWriteTraceId`` = its index in the batch: that opts into
HubSpot's 207 multi-status answers and lets each error name its record. Property values are
text to HubSpot, so records are shaped before sending (lists ``;``-joined, booleans
``true``/``false``); a record that cannot be shaped is rejected and never sent.

Redirects: HubSpot's API does not redirect; a 3xx (a proxy, a wrong ``base_url``) stops the
run and nothing in the batch counts as delivered (the kit's default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import Field, model_validator

from undertow.destinations._http import Response
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    MatchRule,
    Operation,
    RateLimit,
)
from undertow.destinations.hubspot_associations import (
    AssociationRule,
    associate,
    check_rules,
    pending,
)
from undertow.destinations.hubspot_associations import (
    problems as association_problems,
)
from undertow.destinations.hubspot_properties import (
    OBJECT_NAME,
    OBJECT_PATTERN,
    STANDARD_OBJECTS,
    Properties,
    PropertyBook,
    shape_properties,
    shape_value,
    unknown_object,
    unknown_type,
)
from undertow.destinations.kit import (
    Auth,
    BearerAuth,
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Item,
    Reject,
    SlowDown,
    envelope,
    parse_json,
)
from undertow.errors import FatalDeliveryError, RejectedBatchError
from undertow.headers import HeaderSecret
from undertow.redact import trim

# -- vendor limits, each next to the doc that states it ------------------------------------

MAX_INPUTS = 100
"""Inputs per batch request.
https://developers.hubspot.com/docs/api-reference/crm-contacts-v3/guide"""

BURST_REQUESTS = 190
BURST_SECONDS = 10.0
"""Private apps on Professional/Enterprise: 190 requests per 10 s (Free/Starter: 100).
https://developers.hubspot.com/changelog/increasing-our-api-limits
https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines"""

LOCKED_WAIT_SECONDS = 2.0
"""423 Locked (too many writes to the same records): wait at least 2 s.
https://developers.hubspot.com/docs/api-reference/error-handling"""

LIMITS_DOC = "https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines"
BATCH_DOC = "https://developers.hubspot.com/docs/api-reference/crm-contacts-v3/guide"
ERRORS_DOC = "https://developers.hubspot.com/docs/api-reference/error-handling"

DOCS = (
    BATCH_DOC,
    "https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts",
    "https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/update-contacts",
    LIMITS_DOC,
    "https://developers.hubspot.com/changelog/increasing-our-api-limits",
    ERRORS_DOC,
)

ENDPOINTS = {
    Operation.UPSERT: "upsert",
    Operation.INSERT: "create",
    Operation.UPDATE: "update",
    Operation.DELETE: "archive",
}
INTERVAL_HEADER = "x-hubspot-ratelimit-interval-milliseconds"
TOKEN_HINT = (
    "check the private app token (Settings > Integrations > Private Apps) and that the app "
    "has the write scopes of the objects it syncs (crm.objects.contacts.write, "
    "crm.objects.companies.write, crm.objects.deals.write, crm.objects.custom.write)"
)


class HubSpotConfig(HttpConfig):
    """``destinations: {crm: {type: hubspot, token: "${HUBSPOT_TOKEN}"}}``."""

    token: HeaderSecret = Field(description="a private app access token")
    base_url: str = "https://api.hubapi.com"
    batch_size: int = Field(default=MAX_INPUTS, ge=1, le=MAX_INPUTS)
    max_concurrency: int = Field(default=4, ge=1, le=32)
    rate_limit_per_10s: int = Field(default=BURST_REQUESTS, ge=1)
    """Requests per 10 s: 190 by default; 100 on Free/Starter, 250 with the capacity pack."""
    associations: dict[str, list[AssociationRule]] = Field(default_factory=dict)
    """Per object, the mapped fields that name another record to associate each record with
    (:mod:`undertow.destinations.hubspot_associations`)."""

    @model_validator(mode="after")
    def _associations(self) -> HubSpotConfig:
        check_rules(self.associations)
        return self


def _daily(response: Response, body: Any) -> bool:
    policy = body.get("policyName") if isinstance(body, dict) else None
    return policy == "DAILY" or response.headers.get("x-hubspot-ratelimit-daily-remaining") == "0"


SIGNALS = (
    SlowDown(
        name="the account's daily API limit is reached",
        statuses=frozenset({429}),
        when=_daily,
        fatal=True,
        hint="HubSpot resets the daily limit at midnight in the account's time zone; run the "
        "sync again then, or raise the limit (API limit increase pack)",
    ),
    # HubSpot sends no Retry-After: the wait is its window (or the policy's, without headers)
    SlowDown(
        name="rate limited (SECONDLY)",
        code_path="policyName",
        codes=frozenset({"SECONDLY"}),
        wait_header=INTERVAL_HEADER,
        wait_kind="ms",
        min_wait=1.0,
        default_wait=1.0,
    ),
    SlowDown(
        name="rate limited",
        wait_header=INTERVAL_HEADER,
        wait_kind="ms",
        min_wait=1.0,
        default_wait=BURST_SECONDS,
    ),
    SlowDown(
        name="records locked for a moment (423)",
        statuses=frozenset({423}),
        retry_after=False,
        default_wait=LOCKED_WAIT_SECONDS,
        penalize=False,
    ),
)


def read_batch_answer(call: Call, response: Response, body: Any) -> BatchResult:
    """Map a 200/201/207 answer (or a whole-batch 4xx) back to each input of the call."""
    if unknown_type(response, body):
        raise no_such_object(call.batch.sync, call.object, _reason(body))
    by_trace = {str(item.index): position for position, item in enumerate(call.items)}
    by_key = {str(i.key).casefold(): p for p, i in enumerate(call.items) if i.key is not None}
    result = BatchResult()
    if not 200 <= response.status < 300:
        reason = _whole_batch_reason(response, body)
        context = body.get("context") if isinstance(body, dict) else None
        culprits = _attribute(context, by_trace, by_key) if isinstance(context, dict) else set()
        if not culprits:
            # HubSpot refused the whole request naming no input: the kit bisects it
            raise RejectedBatchError(reason)
        for position in range(len(call.items)):
            if not culprits or position in culprits:
                result.rejected[position] = reason
            else:
                result.failed[position] = f"not written: another record failed the batch ({reason})"
        return result
    if not isinstance(body, dict):
        # HubSpot answers a batch with JSON results; anything else (a proxy's HTML page, a
        # cut-off body) confirms nothing: the rows stay undelivered for the next run
        return BatchResult.all_failed(len(call.items), _not_confirmed(response))
    ids = call.context.setdefault("ids", {})  # batch index -> HubSpot id, for associations
    for written in _list(body, "results"):
        at = by_trace.get(str(written.get("objectWriteTraceId")))
        echoed = (written.get("properties") or {}).get(call.match_field or "")
        if at is None and echoed is not None:  # no trace id echoed: by the idProperty value
            at = by_key.get(str(echoed).casefold())
        if at is not None and written.get("id") is not None:
            ids[call.items[at].index] = str(written["id"])
    unattributed: list[str] = []
    for error in _list(body, "errors"):
        named = error.get("context")
        indices = _attribute(named, by_trace, by_key) if isinstance(named, dict) else set()
        if not indices:
            unattributed.append(_reason(error))
        # an update of a record HubSpot lacks: not found (the run skips it), not rejected
        into = result.not_found if error.get("category") == "OBJECT_NOT_FOUND" else result.rejected
        for index in indices:
            into[index] = _reason(error)
    if unattributed:
        # HubSpot named no record: keep the rest undelivered rather than guess.
        confirmed = {
            by_trace[str(r["objectWriteTraceId"])]
            for r in _list(body, "results")
            if str(r.get("objectWriteTraceId")) in by_trace
        }
        for position in range(len(call.items)):
            if position not in confirmed and position not in result.rejected | result.not_found:
                result.failed[position] = "; ".join(unattributed)
    return result


def no_such_object(sync: str, object_: str | None, reason: str) -> FatalDeliveryError:
    return FatalDeliveryError(
        f"sync {sync!r}: HubSpot has no object type {object_!r}: {reason}",
        hint="set `object:` to contacts, companies, deals, or a custom object's fully qualified "
        "name (p<portal id>_<name>) or objectTypeId (2-<id>); `undertow validate` lists them",
    )


BATCH_OK = frozenset({200, 201})
MULTI = frozenset({207})


class HubSpotDestination(HttpDestination[HubSpotConfig]):
    """CRM records (contacts, companies, deals, custom objects) in a HubSpot account, written
    with a private app token."""

    name = "hubspot"
    vendor = "HubSpot"
    objects = STANDARD_OBJECTS
    any_object = True
    object_pattern = OBJECT_PATTERN
    previews_with_metadata = True
    fake = "undertow.testing.hubspot:HubSpotFake"
    docs_url = BATCH_DOC
    capabilities = Capabilities(
        operations=frozenset(ENDPOINTS),
        max_batch_size=MAX_INPUTS,
        max_concurrency=4,
        rate_limit=RateLimit(BURST_REQUESTS, BURST_SECONDS, LIMITS_DOC),
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(example="match: {email: email}"),
        bisect=True,
        docs=DOCS,
        cite={"max_batch_size": BATCH_DOC, "rate_limit": LIMITS_DOC},
    )
    endpoints: ClassVar[dict[Any, Endpoint]] = {
        op: Endpoint(
            "POST",
            f"/crm/v3/objects/{{object}}/batch/{path}",
            body=envelope("inputs"),
            read=read_batch_answer,
            ok=BATCH_OK,
            answers=MULTI,
        )
        for op, path in ENDPOINTS.items()
        if op is not Operation.DELETE
    }
    signals = SIGNALS
    check_path = "/crm/v3/objects/contacts"
    auth_hint = TOKEN_HINT
    demo = DemoProfile(
        destination="""\
type: hubspot
token: ${FAKE_TOKEN}
base_url: ${FAKE_URL}
rate_limit_per_10s: 5000   # the local fake's limit; real portals allow 100-250""",
        sync="""\
object: contacts
mode: upsert
match: {email: email}
mappings:
  email: email
  firstname: first_name
  lastname: last_name
  plan: plan
  seats: seats
  mrr: mrr
  country: country
  signup_date: signup_date
  greeting:
    template: "Hi {{ first_name }}, thanks for choosing {{ plan | title }}!"
  recently_viewed_products: recently_viewed   # a list: HubSpot multi-select a;b;c""",
        token="pat-demo-0000-local-fake",
        fake_options={
            "rate_limit_per_10s": 5000,
            # the custom properties the demo maps (a portal's admin creates them first)
            "properties": {
                "contacts": [
                    "plan",
                    "seats",
                    "mrr",
                    "signup_date",
                    "greeting",
                    "recently_viewed_products",
                ]
            },
        },
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.book = PropertyBook(self)
        """Object types and properties read from HubSpot, once per object (validate, plan)."""
        self.preview_properties: dict[str, Properties | None] = {}
        """The properties ``plan`` checks rows against (:meth:`prepare_preview`)."""

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.token.get_secret_value())

    def capabilities_for(self, object: str | None) -> Capabilities:
        return replace(
            self.capabilities,
            max_batch_size=self.config.batch_size,
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(self.config.rate_limit_per_10s, BURST_SECONDS, LIMITS_DOC),
        )

    def auth_error(self, response: Response) -> FatalDeliveryError:
        return FatalDeliveryError(
            f"destination {self.instance_name!r} (hubspot): HubSpot refused the token: "
            f"{response.describe()}",
            hint=TOKEN_HINT,
        )

    # -- check -----------------------------------------------------------------------------

    async def check(self) -> None:
        response = await self.send(
            "GET", self.check_path, params={"limit": "1"}, expect=frozenset({200})
        )
        if response.status != 200:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (hubspot): unexpected answer to the "
                f"check: {response.describe()}",
                hint="check base_url; it should be https://api.hubapi.com",
            )

    async def validate_sync(
        self,
        *,
        sync: str,
        object: str | None,
        match: Mapping[str, str],
        fields: list[str],
        operations: frozenset[Operation] = frozenset(),
    ) -> list[str]:
        """The object against HubSpot's object types, the mapped fields against its properties
        (did-you-mean), and the match field against its unique-value properties."""
        if not object or not OBJECT_NAME.match(object):
            return [unknown_object(sync, str(object), await self.book.object_names())]
        properties = await self.book.properties(object)
        if properties is None:
            return [unknown_object(sync, object, await self.book.object_names())]
        ops = operations or frozenset({Operation.UPSERT})
        rules = self.config.associations.get(object, [])
        found = properties.problems(
            sync=sync,
            match=match,
            fields=fields,
            operations=ops,
            not_properties=[r.field for r in rules],
        )
        for rule in rules:
            if rule.field in fields and ops - {Operation.DELETE}:
                labels = None
                if rule.type is not None:
                    path = f"/crm/v4/associations/{object}/{rule.to}/labels"
                    labels = parse_json(await self.send("GET", path, expect=frozenset({200})))
                target = await self.book.properties(rule.to)
                found += association_problems(sync, object, rule, target, labels)
        return found

    async def prepare_preview(self, object: str | None, fields: list[str]) -> str | None:
        """Read the object's properties once, so ``plan`` counts rows with a property the
        object does not have as rejected (at run time HubSpot rejects them one by one)."""
        if not object or not OBJECT_NAME.match(object):
            return None
        found = await self.book.properties(object)
        self.preview_properties[object] = found
        if found is None:
            return f"HubSpot has no object type {object!r} (`undertow validate` names the closest)"
        return None

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        if not batch.object or not OBJECT_NAME.match(batch.object):
            raise self.unknown_object(batch)
        match_field = self.match_field(batch)
        if batch.operation is not Operation.DELETE:
            return await self._write(batch, match_field)
        result = BatchResult()
        items = self.items(batch, match_field, result)
        if items:
            await self._archive(batch.sync, str(batch.object), match_field, items, result)
        return result

    async def _write(self, batch: Batch, match_field: str | None) -> BatchResult:
        """The kit's batch write, then the associations of the records written."""
        result = BatchResult()
        items = self.items(batch, match_field, result)
        if not items:
            return result
        call = Call(batch, items, batch.object, match_field, self.vendor)
        await self.deliver_call(self.endpoint_for(batch), call, result)
        if self.config.associations.get(str(batch.object)):
            await associate(self, batch, items, call.context.get("ids", {}), result)
        return result

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        body: dict[str, Any] = {"objectWriteTraceId": str(index)}
        rules = self.config.associations.get(str(batch.object), [])
        if rules:  # association fields name other records: they are not properties
            record = {k: v for k, v in record.items() if all(r.field != k for r in rules)}
        if key is not None or batch.operation is not Operation.INSERT:
            text = shape_value(key)
            if not text:
                field = next(iter(batch.identifiers), "?")
                return Reject(f"no value for the match field {field!r}")
            body["idProperty"] = next(iter(batch.identifiers))
            body["id"] = text
        if batch.operation is not Operation.DELETE:
            properties, problem = shape_properties(record)
            if problem is not None:
                return Reject(problem)
            body["properties"] = properties
        return body

    def preview(self, batch: Batch) -> list[Any]:
        """The HubSpot inputs each record becomes (or why it would be rejected)."""
        result = BatchResult()
        items = self.items(batch, self.match_field(batch), result)
        inputs = {i.index: i.body for i in items}
        rules = self.config.associations.get(str(batch.object), [])
        known = self.preview_properties.get(str(batch.object))
        for item in items:
            problem = known and _unknown_property(known, item.body.get("properties", {}))
            if problem:  # HubSpot would reject the row (VALIDATION_ERROR: no such property)
                del inputs[item.index]
                result.rejected[item.index] = problem
        for item in items if batch.operation is not Operation.DELETE else []:
            linked = [
                {"to": r.to, r.id_property: value}
                for r in rules
                if (value := pending(r, item)) is not None
            ]
            if linked:  # sent after the records, through the associations API
                inputs[item.index] = {**item.body, "associations": linked}
        return [
            inputs.get(index, {"rejected": result.rejected.get(index)})
            for index in range(len(batch))
        ]

    async def _archive(
        self,
        sync: str,
        object_: str,
        id_property: str | None,
        inputs: list[Item],
        result: BatchResult,
    ) -> None:
        """Resolve idProperty values to HubSpot ids (batch/read), then archive those ids."""
        read = {
            "idProperty": id_property,
            "properties": [id_property],
            "inputs": [{"id": i.body["id"]} for i in inputs],
        }
        response = await self.send(
            "POST", f"/crm/v3/objects/{object_}/batch/read", json=read, expect=BATCH_OK | MULTI
        )
        body = parse_json(response)
        if unknown_type(response, body):
            raise no_such_object(sync, object_, _reason(body))
        if not 200 <= response.status < 300:
            reason = _whole_batch_reason(response, body)
            for i in inputs:
                result.rejected[i.index] = reason
            return
        if not isinstance(body, dict):
            # a proxy or an outage page, not HubSpot: nothing is confirmed, send again later
            for i in inputs:
                result.failed[i.index] = _not_confirmed(response)
            return
        found: dict[str, str] = {}
        for item in _list(body, "results"):
            props = item.get("properties") or {}
            value = props.get(id_property) if id_property else None
            if value is not None and item.get("id") is not None:
                found[str(value).casefold()] = str(item["id"])
        # OBJECT_NOT_FOUND: the record is already gone, so its delete is accepted.
        keys = {i.index: str(i.body["id"]).casefold() for i in inputs}
        by_key = {key: index for index, key in keys.items()}
        for error in _list(body, "errors"):
            if error.get("category") == "OBJECT_NOT_FOUND":
                continue
            named = error.get("context")
            indices = _attribute(named, {}, by_key) if isinstance(named, dict) else set()
            for i in inputs:
                if (i.index in indices or not indices) and keys[i.index] not in found:
                    result.rejected[i.index] = _reason(error)
        ids = [found[keys[i.index]] for i in inputs if keys[i.index] in found]
        if not ids:
            return
        archive = {"inputs": [{"id": object_id} for object_id in ids]}
        response = await self.send(
            "POST",
            f"/crm/v3/objects/{object_}/batch/archive",
            json=archive,
            expect=frozenset({200, 204}),
        )
        if not 200 <= response.status < 300:
            reason = _whole_batch_reason(response, parse_json(response))
            for i in inputs:
                result.rejected[i.index] = reason


def _unknown_property(known: Properties, properties: dict[str, Any]) -> str | None:
    """Why HubSpot would reject these properties (the first it does not have), or None."""
    return next((p for p in map(known.unknown, properties) if p is not None), None)


def _whole_batch_reason(response: Response, body: Any) -> str:
    if isinstance(body, dict) and body.get("message"):
        return _reason(body)
    return f"HubSpot refused the batch: {response.describe()}"


# -- reading HubSpot's answers --------------------------------------------------------------


def _not_confirmed(response: Response) -> str:
    return (
        f"HubSpot's answer is not the JSON it documents, so the write is not confirmed "
        f"(sent again by the next run): {response.describe()}"
    )


def _list(body: Any, key: str) -> list[dict[str, Any]]:
    items = body.get(key) if isinstance(body, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _values(context: dict[str, Any], *names: str) -> Iterable[str]:
    for name in names:
        value = context.get(name)
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                yield str(item)


def _attribute(
    context: dict[str, Any], by_trace: dict[str, int], by_key: dict[str, int]
) -> set[int]:
    """The batch indices an error names: by objectWriteTraceId, else by id / email value."""
    indices = {by_trace[t] for t in _values(context, "objectWriteTraceId") if t in by_trace}
    if not indices:
        for value in _values(context, "ids", "id", "email", "domain"):
            if value.casefold() in by_key:
                indices.add(by_key[value.casefold()])
    return indices


def _reason(error: dict[str, Any]) -> str:
    """A rejection reason from a HubSpot error object: its category and message."""
    category = error.get("category") or error.get("errorType") or "ERROR"
    message = str(error.get("message") or "no message")
    return trim(f"HubSpot {category}: {message}", 500)
