"""Facebook (Meta) Custom Audiences: customer-list membership on the HTTP kit.

How a batch maps to the Marketing API (``docs/destinations/facebook_audiences.md`` has the
user's view; ``../shared/specs/facebook/NOTES.md`` the contract)::

    users  add      POST   /{version}/{audience_id}/users         payload={schema, data}
           remove   DELETE /{version}/{audience_id}/users         payload={schema, data}
           add in a --full run with full_replace: true
                    POST   /{version}/{audience_id}/usersreplace  payload, session

A record's mapped fields are the schema's keys (``EMAIL``, ``PHONE``, ``FN``, ...): one
request carries the keys its records have, each row a list aligned with ``schema``. Every
key but ``EXTERN_ID`` and ``MADID`` must be a SHA-256 hex digest of the normalised value
(``{column: email, normalize: email, hash: sha256}``, ``pipeline/map/pii.py``); a raw value
is rejected before anything is sent, so a raw email never leaves the warehouse.

Facebook counts what it could not use rather than indexing it: the answer's
``num_received`` / ``num_invalid_entries`` and a few ``invalid_entry_samples`` (value ->
reason). Sampled values reject their rows; invalid entries Facebook did not sample cannot be
told apart and are counted in ``stats.unidentified_invalid`` (and logged).

Replace sessions: in a ``--full`` run with ``full_replace: true`` the added rows (every row
of the model) go to ``usersreplace`` as one session: ``session_id`` derived from the run (so a
run resumed after a crash continues the same session), ``batch_seq`` the batch's place among
the run's add batches (``Batch.sequence``, the same after a resume), ``last_batch_flag`` on
the last one, which is sent only once every earlier batch of the session has its answer.

Throttling is an HTTP 400 with error code 17, 613 or 80003 (no ``Retry-After``): the kit
pauses the account (``X-Business-Use-Case-Usage``'s ``estimated_time_to_regain_access``,
minutes, when given; else 60 s).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from typing import Any

import orjson
from pydantic import Field, SecretStr

from undertow.destinations._http import Response
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    Operation,
    RateLimit,
    RecordKind,
)
from undertow.destinations.kit import (
    Auth,
    BearerAuth,
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Reject,
    SlowDown,
)
from undertow.destinations.kit.signals import Verdict
from undertow.errors import RejectedBatchError, unknown_name
from undertow.redact import trim

log = logging.getLogger(__name__)

# -- vendor limits, each next to the doc that states it ------------------------------------

USERS_DOC = "https://developers.facebook.com/docs/marketing-api/reference/custom-audience/users/"
GUIDE_DOC = "https://developers.facebook.com/docs/marketing-api/audiences/guides/custom-audiences"
LIMITS_DOC = "https://developers.facebook.com/docs/graph-api/overview/rate-limiting"

MAX_USERS = 10_000
"""Rows per request: "an unlimited number of records ..., but only up to 10000 at a time".
USERS_DOC"""
BUC_RATE = RateLimit(190_040, 3600.0, LIMITS_DOC)
"""Business Use Case limit of custom audience calls, standard tier: 190,000 + 40 x active
custom audiences calls an hour per ad account (here: one audience). LIMITS_DOC; the
development tier allows 5,000 + 40 x audiences (``calls_per_hour``)."""

HASHED: tuple[str, ...] = ("EMAIL", "PHONE", "FN", "LN", "FI", "ZIP", "CT", "ST", "COUNTRY")
HASHED += ("DOBY", "DOBM", "DOBD", "GEN", "F5FIRST", "F5LAST")
CLEAR = ("EXTERN_ID", "MADID", "PAGEUID", "LOOKALIKE_VALUE")
"""Keys sent as they are: EXTERN_ID ("hashing not required"), MADID (mobile advertiser id,
lower-case, never hashed), page-scoped user ids, a value-based audience's value."""
KEYS = HASHED + CLEAR
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
THROTTLE_CODES = frozenset({17, 613, 80003})
THROTTLED = "throttled (Business Use Case limit)"
HOW_TO_HASH = {
    "EMAIL": "email",
    "PHONE": "phone",
    "FN": "first_name",
    "LN": "last_name",
    "ZIP": "zip",
    "CT": "city",
    "ST": "state",
    "COUNTRY": "country",
    "DOBY": "birth_year",
    "DOBM": "birth_month",
    "DOBD": "birth_day",
    "GEN": "gender",
}
TOKEN_HINT = (
    "check the access token: a system user token of the business that owns the ad account, "
    "with ads_management, and access to the audience (Business Settings > System users)"
)


