"""HubSpot deals and custom objects, and validate against HubSpot's properties API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.hubspot import HubSpotConfig, HubSpotDestination
from undertow.destinations.retry import RetryPolicy
from undertow.errors import FatalDeliveryError
from undertow.testing.hubspot import HubSpotFake
from undertow.testing.hubspot_schemas import PORTAL_ID
from undertow.testing.server import serve_in_thread
from undertow.testing.template import DestinationTests

pytestmark = pytest.mark.connectors

TOKEN = "pat-na1-99999999-objects-0000-000000000000"
CARS = f"p{PORTAL_ID}_cars"
CAR_OPTIONS: dict[str, Any] = {
    "cars": {"properties": ["model", "year"], "unique": ["vin"], "required": ["vin"]}
}


class TestHubSpotDeals(DestinationTests):
    """The shared suite on deals, matched by a custom unique-value property."""

    destination = HubSpotDestination
    fake = HubSpotFake
    token = TOKEN
    object = "deals"
    match = "deal_key"
    fake_options: ClassVar[dict[str, Any]] = {
        "window_seconds": 0.3,
        "unique_properties": {"deals": {"deal_key"}},
    }
    invalid = ({"deal_key": "bad", "amount": {"nested": 1}}, "is a nested object")

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"deal_key": f"D-{n}", "dealname": f"Deal {n}", "amount": 100 + version}

    def stored(self, fake: HubSpotFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.objects["deals"].by("deal_key", record["deal_key"])

    def count(self, fake: HubSpotFake) -> int:
        return len(fake.objects["deals"])


class TestHubSpotCustomObject(DestinationTests):
    """The shared suite on a custom object named by its fully qualified name."""

    destination = HubSpotDestination
    fake = HubSpotFake
    token = TOKEN
    object = CARS
    match = "vin"
    fake_options: ClassVar[dict[str, Any]] = {
        "window_seconds": 0.3,
        "custom_objects": CAR_OPTIONS,
        "strict_properties": True,
    }
    invalid = ({"vin": "V-bad", "colour": "red"}, 'Property "colour" does not exist')

    def record(self, n: int, version: int = 0) -> dict[str, Any]:
        return {"vin": f"V-{n}", "model": f"Model {n}", "year": 2000 + version}

    def stored(self, fake: HubSpotFake, record: dict[str, Any]) -> dict[str, Any] | None:
        return fake.objects[CARS].by("vin", record["vin"])

    def count(self, fake: HubSpotFake) -> int:
        return len(fake.objects[CARS])


class TestHubSpotCustomObjectById(TestHubSpotCustomObject):
    """The same suite with the custom object named by its objectTypeId (``2-101``)."""

    object = "2-101"


@pytest.fixture
def fake() -> Iterator[HubSpotFake]:
    hubspot = HubSpotFake(
        TOKEN,
        custom_objects=CAR_OPTIONS,
        unique_properties={"deals": {"deal_key"}},
        properties={"contacts": ["plan"]},
    )
    with serve_in_thread(hubspot.app) as server:
        hubspot.url = server.url  # type: ignore[attr-defined]
        yield hubspot


def destination(fake: HubSpotFake) -> HubSpotDestination:
    config = HubSpotConfig(type="hubspot", token=TOKEN, base_url=fake.url)  # type: ignore[attr-defined]
    return HubSpotDestination(config, name="crm")


def batch(
    records: list[dict[str, Any]], *, object: str, match: str, op: Operation = Operation.UPSERT
) -> Batch:
    return Batch(
        sync="deals_to_crm",
        operation=op,
        number=1,
        idempotency_key="k1",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={match: [r.get(match) for r in records]},
        object=object,
    )


def write(fake: HubSpotFake, b: Batch) -> BatchResult:
    async def go() -> BatchResult:
        dest = destination(fake)
        policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
        try:
            with retry.delivery(policy=policy, stop=None, max_wait=60):
                return await dest.write_batch(b)
        finally:
            await dest.close()

    return asyncio.run(go())


def validate(fake: HubSpotFake, dest: HubSpotDestination | None = None, **sync: Any) -> list[str]:
    async def go(d: HubSpotDestination) -> list[str]:
        try:
            with retry.delivery(policy=RetryPolicy(max_attempts=2), stop=None, max_wait=60):
                return await d.validate_sync(
                    sync="s",
                    object=sync.get("object", "contacts"),
                    match=sync.get("match", {"email": "email"}),
                    fields=sync.get("fields", ["email"]),
                    operations=sync.get("operations", frozenset({Operation.UPSERT})),
                )
        finally:
            await d.close()

    return asyncio.run(go(dest or destination(fake)))


# -- deals and custom objects -----------------------------------------------------------------


def test_deal_upsert_goes_to_the_deals_batch_endpoint_by_its_unique_property(
    fake: HubSpotFake,
) -> None:
    result = write(
        fake, batch([{"deal_key": "D-1", "amount": 5}], object="deals", match="deal_key")
    )
    assert result == BatchResult()
    (request,) = [r for r in fake.requests if r.method == "POST"]
    assert request.path == "/crm/v3/objects/deals/batch/upsert"
    assert request.body["inputs"][0]["idProperty"] == "deal_key"
    assert fake.objects["deals"].by("deal_key", "D-1")["amount"] == "5"  # type: ignore[index]


def test_a_custom_object_is_written_under_its_fully_qualified_name(fake: HubSpotFake) -> None:
    records = [{"vin": f"V{n}", "model": "T"} for n in range(3)]
    assert write(fake, batch(records, object="2-101", match="vin")) == BatchResult()
    assert len(fake.objects[CARS]) == 3
    paths = {r.path for r in fake.requests}
    assert paths == {"/crm/v3/objects/2-101/batch/upsert"}


def test_a_custom_objects_required_property_missing_rejects_that_record(
    fake: HubSpotFake,
) -> None:
    records = [{"model": "T"}, {"model": "S"}]
    b = batch(records, object=CARS, match="vin", op=Operation.INSERT)
    b.identifiers = {}
    result = write(fake, b)
    assert set(result.rejected) == {0, 1}
    assert "Required properties are missing: ['vin']" in result.rejected[0]


def test_an_object_type_hubspot_does_not_have_stops_the_run_with_hubspots_answer(
    fake: HubSpotFake,
) -> None:
    with pytest.raises(
        FatalDeliveryError, match="HubSpot has no object type 'p7878787_boats'"
    ) as e:
        write(fake, batch([{"vin": "V1"}], object="p7878787_boats", match="vin"))
    assert "Unable to infer object type from: p7878787_boats" in str(e.value)
    assert len(fake.requests) == 1  # no bisecting of a batch no object type can take


def test_a_delete_of_an_unknown_object_type_stops_the_run(fake: HubSpotFake) -> None:
    with pytest.raises(FatalDeliveryError, match="no object type '2-999'"):
        write(fake, batch([{"vin": "V1"}], object="2-999", match="vin", op=Operation.DELETE))


def test_the_fake_answers_an_unknown_object_type_in_hubspots_shape(fake: HubSpotFake) -> None:
    async def go() -> Any:
        dest = destination(fake)
        try:
            with retry.delivery(policy=RetryPolicy(max_attempts=1), stop=None, max_wait=5):
                return await dest.send("GET", "/crm/v3/properties/tickets", expect=frozenset())
        finally:
            await dest.close()

    response = asyncio.run(go())
    body = response.json()
    assert response.status == 400
    assert body["status"] == "error" and body["correlationId"]
    assert body["message"] == "Unable to infer object type from: tickets"


# -- validate: HubSpot's properties ----------------------------------------------------------


def test_validate_names_an_unknown_property_with_the_closest(fake: HubSpotFake) -> None:
    problems = validate(fake, fields=["email", "firstnme", "plan"])
    (problem,) = problems
    assert "HubSpot contacts have no property 'firstnme'; did you mean 'firstname'?" in problem
    assert "every row would be rejected" in problem


def test_validate_reads_each_objects_properties_once(fake: HubSpotFake) -> None:
    dest = destination(fake)

    async def twice() -> None:
        try:
            with retry.delivery(policy=RetryPolicy(max_attempts=2), stop=None, max_wait=60):
                for fields in (["email"], ["email", "plan"]):
                    await dest.validate_sync(
                        sync="s", object="contacts", match={"email": "e"}, fields=fields
                    )
        finally:
            await dest.close()

    asyncio.run(twice())
    reads = [r.path for r in fake.requests if r.path.startswith("/crm/v3/properties")]
    assert reads == ["/crm/v3/properties/contacts"]


def test_validate_refuses_a_match_property_without_unique_values(fake: HubSpotFake) -> None:
    (problem,) = validate(fake, object="deals", match={"dealname": "n"}, fields=["dealname"])
    assert "'dealname' does not have unique values" in problem
    assert validate(fake, object="deals", match={"deal_key": "k"}, fields=["dealname"]) == []


def test_validate_refuses_a_read_only_property(fake: HubSpotFake) -> None:
    (problem,) = validate(fake, fields=["email", "createdate"])
    assert "'createdate' is read-only" in problem


def test_validate_names_an_unknown_object_with_the_custom_objects(fake: HubSpotFake) -> None:
    (problem,) = validate(fake, object="cars", match={"vin": "v"}, fields=["vin"])
    assert f"HubSpot has no object type 'cars'; did you mean '{CARS}'?" in problem
    assert "2-101" in problem
    (problem,) = validate(fake, object="p7878787_carz", match={"vin": "v"}, fields=["vin"])
    assert f"did you mean '{CARS}'?" in problem


def test_validate_checks_a_custom_objects_properties(fake: HubSpotFake) -> None:
    assert validate(fake, object=CARS, match={"vin": "v"}, fields=["vin", "model"]) == []
    (problem,) = validate(fake, object="2-101", match={"vin": "v"}, fields=["vin", "modle"])
    assert "no property 'modle'; did you mean 'model'?" in problem


def test_deletes_only_need_the_match_property(fake: HubSpotFake) -> None:
    ops = frozenset({Operation.DELETE})
    assert validate(fake, fields=["nope"], operations=ops) == []


def test_object_names_are_judged_by_their_shape_before_any_request(fake: HubSpotFake) -> None:
    dest = destination(fake)
    assert (
        dest.object_name_problem("contcts") == "has no object 'contcts'; did you mean 'contacts'?"
    )
    for name in ("deals", CARS, "p_cars", "2-101", "0-5"):
        assert dest.object_name_problem(name) is None, name
    assert dest.object_name_problem("deals/batch/archive") is not None
    with pytest.raises(FatalDeliveryError, match=r"unknown object 'cars/\.\./contacts'"):
        write(fake, batch([{"vin": "V1"}], object="cars/../contacts", match="vin"))
    assert fake.requests == []


PLAN_PROJECT = """
name: plan
sources:
  warehouse: {{type: duckdb, path: warehouse.duckdb}}
