"""Circuit breaker whose state lives in Redis, so every worker process shares one view.

Closed
    Every call goes through. Outcomes land in a sliding window of ``buckets`` time buckets
    covering ``window_s`` seconds (a ring of counters in one Redis hash, read on Redis' own
    clock). Once the window holds at least ``min_calls`` calls, the breaker opens when the
    share of failures reaches ``failure_rate`` or the share of calls slower than ``slow_call_s``
    reaches ``slow_call_rate``: a *rate*, so a PSP failing one call in three for a busy minute
    trips it while a single unlucky streak on a quiet one does not.
Open
    ``allow()`` refuses at once with :class:`CircuitOpen` (and a retry-after) for ``open_s``.
Half-open
    After the open period at most ``half_open_probes`` calls are let through as probes (the
    permit count is taken atomically in Lua, so fifty workers asking at once get exactly that
    many). The probes vote: ``probe_successes`` successes close the breaker with an empty
    window; as soon as failed or slow probes make that impossible it opens again (with the
    defaults, 2 of 3: one unlucky probe against a PSP that fails now and then does not send
    everybody back to waiting, two do). A round whose probes never report (the worker died
    mid-call) is abandoned after ``probe_timeout_s`` and a new round starts.

Each transition bumps a generation number that every permit carries; an outcome reported
under an older generation (a call that started before the breaker opened, a probe of an
abandoned round) changes nothing. Every decision is one Lua script, so no read-then-write
race between workers can let an extra probe through or lose a transition.

When Redis itself cannot be asked, the breaker *fails open* (the call proceeds, untracked) and
counts it: the breaker protects the PSP, it must not become the outage.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from infra.redis import lua_with_now

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000

# Shared by every script: KEYS[1] = the breaker's hash; time comes from Redis (TIME).
# Hash fields: st (closed|open|half_open), gen, until (open until, us), hsince (half-open round
# start, us), probes (permits handed out this round), ok / bad (probe successes / failures),
# and the window ring t<i>/c<i>/f<i>/s<i> (bucket number, calls, failures, slow calls).

# The calls, failures and slow calls in the live buckets of the window ring of ``key``.
_WINDOW_SUMS_LUA = """
local function window_sums(key, n, bucket)
  local calls, failures, slows = 0, 0, 0
  for j = 0, n - 1 do
    local v = redis.call('HMGET', key, 't' .. j, 'c' .. j, 'f' .. j, 's' .. j)
    local b = tonumber(v[1])
    if b ~= nil and b > bucket - n then
      calls = calls + (tonumber(v[2]) or 0)
      failures = failures + (tonumber(v[3]) or 0)
      slows = slows + (tonumber(v[4]) or 0)
    end
  end
  return calls, failures, slows
end
"""


def _script(body: str) -> str:
    """A breaker script: ``now`` (the Redis clock, in us) and ``window_sums`` come first."""
    return lua_with_now(_WINDOW_SUMS_LUA + body)


# ARGV: max_probes, probe_timeout_us, ttl_ms
# -> {allowed 0|1, gen, probe 0|1, retry_after_us, state}
_ALLOW_LUA = _script("""
local key = KEYS[1]
local max_probes = tonumber(ARGV[1])
local probe_timeout = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])
local f = redis.call('HMGET', key, 'st', 'gen', 'until', 'hsince', 'probes')
local state = f[1] or 'closed'
local gen = tonumber(f[2]) or 0
if state == 'closed' then
  return {1, gen, 0, 0, 'closed'}
end
if state == 'open' then
  local open_until = tonumber(f[3]) or 0
  if now < open_until then
    return {0, gen, 0, open_until - now, 'open'}
  end
  gen = gen + 1
  redis.call('HSET', key, 'st', 'half_open', 'gen', gen, 'hsince', now, 'probes', 1, 'ok', 0,
    'bad', 0)
  redis.call('PEXPIRE', key, ttl_ms)
  return {1, gen, 1, 0, 'half_open'}
