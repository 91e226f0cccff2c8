"""HubSpot CRM v3: contacts and companies through the batch endpoints.

How a batch maps to HubSpot (``docs/destinations/hubspot.md`` has the user's view):

    upsert  -> POST /crm/v3/objects/{object}/batch/upsert   idProperty = the sync's match field
    insert  -> POST /crm/v3/objects/{object}/batch/create
    update  -> POST /crm/v3/objects/{object}/batch/update   idProperty = the sync's match field
    delete  -> POST .../batch/read (idProperty -> HubSpot ids), then .../batch/archive

Every input carries ``objectWriteTraceId`` = its index in the batch: that opts into
HubSpot's 207 multi-status answers and lets each error name its record. Property values are
text to HubSpot, so records are shaped before sending (lists ``;``-joined, booleans
``true``/``false``); a record that cannot be shaped is rejected and never sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from pydantic import Field, SecretStr

from undertow.destinations._http import HttpClient, Response, raise_for_status_class
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    Operation,
    RateLimit,
)
from undertow.errors import FatalDeliveryError, RetryableError, unknown_name
from undertow.redact import register_secret, trim

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

DOCS = (
    "https://developers.hubspot.com/docs/api-reference/crm-contacts-v3/guide",
    "https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts",
    "https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/update-contacts",
    "https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines",
    "https://developers.hubspot.com/changelog/increasing-our-api-limits",
    "https://developers.hubspot.com/docs/api-reference/error-handling",
)

ENDPOINTS = {
    Operation.UPSERT: "upsert",
    Operation.INSERT: "create",
    Operation.UPDATE: "update",
    Operation.DELETE: "archive",
}
POLICY_WAIT_SECONDS = {"TEN_SECONDLY_ROLLING": 10.0, "SECONDLY": 1.0}


class HubSpotConfig(DestinationConfig):
    """``destinations: {crm: {type: hubspot, token: "${HUBSPOT_TOKEN}"}}``."""

    token: SecretStr = Field(description="a private app access token")
    base_url: str = "https://api.hubapi.com"
    batch_size: int = Field(default=MAX_INPUTS, ge=1, le=MAX_INPUTS)
    max_concurrency: int = Field(default=4, ge=1, le=32)
    rate_limit_per_10s: int = Field(default=BURST_REQUESTS, ge=1)
    """Requests per 10 s: 190 by default; 100 on Free/Starter, 250 with the capacity pack."""
    timeout: float = Field(default=30.0, gt=0)


@dataclass
class _Input:
    """One record ready to send: its index in the batch and its HubSpot input object."""

    index: int
    body: dict[str, Any]
    key: str | None
    """The idProperty value (None for a create)."""


class HubSpotDestination(Destination):
    """Contacts and companies in a HubSpot account, written with a private app token."""

    name = "hubspot"
    Config = HubSpotConfig
    objects = ("contacts", "companies")
    capabilities = Capabilities(
        operations=frozenset(ENDPOINTS),
        max_batch_size=MAX_INPUTS,
        max_concurrency=4,
        rate_limit=RateLimit(BURST_REQUESTS, BURST_SECONDS),
        per_record_results=True,
        requires_match=True,
        docs=DOCS,
    )

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        if not isinstance(config, HubSpotConfig):
            raise TypeError(
                f"HubSpotDestination needs a HubSpotConfig, not {type(config).__name__}"
            )
        super().__init__(config, name=name)
        self.settings = config
        token = config.token.get_secret_value()
        register_secret(token)
        self._http = HttpClient(
            config.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=config.timeout,
            max_connections=config.max_concurrency,
        )

    def capabilities_for(self, object: str | None) -> Capabilities:
        return replace(
            self.capabilities,
            max_batch_size=self.settings.batch_size,
            max_concurrency=self.settings.max_concurrency,
            rate_limit=RateLimit(self.settings.rate_limit_per_10s, BURST_SECONDS),
        )

    async def close(self) -> None:
        await self._http.close()

    # -- check -----------------------------------------------------------------------------

    async def check(self) -> None:
        response = await self._http.request(
            "GET", "/crm/v3/objects/contacts?limit=1", raise_for_status=False
        )
        if response.status in (401, 403):
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (hubspot): HubSpot refused the token: "
                f"{response.describe()}",
                hint="check the private app token (Settings > Integrations > Private Apps) "
                "and that the app has the crm.objects.contacts.write and "
                "crm.objects.companies.write scopes",
            )
        self._raise_for_status(response)
        if response.status != 200:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (hubspot): unexpected answer to the "
                f"check: {response.describe()}",
                hint="check base_url; it should be https://api.hubapi.com",
            )

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        object_ = self._object(batch)
        id_property = self._id_property(batch)
        result = BatchResult()
        inputs = self._inputs(batch, id_property, result)
        if not inputs:
            return result
        if batch.operation is Operation.DELETE:
            await self._archive(object_, id_property, inputs, result)
        else:
            path = f"/crm/v3/objects/{object_}/batch/{ENDPOINTS[batch.operation]}"
            response = await self._post(path, {"inputs": [i.body for i in inputs]})
            self._read_results(response, inputs, result)
        return result

    def preview(self, batch: Batch) -> list[Any]:
        """The HubSpot inputs each record becomes (or why it would be rejected)."""
        result = BatchResult()
        inputs = {i.index: i.body for i in self._inputs(batch, self._id_property(batch), result)}
        return [
            inputs.get(index, {"rejected": result.rejected.get(index)})
            for index in range(len(batch))
        ]

    def _object(self, batch: Batch) -> str:
        if batch.object not in (self.objects or ()):
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (hubspot): "
                + unknown_name("object", str(batch.object), self.objects or ()),
                hint="set `object:` in the sync to contacts or companies",
            )
        return str(batch.object)

    def _id_property(self, batch: Batch) -> str | None:
        """The sync's single match field: HubSpot matches on one unique property."""
        if batch.operation is Operation.INSERT:
            return None
        if batch.operation not in ENDPOINTS:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (hubspot) cannot "
                f"{batch.operation.value} records",
                hint="use mode upsert, insert, update or mirror",
            )
        if len(batch.identifiers) != 1:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: HubSpot {batch.operation.value} needs exactly one match "
                f"field, got {sorted(batch.identifiers) or 'none'}",
                hint="match on one unique HubSpot property, e.g. `match: {email: email}` for "
                "contacts or `match: {domain: domain}` for companies",
            )
        return next(iter(batch.identifiers))

    def _inputs(self, batch: Batch, id_property: str | None, result: BatchResult) -> list[_Input]:
        """Shape each record into a HubSpot input; reject those that cannot be sent."""
        keys = batch.identifiers.get(id_property, []) if id_property else []
        seen: dict[str, int] = {}
        inputs: list[_Input] = []
        for index, record in enumerate(batch.records()):
            body: dict[str, Any] = {"objectWriteTraceId": str(index)}
            key: str | None = None
            if id_property is not None:
                key = shape_value(keys[index]) if index < len(keys) else None
                if not isinstance(key, str) or not key:
                    result.rejected[index] = f"no value for the match field {id_property!r}"
                    continue
                if key.casefold() in seen:
                    result.rejected[index] = (
                        f"row {batch.keys[seen[key.casefold()]]} of the same batch has the same "
                        f"{id_property}; HubSpot refuses duplicate ids in one batch"
                    )
                    continue
                seen[key.casefold()] = index
                body["idProperty"] = id_property
                body["id"] = key
            if batch.operation is not Operation.DELETE:
                properties, problem = shape_properties(record)
                if problem is not None:
                    result.rejected[index] = problem
                    continue
                body["properties"] = properties
            inputs.append(_Input(index, body, key))
        return inputs

    async def _archive(
        self, object_: str, id_property: str | None, inputs: list[_Input], result: BatchResult
    ) -> None:
        """Resolve idProperty values to HubSpot ids (batch/read), then archive those ids."""
        read = {
            "idProperty": id_property,
            "properties": [id_property],
            "inputs": [{"id": i.key} for i in inputs],
        }
        response = await self._post(f"/crm/v3/objects/{object_}/batch/read", read)
        if not 200 <= response.status < 300:
            reason = self._whole_batch_reason(response)
            for i in inputs:
                result.rejected[i.index] = reason
            return
        body = _json(response)
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
        by_key = {i.key.casefold(): i.index for i in inputs if i.key}
        for error in _list(body, "errors"):
            if error.get("category") == "OBJECT_NOT_FOUND":
                continue
            named = error.get("context")
            indices = _attribute(named, {}, by_key) if isinstance(named, dict) else set()
            for i in inputs:
                if (i.index in indices or not indices) and i.key and i.key.casefold() not in found:
                    result.rejected[i.index] = _reason(error)
        ids = [found[i.key.casefold()] for i in inputs if i.key and i.key.casefold() in found]
        if not ids:
            return
        archive = {"inputs": [{"id": object_id} for object_id in ids]}
        response = await self._post(f"/crm/v3/objects/{object_}/batch/archive", archive)
        if not 200 <= response.status < 300:
            reason = self._whole_batch_reason(response)
            for i in inputs:
                result.rejected[i.index] = reason

    async def _post(self, path: str, body: dict[str, Any]) -> Response:
        response = await self._http.request("POST", path, json=body, raise_for_status=False)
        self._raise_for_status(response)
        return response

    def _raise_for_status(self, response: Response) -> None:
        """HubSpot's 429 has no Retry-After: wait from its policy; DAILY stops the run."""
        if response.status == 429:
            body = _json(response)
            policy = body.get("policyName") if isinstance(body, dict) else None
            if (
                policy == "DAILY"
                or response.headers.get("x-hubspot-ratelimit-daily-remaining") == "0"
            ):
                raise FatalDeliveryError(
                    f"destination {self.instance_name!r} (hubspot): the account's daily API "
                    f"limit is reached: {response.describe()}",
                    hint="HubSpot resets the daily limit at midnight in the account's time "
                    "zone; run the sync again then, or raise the limit (API limit increase pack)",
                )
            raise RetryableError(
                f"rate limited by HubSpot ({policy or 'burst limit'}): {response.describe()}",
                retry_after=_rate_limit_wait(response, policy),
                hint="lower rate_limit_per_10s if other apps share this HubSpot account",
            )
        if response.status == 423:
            raise RetryableError(
                f"HubSpot locked the records for a moment: {response.describe()}",
                retry_after=LOCKED_WAIT_SECONDS,
            )
        if response.status in (401, 403):
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (hubspot) is not authorised: "
                f"{response.describe()}",
                hint="check the private app token and its crm.objects.contacts.write / "
                "crm.objects.companies.write scopes",
            )
        raise_for_status_class(response)

    def _whole_batch_reason(self, response: Response) -> str:
        body = _json(response)
        if isinstance(body, dict) and body.get("message"):
            return _reason(body)
        return f"HubSpot refused the batch: {response.describe()}"

    def _read_results(self, response: Response, inputs: list[_Input], result: BatchResult) -> None:
        """Map a 200/201/207 answer (or a whole-batch 4xx) back to each record."""
        body = _json(response)
        by_trace = {str(i.index): i.index for i in inputs}
        by_key = {i.key.casefold(): i.index for i in inputs if i.key}
        if not 200 <= response.status < 300:
            reason = self._whole_batch_reason(response)
            context = body.get("context") if isinstance(body, dict) else None
            culprits: set[int] = set()
            if isinstance(context, dict):
                culprits = _attribute(context, by_trace, by_key)
            for i in inputs:
                if not culprits or i.index in culprits:
                    result.rejected[i.index] = reason
                else:
                    result.failed[i.index] = (
                        f"not written: another record failed the batch ({reason})"
                    )
            return
        if not isinstance(body, dict):
            # HubSpot answers a batch with JSON results; anything else (a proxy's HTML page,
            # a cut-off body) confirms nothing: the rows stay undelivered for the next run
            for i in inputs:
                result.failed[i.index] = _not_confirmed(response)
            return
        unattributed: list[str] = []
        for error in _list(body, "errors"):
            named = error.get("context")
            indices = _attribute(named, by_trace, by_key) if isinstance(named, dict) else set()
            if not indices:
                unattributed.append(_reason(error))
            for index in indices:
                result.rejected[index] = _reason(error)
        if unattributed:
            # HubSpot named no record: keep the rest undelivered rather than guess.
            confirmed = {
                by_trace[str(r["objectWriteTraceId"])]
                for r in _list(body, "results")
                if str(r.get("objectWriteTraceId")) in by_trace
            }
            for i in inputs:
                if i.index not in result.rejected and i.index not in confirmed:
                    result.failed[i.index] = "; ".join(unattributed)


