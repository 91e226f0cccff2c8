"""Endpoints per operation, request bodies from a batch, and results per record, as data.

A kit destination maps each operation (and object) to an :class:`Endpoint`::

    Endpoint("POST", "/crm/v3/objects/{object}/batch/upsert",
             body=envelope("inputs"), read=errors_by_trace("errors", ...))

The kit shapes every record into an :class:`Item` (the destination's ``shape`` method:
one record's wire form, or a :class:`Reject` with the reason it cannot be sent), groups the
items of one request into a :class:`Call`, builds the body with ``body(call)``, sends it
and hands the answer to ``read(call, response, body)``, which returns a
:class:`~undertow.destinations.base.BatchResult` indexed by the *call's* items. A reader
raises :class:`~undertow.errors.RejectedBatchError` when the vendor refused the whole
request without naming a record: the kit then splits the call to find the bad records
(when the destination declares ``bisect``) or rejects them all.

``per_record=True`` endpoints send one request per record (Stripe, Intercom), paths
formatted with the item (``/v1/customers/{key}``).

Ready-made readers: :func:`accept_all`, :func:`errors_by_index`, :func:`errors_by_field`,
:func:`results_in_order`. Each turns a vendor error object into a message with
:func:`message_of` (``"<Vendor> <code>: <message>"``, trimmed and redacted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from undertow.destinations.base import Batch, BatchResult, RateLimit
from undertow.destinations.kit.signals import first_at, values_at
from undertow.errors import RejectedBatchError
from undertow.redact import trim

if TYPE_CHECKING:
    from undertow.destinations._http import Response


@dataclass(frozen=True)
class Reject:
    """A record that cannot be sent, and why (it is rejected, never sent)."""

    reason: str


@dataclass
class Item:
    """One record ready to send."""

    index: int
    """Its index in the batch."""
    record: dict[str, Any]
    """The mapped record."""
    key: Any
    """Its match value (None when the operation uses no match field)."""
    body: Any
    """Its wire form (what ``shape`` returned)."""


class RawItem(Item):
    """An item whose wire form was built from its payload's JSON text
    (:meth:`~undertow.destinations.kit.http.HttpDestination.shape_raw`): its record is
    parsed only if something reads it."""

    def __init__(self, index: int, payload: str, key: Any, body: Any) -> None:
        self.index = index
        self.key = key
        self.body = body
        self._payload = payload
        self._record: dict[str, Any] | None = None

    @property  # type: ignore[override]
    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = orjson.loads(self._payload)
        return self._record

    @record.setter
    def record(self, value: dict[str, Any]) -> None:
        self._record = value


def plain(body: Any) -> Any:
    """A wire form as Python values (a :class:`orjson.Fragment` parsed back), for previews."""
    return orjson.loads(orjson.dumps(body)) if isinstance(body, orjson.Fragment) else body


@dataclass
class Call:
    """The records of one request."""

    batch: Batch
    items: list[Item]
    object: str | None
    match_field: str | None
    vendor: str = "the destination"
    context: dict[str, Any] = field(default_factory=dict)
    """What a connector's body builder and reader share for this call (Facebook's schema and
    session); every part of a split call shares the same dict."""

    def subset(self, items: list[Item]) -> Call:
        return Call(self.batch, items, self.object, self.match_field, self.vendor, self.context)

    @property
    def bodies(self) -> list[Any]:
        return [i.body for i in self.items]


Body = Callable[[Call], Any]
Reader = Callable[[Call, "Response", Any], BatchResult]


@dataclass(frozen=True)
class Endpoint:
    """One operation's request: method, path, body builder, result reader."""

    method: str
    path: str
    """Formatted with ``object``, and for ``per_record`` with ``key`` and ``record``."""
    body: Body | None = None
    """The request body from a call (JSON-able, or bytes sent as is); None: no body."""
    read: Reader | None = None
    """Results per item from the answer (default :func:`accept_all`)."""
    ok: frozenset[int] = frozenset({200, 201, 202, 204})
    """Statuses that are a success; any other answer confirms nothing."""
    answers: frozenset[int] = frozenset()
    """Further statuses handed to the reader as they are (e.g. 207, or Salesforce's 300)."""
    per_record: bool = False
    headers: Callable[[Call], dict[str, str]] | None = None
    """Request headers for a call (an ``Idempotency-Key``)."""
    params: Callable[[Call], dict[str, str]] | None = None
    content_type: str | None = "application/json"
    form: bool = False
    """Send the body (a flat dict) as ``application/x-www-form-urlencoded``."""
    windows: tuple[RateLimit, ...] = ()
    """The endpoint's own rolling windows, besides the account's (Braze's subscription
    endpoint: 5,000 a minute; Klaviyo's: 10/s and 150/min each): every sync of the account
    draws from both."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", frozenset(self.ok))
        object.__setattr__(self, "answers", frozenset(self.answers))

    def path_for(self, call: Call) -> str:
        values: dict[str, Any] = {"object": call.object or ""}
        if self.per_record and call.items:
            item = call.items[0]
            values.update(key=item.key, record=item.record, index=item.index)
        return self.path.format(**values)

    @property
    def expected(self) -> frozenset[int]:
        return self.ok | self.answers


# -- bodies -----------------------------------------------------------------------------------


def envelope(key: str | None, **extra: Any) -> Body:
    """``{key: [item bodies...], **extra}`` (or the bare list when ``key`` is None)."""

    def build(call: Call) -> Any:
        if key is None:
            return call.bodies
        return {key: call.bodies, **extra}

    return build


def single(call: Call) -> Any:
    """The one item's body (per-record endpoints)."""
    return call.items[0].body if call.items else None


