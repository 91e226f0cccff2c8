"""The readings that make real vendor files checkable (undertow.testing.conformance):
statuses stated outside the file, form bodies and deepObject parameters in bracket
notation, ``nullable`` beside ``anyOf`` — each finds what it is there to find."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from undertow.testing.conformance import Contract, brackets

pytestmark = pytest.mark.conformance

SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
INTERCOM = SPECS / "intercom" / "intercom-2.14-contacts.openapi.yaml"
STRIPE = SPECS / "stripe" / "stripe-2020-08-27-customers.openapi.json"
JSON = {"content-type": "application/json", "authorization": "Bearer t"}
FORM = {"content-type": "application/x-www-form-urlencoded", "authorization": "Bearer sk_x"}


@pytest.fixture(scope="module")
def stripe() -> Contract:
    return Contract.load(STRIPE)


def customer(**changes: object) -> bytes:
    fixture = orjson.loads(
        (SPECS / "stripe" / "stripe-2020-08-27-customer.fixtures.json").read_bytes()
    )
    return orjson.dumps({**fixture["customer"], **changes})


def test_a_status_the_file_leaves_out_needs_its_notes() -> None:
    plain = Contract.load(INTERCOM)
    noted = Contract.load(INTERCOM, outside={409: "error"})
    body = b'{"email": "a@x.io"}'
    conflict = b'{"type": "error.list", "errors": [{"code": "conflict", "message": "id=1"}]}'
    found = plain.check(
        "POST",
        "/contacts",
        headers=JSON,
        body=body,
        status=409,
        response_headers=JSON,
        response_body=conflict,
    )
    assert [v.errors for v in found] == [["status 409 is not in the spec or its notes"]]
    assert (
        noted.check(
            "POST",
            "/contacts",
            headers=JSON,
            body=body,
            status=409,
            response_headers=JSON,
            response_body=conflict,
        )
        == []
    )
    wrong = noted.check(
        "POST",
        "/contacts",
        headers=JSON,
        body=body,
        status=409,
        response_headers=JSON,
        response_body=b'{"errors": "no"}',
    )
    assert wrong and wrong[0].side == "response" and "error:" in wrong[0].errors[0]


def test_form_bodies_are_read_in_bracket_notation_and_cast(stripe: Contract) -> None:
    good = b"email=a%40x.io&balance=-500&address[city]=Paris&preferred_locales[0]=fr&metadata[k]=v"
    assert (
        stripe.check(
            "POST",
            "/v1/customers",
            headers=FORM,
            body=good,
            status=200,
            response_headers=JSON,
            response_body=customer(),
        )
        == []
    )
    for bad, why in (
        (b"colour=blue", "'colour' was unexpected"),
        (b"balance=lots", "is not of type 'integer'"),
        (b"tax_exempt=sometimes", "'sometimes' is not one of"),
    ):
        found = stripe.check("POST", "/v1/customers", headers=FORM, body=bad)
        assert found and why in " ".join(found[0].errors), (bad, found)
    unauthenticated = stripe.check(
        "POST",
        "/v1/customers",
        headers={"content-type": FORM["content-type"]},
        body=b"email=a%40x.io",
    )
    assert "no Authorization" in unauthenticated[0].errors[0]


def test_deep_object_and_required_query_parameters(stripe: Contract) -> None:
    assert (
        stripe.check(
            "GET", "/v1/customers/search", query="query=email%3A%27a%27&limit=2", headers=FORM
        )
        == []
    )
    assert (
        stripe.check(
            "GET", "/v1/customers/search", query="query=x&expand[0]=data.tax", headers=FORM
        )
        == []
    )
    missing = stripe.check("GET", "/v1/customers/search", query="limit=2", headers=FORM)
    assert "the required query parameter 'query' is missing" in missing[0].errors
    assert "is not of type 'integer'" in " ".join(
        stripe.check("GET", "/v1/customers/search", query="query=x&limit=many", headers=FORM)[
            0
        ].errors
    )


def test_nullable_beside_any_of_admits_null_and_nothing_else(stripe: Contract) -> None:
    def answer(body: bytes) -> list[str]:
        found = stripe.check(
            "GET",
            "/v1/customers/cus_1",
            headers=FORM,
            status=200,
            response_headers=JSON,
            response_body=body,
        )
        return [e for v in found for e in v.errors]

    assert answer(customer(address=None, default_source=None, discount=None)) == []
    assert answer(customer(address={"city": 5})) != []
    assert answer(customer(id=None)) != []  # `id` is not nullable


def test_brackets() -> None:
    pairs = [("a[b][0]", "x"), ("a[b][1][c]", "1"), ("d", ""), ("e[f]", "g")]
    assert brackets(pairs) == {"a": {"b": ["x", {"c": "1"}]}, "d": "", "e": {"f": "g"}}
