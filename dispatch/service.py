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
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from dispatch.geoindex import CourierGeoIndex
from dispatch.matcher import FreeCourier, OpenOrder, match_batch
from dispatch.zones import zone_centre, zone_of, zone_reach_km, zones_around
from infra import metrics
from infra.hashring import HashRing
from infra.locks import LeaseLost, QuorumNotAchieved, Redlock, RedlockConfig
from infra.redis import make_redis
from store import couriers as fleet
from store import fencing
from store.fencing import Fence, StaleFencingToken, token_source
from store.models import Location

log = logging.getLogger(__name__)


def zone_redlock(
    lock_urls: list[str],
    sessions: async_sessionmaker[AsyncSession],
    *,
    ttl_ms: int = 10_000,
    prefix: str = "lock:",
) -> Redlock:
    """Zone leases over these independent Redis nodes (``TRADEFLOW_LOCK_REDIS_URLS``) with
    fencing tokens from the database."""
    return Redlock(
        [make_redis(u) for u in lock_urls],
        RedlockConfig(ttl_ms=ttl_ms, prefix=prefix),
        fencing=token_source(sessions),
    )


@dataclass
class ShardRegistry:
    """Live dispatch shards: ``<prefix>shard:<n>:<process>`` keys with a TTL, renewed by a
    heartbeat. A shard is live while any process serving it beats, so one of two replicas of
    a shard leaving does not take the shard out of the ring."""

    redis: aioredis.Redis
    prefix: str = "dispatch:"
    ttl_s: float = 5.0
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def _key(self, shard: str) -> str:
        return f"{self.prefix}shard:{shard}:{self.instance}"

    async def heartbeat(self, shard: str) -> None:
        await self.redis.set(self._key(shard), "1", px=int(self.ttl_s * 1000))

    async def leave(self, shard: str) -> None:
        await self.redis.delete(self._key(shard))

    async def members(self) -> list[str]:
        start = len(self.prefix) + len("shard:")
        keys = [str(k)[start:] async for k in self.redis.scan_iter(f"{self.prefix}shard:*")]
        return sorted({k.rsplit(":", 1)[0] for k in keys})

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

    @property
    def queue(self) -> OrderQueue:
        return OrderQueue(self.redis, self.prefix)

    async def enqueue(
        self, zone: str, order_id: str, *, lat: float, lng: float, exclude: Iterable[str] = ()
    ) -> None:
        """An order is ready for dispatch in ``zone`` (idempotent)."""
        await self.queue.enqueue(zone, order_id, lat=lat, lng=lng, exclude=exclude)

    async def wait_offer(self, order_id: str, timeout_s: float) -> str | None:
        return await self.queue.wait_offer(order_id, timeout_s)

    async def serve(self, zone: str, *, rounds: int | None = None) -> None:
        """Match ``zone`` every window while its lease is held (``rounds``: stop after that many
        windows; None: until cancelled). Raises :class:`LeaseLost` when the zone is lost."""
        async with self.redlock.hold(f"zone:{zone}") as guard:
            token = guard.token
            assert token is not None, "zone leases need a fencing source"
            log.info("zone %s: lease held, fencing token %d", zone, token)
            done = 0
            while rounds is None or done < rounds:
                await asyncio.sleep(self.window_s)
                await self.match_once(zone, Fence(zone, token))
                done += 1

    async def match_once(self, zone: str, fence: Fence) -> int:
        """One window: returns how many offers landed."""
        q = self.queue
        now = time.time()
        raw: Any = await self.redis.zrange(q.pending(zone), 0, -1, withscores=True)
        waiting = {str(o): float(since) for o, since in raw}
        if not waiting:
            return 0
        ids = list(waiting)
        spots = await self.redis.hmget(q.pickup, ids)  # type: ignore[misc]
        orders: list[OpenOrder] = []
        forbidden: set[tuple[str, str]] = set()
        for oid, spot in zip(ids, spots, strict=True):
            if spot is not None:
                at = json.loads(spot)
                orders.append(OpenOrder(oid, at["lat"], at["lng"], now - waiting[oid]))
                forbidden.update((oid, c) for c in at.get("exclude", ()))
        couriers = await self._candidates(zone, len(orders))
        landed = 0
        for m in match_batch(orders, couriers, max_km=self.max_km, forbidden=forbidden):
            # Claim the order first: the one ZREM that removes it wins, whether another
            # matcher (a handover) or the order itself (it gave up waiting, or was cancelled).
            if not await self.redis.zrem(q.pending(zone), m.order_id):
                continue
            try:
                async with self.sessions() as s, s.begin():
                    # The fence row serialises this zone's writers, so the holder read below
                    # cannot go stale before the offer: an order re-enqueued while its offer
                    # was being written (a routed-again request) is never offered twice.
                    await fencing.admit(s, zone=fence.zone, token=fence.token)
                    holder = await fleet.holder_of(s, order_id=m.order_id)
                    ok = holder is None and await fleet.offer(
                        s, order_id=m.order_id, courier_id=m.courier_id, fence=fence
                    )
            except StaleFencingToken as e:
                await q.requeue(zone, m.order_id, waiting[m.order_id])
                raise LeaseLost(f"zone {zone}: a newer lease wrote (token {fence.token})") from e
            except BaseException:
                await q.requeue(zone, m.order_id, waiting[m.order_id])
                raise
            if holder is not None:  # offered already: tell whoever waits, nobody else
                await q.publish(m.order_id, holder)
                continue
            await self.geo.remove(m.courier_id)  # offered, or not free after all
            if ok:
                await q.publish(m.order_id, m.courier_id)
                metrics.dispatch_offers.inc()
                landed += 1
            else:
                await q.requeue(zone, m.order_id, waiting[m.order_id])
        return landed

    async def _candidates(self, zone: str, orders: int) -> list[FreeCourier]:
        """Free couriers of the zone and its neighbours from the geo index; the table is asked
        too when the index lists fewer than there are orders (it may lag couriers written
        straight to the table), and what it finds is listed again."""
        lat, lng = zone_centre(zone)
        radius = self.max_km + zone_reach_km(self.geo.resolution)
        count = max(4 * orders, 16)
        found = await self.geo.search(
            lat=lat, lng=lng, radius_km=radius, count=count, zones=zones_around(zone, 1)
        )
        couriers = {c.courier_id: FreeCourier(c.courier_id, c.lat, c.lng) for c in found}
        if len(couriers) < orders:
            async with self.sessions() as s:
                rows = await fleet.free_in_box(s, lat=lat, lng=lng, radius_km=radius, limit=count)
            for cid, c_lat, c_lng in rows:
                if cid not in couriers:
                    couriers[cid] = FreeCourier(cid, c_lat, c_lng)
                    await self.geo.put(cid, lat=c_lat, lng=c_lng, free=True)
        return list(couriers.values())