# -- readers ----------------------------------------------------------------------------------


def message_of(vendor: str, error: Any, *, code: str = "code", message: str = "message") -> str:
    """``"<vendor> <code>: <message>"`` from a vendor error object (trimmed, redacted)."""
    if isinstance(error, dict):
        found_code = first_at(error, code) if code else None
        found_message = first_at(error, message) if message else None
        text = str(found_message if found_message is not None else error)
        prefix = f"{vendor} {found_code}" if found_code not in (None, "") else vendor
        return trim(f"{prefix}: {text}", 500)
    return trim(f"{vendor}: {error}", 500)


def whole_reason(call: Call, response: Response, body: Any, *, message: str = "message") -> str:
    """The vendor's message for a refusal of the whole request."""
    found = first_at(body, message) if isinstance(body, dict | list) else None
    if found:
        return trim(f"{call.vendor} refused the request: {found}", 500)
    return f"{call.vendor} refused the request: {response.describe()}"


def not_confirmed(call: Call, response: Response) -> BatchResult:
    """Every item failed (retried next run): the answer is not the success the vendor documents."""
    reason = (
        f"{call.vendor}'s answer is not a documented success, so the write is not confirmed "
        f"(sent again by the next run): {response.describe()}"
    )
    return BatchResult.all_failed(len(call.items), reason)


def accept_all(call: Call, response: Response, body: Any) -> BatchResult:
    """A success accepts every item; a 4xx refuses the request whole."""
    if 400 <= response.status < 500:
        raise RejectedBatchError(whole_reason(call, response, body))
    return BatchResult()


def errors_by_index(
    path: str = "errors[*]",
    *,
    index: str = "index",
    code: str = "code",
    message: str = "message",
    offset: int = 0,
) -> Reader:
    """Per-record errors listed with the index of the record they name (in the order sent)."""

    def read(call: Call, response: Response, body: Any) -> BatchResult:
        if 400 <= response.status < 500 and not any(True for _ in values_at(body, path)):
            raise RejectedBatchError(whole_reason(call, response, body, message=message))
        result = BatchResult()
        for error in values_at(body, path):
            at = first_at(error, index) if isinstance(error, dict) else None
            if isinstance(at, int) and not isinstance(at, bool):
                position = at - offset
                if 0 <= position < len(call.items):
                    result.rejected[position] = message_of(
                        call.vendor, error, code=code, message=message
                    )
        return result

    return read


def errors_by_field(
    path: str,
    *,
    field: str,
    code: str = "code",
    message: str = "message",
    match: Callable[[Item], Iterable[str]] | None = None,
) -> Reader:
    """Per-record errors that name their record by a value (an email, an external id).

    ``match`` gives the values an item answers to (default: its match value); values are
    compared case-insensitively.
    """

    def read(call: Call, response: Response, body: Any) -> BatchResult:
        if 400 <= response.status < 500 and not any(True for _ in values_at(body, path)):
            raise RejectedBatchError(whole_reason(call, response, body, message=message))
        by_value: dict[str, int] = {}
        for position, item in enumerate(call.items):
            names = match(item) if match is not None else [item.key]
            for name in names:
                if name is not None:
                    by_value.setdefault(str(name).casefold(), position)
        result = BatchResult()
        for error in values_at(body, path):
            value = first_at(error, field) if isinstance(error, dict) else None
            position_ = by_value.get(str(value).casefold()) if value is not None else None
            if position_ is not None:
                result.rejected[position_] = message_of(
                    call.vendor, error, code=code, message=message
                )
        return result

    return read


def results_in_order(
    path: str = "[*]",
    *,
    success: str = "success",
    error: str = "errors[0]",
    code: str = "statusCode",
    message: str = "message",
) -> Reader:
    """One result per record, in the order sent (Salesforce sObject Collections)."""

    def read(call: Call, response: Response, body: Any) -> BatchResult:
        results = list(values_at(body, path))
        if 400 <= response.status < 500 or len(results) != len(call.items):
            if 400 <= response.status < 500:
                raise RejectedBatchError(whole_reason(call, response, body, message=message))
            return not_confirmed(call, response)
        out = BatchResult()
        for position, item in enumerate(results):
            if isinstance(item, dict) and item.get(success) is True:
                continue
            detail = first_at(item, error) if isinstance(item, dict) else None
            out.rejected[position] = message_of(
                call.vendor, detail if detail is not None else item, code=code, message=message
            )
        return out

    return read