# -- value shaping (HubSpot property values are text) ---------------------------------------


def shape_value(value: Any) -> str | None:
    """One scalar as HubSpot text; None for a value that is not a finite scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, str):
        return value
    return None


def shape_properties(record: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """A record as HubSpot properties, or the reason it cannot be sent.

    None clears a property (HubSpot clears a value given as ""); lists become HubSpot's
    multi-select format ``a;b``; nested objects are refused.
    """
    properties: dict[str, str] = {}
    for field, value in record.items():
        if value is None:
            properties[field] = ""
        elif isinstance(value, dict):
            return {}, (
                f"field {field!r} is a nested object; HubSpot properties take text, numbers, "
                "booleans or lists (map it to separate fields, or render it with a template)"
            )
        elif isinstance(value, list):
            options: list[str] = []
            for item in value:
                if item is None:
                    continue
                text = shape_value(item)
                if text is None:
                    return {}, (
                        f"field {field!r} holds a list with a nested value; HubSpot "
                        "multi-select properties take a flat list of text values"
                    )
                if ";" in text:
                    return {}, (
                        f"field {field!r} has a list item containing ';', HubSpot's "
                        "multi-select separator"
                    )
                options.append(text)
            properties[field] = ";".join(options)
        else:
            text = shape_value(value)
            if text is None:
                return {}, f"field {field!r} is not a finite number or text"
            properties[field] = text
    return properties, None


# -- reading HubSpot's answers --------------------------------------------------------------


def _is_json(response: Response) -> bool:
    return bool(response.body) and response.body.lstrip()[:1] in (b"{", b"[")


def _json(response: Response) -> Any:
    """The body as JSON, or None when it is not JSON (an HTML error page, a cut-off body)."""
    if not _is_json(response):
        return None
    try:
        return response.json()
    except orjson.JSONDecodeError:
        return None


def _not_confirmed(response: Response) -> str:
    return (
        f"HubSpot's answer is not the JSON it documents, so the write is not confirmed "
        f"(sent again by the next run): {response.describe()}"
    )


def _rate_limit_wait(response: Response, policy: str | None) -> float:
    """Seconds to wait after a 429: HubSpot sends no Retry-After, only its window."""
    interval = response.headers.get("x-hubspot-ratelimit-interval-milliseconds")
    try:
        if interval:
            return max(1.0, float(interval) / 1000)
    except ValueError:
        pass
    return POLICY_WAIT_SECONDS.get(policy or "", BURST_SECONDS)


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
