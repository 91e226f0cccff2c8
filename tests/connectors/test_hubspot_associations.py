"""HubSpot associations: a deal to its company and contact, by their unique properties."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from undertow.destinations import retry
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.hubspot import HubSpotConfig, HubSpotDestination
from undertow.destinations.retry import RetryPolicy
from undertow.testing.hubspot import HubSpotFake
from undertow.testing.hubspot_schemas import PORTAL_ID
from undertow.testing.server import serve_in_thread

pytestmark = pytest.mark.connectors

TOKEN = "pat-na1-77777777-assoc-0000-000000000000"
CARS = f"p{PORTAL_ID}_cars"
RULES: dict[str, Any] = {
    "deals": [
        {"to": "companies", "field": "company_domain", "id_property": "domain"},
        {"to": "contacts", "field": "buyer_email", "id_property": "email", "type": 3},
    ],
    CARS: [
        {
            "to": "contacts",
            "field": "owner_id",
            "type": 101,
            "category": "USER_DEFINED",
        }
    ],
}


@pytest.fixture
def fake() -> Iterator[HubSpotFake]:
    hubspot = HubSpotFake(
        TOKEN,
        unique_properties={"deals": {"deal_key"}},
        custom_objects={"cars": {"properties": ["model"], "unique": ["vin"]}},
    )
    with serve_in_thread(hubspot.app) as server:
        hubspot.url = server.url  # type: ignore[attr-defined]
        yield hubspot


def destination(fake: HubSpotFake, rules: dict[str, Any] | None = None) -> HubSpotDestination:
    config = HubSpotConfig(
        type="hubspot",
        token=TOKEN,
        base_url=fake.url,  # type: ignore[attr-defined]
        associations=RULES if rules is None else rules,
    )
    return HubSpotDestination(config, name="crm")


def batch(
    records: list[dict[str, Any]], *, object: str = "deals", match: str = "deal_key"
) -> Batch:
    return Batch(
        sync="deals_to_crm",
        operation=Operation.UPSERT,
        number=1,
        idempotency_key="k1",
        keys=[str(n) for n in range(len(records))],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={match: [r.get(match) for r in records]},
        object=object,
    )


def run(fake: HubSpotFake, coro: Any) -> Any:
    async def go() -> Any:
        with retry.delivery(policy=RetryPolicy(max_attempts=2), stop=None, max_wait=60):
            return await coro

    return asyncio.run(go())


def write(fake: HubSpotFake, b: Batch, rules: dict[str, Any] | None = None) -> BatchResult:
    dest = destination(fake, rules)

    async def go() -> BatchResult:
        try:
            return await dest.write_batch(b)
        finally:
            await dest.close()

    return run(fake, go())  # type: ignore[no-any-return]


def seed(fake: HubSpotFake) -> tuple[str, str]:
    """A company and a contact the deals point at; their HubSpot ids."""
    write(
        fake,
        batch([{"domain": "acme.example", "name": "Acme"}], object="companies", match="domain"),
    )
    write(fake, batch([{"email": "ada@acme.example"}], object="contacts", match="email"))
    company = fake.objects["companies"].find("domain", "acme.example")
    contact = fake.objects["contacts"].find("email", "ada@acme.example")
    assert company is not None and contact is not None
    return company, contact


def deal(n: int, **extra: Any) -> dict[str, Any]:
    return {"deal_key": f"D-{n}", "dealname": f"Deal {n}", **extra}


def test_a_deal_is_associated_to_its_company_and_contact(fake: HubSpotFake) -> None:
    company, contact = seed(fake)
    records = [deal(1, company_domain="acme.example", buyer_email="ADA@acme.example"), deal(2)]
    assert write(fake, batch(records)) == BatchResult()
    deal_id = fake.objects["deals"].find("deal_key", "D-1")
    assert deal_id is not None
    assert fake.associations.of("deals", deal_id, "companies") == [company]
    assert fake.associations.of("deals", deal_id, "contacts") == [contact]
    upsert = next(r for r in fake.requests if r.path == "/crm/v3/objects/deals/batch/upsert")
    assert "company_domain" not in upsert.body["inputs"][0]["properties"]  # not a property
    posts = [r.path for r in fake.requests if "/crm/v4/" in r.path]
    assert posts == [
        "/crm/v4/associations/deals/companies/batch/associate/default",
        "/crm/v4/associations/deals/contacts/batch/create",
    ]
    labelled = next(r for r in fake.requests if r.path.endswith("contacts/batch/create"))
    assert labelled.body["inputs"][0]["types"] == [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 3}
    ]
    # the same again: one association per pair, no second record
    assert write(fake, batch(records)) == BatchResult()
    assert len(fake.objects["deals"]) == 2
    assert len(fake.associations.pairs) == 2


def test_an_association_to_a_missing_record_rejects_that_row_only(fake: HubSpotFake) -> None:
    company, _ = seed(fake)
    records = [deal(1, company_domain="acme.example"), deal(2, company_domain="gone.example")]
    result = write(fake, batch(records))
    assert list(result.rejected) == [1] and not result.failed
    assert "written, but not associated: HubSpot has no companies record" in result.rejected[1]
    assert "gone.example" not in result.rejected[1]  # the row's value is not quoted
    assert fake.objects["deals"].find("deal_key", "D-2") is not None  # the deal is written
    first = fake.objects["deals"].find("deal_key", "D-1")
    assert first is not None and fake.associations.of("deals", first) == [company]


def test_an_association_to_a_missing_record_id_is_hubspots_per_input_error(
    fake: HubSpotFake,
) -> None:
    _, contact = seed(fake)
    write(fake, batch([{"vin": "V1", "model": "T", "owner_id": contact}], object=CARS, match="vin"))
    car = fake.objects[CARS].find("vin", "V1")
    assert car is not None and fake.associations.of(CARS, car) == [contact]
    result = write(fake, batch([{"vin": "V2", "owner_id": "999999"}], object=CARS, match="vin"))
    assert list(result.rejected) == [0]
    assert "HubSpot OBJECT_NOT_FOUND: No contact with id 999999 exists" in result.rejected[0]


def test_a_custom_object_association_needs_a_type() -> None:
    with pytest.raises(ValidationError, match="needs `type:`"):
        HubSpotConfig(
            type="hubspot",
            token=TOKEN,
            associations={CARS: [{"to": "contacts", "field": "owner_id"}]},
        )
    with pytest.raises(ValidationError, match="not a HubSpot object"):
        HubSpotConfig(
            type="hubspot", token=TOKEN, associations={"deals": [{"to": "firms", "field": "x"}]}
        )


def test_validate_checks_the_association_rules(fake: HubSpotFake) -> None:
    rules = {
        "deals": [
            {"to": "companies", "field": "company_domain", "id_property": "name"},
            {"to": "contacts", "field": "buyer_email", "id_property": "email", "type": 9},
        ]
    }
    dest = destination(fake, rules)

    async def go() -> list[str]:
        try:
            return await dest.validate_sync(
                sync="deals_to_crm",
                object="deals",
                match={"deal_key": "id"},
                fields=["deal_key", "company_domain", "buyer_email", "compnay_domain"],
            )
        finally:
            await dest.close()

    problems = run(fake, go())
    assert len(problems) == 3, problems
    unknown, not_unique, no_type = problems
    assert "no property 'compnay_domain'; did you mean 'company_domain'?" in unknown
    assert "id_property 'name' does not have unique values" in not_unique
    assert "no association type HUBSPOT_DEFINED 9 from deals to contacts" in no_type
    assert "HUBSPOT_DEFINED 3" in no_type


def test_plan_preview_shows_the_associations_apart_from_the_properties(
    fake: HubSpotFake,
) -> None:
    (shaped,) = destination(fake).preview(batch([deal(1, company_domain="acme.example")]))
    assert "company_domain" not in shaped["properties"]
    assert shaped["associations"] == [{"to": "companies", "domain": "acme.example"}]


PROJECT = """
name: assoc
sources:
  warehouse: {{type: duckdb, path: warehouse.duckdb}}