@dataclass
class OrderQueue:
    """The order's side of a zone matcher: the pending set it waits in and the list its offer
    is published on."""

    redis: aioredis.Redis
    prefix: str = "dispatch:"

    def pending(self, zone: str) -> str:
        return f"{self.prefix}pending:{zone}"

    @property
    def pickup(self) -> str:
        return f"{self.prefix}pickup"

    def offers(self, order_id: str) -> str:
        return f"{self.prefix}offer:{order_id}"

    async def enqueue(
        self, zone: str, order_id: str, *, lat: float, lng: float, exclude: Iterable[str] = ()
    ) -> None:
        """Wait in ``zone`` (idempotent: a second call keeps the first enqueue time);
        ``exclude``: couriers this order must not be offered to."""
        at = json.dumps({"lat": lat, "lng": lng, "exclude": sorted(exclude)})
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.pickup, order_id, at)
        pipe.zadd(self.pending(zone), {order_id: time.time()}, nx=True)
        await pipe.execute()

    async def requeue(self, zone: str, order_id: str, since: float) -> None:
        await self.redis.zadd(self.pending(zone), {order_id: since}, nx=True)

    async def withdraw(self, zone: str, order_id: str) -> bool:
        """Leave the pending set; False when a matcher has claimed the order (its offer is
        being written) or it was not waiting."""
        removed = bool(await self.redis.zrem(self.pending(zone), order_id))
        if removed:
            await self.redis.hdel(self.pickup, order_id)  # type: ignore[misc]
        return removed

    async def leave(self, zone: str, order_id: str, *, grace_s: float) -> None:
        """Leave the zone for good (the order was cancelled), also when a matcher holds the
        order this instant: its ZREM claimed it, and it either publishes an offer (the caller
        then frees that courier) or, the courier being taken, puts the order back in the
        pending set, where the next window would offer a cancelled order. So while the order
        is claimed (out of the pending set, its pickup entry still there) this waits, up to
        ``grace_s``, and withdraws again whatever the matcher did."""
        loop = asyncio.get_running_loop()
        until = loop.time() + grace_s
        while not await self.withdraw(zone, order_id):
            claimed = await self.redis.hexists(self.pickup, order_id)  # type: ignore[misc]
            left = until - loop.time()
            if not claimed or left <= 0:
                return  # published (or never waiting); or the matcher is stuck: reconciler
            await self.wait_offer(order_id, min(left, 0.2))

    async def publish(self, order_id: str, courier_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.pickup, order_id)
        pipe.rpush(self.offers(order_id), courier_id)
        pipe.expire(self.offers(order_id), 3600)
        await pipe.execute()

    async def wait_offer(self, order_id: str, timeout_s: float) -> str | None:
        got = await self.redis.blpop([self.offers(order_id)], timeout=timeout_s)  # type: ignore[misc]
        return None if got is None else str(got[1])


