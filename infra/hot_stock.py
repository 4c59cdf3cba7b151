"""The Redis side of flash sales: a per-SKU counter and per-order claims, one Lua script each.

A hot SKU at a location has two keys, hash-tagged so a Redis Cluster keeps them in one slot:

* ``hot:{<loc>:<sku>}:avail``  - units Redis may still hand out (the counter);
* ``hot:{<loc>:<sku>}:claims`` - a hash, one field per order: ``<state>|<quantity>|<unix s>``.

A claim field is a small state machine that mirrors the database fence (``reservations``):

====== ===========================================================================
``L``  live: the counter was decremented for this order (the DB try follows)
``R``  released: the order was cancelled and the units went back to the counter
``T``  returned: the confirmed units came back (return after confirm) and went back
``D``  dead: Redis said yes but the DB said out of stock (the counter was too high);
       its units are *not* given back, the counter moves toward the truth
``X``  cancel marker: the cancel came with no claim (a loser, or a try that never
       ran). Recorded so a try arriving later is refused (anti-hanging, like DTM)
====== ===========================================================================

Ordering is what keeps the counter honest without a distributed transaction: a claim takes
units from Redis *before* the DB, and every give-back (cancel, return) returns them to the DB
*before* Redis. So, apart from drift, ``counter <= DB available - live claims not yet in the
DB``: whatever Redis lets through, the DB can honour, and a sold-out request is answered by
Redis alone. Drift (a try that fell back to the DB while Redis was down, a lost Redis, a
crash between the two steps) only ever costs DB work or unsold units until
``reconcile_hot_counters`` puts the counter back to what the DB says.

The counter is moved by claims only. Everything else that changes ``available`` (admin
restock, DB-path tries, their cancels) is brought in by a reconciliation, which computes the
expected value from one DB snapshot and applies it in one Lua script; see ``docs/inventory.md``
for why that is exact under concurrent traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from domain.status import TERMINAL_STATUSES
from infra.metrics import claim_result, flash_sale_claims
from store import inventory as ledger

log = logging.getLogger("tradeflow.hot_stock")

REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)
"""Errors that mean "Redis cannot be reached": the caller falls back to the DB path.
Check ``redis_down`` too: an exhausted client pool is not an outage."""


def redis_down(exc: BaseException) -> bool:
    """True when ``exc`` (one of ``REDIS_DOWN``) means Redis is unreachable. redis-py raises
    ``MaxConnectionsError`` (a ConnectionError) when the client's own pool is exhausted:
    Redis is fine, so the caller must not take the DB path (that would cost a flash sale's
    losers DB writes); it lets the activity fail and Temporal retry it."""
    return not isinstance(exc, MaxConnectionsError)


CLAIMS_IDLE_TTL_S = 7 * 24 * 3600
"""The claims hash expires after a week without writes: a safety net for a SKU whose
reconciliation never runs. Reconciliation normally trims it long before."""
CLAIM_RETENTION_S = 24 * 3600
"""Reconciliation drops finished fields (X, R, T, D, and L of confirmed orders) older than
this. A cancel marker must outlive any try that could still arrive for its order; an activity
attempt lives at most its start-to-close timeout (seconds), so a day is a wide margin."""
LEAK_GRACE_S = 300
"""A live claim with no DB row whose order has ended is written off after this long."""


SyncMode = Literal["repair", "missing", "check"]
"""``repair``: set the counter to what the DB says; ``missing``: only if it is absent;
``check``: change nothing."""


def counter_key(location_id: str, sku: str) -> str:
    return f"hot:{{{location_id}:{sku}}}:avail"


def claims_key(location_id: str, sku: str) -> str:
    return f"hot:{{{location_id}:{sku}}}:claims"


class Claim(StrEnum):
    """What the claim script answered (or the state of an existing claim)."""

    CLAIMED = "C"
    """New claim: the counter was decremented."""
    SOLD_OUT = "S"
    NO_COUNTER = "N"
    """No counter for this SKU: the caller takes the DB path."""
    LIVE = "L"
    """This order already holds a claim (a repeated try): idempotent."""
    RELEASED = "R"
    RETURNED = "T"
    DEAD = "D"
    CANCELLED = "X"

    @property
    def holds_units(self) -> bool:
        return self in (Claim.CLAIMED, Claim.LIVE)


_CLAIM_OF: dict[str | bytes, Claim] = {c.value: c for c in Claim} | {
    c.value.encode(): c for c in Claim
}
"""Script answer -> Claim, for clients with or without ``decode_responses``."""


# KEYS[1] counter, KEYS[2] claims; ARGV[1] order, ARGV[2] quantity. {ttl_ms} = the claims
# hash's idle TTL, written into the script (one argument less to encode on the hot path).
_CLAIM_LUA = """
local v = redis.call('HGET', KEYS[2], ARGV[1])
if v then return string.sub(v, 1, 1) end
local avail = redis.call('GET', KEYS[1])
if not avail then return 'N' end
if tonumber(avail) < tonumber(ARGV[2]) then return 'S' end
redis.call('DECRBY', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 'L|' .. ARGV[2] .. '|' .. redis.call('TIME')[1])
redis.call('PEXPIRE', KEYS[2], {ttl_ms})
return 'C'
"""

# Before a hot cancel touches the DB. No claim -> record the cancel marker ('N' answered);
# else answer the claim's state and change nothing (the give-back comes after the DB).
# KEYS[1] claims; ARGV[1] order, ARGV[2] hash idle TTL ms.
_MARK_CANCEL_LUA = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return string.sub(v, 1, 1) end
redis.call('HSET', KEYS[1], ARGV[1], 'X|0|' .. redis.call('TIME')[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 'N'
"""

