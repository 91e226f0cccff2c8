"""Google Sheets against its local fake (undertow/testing/google_sheets.py): service-account
OAuth with a real RS256 signature, a tab mirrored in key order through a whole project."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from project_support import run_one, users_project, warehouse

from undertow.destinations import capture
from undertow.destinations.base import Batch, BatchResult, Operation
from undertow.destinations.google_sheets import GoogleSheetsDestination, column_letters
from undertow.errors import UndertowError
from undertow.testing.google_sheets import GoogleSheetsFake, service_account

pytestmark = pytest.mark.connectors


@pytest.fixture
def sheets(tmp_path: Path) -> Iterator[tuple[GoogleSheetsFake, Path, dict[str, Any]]]:
    fake = GoogleSheetsFake(window_seconds=60.0, per_minute=600)
    with fake.serve() as url:
        info, public = service_account(f"{url}/token")
        fake.public_key = public
        key_file = tmp_path / "sa.json"
        key_file.write_bytes(orjson.dumps(info))
        yield fake, key_file, info


def destination(fake: GoogleSheetsFake, key_file: Path, **extra: Any) -> GoogleSheetsDestination:
    config = {
        "type": "google_sheets",
        "base_url": fake.url,
        "spreadsheet_id": fake.spreadsheet,
        "sheet": "Sheet1",
        "credentials_file": str(key_file),
        **extra,
    }
    return GoogleSheetsDestination(
        GoogleSheetsDestination.Config.model_validate(config), name="ops_sheet"
    )


def write(dest: GoogleSheetsDestination, batches: list[Batch]) -> list[BatchResult]:
    async def main() -> list[BatchResult]:
        await dest.open()
        try:
            return [await dest.write_batch(b) for b in batches]
        finally:
            await dest.close()

    return asyncio.run(main())


def batch(records: list[dict[str, Any]], op: Operation = Operation.UPSERT, n: int = 0) -> Batch:
    return Batch(
        sync="to_sheet",
        operation=op,
        number=n,
        idempotency_key=f"r-{n}",
        keys=[str(r["id"]) for r in records],
        payloads=[orjson.dumps(r).decode() for r in records],
        identifiers={"id": [r["id"] for r in records]},
    )


def test_mirror_2000_rows_then_100_changed_50_removed_50_added(
    sheets: tuple[GoogleSheetsFake, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The acceptance test: after the second run the tab equals the model, in key order."""
    fake, key_file, _ = sheets
    rng = random.Random(2000)
    ids = list(range(1, 4001, 2))  # 2,000 odd ids: added rows can land between them
    rows = [(i, f"user{i}", f"plan{i % 5}", i * 1.5) for i in ids]
    project = users_project(
        tmp_path / "p",
        rows,
        columns="id integer, name varchar, plan varchar, score double",
        destinations=f"""sheet: {{type: google_sheets, base_url: "{fake.url}", spreadsheet_id: {fake.spreadsheet}, sheet: Sheet1, credentials_file: "{key_file}"}}""",
        syncs="""  to_sheet:
    model: users
    destination: sheet
    mode: mirror
    match: {id: id}
    mappings: {id: id, name: name, plan: plan, score: score}
""",
    )
    first = run_one(project, "to_sheet")
    assert first.status == "succeeded", first.error
    assert fake.grid()[0] == ["id", "name", "plan", "score"]
    assert len(fake.grid()) == 2001

    changed = rng.sample(ids, 100)
    removed = rng.sample([i for i in ids if i not in changed], 50)
    added = rng.sample([i + 1 for i in ids], 50)  # even ids, all over the key range
    folder = tmp_path / "p"
    warehouse(
        folder,
        f"update users set plan = 'changed-' || id where id in ({','.join(map(str, changed))})",
    )
    warehouse(folder, f"delete from users where id in ({','.join(map(str, removed))})")
    values = ", ".join(f"({i}, 'new{i}', 'fresh', {i}.25)" for i in added)
    warehouse(folder, f"insert into users values {values}")
    second = run_one(project, "to_sheet")
    assert second.status == "succeeded", second.error
    assert second.counts["changed"] == 100 and second.counts["added"] == 50
    assert second.counts["removed"] == 50

    import duckdb

    with duckdb.connect(str(folder / "wh.duckdb")) as con:
        model = con.execute("select id, name, plan, score from users order by id").fetchall()
    expected = [["id", "name", "plan", "score"]] + [[a, b, c, d] for a, b, c, d in model]
    assert fake.grid() == expected
    # one values.batchUpdate per batch, no more
    assert fake.writes == first.total_batches + second.total_batches


