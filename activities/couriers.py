"""Courier search and offers for the delivery workflow.

With a geo index (Redis) the search reads only the free couriers near the store; without one
(tests, or Redis unreachable), or when the index knows nobody, it falls back to a bounding-box
scan of the couriers table. Every
offer and release keeps the index in step with the table; the table decides.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from dispatch.geoindex import CourierGeoIndex
from domain.messages import CourierOffer, FindCourierInput, FoundCourier, OfferResult
from domain.names import (
    ACT_ASSIGN_COURIER,
    ACT_FIND_NEAREST_COURIER,
    ACT_OFFER_TO_COURIER,
    ACT_RELEASE_COURIER,
)
from store import couriers as fleet

log = logging.getLogger(__name__)

SEARCH_RADIUS_KM = 50.0
CANDIDATES = 8
"""Nearest index entries checked against the table per search (stale ones are dropped)."""


class CourierActivities:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        geo: CourierGeoIndex | None = None,
    ) -> None:
        self._sessions = sessionmaker
        self._geo = geo

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
