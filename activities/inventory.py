"""Inventory TCC participant: try / confirm / cancel / return, one DB transaction each.

Hot SKUs (``ReservationKey.hot``) go through the Redis claim first when a Redis client is
given (``infra/hot_stock.py``): a sold-out request is refused by Redis alone, and so is
the cancel that follows it (the empty compensation is recorded in Redis, and the DB is only
read), so a flash sale's losers cost the database no write at all. The winners' DB branch is
the same fence as for any other SKU. When Redis cannot be reached, every call takes the DB
path: slower, still correct.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain import errors
from domain.messages import ReservationKey, ReservationResult
from domain.names import (
    ACT_CANCEL_RESERVATION,
    ACT_CONFIRM_RESERVATION,
    ACT_RETURN_STOCK,
    ACT_TRY_RESERVE,
)
from domain.status import ReservationState
from infra.hot_stock import REDIS_DOWN, Claim, CounterLoader, HotStock, redis_down
from store import inventory as ledger

log = logging.getLogger("tradeflow.inventory")


def _out_of_stock(key: ReservationKey) -> ApplicationError:
    return ApplicationError(
        f"{key.sku} at {key.location_id}: fewer than {key.quantity} available",
        type=errors.OUT_OF_STOCK,
        non_retryable=True,
    )


class InventoryActivities:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: aioredis.Redis | None = None,
    ) -> None:
        self._sessions = sessionmaker
        self._hot = HotStock(redis) if redis is not None else None
        self._loader = CounterLoader(sessionmaker, self._hot) if self._hot is not None else None

    @activity.defn(name=ACT_TRY_RESERVE)
    async def try_reserve(self, key: ReservationKey) -> ReservationResult:
        claim = await self._claim(key) if key.hot else None
        if claim in (Claim.SOLD_OUT, Claim.DEAD):
            raise _out_of_stock(key)
        if claim in (Claim.CANCELLED, Claim.RELEASED, Claim.RETURNED):
            raise ApplicationError(
                f"try refused: branch already {'RETURNED' if claim == Claim.RETURNED else 'CANCELLED'}"
                " (anti-hanging)",
                ReservationState.CANCELLED.value,
                type=errors.RESERVATION_CANCELLED,
                non_retryable=True,
            )
        holds = claim is not None and claim.holds_units
        try:
            out = await ledger.try_reserve(
                self._sessions,
                order_id=key.order_id,
                location_id=key.location_id,
                sku=key.sku,
                quantity=key.quantity,
            )
        except ledger.OutOfStock as e:
            if holds:  # Redis granted what the DB has not got: the counter was too high.
                await self._after_db(self._hot_write_off(key), key)
            raise ApplicationError(str(e), type=errors.OUT_OF_STOCK, non_retryable=True) from e
        except ledger.FenceRefused as e:
            if holds:  # cancelled in the DB while Redis was down: the units go back.
                await self._after_db(self._hot_release(key, returned=False), key)
            raise ApplicationError(
                str(e), e.state, type=errors.RESERVATION_CANCELLED, non_retryable=True
            ) from e
        return ReservationResult(state=ReservationState(out.state), changed=out.changed)

    @activity.defn(name=ACT_CONFIRM_RESERVATION)
    async def confirm_reservation(self, key: ReservationKey) -> ReservationResult:
        return await self._apply(ledger.confirm, key)

    @activity.defn(name=ACT_CANCEL_RESERVATION)
    async def cancel_reservation(self, key: ReservationKey) -> ReservationResult:
        if not key.hot or self._hot is None:
            return await self._apply(ledger.cancel, key)
        try:
            claim = await self._hot.mark_cancel(key.location_id, key.sku, key.order_id)
        except REDIS_DOWN as e:
            if not redis_down(e):
                raise
            log.warning("redis unreachable, cancelling %s on the DB path: %s", key.order_id, e)
            return await self._apply(ledger.cancel, key)
        if claim is None or claim in (Claim.CANCELLED, Claim.DEAD):
            # Redis granted nothing. A DB row exists only if a try took the DB path (Redis
            # was down then): read, and write only in that case.
            async with self._sessions() as s:
                row = await ledger.fence(
                    s, order_id=key.order_id, location_id=key.location_id, sku=key.sku
                )
            if row is None:
                return ReservationResult(state=ReservationState.CANCELLED, changed=False)
            if row[0] in (ReservationState.CANCELLED, ReservationState.RETURNED):
                return ReservationResult(state=ReservationState(row[0]), changed=False)
        out = await self._apply(ledger.cancel, key)
        if claim == Claim.LIVE and out.state == ReservationState.CANCELLED:
            await self._after_db(self._hot_release(key, returned=False), key)
        return out

    @activity.defn(name=ACT_RETURN_STOCK)
    async def return_stock(self, key: ReservationKey) -> ReservationResult:
        out = await self._apply(ledger.return_stock, key)
        # DB first, then Redis: the counter never shows units the DB has not got back yet.
        # (On a branch never confirmed, return acts as cancel.)
        if key.hot and out.state in (ReservationState.RETURNED, ReservationState.CANCELLED):
            returned = out.state == ReservationState.RETURNED
            await self._after_db(self._hot_release(key, returned=returned), key)
        return out

    # ------------------------------------------------------------------------------ helpers

    async def _claim(self, key: ReservationKey) -> Claim | None:
        """The Redis claim for a hot line; None means "take the DB path"."""
        if self._hot is None or self._loader is None:
            return None
        try:
            claim = await self._hot.claim(key.location_id, key.sku, key.order_id, key.quantity)
            if claim == Claim.NO_COUNTER and await self._loader.load(key.location_id, key.sku):
                claim = await self._hot.claim(key.location_id, key.sku, key.order_id, key.quantity)
        except REDIS_DOWN as e:
            if not redis_down(e):
                raise
            log.warning("redis unreachable, reserving %s on the DB path: %s", key.order_id, e)
            return None
        return None if claim == Claim.NO_COUNTER else claim

    async def _hot_release(self, key: ReservationKey, *, returned: bool) -> None:
        if self._hot is not None:
            await self._hot.release(key.location_id, key.sku, key.order_id, returned=returned)

    async def _hot_write_off(self, key: ReservationKey) -> None:
        if self._hot is not None:
            await self._hot.write_off(key.location_id, key.sku, key.order_id)

    @staticmethod
    async def _after_db(step: Awaitable[None], key: ReservationKey) -> None:
        """A Redis step after the DB decided: if Redis is gone the DB is still right, and
        reconciliation finishes the step (see ``HotStock.sync``)."""
        try:
            await step
        except REDIS_DOWN as e:
            if not redis_down(e):
                raise
            log.warning("redis unreachable after the DB step for %s: %s", key.order_id, e)

    async def _apply(self, op, key: ReservationKey) -> ReservationResult:  # type: ignore[no-untyped-def]
        try:
            async with self._sessions() as s, s.begin():
                out = await op(s, order_id=key.order_id, location_id=key.location_id, sku=key.sku)
        except ledger.FenceRefused as e:
            raise ApplicationError(
                str(e), e.state, type=errors.RESERVATION_CONFLICT, non_retryable=True
            ) from e
        activity.logger.info(
            "%s %s/%s/%s -> %s%s",
            activity.info().activity_type,
            key.order_id,
            key.location_id,
            key.sku,
            out.state,
            "" if out.changed else " (no change)",
        )
        return ReservationResult(state=ReservationState(out.state), changed=out.changed)
