"""The issue-11 acceptance, shared by the email tools that take all three kinds of sync (Braze,
Klaviyo): a warehouse of customers and product views, a project per vendor with a profile
sync (``recently_viewed`` as a list of ``{sku, name, viewed_at}``), a list-membership sync in
``mirror`` mode and an events sync, and how to read each vendor's fake back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

CUSTOMERS = """
CREATE OR REPLACE TABLE customers AS
SELECT i AS customer_id,
       'c' || i || '@example.com' AS email,
       'Customer ' || i AS first_name,
       [{'sku': 'SKU-' || i, 'name': 'Shoe ' || i,
         'viewed_at': TIMESTAMPTZ '2026-03-01 10:00:00+00' + to_minutes(i)},
        {'sku': 'SKU-' || (i + 1), 'name': 'Jacket ' || i,
         'viewed_at': TIMESTAMPTZ '2026-03-02 08:30:00+00' + to_minutes(i)}] AS recently_viewed
FROM range(1, {n} + 1) t(i)
"""
VIEWS = """
CREATE OR REPLACE TABLE views AS
SELECT i AS view_id, 1 + i % 40 AS customer_id, 'c' || (1 + i % 40) || '@example.com' AS email,
       'SKU-' || (i % 97) AS sku, TIMESTAMPTZ '2026-03-01 00:00:00+00' + to_seconds(i) AS viewed_at
FROM range(1, {n} + 1) t(i)
"""


def build_warehouse(folder: Path, *, customers: int = 110, views: int = 400) -> Path:
    path = folder / "wh.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(CUSTOMERS.replace("{n}", str(customers)))
        con.execute(VIEWS.replace("{n}", str(views)))
    return path


def sql(folder: Path, statement: str) -> None:
    with duckdb.connect(str(folder / "wh.duckdb")) as con:
        con.execute(statement)


@dataclass
class Vendor:
    """One vendor's syncs and how to read its fake."""

    type: str
    token: str
    fake: Callable[[], Any]
    destination: str
    """The destination block's extra keys (YAML flow pairs, after type/url/credential)."""
    credential: str
    profiles: str
    members: str
    events: str
    stored_list: Callable[[Any, int], Any]
    """The stored ``recently_viewed`` of customer n."""
    member_count: Callable[[Any], int]
    event_ids: Callable[[Any], list[Any]]
    """One entry per event the fake holds (copies included): the view ids."""
    request_ids: Callable[[Any], list[Any]]
    """The view ids of the events in one request body."""
    expected_list: Callable[[int], Any]
    """How the vendor documents the list of customer n (what the fake must hold)."""
    dropped: Callable[[Any], int] | None = None
    """Repeats the fake dropped by event id (vendors that deduplicate)."""

    def _members(self) -> str:
        if not self.members:
            return ""
        return f"""  members:
    model: customers
    destination: out
    mode: mirror
    max_delete_ratio: 0.2
{self.members}
"""

    def project(self, folder: Path, url: str) -> None:
        (folder / "undertow.yml").write_text(
            f"""name: acceptance
sources:
  wh: {{type: duckdb, path: wh.duckdb}}
destinations:
  out: {{type: {self.type}, {self.credential}: "{self.token}", base_url: "{url}"{self.destination}}}
models:
  customers: {{source: wh, sql: select * from customers, primary_key: customer_id}}
  views: {{source: wh, sql: select * from views, primary_key: view_id}}
syncs:
  profiles:
    model: customers
    destination: out
{self.profiles}
{self._members()}  events:
    model: views
    destination: out
    mode: insert
    batch_size: 25
{self.events}
"""
        )


