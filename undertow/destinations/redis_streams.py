"""Redis Streams destination: XADD each record (or batch) with an id derived from the run.

    destinations:
      events: {type: redis_streams, url: "redis://host:6379/0", stream: "users:{plan}"}

Each entry has the fields ``data`` (the JSON message: sync, operation, key, record),
``id`` (the record's stable id ``<run>-<batch>:<key>``), ``operation`` and ``batch``.

**Entry ids are derived from the run and the record**, so a resend cannot add an entry
twice: ``<base>-<batch * 1,000,000 + n>``, where ``base`` is a millisecond time chosen once
per run and stream (above both the server clock and the stream's last id) and kept in the
hash ``<stream>:undertow:runs`` (field: run id, 30 days), and ``n`` the message's place in its
batch. A run's batches go out in order, one at a time, so its ids only grow; when a batch is
sent again (after a kill -9, a lost reply), Redis answers that an id is not above the
stream's top for the entries it already holds, which counts them as delivered: no
duplicates. The price: the stream must be written only by this sync (another producer's
newer ids would make every later XADD fail; the run then stops, saying so).
https://redis.io/docs/latest/commands/xadd/#specifying-a-stream-id-as-an-argument

A record is accepted once Redis answered its XADD (with ``appendonly`` off, an entry can
still be lost if the server restarts: Redis persistence is the server's setting).
``maxlen`` trims the stream approximately (``MAXLEN ~``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from undertow.destinations._queue import (
    Message,
    Outcome,
    QueueConfig,
    QueueDestination,
    Refused,
    Unconfirmed,
)
from undertow.destinations.base import Batch, DestinationConfig
from undertow.errors import FatalDeliveryError, RetryableError
from undertow.redact import redact, register_secret
from undertow.sources.base import missing_driver

if TYPE_CHECKING:
    import redis.asyncio

XADD_DOC = "https://redis.io/docs/latest/commands/xadd/"
SEQ_SPAN = 1_000_000
"""Entry ids of batch N use sequence numbers N * SEQ_SPAN + n (batches hold at most 10,000)."""
RUNS_TTL = 30 * 24 * 3600

# base = the run's id time in ms for this stream: set once, above the clock and the top id
_BASE = """
local base = redis.call('HGET', KEYS[1], ARGV[1])
if base then return base end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local top = 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      top = tonumber(string.match(info[i + 1], '^(%d+)')) + 1
    end
  end
