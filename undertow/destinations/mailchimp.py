"""Mailchimp Marketing: audience members (batch upserts, archive) and tags, on the HTTP kit.

How a batch maps to Mailchimp (``docs/destinations/mailchimp.md`` has the user's view)::

    members  upsert  POST /3.0/lists/{audience} {"members": [...], "update_existing": true}
             delete  DELETE /3.0/lists/{audience}/members/{md5(lower(email))}   (archive)
                     or POST .../members/{hash}/actions/delete-permanent        (permanent)
    tags     add     POST /3.0/lists/{audience}/segments/{tag id} {"members_to_add": [...]}
             remove  POST /3.0/lists/{audience}/segments/{tag id} {"members_to_remove": [...]}

An audience *is* Mailchimp's list: a ``members`` sync in ``mirror`` mode keeps the audience
equal to the model (a row that leaves it archives its member), and a ``tags`` sync keeps a
tag (a static segment) equal to the model's rows. The batch subscribe answers **200 even
when members fail**, listing them in ``errors`` by ``email_address``: only those rows are
rejected. A tag is found by name (``GET .../segments?type=static``) and created when the
audience has none of that name.

Mailchimp's one published limit is **10 simultaneous connections per API key** (more get a
429): every sync on the same key shares that cap (``max_in_flight``). No per-second rate is
published, and a 429 carries no ``Retry-After``: the kit backs off.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from undertow.destinations._http import Response
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    DemoProfile,
    MatchRule,
    Operation,
    RecordKind,
)
from undertow.destinations.kit import (
    Auth,
    BasicAuth,
    Call,
    Endpoint,
    HttpConfig,
    HttpDestination,
    Reject,
    SlowDown,
    envelope,
    errors_by_field,
    first_at,
    parse_json,
    values_at,
)
from undertow.destinations.kit.engagement import by_list, chunks
from undertow.errors import FatalDeliveryError, RejectedBatchError
from undertow.redact import trim

# -- vendor limits, each next to the doc that states it ------------------------------------

API_DOC = "https://mailchimp.com/developer/marketing/api/"
BATCH_DOC = "https://mailchimp.com/developer/marketing/api/lists/batch-subscribe-or-unsubscribe/"
ARCHIVE_DOC = "https://mailchimp.com/developer/marketing/api/list-members/archive-list-member/"
SEGMENTS_DOC = (
    "https://mailchimp.com/developer/marketing/api/list-segments/batch-add-or-remove-members/"
)
LIMITS_DOC = "https://mailchimp.com/developer/marketing/docs/fundamentals/#api-limits"
ERRORS_DOC = "https://mailchimp.com/developer/marketing/docs/errors/"

MAX_MEMBERS = 500
"""Members per batch subscribe call (specs/mailchimp NOTES). BATCH_DOC"""
MAX_SEGMENT_EMAILS = 500
"""Emails per members_to_add / members_to_remove. SEGMENTS_DOC"""
MAX_CONNECTIONS = 10
"""Simultaneous connections per API key; more get a 429 (specs/mailchimp NOTES). LIMITS_DOC"""

STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional")
MEMBER_FIELDS = ("status", "email_type", "language", "vip", "location", "tags", "ip_signup")
"""Member fields sent as they are; every other mapped field is a merge field."""
IDENTIFIERS = ("email_address", "email")
KEY_HINT = (
    "check the API key (Profile > Extras > API keys): it ends with the data center "
    "(-us21), which must match base_url (https://us21.api.mailchimp.com)"
)


class MailchimpConfig(HttpConfig):
    """``destinations: {mailchimp: {type: mailchimp, api_key: ..., audience_id: ...}}``."""

    api_key: SecretStr = Field(description="an API key, ending with its data center (-us21)")
    audience_id: str = Field(description="the audience (list) id, Audience > Settings")
    base_url: str = ""
    """Default: ``https://<dc>.api.mailchimp.com``, the data center from the key's suffix."""
    status: str = "subscribed"
    """The status of a member a row creates or updates (a mapped ``status`` wins)."""
    delete_permanently: bool = False
    """Removed rows of a ``mirror``: archive (default, reversible) or delete permanently."""
    max_concurrency: int = Field(default=MAX_CONNECTIONS, ge=1, le=MAX_CONNECTIONS)

    @field_validator("status")
    @classmethod
    def _status(cls, value: str) -> str:
        if value not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        return value


def _caps(**extra: Any) -> Capabilities:
    base = Capabilities(
        operations=frozenset({Operation.UPSERT, Operation.DELETE}),
        max_batch_size=MAX_MEMBERS,
        max_concurrency=MAX_CONNECTIONS,
        max_in_flight=MAX_CONNECTIONS,
        per_record_results=True,
        requires_match=True,
        match=MatchRule.exactly_one(*IDENTIFIERS, example="match: {email_address: email}"),
        bisect=True,
        docs=(API_DOC, BATCH_DOC, ARCHIVE_DOC, SEGMENTS_DOC, LIMITS_DOC),
        cite={
            "max_batch_size": BATCH_DOC,
            "max_in_flight": LIMITS_DOC,
        },
    )
    return replace(base, **extra)


