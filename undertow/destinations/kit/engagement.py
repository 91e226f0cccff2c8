"""What the email and engagement destinations share: event ids, event times, list ids.

Three kinds of records (``Capabilities.kind``) go to these tools: profiles, list membership
and events. Two helpers serve events, one serves membership:

* :func:`event_id`: the id a vendor deduplicates an event by (Klaviyo ``unique_id``,
  Customer.io ``id``, Iterable ``id``): the mapped value when the sync maps the field from a
  stable column, else one derived from the sync's name and the row's primary key, which is
  stable by definition. Either way a batch sent again after a crash carries the same ids, so
  the vendor drops the repeats. :func:`stable_ulid` makes such an id in ULID form for vendors
  that want one (Customer.io).
* :func:`event_time` / :func:`epoch_seconds`: when the event happened, from the ISO 8601
  text the map stage writes for timestamp columns (or a number of seconds).
* :func:`by_list`: the items of a membership batch grouped by their list (a mapped field:
  a constant for one list, a column to sync the membership of many lists at once).
* :func:`ranges` / :func:`expand`: the batch indices an asynchronous job holds, kept small in
  the job's data in the state store (Klaviyo import jobs, SendGrid contact imports).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from undertow.destinations.base import Batch, BatchResult, Capabilities, Operation, RecordKind
from undertow.destinations.kit.endpoints import Item

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_DERIVED = 64
"""Derived ids longer than this are hashed (vendors cap ids: Iterable at 512 bytes)."""


def events_object(profiles: Capabilities, **extra: Any) -> Capabilities:
    """An events object declared beside a vendor's profiles: each new row is one event,
    inserted once (``insert`` is its only mode and the match applies to it); ``extra``
    sets its ``event_id`` field and whatever else differs from ``profiles``."""
    insert = frozenset({Operation.INSERT})
    return replace(
        profiles, operations=insert, kind=RecordKind.EVENTS, match_operations=insert, **extra
    )


def derived_event_id(batch: Batch, index: int) -> str:
    """``<sync>:<row key>``, hashed when long: the same for a row in every run."""
    text = f"{batch.sync}:{batch.keys[index]}"
    if len(text) <= MAX_DERIVED:
        return text
    return f"{batch.sync[:24]}:{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def event_id(batch: Batch, index: int, record: dict[str, Any], field: str) -> str:
    """The record's dedupe id: the mapped ``field`` if set, else derived from the row key."""
    value = record.get(field)
    if value is None or value == "":
        return derived_event_id(batch, index)
    return str(value)


def stable_ulid(text: str) -> str:
    """A valid ULID (26 Crockford base32 characters) that is a pure function of ``text``."""
    number = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")
    digits = []  # 128 bits in 26 digits of 5: the first digit holds 3 bits (0-7), as required
    for _ in range(26):
        digits.append(CROCKFORD[number & 31])
        number >>= 5
    return "".join(reversed(digits))


def is_ulid(value: str) -> bool:
    return len(value) == 26 and value[0] in "01234567" and all(c in CROCKFORD for c in value)


def parse_time(value: Any) -> datetime | None:
    """A datetime from ISO 8601 text (``Z`` or an offset; naive means UTC), a date, or a
    number of seconds since the epoch; None when the value is none of these."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00").replace(" ", "T", 1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def event_time(value: Any) -> str | None:
    """ISO 8601 in UTC with a ``Z`` (``2026-03-01T10:00:00Z``), or None if unreadable."""
    parsed = parse_time(value)
    if parsed is None:
        return None
    return parsed.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def epoch_seconds(value: Any) -> int | None:
    """Whole seconds since the epoch, or None if unreadable."""
    parsed = parse_time(value)
    return None if parsed is None else int(parsed.timestamp())


def by_list(
    items: Iterable[Item], field: str, result: BatchResult, *, vendor: str
) -> dict[str, list[Item]]:
    """Membership items grouped by their list id (the record's ``field``); an item without
    one is rejected, naming the field to map."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        value = item.record.get(field)
        if value is None or value == "" or isinstance(value, dict | list | bool):
            result.rejected[item.index] = (
                f"no {field} for this row: map `{field}` to the {vendor} list it joins (a "
                f"constant, e.g. `{field}: {{const: ABC123}}`, or a column)"
            )
            continue
        groups.setdefault(str(value), []).append(item)
    return groups


def chunks(items: list[Item], size: int) -> list[list[Item]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def ranges(indices: list[int]) -> list[list[int]]:
    """Batch indices as [start, end) ranges (a job's data stays small in the state store)."""
    out: list[list[int]] = []
    for index in indices:
        if out and out[-1][1] == index:
            out[-1][1] = index + 1
        else:
            out.append([index, index + 1])
    return out


def expand(spans: list[list[int]]) -> list[int]:
    return [i for start, end in spans for i in range(start, end)]