end
local since = tonumber(f[4]) or now
local probes = tonumber(f[5]) or 0
if now - since >= probe_timeout then
  gen = gen + 1
  redis.call('HSET', key, 'gen', gen, 'hsince', now, 'probes', 1, 'ok', 0, 'bad', 0)
  redis.call('PEXPIRE', key, ttl_ms)
  return {1, gen, 1, 0, 'half_open'}
end
if probes < max_probes then
  redis.call('HINCRBY', key, 'probes', 1)
  return {1, gen, 1, 0, 'half_open'}
end
return {0, gen, 0, since + probe_timeout - now, 'half_open'}
""")

# ARGV: gen, probe 0|1, kind (outcome|release), failed 0|1, slow 0|1, bucket_us, buckets,
#       min_calls, failure_rate, slow_call_rate, open_us, probe_successes, ttl_ms, max_probes
# -> {state, transitioned 0|1}
_RECORD_LUA = _script("""
local key = KEYS[1]
local gen = tonumber(ARGV[1])
local probe = ARGV[2] == '1'
local kind = ARGV[3]
local failed = ARGV[4] == '1'
local slow = ARGV[5] == '1'
local bucket_us = tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local min_calls = tonumber(ARGV[8])
local failure_rate = tonumber(ARGV[9])
local slow_rate = tonumber(ARGV[10])
local open_us = tonumber(ARGV[11])
local to_close = tonumber(ARGV[12])
local ttl_ms = tonumber(ARGV[13])
local max_probes = tonumber(ARGV[14])
local f = redis.call('HMGET', key, 'st', 'gen')
local state = f[1] or 'closed'
local cur = tonumber(f[2]) or 0
if gen ~= cur then
  return {state, 0}
end

local function become(new_state, extra)
  cur = cur + 1
  redis.call('DEL', key)
  redis.call('HSET', key, 'st', new_state, 'gen', cur, unpack(extra))
  redis.call('PEXPIRE', key, ttl_ms)
  return {new_state, 1}
end

if state == 'half_open' then
  if not probe then
    return {state, 0}
  end
  if kind == 'release' then
    if tonumber(redis.call('HINCRBY', key, 'probes', -1)) < 0 then
      redis.call('HSET', key, 'probes', 0)
    end
    return {state, 0}
  end
  if failed or slow then
    if redis.call('HINCRBY', key, 'bad', 1) > max_probes - to_close then
      return become('open', {'until', now + open_us})
    end
    return {state, 0}
  end
  if redis.call('HINCRBY', key, 'ok', 1) >= to_close then
    return become('closed', {})
  end
  return {state, 0}
end
if state ~= 'closed' or kind == 'release' then
  return {state, 0}
end

local bucket = math.floor(now / bucket_us)
local i = bucket % n
if tonumber(redis.call('HGET', key, 't' .. i)) ~= bucket then
  redis.call('HSET', key, 't' .. i, bucket, 'c' .. i, 0, 'f' .. i, 0, 's' .. i, 0)
end
redis.call('HINCRBY', key, 'c' .. i, 1)
if failed then redis.call('HINCRBY', key, 'f' .. i, 1) end
if slow then redis.call('HINCRBY', key, 's' .. i, 1) end
redis.call('PEXPIRE', key, ttl_ms)

local calls, failures, slows = window_sums(key, n, bucket)
if calls >= min_calls and (failures >= failure_rate * calls or slows >= slow_rate * calls) then
  return become('open', {'until', now + open_us})
end
return {state, 0}
""")

# ARGV: bucket_us, buckets -> {state, open_for_us, calls, failures, slows}
_SNAPSHOT_LUA = _script("""
local key = KEYS[1]
local bucket_us = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local f = redis.call('HMGET', key, 'st', 'until')
local state = f[1] or 'closed'
local open_for = 0
if state == 'open' then
  open_for = (tonumber(f[2]) or 0) - now
  if open_for <= 0 then
    state = 'half_open'
    open_for = 0
  end
