"""The connector test template: a destination's test file declares its fake and a few facts,
and the shared suite runs (singer-sdk's habit). Needs pytest.

    from undertow.testing.template import DestinationTests

    class TestAcme(DestinationTests):
        destination = AcmeDestination
        fake = AcmeFake                      # called as fake(token, **fake_options)
        object = "contacts"
        match = "email"
        invalid = ({"email": "not-an-email"}, "is not a valid email")

        def record(self, n: int, version: int = 0) -> dict[str, Any]:
            return {"email": f"user{n}@example.com", "plan": f"plan-{version}"}

        def stored(self, fake: AcmeFake, record: dict[str, Any]) -> dict[str, Any] | None:
            return fake.contacts.by_email(record["email"])

What the suite proves, against the fake served on 127.0.0.1 and through the real deliver
stage (batching, pacing, retries):

* bad credentials give a clear error naming the destination, never showing the secret;
* upsert, then the same again, then a change: one record per row, holding the last values;
* a record the vendor refuses is rejected alone, with the vendor's message;
* the vendor's slow-down signal (``fake.throttle_next``) is honoured and nothing is lost;
* the batch size is never exceeded (``fake.largest_batch``, which the fake must record);
* deletes remove the record, and a delete of a record the vendor never had is accepted;
* the secret never appears in errors, log records or captured exchanges.

Override a ``test_*`` method to say why it does not apply (a test that cannot fail is
worse than none: say so in the docstring and assert what holds instead).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import capture
from undertow.destinations.base import Batch, BatchResult, Destination, Operation
from undertow.destinations.retry import RetryPolicy
from undertow.errors import UndertowError
from undertow.pipeline.deliver import DeliveryReport, Outcome, deliver
from undertow.testing.fakes import FakeAPI

FAST = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.1)
WRONG = "wrong-credential-7f3a9c/+=ZZ"


class DestinationTests:
    """The shared suite; subclass it as ``TestVendor`` and declare the facts below."""

    destination: ClassVar[type[Destination]]
    fake: ClassVar[Any]
    """The fake's class (or a factory), called as ``fake(token, **fake_options)``."""
    token: ClassVar[str] = "template-secret-0000-aaaa-bbbb"
    secret_field: ClassVar[str] = "token"
    """The config key that holds the credential."""
    object: ClassVar[str | None] = None
    match: ClassVar[str | None] = "email"
    config: ClassVar[dict[str, Any]] = {}
    """Further config keys (``base_url`` is the fake's address)."""
    fake_options: ClassVar[dict[str, Any]] = {}
    """Options that keep the fake's waits short (e.g. a 0.2 s rate window)."""
    invalid: ClassVar[tuple[dict[str, Any], str]]
    """A record the vendor refuses, and a fragment of the vendor's message for it."""
    max_wait: ClassVar[float] = 5.0
    """The longest wait the suite accepts from the fake's slow-down answers."""
    openapi: ClassVar[Path | None] = None
    """The vendor's OpenAPI file: every request and answer of the suite is validated against
    it (:class:`undertow.testing.conformance.Contract`), and a violation fails the test."""
    openapi_paths: ClassVar[tuple[str, ...]] = ()
    """Only these path prefixes are checked (the paths a trimmed spec describes)."""
    openapi_outside: ClassVar[dict[int, str]] = {}
    """Statuses the file leaves out and its notes state -> the schema of their body."""

    # -- facts a test file gives --------------------------------------------------------------

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        raise NotImplementedError("declare record(n, version): a valid record for row n")

    def stored(self, fake: Any, record: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError("declare stored(fake, record): what the fake holds for it")

    def count(self, fake: Any) -> int:
        """Records the fake holds for ``object`` (default: ``len(fake.store(object))``)."""
        raise NotImplementedError("declare count(fake): how many records the fake holds")

    def same(self, stored: dict[str, Any], record: dict[str, Any]) -> bool:
        """True when the stored record holds the record's values (default: every field as
        text, caseless)."""
        return all(
            str(stored.get(k, "")).casefold() == ("" if v is None else str(v)).casefold()
            for k, v in record.items()
            if not isinstance(v, dict | list)
        )

    # -- the machinery ------------------------------------------------------------------------

    @pytest.fixture
    def served(self) -> Iterator[FakeAPI]:
        fake = type(self).fake(self.token, **self.fake_options)
        contract = None
        if self.openapi is not None:
            from undertow.testing.conformance import Contract

            contract = Contract.load(
                self.openapi, only=self.openapi_paths, outside=self.openapi_outside
            )
            fake.app = contract.watch(fake.app)
        with fake.serve():
            yield fake
        if contract is not None and contract.checked:
            contract.assert_clean()

    def make(self, fake: FakeAPI, **extra: Any) -> Destination:
        values = {
            "type": self.destination.name,
            self.secret_field: self.token,
            "base_url": fake.url,
            **self.config,
            **extra,
        }
        config = self.destination.Config.model_validate(values)
        return self.destination(config, name="template_dest")

    def batch(self, records: list[dict[str, Any]], operation: Operation, number: int = 0) -> Batch:
        identifiers = {self.match: [r.get(self.match) for r in records]} if self.match else {}
        if operation is Operation.INSERT:
            identifiers = {}
        return Batch(
            sync="template_sync",
            operation=operation,
            number=number,
            idempotency_key=f"template-{number}",
            keys=[f"row-{n}" for n in range(len(records))],
            payloads=[orjson.dumps(r).decode() for r in records],
            identifiers=identifiers,
            object=self.object,
        )

    def upsert_operation(self, destination: Destination) -> Operation:
        """The write the suite uses: upsert, else add (a list or audience), else insert."""
        operations = destination.capabilities_for(self.object).operations
        for operation in (Operation.UPSERT, Operation.ADD):
            if operation in operations:
                return operation
        return Operation.INSERT

    def delete_operation(self, destination: Destination) -> Operation:
        """Delete, or remove from a list or audience."""
        operations = destination.capabilities_for(self.object).operations
        if Operation.DELETE not in operations and Operation.REMOVE in operations:
            return Operation.REMOVE
        return Operation.DELETE

    def run(
        self,
        destination: Destination,
        records: list[dict[str, Any]],
        operation: Operation | None = None,
    ) -> tuple[DeliveryReport, BatchResult]:
        """Deliver ``records`` through the deliver stage, in batches of the declared size."""
        operation = operation or self.upsert_operation(destination)
        caps = destination.capabilities_for(self.object)
        size = caps.max_batch_size
        merged = BatchResult()

        async def batches() -> AsyncIterator[Batch]:
            for number, start in enumerate(range(0, len(records), size)):
                yield self.batch(records[start : start + size], operation, number)

        def on_outcome(outcome: Outcome) -> None:
            offset = outcome.batch.number * size
            merged.merge(outcome.result, [offset + i for i in range(len(outcome.batch))])

        async def main() -> DeliveryReport:
            await destination.open()
            try:
                return await deliver(
                    destination,
                    batches(),
                    concurrency=caps.max_concurrency,
                    rate_limit=caps.rate_limit,
                    rate_limits=caps.rate_limits,
                    on_outcome=on_outcome,
                    stop=asyncio.Event(),
                    policy=FAST,
                    max_wait=self.max_wait,
                )
            finally:
                await destination.close()

        return asyncio.run(main()), merged

    def run_ok(
        self, fake: FakeAPI, records: list[dict[str, Any]], operation: Operation | None = None
    ) -> BatchResult:
        report, result = self.run(self.make(fake), records, operation)
        assert report.stopped is None, f"delivery stopped: {report.stopped}"
        return result

    # -- the suite ----------------------------------------------------------------------------

    def test_bad_credentials_give_a_clear_error_naming_the_destination(
        self, served: FakeAPI
    ) -> None:
        destination = self.make(served, **{self.secret_field: WRONG})

        async def check() -> None:
            await destination.open()
            try:
                await destination.check()
            finally:
                await destination.close()

        with pytest.raises(UndertowError) as caught:
            asyncio.run(check())
        message = str(caught.value)
        assert "template_dest" in message, message
        assert WRONG not in message and self.token not in message
        assert caught.value.hint, "say how to fix the credentials"

    def test_upsert_then_update_is_idempotent(self, served: FakeAPI) -> None:
        first = [self.record(n) for n in range(3)]
        assert self.run_ok(served, first) == BatchResult()
        assert self.run_ok(served, first) == BatchResult()
        changed = [self.record(n, version=1) for n in range(3)]
        assert self.run_ok(served, changed) == BatchResult()
        assert self.count(served) == 3
        for record in changed:
            stored = self.stored(served, record)
            assert stored is not None and self.same(stored, record), (stored, record)

    def test_a_record_the_vendor_refuses_is_rejected_alone_with_its_message(
        self, served: FakeAPI
    ) -> None:
        bad, fragment = self.invalid
        records = [self.record(0), bad, self.record(2)]
        result = self.run_ok(served, records)
        assert list(result.rejected) == [1], result
        assert fragment in result.rejected[1], result.rejected[1]
        assert result.failed == {}
        assert self.stored(served, records[0]) is not None
        assert self.stored(served, records[2]) is not None

    def test_slow_down_signals_are_honoured_with_nothing_lost(self, served: FakeAPI) -> None:
        served.throttle_next(2)
        records = [self.record(n) for n in range(5)]
        assert self.run_ok(served, records) == BatchResult()
        assert served.slow_downs == 2
        assert all(self.stored(served, r) is not None for r in records)

    def test_the_batch_size_is_never_exceeded(self, served: FakeAPI) -> None:
        destination = self.make(served)
        size = destination.capabilities_for(self.object).max_batch_size
        records = [self.record(n) for n in range(size * 2 + size // 2 + 1)]
        report, result = self.run(destination, records)
        assert report.stopped is None and result == BatchResult()
        assert 0 < served.largest_batch <= size, (served.largest_batch, size)
        assert self.count(served) == len(records)

    def test_deletes_remove_records_and_an_unknown_one_is_accepted(self, served: FakeAPI) -> None:
        # the object's operations (Intercom companies: upsert only; an audience: remove)
        delete = self.delete_operation(self.make(served))
        if delete not in self.make(served).capabilities_for(self.object).operations:
            with pytest.raises(UndertowError, match="cannot delete"):
                report, _ = self.run(self.make(served), [self.record(0)], Operation.DELETE)
                if report.stopped is not None:
                    raise report.stopped
            return
        records = [self.record(n) for n in range(3)]
        self.run_ok(served, records)
        gone = [records[1], self.record(99)]
        assert self.run_ok(served, gone, delete) == BatchResult()
        assert self.stored(served, records[1]) is None
        assert self.stored(served, records[0]) is not None
        assert self.count(served) == 2

    def test_the_secret_never_appears_in_errors_logs_or_captures(
        self, served: FakeAPI, caplog: pytest.LogCaptureFixture
    ) -> None:
        seen: list[capture.Exchange] = []
        caplog.set_level(logging.DEBUG)
        with capture.listening(seen.append):
            report, result = self.run(
                self.make(served, **{self.secret_field: WRONG}), [self.record(0)]
            )
            self.run_ok(served, [self.record(1)])
        assert report.stopped is not None
        texts = [str(report.stopped), *result.failed.values(), *result.rejected.values()]
        texts += [r.getMessage() for r in caplog.records]
        for exchange in seen:
            texts += [repr(exchange.request_headers), repr(exchange.response_headers)]
            texts += [exchange.request_body or "", exchange.response_body or "", exchange.url]
        assert seen, "no exchange reached the capture hook"
        for text in texts:
            assert WRONG not in text and self.token not in text, text
