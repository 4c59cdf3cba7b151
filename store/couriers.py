"""Courier offers: a courier holds at most one order (offered or assigned) at a time.

Each change is one conditional UPDATE keyed by (courier, order), so a retried activity or a
late duplicate cannot take a courier from another order or free it from one it now serves.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from sqlmodel import select as select_model
from sqlmodel.ext.asyncio.session import AsyncSession as ModelSession

from store import fencing
from store.fencing import Fence
from store.models import Courier, Location, utcnow_iso
from store.sql import upsert

C: Table = Courier.__table__  # type: ignore[attr-defined]
L: Table = Location.__table__  # type: ignore[attr-defined]

OFFERED = "OFFERED"
ASSIGNED = "ASSIGNED"


# ------------------------------------------------------------------------ the admin's


async def upsert_courier(
    s: AsyncSession, *, courier_id: str, lat: float, lng: float, available: bool
) -> dict[str, Any]:
    """Position and shift only: the courier's offer/assignment belongs to dispatch."""
    stmt = upsert(
        s,
        C,
        dict(
            courier_id=courier_id,
            lat=lat,
            lng=lng,
            available=available,
            current_order_id=None,
            assignment=None,
            updated_at=utcnow_iso(),
        ),
        conflict_on=["courier_id"],
        replace=["lat", "lng", "available", "updated_at"],
    )
    return dict((await s.execute(stmt)).mappings().one())


async def list_couriers(
    s: ModelSession, *, available: bool | None, after: str | None, limit: int
) -> list[Courier]:
    stmt = select_model(Courier)
    if available is not None:
        stmt = stmt.where(Courier.available == available)
    if after is not None:
        stmt = stmt.where(col(Courier.courier_id) > after)
    stmt = stmt.order_by(col(Courier.courier_id)).limit(limit)
    return list((await s.exec(stmt)).all())


# ------------------------------------------------------------------------------ dispatch


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    r = 6371.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


async def location_position(s: AsyncSession, *, location_id: str) -> tuple[float, float] | None:
    row = (await s.execute(select(L.c.lat, L.c.lng).where(L.c.location_id == location_id))).first()
    return None if row is None else (row.lat, row.lng)


async def courier_state(s: AsyncSession, *, courier_id: str) -> tuple[float, float, bool] | None:
    """(lat, lng, free) of a courier; free = on shift and holding no order."""
    row = (
        await s.execute(
            select(C.c.lat, C.c.lng, C.c.available, C.c.current_order_id).where(
                C.c.courier_id == courier_id
            )
        )
    ).first()
    if row is None:
        return None
    return row.lat, row.lng, bool(row.available) and row.current_order_id is None


async def free_among(s: AsyncSession, *, courier_ids: list[str]) -> set[str]:
    """Which of these couriers are free now (on shift, holding no order): one indexed read."""
    if not courier_ids:
        return set()
    rows = await s.execute(
        select(C.c.courier_id).where(
            C.c.courier_id.in_(courier_ids)
            & C.c.available.is_(True)
            & C.c.current_order_id.is_(None)
        )
    )
    return {r.courier_id for r in rows}


async def nearest_free_courier(
    s: AsyncSession, *, location_id: str, exclude: list[str], radius_km: float = 50.0
) -> str | None:
    loc = (await s.execute(select(L.c.lat, L.c.lng).where(L.c.location_id == location_id))).first()
    if loc is None:
        return None
    # A bounding box keeps the scan to nearby couriers; exact distance is ranked in Python.
    dlat = radius_km / 111.0
    dlng = radius_km / (111.0 * max(math.cos(math.radians(loc.lat)), 0.01))
    rows = (
        await s.execute(
            select(C.c.courier_id, C.c.lat, C.c.lng).where(
                C.c.available.is_(True)
                & C.c.current_order_id.is_(None)
                & C.c.lat.between(loc.lat - dlat, loc.lat + dlat)
                & C.c.lng.between(loc.lng - dlng, loc.lng + dlng)
            )
        )
    ).all()
    ranked = sorted(
        (haversine_km(loc.lat, loc.lng, r.lat, r.lng), r.courier_id)
        for r in rows
        if r.courier_id not in exclude
    )
    return ranked[0][1] if ranked and ranked[0][0] <= radius_km else None


