"""The Stripe destination against the local Stripe fake (undertow.testing.stripe)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import orjson
import pytest

from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.stripe import StripeConfig, StripeDestination, encode
from undertow.errors import FatalDeliveryError
from undertow.testing.stripe import StripeFake, unflatten
from undertow.testing.template import DestinationTests

pytestmark = pytest.mark.connectors

SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
KEY = "sk_test_51Nundertowsecret000000000000000000"
FAST = {
    "window_seconds": 0.2,
    "requests_per_second": 500,
    "endpoint_per_second": 400,
    "search_per_second": 400,
}
CONFIG = {"requests_per_second": 400, "search_per_second": 300, "writes_per_second": 300}


class TestStripeCustomers(DestinationTests):
    """The shared destination suite on Stripe customers, matched by email."""

    destination = StripeDestination
    fake = StripeFake
    token = KEY
    secret_field = "api_key"
    object = "customers"
    match = "email"
    config: ClassVar[dict[str, Any]] = CONFIG
    fake_options: ClassVar[dict[str, Any]] = FAST
    invalid = ({"email": "not-an-email", "name": "Bad"}, "Invalid email address: not-an-email")
    # every exchange of the suite validated against the OpenAPI file
    openapi = SPECS / "stripe" / "stripe-2020-08-27-customers.openapi.json"

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"email": f"user{n}@example.com", "name": f"User {n}", "plan": f"v{version}"}

    def stored(self, fake: StripeFake, record: dict[str, Any]) -> dict[str, Any] | None:
        found = fake.by("email", record["email"])
        return None if found is None else {**found, **found["metadata"]}

    def count(self, fake: StripeFake) -> int:
        return len(fake.customers)


@pytest.fixture
def fake() -> Iterator[StripeFake]:
    stripe = StripeFake(KEY, **FAST)
    with stripe.serve():
        yield stripe


def batch(
    records: list[dict[str, Any]],
    *,
    operation: Operation = Operation.UPSERT,
    match: str | None = "email",
    sync: str = "customers_to_stripe",
) -> Batch:
    identifiers = {match: [r.get(match) for r in records]} if match else {}
    return Batch(
        sync=sync,
        operation=operation,
        number=0,
        idempotency_key="k",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers=identifiers,
        object="customers",
    )


def destination(fake: StripeFake, **extra: Any) -> StripeDestination:
    values = {"type": "stripe", "api_key": KEY, "base_url": fake.url, **CONFIG, **extra}
    return StripeDestination(StripeConfig.model_validate(values), name="billing")


def write(fake: StripeFake, b: Batch, **extra: Any) -> BatchResult:
    async def go() -> BatchResult:
        dest = destination(fake, **extra)
        try:
            return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


def posts(fake: StripeFake) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


# -- shaping -------------------------------------------------------------------------------


def test_bodies_are_form_encoded_with_metadata_for_the_rest(fake: StripeFake) -> None:
    record = {
        "email": "ada@example.com",
        "name": "Ada",
        "address": {"city": "London", "country": "GB"},
        "preferred_locales": ["en", "fr"],
        "plan": "pro",
        "vip": True,
        "seats": 3,
        "note": None,
    }
    assert write(fake, batch([record])) == BatchResult()
    sent = posts(fake)[-1]
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent.headers["stripe-version"] == "2020-08-27"
    assert parse_qsl(sent.raw.decode(), keep_blank_values=True) == [
        ("email", "ada@example.com"),
        ("name", "Ada"),
        ("address[city]", "London"),
        ("address[country]", "GB"),
        ("preferred_locales[0]", "en"),
        ("preferred_locales[1]", "fr"),
        ("metadata[plan]", "pro"),
        ("metadata[vip]", "true"),
        ("metadata[seats]", "3"),
        ("metadata[note]", ""),
    ]
    customer = fake.by("email", "ada@example.com")
    assert customer is not None
    assert customer["metadata"] == {"plan": "pro", "vip": "true", "seats": "3"}
    assert customer["address"]["city"] == "London"  # type: ignore[index]


def test_form_encoding_round_trips_through_the_fakes_reader() -> None:
    body = {"a": {"b": ["x", {"c": "1"}]}, "d": None, "e": False, "f": []}
    pairs = parse_qsl(encode(body).decode(), keep_blank_values=True)
    assert unflatten(pairs) == {"a": {"b": ["x", {"c": "1"}]}, "d": "", "e": "false", "f": ""}


def test_metadata_past_stripes_limits_is_rejected_before_sending(fake: StripeFake) -> None:
    long_key = "k" * 41
    records = [
        {"email": "a@x.io", long_key: "v"},
        {"email": "b@x.io", "note": "x" * 501},
        {"email": "c@x.io", **{f"m{n}": n for n in range(51)}},
        {"email": "d@x.io", "tags": ["a"]},
        {"email": "e@x.io"},
    ]
    result = write(fake, batch(records))
    assert "longer than Stripe's 40 characters" in result.rejected[0]
    assert "longer than Stripe's 500 characters" in result.rejected[1]
    assert "51 metadata keys; Stripe allows 50" in result.rejected[2]
    assert "field 'tags' is nested" in result.rejected[3]
    assert [r.body["email"] for r in posts(fake)] == ["e@x.io"]


# -- idempotency ---------------------------------------------------------------------------


def test_each_write_has_an_idempotency_key_stable_across_a_resend(fake: StripeFake) -> None:
    records = [{"email": "a@x.io", "name": "A"}, {"email": "b@x.io", "name": "B"}]
    write(fake, batch(records, operation=Operation.INSERT, match=None))
    first = [r.headers["idempotency-key"] for r in posts(fake)]
    write(fake, batch(records, operation=Operation.INSERT, match=None))  # a resend
    again = [r.headers["idempotency-key"] for r in posts(fake)[2:]]
    assert len(set(first)) == 2 and set(first) == set(again)
    assert all(k.startswith("undertow-") and len(k) == 49 for k in first)
    assert len(fake.customers) == 2 and fake.replays == 2  # replayed, not created twice
    changed = [{"email": "a@x.io", "name": "A2"}]
    write(fake, batch(changed, operation=Operation.INSERT, match=None))
    assert posts(fake)[-1].headers["idempotency-key"] not in first


def test_a_lost_create_answer_is_replayed_not_duplicated() -> None:
    stripe = StripeFake(KEY, **FAST, search_lag=60.0)  # search cannot see the new customer
    with stripe.serve():
        record = [{"email": "a@x.io", "name": "A"}]
        assert write(stripe, batch(record)) == BatchResult()
        assert write(stripe, batch(record)) == BatchResult()  # search misses it: POST again
    assert len(stripe.customers) == 1
    assert stripe.replays == 1


def test_reusing_a_key_with_other_parameters_is_stripes_idempotency_error(fake: StripeFake) -> None:
    body = b"email=a%40x.io"
    fake.idempotency["undertow-fixed"] = (b"/v1/customers?email=b%40x.io", 200, b"{}")

    async def go() -> Any:
        dest = destination(fake)
        try:
            return await dest.send(
                "POST",
                "/v1/customers",
                body=body,
                headers={"Idempotency-Key": "undertow-fixed"},
                content_type="application/x-www-form-urlencoded",
                expect=frozenset({200}),
            )
        finally:
            await dest.close()

    answer = asyncio.run(go())
    assert answer.status == 400
    assert orjson.loads(answer.body)["error"]["type"] == "idempotency_error"


# -- modes ---------------------------------------------------------------------------------


def test_upsert_searches_then_updates_the_customer_it_finds(fake: StripeFake) -> None:
    write(fake, batch([{"email": "a@x.io", "plan": "free"}]))
    customer_id = fake.by("email", "a@x.io")["id"]  # type: ignore[index]
    assert write(fake, batch([{"email": "a@x.io", "plan": "pro"}])) == BatchResult()
    assert len(fake.customers) == 1
    assert posts(fake)[-1].path == f"/v1/customers/{customer_id}"
    search = [r for r in fake.requests if r.path.endswith("/search")][-1]
    assert search.query == {"query": "email:'a@x.io'", "limit": "2"}
    assert fake.by("email", "a@x.io")["metadata"] == {"plan": "pro"}  # type: ignore[index]


def test_match_on_a_metadata_key(fake: StripeFake) -> None:
    records = [{"user_id": "u'1", "email": "a@x.io"}]
    assert write(fake, batch(records, match="user_id")) == BatchResult()
    records = [{"user_id": "u'1", "email": "new@x.io"}]
    assert write(fake, batch(records, match="user_id")) == BatchResult()
    assert len(fake.customers) == 1
    search = [r for r in fake.requests if r.path.endswith("/search")][-1]
    assert search.query["query"] == "metadata['user_id']:'u\\'1'"
    assert fake.by("metadata.user_id", "u'1")["email"] == "new@x.io"  # type: ignore[index]


def test_two_customers_with_the_match_value_reject_the_row(fake: StripeFake) -> None:
    write(
        fake,
        batch([{"email": "a@x.io"}, {"email": "a@x.io"}], operation=Operation.INSERT, match=None),
    )
    result = write(fake, batch([{"email": "a@x.io", "name": "x"}]))
    assert "more than one customer whose email is 'a@x.io'" in result.rejected[0]


def test_update_rejects_unknown_and_delete_accepts_them(fake: StripeFake) -> None:
    write(fake, batch([{"email": "a@x.io"}]))
    result = write(fake, batch([{"email": "ghost@x.io", "name": "G"}], operation=Operation.UPDATE))
    assert "no customer whose email is 'ghost@x.io'" in result.rejected[0]
    gone = batch([{"email": "a@x.io"}, {"email": "never@x.io"}], operation=Operation.DELETE)
    assert write(fake, gone) == BatchResult()
    assert len(fake.customers) == 0
    assert [r.method for r in fake.requests].count("DELETE") == 1


# -- limits --------------------------------------------------------------------------------


def test_the_default_rate_follows_the_keys_mode(fake: StripeFake) -> None:
    def rate(key: str) -> int:
        config = StripeConfig(type="stripe", api_key=key, base_url=fake.url)
        caps = StripeDestination(config, name="b").capabilities_for("customers")
        assert caps.rate_limit is not None
        return caps.rate_limit.requests

    assert (rate("sk_live_x"), rate("rk_live_x"), rate("sk_test_x")) == (100, 100, 25)


def test_searches_have_their_own_window(fake: StripeFake) -> None:
    import time

    records = [{"email": f"u{n}@x.io"} for n in range(9)]
    started = time.monotonic()
    assert write(fake, batch(records), search_per_second=4) == BatchResult()
    assert time.monotonic() - started >= 2.0  # 9 searches at 4 per rolling second
    assert fake.slow_downs == 0


def test_a_429_is_waited_out(fake: StripeFake) -> None:
    fake.throttle_next(1)
    assert write(fake, batch([{"email": "a@x.io"}])) == BatchResult()
    assert fake.slow_downs == 1


def test_an_invalid_key_stops_the_run_without_showing_it(fake: StripeFake) -> None:
    wrong = "sk_test_wrongwrongwrongwrong"
    with pytest.raises(FatalDeliveryError) as caught:
        write(fake, batch([{"email": "a@x.io"}]), api_key=wrong)
    assert "secret key" in str(caught.value) and wrong not in str(caught.value)
