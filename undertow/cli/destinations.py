"""``undertow destinations`` and ``undertow fake``: what each destination type can do, and
its local fake served in the foreground (try a destination, or test a project in CI,
without an account)."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

from undertow.cli._common import DebugOpt, JsonOpt, app, guard
from undertow.console import TerminalConsole, escape


def _limits(entry: dict[str, Any]) -> str:
    limits = entry.get("rate_limits") or []
    return ", ".join(f"{r['requests']:,}/{r['per_seconds']:g}s" for r in limits) or "—"


@app.command()
def destinations(json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List every destination type: operations, objects, identifiers, batch size, rate limit."""
    from undertow.destinations.catalog import catalog

    console = TerminalConsole(json_mode=json)
    entries = guard(console, debug, catalog)
    if json:
        console.json(entries)
        return
    from rich.table import Table

    table = Table(title="Destination types", title_justify="left")
    for column in ("type", "operations", "objects", "match", "batch", "rate limit", "docs"):
        table.add_column(column)
    for e in entries:
        if "error" in e:
            table.add_row(escape(e["type"]), f"[red]{escape(e['error'])}[/]", "", "", "", "", "")
            continue
        ident = e["identifiers"]
        match = (
            ", ".join(ident["fields"]) if ident["fields"] else ("any" if ident["required"] else "—")
        )
        table.add_row(
            escape(e["type"]),
            ", ".join(e["operations"]),
            escape(", ".join(e["objects"] or []) or "—"),
            escape(match),
            f"{e['batch_size']:,}",
            _limits(e),
            escape(e["docs"] or ""),
        )
    console.print(table)


@app.command()
def fake(
    type_name: Annotated[str, typer.Argument(metavar="TYPE", help="A destination type.")],
    port: Annotated[
        int | None, typer.Option("--port", help="TCP port (default: a free one).")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="The credential it accepts (default: its demo's).")
    ] = None,
    demo_limits: Annotated[
        bool,
        typer.Option("--demo-limits", help="The raised limits of its demo, not the vendor's."),
    ] = False,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="NAME=VALUE passed to the fake (VALUE as JSON, else text; repeat), e.g. "
            '-o \'properties={"contacts": ["plan"]}\' for HubSpot.',
        ),
    ] = None,
    json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Serve a destination type's local fake on 127.0.0.1 until Ctrl-C (at the vendor's
    default limits; GET /__undertow_fake__/stats says what it did).

    ``--option`` sets what the fake's account holds or how it behaves (its constructor's
    keyword arguments: a HubSpot portal's custom ``properties``, a rate limit); an unknown
    name is refused with the names the fake takes."""
    from undertow.destinations.catalog import fake_class
    from undertow.gcpolicy import batch_collection
    from undertow.registry import destination_class
    from undertow.testing.server import free_port, start_server

    console = TerminalConsole(json_mode=json)

    def work() -> None:
        cls = fake_class(type_name)
        demo = destination_class(type_name).demo
        credential = token or (demo.token if demo else "demo-token")
        options = dict(demo.fake_options) if demo and demo_limits else {}
        given = fake_options(type_name, cls, option or [])
        options.update(given)
        try:
            instance = cls(credential, **options)  # by default the vendor's documented limits
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            if not given:
                raise
            from undertow.errors import ConfigError

            raise ConfigError(
                f"the fake {type_name} refused --option {', '.join(given)}: {exc}",
                hint="see the fake's docstring for each option's shape "
                f"(python -c 'import {cls.__module__} as m; help(m.{cls.__name__})')",
            ) from None
        server = start_server(instance.app, port=port or free_port())
        url = server.url
        if json:
            console.json({"type": type_name, "url": url, "credential": credential})
        else:
            console.print(f"fake {escape(type_name)} listening on [bold]{url}[/]")
            console.print(f"  credential: {escape(credential)}  (set base_url: {url})")
            console.print("  Ctrl-C stops it")
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        try:
            # the account's records stay for the fake's life: the collector walks them less
            with batch_collection():
                while not stopped.wait(0.5):
                    if not server.thread.is_alive():
                        break
        finally:
            server.stop()
            if not json:
                console.print(f"served {len(instance.requests):,} request(s); stopped")

    guard(console, debug, work)


def fake_options(type_name: str, cls: type, given: list[str]) -> dict[str, Any]:
    """``--option NAME=VALUE`` pairs as keyword arguments of the fake ``cls``."""
    import inspect

    import orjson

    from undertow.errors import ConfigError, did_you_mean

    params = inspect.signature(cls).parameters
    names = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in _INTERNAL]
    out: dict[str, Any] = {}
    for pair in given:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(
                f"--option {pair!r}: expected NAME=VALUE",
                hint=f"the fake {type_name} takes: {', '.join(names)}",
            )
        if name not in names:
            raise ConfigError(
                f"--option {name!r}: the fake {type_name} has no such option",
                hint=did_you_mean(name, names) or f"it takes: {', '.join(names)}",
            )
        try:
            out[name] = orjson.loads(text)
        except orjson.JSONDecodeError:
            out[name] = text  # plain text
    return out


_INTERNAL = frozenset({"clock", "fault_plan", "ledger"})
"""Keyword arguments of fakes that only tests can give (objects, not values)."""