def viewed(n: int) -> list[dict[str, Any]]:
    """Customer n's list as the warehouse holds it (the map stage writes ISO 8601 text)."""
    first = datetime(2026, 3, 1, 10, tzinfo=UTC) + timedelta(minutes=n)
    second = datetime(2026, 3, 2, 8, 30, tzinfo=UTC) + timedelta(minutes=n)
    return [
        {"sku": f"SKU-{n}", "name": f"Shoe {n}", "viewed_at": first.isoformat()},
        {"sku": f"SKU-{n + 1}", "name": f"Jacket {n}", "viewed_at": second.isoformat()},
    ]


def _braze() -> Vendor:
    from undertow.testing.braze import BrazeFake

    token = "braze-acceptance-key-0000"

    def braze_list(n: int) -> Any:
        return [{**item, "viewed_at": {"$time": item["viewed_at"]}} for item in viewed(n)]

    return Vendor(
        type="braze",
        token=token,
        fake=lambda: BrazeFake(token, window_seconds=0.3),
        destination="",
        credential="api_key",
        profiles="""    object: users
    mode: upsert
    match: {external_id: customer_id}
    mappings: {email: email, first_name: first_name, recently_viewed: recently_viewed}""",
        members="""    object: subscription_groups
    match: {external_id: customer_id}
    mappings: {subscription_group_id: {const: newsletter-group}}""",
        events="""    object: events
    match: {external_id: customer_id}
    mappings: {name: {const: product_viewed}, time: viewed_at, sku: sku, view_id: view_id}""",
        stored_list=lambda fake, n: (fake.user("external_id", n) or {}).get("recently_viewed"),
        member_count=lambda fake: len(fake.members("newsletter-group")),
        event_ids=lambda fake: [e["properties"]["view_id"] for e in fake.events],
        request_ids=lambda body: [e["properties"]["view_id"] for e in body.get("events", [])],
        expected_list=braze_list,
    )


def _klaviyo() -> Vendor:
    from undertow.testing.klaviyo import KlaviyoFake

    token = "pk_acceptance_0000"

    def request_ids(body: Any) -> list[Any]:
        entries = body["data"]["attributes"].get("events-bulk-create", {}).get("data", [])
        return [
            event["attributes"]["properties"]["view_id"]
            for entry in entries
            for event in entry["attributes"]["events"]["data"]
        ]

    def stored(fake: Any, n: int) -> Any:
        profile = fake.profile(f"c{n}@example.com") or {}
        return (profile.get("properties") or {}).get("recently_viewed")

    return Vendor(
        type="klaviyo",
        token=token,
        fake=lambda: KlaviyoFake(token, window_seconds=0.05),
        destination=", poll_interval: 0.05",
        credential="api_key",
        profiles="""    object: profiles
    mode: upsert
    match: {email: email}
    mappings: {email: email, first_name: first_name, recently_viewed: recently_viewed}""",
        members="""    object: list_members
    match: {email: email}
    mappings: {list_id: {const: VIPS01}}""",
        events="""    object: events
    match: {email: email}
    mappings: {metric: {const: Viewed Product}, time: viewed_at, sku: sku, view_id: view_id}""",
        stored_list=stored,
        member_count=lambda fake: len(fake.members("VIPS01")),
        event_ids=lambda fake: [e["properties"]["view_id"] for e in fake.events],
        request_ids=request_ids,
        expected_list=viewed,  # Klaviyo keeps custom properties as the JSON sent
    )


def _mixpanel() -> Vendor:
    from undertow.testing.mixpanel import MixpanelFake

    token = "mp-acceptance-token-0000"
    return Vendor(
        type="mixpanel",
        token=token,
        fake=lambda: MixpanelFake(token),
        destination="",
        credential="project_token",
        profiles="""    object: users
    mode: upsert
    match: {distinct_id: customer_id}
    mappings: {$email: email, first_name: first_name, recently_viewed: recently_viewed}""",
        members="",
        events="""    object: events
    match: {distinct_id: customer_id}
    mappings: {event: {const: Viewed Product}, time: viewed_at, sku: sku, view_id: view_id}""",
        stored_list=lambda fake, n: (fake.profile(n) or {}).get("recently_viewed"),
        member_count=lambda fake: 0,
        event_ids=lambda fake: [e["properties"]["view_id"] for e in fake.events],
        request_ids=lambda body: [e["properties"]["view_id"] for e in body],
        expected_list=viewed,
        dropped=lambda fake: fake.dropped_events,
    )


