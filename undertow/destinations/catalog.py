"""What every registered destination declares, for ``undertow destinations``, ``undertow
fake``, ``undertow demo --destination`` and ``undertow init --destination``.

Everything here is read from the destination classes (capabilities, objects, ``fake``,
``demo``): a new destination appears in all four commands by declaring them, with no list
to update.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict
from typing import Any

from undertow import registry
from undertow.destinations.base import Capabilities, DemoProfile, Destination
from undertow.errors import ConfigError, unknown_name


def describe(type_name: str) -> dict[str, Any]:
    """One destination type as data (the JSON of ``undertow destinations --json``)."""
    cls = registry.destination_class(type_name)
    caps: Capabilities = cls.capabilities
    rule = caps.match
    return {
        "type": type_name,
        "operations": sorted(str(o) for o in caps.operations),
        "objects": list(cls.objects) if cls.objects else None,
        "identifiers": {
            "required": bool(caps.requires_match or (rule and rule.min_fields)),
            "fields": list(rule.fields) if rule and rule.fields else None,
            "min": rule.min_fields if rule else (1 if caps.requires_match else 0),
            "max": rule.max_fields if rule else None,
        },
        "batch_size": caps.max_batch_size,
        "max_concurrency": caps.max_concurrency,
        "rate_limits": [
            {"requests": r.requests, "per_seconds": r.per_seconds, "doc": r.doc}
            for r in caps.limits
        ],
        "max_in_flight": caps.max_in_flight,
        "max_request_bytes": caps.max_request_bytes,
        "per_record_results": caps.per_record_results,
        "one_per_request": caps.one_per_request,
        "async_jobs": cls.async_jobs,
        "docs": cls.docs_url or (caps.docs[0] if caps.docs else None),
        "cite": dict(caps.cite),
        "fake": cls.fake,
        "demo": cls.demo is not None,
        "kind": str(caps.kind),
        "object_kinds": {
            name: {
                "kind": str(oc.kind),
                "operations": sorted(str(o) for o in oc.operations),
                "batch_size": oc.max_batch_size,
                "event_id": oc.event_id,
            }
            for name, oc in cls.object_capabilities.items()
        },
    }


def catalog() -> list[dict[str, Any]]:
    """Every registered destination type, described (a type that fails to load says why)."""
    out: list[dict[str, Any]] = []
    for name in registry.destination_types():
        try:
            out.append(describe(name))
        except ConfigError as exc:
            out.append({"type": name, "error": str(exc)})
    return out


def fake_class(type_name: str) -> type[Any]:
    """The local fake of a destination type (``Destination.fake``)."""
    cls = registry.destination_class(type_name)
    if not cls.fake:
        with_fakes = [d["type"] for d in catalog() if d.get("fake")]
        raise ConfigError(
            f"destination type {type_name!r} has no local fake",
            hint="types with one: " + ", ".join(with_fakes),
        )
    module, _, name = cls.fake.partition(":")
    found: type[Any] = getattr(importlib.import_module(module), name)
    return found


def demo_profile(type_name: str) -> tuple[type[Destination], DemoProfile]:
    """A destination type's demo profile, or a ConfigError naming the types that have one."""
    try:
        cls = registry.destination_class(type_name)
    except ConfigError:
        raise ConfigError(
            unknown_name("destination type", type_name, demo_types()),
            hint="`undertow destinations` lists every type",
        ) from None
    if cls.demo is None or not cls.fake:
        raise ConfigError(
            f"destination type {type_name!r} has no demo (it declares no demo profile and fake)",
            hint="types with a demo: " + ", ".join(demo_types()),
        )
    return cls, cls.demo


def demo_types() -> list[str]:
    return [d["type"] for d in catalog() if d.get("demo") and d.get("fake")]


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.strip("\n").splitlines())


def project_yml(
    type_name: str, profile: DemoProfile, *, name: str, model: str, destination: str | None = None
) -> str:
    """A project of the sample customers synced into ``type_name`` (``${FAKE_URL}`` and
    ``${FAKE_TOKEN}`` left for the environment). ``model`` is the model's ``sql:`` or
    ``file:`` line; ``destination`` replaces the profile's destination block."""
    sync = f"customers_to_{type_name.replace('-', '_')}"
    return f"""\
# An Undertow project: active customers -> {type_name}.
name: {name}
state: sqlite:///.undertow/state.db

sources:
  warehouse:
    type: duckdb
    path: warehouse.duckdb

destinations:
  {type_name}:
{_indent(destination or profile.destination, 4)}

models:
  active_customers:
    source: warehouse
    {model}
    primary_key: customer_id

syncs:
  {sync}:
    model: active_customers
    destination: {type_name}
{_indent(profile.sync, 4)}
"""


def starter_destination(type_name: str, profile: DemoProfile) -> str:
    """The demo's destination block for a real account: credentials and URL from the
    environment (``<TYPE>_TOKEN``, ``<TYPE>_BASE_URL`` defaulting to the vendor's API)."""
    cls = registry.destination_class(type_name)
    env = type_name.upper().replace("-", "_")
    base = cls.Config.model_fields.get("base_url")
    default = base.default if base is not None and isinstance(base.default, str) else ""
    text = profile.destination.replace("${FAKE_TOKEN}", f"${{{env}_TOKEN}}")
    lines = []
    for line in text.splitlines():
        if "${FAKE_URL}" in line:
            # no vendor default (Zendesk's address is per account): the environment gives it
            fallback = f":-{default}" if default else ""
            line = line.replace("${FAKE_URL}", f"${{{env}_BASE_URL{fallback}}}")
        if "local fake" in line:  # a limit raised for the fake: the vendor's default applies
            continue
        lines.append(line)
    return "\n".join(lines)


def profile_dict(profile: DemoProfile) -> dict[str, Any]:
    return asdict(profile)