destinations:
  crm:
    type: hubspot
    token: {token}
    base_url: "{url}"
    associations:
      deals:
        - {{to: companies, field: company_domain, id_property: domain}}
models:
  accounts: {{source: warehouse, sql: select * from accounts, primary_key: domain}}
  opportunities: {{source: warehouse, sql: select * from opportunities, primary_key: id}}
syncs:
  accounts_to_crm:
    model: accounts
    destination: crm
    object: companies
    match: {{domain: domain}}
    mappings: {{domain: domain, name: name}}
  deals_to_crm:
    model: opportunities
    destination: crm
    object: deals
    match: {{deal_key: id}}
    mappings: {{deal_key: id, dealname: title, amount: amount, company_domain: domain}}
    max_rejected_ratio: 1
"""


def test_a_project_syncs_deals_with_their_companies(fake: HubSpotFake, tmp_path: Any) -> None:
    import duckdb

    from undertow.project import Project

    db = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    db.execute("create table accounts as select 'acme.example' domain, 'Acme' name")
    db.execute(
        "create table opportunities as select * from (values "
        "('O1', 'Renewal', 100, 'acme.example'), ('O2', 'Upsell', 50, 'later.example')) "
        "t(id, title, amount, domain)"
    )
    db.close()
    (tmp_path / "undertow.yml").write_text(PROJECT.format(token=TOKEN, url=fake.url))  # type: ignore[attr-defined]
    project = Project.load(str(tmp_path))
    try:
        assert [str(p) for p in project.validate()] == []
        plan = project.plan("deals_to_crm").as_dict()
        assert plan["counts"]["to_send"] == 2
        project.run(["accounts_to_crm"])
        (first,) = project.run(["deals_to_crm"])
        assert (first.counts["succeeded"], first.counts["rejected"]) == (1, 1)
        o1 = fake.objects["deals"].find("deal_key", "O1")
        company = fake.objects["companies"].find("domain", "acme.example")
        assert o1 is not None and fake.associations.of("deals", o1) == [company]
        # the missing company arrives: the rejected deal is sent again and associated
        db = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
        db.execute("insert into accounts values ('later.example', 'Later')")
        db.close()
        project.run(["accounts_to_crm"])
        (second,) = project.run(["deals_to_crm"])
        assert (second.counts["sent"], second.counts["rejected"]) == (1, 0)
        o2 = fake.objects["deals"].find("deal_key", "O2")
        later = fake.objects["companies"].find("domain", "later.example")
        assert o2 is not None and fake.associations.of("deals", o2) == [later]
    finally:
        project.close()


def test_an_association_type_hubspot_refuses_rejects_the_rows_it_carried(
    fake: HubSpotFake,
) -> None:
    _, contact = seed(fake)
    rules = {"deals": [{"to": "contacts", "field": "buyer", "type": 9}]}
    result = write(fake, batch([deal(1, buyer=contact), deal(2)]), rules)
    assert list(result.rejected) == [0]
    assert (
        "written, but not associated: HubSpot VALIDATION_ERROR: Invalid association type"
        in (result.rejected[0])
    )


def test_an_association_to_an_object_type_hubspot_lacks_stops_the_run(fake: HubSpotFake) -> None:
    from undertow.errors import FatalDeliveryError

    rules = {"deals": [{"to": "p7878787_boats", "field": "boat", "id_property": "hull", "type": 1}]}
    with pytest.raises(FatalDeliveryError, match="HubSpot has no object type 'p7878787_boats'"):
        write(fake, batch([deal(1, boat="B1")]), rules)


class _NoTraceEcho(HubSpotFake):
    """A HubSpot whose results do not echo objectWriteTraceId (its reference says they do)."""

    def _respond(self, status: int, body: Any = None, **kw: Any) -> Any:
        for result in body.get("results", []) if isinstance(body, dict) else []:
            if isinstance(result, dict):
                result.pop("objectWriteTraceId", None)
        return super()._respond(status, body, **kw)


def test_records_are_found_by_their_id_property_when_no_trace_id_comes_back() -> None:
    hubspot = _NoTraceEcho(TOKEN, unique_properties={"deals": {"deal_key"}})
    with serve_in_thread(hubspot.app) as server:
        hubspot.url = server.url  # type: ignore[attr-defined]
        company, _ = seed(hubspot)
        assert write(hubspot, batch([deal(1, company_domain="acme.example")])) == BatchResult()
        deal_id = hubspot.objects["deals"].find("deal_key", "D-1")
        assert deal_id is not None and hubspot.associations.of("deals", deal_id) == [company]


def test_replace_moves_a_deal_to_its_new_company(fake: HubSpotFake) -> None:
    company, _ = seed(fake)
    write(fake, batch([{"domain": "new.example"}], object="companies", match="domain"))
    new = fake.objects["companies"].find("domain", "new.example")
    keep = {"deals": [{"to": "companies", "field": "firm", "id_property": "domain"}]}
    move = {"deals": [{**keep["deals"][0], "replace": True}]}
    write(fake, batch([deal(1, firm="acme.example")]), keep)
    deal_id = fake.objects["deals"].find("deal_key", "D-1")
    assert deal_id is not None
    write(fake, batch([deal(1, firm="new.example")]), keep)  # added, the old one kept
    assert fake.associations.of("deals", deal_id, "companies") == sorted([company, str(new)])
    assert write(fake, batch([deal(1, firm="new.example")]), move) == BatchResult()
    assert fake.associations.of("deals", deal_id, "companies") == [new]
    archive = [r for r in fake.requests if r.path.endswith("/batch/archive")]
    assert [r.body for r in archive] == [
        {"inputs": [{"from": {"id": deal_id}, "to": [{"id": company}]}]}
    ]
    # nothing stale left: a read, no archive
    assert write(fake, batch([deal(1, firm="new.example")]), move) == BatchResult()
    assert len([r for r in fake.requests if r.path.endswith("/batch/archive")]) == 1


def test_a_refused_removal_leaves_the_row_undelivered(fake: HubSpotFake) -> None:
    seed(fake)
    write(fake, batch([{"domain": "new.example"}], object="companies", match="domain"))
    rule = {"to": "companies", "field": "firm", "id_property": "domain"}
    write(fake, batch([deal(1, firm="acme.example")]), {"deals": [rule]})
    fake.fail_next(status=400, path="/crm/v4/associations/deals/companies/batch/archive")
    result = write(
        fake, batch([deal(1, firm="new.example")]), {"deals": [{**rule, "replace": True}]}
    )
    assert list(result.failed) == [0] and not result.rejected
    assert "its other associations to companies were not removed" in result.failed[0]