OBJECTS: dict[str, Capabilities] = {
    "members": _caps(),
    "tags": _caps(
        operations=frozenset({Operation.ADD, Operation.REMOVE}),
        kind=RecordKind.MEMBERSHIP,
        max_batch_size=MAX_SEGMENT_EMAILS,
        cite={"max_batch_size": SEGMENTS_DOC, "max_in_flight": LIMITS_DOC},
    ),
}


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: the MD5 of the lower-cased email."""
    return hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()


def problem(body: Any, response: Response) -> str:
    """An RFC 7807 error as ``Mailchimp <title>: <detail>``."""
    if isinstance(body, dict) and (body.get("title") or body.get("detail")):
        return trim(f"Mailchimp {body.get('title', '')}: {body.get('detail', '')}".strip(), 500)
    return f"Mailchimp: {response.describe()}"


read_members = errors_by_field(
    "errors[*]", field="email_address", code="error_code", message="error"
)


def read_batch(call: Call, response: Response, body: Any) -> BatchResult:
    """200 with per-member ``errors``; a 4xx (RFC 7807) refuses the whole request."""
    if 400 <= response.status < 500:
        raise RejectedBatchError(problem(body, response))
    return read_members(call, response, body)


def read_segment(call: Call, response: Response, body: Any) -> BatchResult:
    """``errors[*].email_addresses``: the emails an add or remove did not apply to."""
    if 400 <= response.status < 500:
        raise RejectedBatchError(problem(body, response))
    by_email = {str(i.key).casefold(): p for p, i in enumerate(call.items)}
    result = BatchResult()
    for error in values_at(body, "errors[*]"):
        if not isinstance(error, dict):
            continue
        reason = trim(f"Mailchimp: {error.get('error', error)}", 500)
        for email in error.get("email_addresses") or []:
            position = by_email.get(str(email).casefold())
            if position is not None:
                result.rejected[position] = reason
    return result


def read_archive(call: Call, response: Response, body: Any) -> BatchResult:
    """204: archived. 404: Mailchimp has no such member, so it is already gone."""
    if response.status == 404:
        return BatchResult()
    if 400 <= response.status < 500:
        raise RejectedBatchError(problem(body, response))
    return BatchResult()


ARCHIVE = Endpoint(
    "DELETE", "/3.0/lists/{audience}/members/{key}", per_record=True, read=read_archive,
    ok=frozenset({204}), answers=frozenset({404}),
)  # fmt: skip
DELETE_PERMANENT = Endpoint(
    "POST", "/3.0/lists/{audience}/members/{key}/actions/delete-permanent", per_record=True,
    read=read_archive, ok=frozenset({204}), answers=frozenset({404}),
)  # fmt: skip


class MailchimpDestination(HttpDestination[MailchimpConfig]):
    """Members and tags of one Mailchimp audience."""

    name = "mailchimp"
    vendor = "Mailchimp"
    objects = tuple(OBJECTS)
    fake = "undertow.testing.mailchimp:MailchimpFake"
    docs_url = API_DOC
    capabilities = _caps(
        operations=frozenset({Operation.UPSERT, Operation.DELETE, Operation.ADD, Operation.REMOVE})
    )
    object_capabilities: ClassVar[dict[str, Capabilities]] = OBJECTS
    signals = (SlowDown(),)  # a 429 with no Retry-After documented: the retry backoff waits
    check_path = "/3.0/ping"
    auth_hint = KEY_HINT
    demo = DemoProfile(
        destination="""\
type: mailchimp
api_key: ${FAKE_TOKEN}
audience_id: demo0audience
base_url: ${FAKE_URL}""",
        sync="""\