end
local bucket = math.floor(now / bucket_us)
local calls, failures, slows = window_sums(key, n, bucket)
return {state, open_for, calls, failures, slows}
""")

# ARGV: ttl_ms. Closed with an empty window, under a new generation so no permit handed out
# before the reset can count after it.
_RESET_LUA = """
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'st', 'closed', 'gen', gen + 1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return gen + 1
"""


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}

BREAKER_STATE = Gauge(
    "tradeflow_circuit_breaker_state",
    "Circuit breaker state as this process last saw it: 0 closed, 1 open, 2 half-open.",
    ["breaker"],
)
BREAKER_REFUSED = Counter(
    "tradeflow_circuit_breaker_refused_total",
    "Calls refused without being made because the breaker was open (or out of probes).",
    ["breaker"],
)
BREAKER_FAIL_OPEN = Counter(
    "tradeflow_circuit_breaker_fail_open_total",
    "Calls let through untracked because Redis could not be asked.",
    ["breaker"],
)


@dataclass(frozen=True)
class BreakerConfig:
    window_s: float = 10.0
    """Length of the sliding window the rates are computed over."""
    buckets: int = 10
    """Time buckets in the window; old buckets drop out one at a time."""
    min_calls: int = 50
    """No verdict on fewer calls than this in the window. Small samples lie: at 20 calls a
    PSP failing 30 % of the time shows >= 50 % failures in 7 % of fresh windows, at 50 in 0.3 %."""
    failure_rate: float = 0.5
    """Share of failed calls (0..1] that opens the breaker."""
    slow_call_s: float = 2.0
    """A call taking at least this long is slow, whether it succeeded or not."""
    slow_call_rate: float = 0.8
    """Share of slow calls (0..1] that opens the breaker."""
    open_s: float = 5.0
    """How long an open breaker refuses everything before it lets probes through."""
    half_open_probes: int = 3
    """Calls let through at once while half-open."""
    probe_successes: int = 2
    """Successful probes needed to close again (at most ``half_open_probes``); more than
    ``half_open_probes - probe_successes`` failed probes open it again."""
    probe_timeout_s: float = 10.0
    """A half-open round whose probes have not all reported by then is started afresh."""

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.buckets < 1:
            raise ValueError("window_s must be > 0 and buckets >= 1")
        if self.min_calls < 1:
            raise ValueError("min_calls must be >= 1")
        for name in ("failure_rate", "slow_call_rate"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within (0, 1]")
        if self.slow_call_s <= 0 or self.open_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("slow_call_s, open_s and probe_timeout_s must be > 0")
        if not 1 <= self.probe_successes <= self.half_open_probes:
            raise ValueError("need 1 <= probe_successes <= half_open_probes")

    @property
    def bucket_us(self) -> int:
        return max(1, round(self.window_s * 1_000_000 / self.buckets))


class CircuitOpen(Exception):
    """The breaker refused the call without making it."""

    def __init__(self, name: str, state: BreakerState, retry_after_s: float) -> None:
        super().__init__(f"circuit {name!r} is {state.value}; retry in {retry_after_s:.3f}s")
        self.name = name
        self.state = state
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; hand it back to :meth:`CircuitBreaker.record`."""

    generation: int
    probe: bool
    """True for a half-open probe, whose outcome decides the breaker's next state."""
    tracked: bool = True
    """False when Redis could not be asked and the call went ahead unrecorded."""