destinations:
  crm: {{type: hubspot, token: {token}, base_url: "{url}"}}
models:
  users: {{source: warehouse, sql: select * from users, primary_key: id}}
syncs:
  users_to_crm:
    model: users
    destination: crm
    object: contacts
    match: {{email: email}}
    mappings: {{email: email, firstnme: name}}
"""


def test_plan_counts_rows_with_an_unknown_property_as_rejected(
    fake: HubSpotFake, tmp_path: Any
) -> None:
    import duckdb

    from undertow.project import Project

    db = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    db.execute(
        "create table users as select range id, 'u' || range || '@x.io' email, 'U' name "
        "from range(3)"
    )
    db.close()
    url = fake.url  # type: ignore[attr-defined]
    (tmp_path / "undertow.yml").write_text(PLAN_PROJECT.format(token=TOKEN, url=url))
    project = Project.load(str(tmp_path))
    try:
        plan = project.plan("users_to_crm").as_dict()
        assert (plan["counts"]["rejected"], plan["counts"]["to_send"]) == (3, 0), plan["counts"]
        reason = plan["rejected"][0]["reason"]
        assert "no property 'firstnme'; did you mean 'firstname'?" in reason
        reads = [r.path for r in fake.requests]
        assert reads == ["/crm/v3/properties/contacts"]  # one read, no row sent
    finally:
        project.close()
    # HubSpot unreachable: the plan still comes, with a warning, counting the rows as to send
    (tmp_path / "undertow.yml").write_text(
        PLAN_PROJECT.format(token=TOKEN, url="http://127.0.0.1:9")
    )
    project = Project.load(str(tmp_path))
    try:
        plan = project.plan("users_to_crm").as_dict()
        assert plan["counts"]["to_send"] == 3
        assert any("could not read the destination's metadata" in w for w in plan["warnings"])
    finally:
        project.close()
