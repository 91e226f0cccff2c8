"""The map stage on in-memory frames: every kind of field, every wire format, every rejection."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pytest

from undertow.config.models import SyncConfig
from undertow.errors import MappingError
from undertow.pipeline.map import CompiledMapping, MappedRows, compile_mapping

pytestmark = pytest.mark.unit


def sync(mappings: dict[str, Any] | None = None, **extra: Any) -> SyncConfig:
    return SyncConfig.model_validate(
        {"model": "users", "destination": "crm", "mappings": mappings or {}, **extra}
    )


def compiled(
    frame: pl.DataFrame, mappings: dict[str, Any] | None = None, **extra: Any
) -> CompiledMapping:
    max_bytes = extra.pop("max_payload_bytes", None)
    return compile_mapping(
        "users_to_crm", sync(mappings, **extra), frame.schema, max_payload_bytes=max_bytes
    )


def run(frame: pl.DataFrame, mappings: dict[str, Any] | None = None, **extra: Any) -> MappedRows:
    return compiled(frame, mappings, **extra).map(frame)


def records(result: MappedRows) -> list[dict[str, Any]]:
    return [orjson.loads(p) for p in result.payloads]


USERS = pl.DataFrame(
    {
        "id": [1, 2, 3],
        "email": ["ann@example.com", "bob@example.com", "chloé@example.com"],
        "first_name": ["Ann", "Bob", None],
        "plan": ["pro", "free", "pro"],
        "seats": ["3", "lots", None],
    }
)


# --- kinds of field -------------------------------------------------------------------------


def test_column_to_field_keeps_field_order_and_unicode() -> None:
    result = run(USERS, {"contact_email": "email", "name": {"column": "first_name"}})
    assert result.payloads[2] == '{"contact_email":"chloé@example.com","name":null}'
    assert result.index == [0, 1, 2]
    assert result.rejected == []


def test_const_of_any_yaml_shape() -> None:
    result = run(
        USERS.head(1),
        {
            "source": {"const": "warehouse"},
            "n": {"const": 3},
            "ok": {"const": True},
            "tags": {"const": ["a", 1, None]},
            "meta": {"const": {"k": {"deep": 1.5}}},
            "nothing": {"const": None},
        },
    )
    assert records(result) == [
        {
            "source": "warehouse",
            "n": 3,
            "ok": True,
            "tags": ["a", 1, None],
            "meta": {"k": {"deep": 1.5}},
            "nothing": None,
        }
    ]


def test_template_renders_columns_and_row() -> None:
    result = run(USERS, {"greeting": {"template": "Hi {{ first_name }} ({{ row['plan'] }})"}})
    assert [r["greeting"] for r in records(result)] == [
        "Hi Ann (pro)",
        "Hi Bob (free)",
        "Hi  (pro)",
    ]


def test_template_output_can_be_cast() -> None:
    frame = pl.DataFrame({"a": [2, 3]})
    result = run(frame, {"double": {"template": "{{ a * 2 }}", "cast": "int"}})
    assert records(result) == [{"double": 4}, {"double": 6}]


def test_nested_object_and_list() -> None:
    result = run(
        USERS.head(1),
        {
            "properties": {"object": {"plan": "plan", "who": {"object": {"id": "id"}}}},
            "emails": {"list": ["email", {"const": "x@example.com"}, "first_name"]},
        },
    )
    assert records(result) == [
        {
            "properties": {"plan": "pro", "who": {"id": 1}},
            "emails": ["ann@example.com", "x@example.com", "Ann"],
        }
    ]


def test_list_and_struct_columns_are_sent_as_json_arrays_and_objects() -> None:
    frame = pl.DataFrame(
        {
            "tags": [["a", "b"], [], None],
            "address": [{"city": "Oslo", "zip": 1}, None, {"city": None, "zip": 2}],
            "orders": [[{"sku": "x", "qty": 1}], [], None],
        }
    )
    assert records(run(frame)) == [
        {
            "tags": ["a", "b"],
            "address": {"city": "Oslo", "zip": 1},
            "orders": [{"sku": "x", "qty": 1}],
        },
        {"tags": [], "address": None, "orders": []},
        {"tags": None, "address": {"city": None, "zip": 2}, "orders": None},
    ]


def test_json_text_column_is_embedded_with_exact_numbers() -> None:
    frame = pl.DataFrame(
        {"raw": ['{"a": [1, 2], "big": 123456789012345678901234567890}', "null", None]}
    )
    result = run(frame, {"doc": {"json": "raw"}, "also": {"column": "raw", "cast": "json"}})
    assert result.rejected == []
    assert json.loads(result.payloads[0])["doc"] == {
        "a": [1, 2],
        "big": 123456789012345678901234567890,
    }
    assert '"big": 123456789012345678901234567890' in result.payloads[0]
    assert records(result)[1:] == [{"doc": None, "also": None}, {"doc": None, "also": None}]


def test_invalid_json_text_rejects_the_row() -> None:
    frame = pl.DataFrame({"raw": ['{"ok": 1}', "{not json"]})
    result = run(frame, {"doc": {"json": "raw"}})
    assert result.index == [0]
    [(position, reason)] = result.rejected
    assert position == 1
    assert reason.startswith("field 'doc': column 'raw' value '{not json' is not valid JSON")


def test_empty_mappings_send_every_column_under_its_own_name() -> None:
    mapping = compiled(USERS)
    assert mapping.fields == USERS.columns
    assert mapping.columns == USERS.columns
    assert records(mapping.map(USERS))[0] == {
        "id": 1,
        "email": "ann@example.com",
        "first_name": "Ann",
        "plan": "pro",
        "seats": "3",
    }


def test_identifiers_are_python_values_of_surviving_rows() -> None:
    result = run(
        USERS,
        {"plan": "plan", "seats": {"column": "seats", "cast": "int"}},
        match={"email": "email", "external_id": "id"},
    )
    assert result.index == [0, 2]
    assert result.identifiers == {
        "email": ["ann@example.com", "chloé@example.com"],
        "external_id": [1, 3],
    }
    assert "email" not in records(result)[0]


# --- columns read -------------------------------------------------------------------------


def test_columns_are_exactly_what_the_mapping_and_match_read() -> None:
    frame = USERS.with_columns(unused=pl.lit(1))
    mapping = compiled(
        frame,
        {
            "p": {"object": {"plan": "plan"}},
            "hi": {"template": "{{ first_name }}{{ seats }}"},
            "n": {"const": 1},
        },
        match={"external_id": "id"},
    )
    assert mapping.columns == ["plan", "first_name", "seats", "id"]
    assert mapping.fields == ["p", "hi", "n"]


@pytest.mark.parametrize(
    "template",
    [
        "{{ row.id }}-{{ row['plan'] }}",
        "{{ row['id'] }}{{ row.plan | upper }}",
        "{{ row.plan }}{{ id }}",
    ],
)
def test_constant_row_access_reads_only_those_columns(template: str) -> None:
    mapping = compiled(USERS, {"x": {"template": template}})
    assert sorted(mapping.columns) == ["id", "plan"]  # a change to email resends nothing
    assert sorted(records(mapping.map(USERS))[1]["x"].lower().replace("-", "")) == sorted("2free")


@pytest.mark.parametrize(
    "template",
    [
        "{% set k = 'plan' %}{{ row[k] }}",
        "{% for k, v in row.items() %}{{ v }}{% endfor %}",
        "{{ row | length }}",
        "{{ row.get('plan') }}",
    ],
)
def test_dynamic_row_access_reads_every_column(template: str) -> None:
    mapping = compiled(USERS, {"x": {"template": template}})
    assert mapping.columns == USERS.columns
    assert records(mapping.map(USERS))[0]["x"]


def test_a_constant_row_read_of_an_unknown_column_fails_to_compile() -> None:
    with pytest.raises(MappingError, match=r"row\.plann.*did you mean 'plan'"):
        compiled(USERS, {"x": {"template": "{{ row.plann }}"}})


def test_template_globals_are_not_columns() -> None:
    mapping = compiled(USERS, {"x": {"template": "{% for i in range(2) %}{{ id }}{% endfor %}"}})
    assert mapping.columns == ["id"]
    assert records(mapping.map(USERS))[0] == {"x": "11"}


# --- casts --------------------------------------------------------------------------------


def test_casts_from_text() -> None:
    frame = pl.DataFrame(
        {
            "i": [" 42 "],
            "f": ["1.5"],
            "b": ["Yes"],
            "d": ["12.3400"],
            "day": ["2024-02-29"],
            "ts": ["2024-01-02T03:04:05+01:00"],
            "naive": ["2024-01-02 03:04:05.5"],
        }
    )
    casts = {
        "i": "int",
        "f": "float",
        "b": "bool",
        "d": "decimal",
        "day": "date",
        "ts": "timestamp",
        "naive": "timestamp",
    }
    result = run(frame, {k: {"column": k, "cast": v} for k, v in casts.items()})
    assert result.rejected == []
    assert records(result) == [
        {
            "i": 42,
            "f": 1.5,
            "b": True,
            "d": "12.3400",
            "day": "2024-02-29",
            "ts": "2024-01-02T02:04:05+00:00",
            "naive": "2024-01-02T03:04:05.500",
        }
    ]


def test_casts_from_other_types() -> None:
    frame = pl.DataFrame(
        {
            "n": [7],
            "f": [2.0],
            "flag": [1],
            "day": [dt.date(2024, 1, 2)],
            "at": [dt.datetime(2024, 1, 2, 3, 4, 5)],
            "tags": [["a"]],
        }
    )
    result = run(
        frame,
        {
            "n": {"column": "n", "cast": "string"},
            "f": {"column": "f", "cast": "int"},
            "flag": {"column": "flag", "cast": "bool"},
            "day": {"column": "day", "cast": "timestamp"},
            "at": {"column": "at", "cast": "date"},
            "tags": {"column": "tags", "cast": "string"},
            "exact": {"column": "n", "cast": "decimal"},
        },
    )
    assert records(result) == [
        {
            "n": "7",
            "f": 2,
            "flag": True,
            "day": "2024-01-02T00:00:00",
            "at": "2024-01-02",
            "tags": '["a"]',
            "exact": "7",
        }
    ]


@pytest.mark.parametrize(
    ("good", "value", "cast"),
    [
        ("7", "lots", "int"),
        ("7", "1.5", "int"),
        ("7", "x", "float"),
        ("no", "maybe", "bool"),
        ("7", "1,5", "decimal"),
        ("2024-01-01", "2024-13-01", "date"),
        ("2024-01-01T00:00:00Z", "yesterday", "timestamp"),
    ],
)
def test_failed_cast_rejects_the_row_naming_field_column_value_and_type(
    good: str, value: str, cast: str
) -> None:
    frame = pl.DataFrame({"seats": [good, value]})
    result = run(frame, {"n": {"column": "seats", "cast": cast}})
    assert result.index == [0]
    assert result.rejected == [
        (1, f"field 'n': cannot cast column 'seats' value '{value}' to {cast}")
    ]


def test_lossy_numeric_cast_rejects() -> None:
    frame = pl.DataFrame({"x": [1.0, 1.5]})
    result = run(frame, {"x": {"column": "x", "cast": "int"}})
    assert result.index == [0]
    assert result.rejected == [(1, "field 'x': cannot cast column 'x' value '1.5' to int")]


def test_rejected_value_is_trimmed_to_60_characters() -> None:
    frame = pl.DataFrame({"x": ["y" * 100]})
    [(_, reason)] = run(frame, {"x": {"column": "x", "cast": "int"}}).rejected
    quoted = reason.split("'")[5]
    assert len(quoted) == 60
    assert quoted.endswith("…")


def test_a_cast_the_type_cannot_take_fails_at_compile_time() -> None:
    frame = pl.DataFrame({"day": [dt.date(2024, 1, 1)]})
    with pytest.raises(MappingError, match=r"mappings\.n: cannot cast column 'day' .* to int"):
        compiled(frame, {"n": {"column": "day", "cast": "int"}})


# --- wire formats -------------------------------------------------------------------------


def test_wire_formats() -> None:
    at = dt.datetime(2024, 1, 2, 3, 4, 5, 120000)
    frame = pl.DataFrame(
        {
            "naive": [at],
            "aware": pl.Series([at]).dt.replace_time_zone("America/New_York"),
            "utc": pl.Series([at]).dt.replace_time_zone("UTC"),
            "day": [dt.date(2024, 2, 29)],
            "money": pl.Series([Decimal("12345678901234567.89")], dtype=pl.Decimal(20, 2)),
            "big": pl.Series([2**63 - 1], dtype=pl.UInt64),
            "ratio": [0.1],
            "text": ['é "quoted"\n😀'],
            "blob": [b"\x00\xff"],
            "nothing": pl.Series([None], dtype=pl.String),
            "flag": [False],
            "when": [dt.time(3, 4, 5)],
            "stamps": [[at]],
        }
    )
    payload = run(frame).payloads[0]
    assert orjson.loads(payload) == {
        "naive": "2024-01-02T03:04:05.120",
        "aware": "2024-01-02T03:04:05.120-05:00",
        "utc": "2024-01-02T03:04:05.120+00:00",
        "day": "2024-02-29",
        "money": "12345678901234567.89",
        "big": 2**63 - 1,
        "ratio": 0.1,
        "text": 'é "quoted"\n😀',
        "blob": "AP8=",
        "nothing": None,
        "flag": False,
        "when": "03:04:05",
        "stamps": ["2024-01-02T03:04:05.120"],
    }
    assert "é" in payload  # unicode kept, not \u-escaped


def test_arrow_schema_is_accepted() -> None:
    frame = pl.DataFrame({"id": [1], "email": ["a@example.com"]})
    schema = pa.schema([("id", pa.int64()), ("email", pa.string())])
    mapping = compile_mapping("s", sync({"e": "email"}), schema)
    assert mapping.map(frame).payloads == ['{"e":"a@example.com"}']


# --- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "error"),
    [("{{ 1 // n }}", "ZeroDivisionError"), ("{{ n.nope if n == 0 else n }}", "UndefinedError")],
)
def test_a_template_that_raises_rejects_only_that_row(template: str, error: str) -> None:
    frame = pl.DataFrame({"n": [1, 0]})
    result = run(frame, {"t": {"template": template}})
    assert result.index == [0]
    [(position, reason)] = result.rejected
    assert position == 1
    assert reason.startswith(f"field 't': template failed: {error}")


def test_sandbox_escape_is_refused_at_compile_time() -> None:
    with pytest.raises(MappingError, match=r"mappings\.t: template line 1 reads '__(class|mro)__'"):
        compiled(USERS, {"t": {"template": "{{ ''.__class__.__mro__ }}"}})
    with pytest.raises(MappingError, match="cannot reach Python internals"):
        compiled(USERS, {"t": {"template": "{{ plan['__class__'] }}"}})


def test_sandbox_escape_found_only_at_run_time_rejects_the_row() -> None:
    frame = pl.DataFrame({"name": ["__class__"]})
    result = run(frame, {"t": {"template": "{{ (''|attr(name)) }}"}})
    assert result.payloads == []
    [(_, reason)] = result.rejected
    assert "SecurityError" in reason


def test_immutable_sandbox_refuses_mutation() -> None:
    frame = pl.DataFrame({"tags": [["a"]]})
    result = run(frame, {"t": {"template": "{{ tags.append('b') }}"}})
    [(_, reason)] = result.rejected
    assert "SecurityError" in reason


def test_null_identifier_rejects_the_row() -> None:
    frame = pl.DataFrame({"email": ["a@example.com", None], "plan": ["pro", "free"]})
    result = run(frame, {"plan": "plan"}, match={"email": "email"})
    assert result.index == [0]
    assert result.rejected == [(1, "match field 'email' (column 'email') is NULL")]
    assert result.identifiers == {"email": ["a@example.com"]}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float_rejects_the_row(bad: float) -> None:
    frame = pl.DataFrame({"score": [1.0, bad], "scores": [[1.0], [bad]]})
    result = run(frame, {"score": "score"})
    assert result.index == [0]
    assert result.rejected == [
        (1, "field 'score': column 'score' holds NaN or Infinity, which JSON cannot carry")
    ]
    nested = run(frame, {"scores": "scores"})
    assert nested.index == [0]
    assert "NaN or Infinity" in nested.rejected[0][1]


def test_nan_from_a_float_cast_rejects() -> None:
    frame = pl.DataFrame({"x": ["1", "nan"]})
    result = run(frame, {"x": {"column": "x", "cast": "float"}})
    assert result.index == [0]


def test_oversize_payload_is_rejected_with_its_size_and_the_limit() -> None:
    frame = pl.DataFrame({"note": ["short", "x" * 100]})
    result = run(frame, {"note": "note"}, max_payload_bytes=50)
    assert result.index == [0]
    assert result.rejected == [
        (1, "payload is 111 bytes, above the destination's limit of 50 bytes")
    ]


def test_every_reason_of_a_row_is_reported() -> None:
    frame = pl.DataFrame({"email": [None], "seats": ["lots"]})
    [(_, reason)] = run(
        frame, {"s": {"column": "seats", "cast": "int"}}, match={"email": "email"}
    ).rejected
    assert "cannot cast" in reason and "is NULL" in reason


def test_no_row_raises_on_a_mixed_bad_frame() -> None:
    frame = pl.DataFrame({"raw": ["[1]", "{", None, "2"], "n": [1, 0, None, 2]})
    result = run(frame, {"j": {"json": "raw"}, "t": {"template": "{{ 10 // n }}"}})
    assert result.index == [0, 3]
    assert [p for p, _ in result.rejected] == [1, 2]


def test_empty_frame() -> None:
    result = run(USERS.clear(), {"e": "email", "t": {"template": "{{ plan }}"}})
    assert result == MappedRows(index=[], payloads=[], identifiers={}, rejected=[])


# --- nulls ----------------------------------------------------------------------------------


def test_nulls_omit_leaves_null_fields_out_at_every_level() -> None:
    frame = pl.DataFrame(
        {
            "a": [1, None],
            "b": [None, "x"],
            "raw": ["null", '{"k": null}'],
            "gone": pl.Series([None, None], dtype=pl.Int64),
        }
    )
    result = run(
        frame,
        {
            "a": "a",
            "nested": {"object": {"b": "b", "c": {"const": None}, "g": "gone"}},
            "items": {"list": ["a", "b"]},
            "doc": {"json": "raw"},
            "gone": "gone",
            "struct": {"template": "{{ a }}"},
        },
        nulls="omit",
    )
    assert result.payloads == [
        '{"a":1,"nested":{},"items":[1],"struct":"1"}',
        '{"nested":{"b":"x"},"items":["x"],"doc":{"k": null},"struct":""}',
    ]


def test_nulls_omit_with_nulls_between_complete_columns() -> None:
    frame = pl.DataFrame(
        {"id": [1, 2], "x": [None, 5], "y": ["a", "b"], "raw": ["[1]", None], "z": [None, 1.5]}
    )
    result = run(
        frame, {"id": "id", "x": "x", "y": "y", "doc": {"json": "raw"}, "z": "z"}, nulls="omit"
    )
    assert result.payloads == ['{"id":1,"y":"a","doc":[1]}', '{"id":2,"x":5,"y":"b","z":1.5}']


def test_nulls_null_sends_json_null() -> None:
    frame = pl.DataFrame(
        {"a": pl.Series([None], dtype=pl.Int64), "raw": [None]},
        schema={"a": pl.Int64, "raw": pl.String},
    )
    result = run(
        frame,
        {
            "a": "a",
            "o": {"object": {"a": "a"}},
            "l": {"list": ["a"]},
            "j": {"json": "raw"},
            "c": {"const": None},
        },
    )
    assert result.payloads == ['{"a":null,"o":{"a":null},"l":[null],"j":null,"c":null}']


# --- compile errors -----------------------------------------------------------------------


def test_unknown_column_names_sync_path_and_closest_column() -> None:
    with pytest.raises(MappingError) as info:
        compiled(USERS, {"properties": {"object": {"plan": "plann"}}})
    message = str(info.value)
    assert "sync 'users_to_crm'" in message
    assert "mappings.properties.plan" in message
    assert "did you mean 'plan'?" in message


def test_unknown_match_column() -> None:
    with pytest.raises(MappingError, match=r"match\.email: unknown column 'emial'.*'email'"):
        compiled(USERS, {"plan": "plan"}, match={"email": "emial"})


def test_unknown_column_in_a_template() -> None:
    with pytest.raises(
        MappingError, match=r"mappings\.hi: template reads .*did you mean 'first_name'"
    ):
        compiled(USERS, {"hi": {"template": "Hi {{ frist_name }}"}})


def test_template_syntax_error_names_field_and_line() -> None:
    with pytest.raises(
        MappingError, match=r"users_to_crm.*mappings\.hi: template syntax error on line 2"
    ):
        compiled(USERS, {"hi": {"template": "ok\n{{ first_name "}})


def test_unknown_column_in_a_list_item() -> None:
    with pytest.raises(MappingError, match=r"mappings\.emails\[1\]: unknown column"):
        compiled(USERS, {"emails": {"list": ["email", "mail"]}})


def test_map_refuses_a_frame_without_a_mapped_column() -> None:
    mapping = compiled(USERS, {"plan": "plan"})
    with pytest.raises(MappingError, match="lack a column"):
        mapping.map(USERS.drop("plan"))
