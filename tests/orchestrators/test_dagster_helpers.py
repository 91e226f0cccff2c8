"""UndertowResource and undertow_sync_asset materialised by Dagster itself."""

from __future__ import annotations

from pathlib import Path

from orchestrators_support import need


def test_asset_materialises_and_a_failed_sync_fails_the_run(project_dir: Path) -> None:
    dg = need("dagster", "dagster")
    from undertow.integrations.dagster import UndertowResource, undertow_sync_asset

    resource = UndertowResource(project_dir=str(project_dir))
    good = undertow_sync_asset("good")
    result = dg.materialize([good], resources={"undertow": resource})
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["succeeded"].value == 5

    bad = undertow_sync_asset("bad")
    failed = dg.materialize([bad], resources={"undertow": resource}, raise_on_error=False)
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.is_step_failure]
    message = failure.event_specific_data.error.message
    assert "sync 'bad' run" in message and "ended failed" in message
