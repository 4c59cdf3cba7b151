"""Queries the inventory sweeper needs: reservations held for longer than their TTL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.status import ReservationState
from store.models import Reservation

R: Table = Reservation.__table__  # type: ignore[attr-defined]


def iso_ago(seconds: float, *, now: datetime | None = None) -> str:
    moment = (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def orders_with_stale_holds(s: AsyncSession, *, older_than_s: float, limit: int) -> list[str]:
    """Orders with a TRIED branch created more than ``older_than_s`` ago, oldest first."""
    cutoff = iso_ago(older_than_s)
    first = func.min(R.c.created_at).label("first_held")
    rows = await s.execute(
        select(R.c.order_id, first)
        .where((R.c.state == ReservationState.TRIED.value) & (R.c.created_at < cutoff))
        .group_by(R.c.order_id)
        .order_by(first)
        .limit(limit)
    )
    return [r[0] for r in rows.all()]


async def tried_branches(s: AsyncSession, *, order_id: str) -> list[tuple[str, str, int]]:
    """(location, sku, quantity) of the order's branches still TRIED."""
    rows = await s.execute(
        select(R.c.location_id, R.c.sku, R.c.quantity).where(
            (R.c.order_id == order_id) & (R.c.state == ReservationState.TRIED.value)
        )
    )
    return [(r[0], r[1], r[2]) for r in rows.all()]