class FacebookConfig(HttpConfig):
    """``destinations: {vip: {type: facebook_audiences, audience_id: "2385...", ...}}``."""

    access_token: SecretStr = Field(description="a system user access token (ads_management)")
    audience_id: str = Field(min_length=1, pattern=r"^\d+$")
    """The customer-list custom audience (Audiences > the audience's id)."""
    base_url: str = "https://graph.facebook.com"
    api_version: str = Field(default="v25.0", pattern=r"^v\d+\.\d+$")
    batch_size: int = Field(default=MAX_USERS, ge=1, le=MAX_USERS)
    max_concurrency: int = Field(default=4, ge=1, le=16)
    calls_per_hour: int = Field(default=BUC_RATE.requests, ge=1)
    """The ad account's Business Use Case limit for custom audience calls."""
    throttle_wait: float = Field(default=60.0, gt=0)
    """Seconds to pause the account after a throttle answer that gives no
    ``estimated_time_to_regain_access`` (Facebook: "wait a bit and try again")."""
    full_replace: bool = False
    """``undertow run --full`` replaces the audience's members through a ``usersreplace``
    session instead of adding every row (members that left the model are removed too)."""


CAPS = Capabilities(
    operations=frozenset({Operation.ADD, Operation.REMOVE}),
    max_batch_size=MAX_USERS,
    max_concurrency=4,
    rate_limit=None,  # no per-second limit published: the hourly BUC quota is per ad account
    # and depends on its audiences and access tier, so each instance paces to
    # `calls_per_hour` (capabilities_for)
    per_record_results=True,
    kind=RecordKind.MEMBERSHIP,
    shared_delivery=False,  # a replace session's order and last flag live in one process
    docs=(USERS_DOC, GUIDE_DOC, LIMITS_DOC),
    cite={"max_batch_size": USERS_DOC, "calls_per_hour": LIMITS_DOC},
)


def session_id(batch: Batch) -> int:
    """A positive int64 from the sync and the run: the same for every batch of the run, and
    after a resume."""
    digest = hashlib.sha256(f"{batch.sync}:{batch.run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _buc_minutes(response: Response) -> float | None:
    """``estimated_time_to_regain_access`` (minutes) in ``X-Business-Use-Case-Usage``."""
    raw = response.headers.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        usage = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    minutes = [
        float(entry.get("estimated_time_to_regain_access") or 0)
        for entries in (usage.values() if isinstance(usage, dict) else [])
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict)
    ]
    return max(minutes) * 60 if minutes and max(minutes) > 0 else None


class BucSlowDown(SlowDown):
    """Facebook's throttle: 400 with error code 17/613/80003; the wait from the BUC header."""

    def read(self, response: Response, body: Any) -> Verdict | None:
        verdict = super().read(response, body)
        if verdict is None:
            return None
        wait = _buc_minutes(response)
        return verdict if wait is None else replace(verdict, wait=wait)


def read_users(call: Call, response: Response, body: Any) -> BatchResult:
    """200: ``num_received`` / ``num_invalid_entries``, sampled invalid values -> rejected."""
    if 400 <= response.status < 500:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            text = f"Facebook {error.get('code')}"
            if error.get("error_subcode"):
                text += f"/{error['error_subcode']}"
            text += f": {error.get('error_user_msg') or error.get('message')}"
        else:
            text = f"Facebook: {response.describe()}"
        raise RejectedBatchError(trim(text, 500))
    if not isinstance(body, dict) or "num_received" not in body:
        return BatchResult.all_failed(
            len(call.items), f"Facebook's answer has no num_received: {response.describe()}"
        )
    result = BatchResult()
    received = int(body.get("num_received") or 0)
    if received < len(call.items):
        # fewer rows arrived than were sent: which ones is unknown, so none is confirmed
        return BatchResult.all_failed(
            len(call.items),
            f"Facebook received {received} of {len(call.items)} rows; the next run sends them",
        )
    samples = body.get("invalid_entry_samples") or {}
    if isinstance(samples, dict) and samples:
        by_value: dict[str, int] = {}
        for position, item in enumerate(call.items):
            for value in item.body:
                if isinstance(value, str) and value:
                    by_value.setdefault(value, position)
        for value, reason in samples.items():
            found = by_value.get(str(value))
            if found is not None:
                result.rejected[found] = f"Facebook: invalid entry: {reason}"
    invalid = int(body.get("num_invalid_entries") or 0)
    unidentified = invalid - len(result.rejected)
    if unidentified > 0:
        call.context["unidentified"] = call.context.get("unidentified", 0) + unidentified
    return result


