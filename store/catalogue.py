"""The catalogue and the places it is sold from: products and locations.

Each write is one ``INSERT ... ON CONFLICT DO UPDATE``, so concurrent admin requests cannot
interleave a read and a write.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import Location, Product, utcnow_iso
from store.sql import upsert

PRODUCTS: Table = Product.__table__  # type: ignore[attr-defined]
LOCATIONS: Table = Location.__table__  # type: ignore[attr-defined]


async def list_products(session: AsyncSession, *, after: str | None, limit: int) -> list[Product]:
    stmt = select(Product)
    if after is not None:
        stmt = stmt.where(col(Product.sku) > after)
    stmt = stmt.order_by(col(Product.sku)).limit(limit)
    return list((await session.exec(stmt)).all())


async def upsert_product(
    session: AsyncSession,
    *,
    sku: str,
    name: str,
    price_cents: int,
    currency: str,
    hot: bool | None,
) -> dict[str, Any]:
    """Create or replace a product; ``hot=None`` keeps the current flag (False when new)."""
    stmt = upsert(
        session,
        PRODUCTS,
        dict(
            sku=sku,
            name=name,
            price_cents=price_cents,
            currency=currency,
            hot=bool(hot),
            updated_at=utcnow_iso(),
        ),
        conflict_on=["sku"],
        replace=["name", "price_cents", "currency", "updated_at"]
        + (["hot"] if hot is not None else []),
    )
    return dict((await session.exec(stmt)).mappings().one())


async def upsert_location(
    session: AsyncSession, *, location_id: str, name: str, lat: float, lng: float
) -> dict[str, Any]:
    stmt = upsert(
        session,
        LOCATIONS,
        dict(location_id=location_id, name=name, lat=lat, lng=lng),
        conflict_on=["location_id"],
        replace=["name", "lat", "lng"],
    )
    return dict((await session.exec(stmt)).mappings().one())