def test_changed_rows_in_place_removed_rows_deleted_and_added_in_key_order(
    sheets: tuple[GoogleSheetsFake, Path, dict[str, Any]],
) -> None:
    fake, key_file, _ = sheets
    dest = destination(fake, key_file)
    write(dest, [batch([{"id": i, "name": f"n{i}"} for i in (10, 20, 30, 40)])])
    write(
        dest,
        [
            batch(
                [
                    {"id": 25, "name": "new"},
                    {"id": 20, "name": "changed"},
                    {"id": 5, "name": "first"},
                ]
            ),
            batch([{"id": 30}], Operation.DELETE, 1),
        ],
    )
    assert fake.grid() == [
        ["id", "name"],
        [5, "first"],
        [10, "n10"],
        [20, "changed"],
        [25, "new"],
        [40, "n40"],
    ]


def test_update_of_a_missing_row_is_rejected_and_a_new_field_adds_a_column(
    sheets: tuple[GoogleSheetsFake, Path, dict[str, Any]],
) -> None:
    fake, key_file, _ = sheets
    dest = destination(fake, key_file)
    write(dest, [batch([{"id": 1, "name": "a"}])])
    [result] = write(
        dest, [batch([{"id": 1, "plan": "pro"}, {"id": 9, "plan": "x"}], Operation.UPDATE)]
    )
    assert list(result.rejected) == [1] and "no row with id 9" in result.rejected[1]
    assert fake.grid() == [["id", "name", "plan"], [1, "a", "pro"]]


def test_values_go_raw_and_nested_values_as_json(
    sheets: tuple[GoogleSheetsFake, Path, dict[str, Any]],
) -> None:
    fake, key_file, _ = sheets
    write(
        destination(fake, key_file),
        [batch([{"id": 1, "f": "=IMPORTXML(1)", "tags": ["a"], "n": None}])],
    )
    update = [r for r in fake.requests if r.path.endswith("values:batchUpdate")][-1]
    assert update.body["valueInputOption"] == "RAW"
    assert fake.grid()[1] == [1, "=IMPORTXML(1)", '["a"]']


def test_quota_429_is_retried_and_nothing_is_lost(
    sheets: tuple[GoogleSheetsFake, Path, dict[str, Any]],
) -> None:
    from undertow.destinations import retry
    from undertow.destinations.retry import RetryPolicy

    fake, key_file, _ = sheets
    fake.throttle_next(2, path="values:batchUpdate")
    dest = destination(fake, key_file)

    async def main() -> BatchResult:
        await dest.open()
        try:
            with retry.delivery(
                policy=RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05),
                stop=asyncio.Event(),
                max_wait=5,
            ):
                return await dest.write_batch(batch([{"id": 1, "name": "a"}]))
        finally:
            await dest.close()

    assert asyncio.run(main()) == BatchResult()
    assert fake.slow_downs == 2 and fake.grid()[1] == [1, "a"]


def test_a_wrong_key_and_an_unshared_sheet_are_clear_and_hide_the_key(
    sheets: tuple[GoogleSheetsFake, Path, dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, key_file, info = sheets
    other, _ = service_account(info["token_uri"])  # a key Google does not know
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(orjson.dumps(other))
    caplog.set_level(logging.DEBUG)
    seen: list[capture.Exchange] = []

    async def check(dest: GoogleSheetsDestination) -> None:
        try:
            await dest.check()
        finally:
            await dest.close()

    with capture.listening(seen.append), pytest.raises(UndertowError) as caught:
        asyncio.run(check(destination(fake, wrong)))
    assert "ops_sheet" in str(caught.value) and "invalid_grant" in str(caught.value)
    assert caught.value.hint
    with pytest.raises(UndertowError, match="not found") as missing:
        asyncio.run(check(destination(fake, key_file, spreadsheet_id="nope")))
    assert info["client_email"] in (missing.value.hint or "")
    with pytest.raises(UndertowError, match="no tab 'Other'"):
        asyncio.run(check(destination(fake, key_file, sheet="Other")))
    secret_bits = [other["private_key"].splitlines()[1], *fake.tokens]
    texts = [str(caught.value), *(r.getMessage() for r in caplog.records)]
    texts += [e.request_body or "" for e in seen] + [repr(e.request_headers) for e in seen]
    for text in texts:
        for bit in secret_bits:
            assert bit not in text


def test_column_letters() -> None:
    assert [column_letters(n) for n in (1, 26, 27, 52, 703)] == ["A", "Z", "AA", "AZ", "AAA"]