# A live claim ends. ARGV[2] = 'R' or 'T' gives its units back to the counter (once: only an
# 'L' field moves); 'D' writes them off. Returns the quantity moved, 0 if nothing was live.
# A missing counter is not created: the next load computes it from the DB.
# KEYS[1] counter, KEYS[2] claims; ARGV[1] order, ARGV[2] new state.
_END_CLAIM_LUA = """
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v or string.sub(v, 1, 1) ~= 'L' then return 0 end
local q = string.sub(v, 3, string.find(v, '|', 3, true) - 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '|' .. q .. '|' .. redis.call('TIME')[1])
if ARGV[2] ~= 'D' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCRBY', KEYS[1], q)
end
return tonumber(q)
"""

# Compare (and in 'repair'/'missing' mode set) the counter against one DB snapshot.
# KEYS[1] counter, KEYS[2] claims.
# ARGV: mode ('check' | 'repair' | 'missing'), DB available, retention s, leak grace s,
#       then pairs (order, code) for the L/R/T claims seen before the snapshot was read,
#       code = the fence row's state, 'NONE' (no row) or 'LEAKED' (no row, order ended).
# Claims not listed appeared after the snapshot, so their DB try had not landed in it.
# Returns {had_counter, counter, expected, effective, completed, leaked, dropped, set}.
_RECONCILE_LUA = """
local mode = ARGV[1]
local expected = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local db = {}
for i = 5, #ARGV, 2 do db[ARGV[i]] = ARGV[i + 1] end
local now = tonumber(redis.call('TIME')[1])
local raw = redis.call('GET', KEYS[1])
if mode == 'missing' and raw then
  return {1, tonumber(raw), tonumber(raw), tonumber(raw), 0, 0, 0, 0}
end
local write = mode ~= 'check'
local pending, completed, leaked, dropped = 0, 0, 0, 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local order, v = entries[i], entries[i + 1]
  local st = string.sub(v, 1, 1)
  local sep = string.find(v, '|', 3, true)
  local q = tonumber(string.sub(v, 3, sep - 1))
  local age = now - tonumber(string.sub(v, sep + 1))
  local row = db[order]
  local stale = age > retention
  if st == 'L' then
    if row == nil or row == 'NONE' or (row == 'LEAKED' and age <= grace) then
      expected = expected - q
    elseif row == 'LEAKED' then
      leaked = leaked + 1
      if write then redis.call('HSET', KEYS[2], order, 'D|' .. q .. '|' .. now) end
    elseif row == 'CANCELLED' or row == 'RETURNED' then
      pending = pending + q
      completed = completed + 1
      if write then
        local to = (row == 'CANCELLED') and 'R' or 'T'
        redis.call('HSET', KEYS[2], order, to .. '|' .. q .. '|' .. now)
      end
    elseif row == 'CONFIRMED' and stale then
      dropped = dropped + 1
      if write then redis.call('HDEL', KEYS[2], order) end
    end
  elseif (st == 'R' and row == 'TRIED') or (st == 'T' and row == 'CONFIRMED') then
    expected = expected + q
  elseif stale then
    dropped = dropped + 1
    if write then redis.call('HDEL', KEYS[2], order) end
  end
end
if expected < 0 then expected = 0 end
local had = raw and 1 or 0
local current = tonumber(raw or '0')
local effective = current + pending
if write and raw and pending > 0 then redis.call('INCRBY', KEYS[1], pending) end
local set = 0
if write and (not raw or effective ~= expected) then
  redis.call('SET', KEYS[1], expected)
  set = 1
end
return {had, current, expected, effective, completed, leaked, dropped, set}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_counters(
    redis: aioredis.Redis, location_id: str, skus: list[str]
) -> list[int | None]:
    """The counters of ``skus`` at ``location_id`` (None where none is loaded), read only:
    one pipelined round trip of GETs (the keys may live in different cluster slots)."""
    async with redis.pipeline(transaction=False) as pipe:
        for sku in skus:
            pipe.get(counter_key(location_id, sku))
        raw = await pipe.execute()
    return [None if r is None else int(r) for r in raw]


class HotStock:
    """The flash-sale scripts bound to one Redis client (redis-py ``register_script``:
    EVALSHA, reloading the script on NOSCRIPT)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        idle_ttl_s: int = CLAIMS_IDLE_TTL_S,
        retention_s: int = CLAIM_RETENTION_S,
        leak_grace_s: int = LEAK_GRACE_S,
    ) -> None:
        self.redis = redis
        self._idle_ttl_ms = str(idle_ttl_s * 1000)
        self._retention_s = str(retention_s)
        self._leak_grace_s = str(leak_grace_s)
        self._claim = redis.register_script(_CLAIM_LUA.replace("{ttl_ms}", self._idle_ttl_ms))
        self._mark_cancel = redis.register_script(_MARK_CANCEL_LUA)
        self._end_claim = redis.register_script(_END_CLAIM_LUA)
        self._reconcile = redis.register_script(_RECONCILE_LUA)

    # -------------------------------------------------------------------- the order path

    async def claim(self, location_id: str, sku: str, order_id: str, quantity: int) -> Claim:
        """Check, deduct and record the order's claim, atomically; repeat-safe per order."""
        if quantity < 1:
            raise ValueError("quantity must be >= 1")
        tag = f"hot:{{{location_id}:{sku}}}:"
        answer = await self._claim(keys=[tag + "avail", tag + "claims"], args=[order_id, quantity])
        claim = _CLAIM_OF[answer]
        flash_sale_claims.labels(claim_result(claim.value)).inc()
        return claim

    async def mark_cancel(self, location_id: str, sku: str, order_id: str) -> Claim | None:
        """The order's claim state; None when it had none (a cancel marker is now recorded)."""
        answer = _text(
            await self._mark_cancel(
                keys=[claims_key(location_id, sku)], args=[order_id, self._idle_ttl_ms]
            )
        )
        return None if answer == "N" else Claim(answer)

    async def release(self, location_id: str, sku: str, order_id: str, *, returned: bool) -> int:
        """Give a live claim's units back to the counter (once). Call after the DB gave them
        back. Returns the quantity given back, 0 when the claim was not live."""
        return await self._end(location_id, sku, order_id, "T" if returned else "R")

    async def write_off(self, location_id: str, sku: str, order_id: str) -> int:
        """The DB refused a claim Redis granted (the counter was too high): end it without
        giving its units back."""
        return await self._end(location_id, sku, order_id, "D")

    async def _end(self, location_id: str, sku: str, order_id: str, to: str) -> int:
        moved = await self._end_claim(
            keys=[counter_key(location_id, sku), claims_key(location_id, sku)], args=[order_id, to]
        )
        return int(moved)

    # ----------------------------------------------------------------------- inspection

    async def counter(self, location_id: str, sku: str) -> int | None:
        raw = await self.redis.get(counter_key(location_id, sku))
        return None if raw is None else int(raw)

    async def claims(self, location_id: str, sku: str) -> dict[str, tuple[Claim, int, int]]:
        """order_id -> (state, quantity, unix seconds of the last change)."""
        raw = await self.redis.hgetall(claims_key(location_id, sku))  # type: ignore[misc]
        out: dict[str, tuple[Claim, int, int]] = {}
        for k, v in raw.items():
            state, qty, at = _text(v).split("|")
            out[_text(k)] = (Claim(state), int(qty), int(at))
        return out

    # ------------------------------------------------------------------ reconciliation

    async def sync(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        location_id: str,
        sku: str,
        *,
        mode: SyncMode,
    ) -> CounterState | None:
        """Compare the counter with one DB snapshot; ``repair`` sets it, ``missing`` sets it
        only when absent, ``check`` changes nothing. None when the SKU has no stock row here.

        The snapshot is pinned by the first read (``available``) *before* the claims are
        listed, so every claim missing from the list was made after the snapshot; a claim
        precedes its DB try, so that try is not in the snapshot either and the claim counts
        as in flight. Give-backs go DB first, so a released claim whose row is still TRIED
        in the snapshot is a cancel that landed after it (and likewise returned/CONFIRMED).
        """
        async with sessionmaker() as s:
            await ledger.begin_snapshot(s)
            available = await ledger.stock_available(s, location_id=location_id, sku=sku)
            if available is None:
                return None
            entries = await self.redis.hgetall(claims_key(location_id, sku))  # type: ignore[misc]
            held: list[str] = []
            live: set[str] = set()
            for k, v in entries.items():
                state = _text(v)[:1]
                if state in ("L", "R", "T"):
                    held.append(_text(k))
                    if state == "L":
                        live.add(_text(k))
            rows = await ledger.fence_states(s, location_id=location_id, sku=sku, order_ids=held)
            rowless = [o for o in held if o not in rows and o in live]
            statuses = await ledger.order_statuses(s, rowless)
        args: list[str] = [mode, str(available), self._retention_s, self._leak_grace_s]
        for order_id in held:
            if order_id in rows:
                code = rows[order_id][0]
            elif statuses.get(order_id) in TERMINAL_STATUSES:
                code = "LEAKED"
            else:
                code = "NONE"
            args += [order_id, code]
        res = await self._reconcile(
            keys=[counter_key(location_id, sku), claims_key(location_id, sku)], args=args
        )
        had, current, expected, effective, completed, leaked, dropped, was_set = (
            int(x) for x in res
        )
        return CounterState(
            location_id=location_id,
            sku=sku,
            counter=current if had else None,
            effective=effective if had else None,
            expected=expected,
            db_available=available,
            completed=completed,
            leaked=leaked,
            dropped=dropped,
            was_set=bool(was_set),
        )


