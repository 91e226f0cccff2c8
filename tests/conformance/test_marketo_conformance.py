"""The Marketo fake and connector against Adobe's Marketo REST API docs (no file in
../shared/specs: the contract is the docs cited on docs/destinations/marketo.md, and
``test_the_docs_page_states_each_limit_next_to_its_source`` fails when the page stops
saying a fact these tests rely on)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from conformance_support import Answer, assert_docs_state, batch, call, write

from undertow.destinations.base import BatchResult
from undertow.destinations.marketo import (
    ERRORS_DOC,
    LEADS_DOC,
    LISTS_DOC,
    MAX_CONCURRENT,
    MAX_LEADS,
    RATE,
    REST_DOC,
    MarketoDestination,
)
from undertow.testing.marketo import MarketoFake

pytestmark = pytest.mark.conformance

SECRET = "marketo-conformance-secret"


@pytest.fixture
def served() -> Iterator[tuple[MarketoFake, str, dict[str, str]]]:
    fake = MarketoFake(SECRET, rate=5, window_seconds=0.5)
    with fake.serve() as url:
        form = f"grant_type=client_credentials&client_id=demo-client&client_secret={SECRET}"
        token = call(url, "POST", "/identity/oauth/token", form=form.encode()).body
        yield fake, url, {"Authorization": f"Bearer {token['access_token']}"}


def test_the_docs_page_states_each_limit_next_to_its_source() -> None:
    assert_docs_state(
        "marketo.md",
        [("300 records", LEADS_DOC), ("100 calls per 20 seconds", REST_DOC),
         ("10 concurrent calls", REST_DOC), ("300 lead ids", LISTS_DOC),
         ("606", ERRORS_DOC), ("615", ERRORS_DOC), ("607", ERRORS_DOC)],
    )  # fmt: skip
    assert (MAX_LEADS, MAX_CONCURRENT, RATE.requests, RATE.per_seconds) == (300, 10, 100, 20.0)
    caps = MarketoDestination.capabilities
    assert caps.max_batch_size == 300 and caps.max_in_flight == 10
    assert caps.rate_limit is not None and caps.rate_limit.rate == 5.0


def test_the_identity_endpoint_gives_a_bearer_token_and_401s_bad_credentials(
    served: tuple[MarketoFake, str, dict[str, str]],
) -> None:
    _, url, _ = served
    query = "?grant_type=client_credentials&client_id=demo-client&client_secret=nope"
    bad = call(url, "GET", "/identity/oauth/token" + query)
    assert bad.status == 401
    good = call(url, "GET", query.replace("nope", SECRET).join(["/identity/oauth/token", ""]))
    assert good.status == 200 and good.body["token_type"] == "bearer"
    assert good.body["expires_in"] > 0


def test_errors_come_in_an_http_200_with_success_false_and_a_quoted_code(
    served: tuple[MarketoFake, str, dict[str, str]],
) -> None:
    _, url, auth = served
    body = {"action": "createOrUpdate", "lookupField": "email", "input": []}
    nobody = call(url, "POST", "/rest/v1/leads.json", body)
    assert nobody.status == 200 and nobody.body["success"] is False
    assert nobody.body["errors"][0]["code"] == "600"
    invalid = call(url, "POST", "/rest/v1/leads.json", body, headers={"Authorization": "Bearer x"})
    assert invalid.body["errors"][0]["code"] == "601" and "requestId" in invalid.body
    many = {**body, "input": [{"email": f"u{n}@x.com"} for n in range(301)]}
    over = call(url, "POST", "/rest/v1/leads.json", many, headers=auth)
    assert over.status == 200 and over.body["success"] is False


def test_results_come_one_per_record_in_order_with_reasons_when_skipped(
    served: tuple[MarketoFake, str, dict[str, str]],
) -> None:
    _, url, auth = served
    leads = [{"email": "a@x.com"}, {"email": "bad"}, {"email": "b@x.com"}]
    body = {"action": "createOrUpdate", "lookupField": "email", "input": leads}
    answer = call(url, "POST", "/rest/v1/leads.json", body, headers=auth)
    statuses = [r["status"] for r in answer.body["result"]]
    assert answer.body["success"] is True and statuses == ["created", "skipped", "created"]
    assert set(answer.body["result"][1]["reasons"][0]) == {"code", "message"}
    again = call(url, "POST", "/rest/v1/leads.json", {**body, "action": "createOnly"}, headers=auth)
    assert again.body["result"][0]["reasons"][0]["code"] == "1005"


def test_more_than_the_window_gets_606_and_the_eleventh_call_at_once_615(
    served: tuple[MarketoFake, str, dict[str, str]],
) -> None:
    _, url, auth = served
    path = "/rest/v1/leads.json?filterType=email&filterValues=a@x.com"
    codes = [call(url, "GET", path, headers=auth).body.get("errors", [{}])[0].get("code")
             for _ in range(6)]  # fmt: skip
    assert codes[:4] == [None] * 4 and "606" in codes[4:]
    busy = MarketoFake(SECRET, hold=0.5)
    answers: list[Answer] = []
    with busy.serve() as busy_url:
        form = f"grant_type=client_credentials&client_id=demo-client&client_secret={SECRET}"
        token = call(busy_url, "POST", "/identity/oauth/token", form=form.encode()).body
        headers = {"Authorization": f"Bearer {token['access_token']}"}

        def one() -> None:
            answers.append(call(busy_url, "GET", path, headers=headers))

        threads = [threading.Thread(target=one) for _ in range(MAX_CONCURRENT + 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    codes = sorted(str(a.body.get("errors", [{}])[0].get("code")) for a in answers)
    assert codes == ["615"] + ["None"] * MAX_CONCURRENT


def test_the_connector_reads_skipped_results_by_position(
    served: tuple[MarketoFake, str, dict[str, str]],
) -> None:
    fake, url, _ = served
    values = {"type": "marketo", "client_id": "demo-client", "client_secret": SECRET,
              "base_url": url}  # fmt: skip
    dest = MarketoDestination(MarketoDestination.Config.model_validate(values), name="mk")
    records = [{"email": "ok@x.com"}, {"email": "bad"}, {"email": "ok2@x.com"}]
    result = write(dest, batch(records, match="email", object="leads"))
    assert result.rejected.keys() == {1} and result.rejected[1].startswith("Marketo 1003:")
    assert fake.lead("email", "ok2@x.com") is not None
    assert result.failed == {} and result != BatchResult()
