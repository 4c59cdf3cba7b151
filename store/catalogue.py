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
from store.sql import dialect_insert

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
    ins = dialect_insert(session, PRODUCTS).values(
        sku=sku,
        name=name,
        price_cents=price_cents,
        currency=currency,
        hot=bool(hot),
        updated_at=utcnow_iso(),
    )
    changes = ["name", "price_cents", "currency", "updated_at"] + (
        ["hot"] if hot is not None else []
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["sku"], set_={c: ins.excluded[c] for c in changes}
    ).returning(PRODUCTS)
    row = (await session.exec(stmt)).mappings().one()
    return dict(row)


async def upsert_location(
    session: AsyncSession, *, location_id: str, name: str, lat: float, lng: float
) -> dict[str, Any]:
    ins = dialect_insert(session, LOCATIONS).values(
        location_id=location_id, name=name, lat=lat, lng=lng
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["location_id"],
        set_={c: ins.excluded[c] for c in ("name", "lat", "lng")},
    ).returning(LOCATIONS)
    row = (await session.exec(stmt)).mappings().one()
    return dict(row)