@dataclass(frozen=True)
class BreakerSnapshot:
    state: BreakerState
    open_for_s: float
    """Time left in the open state; 0 unless open."""
    calls: int
    failures: int
    slow_calls: int
    """Counts in the current window (empty right after a transition)."""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CircuitBreaker:
    """One named breaker (e.g. ``psp``) shared through Redis by every process that builds it."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        name: str,
        config: BreakerConfig | None = None,
        prefix: str = "breaker",
        fail_open: bool = True,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self.key = f"{prefix}:{name}"
        self._fail_open = fail_open
        self._allow = redis.register_script(_ALLOW_LUA)
        self._record = redis.register_script(_RECORD_LUA)
        self._snapshot = redis.register_script(_SNAPSHOT_LUA)
        self._reset = redis.register_script(_RESET_LUA)

    def _ttl_ms(self) -> int:
        c = self.config
        return max(DAY_MS, round(10_000 * max(c.window_s, c.open_s, c.probe_timeout_s)))

    def _seen(self, state: BreakerState) -> BreakerState:
        BREAKER_STATE.labels(self.name).set(_STATE_VALUE[state])
        return state

    async def allow(self) -> Permit:
        """A permit for one call, or :class:`CircuitOpen` when the breaker refuses it."""
        c = self.config
        try:
            allowed, gen, probe, retry_us, state = await self._allow(
                keys=[self.key],
                args=[c.half_open_probes, round(c.probe_timeout_s * 1_000_000), self._ttl_ms()],
            )
        except RedisError as exc:
            if not self._fail_open:
                raise
            BREAKER_FAIL_OPEN.labels(self.name).inc()
            log.warning(
                "breaker %s: redis unavailable, letting the call through: %r", self.name, exc
            )
            return Permit(generation=-1, probe=False, tracked=False)
        seen = self._seen(BreakerState(_text(state)))
        if not int(allowed):
            BREAKER_REFUSED.labels(self.name).inc()
            raise CircuitOpen(self.name, seen, max(int(retry_us), 1) / 1_000_000)
        return Permit(generation=int(gen), probe=bool(int(probe)))

    async def record(
        self, permit: Permit, *, failed: bool, duration_s: float
    ) -> BreakerState | None:
        """Report how the permitted call went. Returns the state after it (None if untracked).

        ``failed`` means the dependency is unwell (5xx, timeout, connection refused); a
        business refusal such as a declined card is a success. A call of ``slow_call_s`` or
        more is also counted as slow.
        """
        slow = duration_s >= self.config.slow_call_s
        return await self._send(permit, "outcome", failed=failed, slow=slow)

    async def release(self, permit: Permit) -> None:
        """Hand back a permit whose call was not made (e.g. a rate limiter refused it), so a
        half-open probe slot is not held until the probe timeout."""
        await self._send(permit, "release", failed=False, slow=False)

    async def _send(
        self, permit: Permit, kind: str, *, failed: bool, slow: bool
    ) -> BreakerState | None:
        if not permit.tracked:
            return None
        c = self.config
        try:
            state, _changed = await self._record(
                keys=[self.key],
                args=[
                    permit.generation,
                    int(permit.probe),
                    kind,
                    int(failed),
                    int(slow),
                    c.bucket_us,
                    c.buckets,
                    c.min_calls,
                    repr(c.failure_rate),
                    repr(c.slow_call_rate),
                    round(c.open_s * 1_000_000),
                    c.probe_successes,
                    self._ttl_ms(),
                    c.half_open_probes,
                ],
            )
        except RedisError as exc:
            if not self._fail_open:
                raise
            log.warning("breaker %s: redis unavailable, outcome not recorded: %r", self.name, exc)
            return None
        after = self._seen(BreakerState(_text(state)))
        if int(_changed):
            log.warning("breaker %s is now %s", self.name, after.value)
        return after

    async def snapshot(self) -> BreakerSnapshot:
        """The shared state and window counts now (an open breaker past its open period reads
        as half-open: the next call will be a probe)."""
        c = self.config
        state, open_for_us, calls, failures, slows = await self._snapshot(
            keys=[self.key], args=[c.bucket_us, c.buckets]
        )
        return BreakerSnapshot(
            state=self._seen(BreakerState(_text(state))),
            open_for_s=max(0, int(open_for_us)) / 1_000_000,
            calls=int(calls),
            failures=int(failures),
            slow_calls=int(slows),
        )

    async def state(self) -> BreakerState:
        return (await self.snapshot()).state

    async def reset(self) -> None:
        """Forget everything: closed, empty window (operators, tests)."""
        await self._reset(keys=[self.key], args=[self._ttl_ms()])
        self._seen(BreakerState.CLOSED)
