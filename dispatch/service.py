"""The zone matcher: batch-matches one zone's waiting orders while holding the zone's lease.

Orders wait in ``<prefix>pending:<zone>`` (a sorted set by enqueue time; the pickup point in
``<prefix>pickup``). Every window the matcher reads them and the free couriers of the zone and its
neighbours from the geo index, solves the assignment, and writes each offer in the couriers
table fenced by its lease's token; an offer that lands is published on ``<prefix>offer:<order>``
(a list the order's side pops) and the order leaves the pending set. A stale token means another
matcher owns the zone now: the matcher stops at once (:class:`~infra.locks.LeaseLost`).

Shards announce themselves with a heartbeat key; every process computes the same ring from the
live members, so each zone has one intended shard (see docs/dispatch.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from dispatch.geoindex import CourierGeoIndex
from dispatch.matcher import FreeCourier, OpenOrder, match_batch
from dispatch.zones import zone_centre, zone_reach_km, zones_around
from infra.hashring import HashRing
from infra.locks import LeaseLost, Redlock, RedlockConfig
from infra.redis import make_redis
from infra.settings import Settings
from store import couriers as fleet
from store.fencing import Fence, StaleFencingToken, token_source

log = logging.getLogger(__name__)


def zone_redlock(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], *, ttl_ms: int = 10_000
) -> Redlock:
    """Zone leases over ``TRADEFLOW_LOCK_REDIS_URLS`` with fencing tokens from the database."""
    return Redlock(
        [make_redis(u) for u in settings.lock_redis_url_list],
        RedlockConfig(ttl_ms=ttl_ms),
        fencing=token_source(sessions),
    )


@dataclass
class ShardRegistry:
    """Live dispatch shards: ``<prefix>shard:<n>`` keys with a TTL, renewed by a heartbeat."""

    redis: aioredis.Redis
    prefix: str = "dispatch:"
    ttl_s: float = 5.0

    async def heartbeat(self, shard: str) -> None:
        await self.redis.set(f"{self.prefix}shard:{shard}", "1", px=int(self.ttl_s * 1000))

    async def leave(self, shard: str) -> None:
        await self.redis.delete(f"{self.prefix}shard:{shard}")

    async def members(self) -> list[str]:
        start = len(self.prefix) + len("shard:")
        return sorted([str(k)[start:] async for k in self.redis.scan_iter(f"{self.prefix}shard:*")])

    async def zones_of(self, shard: str, zones: list[str]) -> list[str]:
        members = await self.members()
        if shard not in members:
            return []
        placed = HashRing(members).assign(zones)
        return sorted(z for z, s in placed.items() if s == shard)


@dataclass
class ZoneMatcher:
    redis: aioredis.Redis
    geo: CourierGeoIndex
    sessions: async_sessionmaker[AsyncSession]
    redlock: Redlock
    window_s: float = 2.0
    max_km: float = 10.0
    prefix: str = "dispatch:"

    def _pending(self, zone: str) -> str:
        return f"{self.prefix}pending:{zone}"

    async def enqueue(self, zone: str, order_id: str, *, lat: float, lng: float) -> None:
        """An order is ready for dispatch in ``zone`` (idempotent)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(f"{self.prefix}pickup", order_id, f"{lat},{lng}")
        pipe.zadd(self._pending(zone), {order_id: time.time()}, nx=True)
        await pipe.execute()

    async def wait_offer(self, order_id: str, timeout_s: float) -> str | None:
        got = await self.redis.blpop([f"{self.prefix}offer:{order_id}"], timeout=timeout_s)  # type: ignore[misc]
        return None if got is None else str(got[1])

    async def serve(self, zone: str, *, rounds: int | None = None) -> None:
        """Match ``zone`` every window while its lease is held (``rounds``: stop after that many
        windows; None: until cancelled). Raises :class:`LeaseLost` when the zone is lost."""
        async with self.redlock.hold(f"zone:{zone}") as guard:
            token = guard.token
            assert token is not None, "zone leases need a fencing source"
            done = 0
            while rounds is None or done < rounds:
                await asyncio.sleep(self.window_s)
                await self.match_once(zone, Fence(zone, token))
                done += 1

    async def match_once(self, zone: str, fence: Fence) -> int:
        """One window: returns how many offers landed."""
        now = time.time()
        raw: Any = await self.redis.zrange(self._pending(zone), 0, -1, withscores=True)
        waiting = [(str(o), float(since)) for o, since in raw]
        if not waiting:
            return 0
        ids = [o for o, _ in waiting]
        spots = await self.redis.hmget(f"{self.prefix}pickup", ids)  # type: ignore[misc]
        orders = []
        for (oid, since), spot in zip(waiting, spots, strict=True):
            if spot is not None:
                lat, lng = (float(x) for x in str(spot).split(","))
                orders.append(OpenOrder(oid, lat, lng, now - since))
        lat, lng = zone_centre(zone)
        found = await self.geo.search(
            lat=lat,
            lng=lng,
            radius_km=self.max_km + zone_reach_km(self.geo.resolution),
            count=max(4 * len(orders), 16),
            zones=zones_around(zone, 1),
        )
        couriers = [FreeCourier(c.courier_id, c.lat, c.lng) for c in found]
        landed = 0
        for m in match_batch(orders, couriers, max_km=self.max_km):
            try:
                async with self.sessions() as s, s.begin():
                    ok = await fleet.offer(
                        s, order_id=m.order_id, courier_id=m.courier_id, fence=fence
                    )
            except StaleFencingToken as e:
                raise LeaseLost(f"zone {zone}: a newer lease wrote (token {fence.token})") from e
            await self.geo.remove(m.courier_id)  # offered, or not free after all
            if ok:
                pipe = self.redis.pipeline(transaction=True)
                pipe.zrem(self._pending(zone), m.order_id)
                pipe.rpush(f"{self.prefix}offer:{m.order_id}", m.courier_id)
                pipe.expire(f"{self.prefix}offer:{m.order_id}", 3600)
                await pipe.execute()
                landed += 1
        return landed