def _users_body(call: Call) -> bytes:
    """A JSON body (NOTES: "form or JSON"): ``payload`` and ``session`` as objects. JSON, not
    a form: urlencoding a 10,000-row payload costs ~2 s of CPU in Python, the JSON ~5 ms."""
    body: dict[str, Any] = {
        "payload": {"schema": call.context["schema"], "data": [i.body for i in call.items]}
    }
    session = call.context.get("session")
    if session is not None:
        body["session"] = session
    return orjson.dumps(body)


USERS_PATH = "/{version}/{audience}/users"
ADD = Endpoint("POST", USERS_PATH, body=_users_body, read=read_users, ok=frozenset({200}))
REMOVE = replace(ADD, method="DELETE")
REPLACE = replace(ADD, path="/{version}/{audience}/usersreplace")


class FacebookAudienceDestination(HttpDestination[FacebookConfig]):
    """Members of a Facebook customer-list custom audience (hashed identifiers)."""

    name = "facebook_audiences"
    vendor = "Facebook"
    objects = ("users",)
    fake = "undertow.testing.facebook:FacebookFake"
    docs_url = USERS_DOC
    pii_variant = "facebook"
    capabilities = CAPS
    signals = (
        BucSlowDown(
            name=THROTTLED,
            statuses=frozenset({400}),
            code_path="error.code",
            codes=THROTTLE_CODES,
        ),
        SlowDown(
            name="the access token is not valid",
            statuses=frozenset({400, 401}),
            code_path="error.code",
            codes=frozenset({190}),
            fatal=True,
            retry_after=False,
            hint=TOKEN_HINT,
        ),
        SlowDown(),
    )
    check_path = None
    auth_hint = TOKEN_HINT
    demo = DemoProfile(
        destination="""\
type: facebook_audiences
access_token: ${FAKE_TOKEN}
audience_id: "23850000000000001"
base_url: ${FAKE_URL}""",
        sync="""\
object: users
mode: mirror
mappings:
  EMAIL: {column: email, normalize: email, hash: sha256}
  FN: {column: first_name, normalize: first_name, hash: sha256}
  LN: {column: last_name, normalize: last_name, hash: sha256}
  COUNTRY: {column: country, normalize: country, hash: sha256}
  EXTERN_ID: {column: customer_id, normalize: external_id}""",
        token="facebook-demo-0000-local-fake",
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self.unidentified_invalid = 0
        """Invalid entries Facebook counted but did not sample (they cannot be named)."""

    def make_auth(self) -> Auth:
        return BearerAuth(self.config.access_token.get_secret_value())

    def _slow_down(self, response: Response, body: Any) -> Verdict | None:
        verdict = super()._slow_down(response, body)
        if verdict is not None and verdict.name == THROTTLED and verdict.wait is None:
            return replace(verdict, wait=self.config.throttle_wait)
        return verdict

    def capabilities_for(self, object: str | None) -> Capabilities:
        return replace(
            CAPS,
            max_batch_size=self.config.batch_size,
            max_concurrency=self.config.max_concurrency,
            rate_limit=RateLimit(self.config.calls_per_hour, 3600.0, LIMITS_DOC),
        )

    async def check(self) -> None:
        """``GET /{version}/{audience_id}?fields=id``: the token reaches the audience."""
        path = f"/{self.config.api_version}/{self.config.audience_id}"
        response = await self.send("GET", path, params={"fields": "id"}, expect=frozenset({200}))
        if response.status != 200:
            raise self.auth_error(response)

    async def validate_sync(
        self,
        *,
        sync: str,
        object: str | None,
        match: Any,
        fields: list[str],
        operations: frozenset[Operation] = frozenset(),
    ) -> list[str]:
        problems = [
            f"sync {sync!r}: field {f!r} is not a Facebook audience key: "
            + unknown_name("key", f, KEYS)
            for f in fields
            if f not in KEYS
        ]
        if not [f for f in fields if f in KEYS]:
            problems.append(
                f"sync {sync!r}: map at least one audience key (EMAIL, PHONE, MADID, ...), "
                "e.g. `EMAIL: {column: email, normalize: email, hash: sha256}`"
            )
        return problems

    # -- shaping ---------------------------------------------------------------------------

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        for name, value in record.items():
            if name not in KEYS:
                return Reject(
                    f"field {name!r} is not a Facebook audience key; "
                    + unknown_name("key", name, KEYS)
                )
            if value is None or value == "":
                continue
            if name in HASHED and not (isinstance(value, str) and SHA256_HEX.match(value)):
                how = HOW_TO_HASH.get(name)
                fix = f"{{column: ..., normalize: {how}, hash: sha256}}" if how else "hash: sha256"
                return Reject(
                    f"{name} is not a SHA-256 hex digest (Facebook takes only hashes of "
                    f"normalised values): map it as `{name}: {fix}`"
                )
        if not any(record.get(k) not in (None, "") for k in KEYS):
            return Reject("no audience key has a value for this row")
        return record

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        if (batch.object or "users") != "users":
            raise self.unknown_object(batch)
        if batch.operation not in CAPS.operations:
            return await super().write_batch(batch)  # the kit's "cannot ..." error
        result = BatchResult()
        items = self.items(batch, None, result)
        if not items:
            return result
        present = {k for i in items for k, v in i.body.items() if v is not None and v != ""}
        schema = [k for k in KEYS if k in present]
        for item in items:
            item.body = ["" if item.body.get(k) is None else str(item.body[k]) for k in schema]
        call = Call(batch, items, "users", None, self.vendor)
        call.context["schema"] = schema
        if self.replacing(batch):
            await self._replace(call, batch, result)
            return result
        endpoint = REMOVE if batch.operation is Operation.REMOVE else ADD
        await self.deliver_call(self._at(endpoint), call, result)
        self._count_unidentified(call)
        return result

    def _at(self, endpoint: Endpoint) -> Endpoint:
        path = endpoint.path.format(
            version=self.config.api_version, audience=self.config.audience_id
        )
        return replace(endpoint, path=path)

    def _count_unidentified(self, call: Call) -> None:
        count = int(call.context.pop("unidentified", 0) or 0)
        if count:
            self.unidentified_invalid += count
            log.warning(
                "Facebook counted %d invalid entr(ies) in batch %d of sync %r without "
                "sampling them: they are not in the audience, and cannot be named",
                count,
                call.batch.number,
                call.batch.sync,
            )

    def replacing(self, batch: Batch) -> bool:
        return (
            self.config.full_replace
            and batch.full
            and batch.operation is Operation.ADD
            and batch.sequence is not None
        )

    def after_the_rest(self, batch: Batch) -> bool:
        """The session's last request (``last_batch_flag``) waits for every earlier one."""
        return (
            self.replacing(batch)
            and batch.sequence is not None
            and (batch.sequence[0] == batch.sequence[1])
        )

    async def _replace(self, call: Call, batch: Batch, result: BatchResult) -> None:
        """One request of the run's replace session (``session_id`` from the run)."""
        assert batch.sequence is not None
        place, total = batch.sequence
        call.context["session"] = {
            "session_id": session_id(batch),
            "batch_seq": place,
            "last_batch_flag": place == total,
            "estimated_num_total": total * self.config.batch_size,
        }
        await self.deliver_call(self._at(REPLACE), call, result)
        self._count_unidentified(call)


__all__ = ["FacebookAudienceDestination", "FacebookConfig"]
