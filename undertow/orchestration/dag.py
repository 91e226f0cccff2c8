"""The dependency graph of a project's syncs: ``after:`` and ``then:`` edges.

``check_project`` reports, as :class:`ConfigError` with file and line, every ``after:`` /
``then:`` / alert rule naming an unknown sync, webhook or channel, and every cycle (which
would make syncs wait for each other for ever), naming the cycle::

    undertow.yml:30 syncs.a.after: syncs wait for each other in a cycle: a -> b -> c -> a
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from undertow.errors import ConfigError, unknown_name

if TYPE_CHECKING:
    from undertow.config.models import ProjectConfig

Where = Callable[[tuple[str | int, ...]], tuple[str, int] | None]


def upstream_syncs(config: ProjectConfig) -> dict[str, list[str]]:
    """sync -> the syncs it waits for (``after:``) or that trigger it (their ``then:``)."""
    edges: dict[str, list[str]] = {name: [] for name in config.syncs}
    for name, sync in config.syncs.items():
        for item in sync.after:
            if item.sync is not None:
                edges[name].append(item.sync)
        for action in sync.then:
            if action.sync is not None and action.sync in edges:
                edges[action.sync].append(name)
    return edges


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle as a list of names whose last equals its first, or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in edges.get(node, []):
            if nxt not in colour:
                continue
            if colour[nxt] == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(edges):
        if colour[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def topological(edges: dict[str, list[str]]) -> list[str]:
    """Names with every upstream before its downstreams (the graph has no cycle)."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(node: str) -> None:
        if node in seen:
            return
        seen.add(node)
        for up in edges.get(node, []):
            if up in edges:
                visit(up)
        done.append(node)

    for node in sorted(edges):
        visit(node)
    return done


def check_project(config: ProjectConfig, where: Where) -> list[ConfigError]:
    errors: list[ConfigError] = []

    def error(message: str, path: tuple[str | int, ...], hint: str | None = None) -> None:
        file, line = where(path) or (None, None)
        key = ".".join(str(p) for p in path)
        errors.append(ConfigError(message, file=file, line=line, key=key, hint=hint))

    def check_name(kind: str, name: str, known: Iterable[str], path: tuple[str | int, ...]) -> bool:
        names = list(known)
        if name in names:
            return True
        error(unknown_name(kind, name, names), path, hint=f"define it under `{kind}s:`")
        return False

    syncs = list(config.syncs)
    for name, sync in config.syncs.items():
        for i, item in enumerate(sync.after):
            path: tuple[str | int, ...] = ("syncs", name, "after", i)
            if item.sync is not None:
                if item.sync == name:
                    error(f"sync {name!r} waits for itself in `after:`", path)
                else:
                    check_name("sync", item.sync, syncs, path)
            model = config.models.get(sync.model)
            if item.dbt is not None and item.dbt.project_dir is None and model and not model.dbt:
                error(
                    f"`after: [dbt]` waits for the rebuild of the sync's dbt model, but model "
                    f"{sync.model!r} is not a dbt model",
                    path,
                    hint="name the dbt project: `after: [{dbt: {project_dir: ../analytics}}]`",
                )
            if item.webhook is not None and item.webhook not in config.webhooks:
                error(
                    unknown_name("webhook", item.webhook, config.webhooks),
                    path,
                    hint=f"declare it at the top of undertow.yml: "
                    f"`webhooks: {{{item.webhook}: {{token: ${{LOADER_TOKEN}}}}}}`",
                )
        for i, action in enumerate(sync.then):
            if action.sync is not None:
                check_name("sync", action.sync, syncs, ("syncs", name, "then", i))
        if sync.sla is not None and sync.schedule is None and not sync.after:
            pass  # a manual sync may still promise an SLA: the alert is the reminder
    for i, rule in enumerate(config.alerts.rules):
        for channel in rule.channels:
            if channel not in config.alerts.channels:
                error(
                    unknown_name("alert channel", channel, config.alerts.channels),
                    ("alerts", "rules", i, "channels"),
                    hint="define it under `alerts: {channels: ...}`",
                )
        for sync_name in rule.syncs or []:
            check_name("sync", sync_name, syncs, ("alerts", "rules", i, "syncs"))
    cycle = find_cycle(upstream_syncs(config))
    if cycle:
        # edges point downstream -> upstream: show the order in which they would run
        shown = " -> ".join(reversed(cycle))
        error(
            f"syncs wait for each other in a cycle: {shown}",
            ("syncs", cycle[0], "after"),
            hint="remove one of these `after:` (or `then:`) links; a cycle never runs",
        )
    return errors
