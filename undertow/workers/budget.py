"""Rate budgets shared by every process and machine, kept in Redis.

:class:`RedisBudget` implements :class:`~undertow.destinations.rate.RateBudget` with the
same exact rule as the in-process :class:`~undertow.destinations.rate.LocalBudget`: a
request holds a place in every window from the moment it starts until ``per_seconds`` after
its answer arrived, and a request starts only while fewer than ``requests`` places are held.
So whatever the latency and however many workers send, the vendor never sees more than
``requests`` arrivals in any rolling ``per_seconds`` on the account.

Each decision is one Lua script (atomic in Redis; Redis's own clock, so machines whose
clocks disagree still agree on the window), per account::

    <prefix>:budget:<account>:inflight   sorted set: permit -> lease deadline
    <prefix>:budget:<account>:w<secs>    sorted set: finished permit -> answer time
    <prefix>:budget:<account>:pause      hash: until, reason (the vendor said slow down)
    <prefix>:budget:<account>:allow      hash: left, until (the vendor's own count)

A permit whose process died is reaped when its lease runs out (``lease``, 120 s: longer than
a request may take) and counted as answered then, so a kill -9 costs the account at most its
in-flight places for that long, never an overspend. ``acquire`` waits the exact time the
script says (or polls every 20 ms while every place is held by a request in flight).

Why a script and not a library: the rate-limit libraries of the field (``limits``'
moving window, ``pyrate-limiter``) count a request when it starts; none holds its place
until its answer, caps requests in flight, or pauses an account for a vendor's Retry-After,
which the interface needs. The script is one round trip per acquire and per release
(``bench/budget.py`` measures it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from undertow.destinations.base import RateLimit
from undertow.destinations.rate import Interrupted, Permit, RateBudget, WaitTooLong, pause
from undertow.errors import RetryableError

LEASE_SECONDS = 120.0
POLL_SECONDS = 0.02

# KEYS: inflight, pause, allow, window keys...; ARGV: now-offset unused, permit, lease,
# max_in_flight (0: none), then per window: limit, seconds
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local inflight, pausek, allowk = KEYS[1], KEYS[2], KEYS[3]
local permit, lease, maxin = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local nw = #KEYS - 3
-- reap permits whose holder died: answered at their deadline, for every window
local dead = redis.call('ZRANGEBYSCORE', inflight, '-inf', now)
for _, member in ipairs(dead) do
  redis.call('ZREM', inflight, member)
  for i = 1, nw do redis.call('ZADD', KEYS[3 + i], now, member) end
end
local until_ = tonumber(redis.call('HGET', pausek, 'until') or '0')
if until_ > now then
  return {tostring(until_ - now), redis.call('HGET', pausek, 'reason') or 'paused'}
end
local busy = redis.call('ZCARD', inflight)
local wait, reason = 0, ''
if maxin > 0 and busy >= maxin then
  wait, reason = -1, maxin .. ' requests in flight'
end
for i = 1, nw do
  local key = KEYS[3 + i]
  local limit, secs = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - secs)
  local ends = redis.call('ZCARD', key)
  if busy + ends >= limit then
    local why = limit .. ' requests per ' .. secs .. ' s'
    if busy >= limit then
      if wait == 0 then wait, reason = -1, why end
    else
      local first = redis.call('ZRANGE', key, busy + ends - limit, busy + ends - limit, 'WITHSCORES')
      local free = tonumber(first[2]) + secs - now
      if wait ~= -1 and free > wait then wait, reason = free, why end
    end
  end
end
local left = redis.call('HGET', allowk, 'left')
if left then
  local auntil = tonumber(redis.call('HGET', allowk, 'until'))
  if auntil <= now then
    redis.call('DEL', allowk)
    left = nil
  elseif tonumber(left) <= 0 and wait ~= -1 and auntil - now > wait then
    wait, reason = auntil - now, 'the vendor said its remaining requests are used up'
  end
end
if wait ~= 0 then return {tostring(wait), reason} end
redis.call('ZADD', inflight, now + lease, permit)
redis.call('EXPIRE', inflight, math.ceil(lease) + 60)
if left then redis.call('HINCRBY', allowk, 'left', -1) end
return {'0', tostring(now)}
"""

# KEYS: inflight, window keys...; ARGV: permit, then per window: seconds
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('EXPIRE', KEYS[i], math.ceil(tonumber(ARGV[i])) + 60)
end
return 1
"""

# KEYS: pause; ARGV: seconds, reason
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local until_ = now + tonumber(ARGV[1])
if until_ > tonumber(redis.call('HGET', KEYS[1], 'until') or '0') then
  redis.call('HSET', KEYS[1], 'until', tostring(until_), 'reason', ARGV[2])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
end
return 1
"""