@dataclass(frozen=True)
class CounterState:
    """One hot counter measured against the DB (see ``HotStock.sync``)."""

    location_id: str
    sku: str
    counter: int | None
    """The counter as found; None when it was missing."""
    effective: int | None
    """The counter once give-backs the DB already made reach Redis (they are on their way:
    the activity that made them gives them back next, or reconciliation finishes them)."""
    expected: int
    """DB ``available`` minus the live claims whose DB try is not in it yet."""
    db_available: int
    completed: int = 0
    """Give-backs the DB had made and Redis had not, finished by this call."""
    leaked: int = 0
    """Live claims with no DB row whose order has ended, written off by this call."""
    dropped: int = 0
    """Finished claim fields past retention, removed by this call."""
    was_set: bool = False

    @property
    def matches(self) -> bool:
        return self.effective == self.expected

    def describe(self) -> str:
        where = f"{self.location_id}/{self.sku}"
        if self.counter is None:
            return f"hot counter {where} missing, DB says {self.expected}"
        return (
            f"hot counter {where} is {self.effective}"
            + (
                f" ({self.counter} + give-backs under way)"
                if self.effective != self.counter
                else ""
            )
            + f", DB says {self.expected} (available {self.db_available}"
            + f" - {self.db_available - self.expected} in flight)"
        )


