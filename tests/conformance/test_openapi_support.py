"""The OpenAPI contract helper finds what it is there to find (a checker that cannot fail
would make every conformance test above it pass for nothing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from openapi_support import Contract, Exchange

pytestmark = pytest.mark.conformance

SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
JSON = {"content-type": "application/json"}
AUTH = {"authorization": "Bearer t", **JSON}


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(
        SPECS / "intercom" / "intercom-2.14-contacts.openapi.yaml",
        outside={409: "error"},
        extra=[("GET", "/data_attributes", "outside the trimmed file")],
    )


def exchange(path: str, body: bytes, status: int, answer: bytes, method: str = "POST") -> Exchange:
    return Exchange(method, path, [], dict(AUTH), body, status, dict(JSON), answer)


def test_a_conforming_exchange_has_no_problem(contract: Contract) -> None:
    ok = exchange("/contacts", b'{"email": "a@x.io"}', 200, b'{"type": "contact", "id": "1"}')
    assert contract.problems(ok) == []


def test_a_wrong_request_body_and_a_wrong_answer_are_problems(contract: Contract) -> None:
    bad = exchange("/contacts", b'{"email": 5}', 200, b'{"type": "contact", "id": 1}')
    problems = contract.problems(bad)
    assert len(problems) == 2
    assert "request: InvalidRequestBody" in problems[0]
    assert "1 is not of type 'string'" in problems[1]


def test_paths_and_statuses_outside_the_file_are_problems_unless_declared(
    contract: Contract,
) -> None:
    assert "PathNotFound" in contract.problems(exchange("/nope", b"", 200, b""))[0]
    undeclared = exchange("/contacts", b'{"email": "a@x.io"}', 429, b'{"type": "error.list"}')
    assert contract.problems(undeclared) == [
        "POST /contacts -> 429: status 429 is not in the spec or its notes"
    ]
    not_an_error = exchange("/contacts", b'{"email": "a@x.io"}', 409, b'{"errors": "no"}')
    assert any("error body" in p for p in contract.problems(not_an_error))
    extra = exchange("/data_attributes", b"", 200, b"{}", method="GET")
    assert contract.problems(extra) == [] and contract.is_extra(extra)
