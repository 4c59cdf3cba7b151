"""Courier search and offers for the delivery workflow."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from domain.messages import CourierOffer, FindCourierInput, FoundCourier, OfferResult
from domain.names import (
    ACT_ASSIGN_COURIER,
    ACT_FIND_NEAREST_COURIER,
    ACT_OFFER_TO_COURIER,
    ACT_RELEASE_COURIER,
)
from store import couriers as fleet


class CourierActivities:
    def __init__(self, *, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessionmaker

    @activity.defn(name=ACT_FIND_NEAREST_COURIER)
    async def find_nearest_courier(self, inp: FindCourierInput) -> FoundCourier:
        async with self._sessions() as s:
            courier_id = await fleet.nearest_free_courier(
                s, location_id=inp.location_id, exclude=list(inp.exclude)
            )
        return FoundCourier(courier_id=courier_id)

    @activity.defn(name=ACT_OFFER_TO_COURIER)
    async def offer_to_courier(self, inp: CourierOffer) -> OfferResult:
        async with self._sessions() as s, s.begin():
            offered = await fleet.offer(s, order_id=inp.order_id, courier_id=inp.courier_id)
        activity.logger.info("offer %s to %s: %s", inp.order_id, inp.courier_id, offered)
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
            return OfferResult(
                offered=await fleet.release(s, order_id=inp.order_id, courier_id=inp.courier_id)
            )
