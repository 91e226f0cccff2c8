"""UndertowSyncOperator on Airflow's real BaseOperator."""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestrators_support import need


def test_operator_runs_syncs_in_process_and_fails_the_task(project_dir: Path) -> None:
    need("airflow", "airflow")
    from airflow.exceptions import AirflowException

    from undertow.integrations.airflow import UndertowSyncOperator

    ok = UndertowSyncOperator(task_id="sync_good", syncs="good", project_dir=str(project_dir))
    [run] = ok.execute(context={})
    assert run["status"] == "succeeded" and run["succeeded"] == 5
    bad = UndertowSyncOperator(task_id="sync_bad", syncs=["bad"], project_dir=str(project_dir))
    with pytest.raises(AirflowException, match=r"sync .bad. run .* ended failed"):
        bad.execute(context={})
    with pytest.raises(ValueError, match="exactly one of project_dir= or url="):
        UndertowSyncOperator(task_id="x", syncs="good")
