"""The declarative HTTP destination: a connector declares, the kit sends.

A connector subclasses :class:`HttpDestination` with its config model and declares its
endpoints per operation, how one record is shaped, its slow-down signals and its auth; the
kit does everything else, the same way for every vendor::

    class AcmeDestination(HttpDestination[AcmeConfig]):
        name = "acme"
        vendor = "Acme"
        capabilities = Capabilities(..., match=MatchRule.exactly_one("email"))
        endpoints = {Operation.UPSERT: Endpoint("POST", "/v1/contacts/batch",
                                                body=envelope("contacts"),
                                                read=errors_by_index("errors[*]"))}
        def make_auth(self) -> Auth:
            return BearerAuth(self.config.token.get_secret_value())

Per request (:meth:`HttpDestination.send`):

1. a place in the account's :class:`~undertow.destinations.rate.RateBudget` (exact rolling
   windows, shared by every sync on the account), waiting at most ``max_wait``;
2. the request through :class:`~undertow.destinations._http.HttpClient` (no redirects, its
   own origin only, every exchange to the capture hook);
3. the answer through the vendor's :class:`~undertow.destinations.kit.signals.SlowDown`
   rules (the whole account pauses for the wait asked; a daily quota stops the run; a wait
   beyond ``max_wait`` stops the run naming the wait), then the status classes: an
   expected status goes to the reader; 401 tries ``auth.refresh`` once, then 401/403 stop
   the run with the connector's ``auth_hint``; retryable statuses and transport errors are
   retried with backoff (``Retry-After`` honoured); a 3xx stops the run (never followed);
   other 4xx go to the reader;
4. retries exhausted: :class:`~undertow.errors.FatalDeliveryError`.

Per batch (:meth:`HttpDestination.write_batch`): records shaped (a :class:`Reject` is
rejected unsent), duplicates of a match value in one batch rejected, calls split to fit
``max_request_bytes``, one request per call (or per record), results read per record, and a
whole-request 4xx that names no record split in halves to find the bad records when the
destination declares ``bisect`` (at most :func:`bisect_allowance` extra requests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from pydantic import Field

from undertow.destinations import retry
from undertow.destinations._http import (
    HttpClient,
    Response,
    parse_retry_after,
    redirect_error,
)
from undertow.destinations.base import (
    Batch,
    BatchResult,
    ConfigT,
    Destination,
    DestinationConfig,
    RecordKind,
)
from undertow.destinations.kit import form
from undertow.destinations.kit.auth import Auth
from undertow.destinations.kit.each import Work, for_each
from undertow.destinations.kit.endpoints import (
    Call,
    Endpoint,
    Item,
    RawItem,
    Reject,
    accept_all,
    not_confirmed,
    plain,
)
from undertow.destinations.kit.signals import DEFAULT_SIGNALS, RateHeaders, SlowDown, Verdict
from undertow.destinations.rate import (
    Interrupted,
    Permit,
    RateBudget,
    WaitTooLong,
    budget_for,
    pause,
)
from undertow.errors import (
    FatalDeliveryError,
    InterruptedDelivery,
    RejectedBatchError,
    RetryableError,
    UndertowError,
    unknown_name,
)


class HttpConfig(DestinationConfig):
    """What every kit destination's config has (subclasses add credentials and limits)."""

    base_url: str
    timeout: float = Field(default=30.0, gt=0)
    """Seconds before a request is abandoned and retried."""


@dataclass
class Stats:
    """What the kit did for this destination instance (benchmarks, tests, ``undertow demo``)."""

    requests: int = 0
    slow_downs: int = 0
    """Answers that said "slow down" (429 and the vendor's equivalents)."""
    retries: int = 0
    bisect_requests: int = 0


def bisect_allowance(size: int) -> int:
    """Extra requests a whole-request refusal of ``size`` records may cost to find its bad
    records: enough for a few bad records (each costs about 2 log2(size) requests)."""
    return 4 * math.ceil(math.log2(max(2, size))) + 4


def parse_json(response: Response) -> Any:
    """The answer's body as JSON, or None when it is not JSON (an HTML page, a cut-off body)."""
    if not response.body or response.body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return response.json()
    except orjson.JSONDecodeError:
        return None