object: members
mode: mirror
match: {email_address: email}
mappings:
  email_address: email
  FNAME: first_name
  LNAME: last_name
  PLAN: plan
  SEATS: seats
  COUNTRY: country""",
        token="0000demo0local0fake0000000000000-us1",
    )

    def __init__(self, config: Any, *, name: str) -> None:
        super().__init__(config, name=name)
        self._tags: dict[str, str] = {}

    def make_auth(self) -> Auth:
        return BasicAuth("undertow", self.config.api_key.get_secret_value())

    def base_url(self) -> str:
        if self.config.base_url:
            return self.config.base_url
        key = self.config.api_key.get_secret_value()
        dc = key.rsplit("-", 1)[-1] if "-" in key else ""
        # an address that cannot answer: check() and every batch stop with the fix first
        return f"https://{dc}.api.mailchimp.com" if dc.isalnum() else "https://invalid.invalid"

    def _no_data_center(self) -> None:
        if self.base_url() == "https://invalid.invalid":
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (mailchimp): the API key does not end "
                "with its data center (-us21), so the API's address is unknown",
                hint="set base_url: https://<dc>.api.mailchimp.com, or use the full API key",
            )

    async def check(self) -> None:
        self._no_data_center()
        await super().check()

    def capabilities_for(self, object: str | None) -> Capabilities:
        caps = OBJECTS.get(object or "members", self.capabilities)
        return replace(caps, max_concurrency=self.config.max_concurrency)

    @property
    def audience(self) -> str:
        return self.config.audience_id

    # -- shaping ---------------------------------------------------------------------------

    def shape(self, record: dict[str, Any], *, batch: Batch, key: Any, index: int) -> Any:
        email = str(key)
        if batch.object == "tags" or batch.operation is Operation.DELETE:
            return email
        member: dict[str, Any] = {"email_address": email, "status": self.config.status}
        merge: dict[str, Any] = {}
        for name, value in record.items():
            if name in IDENTIFIERS:
                continue
            if name in MEMBER_FIELDS:
                if value is not None:
                    member[name] = value
            elif isinstance(value, list):
                return Reject(
                    f"merge field {name!r} holds a list; Mailchimp merge fields take text, "
                    "numbers, dates or an address (map a text column, or `tags`)"
                )
            else:
                merge[name] = "" if value is None else value
        if member["status"] not in STATUSES:
            return Reject(f"status {member['status']!r} is not one of {', '.join(STATUSES)}")
        if merge:
            member["merge_fields"] = merge
        return member

    # -- write -----------------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> BatchResult:
        object_ = batch.object or "members"
        if object_ not in OBJECTS:
            raise self.unknown_object(batch)
        if batch.operation not in OBJECTS[object_].operations:
            raise FatalDeliveryError(
                f"sync {batch.sync!r}: destination {self.instance_name!r} (mailchimp) cannot "
                f"{batch.operation.value} {object_}",
                hint="members take upsert and mirror; tags take add, remove and mirror",
            )
        self._no_data_center()
        field = self.match_field(batch)
        result = BatchResult()
        items = self.items(batch, field, result)
        if not items:
            return result
        call = Call(batch, items, object_, field, self.vendor)
        if object_ == "tags":
            await self._tag(call, result)
        elif batch.operation is Operation.DELETE:
            base = DELETE_PERMANENT if self.config.delete_permanently else ARCHIVE
            endpoint = replace(base, path=base.path.replace("{audience}", self.audience))
            for item in items:
                item.key = subscriber_hash(str(item.key))
            await self._per_record(endpoint, call, result)
        else:
            endpoint = Endpoint(
                "POST", f"/3.0/lists/{self.audience}",
                body=envelope("members", update_existing=True),
                read=read_batch, ok=frozenset({200}),
            )  # fmt: skip
            await self.deliver_call(endpoint, call, result)
        return result

    async def _tag(self, call: Call, result: BatchResult) -> None:
        side = "members_to_add" if call.batch.operation is Operation.ADD else "members_to_remove"
        for tag, members in by_list(call.items, "tag", result, vendor="Mailchimp").items():
            segment = await self._segment(tag, create=call.batch.operation is Operation.ADD)
            if segment is None:  # no such tag: nobody has it, so nobody needs removing
                continue
            endpoint = Endpoint(
                "POST", f"/3.0/lists/{self.audience}/segments/{segment}",
                body=envelope(side), read=read_segment,
                ok=frozenset({200}),
            )  # fmt: skip
            for part in chunks(members, MAX_SEGMENT_EMAILS):
                await self.deliver_call(endpoint, call.subset(part), result)

    async def _segment(self, tag: str, *, create: bool) -> str | None:
        """The id of the static segment named ``tag`` (created when adding), cached."""
        if tag in self._tags:
            return self._tags[tag]
        path = f"/3.0/lists/{self.audience}/segments"
        offset = 0
        while True:
            params = {"type": "static", "count": "1000", "offset": str(offset)}
            response = await self.send("GET", path, params=params, expect=frozenset({200}))
            body = parse_json(response)
            if response.status != 200 or not isinstance(body, dict):
                raise FatalDeliveryError(
                    f"destination {self.instance_name!r} (mailchimp): cannot list the tags "
                    f"of audience {self.audience!r}: {problem(body, response)}",
                    hint="check audience_id (Audience > Settings > Audience name and defaults)",
                )
            segments = list(values_at(body, "segments[*]"))
            for segment in segments:
                if isinstance(segment, dict) and segment.get("name") == tag:
                    self._tags[tag] = str(segment["id"])
                    return self._tags[tag]
            offset += len(segments)
            if not segments or offset >= int(first_at(body, "total_items") or 0):
                break
        if not create:
            return None
        response = await self.send(
            "POST", path, json={"name": tag, "static_segment": []}, expect=frozenset({200})
        )
        body = parse_json(response)
        if response.status != 200 or not isinstance(body, dict) or "id" not in body:
            raise FatalDeliveryError(
                f"destination {self.instance_name!r} (mailchimp): cannot create tag {tag!r}: "
                f"{problem(body, response)}",
                hint="check the tag name (at most 100 characters) and the key's access",
            )
        self._tags[tag] = str(body["id"])
        return self._tags[tag]


__all__ = ["MailchimpConfig", "MailchimpDestination", "subscriber_hash"]
