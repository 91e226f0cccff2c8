"""The validating half of the :class:`~undertow.project.Project` facade: ``undertow validate``.

Every problem of a project at once, each with its file, line and key where the config has
them: a connector whose ``${VAR}`` is not set is one problem (first, and not again for each
model or sync using it); with ``connect``, every source and destination is checked, then
each model described on its source and each sync's mapping compiled against its columns
and checked by its destination (e.g. Salesforce's describe). :class:`Project` inherits
:class:`Validation`, so callers still use one facade object.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from undertow.destinations.base import Operation
from undertow.errors import ConfigError, SourceError, UndertowError, did_you_mean
from undertow.pipeline.context import SyncContext, compile_for
from undertow.results import ProblemDocument

if TYPE_CHECKING:
    from undertow.config.loader import LoadedProject
    from undertow.config.models import ProjectConfig
    from undertow.destinations.base import Destination
    from undertow.sources.base import Source

__all__ = ["Problem", "Validation"]


@dataclass
class Problem:
    """One thing wrong with a project, as ``validate`` reports it."""

    message: str
    file: str | None = None
    line: int | None = None
    key: str | None = None

    def as_dict(self) -> ProblemDocument:
        return ProblemDocument(file=self.file, line=self.line, key=self.key, message=self.message)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else (self.file or "")
        key = f" {self.key}" if self.key else ""
        return f"{where}{key}: {self.message}" if (where or key) else self.message


class Validation:
    """Mixed into :class:`~undertow.project.Project` (which provides the attributes below)."""

    if TYPE_CHECKING:
        loaded: LoadedProject
        config: ProjectConfig

        def source(self, name: str) -> Source: ...

        def destination(self, name: str) -> Destination: ...

        def context(self, name: str) -> SyncContext: ...

    def validate(self, *, connect: bool = True) -> list[Problem]:
        """Compile every model and mapping; with ``connect``, check every connection too."""
        # a connector whose ${VAR} is not set: one problem, first, and not again for each
        # model or sync using it (the checks that need the connector wait for the secret)
        deferred = list(self.loaded.deferred.values())
        problems = [Problem(e.detail, e.file, e.line, e.key) for e in deferred]

        def add(exc: UndertowError, *path: str) -> None:
            if any(exc is d for d in deferred):
                return
            where = self.loaded.where(*path) if path else None
            file, line = where or (None, None)
            key = ".".join(path) if path else None
            message = str(exc)
            if isinstance(exc, ConfigError) and exc.file:
                file, line, key, message = exc.file, exc.line, exc.key or key, exc.detail
            problems.append(Problem(message=message, file=file, line=line, key=key))

        broken: set[str] = set()
        """Destinations whose check failed: their syncs are not checked against them."""
        if connect:
            for name in self.loaded.sources:
                try:
                    src = self.source(name)
                    try:
                        src.check()
                        from undertow.checks import source_access  # sqlglot: validate only

                        for missing in source_access(self.loaded, name, src):
                            grants = " ".join(missing.grants)
                            hint = f"run: {grants}" if grants else None
                            add(SourceError(missing.message, hint=hint), "sources", name)
                    finally:
                        src.close()
                except UndertowError as exc:
                    add(exc, "sources", name)
            for name in self.loaded.destinations:
                try:
                    asyncio.run(self._check_destination(name))
                except UndertowError as exc:
                    broken.add(name)
                    add(exc, "destinations", name)
        from undertow.dbt.check import offline_schema, stale_models

        for mname, why, folder in stale_models(self.loaded):
            hint = f"run `dbt parse` (or dbt run) in {folder}"
            add(ConfigError(f"the dbt manifest is stale: {why}", hint=hint), "models", mname, "dbt")
        dbt_columns = (
            {} if connect else {m: offline_schema(self.loaded, m) for m in self.config.models}
        )
        for mname, model in self.config.models.items():
            if dbt_columns.get(mname) is not None:
                continue  # offline: the columns dbt's artifacts list stand for the warehouse's
            try:
                src = self.source(model.source)
                try:
                    src.describe(self.loaded.model_sql[mname], model=mname)
                finally:
                    src.close()
            except UndertowError as exc:
                add(exc, "models", mname)
        for sname in self.config.syncs:
            try:
                ctx = self.context(sname)
                try:
                    plan = ctx.plan(full=False)
                    ctx.batch_size()
                    if self._uses_object(ctx):
                        self._check_object(ctx)
                    mapping, _ = compile_for(ctx, dbt_columns.get(ctx.model_name))
                    ops = frozenset(plan.ops.values())
                    if connect and ctx.sync.destination not in broken:
                        for text in asyncio.run(self._validate_sync(ctx, mapping.fields, ops)):
                            add(ConfigError(text), "syncs", sname)
                finally:
                    ctx.source.close()
            except UndertowError as exc:
                add(exc, "syncs", sname)
        from undertow.state.files import unwritable

        for error in unwritable(self.loaded.state_dir, self.loaded.state_url):
            add(error, "state_dir")
        return problems

    @staticmethod
    def _uses_object(ctx: SyncContext) -> bool:
        dest = ctx.destination
        return ctx.sync.object is not None or dest.objects is not None or dest.any_object

    async def _validate_sync(
        self, ctx: SyncContext, fields: list[str], operations: frozenset[Operation]
    ) -> list[str]:
        """The destination's own metadata checks of one sync (e.g. Salesforce's describe)."""
        dest = ctx.destination
        await dest.open()
        try:
            return await dest.validate_sync(
                sync=ctx.name,
                object=ctx.sync.object,
                match=ctx.sync.match,
                fields=fields,
                operations=operations,
            )
        finally:
            await dest.close()

    def _check_object(self, ctx: SyncContext) -> None:
        objects = ctx.destination.objects
        obj = ctx.sync.object
        if ctx.destination.any_object:
            if obj is None:
                raise ConfigError(
                    f"sync {ctx.name!r}: destination {ctx.destination_name!r} needs `object:` "
                    "(which of its objects the rows go to)",
                    hint="e.g. `object: Contact` (the object's API name)",
                )
            problem = ctx.destination.object_name_problem(obj)
            if problem is not None:
                raise ConfigError(
                    f"sync {ctx.name!r}: destination {ctx.destination_name!r} {problem}",
                    hint=f"e.g. `object: {(ctx.destination.objects or ('...',))[0]}`",
                )
            return  # any name the vendor has: validate_sync checks it against the vendor
        if objects is None and obj is not None:
            raise ConfigError(
                f"sync {ctx.name!r}: destination {ctx.destination_name!r} takes no `object:`",
                hint="remove `object:` from the sync",
            )
        if objects is not None and (obj is None or obj not in objects):
            what = "needs" if obj is None else f"has no object {obj!r};"
            closest = did_you_mean(obj, objects) if obj is not None else None
            raise ConfigError(
                f"sync {ctx.name!r}: destination {ctx.destination_name!r} {what} `object:` "
                f"one of {', '.join(objects)}" + (f"; {closest}" if closest else ""),
                hint=f"e.g. `object: {objects[0]}`",
            )

    async def _check_destination(self, name: str) -> None:
        dest = self.destination(name)
        await dest.open()
        try:
            await dest.check()
        finally:
            await dest.close()
