"""The sold-out edge: a checkout's idempotency, rate limit and flash-sale answer in one Redis
round trip, so a flash sale's losers are answered without SQL and without a workflow.

Every ``POST /v1/orders`` whose cart could be priced runs ``_EDGE_LUA`` (EVALSHA) once:

1. the idempotency index ``edge:idem:<len(customer)>:<customer>:<key>`` (the length keeps a
   customer ``a:b`` with key ``c`` apart from customer ``a`` with key ``b:c``): a key seen
   before answers ``E`` (a loser answered here: its order id, request hash and row copy) or
   ``N`` (an order of the normal path: SQL holds it and answers the repeat);
2. the catalogue cache entries the cart was priced from (``catalogue:product:<sku>``, as this
   process last read them, ``api/catalogue.py``): one that is not the cache's any more
   answers ``C`` and the caller prices the cart again from the cache; so the price snapshot
   is the cache-aside's, as on the normal path, without a round trip of its own;
3. the hot counters ``hot:{<loc>:<sku>}:avail`` of the cart's hot lines: is any line short?
4. a short cart with an index that may be incomplete (``edge:idem:since`` missing: Redis lost
   its data, or the index was never built) answers ``U``: the caller asks SQL for the key and
   runs the script again with ``checked``;
5. the checkout's GCRA token (the very bucket ``GcraLimiter`` keeps under
   ``ratelimit:checkout:<customer>``, the same Lua function): refused -> ``L``;
6. short -> the loser's row is written where reads and the write-behind find it
   (``edge:order:<order_id>``, the index entry ``e|<order>|<hash>``, one ``XADD`` to
   ``edge:drain``) -> ``S``; otherwise the key is registered for the normal path
   (``n|<order>``) -> ``P`` and the normal path (SQL row, workflow) runs, its token taken.

Index entries and row copies live ``TRADEFLOW_EDGE_IDEMPOTENCY_TTL_S`` (7 days). The rule for
a key the index does not know, and what it means after Redis loses its data: docs/inventory.md,
"The sold-out edge". The script touches keys of several hash slots: one Redis node (or a
primary with replicas), not a Redis Cluster.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from infra.hot_stock import counter_key
from infra.ratelimit import GCRA_LUA_FUNCTION, GcraLimiter, RateDecision
from infra.redis import lua_with_now
from store import orders

log = logging.getLogger(__name__)

DRAIN_STREAM = "edge:drain"
"""The stream of loser rows the write-behind (api/write_behind.py) writes to SQL."""
DRAIN_GROUP = "write-behind"
INDEX_SINCE_KEY = "edge:idem:since"
"""Present while the index holds every key used within its TTL (set by ``complete_index``)."""
_BACKFILL_LOCK = "edge:idem:backfill"
_BACKFILL_LEASE_MS = 300_000
ORDER_COPY_PREFIX = "edge:order:"


def index_key(customer_id: str, key: str) -> str:
    return f"edge:idem:{len(customer_id)}:{customer_id}:{key}"


def order_copy_key(order_id: str) -> str:
    return ORDER_COPY_PREFIX + order_id


# KEYS: 1 index entry, 2 GCRA bucket, 3 INDEX_SINCE_KEY, 4 the new order's copy, 5 DRAIN_STREAM,
#       then the n hot counters, then the catalogue cache entries the cart was priced from
# ARGV: 1 new order id, 2 request hash, 3 TTL ms, 4-6 GCRA interval us, burst, cost,
#       7 checked ('1': SQL has no order for this key), 8 the loser's row (JSON),
#       9 ORDER_COPY_PREFIX, 10 n, then the quantity wanted of each counter's SKU, then the
#       catalogue entries as the caller read them
_EDGE_LUA = lua_with_now(
    GCRA_LUA_FUNCTION
    + """
local hit = redis.call('GET', KEYS[1])
if hit then
  if string.sub(hit, 1, 1) == 'e' then
    local sep = string.find(hit, '|', 3, true)
    local id = string.sub(hit, 3, sep - 1)
    return {'E', id, string.sub(hit, sep + 1), redis.call('GET', ARGV[9] .. id)}
  end
  return {'N', string.sub(hit, 3)}
end
local n = tonumber(ARGV[10])
for i = 6 + n, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 5] then return {'C'} end
end
local short = 0
for i = 6, 5 + n do
  local left = redis.call('GET', KEYS[i])
  if left and tonumber(left) < tonumber(ARGV[i + 5]) then short = short + 1 end