async def offer(
    s: AsyncSession, *, order_id: str, courier_id: str, fence: Fence | None = None
) -> bool:
    """Offer the order to the courier if it is free. With a ``fence`` (a zone matcher's lease)
    the write first passes the zone's fencing check in the same transaction and raises
    :class:`~store.fencing.StaleFencingToken` (writing nothing) when a newer lease exists."""
    if fence is not None:
        await fencing.admit(s, zone=fence.zone, token=fence.token)
    res = await s.execute(
        update(C)
        .where(
            (C.c.courier_id == courier_id)
            & C.c.available.is_(True)
            & C.c.current_order_id.is_(None)
        )
        .values(
            current_order_id=order_id,
            assignment=OFFERED,
            fencing_token=None if fence is None else fence.token,
            updated_at=utcnow_iso(),
        )
        .returning(C.c.courier_id)
    )
    if res.first() is not None:
        return True
    held = (
        await s.execute(select(C.c.current_order_id).where(C.c.courier_id == courier_id))
    ).scalar_one_or_none()
    return held == order_id  # a retry of an offer that already landed


async def assign(s: AsyncSession, *, order_id: str, courier_id: str) -> bool:
    res = await s.execute(
        update(C)
        .where((C.c.courier_id == courier_id) & (C.c.current_order_id == order_id))
        .values(assignment=ASSIGNED, updated_at=utcnow_iso())
        .returning(C.c.courier_id)
    )
    return res.first() is not None


async def release(s: AsyncSession, *, order_id: str, courier_id: str) -> bool:
    res = await s.execute(
        update(C)
        .where((C.c.courier_id == courier_id) & (C.c.current_order_id == order_id))
        .values(current_order_id=None, assignment=None, fencing_token=None, updated_at=utcnow_iso())
        .returning(C.c.courier_id)
    )
    return res.first() is not None


async def assigned_to(s: AsyncSession, *, order_id: str, courier_id: str) -> bool:
    """Does this courier's row say it is assigned to this order (its accept was taken)?"""
    held = (
        await s.execute(
            select(C.c.current_order_id).where(
                (C.c.courier_id == courier_id) & (C.c.assignment == ASSIGNED)
            )
        )
    ).scalar_one_or_none()
    return held == order_id


async def holder_of(s: AsyncSession, *, order_id: str) -> str | None:
    """The courier whose row holds this order (offered or assigned), if any."""
    return (
        await s.execute(select(C.c.courier_id).where(C.c.current_order_id == order_id).limit(1))
    ).scalar_one_or_none()


async def free_in_box(
    s: AsyncSession, *, lat: float, lng: float, radius_km: float, limit: int
) -> list[tuple[str, float, float]]:
    """Free couriers (id, lat, lng) in the bounding box of a disk: the table's answer when the
    geo index lists too few (it may lag couriers written straight to the table)."""
    dlat = radius_km / 111.0
    dlng = radius_km / (111.0 * max(math.cos(math.radians(lat)), 0.01))
    rows = (
        await s.execute(
            select(C.c.courier_id, C.c.lat, C.c.lng)
            .where(
                C.c.available.is_(True)
                & C.c.current_order_id.is_(None)
                & C.c.lat.between(lat - dlat, lat + dlat)
                & C.c.lng.between(lng - dlng, lng + dlng)
            )
            .order_by(C.c.courier_id)
            .limit(limit)
        )
    ).all()
    return [(r.courier_id, r.lat, r.lng) for r in rows]


async def release_offers_of(s: AsyncSession, *, order_id: str) -> list[str]:
    """Free every courier holding an *offer* of this order (a match cancelled while its offer
    was being written); an assigned courier is left alone. Who was freed."""
    res = await s.execute(
        update(C)
        .where((C.c.current_order_id == order_id) & (C.c.assignment == OFFERED))
        .values(current_order_id=None, assignment=None, fencing_token=None, updated_at=utcnow_iso())
        .returning(C.c.courier_id)
    )
    return [r.courier_id for r in res]
