"""The freshness check: is the model's data recent enough to send? Run before anything is
sent; a stale model skips the run (or fails it, with ``on_stale: fail``).

``column: updated_at`` takes the newest value of that column of the model; ``sql:`` runs a
query on the model's source that returns one timestamp (e.g. the loader's last load time).
A timestamp without a time zone is read as UTC; a date as midnight UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa

from undertow.errors import ModelError, UndertowError
from undertow.orchestration.config import Freshness, format_duration
from undertow.pipeline.diff import q
from undertow.sources.base import Source


@dataclass
class FreshnessResult:
    ok: bool
    latest: datetime | None
    age: timedelta | None
    max_age: timedelta
    message: str


def freshness_sql(freshness: Freshness, model_sql: str) -> str:
    if freshness.sql is not None:
        return freshness.sql
    assert freshness.column is not None
    inner = model_sql.strip().rstrip(";")
    return f"SELECT max({q(freshness.column)}) AS latest FROM ({inner}) AS _ut_fresh"


def _as_datetime(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def check_freshness(
    source: Source,
    *,
    sync: str,
    model: str,
    model_sql: str,
    freshness: Freshness,
    now: datetime,
) -> FreshnessResult:
    """Run the check on the source; raise ModelError when the query itself fails."""
    sql = freshness_sql(freshness, model_sql)
    what = f"max({freshness.column})" if freshness.column else "the freshness query"
    try:
        reader = source.extract(sql, model=model)
        table: pa.Table = reader.read_all()
    except UndertowError:
        raise
    except Exception as exc:  # a driver error: name the check, not a bare traceback
        raise ModelError(
            f"the freshness check of sync {sync!r} failed: {exc}",
            model=model,
            source=source.instance_name,
            hint="fix `freshness:` (the column must exist; `sql:` must return one timestamp)",
        ) from exc
    raw = table.column(0)[0].as_py() if table.num_rows and table.num_columns else None
    latest = _as_datetime(raw)
    if raw is not None and latest is None:
        raise ModelError(
            f"the freshness check of sync {sync!r} returned {raw!r}, not a timestamp",
            model=model,
            source=source.instance_name,
            hint="`freshness:` needs a timestamp or date column, or a query returning one",
        )
    if latest is None:
        return FreshnessResult(
            ok=False,
            latest=None,
            age=None,
            max_age=freshness.max_age,
            message=f"model {model!r} has no data: {what} is NULL",
        )
    age = now - latest
    ok = age <= freshness.max_age
    message = (
        f"model {model!r} is {'fresh' if ok else 'stale'}: newest data is "
        f"{format_duration(age)} old ({what} = {latest.isoformat()}), "
        f"max_age is {format_duration(freshness.max_age)}"
    )
    return FreshnessResult(
        ok=ok, latest=latest, age=age, max_age=freshness.max_age, message=message
    )
