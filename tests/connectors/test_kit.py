"""The declarative HTTP kit on a small vendor of its own (a fake on the fakes kit): bisect of
whole-batch refusals, the slow-down signals of several vendors, request-size splits,
per-record endpoints, the vendor's remaining count, exact pacing against a real window."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import Field, SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.destinations import retry
from undertow.destinations.rate import forget_budgets
from undertow.sdk import (
    Auth,
    Batch,
    BatchResult,
    BearerAuth,
    Capabilities,
    Endpoint,
    HttpConfig,
    HttpDestination,
    MatchRule,
    Operation,
    RateHeaders,
    RateLimit,
    RetryPolicy,
    SlowDown,
    envelope,
    errors_by_index,
    single,
)
from undertow.testing.fakes import FakeAPI, RecordStore, Window, bearer

pytestmark = pytest.mark.connectors

TOKEN = "acme-secret-token-000"


class AcmeFake(FakeAPI):
    """A vendor that refuses a whole batch when one record is bad, naming no record."""

    type = "acme"
    vendor = "Acme"

    def __init__(self, token: str = TOKEN, *, limit: int = 1000, seconds: float = 10.0) -> None:
        super().__init__(auth=bearer(token), windows=[Window(limit, seconds)])
        self.contacts = RecordStore()
        self.answer: Any = None
        """Set to a callable(captured) -> Response to answer instead (signals)."""

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/contacts", self.batch, methods=["POST"]),
            Route("/v1/contacts/{email}", self.one, methods=["PUT"]),
        ]

    def slow_down(self, window: Window | None) -> Response:
        return self.respond(429, {"message": "slow down"}, {"Retry-After": "0.2"})

    async def batch(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        if self.answer is not None:
            return self.answer(captured)  # type: ignore[no-any-return]
        records = captured.body["contacts"]
        self.note_batch(len(records))
        for record in records:
            if "@" not in str(record.get("email")):
                return self.respond(400, {"message": "invalid email in the request"})
        for record in records:
            self.contacts.upsert("email", record["email"], record)
        return self.respond(200, {"ok": True})

    async def one(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        email_ = request.path_params["email"]
        if "@" not in email_:
            return self.respond(422, {"message": f"{email_} is not an email"})
        self.contacts.upsert("email", email_, captured.body)
        return self.respond(200, {"ok": True})


class AcmeConfig(HttpConfig):
    token: SecretStr
    base_url: str = "https://api.acme.example"
    batch_size: int = Field(default=500, ge=1)
    rate: int = 1000
    seconds: float = 10.0
    max_request_bytes: int | None = None


class AcmeDestination(HttpDestination[AcmeConfig]):
    name = "acme"
    vendor = "Acme"
    capabilities = Capabilities(
        operations=frozenset({Operation.UPSERT, Operation.UPDATE}),
        max_batch_size=500,
        per_record_results=True,
        match=MatchRule.exactly_one("email"),
        bisect=True,
    )
    endpoints: ClassVar[dict[Any, Endpoint]] = {
        Operation.UPSERT: Endpoint(
            "POST", "/v1/contacts", body=envelope("contacts"), read=errors_by_index()
        ),
        Operation.UPDATE: Endpoint("PUT", "/v1/contacts/{key}", body=single, per_record=True),
    }
    signals = (
        SlowDown(
            name="request limit",
            statuses=frozenset({403}),
            code_path="[*].errorCode",
            codes=frozenset({"REQUEST_LIMIT_EXCEEDED"}),
            default_wait=0.1,
        ),
        SlowDown(
            name="user request limit",
            statuses=frozenset({400}),
            code_path="error.code",
            codes=frozenset({17, 613, 80003}),
            default_wait=0.1,
        ),
        SlowDown(
            name="too many calls",
            statuses=frozenset({200}),
            code_path="errors[*].code",
            codes=frozenset({606, 607, 615}),
            default_wait=0.1,
        ),
        SlowDown(),
    )
    rate_headers = RateHeaders(remaining="x-ratelimit-remaining", reset="x-ratelimit-reset")

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.token.get_secret_value())

    def capabilities_for(self, object: str | None) -> Capabilities:
        from dataclasses import replace

        return replace(
            self.capabilities,
            max_batch_size=self.config.batch_size,
            rate_limit=RateLimit(self.config.rate, self.config.seconds),
            max_request_bytes=self.config.max_request_bytes,
        )


@pytest.fixture
def fake() -> Iterator[AcmeFake]:
    acme = AcmeFake()
    with acme.serve():
        yield acme


def make(fake: AcmeFake, **extra: Any) -> AcmeDestination:
    return AcmeDestination(
        AcmeConfig(type="acme", token=SecretStr(TOKEN), base_url=fake.url, **extra), name="acme"
    )


def records(n: int, bad: set[int] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    return [
        {"email": f"user{i}.example.com" if i in bad else f"user{i}@example.com", "n": i}
        for i in range(n)
    ]


def batch(rows: list[dict[str, Any]], operation: Operation = Operation.UPSERT) -> Batch:
    return Batch(
        sync="s",
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(i) for i in range(len(rows))],
        payloads=[orjson.dumps(r).decode() for r in rows],
        identifiers={"email": [r["email"] for r in rows]},
    )


def write(dest: AcmeDestination, b: Batch, *, max_wait: float = 30) -> BatchResult:
    async def go() -> BatchResult:
        policy = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05)
        try:
            with retry.delivery(policy=policy, stop=None, max_wait=max_wait):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


# -- find the bad record ----------------------------------------------------------------------


def test_one_bad_record_in_500_is_found_with_a_bounded_number_of_requests(fake: AcmeFake) -> None:
    dest = make(fake)
    result = write(dest, batch(records(500, bad={137})))
    assert list(result.rejected) == [137]
    assert "invalid email in the request" in result.rejected[137]
    assert result.failed == {}
    assert len(fake.contacts) == 499
    # 1 request, then 2 per halving down to one record: 1 + 2 * ceil(log2(500)) = 19
    assert len(fake.requests) <= 19
    assert dest.stats.bisect_requests == len(fake.requests) - 1


def test_several_bad_records_are_each_found(fake: AcmeFake) -> None:
    result = write(make(fake), batch(records(64, bad={3, 40})))
    assert sorted(result.rejected) == [3, 40]
    assert len(fake.contacts) == 62


def test_when_the_allowance_is_spent_the_rest_is_rejected_saying_so(fake: AcmeFake) -> None:
    bad = set(range(0, 64, 2))  # every other record: more than the allowance can isolate
    result = write(make(fake), batch(records(64, bad=bad)))
    assert bad <= set(result.rejected)
    narrowed = [r for r in result.rejected.values() if "bisect allowance is spent" in r]
    assert narrowed, "some records could not be isolated within the allowance"
    assert len(fake.requests) <= 1 + 4 * 6 + 4


# -- slow-down signals of several vendors ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests"}]),  # Salesforce
        (400, {"error": {"code": 80003, "message": "audience BUC"}}),  # Facebook
        (200, {"success": False, "errors": [{"code": 606, "message": "rate"}]}),  # Marketo
    ],
)
def test_vendor_slow_down_codes_are_waited_out_not_rejected(
    fake: AcmeFake, status: int, body: Any
) -> None:
    answers = iter([status])

    def once(captured: Any) -> Response:
        fake.answer = None
        return fake.respond(next(answers), body)

    fake.answer = once
    dest = make(fake)
    assert write(dest, batch(records(3))) == BatchResult()
    assert len(fake.contacts) == 3
    assert dest.stats.slow_downs == 1


def test_retry_after_as_an_http_date_is_honoured(fake: AcmeFake) -> None:
    when = email.utils.formatdate(time.time() + 1.2, usegmt=True)
    fake.fail_next(status=429, body={"message": "slow"}, headers={"Retry-After": when})
    started = time.monotonic()
    assert write(make(fake), batch(records(2))) == BatchResult()
    assert time.monotonic() - started >= 0.2  # an HTTP date has 1 s resolution


def test_the_vendors_remaining_count_pauses_before_a_429(fake: AcmeFake) -> None:
    reset = str(int(time.time()) + 2)
    fake.fail_next(
        status=200,
        body={"ok": True},
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset},
    )
    dest = make(fake)
    write(dest, batch(records(1)))
    forget = dest.budget
    started = time.monotonic()
    write(make(fake), batch(records(1)))  # the same account: the same budget, paused
    assert make(fake).budget is forget
    assert time.monotonic() - started >= 0.5


# -- requests: size and per record -------------------------------------------------------------


def test_calls_are_split_to_fit_the_request_size(fake: AcmeFake) -> None:
    result = write(make(fake, max_request_bytes=400), batch(records(20)))
    assert result == BatchResult()
    assert len(fake.contacts) == 20
    assert all(len(r.raw) <= 400 for r in fake.requests)
    assert len(fake.requests) > 1


def test_one_request_per_record_rejects_only_that_record(fake: AcmeFake) -> None:
    rows = records(5, bad={2})
    result = write(make(fake), batch(rows, Operation.UPDATE))
    assert list(result.rejected) == [2]
    assert "is not an email" in result.rejected[2]
    assert len(fake.requests) == 5 and len(fake.contacts) == 4


# -- exact pacing ------------------------------------------------------------------------------


def test_two_syncs_on_one_account_never_get_a_429_from_a_rolling_window() -> None:
    forget_budgets()
    acme = AcmeFake(limit=4, seconds=0.5)
    with acme.serve():

        async def sync(offset: int) -> None:
            dest = make(acme, batch_size=1, rate=4, seconds=0.5)
            try:
                for i in range(6):
                    rows = [{"email": f"s{offset}-{i}@example.com"}]
                    await dest.write_batch(batch(rows))
            finally:
                await dest.close()

        async def both() -> None:
            await asyncio.gather(sync(1), sync(2))

        started = time.monotonic()
        asyncio.run(both())
        elapsed = time.monotonic() - started
    assert acme.slow_downs == 0
    assert len(acme.contacts) == 12
    assert elapsed >= 1.0  # 12 requests at 4 per 0.5 s: at least two more windows


class WindowedAcme(AcmeDestination):
    """The same vendor whose upsert endpoint has a window of its own (Endpoint.windows)."""

    endpoints: ClassVar[dict[Any, Endpoint]] = {
        Operation.UPSERT: Endpoint(
            "POST",
            "/v1/contacts",
            body=envelope("contacts"),
            read=errors_by_index(),
            windows=(RateLimit(3, 0.5),),
        )
    }


def test_an_endpoints_own_window_is_paced_besides_the_accounts() -> None:
    forget_budgets()
    acme = AcmeFake(limit=3, seconds=0.5)  # the endpoint's window, stricter than the account's
    with acme.serve():
        dest = WindowedAcme(
            AcmeConfig(type="acme", token=SecretStr(TOKEN), base_url=acme.url, rate=1000),
            name="acme",
        )

        async def go() -> None:
            try:
                for i in range(7):
                    await dest.write_batch(batch([{"email": f"w{i}@example.com"}]))
            finally:
                await dest.close()

        started = time.monotonic()
        asyncio.run(go())
        elapsed = time.monotonic() - started
    assert acme.slow_downs == 0 and len(acme.contacts) == 7
    assert elapsed >= 1.0  # 7 requests at 3 per 0.5 s


def test_a_kit_destination_runs_the_before_send_hook_once_right_before_its_first_request(
    fake: AcmeFake,
) -> None:
    seen: list[int] = []
    dest = make(fake)

    async def go() -> BatchResult:
        policy = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05)
        try:
            with retry.delivery(
                policy=policy,
                stop=None,
                max_wait=30,
                before_send=lambda: seen.append(len(fake.requests)),
            ):
                fake.throttle_next(1)  # a retried request does not run it again
                return await dest.write_batch(batch(records(3)))
        finally:
            await dest.close()

    assert asyncio.run(go()) == BatchResult()
    assert seen == [0] and len(fake.requests) == 2