end
if short > 0 and ARGV[7] ~= '1' and redis.call('EXISTS', KEYS[3]) == 0 then return {'U'} end
local rate = gcra(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
if rate[1] == 0 then return {'L', rate[1], rate[2], rate[3]} end
if short > 0 then
  redis.call('SET', KEYS[1], 'e|' .. ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[3])
  redis.call('XADD', KEYS[5], '*', 'row', ARGV[8])
  return {'S', short}
end
redis.call('SET', KEYS[1], 'n|' .. ARGV[1], 'PX', ARGV[3])
return {'P', rate[1], rate[2], rate[3]}
"""
)


class Verdict(StrEnum):
    SOLD_OUT = "S"
    """A loser, answered and stored here (row copy, index, drain entry)."""
    PROCEED = "P"
    """Not sold out (or no hot line): the normal path runs; the key is registered and the
    rate-limit token taken."""
    RATE_LIMITED = "L"
    REPEAT_EDGE = "E"
    """The key belongs to a loser answered here: ``order_id``, ``request_hash``, ``row``."""
    REPEAT_NORMAL = "N"
    """The key belongs to an order of the normal path: SQL answers (no token taken)."""
    UNKNOWN_KEY = "U"
    """Sold out, but the index may be incomplete: ask SQL, then again with ``checked``."""
    STALE_PRICES = "C"
    """A catalogue entry the cart was priced from is not the cache's now: price again."""


@dataclass(frozen=True)
class EdgeAnswer:
    verdict: Verdict
    order_id: str | None = None
    request_hash: str | None = None
    row: dict[str, Any] | None = None
    """The stored row of a REPEAT_EDGE (None if its copy is gone)."""
    rate: RateDecision | None = None
    short_lines: int = 0


class SoldOutEdge:
    """``_EDGE_LUA`` bound to one Redis client and the checkout limiter whose bucket it takes."""

    def __init__(self, redis: aioredis.Redis, limiter: GcraLimiter, *, ttl_s: float) -> None:
        self._redis = redis
        self._limiter = limiter
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._script = redis.register_script(_EDGE_LUA)

    async def ask(
        self,
        *,
        customer_id: str,
        key: str,
        order_id: str,
        request_hash: str,
        location_id: str,
        hot: Sequence[tuple[str, int]],
        priced_from: Sequence[tuple[str, str]],
        loser_row: str,
        checked: bool = False,
    ) -> EdgeAnswer:
        """One round trip; raises Redis errors as they come (the caller takes the normal
        path). ``hot`` = (sku, quantity) of the hot lines; ``priced_from`` = (cache key,
        entry) of each catalogue entry the cart was priced from, which must still be the
        cache's (else STALE_PRICES); ``loser_row`` = the row to store if a hot line is short
        (JSON; unused otherwise)."""
        raw = await self._script(
            keys=[
                index_key(customer_id, key),
                self._limiter.key(customer_id),
                INDEX_SINCE_KEY,
                order_copy_key(order_id),
                DRAIN_STREAM,
                *(counter_key(location_id, sku) for sku, _ in hot),
                *(cache_key for cache_key, _ in priced_from),
            ],
            args=[
                order_id,
                request_hash,
                self._ttl_ms,
                *self._limiter.args(1),
                "1" if checked else "0",
                loser_row,
                ORDER_COPY_PREFIX,
                len(hot),
                *(q for _, q in hot),
                *(entry for _, entry in priced_from),
            ],
        )
        verdict = Verdict(raw[0])
        if verdict in (Verdict.PROCEED, Verdict.RATE_LIMITED):
            return EdgeAnswer(verdict, rate=self._limiter.decision(raw[1:4]))
        if verdict == Verdict.SOLD_OUT:
            return EdgeAnswer(verdict, order_id=order_id, short_lines=int(raw[1]))
        if verdict == Verdict.REPEAT_EDGE:
            row = json.loads(raw[3]) if raw[3] else None
            return EdgeAnswer(verdict, order_id=raw[1], request_hash=raw[2], row=row)
        if verdict == Verdict.REPEAT_NORMAL:
            return EdgeAnswer(verdict, order_id=raw[1])
        return EdgeAnswer(verdict)


async def order_copy(redis: aioredis.Redis, order_id: str) -> dict[str, Any] | None:
    """The row of a loser answered at the edge, as stored in Redis (until its TTL), or None."""
    raw = await redis.get(order_copy_key(order_id))
    return json.loads(raw) if raw else None


async def complete_index(
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: aioredis.Redis,
    *,
    ttl_s: float,
    chunk: int = 1000,
) -> int | None:
    """Make the idempotency index complete when ``INDEX_SINCE_KEY`` is missing (a fresh or
    flushed Redis): every SQL order created within the TTL gets its ``n|<order>`` entry (SET
    NX, so a newer entry stays), then the marker is set. One API at a time (a Redis lease);
    returns the entries written, or None when there was nothing to do or another API does it.
    Keys used while this runs register themselves through the script."""
    if await redis.exists(INDEX_SINCE_KEY):
        return None
    if not await redis.set(_BACKFILL_LOCK, "1", nx=True, px=_BACKFILL_LEASE_MS):
        return None
    try:
        started = time.time()
        cutoff = datetime.fromtimestamp(started - ttl_s, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        written = 0
        after: tuple[str, str] | None = None
        while True:
            async with sessionmaker() as session:
                rows = await orders.keys_created_since(session, cutoff, after=after, limit=chunk)
                await session.commit()
            if not rows:
                break
            async with redis.pipeline(transaction=False) as pipe:
                for order_id, customer_id, key, created_at in rows:
                    age_s = started - datetime.fromisoformat(created_at).timestamp()
                    left_ms = int((ttl_s - age_s) * 1000)
                    pipe.set(
                        index_key(customer_id, key), f"n|{order_id}", nx=True, px=max(1, left_ms)
                    )
                await pipe.execute()
            written += len(rows)
            after = (rows[-1][3], rows[-1][0])
        await redis.set(INDEX_SINCE_KEY, f"{started:.0f}")
        log.info("idempotency index completed from SQL: %d keys", written)
        return written
    finally:
        await redis.delete(_BACKFILL_LOCK)