end
if top > now then now = top end
redis.call('HSET', KEYS[1], ARGV[1], now)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return tostring(now)
"""
_NOT_ABOVE_TOP = "equal or smaller than the target stream top item"


class RedisStreamsConfig(QueueConfig):
    type: Literal["redis_streams"] = "redis_streams"
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    """``redis://[user:password@]host:6379/db`` (``rediss://`` for TLS)."""
    stream: str
    """The stream key; a template over ``{operation}``, ``{sync}`` and the record's fields."""
    maxlen: int | None = Field(default=None, ge=1)
    """Trim the stream to about this many entries (``MAXLEN ~``)."""

    @field_validator("url")
    @classmethod
    def _redis(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("`url` must start with redis://, rediss:// or unix://")
        return value


def _redis() -> Any:
    try:
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_driver("redis", "redis") from exc
    return redis


class RedisStreamsDestination(QueueDestination[RedisStreamsConfig]):
    """Append each record (or batch) to a Redis stream, with ids that make resends no-ops."""

    name: ClassVar[str] = "redis_streams"
    address_key: ClassVar[str] = "stream"
    verb: ClassVar[str] = "XADD"
    concurrency: ClassVar[int] = 1  # ids must grow in the order batches are sent
    deduplicates: ClassVar[bool] = True
    docs_url: ClassVar[str | None] = XADD_DOC

    def __init__(self, config: DestinationConfig, *, name: str) -> None:
        super().__init__(config, name=name)
        parts = urlsplit(self.config.url.get_secret_value())
        register_secret(parts.password)
        self._host = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        self._db = parts.path.lstrip("/") or "0"
        self._client: redis.asyncio.Redis | None = None
        self._bases: dict[tuple[str, str], int] = {}
        self._script: Any = None

    def endpoint(self) -> str:
        return f"redis://{self._host}/{self._db}"

    def where(self) -> str:
        return f"redis_streams destination {self.instance_name!r} ({self.endpoint()})"

    def _fail(self, exc: Exception, doing: str) -> Exception:
        redis = _redis()
        text = redact(str(exc) or type(exc).__name__)
        if isinstance(exc, redis.exceptions.AuthenticationError) or "NOAUTH" in text:
            return FatalDeliveryError(
                f"{self.where()}: Redis refused the credentials ({text})",
                hint="check the user and password in `url`",
            )
        if isinstance(exc, redis.exceptions.NoPermissionError):
            return FatalDeliveryError(
                f"{self.where()}: the user may not {doing} ({text})",
                hint="grant the ACL user +xadd +hset +hget +eval on the stream keys",
            )
        return RetryableError(
            f"{self.where()}: {doing} failed ({text})",
            hint="check `url` and that Redis is running; the batch is sent again",
        )

    async def _connect(self) -> redis.asyncio.Redis:
        if self._client is None:
            redis = _redis()
            self._client = redis.asyncio.Redis.from_url(
                self.config.url.get_secret_value(),
                socket_timeout=self.config.timeout,
                socket_connect_timeout=self.config.timeout,
            )
            self._script = self._client.register_script(_BASE)
        return self._client

    async def open(self) -> None:
        await self._connect()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client = None

    async def check(self) -> None:
        redis = _redis()
        client = await self._connect()
        try:
            await client.ping()
            if self.address.static:
                kind = await client.type(self.address.template)
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                if kind not in ("none", "stream"):
                    raise FatalDeliveryError(
                        f"{self.where()}: key {self.address.template!r} holds a {kind}, not a "
                        "stream",
                        hint="choose another `stream` key",
                    )
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc, "connecting") from None

    async def _base(self, client: Any, stream: str, run: str) -> int:
        found = self._bases.get((stream, run))
        if found is None:
            value = await self._script(
                keys=[f"{stream}:undertow:runs", stream], args=[run, RUNS_TTL]
            )
            found = self._bases[(stream, run)] = int(value)
        return found

    async def publish(self, batch: Batch, messages: list[Message]) -> list[Outcome]:
        redis = _redis()
        client = await self._connect()
        run = batch.run_id or batch.idempotency_key.rsplit("-", 1)[0]
        maxlen = self.config.maxlen
        try:
            bases = {
                stream: await self._base(client, stream, run)
                for stream in dict.fromkeys(m.address for m in messages)
            }
            entries = [
                f"{bases[m.address]}-{batch.number * SEQ_SPAN + n}" for n, m in enumerate(messages)
            ]
            pipe = client.pipeline(transaction=False)
            for message, entry in zip(messages, entries, strict=True):
                fields = {
                    "data": message.body,
                    "id": message.id,
                    "operation": batch.operation.value,
                    "batch": str(batch.number),
                }
                pipe.xadd(
                    message.address,
                    fields,  # type: ignore[arg-type]
                    id=entry,
                    maxlen=maxlen,
                    approximate=True,
                )
            replies = await pipe.execute(raise_on_error=False)
        except redis.exceptions.RedisError as exc:
            await self.close()
            raise self._fail(exc, f"XADD of batch {batch.number}") from None
        resent = [
            n
            for n, r in enumerate(replies)
            if isinstance(r, Exception) and _NOT_ABOVE_TOP in str(r)
        ]
        try:
            present = await self._present(client, [(n, messages[n], entries[n]) for n in resent])
        except redis.exceptions.RedisError as exc:
            await self.close()
            raise self._fail(exc, f"reading back batch {batch.number}") from None
        outcomes: list[Outcome] = []
        for n, (message, reply) in enumerate(zip(messages, replies, strict=True)):
            if not isinstance(reply, Exception):
                outcomes.append(None)
                continue
            text = str(reply)
            if _NOT_ABOVE_TOP in text:
                if n not in present:
                    raise FatalDeliveryError(
                        f"{self.where()}: stream {message.address!r} has entries newer than "
                        f"this run's ids ({entries[n]}) that Undertow did not write: another "
                        "producer writes to it",
                        hint="give the sync a stream of its own (ids are derived from the run "
                        "so that a resend adds nothing)",
                    )
                outcomes.append(None)  # sent before (same run, same id): already there
            elif "WRONGTYPE" in text:
                raise FatalDeliveryError(
                    f"{self.where()}: key {message.address!r} holds another type, not a stream",
                    hint="choose another `stream` key",
                )
            elif "OOM" in text or "LOADING" in text or "BUSY" in text:
                outcomes.append(Unconfirmed(f"Redis could not add the entry: {redact(text)}"))
            else:
                outcomes.append(Refused(f"Redis refused the entry: {redact(text)}"))
        return outcomes

    async def _present(self, client: Any, wanted: list[tuple[int, Message, str]]) -> set[int]:
        """Of the entries Redis would not add (id not above the top), those already there
        with this record's id (sent before by this run), by position in the batch."""
        if not wanted:
            return set()
        pipe = client.pipeline(transaction=False)
        for _, message, entry in wanted:
            pipe.xrange(message.address, min=entry, max=entry, count=1)
        found = await pipe.execute()
        present: set[int] = set()
        for (n, message, _), rows in zip(wanted, found, strict=True):
            fields = rows[0][1] if rows else {}
            value = fields.get(b"id") or fields.get("id")
            if (value.decode() if isinstance(value, bytes) else value) == message.id:
                present.add(n)
        return present
