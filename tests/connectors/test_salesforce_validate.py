"""`undertow validate` on Salesforce syncs: the org's describe names what would fail at run time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from project_support import users_project

from undertow.project import Project
from undertow.testing.salesforce import DEMO_CLIENT_ID, SalesforceFake

pytestmark = pytest.mark.connectors

SECRET = "sf-validate-secret-0123456789"
ROWS = [(1, "ada@example.com", "Lovelace"), (2, "grace@example.com", "Hopper")]
COLUMNS = "id integer, email varchar, last_name varchar"


@pytest.fixture
def org() -> Iterator[SalesforceFake]:
    fake = SalesforceFake(SECRET)
    with fake.serve():
        yield fake


def project(
    folder: Path, org: SalesforceFake, sync: str, monkeypatch: pytest.MonkeyPatch
) -> Project:
    monkeypatch.setenv("SF_SECRET", SECRET)
    destination = (
        f"crm: {{type: salesforce, base_url: '{org.url}', client_id: {DEMO_CLIENT_ID}, "
        "client_secret: '${SF_SECRET}'}"
    )
    return users_project(
        folder,
        ROWS,
        columns=COLUMNS,
        destinations=destination,
        syncs="  to_sf:\n    model: users\n    destination: crm\n" + sync,
    )


def messages(p: Project) -> list[str]:
    try:
        return [str(problem) for problem in p.validate()]
    finally:
        p.close()


def test_a_sync_the_org_can_take_is_valid(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = """\
    object: Contact
    mode: upsert
    match: {Customer_Id__c: id}
    mappings: {Email: email, LastName: last_name}
"""
    assert messages(project(tmp_path, org, sync, monkeypatch)) == []
    assert any(r.path.endswith("/sobjects/Contact/describe") for r in org.requests)


def test_unknown_fields_get_a_did_you_mean_and_unmapped_required_fields_are_named(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = """\
    object: Contact
    mode: upsert
    match: {Customer_Id__c: id}
    mappings: {Emial: email}
"""
    found = messages(project(tmp_path, org, sync, monkeypatch))
    assert len(found) == 2, found
    assert "syncs.to_sf" in found[0]
    assert "Contact has no field 'Emial'; did you mean 'Email'?" in found[0]
    assert "required field(s) LastName not mapped" in found[1]
    assert "REQUIRED_FIELD_MISSING" in found[1]


def test_required_fields_do_not_matter_to_an_update(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = """\
    object: Contact
    mode: update
    match: {Customer_Id__c: id}
    mappings: {Email: email}
"""
    assert messages(project(tmp_path, org, sync, monkeypatch)) == []


def test_a_match_field_that_is_not_an_external_id_is_refused(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = """\
    object: Contact
    mode: upsert
    match: {Email: email}
    mappings: {LastName: last_name}
"""
    [problem] = messages(project(tmp_path, org, sync, monkeypatch))
    assert "the match field 'Email' is not marked as an External ID" in problem
    assert "tick External ID" in problem


def test_a_missing_match_field_gets_a_did_you_mean(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = """\
    object: Contact
    mode: upsert
    match: {Customer_Id: id}
    mappings: {LastName: last_name}
"""
    [problem] = messages(project(tmp_path, org, sync, monkeypatch))
    assert "the match field 'Customer_Id' is not a field of Contact" in problem
    assert "did you mean 'Customer_Id__c'?" in problem


def test_an_unknown_sobject_gets_the_closest_names(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = """\
    object: Subscription
    mode: upsert
    match: {Subscription_Key__c: id}
    mappings: {Name: last_name}
"""
    [problem] = messages(project(tmp_path, org, sync, monkeypatch))
    assert "the Salesforce org has no sObject 'Subscription'" in problem
    assert "did you mean 'Subscription__c'?" in problem


def test_a_custom_object_is_described_like_any_other(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = """\
    object: Subscription__c
    mode: upsert
    match: {Subscription_Key__c: id}
    mappings: {Name: last_name, Plan__c: email}
"""
    assert messages(project(tmp_path, org, sync, monkeypatch)) == []


def test_a_sync_without_object_is_told_to_name_one(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = """\
    mode: insert
    mappings: {LastName: last_name}
"""
    [problem] = messages(project(tmp_path, org, sync, monkeypatch))
    assert "needs `object:`" in problem and "object: Contact" in problem


def test_bad_credentials_are_one_problem_not_one_per_sync(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = """\
    object: Contact
    mode: upsert
    match: {Customer_Id__c: id}
    mappings: {LastName: last_name}
"""
    p = project(tmp_path, org, sync, monkeypatch)
    p.close()
    monkeypatch.setenv("SF_SECRET", "not-the-secret")
    found = messages(Project.load(str(tmp_path)))
    assert len(found) == 1, found
    assert "destinations.crm" in found[0] and "invalid client credentials" in found[0]
    assert "not-the-secret" not in found[0]
