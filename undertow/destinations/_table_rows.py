"""The rows of a batch for the table destinations (``_table``): their match values, the
groups of rows that carry the same fields (one statement each), the column types
``create_table`` gives each field, how values go to a driver, a table's metadata
(:class:`TableInfo`), and how a write's refusals become a :class:`BatchResult` (an update
that matched no row is *not found*)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from undertow.destinations.base import Batch, BatchResult, Operation


class Kind(StrEnum):
    """The logical type ``create_table`` gives a field (each dialect names it)."""

    BOOLEAN = "boolean"
    INTEGER = "integer"
    FLOAT = "float"
    TEXT = "text"
    JSON = "json"


def infer_kind(values: Sequence[Any]) -> Kind:
    """From a field's JSON values in the batch: booleans, integers, numbers, strings, objects
    and lists; a mix of strings and other scalars, or only nulls, is text."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return Kind.TEXT
    if kinds <= {dict, list}:
        return Kind.JSON
    if kinds == {bool}:
        return Kind.BOOLEAN
    if kinds == {int}:
        return Kind.INTEGER
    if kinds <= {int, float}:
        return Kind.FLOAT
    if kinds & {dict, list}:
        return Kind.JSON
    return Kind.TEXT


def column_kinds(rows: Sequence[dict[str, Any]], match: Sequence[str]) -> dict[str, Kind]:
    """Each field of the rows (in first-seen order, match fields included) and its kind."""
    values: dict[str, list[Any]] = {}
    for row in rows:
        for name, value in row.items():
            values.setdefault(name, []).append(value)
    for name in match:
        values.setdefault(name, [])
    return {name: infer_kind(vals) for name, vals in values.items()}


def text_param(value: Any) -> str | None:
    """A value as text (the database converts it to the column's type); JSON for objects."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def json_param(value: Any) -> Any:
    """Scalars as they are, objects and lists as JSON text (drivers with typed parameters)."""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


@dataclass
class TableInfo:
    columns: dict[str, str]
    """Column name -> its type, in table order."""
    unique_sets: list[frozenset[str]]
    """Column sets of the plain unique indexes (and the primary key)."""
    privileges: dict[str, bool] | None = None
    """INSERT/UPDATE/DELETE -> granted (None: not checked by this dialect)."""


@dataclass
class Group:
    """Rows carrying the same fields: one statement, one parameter list each."""

    fields: tuple[str, ...]
    indexes: list[int]
    rows: list[dict[str, Any]]


def prepare_rows(
    batch: Batch, match: list[str], rejected: dict[int, str], qualified: str
) -> list[dict[str, Any] | None]:
    """Each record with its match values folded in; None for a record rejected here."""
    operation = batch.operation
    records: list[dict[str, Any]] = (
        [{} for _ in batch.payloads] if operation is Operation.DELETE else batch.records()
    )
    rows: list[dict[str, Any] | None] = []
    for index, record in enumerate(records):
        row = dict(record)
        for name in match:
            row[name] = batch.identifiers[name][index]
        if operation is not Operation.INSERT:
            nulls = [f for f in match if row[f] is None]
            if nulls:
                rejected[index] = (
                    f"match field(s) {', '.join(nulls)} are null, so the row cannot be "
                    f"matched in table {qualified}"
                )
                rows.append(None)
                continue
        rows.append(row)
    return rows


def group_rows(
    operation: Operation,
    rows: list[dict[str, Any] | None],
    match: list[str],
    columns: dict[str, str],
    rejected: dict[int, str],
    qualified: str,
) -> list[Group]:
    """Group rows by their fields; a field that is not a column rejects its row."""
    groups: dict[tuple[str, ...], Group] = {}
    known = {c.lower(): c for c in columns}
    for index, row in enumerate(rows):
        if row is None:
            continue
        if operation is Operation.DELETE:
            fields: tuple[str, ...] = tuple(match)
        else:
            unknown = [f for f in row if f not in columns and f.lower() not in known]
            if unknown:
                rejected[index] = (
                    f"field(s) {', '.join(unknown)} are not columns of table {qualified}; add "
                    "the column(s) or drop the field(s) from the sync's mappings"
                )
                continue
            if operation is Operation.UPDATE:
                fields = tuple(f for f in row if f not in match) + tuple(match)
            else:
                fields = tuple(row)
        group = groups.get(fields)
        if group is None:
            group = groups[fields] = Group(fields, [], [])
        group.indexes.append(index)
        group.rows.append(row)
    return list(groups.values())


class NotFound(str):
    """The reason of an update that matched no row: :func:`result_of` files it under
    ``BatchResult.not_found``, which the pipeline counts as *skipped* in update mode."""


def not_found(batch: Batch, index: int, match: Sequence[str], qualified: str) -> str:
    key = batch.keys[index] if index < len(batch.keys) else "?"
    return NotFound(
        f"no row with key {key} (matched on {', '.join(match)}) in table {qualified}; "
        "update does not create rows (use mode upsert for that)"
    )


def result_of(refused: dict[int, str]) -> BatchResult:
    """A table write's result: the rows an update found no row for are ``not_found``
    (skipped, see ``pipeline.record.settle_not_found``), the rest ``rejected``."""
    missing = {i: str(r) for i, r in refused.items() if isinstance(r, NotFound)}
    return BatchResult(
        rejected={i: r for i, r in refused.items() if i not in missing}, not_found=missing
    )


def arrow_of(fields: list[str], rows: list[dict[str, Any]]) -> Any:
    """The rows as an Arrow table, a column per field; objects and lists as JSON text.

    A column whose values Arrow cannot type as one (a mix of numbers and text, an integer
    beyond 64 bits) goes as text; a database casts it to its column's type or rejects the row.
    """
    import pyarrow as pa

    arrays = []
    for name in fields:
        values = [json_param(row[name]) for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays.append(pa.array([text_param(v) for v in values], pa.string()))
    return pa.Table.from_arrays(arrays, names=fields)
