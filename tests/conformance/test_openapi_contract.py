"""The OpenAPI conformance machinery (undertow.testing.conformance) on a vendor file of
../shared/specs (Intercom 2.14 contacts): a kit connector's requests and its fake's answers
are validated as they happen, and a wrong one on either side is named."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.sdk import (
    Auth,
    Batch,
    BatchResult,
    BearerAuth,
    Capabilities,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Operation,
    single,
)
from undertow.testing.conformance import Contract
from undertow.testing.fakes import FakeAPI, RecordStore, bearer

pytestmark = pytest.mark.conformance

SPECS = Path(os.environ.get("UNDERTOW_SPECS", Path(__file__).resolve().parents[3] / "shared/specs"))
INTERCOM = SPECS / "intercom" / "intercom-2.14-contacts.openapi.yaml"
TOKEN = "intercom-secret-000"


class MiniIntercom(FakeAPI):
    """POST /contacts as Intercom documents it (enough to exercise the machinery)."""

    type = "mini-intercom"
    vendor = "Intercom"

    def __init__(self, token: str = TOKEN, *, wrong_answers: bool = False) -> None:
        super().__init__(auth=bearer(token))
        self.contacts = RecordStore()
        self.wrong_answers = wrong_answers

    def routes(self) -> list[BaseRoute]:
        return [Route("/contacts", self.create, methods=["POST"])]

    async def create(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        body = captured.body
        object_id = self.contacts.create(body)
        now = int(time.time())
        contact: dict[str, Any] = {
            "type": "contact",
            "id": object_id,
            "workspace_id": "ws1",
            "role": body.get("role", "user"),
            "email": body.get("email"),
            "created_at": now,
            "updated_at": now,
        }
        if self.wrong_answers:
            contact["id"] = int(object_id)  # Intercom ids are strings
        return self.respond(200, contact)


class MiniConfig(HttpConfig):
    token: SecretStr
    base_url: str = "https://api.intercom.io"


class MiniDestination(HttpDestination[MiniConfig]):
    name = "mini-intercom"
    vendor = "Intercom"
    capabilities = Capabilities(operations=frozenset({Operation.INSERT}), max_batch_size=10)
    endpoints: ClassVar[dict[Any, Endpoint]] = {
        Operation.INSERT: Endpoint("POST", "/contacts", body=single, per_record=True)
    }

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.token.get_secret_value())

    def default_headers(self) -> dict[str, str]:
        return {"Intercom-Version": "2.14"}


@pytest.fixture
def contract() -> Contract:
    if not INTERCOM.exists():
        pytest.fail(f"the Intercom OpenAPI file is missing: {INTERCOM} (set UNDERTOW_SPECS)")
    return Contract.load(INTERCOM)


def send(fake: MiniIntercom, records: list[dict[str, Any]]) -> BatchResult:
    async def go() -> BatchResult:
        dest = MiniDestination(
            MiniConfig(type="mini-intercom", token=SecretStr(TOKEN), base_url=fake.url), name="ic"
        )
        batch = Batch(
            "s",
            Operation.INSERT,
            0,
            "k",
            [str(i) for i in range(len(records))],
            [orjson.dumps(r).decode() for r in records],
        )
        try:
            return await dest.write_batch(batch)
        finally:
            await dest.close()

    return asyncio.run(go())


@pytest.fixture
def watched(contract: Contract) -> Iterator[MiniIntercom]:
    fake = MiniIntercom()
    fake.app = contract.watch(fake.app)  # type: ignore[assignment]
    with fake.serve():
        yield fake


def test_every_request_and_answer_is_checked_and_clean(
    watched: MiniIntercom, contract: Contract
) -> None:
    assert (
        send(watched, [{"email": f"u{i}@x.io", "name": f"U {i}"} for i in range(3)])
        == BatchResult()
    )
    contract.assert_clean()
    assert contract.checked == 3


def test_a_request_the_spec_refuses_is_named(watched: MiniIntercom, contract: Contract) -> None:
    send(watched, [{"email": 5}])  # an email that is not text (the fake echoes it back)
    violation = contract.violations[0]
    assert violation.side == "request" and violation.path == "/contacts"
    with pytest.raises(AssertionError, match="request POST /contacts"):
        contract.assert_clean()


def test_an_answer_the_spec_refuses_is_named(contract: Contract) -> None:
    fake = MiniIntercom(wrong_answers=True)
    fake.app = contract.watch(fake.app)  # type: ignore[assignment]
    with fake.serve():
        send(fake, [{"email": "a@x.io"}])
    [violation] = contract.violations
    assert violation.side == "response" and violation.status == 200
    assert "is not of type 'string'" in str(violation)


def test_nothing_checked_is_a_failure_not_a_pass(contract: Contract) -> None:
    with pytest.raises(AssertionError, match="no exchange was checked"):
        contract.assert_clean()