# KEYS: allow, inflight; ARGV: remaining, reset_in
_OBSERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local left = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[2])
local cur = redis.call('HGET', KEYS[1], 'left')
local cur_until = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if (not cur) or left < tonumber(cur) or now >= cur_until then
  redis.call('HSET', KEYS[1], 'left', left, 'until', tostring(now + tonumber(ARGV[2])))
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
end
return 1
"""


class RedisBudget(RateBudget):
    """One destination account's budget in Redis (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        key: str,
        limits: Sequence[RateLimit] = (),
        *,
        max_in_flight: int | None = None,
        prefix: str = "undertow",
        lease: float = LEASE_SECONDS,
    ) -> None:
        self.client = client
        self.key = key
        self.base = f"{prefix}:budget:{key}"
        self.limits: dict[float, int] = {}
        for limit in limits:
            self._add(limit)
        self.max_in_flight = max_in_flight
        self.lease = lease
        self.started = 0
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._penalize = client.register_script(_PENALIZE)
        self._observe = client.register_script(_OBSERVE)

    def _add(self, limit: RateLimit) -> None:
        seconds = float(limit.per_seconds)
        have = self.limits.get(seconds)
        self.limits[seconds] = limit.requests if have is None else min(have, limit.requests)

    def _windows(self) -> list[tuple[str, int, float]]:
        return [(f"{self.base}:w{s:g}", n, s) for s, n in sorted(self.limits.items())]

    def tighten(self, limits: Sequence[RateLimit], max_in_flight: int | None) -> None:
        for limit in limits:
            self._add(limit)
        if max_in_flight is not None:
            self.max_in_flight = min(self.max_in_flight or max_in_flight, max_in_flight)

    def _try(self, permit: str) -> tuple[float, str]:
        windows = self._windows()
        keys = [f"{self.base}:inflight", f"{self.base}:pause", f"{self.base}:allow"]
        keys += [k for k, _, _ in windows]
        args: list[Any] = [permit, self.lease, self.max_in_flight or 0]
        for _, n, s in windows:
            args += [n, s]
        wait, reason = self._acquire(keys=keys, args=args)
        return float(wait), reason.decode() if isinstance(reason, bytes) else str(reason)

    async def acquire(
        self, *, stop: asyncio.Event | None = None, max_wait: float | None = None
    ) -> Permit:
        permit = uuid.uuid4().hex
        while True:
            if stop is not None and stop.is_set():
                raise Interrupted
            try:
                wait, reason = await asyncio.to_thread(self._try, permit)
            except Exception as exc:  # redis.exceptions.RedisError and socket errors
                raise _unreachable(self.client, exc) from exc
            if wait == 0:
                self.started += 1
                return Permit(started=time.monotonic(), token=permit)
            if wait > 0 and max_wait is not None and wait > max_wait:
                raise WaitTooLong(wait, reason)
            await pause(wait if wait > 0 else POLL_SECONDS, stop)

    async def release(self, permit: Permit) -> None:
        windows = self._windows()
        keys = [f"{self.base}:inflight"] + [k for k, _, _ in windows]
        args = [str(permit.token)] + [s for _, _, s in windows]
        await asyncio.to_thread(self._release, keys=keys, args=args)

    async def penalize(self, seconds: float, reason: str = "the vendor asked to slow down") -> None:
        await asyncio.to_thread(
            self._penalize, keys=[f"{self.base}:pause"], args=[max(0.0, seconds), reason]
        )

    async def observe(self, *, remaining: int, reset_in: float) -> None:
        await asyncio.to_thread(
            self._observe,
            keys=[f"{self.base}:allow", f"{self.base}:inflight"],
            args=[remaining, max(0.0, reset_in)],
        )


def _unreachable(client: Any, exc: BaseException) -> RetryableError:
    from undertow.redact import redact_url

    where = client.connection_pool.connection_kwargs
    url = f"redis://{where.get('host', '?')}:{where.get('port', '?')}/{where.get('db', 0)}"
    return RetryableError(
        f"the shared rate budget at {redact_url(url)} is unreachable ({type(exc).__name__}: "
        f"{exc}): no request is sent without it",
        hint="start Redis or fix `executor.rate_budget` (or the Redis broker); the batch is "
        "retried with backoff",
    )


_installed: str | None = None


def install(url: str | None, *, prefix: str) -> None:
    """Make this process's budgets Redis budgets at ``url`` (None: back to in-process)."""
    global _installed
    from undertow.destinations.rate import set_budget_factory

    marker = f"{url}|{prefix}" if url else None
    if marker == _installed:
        return
    _installed = marker
    if url is None:
        set_budget_factory(None)
        return
    try:
        import redis
    except ModuleNotFoundError as exc:  # pragma: no cover - redis is a dependency
        from undertow.errors import UndertowError

        raise UndertowError(
            "shared rate budgets need redis-py", hint='pip install "undertow[cluster]"'
        ) from exc
    client = redis.Redis.from_url(url, socket_timeout=10, health_check_interval=30)

    def factory(key: str, limits: Sequence[RateLimit], max_in_flight: int | None) -> RateBudget:
        return RedisBudget(client, key, limits, max_in_flight=max_in_flight, prefix=prefix)

    set_budget_factory(factory)
