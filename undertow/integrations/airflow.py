"""An Airflow operator that runs Undertow syncs (``pip install "undertow[airflow]"``)::

    from undertow.integrations.airflow import UndertowSyncOperator

    sync_crm = UndertowSyncOperator(
        task_id="sync_crm",
        syncs=["users_to_crm"],
        project_dir="/opt/undertow/acme",        # in-process, or:
        # url="http://undertow:8765", token="{{ var.value.undertow_token }}",
    )
    dbt_run >> sync_crm

The task fails (``AirflowException``) when a sync does not succeed; it returns the runs
as dicts (pushed to XCom).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from airflow.exceptions import AirflowException
    from airflow.sdk import BaseOperator
except ImportError:  # pragma: no cover - Airflow 2
    try:
        from airflow.exceptions import AirflowException
        from airflow.models import BaseOperator
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            'the Airflow operator needs Airflow: pip install "undertow[airflow]"'
        ) from exc

from undertow.errors import UndertowError
from undertow.integrations.client import UndertowClient, run_in_process


class UndertowSyncOperator(BaseOperator):  # type: ignore[misc]
    """Run Undertow syncs in-process (``project_dir``) or through ``undertow serve`` (``url``)."""

    template_fields: Sequence[str] = ("syncs", "project_dir", "url", "token")

    def __init__(
        self,
        *,
        syncs: list[str] | str,
        project_dir: str | None = None,
        url: str | None = None,
        token: str | None = None,
        full: bool = False,
        timeout: float = 3600.0,
        poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (project_dir is None) == (url is None):
            raise ValueError("UndertowSyncOperator takes exactly one of project_dir= or url=")
        if url is not None and not token:
            raise ValueError("UndertowSyncOperator(url=...) needs token= (the API token)")
        self.syncs = [syncs] if isinstance(syncs, str) else list(syncs)
        self.project_dir = project_dir
        self.url = url
        self.token = token
        self.full = full
        self.timeout = timeout
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> list[dict[str, Any]]:
        try:
            if self.project_dir is not None:
                return run_in_process(self.project_dir, self.syncs, full=self.full)
            assert self.url is not None and self.token is not None
            client = UndertowClient(self.url, self.token)
            return [
                client.run_and_wait(
                    sync, full=self.full, timeout=self.timeout, poll=self.poll_interval
                )
                for sync in self.syncs
            ]
        except UndertowError as exc:
            raise AirflowException(str(exc)) from exc
