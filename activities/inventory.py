"""Inventory TCC participant: try / confirm / cancel / return, one DB transaction each."""

from __future__ import annotations

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
from store import inventory as ledger


class InventoryActivities:
    def __init__(self, *, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessionmaker

    @activity.defn(name=ACT_TRY_RESERVE)
    async def try_reserve(self, key: ReservationKey) -> ReservationResult:
        try:
            async with self._sessions() as s, s.begin():
                out = await ledger.try_reserve(
                    s,
                    order_id=key.order_id,
                    location_id=key.location_id,
                    sku=key.sku,
                    quantity=key.quantity,
                )
        except ledger.OutOfStock as e:
            raise ApplicationError(str(e), type=errors.OUT_OF_STOCK, non_retryable=True) from e
        except ledger.FenceRefused as e:
            raise ApplicationError(
                str(e), e.state, type=errors.RESERVATION_CANCELLED, non_retryable=True
            ) from e
        return ReservationResult(state=out.state, changed=out.changed)

    @activity.defn(name=ACT_CONFIRM_RESERVATION)
    async def confirm_reservation(self, key: ReservationKey) -> ReservationResult:
        return await self._apply(ledger.confirm, key)

    @activity.defn(name=ACT_CANCEL_RESERVATION)
    async def cancel_reservation(self, key: ReservationKey) -> ReservationResult:
        return await self._apply(ledger.cancel, key)

    @activity.defn(name=ACT_RETURN_STOCK)
    async def return_stock(self, key: ReservationKey) -> ReservationResult:
        return await self._apply(ledger.return_stock, key)

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
        return ReservationResult(state=out.state, changed=out.changed)