def _amplitude() -> Vendor:
    from undertow.testing.amplitude import AmplitudeFake

    token = "amp-acceptance-key-0000"
    return Vendor(
        type="amplitude",
        token=token,
        fake=lambda: AmplitudeFake(token),
        destination="",
        credential="api_key",
        profiles="""    object: users
    mode: upsert
    match: {user_id: email}
    mappings: {first_name: first_name, recently_viewed: recently_viewed}""",
        members="",
        events="""    object: events
    match: {user_id: email}
    mappings: {event_type: {const: Viewed Product}, time: viewed_at, sku: sku, view_id: view_id}""",
        stored_list=lambda fake, n: (fake.user(f"c{n}@example.com") or {}).get("recently_viewed"),
        member_count=lambda fake: 0,
        event_ids=lambda fake: [e["event_properties"]["view_id"] for e in fake.events],
        request_ids=lambda body: [e["event_properties"]["view_id"] for e in body["events"]],
        expected_list=viewed,
        dropped=lambda fake: fake.dropped_events,
    )


def _segment() -> Vendor:
    from undertow.testing.segment import SegmentFake

    token = "seg-acceptance-key-0000"
    return Vendor(
        type="segment",
        token=token,
        fake=lambda: SegmentFake(token),
        destination="",
        credential="write_key",
        profiles="""    object: users
    mode: upsert
    match: {user_id: customer_id}
    mappings: {email: email, first_name: first_name, recently_viewed: recently_viewed}""",
        members="",
        events="""    object: events
    match: {user_id: customer_id}
    mappings: {event: {const: Product Viewed}, timestamp: viewed_at, sku: sku, view_id: view_id}""",
        stored_list=lambda fake, n: (fake.user(n) or {}).get("recently_viewed"),
        member_count=lambda fake: 0,
        event_ids=lambda fake: [e["properties"]["view_id"] for e in fake.events],
        request_ids=lambda body: [e["properties"]["view_id"] for e in body["batch"]],
        expected_list=viewed,
        dropped=lambda fake: fake.dropped_messages,
    )


def _posthog() -> Vendor:
    from undertow.testing.posthog import PostHogFake

    token = "phc_acceptance0000key"
    return Vendor(
        type="posthog",
        token=token,
        fake=lambda: PostHogFake(token),
        destination="",
        credential="api_key",
        profiles="""    object: users
    mode: upsert
    match: {distinct_id: customer_id}
    mappings: {email: email, first_name: first_name, recently_viewed: recently_viewed}""",
        members="",
        events="""    object: events
    match: {distinct_id: customer_id}
    mappings: {event: {const: Product Viewed}, timestamp: viewed_at, sku: sku, view_id: view_id}""",
        stored_list=lambda fake, n: (fake.person(n) or {}).get("recently_viewed"),
        member_count=lambda fake: 0,
        event_ids=lambda fake: [e["properties"]["view_id"] for e in fake.events],
        request_ids=lambda body: [e["properties"]["view_id"] for e in body["batch"]],
        expected_list=viewed,
        dropped=lambda fake: fake.dropped_events,
    )


VENDORS: dict[str, Callable[[], Vendor]] = {"braze": _braze, "klaviyo": _klaviyo}
"""The email tools that take all three kinds of sync (issue 11's acceptance)."""
ANALYTICS: dict[str, Callable[[], Vendor]] = {
    "mixpanel": _mixpanel,
    "amplitude": _amplitude,
    "segment": _segment,
    "posthog": _posthog,
}
"""Product analytics tools (issue 17): profiles and events, no lists."""
EVENT_VENDORS = {**VENDORS, **ANALYTICS}