@dataclass(frozen=True)
class CounterChange:
    location_id: str
    sku: str
    old: int | None
    """The counter before (after finishing give-backs under way); None when missing."""
    new: int


# --------------------------------------------------------------------- whole-fleet helpers


async def _each(
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: aioredis.Redis,
    keys: Iterable[tuple[str, str]],
    mode: SyncMode,
) -> list[CounterState]:
    hot = HotStock(redis)
    out = []
    for location_id, sku in keys:
        state = await hot.sync(sessionmaker, location_id, sku, mode=mode)
        if state is not None:
            out.append(state)
    return out


async def _hot_keys(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    sku: str | None = None,
    location_id: str | None = None,
) -> list[tuple[str, str]]:
    async with sessionmaker() as s:
        return await ledger.hot_stock_keys(s, sku=sku, location_id=location_id)


def _changes(states: list[CounterState], why: str) -> list[CounterChange]:
    changes = []
    for st in states:
        if st.completed or st.leaked or st.dropped:
            log.info(
                "hot claims %s/%s: %d give-backs finished, %d leaked claims written off,"
                " %d old fields dropped",
                st.location_id,
                st.sku,
                st.completed,
                st.leaked,
                st.dropped,
            )
        if st.was_set and st.effective != st.expected:
            log.warning(
                "hot counter %s/%s: %s -> %d (%s; DB available %d)",
                st.location_id,
                st.sku,
                "missing" if st.effective is None else st.effective,
                st.expected,
                why,
                st.db_available,
            )
            changes.append(CounterChange(st.location_id, st.sku, st.effective, st.expected))
    return changes


