"""Issue 11's acceptance for the email tools that take all three kinds of sync, through whole
projects against each vendor's fake: a profile sync's ``recently_viewed`` list of objects
arrives as the vendor documents a list of objects; a membership sync in ``mirror`` mode adds
100 members, then removes the 10 whose rows left the model; an events sync sends each new
row once (the crash half of it is tests/chaos/test_kill_events.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engagement_support import VENDORS, Vendor, build_warehouse, sql

from undertow.project import Project
from undertow.state.store import RunStatus

pytestmark = pytest.mark.connectors


@pytest.fixture(params=sorted(VENDORS))
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Vendor, Any, Project]]:
    vendor = VENDORS[request.param]()
    fake = vendor.fake()
    build_warehouse(tmp_path, customers=110)
    with fake.serve() as url:
        vendor.project(tmp_path, url)
        project = Project.load(str(tmp_path))
        try:
            yield vendor, fake, project
        finally:
            project.close()


def ok(project: Project, sync: str) -> dict[str, int]:
    [record] = project.run([sync])
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert record.counts["rejected"] == 0, record.counts
    return record.counts


def test_a_list_of_objects_arrives_as_the_vendor_documents_it(
    setup: tuple[Vendor, Any, Project],
) -> None:
    vendor, fake, project = setup
    assert ok(project, "profiles")["sent"] == 110
    for n in (1, 7, 42):
        assert vendor.stored_list(fake, n) == vendor.expected_list(n)


def test_membership_mirror_adds_100_then_removes_the_10_that_leave(
    setup: tuple[Vendor, Any, Project], tmp_path: Path
) -> None:
    vendor, fake, project = setup
    sql(tmp_path, "delete from customers where customer_id > 100")
    assert ok(project, "members")["sent"] == 100
    assert vendor.member_count(fake) == 100
    sql(tmp_path, "delete from customers where customer_id > 90")
    preview = project.plan("members").as_dict()
    assert (preview["kind"], preview["counts"]["removed"], preview["counts"]["to_send"]) == (
        "membership",
        10,
        10,
    )
    counts = ok(project, "members")
    assert (counts["removed"], counts["sent"]) == (10, 10)
    assert vendor.member_count(fake) == 90


def test_an_events_sync_sends_each_new_row_once(
    setup: tuple[Vendor, Any, Project], tmp_path: Path
) -> None:
    vendor, fake, project = setup
    assert ok(project, "events")["sent"] == 400
    sql(tmp_path, "update views set sku = 'changed' where view_id <= 50")
    sql(tmp_path, "insert into views values (401, 1, 'c1@example.com', 'SKU-1', now())")
    preview = project.plan("events").as_dict()
    assert (preview["kind"], preview["counts"]["changed"], preview["counts"]["to_send"]) == (
        "events",
        50,
        1,
    )
    assert ok(project, "events")["sent"] == 1
    assert ok(project, "events")["sent"] == 0
    assert Counter(vendor.event_ids(fake)) == {i: 1 for i in range(1, 402)}