@dataclass
class ShardService:
    """One dispatch shard: beats its heartbeat, and serves (under their leases) the zones the
    ring gives it among the live shards, re-reading the ring every beat so zones follow
    membership changes. ``stop()`` is the graceful exit (SIGTERM): it leaves the ring and
    releases its leases at once; a killed process's zones come free when their leases lapse."""

    shard: str
    registry: ShardRegistry
    matcher: ZoneMatcher
    zones: list[str]
    beat_s: float = 1.0

    def __post_init__(self) -> None:
        self._serving: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    @property
    def serving(self) -> list[str]:
        return sorted(z for z, t in self._serving.items() if not t.done())

    async def run(self) -> None:
        try:
            while not self._stopping:
                await self.registry.heartbeat(self.shard)
                mine = set(await self.registry.zones_of(self.shard, self.zones))
                for zone in mine - set(self.serving):
                    self._serving[zone] = asyncio.create_task(self._serve(zone))
                for zone in set(self.serving) - mine:
                    self._serving[zone].cancel()  # the ring moved it: give the lease up
                await asyncio.sleep(self.beat_s)
        finally:
            await self._drop_all()

    async def _serve(self, zone: str) -> None:
        while True:
            try:
                await self.matcher.serve(zone)
            except LeaseLost as e:  # taken over, or Redis trouble: try for it again
                log.info("shard %s lost zone %s: %s", self.shard, zone, e)
            except Exception as e:  # QuorumNotAchieved after retries, DB trouble...
                log.warning("shard %s cannot serve zone %s yet: %r", self.shard, zone, e)
            await asyncio.sleep(self.matcher.window_s)

    async def _drop_all(self) -> None:
        tasks = list(self._serving.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._serving.clear()

    async def stop(self) -> None:
        self._stopping = True
        await self._drop_all()
        await self.registry.leave(self.shard)
