"""GCRA rate limiter (a token bucket without a refill job), one Redis Lua script per decision.

The Generic Cell Rate Algorithm keeps a single number per key, the *theoretical arrival time*
(TAT): the moment the bucket would be full again. A request of ``cost`` tokens moves the TAT
``cost`` emission intervals into the future; it is refused while that would put the TAT more
than ``burst`` intervals ahead of now. The script reads the clock with ``redis.call('TIME')``,
so every API replica judges by the same clock and client clock skew cannot matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from infra.metrics import limiter_refusals
from infra.redis import lua_with_now

GCRA_LUA_FUNCTION = """
local function gcra(key, interval, burst, cost)
  local tat = tonumber(redis.call('GET', key))
  if tat == nil or tat < now then
    tat = now
  end
  local new_tat = tat + interval * cost
  local allow_at = new_tat - interval * burst
  local diff = now - allow_at
  if diff < 0 then
    return {0, math.ceil(-diff), 0}
  end
  local ttl_ms = math.ceil((new_tat - now) / 1000)
  if ttl_ms < 1 then
    ttl_ms = 1
  end
  redis.call('SET', key, string.format('%d', new_tat), 'PX', ttl_ms)
  return {1, 0, math.floor(diff / interval)}
end
"""
"""The decision as a Lua function ``gcra(key, interval_us, burst, cost)`` returning
``{allowed (0/1), retry_after_us, remaining}``; it needs ``now`` (``lua_with_now``). Other
scripts that must take a checkout's token in the same round trip (``infra/sold_out_edge.py``)
embed it, so there is one limit and one spelling of it."""

# KEYS[1] = bucket key
# ARGV[1] = emission interval in microseconds (1e6 / rate), ARGV[2] = burst, ARGV[3] = cost
# Returns {allowed (0/1), retry_after_us, remaining}.
_GCRA_LUA = lua_with_now(
    GCRA_LUA_FUNCTION
    + "return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))\n"
)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: float
    """Seconds until the same request would be allowed; 0 when allowed."""
    remaining: int
    """Requests of cost 1 that would still be allowed right now."""

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class GcraLimiter:
    """``rate_per_s`` sustained, up to ``burst`` at once, per key."""

    def __init__(
        self, redis: aioredis.Redis, *, rate_per_s: float, burst: int, prefix: str
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self._redis = redis
        self._interval_us = max(1, round(1_000_000 / rate_per_s))
        self._burst = burst
        self._prefix = prefix
        limiter_refusals.labels(prefix)  # the series exists from the start, at 0
        # register_script runs EVALSHA and falls back to EVAL (loading the script) on NOSCRIPT.
        self._script = redis.register_script(_GCRA_LUA)

    @property
    def burst(self) -> int:
        return self._burst

    def key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    def args(self, cost: int = 1) -> list[int]:
        """The ``gcra()`` arguments after the key: interval (us), burst, cost."""
        if cost < 1 or cost > self._burst:
            raise ValueError(f"cost must be between 1 and burst ({self._burst})")
        return [self._interval_us, self._burst, cost]

    def decision(self, answer: Any) -> RateDecision:
        """``gcra()``'s answer as a decision (a refusal counted)."""
        allowed, retry_us, remaining = answer
        if not int(allowed):
            limiter_refusals.labels(self._prefix).inc()
        return RateDecision(
            allowed=bool(int(allowed)),
            retry_after_s=int(retry_us) / 1_000_000,
            remaining=int(remaining),
        )

    async def allow(self, key: str, cost: int = 1) -> RateDecision:
        """Take ``cost`` tokens for ``key`` if they are there. Raises redis errors as they come."""
        answer = await self._script(keys=[self.key(key)], args=self.args(cost))
        return self.decision(answer)
