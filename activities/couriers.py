"""Courier search and offers for the delivery workflow.

With a geo index (Redis) the search reads only the free couriers near the store; without one
(tests, or Redis unreachable), or when the index knows nobody, it falls back to a bounding-box
scan of the couriers table. Every
offer and release keeps the index in step with the table; the table decides.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dispatch.geoindex import CourierGeoIndex
from dispatch.service import OrderQueue, ShardRegistry, shard_of, store_zones
from dispatch.zones import zone_of
from domain.messages import (
    CourierOffer,
    DispatchRoute,
    FindCourierInput,
    FoundCourier,
    MatchRequest,
    MatchResult,
    OfferResult,
)
from domain.names import (
    ACT_ASSIGN_COURIER,
    ACT_FIND_NEAREST_COURIER,
    ACT_OFFER_TO_COURIER,
    ACT_RELEASE_COURIER,
    ACT_REQUEST_MATCH,
    ACT_ROUTE_DISPATCH,
    ACT_WITHDRAW_MATCH,
)
from store import couriers as fleet

log = logging.getLogger(__name__)

SEARCH_RADIUS_KM = 50.0
CANDIDATES = 8
"""Nearest index entries checked against the table per search (stale ones are dropped)."""
SHARD_MOVED = "ShardMoved"
"""``request_match`` gave up because its worker is stopping: the workflow routes again."""
CLAIM_GRACE_S = 5.0
"""A matcher claimed the order just as its wait ended: how long its offer may take to land."""


@dataclass
class DispatchConfig:
    """What the matcher path of dispatch needs: the Redis of the zone matchers, their key
    prefix, the window and the zone resolution they use."""

    redis: aioredis.Redis
    prefix: str = "dispatch:"
    window_s: float = 2.0
    resolution: int = 7

    @property
    def wait_s(self) -> float:
        """How long one ``request_match`` waits for an offer: two windows and a second."""
        return 2 * max(self.window_s, 0.05) + 1.0


class CourierActivities:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        geo: CourierGeoIndex | None = None,
        dispatch: DispatchConfig | None = None,
    ) -> None:
        self._sessions = sessionmaker
        self._geo = geo
        self._dispatch = dispatch

    def _matching(self) -> DispatchConfig:
        if self._dispatch is None:
            raise ApplicationError(
                "this worker has no zone matcher Redis configured", type="DispatchUnavailable"
            )
        return self._dispatch

    @activity.defn(name=ACT_ROUTE_DISPATCH)
    async def route_dispatch(self, inp: FindCourierInput) -> DispatchRoute:
        """The store's zone and the live shard the ring gives it (read off the heartbeats);
        the order starts waiting in the zone's pending set."""
        d = self._matching()
        async with self._sessions() as s:
            at = await fleet.location_position(s, location_id=inp.location_id)
        if at is None:
            return DispatchRoute(zone=None)
        zone = zone_of(at[0], at[1], d.resolution)
        zones = await store_zones(self._sessions, d.resolution)()
        shard = await shard_of(ShardRegistry(d.redis, d.prefix), zones, zone)
        if shard is not None and await self._holder(inp.order_id) is None:
            # Waiting from now on, not only once request_match starts: if that shard has just
            # died, whoever takes the zone over matches the order meanwhile.
            await OrderQueue(d.redis, d.prefix).enqueue(
                zone, inp.order_id, lat=at[0], lng=at[1], exclude=inp.exclude
            )
        return DispatchRoute(zone=zone, lat=at[0], lng=at[1], shard=shard)

    @activity.defn(name=ACT_REQUEST_MATCH)
    async def request_match(self, req: MatchRequest) -> MatchResult:
        """Wait in the zone's pending set, heartbeating, for the zone matcher's offer (written
        by the matcher, fenced by its lease). A retry first looks for an offer already made to
        the order. Gives up after :attr:`DispatchConfig.wait_s` (None: nobody free)."""
        d = self._matching()
        q = OrderQueue(d.redis, d.prefix)
        held = await self._holder(req.order_id)
        if held is not None:
            return MatchResult(held)
        await q.enqueue(req.zone, req.order_id, lat=req.lat, lng=req.lng, exclude=req.exclude)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + d.wait_s
        try:
            while (left := deadline - loop.time()) > 0:
                activity.heartbeat()
                if activity.is_worker_shutdown():
                    # The order stays pending: whoever serves the zone next matches it, and
                    # the routed-again request finds that offer in the table.
                    raise ApplicationError("worker stopping", type=SHARD_MOVED, non_retryable=True)
                got = await q.wait_offer(req.order_id, min(left, 1.0))
                if got is not None and await self._holder(req.order_id) == got:
                    return MatchResult(got)
            if not await q.withdraw(req.zone, req.order_id):
                # A matcher claimed it just now: its offer is being written (or the order goes
                # back to pending if the courier was taken; the next round asks again).
                grace = loop.time() + CLAIM_GRACE_S
                while loop.time() < grace:
                    activity.heartbeat()
                    if await q.wait_offer(req.order_id, 1.0) is not None:
                        break
        except asyncio.CancelledError:
            await asyncio.shield(q.withdraw(req.zone, req.order_id))
            raise
        return MatchResult(await self._holder(req.order_id))

    @activity.defn(name=ACT_WITHDRAW_MATCH)
    async def withdraw_match(self, req: MatchRequest) -> OfferResult:
        """The order was cancelled while matching: leave the pending set and free a courier an
        offer may have reached meanwhile."""
        d = self._matching()
        await OrderQueue(d.redis, d.prefix).leave(req.zone, req.order_id, grace_s=CLAIM_GRACE_S)
        async with self._sessions() as s, s.begin():
            freed = await fleet.release_offers_of(s, order_id=req.order_id)
        for courier_id in freed:
            await self.sync_courier(courier_id)
        return OfferResult(offered=bool(freed))

    async def _holder(self, order_id: str) -> str | None:
        async with self._sessions() as s:
            return await fleet.holder_of(s, order_id=order_id)

    @activity.defn(name=ACT_FIND_NEAREST_COURIER)
    async def find_nearest_courier(self, inp: FindCourierInput) -> FoundCourier:
        async with self._sessions() as s:
            if self._geo is not None:
                at = await fleet.location_position(s, location_id=inp.location_id)
                if at is None:
                    return FoundCourier(courier_id=None)
                try:
                    found = await self._geo.search(
                        lat=at[0],
                        lng=at[1],
                        radius_km=SEARCH_RADIUS_KM,
                        count=CANDIDATES,
                        exclude=inp.exclude,
                    )
                    ids = [c.courier_id for c in found]
                    free = await fleet.free_among(s, courier_ids=ids)
                    for stale in (cid for cid in ids if cid not in free):
                        await self._unlist(stale)
                    for cid in ids:
                        if cid in free:
                            return FoundCourier(courier_id=cid)
                    # Nobody (or only stale entries): the index may lag the table (couriers
                    # written straight to it, no rebuild yet), so the table is asked too.
                except RedisError as e:
                    log.warning("courier geo index unavailable, scanning the table: %s", e)
            courier_id = await fleet.nearest_free_courier(
                s, location_id=inp.location_id, exclude=list(inp.exclude)
            )
        return FoundCourier(courier_id=courier_id)

    @activity.defn(name=ACT_OFFER_TO_COURIER)
    async def offer_to_courier(self, inp: CourierOffer) -> OfferResult:
        async with self._sessions() as s, s.begin():
            offered = await fleet.offer(s, order_id=inp.order_id, courier_id=inp.courier_id)
        activity.logger.info("offer %s to %s: %s", inp.order_id, inp.courier_id, offered)
        # Offered or not, the courier is not free now: either way it leaves the index.
        await self._unlist(inp.courier_id)
        return OfferResult(offered=offered)

    @activity.defn(name=ACT_ASSIGN_COURIER)
    async def assign_courier(self, inp: CourierOffer) -> OfferResult:
        async with self._sessions() as s, s.begin():
            return OfferResult(
                offered=await fleet.assign(s, order_id=inp.order_id, courier_id=inp.courier_id)
            )

    @activity.defn(name=ACT_RELEASE_COURIER)
    async def release_courier(self, inp: CourierOffer) -> OfferResult:
        async with self._sessions() as s, s.begin():
            released = await fleet.release(s, order_id=inp.order_id, courier_id=inp.courier_id)
        await self.sync_courier(inp.courier_id)
        return OfferResult(offered=released)

    async def _unlist(self, courier_id: str) -> None:
        if self._geo is None:
            return
        try:
            await self._geo.remove(courier_id)
        except RedisError as e:  # the next rebuild heals the index
            log.warning("geo index: could not unlist %s: %s", courier_id, e)

    async def sync_courier(self, courier_id: str) -> None:
        """Make the index say what the table says about one courier."""
        await sync_courier(self._sessions, self._geo, courier_id)


async def sync_courier(
    sessions: async_sessionmaker[AsyncSession], geo: CourierGeoIndex | None, courier_id: str
) -> None:
    if geo is None:
        return
    async with sessions() as s:
        state = await fleet.courier_state(s, courier_id=courier_id)
    try:
        if state is None:
            await geo.remove(courier_id)
        else:
            await geo.put(courier_id, lat=state[0], lng=state[1], free=state[2])
    except RedisError as e:  # the next rebuild heals the index
        log.warning("geo index: could not update %s: %s", courier_id, e)