class HttpDestination(Destination[ConfigT]):
    """Base of the declarative HTTP destinations (see the module docstring)."""

    paces_requests: ClassVar[bool] = True
    sends_http: ClassVar[bool] = True
    vendor: ClassVar[str] = "the destination"
    """The vendor's name in messages (``HubSpot``)."""
    endpoints: ClassVar[Mapping[Any, Endpoint]] = {}
    """Operation (or ``(operation, object)``) -> endpoint."""
    signals: ClassVar[tuple[SlowDown, ...]] = DEFAULT_SIGNALS
    rate_headers: ClassVar[RateHeaders | None] = None
    check_path: ClassVar[str | None] = None
    """``GET`` this path in ``check()``; None: ``check()`` only builds the client."""
    auth_hint: ClassVar[str] = "check the destination's credentials and their permissions"
    duplicate_keys: ClassVar[bool] = False
    """True when the vendor accepts the same match value twice in one request."""
    endpoint_windows: ClassVar[bool] = False
    """True when the vendor limits each endpoint on its own (Klaviyo, Iterable): the account
    budget keeps no window of its own (its pauses and in-flight cap still hold) and every
    endpoint declares its windows (``Endpoint.windows``)."""

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        self.auth = self.make_auth()
        caps = self.capabilities_for(None)
        self.http = HttpClient(
            self.base_url(),
            headers={"Accept": "application/json", **self.default_headers()},
            timeout=float(getattr(self.config, "timeout", 30.0)),
            max_connections=max(4, caps.max_concurrency * 2),
        )
        self.stats = Stats()
        self._budget: RateBudget | None = None

    # -- what a connector overrides ---------------------------------------------------------

    def make_auth(self) -> Auth:
        return Auth()

    def base_url(self) -> str:
        return str(getattr(self.config, "base_url", ""))

    def default_headers(self) -> dict[str, str]:
        return {}

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        """One record's wire form, or a :class:`Reject` (default: the record as mapped)."""
        return record

    def shape_raw(
        self, payload: str, *, batch: Batch, key: Any, index: int
    ) -> orjson.Fragment | None:
        """One record's wire form built from its payload's JSON text (``Batch.payloads``),
        spliced into the request body as it is; None sends the record through :meth:`shape`.

        For a destination whose wire form is the mapped fields plus a few of its own (an
        identifier, a flag): a record that needs no decision of its own (no nested value
        to check, no field to move) then costs no parse and no re-encoding. The default
        returns None: every record is parsed and shaped."""
        return None

    def shaped_preview(self, batch: Batch) -> list[Any]:
        """Each record as :meth:`items` shapes it, or ``{"rejected": reason}`` (a
        ``preview`` for a destination whose wire form is not the mapped record). Sends
        nothing."""
        result = BatchResult()
        shaped = {
            i.index: plain(i.body) for i in self.items(batch, self.match_field(batch), result)
        }
        return [shaped.get(i, {"rejected": result.rejected.get(i)}) for i in range(len(batch))]

    def endpoint_for(self, batch: Batch) -> Endpoint:
        found = self.endpoints.get((batch.operation, batch.object)) or self.endpoints.get(
            batch.operation
        )
        if found is None:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} ({self.name}) cannot "
                f"{batch.operation.value} records"
                + (f" of {batch.object}" if batch.object else ""),
                hint="use one of the modes the destination supports (`undertow destinations`)",
            )
        return found

    # -- the budget -------------------------------------------------------------------------

    @property
    def budget(self) -> RateBudget:
        if self._budget is None:
            caps = self.capabilities_for(None)
            limits = () if self.endpoint_windows else caps.limits
            self._budget = budget_for(self.account_key(), limits, max_in_flight=caps.max_in_flight)
        return self._budget

    async def send_to(self, endpoint: Endpoint, path: str | None = None, **kw: Any) -> Response:
        """:meth:`send` to an endpoint outside the per-batch flow (a poll, a lookup), drawing
        from its window too."""
        kw.setdefault("expect", endpoint.expected)
        kw.setdefault("content_type", endpoint.content_type)
        return await self.send(
            endpoint.method, path or endpoint.path, also=self.window_budget(endpoint), **kw
        )

    def window_budget(self, endpoint: Endpoint) -> RateBudget | None:
        """The budget of an endpoint's own windows (``Endpoint.windows``), per account."""
        if not endpoint.windows:
            return None
        key = f"{self.account_key()}:{endpoint.method} {endpoint.path}"
        return budget_for(key, endpoint.windows)

    async def close(self) -> None:
        await self.http.close()

    # -- check ------------------------------------------------------------------------------

    async def check(self) -> None:
        if self.check_path is None:
            return
        response = await self.send("GET", self.check_path, expect=frozenset({200}))
        if response.status != 200:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} ({self.name}): unexpected answer to the "
                f"check: {response.describe()}",
                hint="check base_url (leave it out to use the vendor's API)",
            )

    # -- one request ------------------------------------------------------------------------

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = "application/json",
        expect: frozenset[int] = frozenset({200, 201, 202, 204}),
        also: RateBudget | None = None,
    ) -> Response:
        """Send one request with pacing, slow-down signals, status classes and retries.

        ``also``: a further budget the request draws from, besides the account's (an
        endpoint with a window of its own, such as Pipedrive's search)."""
        ctx = retry.current()
        policy = ctx.policy
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            extra: Permit | None = await self._acquire(ctx, also) if also else None
            try:
                permit = await self._acquire(ctx)
            except BaseException:
                if also is not None and extra is not None:
                    await also.release(extra)
                raise
            error: RetryableError | None = None
            response: Response | None = None
            try:
                send_headers = {**self.auth.headers(), **(headers or {})}
                query = {**(params or {}), **self.auth.params()} or None
                self.stats.requests += 1
                ctx.sending()  # the deliver stage's mark, if any, right before the request
                response = await self.http.request(
                    method,
                    path,
                    json=json,
                    body=body,
                    headers=send_headers,
                    params=query,
                    content_type=content_type,
                    raise_for_status=False,
                )
            except RetryableError as exc:
                error = exc
            finally:
                await self.budget.release(permit)
                if also is not None and extra is not None:
                    await also.release(extra)
            verdict: Verdict | None = None
            if response is not None:
                if self.rate_headers is not None:
                    seen = self.rate_headers.read(response)
                    if seen is not None:
                        await self.budget.observe(remaining=seen[0], reset_in=seen[1])
                parsed = parse_json(response) if self.signals else None
                verdict = self._slow_down(response, parsed)
                if verdict is not None:
                    self.stats.slow_downs += 1
                    error = self._verdict_error(response, verdict, ctx.max_wait)
                elif response.status in expect:
                    return response
                elif (
                    response.status == 401 and not refreshed and await self.auth.refresh(self.http)
                ):
                    refreshed = True
                    attempt -= 1
                    continue
                elif response.status in (401, 403):
                    raise self.auth_error(response)
                elif self._retryable(response.status):
                    error = RetryableError(
                        f"{self.vendor} is unavailable: {response.describe()}",
                        retry_after=parse_retry_after(response.headers.get("retry-after")),
                    )
                elif 300 <= response.status < 400:
                    raise redirect_error(response, self.vendor)
                else:
                    return response
            assert error is not None
            if attempt >= policy.max_attempts:
                raise FatalDeliveryError(
                    f"destination {self.instance_name!r}: {method} "
                    f"{path.split('?')[0]} still failing after {attempt} attempts: {error}",
                    hint="the rows not sent stay undelivered and the next run retries them",
                ) from error
            delay = policy.delay(attempt, error.retry_after)
            if delay > ctx.max_wait:
                why = f"{self.vendor}'s answer" if verdict else "the retry backoff"
                raise retry.too_long(self.instance_name, delay, why, ctx.max_wait)
            self.stats.retries += 1
            if verdict is not None and verdict.penalize:
                await self.budget.penalize(delay, f"{self.vendor} asked to slow down")
            else:
                try:
                    await pause(delay, ctx.stop)
                except Interrupted:
                    raise self._interrupted(error) from None

    async def _acquire(
        self, ctx: retry.DeliveryContext, budget: RateBudget | None = None
    ) -> Permit:
        try:
            return await (budget or self.budget).acquire(stop=ctx.stop, max_wait=ctx.max_wait)
        except WaitTooLong as exc:
            raise retry.too_long(
                self.instance_name, exc.seconds, f"the rate budget ({exc.reason})", ctx.max_wait
            ) from None
        except Interrupted:
            raise self._interrupted(None) from None

    def _interrupted(self, error: Exception | None) -> InterruptedDelivery:
        after = f" after: {error}" if error else ""
        return InterruptedDelivery(
            f"destination {self.instance_name!r}: stopped while waiting to send{after}",
            hint="the batch stays undelivered; the next run sends it",
        )

    def _slow_down(self, response: Response, body: Any) -> Verdict | None:
        for signal in self.signals:
            verdict = signal.read(response, body)
            if verdict is not None:
                return verdict
        return None

    def _verdict_error(
        self, response: Response, verdict: Verdict, max_wait: float
    ) -> RetryableError:
        if verdict.fatal:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} ({self.name}): {self.vendor} says "
                f"{verdict.name}: {response.describe()}",
                hint=verdict.hint
                or "no wait within this run helps; run the sync again once the vendor's quota "
                "renews (the rows not sent go out then)",
            )
        if verdict.wait is not None and verdict.wait > max_wait:
            raise retry.too_long(
                self.instance_name,
                verdict.wait,
                f"{self.vendor} ({verdict.name})",
                max_wait,
                response.describe(),
            )
        return RetryableError(
            f"{verdict.name} by {self.vendor}: {response.describe()}", retry_after=verdict.wait
        )

    def _retryable(self, status: int) -> bool:
        return status in self.capabilities_for(None).retryable_statuses or status >= 500

    def auth_error(self, response: Response) -> FatalDeliveryError:
        return FatalDeliveryError(
            f"destination {self.instance_name!r} ({self.name}) is not authorised by "
            f"{self.vendor}: {response.describe()}",
            hint=self.auth_hint,
        )

    # -- one batch --------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        endpoint = self.endpoint_for(batch)
        match_field = self.match_field(batch)
        result = BatchResult()
        items = self.items(batch, match_field, result)
        if not items:
            return result
        call = Call(batch, items, batch.object, match_field, self.vendor)
        if endpoint.per_record:
            await self._per_record(endpoint, call, result)
        else:
            await self.deliver_call(endpoint, call, result)
        return result

    def match_field(self, batch: Batch) -> str | None:
        """The batch's match field, checked against the declared rule (None for inserts)."""
        caps = self.capabilities_for(batch.object)
        if not caps.uses_match(batch.operation):
            return None
        rule = caps.match
        if rule is None and not caps.requires_match:
            return next(iter(batch.identifiers), None)
        try:
            caps.check_sync(
                sync=batch.sync,
                destination=self.instance_name,
                match=dict.fromkeys(batch.identifiers, ""),
                object=batch.object,
            )
        except UndertowError as exc:
            raise FatalDeliveryError(str(exc)) from None
        return next(iter(batch.identifiers), None)

    def items(self, batch: Batch, match_field: str | None, result: BatchResult) -> list[Item]:
        """Shape every record; reject those without a match value or with a repeated one
        (events may repeat it: one person does several things)."""
        keys = batch.identifiers.get(match_field, []) if match_field else []
        repeats = (
            self.duplicate_keys or self.capabilities_for(batch.object).kind is RecordKind.EVENTS
        )
        seen: dict[str, int] = {}
        items: list[Item] = []
        raw = type(self).shape_raw is not HttpDestination.shape_raw
        payloads = batch.payloads
        records: list[dict[str, Any]] | None = None if raw else batch.records()
        for index in range(len(payloads)):
            key: Any = None
            if match_field is not None:
                key = keys[index] if index < len(keys) else None
                if key is None or key == "":
                    result.rejected[index] = f"no value for the match field {match_field!r}"
                    continue
                folded = str(key).casefold()
                if not repeats and folded in seen:
                    result.rejected[index] = (
                        f"row {batch.keys[seen[folded]]} of the same batch has the same "
                        f"{match_field}; {self.vendor} refuses duplicate ids in one batch"
                    )
                    continue
                seen[folded] = index
            if raw:
                fragment = self.shape_raw(payloads[index], batch=batch, key=key, index=index)
                if fragment is not None:
                    items.append(RawItem(index, payloads[index], key, fragment))
                    continue
                if records is None:
                    records = batch.records()
            assert records is not None
            record = records[index]
            body = self.shape(record, batch=batch, key=key, index=index)
            if isinstance(body, Reject):
                result.rejected[index] = body.reason
                continue
            items.append(Item(index, record, key, body))
        return items

    async def deliver_call(self, endpoint: Endpoint, call: Call, result: BatchResult) -> None:
        """Send a call (split to fit the request size, bisected on a whole refusal)."""
        allowance = [bisect_allowance(len(call.items))]
        for part in self._fit(endpoint, call, result):
            await self._resolve(endpoint, part, result, allowance)

    def _fit(self, endpoint: Endpoint, call: Call, result: BatchResult) -> list[Call]:
        limit = self.capabilities_for(call.object).max_request_bytes
        if limit is None or endpoint.body is None:
            return [call]
        out: list[Call] = []
        pending = [call]
        while pending:
            part = pending.pop()
            size = len(self.encode(endpoint, part)[0] or b"")
            if size <= limit:
                out.append(part)
            elif len(part.items) == 1:
                result.rejected[part.items[0].index] = (
                    f"the record makes a {size:,}-byte request, more than {self.vendor}'s "
                    f"limit of {limit:,} bytes per request"
                )
            else:
                mid = len(part.items) // 2
                pending += [part.subset(part.items[mid:]), part.subset(part.items[:mid])]
        return out

    async def _resolve(
        self, endpoint: Endpoint, call: Call, result: BatchResult, allowance: list[int]
    ) -> None:
        try:
            sub = await self.call(endpoint, call)
        except RejectedBatchError as exc:
            caps = self.capabilities_for(call.object)
            if caps.bisect and len(call.items) > 1 and allowance[0] >= 2:
                allowance[0] -= 2
                self.stats.bisect_requests += 2
                mid = len(call.items) // 2
                for half in (call.items[:mid], call.items[mid:]):
                    await self._resolve(endpoint, call.subset(half), result, allowance)
                return
            reason = str(exc)
            if caps.bisect and len(call.items) > 1:
                reason += " (not narrowed down to one record: the bisect allowance is spent)"
            for item in call.items:
                result.rejected[item.index] = reason
            return
        result.merge(sub, [i.index for i in call.items])

    def encode(self, endpoint: Endpoint, call: Call) -> tuple[bytes | None, str | None]:
        """The request body and its content type."""
        if endpoint.body is None:
            return None, None
        built = endpoint.body(call)
        if isinstance(built, bytes):
            return built, endpoint.content_type
        if endpoint.form:
            return form.encode(built), "application/x-www-form-urlencoded"
        return orjson.dumps(built), endpoint.content_type

    async def call(self, endpoint: Endpoint, call: Call, *, path: str | None = None) -> BatchResult:
        """One request for a call; its results per item (raises RejectedBatchError).

        ``path`` replaces the endpoint's (a path holding an id a lookup found)."""
        body, content_type = self.encode(endpoint, call)
        response = await self.send(
            endpoint.method,
            path or endpoint.path_for(call),
            body=body,
            headers=endpoint.headers(call) if endpoint.headers else None,
            params=endpoint.params(call) if endpoint.params else None,
            content_type=content_type,
            expect=endpoint.expected,
            also=self.window_budget(endpoint),
        )
        if response.status not in endpoint.expected and not 400 <= response.status < 500:
            return not_confirmed(call, response)
        parsed = parse_json(response)
        if response.status in endpoint.ok and response.body and parsed is None and endpoint.read:
            return not_confirmed(call, response)  # a reader needs the JSON it documents
        return (endpoint.read or accept_all)(call, response, parsed)

    async def _per_record(self, endpoint: Endpoint, call: Call, result: BatchResult) -> None:
        async def one(single: Call) -> BatchResult:
            return await self.call(endpoint, single)

        await self.each(call, result, one)

    async def each(self, call: Call, result: BatchResult, work: Work) -> None:
        """Run ``work`` for every record of ``call``, ``max_concurrency`` at once (``kit/each``)."""
        await for_each(self.capabilities_for(call.object).max_concurrency, call, result, work)

    def unknown_object(self, batch: Batch) -> FatalDeliveryError:
        return FatalDeliveryError(
            f"sync {batch.sync!r}: destination {self.instance_name!r} ({self.name}): "
            + unknown_name("object", str(batch.object), self.objects or ()),
            hint=f"set `object:` in the sync to one of {', '.join(self.objects or ())}",
        )