async def reconcile_hot_counters(
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: aioredis.Redis,
    *,
    sku: str | None = None,
    location_id: str | None = None,
) -> list[CounterChange]:
    """Repair every hot counter (or one SKU's) from the DB, in either direction; finish
    give-backs under way, write off leaked claims, trim old fields. Logs and returns each
    counter it changed (old -> new)."""
    keys = await _hot_keys(sessionmaker, sku=sku, location_id=location_id)
    return _changes(await _each(sessionmaker, redis, keys, "repair"), "reconciled")


async def load_hot_counters(
    sessionmaker: async_sessionmaker[AsyncSession], redis: aioredis.Redis
) -> list[CounterChange]:
    """Worker start: create the counters that are missing; a live counter is left alone."""
    keys = await _hot_keys(sessionmaker)
    return _changes(await _each(sessionmaker, redis, keys, "missing"), "loaded")


async def verify_hot_counters(
    sessionmaker: async_sessionmaker[AsyncSession], redis: aioredis.Redis
) -> list[CounterState]:
    """Every hot counter against the DB; changes nothing (the stock check)."""
    return await _each(sessionmaker, redis, await _hot_keys(sessionmaker), "check")


async def drop_hot_counters(
    sessionmaker: async_sessionmaker[AsyncSession], redis: aioredis.Redis, *, sku: str
) -> int:
    """The SKU left the flash-sale path: delete its counters so no claim is granted on a
    stale one (orders already priced as hot then take the DB path). Claims stay until
    their orders end."""
    async with sessionmaker() as s:
        locations = await ledger.stock_locations(s, sku=sku)
    if not locations:
        return 0
    return int(await redis.delete(*(counter_key(loc, sku) for loc in locations)))


class CounterLoader:
    """Loads a missing counter on first use, once per key at a time in this process (a
    flash sale's first thousand requests must not all read the DB to build it)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], hot: HotStock) -> None:
        self._sessions = sessionmaker
        self._hot = hot
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def load(self, location_id: str, sku: str) -> bool:
        """True when the counter exists afterwards (False: not a hot SKU or no stock row)."""
        lock = self._locks.setdefault((location_id, sku), asyncio.Lock())
        async with lock:
            if await self._hot.redis.exists(counter_key(location_id, sku)):
                return True
            keys = await _hot_keys(self._sessions, sku=sku, location_id=location_id)
            if not keys:
                return False
            state = await self._hot.sync(self._sessions, location_id, sku, mode="missing")
            if state is not None:
                _changes([state], "loaded on first use")
            return state is not None