def store_zones(
    sessions: async_sessionmaker[AsyncSession], resolution: int
) -> Callable[[], Awaitable[list[str]]]:
    """The zones that have a store: what the ring places on shards (read fresh each call)."""

    async def read() -> list[str]:
        async with sessions() as s:
            rows = (await s.execute(select(Location.lat, Location.lng))).all()  # type: ignore[call-overload]
        return sorted({zone_of(lat, lng, resolution) for lat, lng in rows})

    return read


async def shard_of(registry: ShardRegistry, zones: list[str], zone: str) -> str | None:
    """The live shard the ring gives ``zone`` (None: no shard is live)."""
    members = await registry.members()
    if not members:
        return None
    return HashRing(members).assign(sorted({*zones, zone}))[zone]


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
    zone_source: Callable[[], Awaitable[list[str]]] | None = None
    """Where the zones to place come from, re-read every beat (new stores); None: ``zones``."""

    def __post_init__(self) -> None:
        self._serving: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._announced: list[str] = []

    @property
    def serving(self) -> list[str]:
        return sorted(z for z, t in self._serving.items() if not t.done())

    async def run(self) -> None:
        try:
            while not self._stopping:
                try:
                    await self._beat()
                except Exception as e:  # Redis slow or down: the zones it serves keep their
                    # leases (or lose them on their own); the next beat tries again. A beat
                    # that raised must not end the service: nothing would match any more.
                    log.warning("shard %s: heartbeat failed, retrying: %r", self.shard, e)
                await asyncio.sleep(self.beat_s)
        finally:
            await self._drop_all()

    async def _beat(self) -> None:
        await self.registry.heartbeat(self.shard)
        if self.zone_source is not None:
            try:
                self.zones = await self.zone_source()
            except Exception as e:  # the DB is down: keep the zones it had
                log.warning("shard %s: zones not re-read: %r", self.shard, e)
        mine = set(await self.registry.zones_of(self.shard, self.zones))
        for zone in mine - set(self.serving):
            self._serving[zone] = asyncio.create_task(self._serve(zone))
        for zone in set(self.serving) - mine:
            self._serving[zone].cancel()  # the ring moved it: give the lease up
        if sorted(mine) != self._announced:
            self._announced = sorted(mine)
            log.info("dispatch shard %s serves zones [%s]", self.shard, ",".join(self._announced))

    async def _serve(self, zone: str) -> None:
        while True:
            try:
                await self.matcher.serve(zone)
            except LeaseLost as e:  # taken over, or Redis trouble: try for it again
                log.info("shard %s lost zone %s: %s", self.shard, zone, e)
            except QuorumNotAchieved:  # held elsewhere (a standby of this shard, or the
                # shard the zone is leaving): wait for it
                log.debug("shard %s: zone %s is held elsewhere", self.shard, zone)
            except Exception as e:  # Redis or DB trouble...
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
