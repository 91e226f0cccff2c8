"""Dagster helpers for Undertow (``pip install "undertow[dagster]"``)::

    from dagster import Definitions
    from undertow.integrations.dagster import UndertowResource, undertow_sync_asset

    crm = undertow_sync_asset("users_to_crm", deps=["active_users"])   # after the dbt asset
    defs = Definitions(
        assets=[crm],
        resources={"undertow": UndertowResource(project_dir="/opt/undertow/acme")},
    )

The resource runs syncs in-process (``project_dir``) or through ``undertow serve`` (``url``
and ``token``); a sync that does not succeed raises ``dagster.Failure`` with the run's error.
"""

from collections.abc import Sequence
from typing import Any

try:
    import dagster as dg
except ImportError as exc:  # pragma: no cover
    raise ImportError('the Dagster helpers need Dagster: pip install "undertow[dagster]"') from exc

from undertow.errors import UndertowError
from undertow.integrations.client import SyncFailed, UndertowClient, run_in_process


class UndertowResource(dg.ConfigurableResource):  # type: ignore[misc,type-arg]
    """Where the syncs run: ``project_dir`` (in-process) or ``url`` + ``token`` (HTTP)."""

    project_dir: str | None = None
    url: str | None = None
    token: str | None = None
    timeout: float = 3600.0
    poll_interval: float = 2.0

    def run(self, syncs: Sequence[str], *, full: bool = False) -> list[dict[str, Any]]:
        try:
            if self.project_dir is not None:
                return run_in_process(self.project_dir, list(syncs), full=full)
            if self.url is None or not self.token:
                raise UndertowError("UndertowResource needs project_dir, or url and token")
            client = UndertowClient(self.url, self.token)
            return [
                client.run_and_wait(s, full=full, timeout=self.timeout, poll=self.poll_interval)
                for s in syncs
            ]
        except SyncFailed as exc:
            raise dg.Failure(description=str(exc), metadata={"run": exc.run}) from exc
        except UndertowError as exc:
            raise dg.Failure(description=str(exc)) from exc


def undertow_sync_asset(
    sync: str,
    *,
    deps: Sequence[str] = (),
    resource_key: str = "undertow",
    group_name: str | None = None,
) -> dg.AssetsDefinition:
    """An asset that runs sync ``sync`` after ``deps`` (e.g. the dbt assets it reads)."""

    @dg.asset(  # type: ignore[untyped-decorator,unused-ignore]
        name=sync,
        deps=list(deps),
        required_resource_keys={resource_key},
        group_name=group_name,
        description=f"Undertow sync {sync}",
    )
    def _sync(context: dg.AssetExecutionContext) -> dg.MaterializeResult:  # type: ignore[type-arg]
        resource: UndertowResource = getattr(context.resources, resource_key)
        [run] = resource.run([sync])
        return dg.MaterializeResult(
            metadata={
                "run_id": run["run_id"],
                "sent": run["sent"],
                "succeeded": run["succeeded"],
                "rejected": run["rejected"],
            }
        )

    return _sync
